"""The runtime: runs this member's partition tasks of every running flow.

It runs in the daemon's runtime process (:mod:`daemon.worker`), so user code
(the flow file and its functions) never shares an interpreter with the event
loop that answers probes: a busy flow cannot make its daemon look dead. What
arrives (registry changes, shuffled batches, acknowledgements) is handed in
through :meth:`Runtime.post`, from any thread; what must go out leaves through
``Hooks``, called on the runtime's thread.

Placement follows the live view: partition p's replica set is
``place(alive members)[p]``, its first member the primary. When this member
becomes primary of partitions it does not run, it takes them over
(:mod:`daemon.takeover`) with a new epoch; when it stops being their primary
(or their replica set changes) it stops running them, and keeps their data as
a replica. Every commit goes to the replicas (:mod:`daemon.replication`) and
its outputs leave once all hold it.

A member acts for a flow only while it sees a majority of the flow's voters
(:mod:`daemon.ownership`): one cut off alone, or restarted and not yet joined,
takes nothing over and commits nothing. Safety does not rest on that view:
a takeover needs a majority's promises and a member of the last durable
replica set, whatever the views say.
"""

from __future__ import annotations

import errno
import gc
import logging
import queue
import time
from dataclasses import dataclass
from typing import Any, Callable

from nodes import FlowError, load_flow
from nodes.plan import plan as make_plan

