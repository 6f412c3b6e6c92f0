"""Recovering the votes of a lost store before voting again (a wiped data dir).

A member's store holds its votes on who owns each partition
(:mod:`daemon.ownership`): the epochs it promised and the replica sets it
accepted. A member restarted with a wiped data dir has forgotten them; if it
voted at once, a majority of voters could be formed that holds none of the
votes a newer replica set was accepted with, and a takeover could continue
from an older copy. So a member whose store was created by this start
refuses to promise or accept for every flow it knew of when it joined, until
one round of :class:`Recovery` per flow:

1. ask every other live member for its votes on each task of the flow
   (``votes``: highest epoch promised, accepted epoch and set);
2. with answers from ceil(V/2) of the other voters (V voters in all: then they
   meet every majority that accepted a set, even one that counted this
   member, in a member that still holds that vote), take for each
   task the newest accepted set, and promise ``BUMP_ROUNDS`` rounds above the
   highest epoch seen: a round still in flight that this member promised
   before it lost its store can no longer gather its accept here.

Flows submitted after it joined need none: it held no votes for them before.
The state (pending until joined, then the flows to recover) is kept in the
store, so a crash mid-recovery resumes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from .replication import ROUND_SHIFT
from .store import Accepted, Store, TaskId

log = logging.getLogger("gossipflow.recovery")

BUMP_ROUNDS = 1 << 16
"""Rounds a recovered promise jumps above the highest epoch seen: more than the takeover
rounds that can be in flight at once (each round is one above the highest it saw)."""

RETRY_EVERY = 1.0
"""Seconds between rounds recovering one flow's votes."""
META_KEY = "recovering"
"""Store meta key: msgpack of the flows whose votes we lost (nil until the first view)."""

Call = Callable[[str, str, Any, Callable[[Any], None]], None]


def bumped(epoch: int) -> int:
    """The promise a recovered member makes, well above ``epoch``.

    >>> bumped(5 << ROUND_SHIFT | 77) >> ROUND_SHIFT
    65541
    """
    return ((epoch >> ROUND_SHIFT) + BUMP_ROUNDS) << ROUND_SHIFT


def enough(answered: set[str], voters: frozenset[str], me: str) -> bool:
    """Whether answers from ``answered`` meet every majority of ``voters`` that could
    hold a vote in another member than ``me``: ceil(V/2) of the voters other than ``me``.

    >>> v = frozenset("abcde")
    >>> enough({"b", "c"}, v, "a"), enough({"b", "c", "d"}, v, "a"), enough({"b"}, {"a", "b"}, "a")
    (False, True, True)
    """
    others = voters - {me}
    return not others or len(answered & others) >= (len(others) + 2) // 2


class Recovery:
    """One round over ``tasks`` (every task of one flow); ``on_done(recovered)``."""

    def __init__(self, me: str, store: Store, call: Call, tasks: list[TaskId],
                 members: list[str], voters: frozenset[str],
                 on_done: Callable[[bool], None]) -> None:
        self.me, self.store, self.call, self.tasks = me, store, call, tasks
        self.others = [m for m in members if m != me]
        self.voters, self.on_done = voters, on_done
        self.answers: dict[str, list | None] = {}

    def start(self) -> None:
        if not self.others:
            self._answered("", None)
            return
        for member in self.others:
            self.call(member, "votes", {"tasks": [list(t) for t in self.tasks]},
                      lambda answer, member=member: self._answered(member, answer))

    def _answered(self, member: str, answer: Any) -> None:
        if member:
            ok = isinstance(answer, list) and len(answer) == len(self.tasks) and all(
                isinstance(a, list) and len(a) == 3 and type(a[0]) is int and type(a[1]) is int
                and isinstance(a[2], list) and all(isinstance(m, str) for m in a[2])
                for a in answer)
            self.answers[member] = answer if ok else None
            if len(self.answers) < len(self.others):
                return
        valid = {m: a for m, a in self.answers.items() if a is not None}
        if not enough(set(valid), self.voters, self.me):
            self.on_done(False)
            return
        for i, task in enumerate(self.tasks):
            seen = max((a[i][0] for a in valid.values()), default=0)
            epoch, members = max(((a[i][1], tuple(a[i][2])) for a in valid.values()),
                                 default=(0, ()))
            self.store.recover_vote(task, Accepted(epoch, members), bumped(seen))
        self.on_done(True)


class LostVotes:
    """Which flows this member must recover votes for, kept in its store.

    ``flows`` is None from the start of a new store until the first view (we do not
    know yet which flows we voted in: we vote in none), then the set still to recover.
    """

    def __init__(self, store: Store, me: str) -> None:
        self.store, self.me = store, me
        self.next_round: dict[str, float] = {}  # flow -> when a round may start
        raw = store.get_meta(META_KEY)
        if raw is None:
            self.flows: set[str] | None = None if store.created else set()
            if self.flows is None:
                self._save()  # before any vote is asked of us
        else:
            flows = msgpack.unpackb(raw)
            self.flows = None if flows is None else set(flows)

    def votes(self, flow: str) -> bool:
        """Whether our promises and accepts count for ``flow`` (any thread)."""
        flows = self.flows
        return flows is not None and flow not in flows

    def joined(self, flows: Iterable[str]) -> None:
        """The first view: ``flows`` (those we are a voter of) are the ones to recover,
        if our store is new."""
        if self.flows is None:
            self.flows = set(flows)
            self._save()
            log.info("event=votes_lost member=%s flows=%s", self.me,
                     ",".join(sorted(self.flows)) or "-")

    def due(self, flow: str, now: float) -> bool:
        """Whether a round for ``flow`` may start now (then the next is RETRY_EVERY on)."""
        if now < self.next_round.get(flow, 0.0):
            return False
        self.next_round[flow] = now + RETRY_EVERY
        return True

    def done(self, flow: str, why: str) -> None:
        """``flow`` needs no more recovery: recovered, or it stopped."""
        if self.flows and flow in self.flows:
            self.flows.discard(flow)
            self.next_round.pop(flow, None)
            self._save()
            log.info("event=votes_%s member=%s flow=%s", why.replace(" ", "_"), self.me, flow)

    def _save(self) -> None:
        flows = None if self.flows is None else sorted(self.flows)
        self.store.put_meta(META_KEY, msgpack.packb(flows))
