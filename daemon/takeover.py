"""Taking over partitions: how a member becomes their primary with a new epoch.

A member that is primary of partitions in its view, and not yet running
them, takes them over in one round (DESIGN.md, "Replication and failover"):

0. **probe** (for the partitions in ``defer_to_running``): if another live
   member still runs one, it is handing it over (:mod:`daemon.handover`
   copies it here first): the round leaves it to ``on_deferred(partition)``
   and a later round, so a join or a return moves data without pausing;
1. **promise**: every live member promises the round's epoch for every task
   of those partitions and answers its copy's position; from then on it
   refuses commits of older epochs, the old primary's included. A member
   that does not answer, or a promise already above ours, ends the round
   (the runtime tries again with a higher epoch when the view allows);
2. **catch up**: per task, if another member's copy is more advanced than
   ours, fetch its snapshot and restore it here;
3. **sync replicas**: every other member of the new replica set whose copy
   differs from ours gets our snapshot, so all copies share one history;
4. **activate**: ``on_ready(partition)`` runs the tasks; what their store
   holds is on every replica, so the outbox goes out at once.

Each step talks through ``call(member, kind, args, on_reply)`` (ourselves
included), whose ``on_reply`` gets the answer or None; replies must arrive on
the caller's thread. A partition whose step fails is reported to
``on_failed(partition, seen_epoch)`` and is left to a later round.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from .replication import position
from .store import Store, TaskId

log = logging.getLogger("gossipflow.takeover")

Call = Callable[[str, str, Any, Callable[[Any], None]], None]


class Takeover:
    """One round over ``partitions`` of one flow, at ``epoch``."""

    def __init__(self, me: str, store: Store, call: Call, epoch: int,
                 tasks: dict[int, list[TaskId]], replica_sets: dict[int, list[str]],
                 members: list[str], on_ready: Callable[[int], None],
                 on_failed: Callable[[int, int], None],
                 defer_to_running: frozenset[int] = frozenset(),
                 on_deferred: Callable[[int], None] = lambda p: None) -> None:
        self.me, self.store, self.call, self.epoch = me, store, call, epoch
        self.tasks, self.sets, self.members = tasks, replica_sets, members
        self.on_ready, self.on_failed = on_ready, on_failed
        self.defer, self.on_deferred = defer_to_running & set(tasks), on_deferred
        self.others = [m for m in self.members if m != self.me]
        self.probes: dict[str, Any] = {}
        self.promising = False
        """Past the probe: promises asked (or answered)."""
        self.answers: dict[str, list | None] = {}
        self.waiting: dict[int, int] = {}  # partition -> calls outstanding in its step
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
        ok = isinstance(answer, list) and len(answer) == count and all(
            isinstance(m, list) and len(m) == 3 and all(isinstance(x, int) for x in m)
            for m in answer)
        self.answers[member] = answer if ok else None
        if len(self.answers) < len(self.members):
            return
        silent = [m for m, a in self.answers.items() if a is None]
        metas: dict[TaskId, dict[str, list[int]]] = {}
        i = 0
        for p in sorted(self.tasks):
            for task in self.tasks[p]:
                metas[task] = {m: a[i] for m, a in self.answers.items() if a is not None}
                i += 1
        self.metas = metas
        for p in sorted(set(self.tasks) - self.dropped):
            seen = max((max(m[1], m[2]) for t in self.tasks[p] for m in metas[t].values()),
                       default=0)
            if silent or seen > self.epoch:
                log.info("event=takeover_retry member=%s partition=%d epoch=%d seen=%d "
                         "silent=%s", self.me, p, self.epoch, seen, ",".join(silent) or "-")
                self.on_failed(p, seen)
            else:
                self._catch_up(p)

    # ------------------------------------------------------------------ 2. catch up

    def _catch_up(self, p: int) -> None:
        behind = []
        for task in self.tasks[p]:
            metas = self.metas[task]
            best = max(metas, key=lambda m: (position(metas[m]), m == self.me))
            if position(metas[best]) > position(metas.get(self.me, [0, 0, 0])):
                behind.append((task, best))
        if not behind:
            self._sync(p)
            return
        self.waiting[p] = len(behind)
        log.info("event=catch_up member=%s partition=%d tasks=%d from=%s", self.me, p,
                 len(behind), ",".join(sorted({best for _, best in behind})))
        for task, best in behind:
            self.call(best, "snapshot", {"task": list(task)},
                      lambda chunks, task=task, p=p: self._fetched(p, task, chunks))

    def _fetched(self, p: int, task: TaskId, chunks: Any) -> None:
        if p in self.dropped or p not in self.waiting:
            return
        try:
            if not isinstance(chunks, list):
                raise ValueError("no snapshot came")
            self.store.restore(task, chunks, epoch=self.epoch)
        except Exception as err:  # noqa: BLE001 - any failure: this round gives up on p
            log.warning("event=catch_up_failed member=%s task=%s error=%r", self.me, task, str(err))
            del self.waiting[p]
            self.on_failed(p, self.store.task_meta(task).promised)
            return
        self.waiting[p] -= 1
        if self.waiting[p] == 0:
            del self.waiting[p]
            self._sync(p)

    # ------------------------------------------------------------------ 3. sync replicas

    def _sync(self, p: int) -> None:
        calls = []
        for task in self.tasks[p]:
            mine = self.store.task_meta(task)
            for replica in self.sets[p][1:]:
                theirs = self.metas[task].get(replica)
                if theirs is None or position(theirs) != position(mine):
                    calls.append((task, replica, mine.last))
        if not calls:
            self.on_ready(p)
            return
        self.waiting[p] = len(calls)
        for task, replica, last in calls:
            chunks = list(self.store.snapshot(task))
            self.call(replica, "restore", {"task": list(task), "epoch": self.epoch,
                                           "chunks": chunks},
                      lambda answer, p=p, last=last: self._restored(p, last, answer))

    def _restored(self, p: int, last: int, answer: Any) -> None:
        if p in self.dropped or p not in self.waiting:
            return
        if not (isinstance(answer, list) and len(answer) == 2 and answer[0] == last
                and answer[1] <= self.epoch):
            del self.waiting[p]
            seen = answer[1] if isinstance(answer, list) and len(answer) == 2 else 0
            self.on_failed(p, seen if isinstance(seen, int) else 0)
            return
        self.waiting[p] -= 1
        if self.waiting[p] == 0:
            del self.waiting[p]
            self.on_ready(p)
