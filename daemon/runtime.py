"""The runtime: runs this member's partition tasks of every running flow.

It runs in the daemon's runtime process (:mod:`daemon.worker`), so user code
(the flow file and its functions) never shares an interpreter with the event
loop that answers probes: a busy flow cannot make its daemon look dead. What
arrives (registry changes, shuffled batches, acknowledgements) is handed in
through :meth:`Runtime.post`, from any thread; what must go out leaves through
``Hooks``, called on the runtime's thread.

Which partitions this member runs is each flow's :class:`~daemon.owner.Owner`'s
decision (take over, hand over, step down), fed the views and what the tasks
meet; the runtime steps the tasks it activates, sends their outputs and ships
every commit to their replicas (:mod:`daemon.replication`), whose outputs
leave once all hold it.
"""

from __future__ import annotations

import errno
import gc
import heapq
import itertools
import logging
import queue
import time
from dataclasses import dataclass
from typing import Any, Callable

from nodes import FlowError, load_flow
from nodes.eventtime import MAX_TIME
from nodes.plan import plan as make_plan

from .errors import GossipflowError, StaleCommitError, StoreFullError
from .owner import Host as OwnerHost
from .owner import Owner, View
from .ownership import stale
from .placement import place
from .publish import PublishBuffer
from .recovery import LostVotes, Recovery
from .registry import FlowRecord
from .replication import ReplicaServer
from .store import Store, TaskId
from .task import FlowContext, Inbound, PartitionTask, Pressure, decode_entry

log = logging.getLogger("gossipflow.runtime")

MAX_MESSAGE_ENTRIES = 1024
"""Batches (or commits) per message; one message per member is in flight at a time, so
a slow receiver slows its senders instead of drowning in resends."""
MAX_MESSAGE_BYTES = 4 << 20
"""Payload bytes per message (at least one entry goes, however big)."""
MAX_QUEUED_BYTES = 2 * MAX_MESSAGE_BYTES
"""Shuffled bytes queued for one member beyond its message in flight: tasks stop sending
to it until the queue drains, so memory stays bounded however fast sources are."""
REPORT_EVERY = 0.05
"""Seconds between progress reports to the event loop."""
STEP_BUDGET = 0.05
"""Seconds of task steps between two looks at what arrived (views, acks, answers)."""
CHECK_REPLICAS_EVERY = 2.0
"""Seconds between asking each replica how far its copies are: one restarted with a wiped
store is found even when no commit goes to it (a done task of a completed flow)."""
DROP_STALE_EVERY = 5.0
"""Seconds between looks for stale copies to drop (:meth:`Runtime._drop_stale`)."""
DISK_FULL_RETRY = 1.0
"""Seconds a partition whose commit found the disk full pauses before it tries again."""


PLACED = ("running", "completed")
"""Flows whose partitions stay placed (taken over, handed over, replicated): a completed
flow's tasks are done and idle, but its table must outlive the loss of its members as
a running flow's does. A cancelled or failed flow keeps what its members hold."""


def flow_id(record: FlowRecord) -> str:
    """Tasks and their stored data are per run: a replaced or rerun flow starts afresh."""
    return f"{record.name}@{record.run}"


@dataclass
class Hooks:
    """Event-loop side effects, each called on the worker thread and thread-safe."""

    send: Callable[[str, list[list], Callable[[list | None], None]], None]
    """send(member, entries, on_marks): one message with many batches, each entry
    [flow_id, stage, partition, origin, seq, payload]; on_marks gets the receiver's
    mark for each entry, or None when no answer came."""
    call: Callable[[str, str, Any, Callable[[Any], None]], None]
    """call(member, kind, args, on_reply): a replication request to another member's
    :class:`~daemon.replication.ReplicaServer`; on_reply gets its answer or None."""
    failed: Callable[[FlowRecord, str], None]
    """failed(record, error): mark the flow failed cluster-wide."""
    progress: Callable[[str, int, list[int]], None]
    """progress(flow_id, task count, done task indices): for completion and status."""


