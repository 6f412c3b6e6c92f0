"""Who may own a partition: the rules every change of primary must keep.

Views decide who *should* run a partition (:mod:`daemon.placement` over the
members a member sees alive); the rules here decide who *may*. They are pure
functions of what members answered, so the simulation tests check them
directly, and :mod:`daemon.takeover` and :mod:`daemon.owner` (the per-partition state
machine the runtime consults) only apply them.

**Voters.** Every flow has a fixed set of voters: the members it was submitted
to (alive at submission), less the members removed for good with
``gossipflow forget``. Nothing else changes it, so every member computes the
same majority from the flow's record alone, without clocks or tombstones.
A member that joined later hosts partitions but does not vote.

**A takeover at epoch E** (write-all replication, as Vertical Paxos does it
with the voters in the role of its configuration master):

1. *promise*: members promise E (refusing older epochs from then on) and
   answer their copy's position and the replica set they last *accepted*
   ``(epoch, members)``. The round needs a valid answer from a majority of the
   voters (:func:`quorate`);
2. the latest accepted set among the answers is the partition's *last durable
   replica set*: the round needs an answer from one of its members whose copy
   holds a commit of that epoch (:func:`choose`); else the partition waits.
   Every commit that ever became durable (and so released outputs) is on every
   member of that set, so the most advanced copy answered holds it;
3. the new primary restores that copy, brings the members of its new set to it,
   and makes one commit at E on all of them (a *seal*): a copy's position is
   (epoch of its last commit, number), so from then on no copy of an older
   history can look newer than ours (Raft's figure 8);
4. *accept*: a majority of the voters accepts the new set at E (refused where a
   higher epoch was promised). Only then does the new primary release anything.

Why one history: an accepted set was accepted by a majority of voters, and
every later promise round hears a majority, so it sees that set (or a later
one) and reads from a member of it. A round that cannot meet rule 2 leaves
the partition unavailable rather than start a second history. What is not
covered: a voter that loses its store (a wiped data dir) forgets its accepted
sets; the round then relies on the other voters' copies of the vote (every
accept goes to every reachable member, not only a majority).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple


class Answer(NamedTuple):
    """A member's answer to a promise, for one task."""

    last: int
    epoch: int
    promised: int
    accepted_epoch: int
    accepted: tuple[str, ...]

    @property
    def position(self) -> tuple[int, int]:
        """How far the copy is: (epoch of its last commit, number); higher is newer."""
        return self.epoch, self.last

    @classmethod
    def parse(cls, raw: Any) -> Answer | None:
        """The answer from the wire, or None if it is malformed."""
        if not (isinstance(raw, list) and len(raw) == 5
                and all(type(x) is int for x in raw[:4]) and isinstance(raw[4], list)
                and all(isinstance(m, str) for m in raw[4])):
            return None
        return cls(*raw[:4], tuple(raw[4]))


def voters(members: Iterable[str], forgotten: Iterable[str]) -> frozenset[str]:
    """A flow's voters: the members it was submitted to, less those forgotten.

    >>> sorted(voters(["a", "b", "c"], ["c", "z"]))
    ['a', 'b']
    """
    return frozenset(members) - frozenset(forgotten)


def quorate(present: Iterable[str], voting: frozenset[str]) -> bool:
    """Whether ``present`` holds a majority of ``voting`` (a flow without voters left
    is never quorate).

    >>> quorate(["a", "b", "x"], frozenset("abc")), quorate(["a", "x"], frozenset("abcd"))
    (True, False)
    """
    return 2 * len(voting.intersection(present)) > len(voting)


class Choice(NamedTuple):
    """What a promise round decided for one task."""

    source: str | None
    """The member whose copy to continue from (None: the round must wait)."""
    last_set: tuple[str, ...]
    """The last durable replica set seen (empty if the task never had one)."""
    why: str
    """Why it must wait ("" when it may go on)."""


def choose(answers: Mapping[str, Answer], me: str) -> Choice:
    """The copy a new primary continues from, by rule 2 of the module docstring.

    >>> a = {"a": Answer(3, 5, 9, 0, ()), "c": Answer(0, 0, 9, 7, ("d", "e"))}
    >>> choose(a, "a").why
    'no member of the last replica set d,e answered with its copy'
    >>> choose({**a, "e": Answer(10, 7, 9, 7, ("d", "e"))}, "a").source
    'e'
    """
    latest = max((a.accepted_epoch, a.accepted) for a in answers.values()) if answers \
        else (0, ())
    epoch, last_set = latest
    if epoch and not any(m in answers and answers[m].epoch >= epoch for m in last_set):
        return Choice(None, last_set, f"no member of the last replica set "
                                      f"{','.join(last_set)} answered with its copy")
    best = max(answers, key=lambda m: (answers[m].position, m == me))
    return Choice(best, last_set, "")


def stale(last: int, epoch: int, accepted: tuple[int, tuple[str, ...]], me: str) -> bool:
    """Whether ``me`` may drop its copy of a task (``last`` commits, the last at ``epoch``),
    keeping its vote: a set without ``me`` was accepted at a newer epoch than the copy's.
    That set was synced before it was accepted (and its primary sealed), so every later
    takeover reads from a member of it (or of a later one) and never from this copy.

    >>> stale(9, 3, (5, ("b", "c")), "a"), stale(9, 5, (5, ("b", "c")), "a")
    (True, False)
    >>> stale(9, 3, (5, ("a", "c")), "a"), stale(0, 0, (5, ("b", "c")), "a")
    (False, False)
    """
    return bool(last) and accepted[0] > epoch and me not in accepted[1]
