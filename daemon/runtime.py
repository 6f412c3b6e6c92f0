"""The runtime: runs this member's partition tasks of every running flow.

It runs in the daemon's runtime process (:mod:`daemon.worker`), so user code
(the flow file and its functions) never shares an interpreter with the event
loop that answers probes: a busy flow cannot make its daemon look dead. What
arrives (registry changes, shuffled batches, acknowledgements) is handed in
through :meth:`Runtime.post`, from any thread; what must go out leaves through
``Hooks``, called on the runtime's thread.

Placement: a flow's partitions are placed over the members that were alive
when it was submitted (recorded in its registry entry), and stay there for
the flow's life; a member that is down holds its partitions until it is back
(it resumes them from its store). Moving partitions to other members needs
their state there first: that is replication, the next step.
"""

from __future__ import annotations

import gc
import logging
import queue
import time
from dataclasses import dataclass
from typing import Any, Callable

from nodes import FlowError, load_flow
from nodes.plan import plan as make_plan

from .errors import GossipflowError
from .placement import place
from .publish import PublishBuffer
from .registry import FlowRecord
from .store import Store, TaskId
from .task import FlowContext, Inbound, PartitionTask, decode_batch

log = logging.getLogger("gossipflow.runtime")

MAX_MESSAGE_ENTRIES = 1024
"""Batches per shuffle message; one message per member is in flight at a time, so a
slow receiver slows its senders instead of drowning in resends."""
REPORT_EVERY = 0.05
"""Seconds between progress reports to the event loop."""


def flow_id(record: FlowRecord) -> str:
    """Tasks and their stored data are per version: a replaced flow starts afresh."""
    return f"{record.name}@{record.version}"


@dataclass
class Hooks:
    """Event-loop side effects, each called on the worker thread and thread-safe."""

    send: Callable[[str, list[list], Callable[[list | None], None]], None]
    """send(member, entries, on_marks): one message with many batches, each entry
    [flow_id, stage, partition, origin, seq, payload]; on_marks gets the receiver's
    mark for each entry, or None when no answer came."""
    failed: Callable[[FlowRecord, str], None]
    """failed(record, error): mark the flow failed cluster-wide."""
    progress: Callable[[str, int, list[int]], None]
    """progress(flow_id, task count, done task indices): for completion and status."""


class RunningFlow:
    """One flow version's tasks on this member."""

    def __init__(self, record: FlowRecord, me: str, partitions: int, replicas: int,
                 store: Store, send: Callable[..., None], publish: PublishBuffer,
                 batch_size: int) -> None:
        self.record = record
        self.id = flow_id(record)
        self.plan = make_plan(load_flow(record.text, record.path))
        self.owners = [s[0] for s in place(record.members, partitions, replicas)]
        self.partitions = partitions
        ctx = FlowContext(self.id, self.plan, partitions, store, send, publish.append,
                          batch_size=batch_size)
        ctx.splits = {name: source.splits(partitions) for name, source in self.plan.sources.items()}
        self.tasks: dict[tuple[int, int], PartitionTask] = {}
        for stage in self.plan.stages:
            for p in range(partitions):
                if self.owners[p] == me:
                    self.tasks[(stage.id, p)] = PartitionTask(ctx, stage, p)
        self.total = len(self.plan.stages) * partitions
        self.reported: set[int] = set()

    def done_indices(self) -> list[int]:
        return sorted(stage * self.partitions + p
                      for (stage, p), task in self.tasks.items() if task.done)