class RunningFlow:
    """One flow version on this member: its plan, its tasks, and its owner (made by
    ``owner(self)``), which decides the partitions it runs."""

    def __init__(self, record: FlowRecord, partitions: int, replicas: int, store: Store,
                 send: Callable[..., bool], publish: PublishBuffer, batch_size: int,
                 pressure: Pressure, owner: Callable[[RunningFlow], Owner]) -> None:
        self.record = record
        self.id = flow_id(record)
        self.plan = make_plan(load_flow(record.text, record.path))
        self.partitions = partitions
        self.ctx = FlowContext(self.id, self.plan, partitions, store, send, publish.append,
                               batch_size=batch_size, pressure=pressure)
        self.ctx.plan_splits(place(record.members, partitions, replicas), record.splits)
        self.tasks: dict[tuple[int, int], PartitionTask] = {}
        self.total = len(self.plan.stages) * partitions
        self.reported: set[int] = set()
        self.owner = owner(self)

    def task_ids(self, p: int) -> list[TaskId]:
        return [TaskId(self.id, stage.id, p) for stage in self.plan.stages]

    def activate(self, p: int, epoch: int, replicas: tuple[str, ...]) -> list[PartitionTask]:
        tasks = [PartitionTask(self.ctx, stage, p, epoch, replicas, fenced=True)
                 for stage in self.plan.stages]
        for task in tasks:
            self.tasks[(task.stage.id, p)] = task
        return tasks

    def deactivate(self, p: int) -> list[PartitionTask]:
        return [self.tasks.pop((stage.id, p)) for stage in self.plan.stages
                if (stage.id, p) in self.tasks]

    def done_indices(self) -> list[int]:
        return sorted(stage * self.partitions + p
                      for (stage, p), task in self.tasks.items() if task.done)


