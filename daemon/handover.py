"""Handing a running partition over: copy first, then step down (join and rebalance).

When the view gives a partition this member runs a new replica set, the
members it adds (one joining, one returning with stale data) hold no current
copy. Rather than stop the partition while they fetch it, the running primary
copies it to them in the background, as *learners*:

1. per task, a snapshot of its store at its last commit is restored on each
   learner (chunk by chunk, :mod:`daemon.transfer`, at the primary's epoch), and the commits
   that follow go to it as to a replica (:class:`~daemon.replication.ReplicaLog`
   learners), without counting towards durability: the flow keeps running;
2. once every learner is within ``LAG`` commits of the last one, the tasks
   pause (no new commits) until every replica and learner holds the last;
3. the primary steps down. The new primary, which deferred its takeover while
   we ran (:mod:`daemon.takeover`, step 0), finds its copy current: its round
   moves no data, so the partition stops only for the drain and one round.

A learner that refuses, loses or breaks off a copy gets a fresh snapshot
(a restore replaces the task in one transaction: a broken one changes
nothing). A handover not done in ``TIMEOUT`` seconds steps down anyway and the
new primary catches up the slow way (a snapshot under its new epoch). Safety
does not rest on any of this: a takeover's promises fence the old primary
whatever it does.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from .replication import WINDOW
from .store import Store
from .task import PartitionTask
from .transfer import Push

log = logging.getLogger("gossipflow.handover")

LAG = WINDOW
"""Commits a learner may trail by when the tasks pause to let it reach the last."""
MAX_LEARNER_LAG = 4096
"""Commits kept for a learner that falls this far behind: then it is copied afresh."""
TIMEOUT = 20.0
"""Seconds before a handover gives up copying and steps down regardless..."""
COPY_RATE = 4 << 20
"""... plus a second per this many bytes of snapshot (a conservative copy rate here, where
a busy 2-core machine moved 10 MB/s): a big partition gets the time its copy takes."""
COPY_AGAIN_AFTER = 0.5
"""Seconds between a copy failing and the next attempt (each takes a fresh snapshot)."""

Call = Callable[[str, str, Any, Callable[[Any], None]], None]


class Handover:
    """Copying partition ``partition``'s ``tasks`` to ``learners``, then stepping down.

    ``on_shipped(task)`` is told when a task has commits to send (a learner's copy
    landed); ``on_stale(task)`` when a learner holds a newer epoch than the task.
    """

    def __init__(self, partition: int, learners: tuple[str, ...], tasks: list[PartitionTask],
                 store: Store, call: Call, now: float, on_shipped: Callable[[PartitionTask], None],
                 on_stale: Callable[[PartitionTask], None]) -> None:
        self.partition, self.learners, self.tasks = partition, learners, tasks
        self.store, self.call, self.started = store, call, now
        self.on_shipped, self.on_stale = on_shipped, on_stale
        self.broken: dict[tuple[PartitionTask, str], float | None] = {}
        """Copies to make again: when (None: from the next check, after a pause)."""
        self.draining = False
        self.cancelled = False
        self.copies = 0
        self.copied_bytes = 0
        """Bytes of the largest snapshot sent (to each learner): the timeout grows with it."""

    def start(self) -> None:
        for task in self.tasks:
            self._copy(task, self.learners)

    def cancel(self) -> None:
        """Stop copying (the view changed again): the tasks run on as before."""
        self.cancelled = True
        for task in self.tasks:
            task.paused = False
            for learner in self.learners:
                task.log.drop_learner(learner)

    def check(self, now: float) -> str:
        """Move on if it can: "copying", "draining", "done" (step down now) or "timeout"."""
        if now - self.started > TIMEOUT + self.copied_bytes / COPY_RATE:
            return "timeout"
        for task in self.tasks:
            for learner in self.learners:
                if task.log.last - task.log.acked.get(learner, task.log.last) > MAX_LEARNER_LAG:
                    self.broken.setdefault((task, learner), now)
        due: dict[PartitionTask, list[str]] = {}
        for (task, learner), when in list(self.broken.items()):
            if when is None:
                self.broken[(task, learner)] = now + COPY_AGAIN_AFTER
            elif now >= when:
                del self.broken[(task, learner)]
                due.setdefault(task, []).append(learner)
        for task, learners in due.items():
            self._copy(task, learners)
        if not self.draining and all(task.log.caught_up(learner, LAG) for task in self.tasks
                                     for learner in self.learners):
            self.draining = True
            for task in self.tasks:
                task.paused = True
            log.info("event=handover_draining partition=%d to=%s copied_after=%.3f",
                     self.partition, ",".join(self.learners), now - self.started)
        if self.draining and all(task.log.caught_up(member) for task in self.tasks
                                 for member in task.log.members):
            return "done"
        return "draining" if self.draining else "copying"

    def _copy(self, task: PartitionTask, learners: tuple[str, ...] | list[str]) -> None:
        """Send ``learners`` one snapshot of ``task`` at its last commit; commits follow."""
        last = task.number
        chunks = list(self.store.snapshot(task.id))
        self.copied_bytes = max(self.copied_bytes, sum(map(len, chunks)))
        for learner in learners:
            task.log.drop_learner(learner)
            task.log.add_learner(learner, last)
            self.copies += 1
            Push(self.call, learner, task.id, task.epoch, chunks,
                 lambda answer, learner=learner: self._copied(task, learner, last, answer)).start()

    def _copied(self, task: PartitionTask, learner: str, last: int, answer: Any) -> None:
        if self.cancelled or learner not in task.log.copying or task.log.acked[learner] != last:
            return  # cancelled, or a later copy replaced this one
        ok = isinstance(answer, list) and len(answer) == 2 and all(
            isinstance(x, int) for x in answer)
        if ok and answer[1] > task.epoch:
            self.on_stale(task)
        elif ok and answer[0] == last:
            task.log.copied(learner)
            self.on_shipped(task)
        else:
            log.info("event=copy_again partition=%d task=%s learner=%s answer=%r",
                     self.partition, task.id, learner, answer)
            self.broken[(task, learner)] = None