from .errors import GossipflowError, StaleCommitError, StoreFullError
from .handover import Handover
from .ownership import quorate, stale, voters
from .placement import place
from .publish import PublishBuffer
from .recovery import LostVotes, Recovery
from .registry import FlowRecord
from .replication import ReplicaServer, epoch_after
from .store import Store, TaskId
from .takeover import Takeover
from .task import FlowContext, Inbound, PartitionTask, Pressure, decode_batch

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
RETRY_TAKEOVER = 0.3
"""Seconds before a failed takeover of a partition is tried again."""
DISK_FULL_RETRY = 1.0
"""Seconds a partition whose commit found the disk full pauses before it tries again."""
HANDOVER_POLL = 0.1
"""Seconds between asking whether the member handing a partition to us has stepped down."""
WAIT_FOR_HANDOVER = 120.0
"""Seconds we wait for a member still running a partition of ours to hand it over (it
gives up copying sooner, see handover.TIMEOUT: 20 s plus 1 s per 4 MiB of snapshot);
then we take it over regardless. The partition runs meanwhile, on that member."""


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
    """One flow version on this member: its plan, and the partitions it is primary of."""

    def __init__(self, record: FlowRecord, partitions: int, replicas: int, store: Store,
                 send: Callable[..., bool], publish: PublishBuffer, batch_size: int,
                 pressure: Pressure) -> None:
        self.record = record
        self.id = flow_id(record)
        self.plan = make_plan(load_flow(record.text, record.path))
        self.partitions = partitions
        self.ctx = FlowContext(self.id, self.plan, partitions, store, send, publish.append,
                               batch_size=batch_size, pressure=pressure)
        self.ctx.plan_splits(place(record.members, partitions, replicas))
        self.tasks: dict[tuple[int, int], PartitionTask] = {}
        self.active: dict[int, tuple[int, tuple[str, ...]]] = {}
        """Partitions running here: partition -> (epoch, replicas)."""
        self.takeovers: dict[int, Takeover] = {}
        self.handovers: dict[int, Handover] = {}
        """Partitions running here being copied to the members their new replica set adds."""
        self.deferred: dict[int, float] = {}
        """Partitions of ours another member still runs (handing them over): since when."""
        self.retry_at: dict[int, float] = {}
        self.seen: dict[int, int] = {}
        """Per partition, the highest epoch a failed takeover met."""
        self.total = len(self.plan.stages) * partitions
        self.reported: set[int] = set()

    def task_ids(self, p: int) -> list[TaskId]:
        return [TaskId(self.id, stage.id, p) for stage in self.plan.stages]

    def activate(self, p: int, epoch: int, replicas: tuple[str, ...]) -> list[PartitionTask]:
        tasks = [PartitionTask(self.ctx, stage, p, epoch, replicas) for stage in self.plan.stages]
        for task in tasks:
            self.tasks[(task.stage.id, p)] = task
        self.active[p] = (epoch, replicas)
        return tasks

    def deactivate(self, p: int) -> list[PartitionTask]:
        self.active.pop(p, None)
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
        """Tasks that may have work: checked, stepped, and kept while they still have."""
        self.view: list[str] = [me]
        """Members alive (or suspect) in our view, ourselves included, sorted."""
        self.forgotten: frozenset[str] = frozenset()
        """Members removed for good (``gossipflow forget``): they vote in no flow."""
        self.has_view = False
        """Whether the event loop sent a view yet (it does once joined): until then we
        know too little of the cluster to run anything."""
        self.sets: list[list[str]] = place(self.view, partitions, replicas)
        self._to_replicate: set[PartitionTask] = set()
        self._replica_out: dict[str, list[tuple[PartitionTask, bytes]]] = {}
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
            wakes = [w for t in self._ready.values() if (w := t.wake_at(now)) is not None]
            self._drain(timeout=min([REPORT_EVERY, *wakes]) - now if wakes else REPORT_EVERY)
            now = time.monotonic()
            ready, self._ready = self._ready, {}
            stepped: dict[TaskId, PartitionTask] = {}
            # Tasks with shuffled input before sources (what is in flight drains before more
            # is read, and a source's long step never makes it wait a round), then the one
            # that stepped longest ago first: sources share what the pressure allows.
            tasks = iter(sorted(ready.values(), key=lambda t: (t.stage.kind == "source",
                                                                t.stepped_at)))
            for task in tasks:
                wake = task.wake_at(now)
                if wake is not None and wake <= now and self._current(task):
                    task.stepped_at = now
                    self._step(task)
                    wake = task.wake_at(now)
                if wake is not None and self._current(task):
                    stepped[task.id] = task
                if not self._running or time.monotonic() - now > STEP_BUDGET:
                    break
            self._ready.update({t.id: t for t in tasks})  # not reached: next time
            self._ready.update(stepped)
            self._flush()
            now = time.monotonic()
            if now >= next_report:
                next_report = now + REPORT_EVERY
                self._housekeeping(now)
                self._flush()

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
            elif running is not None and self.quorate(running) \
                    and self.lost_votes.due(fid, now):
                tasks = [t for p in range(self.partitions) for t in running.task_ids(p)]
                Recovery(self.me, self.store, self._call, tasks, list(self.view),
                         self.voters(running), lambda ok, fid=fid: ok and self.lost_votes.done(
                             fid, "recovered")).start()

    def _drop_stale(self) -> None:
        """Drop the copies this member holds of tasks whose replica set moved on without
        it (:func:`daemon.ownership.stale`); its votes stay."""
        dropped: dict[str, int] = {}
        for task in self.store.tasks():
            running = self.flows.get(task.flow)
            if running is not None and (task.partition in running.active
                                        or task.partition in running.takeovers):
                continue
            meta = self.store.task_meta(task)
            if stale(meta.last, meta.epoch, self.store.accepted(task), self.me):
                size = self.store.drop_copy(task)
                dropped[task.flow] = dropped.get(task.flow, 0) + size
        for fid, size in sorted(dropped.items()):
            log.info("event=stale_copies_dropped member=%s flow=%s bytes=%d", self.me, fid, size)

    def _check_replicas(self) -> None:
        """Ask each replica of our running tasks how far its copies are (``probe``); a
        copy behind what it acknowledged was lost (:meth:`_lost_copy`)."""
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
                self._lost_copy(task, member, meta[0])

    def _lost_copy(self, task: PartitionTask, member: str, last: int) -> None:
        """Replica ``member`` lost commits it had acknowledged (a wiped store, a power
        loss): only a snapshot brings it back, and the takeover that follows sends one."""
        log.warning("event=replica_lost_data member=%s task=%s replica=%s last=%d "
                    "acknowledged=%d", self.me, task.id, member, last, task.log.acked[member])
        self._deactivate(self.flows[task.id.flow], task.partition, "replica lost data")

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
                                  self._send, self.published, self.batch_size, self.pressure)
        except (FlowError, GossipflowError, OSError) as err:
            log.error("event=flow_failed member=%s flow=%s error=%r",
                      self.me, record.name, str(err))
            self.hooks.failed(record, str(err))
            return
        self.flows[running.id] = running
        gc.freeze()  # the plan and tasks live as long as the flow: keep them out of collections
        log.info("event=flow_started member=%s flow=%s", self.me, running.id)
        self._place(running, time.monotonic())

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

    # ------------------------------------------------------------------ placement

    def _on_view(self, alive: list[str], forgotten: list[str]) -> None:
        self.forgotten = frozenset(forgotten)
        self.view = sorted((set(alive) | {self.me}) - self.forgotten)
        self.sets = place(self.view, self.partitions, self.replicas)
        self.has_view = True
        self.lost_votes.joined(flow_id(r) for r in self._records.values()
                               if r.status in PLACED and self.me in r.members)
        log.info("event=view member=%s alive=%s", self.me, ",".join(self.view))
        now = time.monotonic()
        for running in list(self.flows.values()):
            self._place(running, now)

    def voters(self, running: RunningFlow) -> frozenset[str]:
        """The flow's voters: the members it was submitted to, less those forgotten."""
        return voters(running.record.members, self.forgotten)

    def quorate(self, running: RunningFlow) -> bool:
        """Whether we see a majority of the flow's voters (and were not forgotten)."""
        return self.me not in self.forgotten and quorate(self.view, self.voters(running))

    def _place(self, running: RunningFlow, now: float) -> None:
        """Start, keep, hand over or stop running each partition as the view says."""
        quorate = self.has_view and self.quorate(running)
        starting = []
        for p in range(self.partitions):
            rset = self.sets[p]
            mine = quorate and rset[0] == self.me
            if p in running.active:
                self._keep(running, p, quorate, rset, now)
            takeover = running.takeovers.get(p)
            if takeover is not None and (not mine or takeover.sets[p] != rset):
                takeover.drop(p)
                del running.takeovers[p]
            if not mine:
                running.deferred.pop(p, None)
            elif p not in running.active and p not in running.takeovers \
                    and now >= running.retry_at.get(p, 0.0):
                starting.append(p)
        if starting:
            self._take_over(running, starting, now)

    def _keep(self, running: RunningFlow, p: int, quorate: bool, rset: list[str],
              now: float) -> None:
        """A partition running here whose replica set may have changed: keep it, hand it
        over to the members the new set adds (:mod:`daemon.handover`), or stop now."""
        replicas = running.active[p][1]
        learners = tuple(m for m in rset if m != self.me and m not in replicas)
        handover = running.handovers.get(p)
        if handover is not None and (not quorate or handover.learners != learners):
            handover.cancel()
            del running.handovers[p]
            handover = None
        if not quorate or (list(rset) != [self.me, *replicas] and (
                not learners or not set(replicas) <= set(self.view))):
            # members only left (the others' copies are current), or a replica is gone (no
            # commit can be durable until a takeover names the new replica set)
            self._deactivate(running, p, "view")
        elif learners and handover is None:
            tasks = [t for (_, q), t in running.tasks.items() if q == p]
            handover = Handover(p, learners, tasks, self.store, self._call, now,
                                on_shipped=self._to_replicate.add,
                                on_stale=lambda task: self._deactivate(running, p, "stale"))
            running.handovers[p] = handover
            log.info("event=handover_start member=%s flow=%s partition=%d to=%s",
                     self.me, running.id, p, ",".join(learners))
            handover.start()
        elif handover is not None:
            state = handover.check(now)
            if state in ("done", "timeout"):
                log.info("event=handover_%s member=%s flow=%s partition=%d to=%s copies=%d "
                         "took=%.3f", state, self.me, running.id, p, ",".join(learners),
                         handover.copies, now - handover.started)
                self._deactivate(running, p, "handed over")

    def _take_over(self, running: RunningFlow, partitions: list[int], now: float) -> None:
        tasks = {p: running.task_ids(p) for p in partitions}
        seen = max(max(running.seen.get(p, 0), *(max(m.epoch, m.promised) for m in map(
            self.store.task_meta, tasks[p]))) for p in partitions)
        epoch = epoch_after(seen, self.me)
        waiting = frozenset(p for p in partitions
                            if now - running.deferred.get(p, now) < WAIT_FOR_HANDOVER)
        takeover = Takeover(
            self.me, self.store, self._call, epoch, tasks,
            {p: self.sets[p] for p in partitions}, list(self.view), self.voters(running),
            on_ready=lambda p: self._took_over(running, takeover, p),
            on_failed=lambda p, seen: self._takeover_failed(running, takeover, p, seen),
            defer_to_running=waiting,
            on_deferred=lambda p: self._takeover_deferred(running, takeover, p),
            soon=lambda fn: self.post("reply", lambda _: fn(), None))
        for p in partitions:
            running.takeovers[p] = takeover
        log.info("event=takeover_start member=%s flow=%s partitions=%d epoch=%d",
                 self.me, running.id, len(partitions), epoch)
        takeover.start()

    def _takeover_deferred(self, running: RunningFlow, takeover: Takeover, p: int) -> None:
        """Another member still runs ``p``: it copies it here, then steps down."""
        if running.takeovers.get(p) is takeover:
            del running.takeovers[p]
            now = time.monotonic()
            if p not in running.deferred:
                running.deferred[p] = now
                log.info("event=takeover_deferred member=%s flow=%s partition=%d",
                         self.me, running.id, p)
            running.retry_at[p] = now + HANDOVER_POLL

    def _took_over(self, running: RunningFlow, takeover: Takeover, p: int) -> None:
        if running.takeovers.get(p) is not takeover or self.flows.get(running.id) is not running:
            return
        del running.takeovers[p]
        running.deferred.pop(p, None)
        tasks = running.activate(p, takeover.epoch, tuple(takeover.sets[p][1:]))
        resumed = any(task.number for task in tasks)  # a takeover mid-flow, not a start
        for task in tasks:
            task.pump()  # what a previous primary left in the outbox goes out again
            self._ready[task.id] = task
            if resumed:
                self._resuming[task.id] = time.monotonic()
        log.info("event=partition_active member=%s flow=%s partition=%d epoch=%d replicas=%s "
                 "took=%.3f", self.me, running.id, p, takeover.epoch,
                 ",".join(takeover.sets[p][1:]) or "-", time.monotonic() - takeover.started)

    def _takeover_failed(self, running: RunningFlow, takeover: Takeover, p: int,
                         seen: int) -> None:
        if running.takeovers.get(p) is takeover:
            del running.takeovers[p]
            running.seen[p] = max(running.seen.get(p, 0), seen)
            running.retry_at[p] = time.monotonic() + RETRY_TAKEOVER

    def _deactivate(self, running: RunningFlow, p: int, why: str) -> None:
        handover = running.handovers.pop(p, None)
        if handover is not None:
            handover.cancel()
        for task in running.deactivate(p):
            task.abandon()
            self._ready.pop(task.id, None)
            self._resuming.pop(task.id, None)
            self._to_replicate.discard(task)
        running.retry_at[p] = time.monotonic() + (RETRY_TAKEOVER if why == "stale" else 0.0)
        log.info("event=step_down member=%s flow=%s partition=%d reason=%s",
                 self.me, running.id, p, why)

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
            eos, records = decode_batch(payload)
        except FlowError as err:
            log.warning("event=bad_batch member=%s flow=%s error=%r", self.me, fid, str(err))
            reply(None)
            return
        task.receive(Inbound(origin, seq, eos, records, reply), time.monotonic())
        self._ready[task.id] = task

    def _step(self, task: PartitionTask) -> None:
        running = self.flows[task.id.flow]
        try:
            task.step()
        except StaleCommitError as err:  # a newer primary made our store promise its epoch
            log.info("event=stale_epoch member=%s task=%s error=%r", self.me, task.id, str(err))
            self._deactivate(running, task.partition, "stale")
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
            self._deactivate(running, task.partition, "disk full")
            running.retry_at[task.partition] = time.monotonic() + DISK_FULL_RETRY
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
        for task in running.tasks.values():
            task.abandon()
        return running

    def _send(self, task_id: TaskId, dest: str, seq: int, payload: bytes) -> bool:
        running = self.flows.get(task_id.flow)
        if running is None:
            return False
        stage, partition = (int(x) for x in dest.split("/"))
        origin = f"{task_id.stage}/{task_id.partition}"
        owner = self.sets[partition][0]
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
                        (task, data) for _, data in task.log.take(member))
        self._to_replicate.clear()
        for member, waiting in self._replica_out.items():
            if member in self._replicating or not waiting:
                continue
            items = _take(waiting, lambda item: len(item[1]))
            self._replicating.add(member)
            entries = [[t.id.flow, t.id.stage, t.id.partition, data] for t, data in items]
            self.hooks.call(member, "commits", entries, lambda answer, items=items, m=member:
                            self.post("reply", lambda a: self._replicated(m, items, a), answer))

    def _replicated(self, member: str, items: list[tuple[PartitionTask, bytes]],
                    answer: Any) -> None:
        self._replicating.discard(member)
        answers = answer if isinstance(answer, list) and len(answer) == len(items) else []
        for i, (task, _) in enumerate(items):
            if not self._current(task):
                continue
            got = answers[i] if answers else None
            if not (isinstance(got, list) and len(got) == 2
                    and all(isinstance(x, int) for x in got)):
                task.log.on_lost(member)  # housekeeping sends again
            elif got[1] > task.epoch:
                log.info("event=stale_epoch member=%s task=%s replica=%s epoch=%d promised=%d",
                         self.me, task.id, member, task.epoch, got[1])
                self._deactivate(self.flows[task.id.flow], task.partition, "stale")
            elif task.log.lost(member, got[0]):
                self._lost_copy(task, member, got[0])
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
            self._place(running, now)
            for task in list(running.tasks.values()):
                if task.unsent:
                    task.pump()  # what was refused, timed out or held back goes again
                if task.broken:
                    self._fail(running, f"partition {task.partition}: {task.broken}")
                    break
                if task.log.commits:
                    self._to_replicate.add(task)
                if task.id not in self._ready and task.wake_at(now) is not None:
                    self._ready[task.id] = task  # e.g. a source the pressure held back
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
        """Per flow, the partitions this member runs, hands over, takes over or waits for:
        epoch, replicas, state ("active", "handing over" with "to" and "copying",
        "taking over" or "awaiting copy"), and commits not yet on every replica."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for fid, running in list(self.flows.items()):
            parts = out.setdefault(fid, {})
            backlogs: dict[int, int] = {}
            for (_, q), task in list(running.tasks.items()):
                backlogs[q] = max(backlogs.get(q, 0), task.log.backlog)
            for p, (epoch, replicas) in list(running.active.items()):
                parts[str(p)] = {"epoch": epoch, "replicas": list(replicas),
                                 "state": "active", "unreplicated": backlogs.get(p, 0)}
                handover = running.handovers.get(p)
                if handover is not None:
                    parts[str(p)].update(state="handing over", to=list(handover.learners),
                                         copying=not handover.draining)
            for p, takeover in list(running.takeovers.items()):
                waiting = p in running.deferred and not takeover.promising  # probing again
                parts[str(p)] = {"epoch": takeover.epoch, "replicas": list(takeover.sets[p][1:]),
                                 "state": "awaiting copy" if waiting else "taking over",
                                 "unreplicated": 0}
            for p in list(running.deferred):
                if str(p) not in parts:
                    parts[str(p)] = {"epoch": 0, "replicas": list(self.sets[p][1:]),
                                     "state": "awaiting copy", "unreplicated": 0}
        return out

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