class Runtime:
    """This member's worker: flows in, batches through tasks, outputs out."""

    def __init__(self, me: str, partitions: int, replicas: int, store: Store, hooks: Hooks,
                 batch_size: int = 1000) -> None:
        self.me, self.partitions, self.replicas = me, partitions, replicas
        self.store, self.hooks, self.batch_size = store, hooks, batch_size
        self.lost_votes = LostVotes(store, me)
        """Flows whose votes this member lost with its store (:mod:`daemon.recovery`)."""
        self._drop_at = self._check_at = 0.0
        self.server = ReplicaServer(store, running=self._runs, votes=self.lost_votes.votes)
        self.flows: dict[str, RunningFlow] = {}
        self._records: dict[str, FlowRecord] = {}  # name -> latest record seen
        self._inbox: queue.Queue = queue.Queue()
        self._running = False
        self._outgoing: dict[str, list[tuple[list, TaskId, str]]] = {}
        self._in_flight: set[str] = set()  # members with a shuffle message on its way
        self._queued: dict[str, int] = {}  # member -> payload bytes in _outgoing
        self.pressure = Pressure()
        self._resuming: dict[TaskId, float] = {}
        """Tasks taken over mid-flow that have not processed a record yet: since when."""
        self._final: dict[str, dict] = {}  # figures of flows that stopped here
        self.published = PublishBuffer()
        self._ready: dict[TaskId, PartitionTask] = {}
        """Tasks that may have work now: checked, stepped, and kept while they still have."""
        self._timers: list[tuple[float, int, PartitionTask]] = []
        """A heap of (when, tie, task): tasks with work later (a commit interval, a
        deletion wait), moved to ``_ready`` when due; so a step costs what is ready, not
        what waits."""
        self._timer_of: dict[TaskId, float] = {}
        """Each task's earliest time in ``_timers`` (later entries of it are stale)."""
        self._ties = itertools.count()
        self.view = View.of(me, (), (), partitions, replicas)
        """Members alive (or suspect) in our view, and placement over them."""
        self.has_view = False
        """Whether the event loop sent a view yet (it does once joined): until then we
        know too little of the cluster to run anything."""
        self._to_replicate: set[PartitionTask] = set()
        self._replica_out: dict[str, list[tuple[PartitionTask, int, bytes]]] = {}
        """Per member, commits taken from their logs, waiting for a message: (task, number,
        bytes)."""
        self._replicating: set[str] = set()  # members with a commits message on its way

    # ------------------------------------------------------------------ from other threads

    def stop(self) -> None:
        """Make :meth:`run` return after its current step."""
        self._running = False
        self._inbox.put(("stop",))

    def post(self, *item: Any) -> None:
        """Hand the worker something to do (thread-safe): ("flow", record),
        ("view", alive, forgotten), ("data", flow_id, stage, partition, origin, seq,
        payload, reply), ("ack", task_id, destination, mark), ("reply", fn, answer)."""
        self._inbox.put(item)

    # ------------------------------------------------------------------ the runtime's thread

    def run(self) -> None:
        """Run tasks until :meth:`stop`."""
        self._running = True
        next_report = 0.0
        while self._running:
            now = time.monotonic()
            self._due(now)
            timeout = 0.0 if self._ready else min(
                REPORT_EVERY, self._timers[0][0] - now if self._timers else REPORT_EVERY)
            self._drain(timeout)
            now = time.monotonic()
            self._due(now)
            ready, self._ready = self._ready, {}
            # Tasks with shuffled input before sources (what is in flight drains before more
            # is read, and a source's long step never makes it wait a round), then the one
            # that stepped longest ago first: sources share what the pressure allows.
            tasks = iter(sorted(ready.values(), key=lambda t: (t.stage.kind == "source",
                                                                t.stepped_at)))
            for task in tasks:
                if not self._current(task):
                    continue
                wake = task.wake_at(now)
                if wake is not None and wake <= now:
                    task.stepped_at = now
                    self._step(task)
                    wake = task.wake_at(now) if self._current(task) else None
                if wake is not None:
                    self._wake(task, wake)
                if not self._running or time.monotonic() - now > STEP_BUDGET:
                    break
            self._ready.update({t.id: t for t in tasks})  # not reached: next time
            self._flush()
            now = time.monotonic()
            if now >= next_report:
                next_report = now + REPORT_EVERY
                self._housekeeping(now)
                self._flush()

    def _wake(self, task: PartitionTask, at: float) -> None:
        """Step ``task`` next at ``at`` (now or later)."""
        if at <= time.monotonic():
            self._ready[task.id] = task
        elif at < self._timer_of.get(task.id, float("inf")):
            self._timer_of[task.id] = at
            heapq.heappush(self._timers, (at, next(self._ties), task))

    def _due(self, now: float) -> None:
        """Move the tasks whose time came to ``_ready``."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, _, task = heapq.heappop(timers)
            if self._timer_of.get(task.id) == at:
                del self._timer_of[task.id]
                self._ready[task.id] = task

    def _drain(self, timeout: float) -> None:
        """Handle everything posted; wait up to ``timeout`` seconds for the first item."""
        try:
            item = self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "flow":
            self._on_flow(item[1])
        elif kind == "data":
            self._on_data(*item[1:])
        elif kind == "sent":
            self._in_flight.discard(item[1])
        elif kind == "reply":
            item[1](item[2])
        elif kind == "view":
            self._on_view(*item[1:])
        elif kind == "ack":
            task_id, dest, mark = item[1:]
            running = self.flows.get(task_id.flow)
            task = running and running.tasks.get((task_id.stage, task_id.partition))
            if task is not None:
                task.on_ack(dest, mark)
                self._ready[task.id] = task

    # ------------------------------------------------------------------ lost votes

    def _recover(self, now: float) -> None:
        """A round recovering each flow's lost votes, once a second at most."""
        for fid in sorted(self.lost_votes.flows or ()):
            running = self.flows.get(fid)
            record = self._records.get(fid.rpartition("@")[0])
            if running is None and (record is None or flow_id(record) != fid
                                    or record.status not in PLACED):
                self.lost_votes.done(fid, "flow stopped")
            elif running is not None and running.owner.quorate() \
                    and self.lost_votes.due(fid, now):
                tasks = [t for p in range(self.partitions) for t in running.task_ids(p)]
                Recovery(self.me, self.store, self._call, tasks, list(self.view.members),
                         running.owner.voters, lambda ok, fid=fid: ok and self.lost_votes.done(
                             fid, "recovered")).start()

    def _drop_stale(self) -> None:
        """Drop the copies this member holds of tasks whose replica set moved on without
        it (:func:`daemon.ownership.stale`); its votes stay."""
        dropped: dict[str, int] = {}
        for task in self.store.tasks():
            running = self.flows.get(task.flow)
            if running is not None and running.owner.busy(task.partition):
                continue
            meta = self.store.task_meta(task)
            if stale(meta.last, meta.epoch, self.store.accepted(task), self.me):
                size = self.store.drop_copy(task)
                dropped[task.flow] = dropped.get(task.flow, 0) + size
        for fid, size in sorted(dropped.items()):
            log.info("event=stale_copies_dropped member=%s flow=%s bytes=%d", self.me, fid, size)

    def _check_replicas(self) -> None:
        """Ask each replica of our running tasks how far its copies are (``probe``); a
        copy behind what it acknowledged was lost (:meth:`Owner.lost_copy`)."""
        asked: dict[str, list[PartitionTask]] = {}
        for running in self.flows.values():
            for task in running.tasks.values():
                for member in task.log.replicas:
                    asked.setdefault(member, []).append(task)
        for member, tasks in asked.items():
            self._call(member, "probe", {"tasks": [list(t.id) for t in tasks]},
                       lambda answer, m=member, ts=tasks: self._probed(m, ts, answer))

    def _probed(self, member: str, tasks: list[PartitionTask], answer: Any) -> None:
        if not (isinstance(answer, list) and len(answer) == len(tasks)):
            return  # no answer: the view will tell if it is gone
        for task, meta in zip(tasks, answer):
            if self._current(task) and isinstance(meta, list) and meta \
                    and type(meta[0]) is int and task.log.lost(member, meta[0]):
                self.flows[task.id.flow].owner.lost_copy(task, member, meta[0])

    def _runs(self, task: TaskId) -> bool:
        """Whether ``task`` runs here (asked from the pipe's thread: reads only)."""
        running = self.flows.get(task.flow)
        return running is not None and (task.stage, task.partition) in running.tasks

    def _current(self, task: PartitionTask) -> bool:
        """Whether ``task`` is still running here (not stepped down, flow not stopped)."""
        running = self.flows.get(task.id.flow)
        return running is not None and running.tasks.get((task.id.stage, task.id.partition)) is task

    def _on_flow(self, record: FlowRecord) -> None:
        self._records[record.name] = record
        for fid in [fid for fid, f in self.flows.items() if f.record.name == record.name]:
            if fid != flow_id(record) or record.status not in PLACED:
                log.info("event=flow_stopped member=%s flow=%s status=%s",
                         self.me, fid, record.status)
                self._final[fid] = self._figures(self._stop(fid))
            else:
                self.flows[fid].record = record
        self._drop_replaced(record)
        if record.status not in PLACED or flow_id(record) in self.flows:
            return
        try:
            running = RunningFlow(record, self.partitions, self.replicas, self.store,
                                  self._send, self.published, self.batch_size, self.pressure,
                                  self._owner)
        except (FlowError, GossipflowError, OSError) as err:
            log.error("event=flow_failed member=%s flow=%s error=%r",
                      self.me, record.name, str(err))
            self.hooks.failed(record, str(err))
            return
        self.flows[running.id] = running
        gc.freeze()  # the plan and tasks live as long as the flow: keep them out of collections
        log.info("event=flow_started member=%s flow=%s", self.me, running.id)
        running.owner.tick()

    def _drop_replaced(self, record: FlowRecord) -> None:
        """Delete what this store holds of other versions of ``record``'s flow: the
        registry replaced them (``submit --replace``), so they never run or answer a
        query again. Only versions of a name the registry knows: data of a flow whose
        record has not reached us yet is a replica's and must stay."""
        current = flow_id(record)
        old = [t for t in self.store.tasks()
               if t.flow != current and t.flow.rpartition("@")[0] == record.name]
        for task in old:
            self.store.drop_task(task)
        for fid in sorted({t.flow for t in old}):
            log.info("event=replaced_version_dropped member=%s flow=%s tasks=%d",
                     self.me, fid, sum(t.flow == fid for t in old))

    # ------------------------------------------------------------------ ownership

    def _on_view(self, alive: list[str], forgotten: list[str]) -> None:
        self.view = View.of(self.me, alive, forgotten, self.partitions, self.replicas)
        self.has_view = True
        self.lost_votes.joined(flow_id(r) for r in self._records.values()
                               if r.status in PLACED and self.me in r.members)
        log.info("event=view member=%s alive=%s", self.me, ",".join(self.view.members))
        for running in list(self.flows.values()):
            running.owner.view(self.view)

    def _owner(self, running: RunningFlow) -> Owner:
        """The owner of ``running``'s partitions, acting on this runtime."""
        return Owner(self.me, running.id, self.partitions, running.task_ids,
                     running.record.members, self.store, OwnerHost(
                         activate=lambda p, epoch, replicas: self._activate(
                             running, p, epoch, replicas),
                         deactivate=lambda p: self._deactivate(running, p),
                         call=self._call, soon=lambda fn: self.post("reply", lambda _: fn(), None),
                         shipped=self._to_replicate.add, open=lambda p: self._open(running, p)),
                     time.monotonic, self.view if self.has_view else None)

    def _activate(self, running: RunningFlow, p: int, epoch: int,
                  replicas: tuple[str, ...]) -> list[PartitionTask]:
        """The owner took ``p`` over: run its tasks, their outbox first."""
        tasks = running.activate(p, epoch, replicas)
        resumed = any(task.number for task in tasks)  # a takeover mid-flow, not a start
        for task in tasks:
            task.pump()  # what a previous primary left in the outbox goes out again
            self._ready[task.id] = task
            if resumed:
                self._resuming[task.id] = time.monotonic()
        return tasks

    def _open(self, running: RunningFlow, p: int) -> None:
        """The owner's takeover of ``p`` completed: its tasks release what they made."""
        for stage in running.plan.stages:
            task = running.tasks.get((stage.id, p))
            if task is not None:
                task.open()
                self._ready[task.id] = task

    def _deactivate(self, running: RunningFlow, p: int) -> None:
        """The owner stepped down from ``p``: its tasks stop, their inputs go back."""
        for task in running.deactivate(p):
            task.abandon()
            self._ready.pop(task.id, None)
            self._timer_of.pop(task.id, None)
            self._resuming.pop(task.id, None)
            self._to_replicate.discard(task)

    def _call(self, member: str, kind: str, args: Any, on_reply: Callable[[Any], None]) -> None:
        """A replication request; the answer comes back through the inbox either way."""
        if member != self.me:
            self.hooks.call(member, kind, args, lambda answer: self.post("reply", on_reply, answer))
            return
        try:
            answer = self.server.handle(kind, args)
        except (GossipflowError, ValueError) as err:
            log.warning("event=replication_refused member=%s kind=%s error=%r",
                        self.me, kind, str(err))
            answer = None
        self.post("reply", on_reply, answer)

    # ------------------------------------------------------------------ data

    def _on_data(self, fid: str, stage: int, partition: int, origin: str, seq: int,
                 payload: bytes, reply: Callable[[int | None], None]) -> None:
        running = self.flows.get(fid)
        task = running and running.tasks.get((stage, partition))
        if task is None:  # not running here (not ours, or not taken over yet): resent later
            reply(None)
            return
        try:
            eos, records, watermark = decode_entry(payload)
        except FlowError as err:
            log.warning("event=bad_batch member=%s flow=%s error=%r", self.me, fid, str(err))
            reply(None)
            return
        task.receive(Inbound(origin, seq, eos, records, reply, watermark), time.monotonic())
        self._ready[task.id] = task

    def _step(self, task: PartitionTask) -> None:
        running = self.flows[task.id.flow]
        try:
            task.step()
        except StaleCommitError as err:  # a newer primary made our store promise its epoch
            log.info("event=stale_epoch member=%s task=%s error=%r", self.me, task.id, str(err))
            running.owner.stale(task.partition)
            return
        except FlowError as err:
            self._fail(running, f"stage {task.stage.name!r} partition {task.partition}: {err}")
            return
        except (StoreFullError, OSError) as err:
            if isinstance(err, OSError) and err.errno not in (errno.ENOSPC, errno.EDQUOT):
                self._fail(running, f"partition {task.partition}: {err}")
                return
            # the commit was aborted and the store is intact: pause the partition (the
            # step's memory is past its store, so its tasks start again from the store)
            log.error("event=disk_full member=%s task=%s retry_in=%.1f error=%r", self.me,
                      task.id, DISK_FULL_RETRY, str(err))
            running.owner.step_down(task.partition, "disk full", DISK_FULL_RETRY)
            return
        except GossipflowError as err:
            self._fail(running, f"partition {task.partition}: {err}")
            return
        if task.log.commits:
            self._to_replicate.add(task)
        if task.id in self._resuming and task.records_in:
            log.info("event=partition_resumed member=%s flow=%s partition=%d stage=%d after=%.3f",
                     self.me, task.id.flow, task.partition, task.stage.id,
                     time.monotonic() - self._resuming.pop(task.id))

    def _fail(self, running: RunningFlow, error: str) -> None:
        log.error("event=flow_failed member=%s flow=%s error=%r", self.me, running.id, error)
        self._stop(running.id)
        self.hooks.failed(running.record, error)

    def _stop(self, fid: str) -> RunningFlow:
        """Stop running a flow here; the inputs its tasks hold are answered "no mark"
        (a message to this member carries batches of other flows too: it must finish)."""
        running = self.flows.pop(fid)
        running.owner.stop()
        for task in running.tasks.values():
            task.abandon()
            self._timer_of.pop(task.id, None)
        return running

    def _send(self, task_id: TaskId, dest: str, seq: int, payload: bytes) -> bool:
        running = self.flows.get(task_id.flow)
        if running is None:
            return False
        stage, partition = (int(x) for x in dest.split("/"))
        origin = f"{task_id.stage}/{task_id.partition}"
        owner = self.view.sets[partition][0]
        if owner == self.me:
            self._on_data(running.id, stage, partition, origin, seq, payload,
                          lambda mark: self.post("ack", task_id, dest, mark))
            return True
        if self._queued.get(owner, 0) >= MAX_QUEUED_BYTES:
            return False
        self._queued[owner] = self._queued.get(owner, 0) + len(payload)
        self._outgoing.setdefault(owner, []).append(
            ([running.id, stage, partition, origin, seq, payload], task_id, dest))
        return True

    def _flush(self) -> None:
        """Send what the last steps produced: one message per member, one at a time."""
        self._replicate()
        for member, waiting in self._outgoing.items():
            if member in self._in_flight or not waiting:
                continue
            items = _take(waiting, lambda item: len(item[0][5]))
            self._queued[member] -= sum(len(entry[5]) for entry, _, _ in items)
            self._in_flight.add(member)

            def on_marks(marks: list | None, items: list = items, member: str = member) -> None:
                if marks is None or len(marks) != len(items):
                    marks = [None] * len(items)
                for (_, task_id, dest), mark in zip(items, marks):
                    self.post("ack", task_id, dest, mark if isinstance(mark, int) else None)
                self.post("sent", member)
            self.hooks.send(member, [entry for entry, _, _ in items], on_marks)

    # ------------------------------------------------------------------ replication

    def _replicate(self) -> None:
        """Ship new commits to replicas: one message per member in flight at a time."""
        for task in self._to_replicate:
            for member in task.log.members:
                if task.log.wants(member):
                    self._replica_out.setdefault(member, []).extend(
                        (task, number, data) for number, data in task.log.take(member))
        self._to_replicate.clear()
        for member, waiting in self._replica_out.items():
            if member in self._replicating or not waiting:
                continue
            items = _take(waiting, lambda item: len(item[2]))
            self._replicating.add(member)
            entries = [[t.id.flow, t.id.stage, t.id.partition, data] for t, _, data in items]
            self.hooks.call(member, "commits", entries, lambda answer, items=items, m=member:
                            self.post("reply", lambda a: self._replicated(m, items, a), answer))

    def _replicated(self, member: str, items: list[tuple[PartitionTask, int, bytes]],
                    answer: Any) -> None:
        self._replicating.discard(member)
        answers = answer if isinstance(answer, list) and len(answer) == len(items) else []
        for i, (task, _, _) in enumerate(items):
            if not self._current(task):
                continue
            got = answers[i] if answers else None
            if not (isinstance(got, list) and len(got) == 2
                    and all(isinstance(x, int) for x in got)):
                task.log.on_lost(member)  # housekeeping sends again
            elif got[1] > task.epoch:
                log.info("event=stale_epoch member=%s task=%s replica=%s epoch=%d promised=%d",
                         self.me, task.id, member, task.epoch, got[1])
                self.flows[task.id.flow].owner.stale(task.partition)
            elif task.log.lost(member, got[0]):
                self.flows[task.id.flow].owner.lost_copy(task, member, got[0])
            else:
                task.on_replicated(member, got[0])
                self._ready[task.id] = task
                if task.log.wants(member):
                    self._to_replicate.add(task)

    def _housekeeping(self, now: float) -> None:
        if self.lost_votes.flows:
            self._recover(now)
        if now >= self._drop_at:
            self._drop_at = now + DROP_STALE_EVERY
            self._drop_stale()
        if now >= self._check_at:
            self._check_at = now + CHECK_REPLICAS_EVERY
            self._check_replicas()
        self.pressure.outbox_bytes = sum(task.pending_bytes for running in self.flows.values()
                                         for task in running.tasks.values())
        for running in list(self.flows.values()):
            running.owner.tick()
            for task in list(running.tasks.values()):
                if task.unsent:
                    task.pump()  # what was refused, timed out or held back goes again
                if task.broken:
                    self._fail(running, f"partition {task.partition}: {task.broken}")
                    break
                if task.log.commits:
                    self._to_replicate.add(task)
                if task.id not in self._ready and (wake := task.wake_at(now)) is not None:
                    self._wake(task, wake)  # e.g. a source the pressure held back
            else:
                self._report(running)

    def _report(self, running: RunningFlow) -> None:
        """Tell the event loop which tasks of ``running`` are done, if that changed."""
        done = running.done_indices()
        if set(done) != running.reported:
            running.reported = set(done)
            self.hooks.progress(running.id, running.total, done)

    def status(self) -> dict[str, Any]:
        """Per flow, per stage ("id name"): records in/out, tasks done, outputs unacknowledged
        (read from the event-loop thread: approximate, never blocking). Flows that stopped
        keep their last figures."""
        out = dict(self._final)
        for fid, running in list(self.flows.items()):
            out[fid] = self._figures(running)
        return out

    def partition_states(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per flow, the partitions this member runs, hands over, takes over or waits for
        (:meth:`Owner.states`)."""
        return {fid: running.owner.states() for fid, running in list(self.flows.items())}

    @staticmethod
    def _figures(running: RunningFlow) -> dict[str, dict[str, int]]:
        stages: dict[str, dict[str, int]] = {}
        for (stage, _), task in list(running.tasks.items()):
            s = stages.setdefault(f"{stage} {task.stage.name}", {
                "records_in": 0, "records_out": 0, "done": 0, "tasks": 0, "unacked": 0})
            s["unacked"] += task.pending_count
            s["records_in"] += task.records_in
            s["records_out"] += task.records_out
            s["done"] += task.done
            s["tasks"] += 1
            if task.stage.timed:  # windows and joins: how far event time got, what was late
                s["late"] = s.get("late", 0) + sum(task.late.values())
                s["late_after_idle"] = s.get("late_after_idle", 0) \
                    + sum(task.late_after_idle.values())
                s["watermark"] = min(s.get("watermark", MAX_TIME), task.senders_watermark())
        return stages


def _take(waiting: list, size: Callable[[Any], int]) -> list:
    """Remove and return the first entries of ``waiting`` that fit one message."""
    count, total = 0, 0
    for item in waiting[:MAX_MESSAGE_ENTRIES]:
        total += size(item)
        if count and total > MAX_MESSAGE_BYTES:
            break
        count += 1
    items = waiting[:count]
    del waiting[:count]
    return items