class Runtime:
    """This member's worker: flows in, batches through tasks, outputs out."""

    def __init__(self, me: str, partitions: int, replicas: int, store: Store, hooks: Hooks,
                 batch_size: int = 1000) -> None:
        self.me, self.partitions, self.replicas = me, partitions, replicas
        self.store, self.hooks, self.batch_size = store, hooks, batch_size
        self.flows: dict[str, RunningFlow] = {}
        self._records: dict[str, FlowRecord] = {}  # name -> latest record seen
        self._inbox: queue.Queue = queue.Queue()
        self._running = False
        self._outgoing: dict[str, list[tuple[list, TaskId, str]]] = {}
        self._in_flight: set[str] = set()  # members with a shuffle message on its way
        self._final: dict[str, dict] = {}  # figures of flows that stopped here
        self.published = PublishBuffer()
        self._ready: dict[TaskId, PartitionTask] = {}
        """Tasks that may have work: checked, stepped, and kept while they still have."""

    # ------------------------------------------------------------------ from other threads

    def stop(self) -> None:
        """Make :meth:`run` return after its current step."""
        self._running = False
        self._inbox.put(("stop",))

    def post(self, *item: Any) -> None:
        """Hand the worker something to do (thread-safe): ("flow", record),
        ("data", flow_id, stage, partition, origin, seq, payload, reply),
        ("ack", task_id, destination, mark)."""
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
            for task in ready.values():
                if not self._running:
                    break
                wake = task.wake_at(now)
                if wake is not None and wake <= now and task.id.flow in self.flows:
                    self._step(task)
                    wake = task.wake_at(now)
                if wake is not None:
                    self._ready[task.id] = task
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
        elif kind == "ack":
            task_id, dest, mark = item[1:]
            running = self.flows.get(task_id.flow)
            task = running and running.tasks.get((task_id.stage, task_id.partition))
            if task is not None:
                task.on_ack(dest, mark)
                self._ready[task.id] = task

    def _on_flow(self, record: FlowRecord) -> None:
        self._records[record.name] = record
        for fid in [fid for fid, f in self.flows.items() if f.record.name == record.name]:
            if fid != flow_id(record) or record.status != "running":
                log.info("event=flow_stopped member=%s flow=%s status=%s",
                         self.me, fid, record.status)
                self._final[fid] = self._figures(self.flows.pop(fid))
        if record.status != "running" or flow_id(record) in self.flows:
            return
        try:
            running = RunningFlow(record, self.me, self.partitions, self.replicas, self.store,
                                  self._send, self.published, self.batch_size)
        except (FlowError, GossipflowError, OSError) as err:
            log.error("event=flow_failed member=%s flow=%s error=%r",
                      self.me, record.name, str(err))
            self.hooks.failed(record, str(err))
            return
        self.flows[running.id] = running
        gc.freeze()  # the plan and tasks live as long as the flow: keep them out of collections
        log.info("event=flow_started member=%s flow=%s tasks=%d", self.me, running.id,
                 len(running.tasks))
        for task in running.tasks.values():
            task.pump()  # resend what a previous life left in the outbox
            self._ready[task.id] = task

    def _on_data(self, fid: str, stage: int, partition: int, origin: str, seq: int,
                 payload: bytes, reply: Callable[[int | None], None]) -> None:
        running = self.flows.get(fid)
        task = running and running.tasks.get((stage, partition))
        if task is None:  # not started here yet (or not ours): the sender retries
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
        running = self.flows.get(task.id.flow)
        if running is None:
            return
        try:
            task.step()
        except FlowError as err:
            self._fail(running, f"stage {task.stage.name!r} partition {task.partition}: {err}")
        except GossipflowError as err:  # e.g. the store is full
            self._fail(running, f"partition {task.partition}: {err}")

    def _fail(self, running: RunningFlow, error: str) -> None:
        log.error("event=flow_failed member=%s flow=%s error=%r", self.me, running.id, error)
        self.flows.pop(running.id, None)
        self.hooks.failed(running.record, error)

    def _send(self, task_id: TaskId, dest: str, seq: int, payload: bytes) -> None:
        running = self.flows.get(task_id.flow)
        if running is None:
            return
        stage, partition = (int(x) for x in dest.split("/"))
        origin = f"{task_id.stage}/{task_id.partition}"

        owner = running.owners[partition]
        if owner == self.me:
            self._on_data(running.id, stage, partition, origin, seq, payload,
                          lambda mark: self.post("ack", task_id, dest, mark))
        else:
            self._outgoing.setdefault(owner, []).append(
                ([running.id, stage, partition, origin, seq, payload], task_id, dest))

    def _flush(self) -> None:
        """Send what the last steps produced: one message per member, one at a time."""
        for member, waiting in self._outgoing.items():
            if member in self._in_flight or not waiting:
                continue
            items = waiting[:MAX_MESSAGE_ENTRIES]
            del waiting[:MAX_MESSAGE_ENTRIES]
            self._in_flight.add(member)

            def on_marks(marks: list | None, items: list = items, member: str = member) -> None:
                if marks is None or len(marks) != len(items):
                    marks = [None] * len(items)
                for (_, task_id, dest), mark in zip(items, marks):
                    self.post("ack", task_id, dest, mark if isinstance(mark, int) else None)
                self.post("sent", member)
            self.hooks.send(member, [entry for entry, _, _ in items], on_marks)

    def _housekeeping(self, now: float) -> None:
        for running in list(self.flows.values()):
            for task in running.tasks.values():
                if any(task.pending.values()):
                    task.pump()  # what was refused or timed out goes again
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

    @staticmethod
    def _figures(running: RunningFlow) -> dict[str, dict[str, int]]:
        stages: dict[str, dict[str, int]] = {}
        for (stage, _), task in list(running.tasks.items()):
            s = stages.setdefault(f"{stage} {task.stage.name}", {
                "records_in": 0, "records_out": 0, "done": 0, "tasks": 0, "unacked": 0})
            s["unacked"] += sum(map(len, task.pending.values()))
            s["records_in"] += task.records_in
            s["records_out"] += task.records_out
            s["done"] += task.done
            s["tasks"] += 1
        return stages
