"""Taking over partitions: how a member becomes their primary with a new epoch.

A member that is primary of partitions in its view, and not yet running
them, takes them over in one round (DESIGN.md, "Replication and failover";
the rules are :mod:`daemon.ownership`'s):

0. **probe** (for the partitions in ``defer_to_running``): if another live
   member still runs one, it is handing it over (:mod:`daemon.handover`
   copies it here first): the round leaves it to ``on_deferred(partition)``
   and a later round, so a join or a return moves data without pausing;
1. **promise**: every live member promises the round's epoch for every task
   of those partitions and answers its copy's position and the replica set it
   last accepted; from then on it refuses commits of older epochs, the old
   primary's included. The round needs a majority of the flow's voters, no
   promise above ours, and, per task, an answer from a member of the last
   durable replica set (:func:`daemon.ownership.choose`); a partition that
   lacks one is left to a later round (it waits, unavailable);
2. **catch up**: per task, if another member's copy is more advanced than
   ours, fetch its snapshot (chunk by chunk, :mod:`daemon.transfer`) and
   restore it here;
3. **sync replicas**: every other member of the new replica set whose copy
   differs from ours gets our snapshot;
4. **seal**: one empty commit at our epoch on us and every replica, so no copy
   of an older history can look newer than this one;
5. **accept**: a majority of the voters accepts the new replica set at our epoch.
   Seal and accept go out together (one round trip, not two): an accepted set
   whose members lack the seal is safe, for a later round trusts only a member
   of that set whose copy holds its epoch (:func:`daemon.ownership.choose`),
   ours at least; it only waits for us should we die inside that round trip;
6. **run**: as soon as seal and accept are sent, ``on_running(partition)``
   starts the tasks *fenced*: they process and commit (their commits follow
   the seal to the replicas) but release nothing;
7. **open**: once every replica holds the seal and a majority accepted,
   ``on_ready(partition)``: the tasks release what their commits produced, the
   outbox they started with first. So a takeover costs the tasks no round trip
   beyond the promise, and nothing leaves before the rule of step 4 holds.

Each step talks through ``call(member, kind, args, on_reply)`` (ourselves
included), whose ``on_reply`` gets the answer or None; replies must arrive on
the caller's thread. A partition whose step fails is reported to
``on_failed(partition, seen_epoch)`` and is left to a later round.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from .errors import GossipflowError
from .ownership import Answer, choose, quorate
from .placement import ranges
from .store import Commit, Store, TaskId
from .transfer import Pull, Push

log = logging.getLogger("gossipflow.takeover")

Call = Callable[[str, str, Any, Callable[[Any], None]], None]


class Takeover:
    """One round over ``partitions`` of one flow, at ``epoch``, for a flow whose
    voters are ``voters``."""

    def __init__(self, me: str, store: Store, call: Call, epoch: int,
                 tasks: dict[int, list[TaskId]], replica_sets: dict[int, list[str]],
                 members: list[str], voters: frozenset[str], on_ready: Callable[[int], None],
                 on_failed: Callable[[int, int], None],
                 defer_to_running: frozenset[int] = frozenset(),
                 on_deferred: Callable[[int], None] = lambda p: None,
                 soon: Callable[[Callable[[], None]], None] = lambda fn: fn(),
                 on_running: Callable[[int], None] = lambda p: None) -> None:
        self.me, self.store, self.call, self.epoch = me, store, call, epoch
        self.tasks, self.sets, self.members = tasks, replica_sets, members
        self.voters = voters
        self.on_ready, self.on_failed, self.on_running = on_ready, on_failed, on_running
        self.defer, self.on_deferred = defer_to_running & set(tasks), on_deferred
        self.others = [m for m in self.members if m != self.me]
        self.probes: dict[str, Any] = {}
        self.promising = False
        """Past the probe: promises asked (or answered)."""
        self.answers: dict[str, list[Answer] | None] = {}
        self.metas: dict[TaskId, dict[str, Answer]] = {}
        self.waiting: dict[int, int] = {}  # partition -> calls outstanding in its step
        self.accepted: dict[int, set[str]] = {}  # partition -> members that accepted
        self.soon = soon
        """soon(fn): call fn soon, after what is being handled now (so that partitions
        reaching the seal or accept step together share one request per member)."""
        self.sealing: list[int] = []
        self.flushing = False
        self.dropped: set[int] = set()
        self.started = time.monotonic()

    def start(self) -> None:
        if not self.defer or not self.others:
            self._promise()
            return
        self.probed = [t for p in sorted(self.defer) for t in self.tasks[p]]
        for member in self.others:
            self.call(member, "probe", {"tasks": [list(t) for t in self.probed]},
                      lambda answer, member=member: self._probed(member, answer))

    def drop(self, p: int) -> None:
        """Give up on partition ``p`` (the view moved on): its answers are ignored."""
        self.dropped.add(p)
        self.waiting.pop(p, None)

    def _fail(self, p: int, seen: int) -> None:
        self.waiting.pop(p, None)
        self.accepted.pop(p, None)
        if p not in self.dropped:
            self.on_failed(p, seen)

    # ------------------------------------------------------------------ 0. probe

    def _probed(self, member: str, answer: Any) -> None:
        self.probes[member] = answer
        if len(self.probes) < len(self.others):
            return
        running: set[int] = set()
        for probe in self.probes.values():  # no answer: the promise step meets it
            if isinstance(probe, list):
                running |= {t.partition for t, a in zip(self.probed, probe)
                            if isinstance(a, list) and len(a) == 4 and a[3]}
        for p in sorted(running):
            del self.tasks[p]
            if p not in self.dropped:
                self.on_deferred(p)
        if self.tasks:
            self._promise()

    # ------------------------------------------------------------------ 1. promise

    def _promise(self) -> None:
        self.promising = True
        everything = [list(t) for p in sorted(self.tasks) for t in self.tasks[p]]
        for member in self.members:
            self.call(member, "promise", {"tasks": everything, "epoch": self.epoch},
                      lambda answer, member=member: self._promised(member, answer))

    def _promised(self, member: str, answer: Any) -> None:
        count = sum(len(ts) for ts in self.tasks.values())
        parsed = [Answer.parse(a) for a in answer] if isinstance(answer, list) else []
        ok = len(parsed) == count and None not in parsed
        self.answers[member] = parsed if ok else None  # type: ignore[assignment]
        if len(self.answers) < len(self.members):
            return
        answered = [m for m, a in self.answers.items() if a is not None]
        i = 0
        for p in sorted(self.tasks):
            for task in self.tasks[p]:
                self.metas[task] = {m: a[i] for m, a in self.answers.items() if a is not None}
                i += 1
        waits: dict[str, list[int]] = {}
        for p in sorted(set(self.tasks) - self.dropped):
            seen = max((max(a.epoch, a.promised) for t in self.tasks[p]
                        for a in self.metas[t].values()), default=0)
            why = "" if quorate(answered, self.voters) else (
                f"answers from {','.join(sorted(answered))} are no majority of the voters "
                f"{','.join(sorted(self.voters))}")
            if seen > self.epoch:
                why = f"epoch {seen} promised elsewhere"
            sources: list[str | None] = []
            if not why:
                choices = [choose(self.metas[t], self.me) for t in self.tasks[p]]
                why = next((c.why for c in choices if c.source is None), "")
                sources = [c.source for c in choices]
            if why:
                waits.setdefault(why, []).append(p)
                self._fail(p, seen)
            else:
                self._catch_up(p, sources)
        for why, parts in waits.items():
            log.info("event=takeover_wait member=%s epoch=%d partitions=%s reason=%r",
                     self.me, self.epoch, ranges(parts), why)

    # ------------------------------------------------------------------ 2. catch up

    def _catch_up(self, p: int, sources: list[str | None]) -> None:
        behind = [(task, best) for task, best in zip(self.tasks[p], sources)
                  if best is not None and best != self.me
                  and self.metas[task][best].position > _position(self.store, task)]
        if not behind:
            self._sync(p)
            return
        self.waiting[p] = len(behind)
        log.info("event=catch_up member=%s partition=%d tasks=%d from=%s", self.me, p,
                 len(behind), ",".join(sorted({best for _, best in behind})))
        for task, best in behind:
            Pull(self.call, best, task,
                 lambda chunks, task=task, p=p: self._fetched(p, task, chunks)).start()

    def _fetched(self, p: int, task: TaskId, chunks: Any) -> None:
        if p in self.dropped or p not in self.waiting:
            return
        try:
            if not isinstance(chunks, list):
                raise ValueError("no snapshot came")
            self.store.restore(task, chunks, epoch=self.epoch)
        except Exception as err:  # noqa: BLE001 - any failure: this round gives up on p
            log.warning("event=catch_up_failed member=%s task=%s error=%r", self.me, task, str(err))
            self._fail(p, self.store.task_meta(task).promised)
            return
        self._step_done(p, self._sync)

    def _step_done(self, p: int, then: Callable[[int], None]) -> None:
        self.waiting[p] -= 1
        if self.waiting[p] == 0:
            del self.waiting[p]
            then(p)

    # ------------------------------------------------------------------ 3. sync replicas

    def _sync(self, p: int) -> None:
        calls = []
        for task in self.tasks[p]:
            mine = _position(self.store, task)
            for replica in self.sets[p][1:]:
                theirs = self.metas[task].get(replica)
                if theirs is None or theirs.position != mine:
                    calls.append((task, replica))
        if not calls:
            self._seal(p)
            return
        self.waiting[p] = len(calls)
        snapshots: dict[TaskId, list[bytes]] = {}
        for task, replica in calls:
            if task not in snapshots:
                snapshots[task] = list(self.store.snapshot(task))
            last = self.store.task_meta(task).last
            Push(self.call, replica, task, self.epoch, snapshots[task],
                 lambda answer, p=p, last=last: self._restored(p, last, answer)).start()

    def _restored(self, p: int, last: int, answer: Any) -> None:
        if p in self.dropped or p not in self.waiting:
            return
        if not _at(answer, last, self.epoch):
            self._fail(p, _seen(answer))
            return
        self._step_done(p, self._seal)

    # ------------------------------------------------------------------ 4. seal, 5. accept

    def _seal(self, p: int) -> None:
        """Seal ``p`` here at once; its replicas get it in the next batch (:meth:`_flush`)."""
        try:
            for task in self.tasks[p]:
                self.store.apply(Commit(task, self.epoch, self.store.task_meta(task).last + 1))
        except GossipflowError as err:  # a newer epoch was promised here, or the disk is full
            log.info("event=seal_failed member=%s partition=%d error=%r", self.me, p, str(err))
            self._fail(p, max(self.store.task_meta(t).promised for t in self.tasks[p]))
            return
        self.sealing.append(p)
        if not self.flushing:
            self.flushing = True
            self.soon(self._flush)

    def _flush(self) -> None:
        """Send the seals and accepts of every partition sealed here since the last flush:
        one request per member for all of them (a takeover of many partitions would
        otherwise make several round trips per partition). A partition is ready once
        every replica holds its seal and every member answered the accept."""
        self.flushing = False
        sealing, self.sealing = [p for p in self.sealing if p not in self.dropped], []
        by_replica: dict[str, list[int]] = {}
        for p in sealing:
            self.waiting[p] = len(self.sets[p]) - 1 + len(self.members)
            self.accepted[p] = set()
            for replica in self.sets[p][1:]:
                by_replica.setdefault(replica, []).append(p)
        for replica, parts in by_replica.items():
            entries, lasts = [], []
            for p in parts:
                for task in self.tasks[p]:
                    meta = self.store.task_meta(task)
                    commit = Commit(task, meta.epoch, meta.last)
                    entries.append([task.flow, task.stage, task.partition, commit.to_bytes()])
                    lasts.append(meta.last)
            self.call(replica, "commits", entries,
                      lambda answer, parts=parts, lasts=lasts: self._sealed(parts, lasts, answer))
        if sealing:
            tasks = [t for p in sealing for t in self.tasks[p]]
            args = {"tasks": [list(t) for t in tasks], "epoch": self.epoch,
                    "sets": [list(self.sets[t.partition]) for t in tasks]}
            for member in self.members:
                self.call(member, "accept", args, lambda answer, parts=sealing, m=member:
                          self._accepted(parts, m, answer))
        for p in sealing:
            if p in self.waiting:
                self.on_running(p)

    def _pending(self, parts: list[int], answer: Any, ok: bool
                  ) -> list[tuple[int, list, slice]]:
        """Per partition of ``parts`` still waiting in its step: its slice of a batched
        answer (one item per task, partitions in order; [] if ``ok`` is False)."""
        out, i = [], 0
        for p in parts:
            n = len(self.tasks[p])
            if p not in self.dropped and p in self.waiting:
                out.append((p, answer[i:i + n] if ok else [], slice(i, i + n)))
            i += n
        return out

    def _sealed(self, parts: list[int], lasts: list[int], answer: Any) -> None:
        ok = isinstance(answer, list) and len(answer) == len(lasts)
        for p, mine, where in self._pending(parts, answer, ok):
            if not (ok and all(_holds(a, last, self.epoch)
                               for a, last in zip(mine, lasts[where]))):
                self._fail(p, max((_seen(a) for a in mine), default=0))
            else:
                self._answered(p)

    def _accepted(self, parts: list[int], member: str, answer: Any) -> None:
        ok = isinstance(answer, list) and len(answer) == sum(len(self.tasks[p]) for p in parts) \
            and all(type(a) is int for a in answer)
        for p, mine, _ in self._pending(parts, answer, ok):
            if mine and all(a == self.epoch for a in mine):
                self.accepted[p].add(member)
            elif mine:
                self._fail(p, max(mine))  # a newer epoch was promised there
                continue
            self._answered(p)

    def _answered(self, p: int) -> None:
        """One more seal or accept answered well; the last decides."""
        self.waiting[p] -= 1
        if self.waiting[p]:
            return
        del self.waiting[p]
        if quorate(self.accepted.pop(p), self.voters):
            self.on_ready(p)
        else:
            self._fail(p, 0)


def _position(store: Store, task: TaskId) -> tuple[int, int]:
    meta = store.task_meta(task)
    return meta.epoch, meta.last


def _at(answer: Any, last: int, epoch: int) -> bool:
    """Whether a replica's [last, promised] answer says it holds ``last`` under ``epoch``."""
    return (isinstance(answer, list) and len(answer) == 2 and answer[0] == last
            and type(answer[1]) is int and answer[1] <= epoch)


def _holds(answer: Any, seal: int, epoch: int) -> bool:
    """Whether a replica's [last, promised] answer says it holds our ``seal``: it promised
    ``epoch`` (so takes commits of ours alone) and holds ``seal`` or later ones (the
    running tasks ship the seal too, before their own commits)."""
    return (isinstance(answer, list) and len(answer) == 2 and type(answer[0]) is int
            and answer[0] >= seal and type(answer[1]) is int and answer[1] <= epoch)


def _seen(answer: Any) -> int:
    """The epoch a refusing [last, promised] answer names (0 if it names none)."""
    ok = isinstance(answer, list) and len(answer) == 2 and type(answer[1]) is int
    return answer[1] if ok else 0

