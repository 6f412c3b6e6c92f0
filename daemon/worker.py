"""The runtime in a process of its own, so user code never competes with probes.

A daemon is two processes. The parent runs the event loop: membership, the
network, client requests. The child (this module's :func:`worker_main`) runs
the :class:`~daemon.runtime.Runtime` and owns the store: every user function
runs there. They talk over a pipe; the parent's side is :class:`WorkerProcess`,
which the flow service uses as it would use a runtime.

Parent -> child: ``("flow", record)``, ``("view", alive, forgotten)``,
``("data", id, entries)``, ``("marks", id, marks)`` (answers to the child's sends),
``("called", id, answer)`` (answers to the child's calls), ``("serve", id, (kind,
args))`` (a peer's replication request), ``("rows", id, args)``, ``("usage", id, None)``,
``("plan", id, (text, path))`` (a flow submitted here, to split).
Child -> parent: ``("send", id, member, entries)``, ``("call", id, member, kind,
args)``, ``("data_marks", id, marks)``, ``("served", id, answer)``, ``("planned", id,
{"splits": ...} or {"error": ...})``,
``("failed", record, error)``, ``("progress", fid, total, done)``,
``("published", fid, sink, records)``, ``("status", figures, partitions)``,
``("rows", id, rows)``, ``("usage", id, usage)``.

If the parent dies (even by SIGKILL) the child sees the pipe close and exits at
once; if the child dies, the parent logs it and stops, so nothing runs half.
"""

from __future__ import annotations

import gc
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from nodes import FlowError, load_flow
from nodes.plan import plan as make_plan
from nodes.sinks import LogSink
from nodes.sources import IngestSource

from .errors import GossipflowError, StoreError
from .publish import PublishBuffer
from .registry import FlowRecord
from .store import Store
from .task import TABLE, log_key, unpack

log = logging.getLogger("gossipflow.worker")

STATUS_EVERY = 0.3
"""Seconds between the child's reports of its per-stage figures."""
STORE_OPEN_WAIT = 10.0
"""Seconds to wait for the store lock a previous life's worker may still hold."""
WORKER_NICENESS = 10
"""How much lower the runtime process's scheduling priority is than the daemon's (the
parent's event loop answers probes; user code runs here)."""


class WorkerProcess:
    """The parent's handle on the runtime process (used on the event-loop thread only)."""

    def __init__(self, name: str, partitions: int, replicas: int, store_path: Path,
                 log_level: int, on_message: Callable[[tuple], None]) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe(duplex=True)
        self._process = context.Process(
            target=worker_main, name=f"gossipflow-runtime-{name}", daemon=True,
            args=(child, name, partitions, replicas, str(store_path), log_level))
        self._child_end = child
        self._on_message = on_message
        self._ids = itertools.count(1)
        self._waiting: dict[int, Callable[[Any], None]] = {}
        self.figures: dict[str, Any] = {}
        """Per flow version, per stage: the child's last report."""
        self.partitions: dict[str, Any] = {}
        """Per flow version, the partitions the child runs or takes over (its last report)."""
        self.published = PublishBuffer()
        self._outgoing: queue.SimpleQueue = queue.SimpleQueue()
        """What goes to the child: written by a thread of its own, because a write to a
        full pipe blocks, and the event loop must never block."""

    def start(self, loop: Any, on_death: Callable[[], None]) -> None:
        self._process.start()
        self._child_end.close()
        self._on_death = on_death
        loop.add_reader(self._conn.fileno(), self._read)
        self._loop = loop
        threading.Thread(target=self._write, name="to-runtime", daemon=True).start()

    def _write(self) -> None:
        while (message := self._outgoing.get()) is not None:
            try:
                self._conn.send(message)
            except (OSError, ValueError) as err:
                log.error("event=worker_unreachable error=%r", str(err))
                return

    def stop(self) -> None:
        self._outgoing.put(None)
        try:
            self._loop.remove_reader(self._conn.fileno())
            self._conn.close()
        except (OSError, AttributeError):
            pass
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()

    # ------------------------------------------------------------------ requests

    def post(self, kind: str, *args: Any) -> None:
        """("flow", record), ("view", alive, forgotten), ("marks", id, marks) or
        ("called", id, answer)."""
        if kind == "flow":
            self._send(("flow", args[0].to_wire()))
        else:
            self._send((kind, *args))

    def data(self, entries: list, on_marks: Callable[[list], None]) -> None:
        """Shuffled batches for our tasks; ``on_marks`` gets their marks after the commits."""
        self._ask("data", entries, on_marks)

    def rows(self, args: dict[str, Any], on_rows: Callable[[dict], None]) -> None:
        self._ask("rows", args, on_rows)

    def log(self, args: dict[str, Any], on_entries: Callable[[dict], None]) -> None:
        """Records of a log sink this member serves: see :func:`log_entries`."""
        self._ask("log", args, on_entries)

    def usage(self, on_usage: Callable[[dict], None]) -> None:
        """What this member's store holds: see :func:`store_usage`."""
        self._ask("usage", None, on_usage)

    def plan(self, text: str, path: str, on_planned: Callable[[dict], None]) -> None:
        """Split the sources of a flow submitted here: ``on_planned`` gets
        ``{"splits": ...}`` (see :func:`source_splits`) or ``{"error": why}``."""
        self._ask("plan", (text, path), on_planned)

    def serve(self, kind: str, args: Any, on_answer: Callable[[Any], None]) -> None:
        """A peer's replication request; ``on_answer`` gets the answer (None: refused)."""
        self._ask("serve", (kind, args), on_answer)

    def status(self) -> dict[str, Any]:
        return self.figures

    def _ask(self, kind: str, payload: Any, callback: Callable[[Any], None]) -> None:
        request_id = next(self._ids)
        self._waiting[request_id] = callback
        self._send((kind, request_id, payload))

    def _send(self, message: tuple) -> None:
        self._outgoing.put(message)

    # ------------------------------------------------------------------ from the child

    def _read(self) -> None:
        try:
            while self._conn.poll():
                message = self._conn.recv()
                kind = message[0]
                if kind in ("data_marks", "rows", "served", "usage", "planned", "logged"):
                    callback = self._waiting.pop(message[1], None)
                    if callback is not None:
                        callback(message[2])
                elif kind == "status":
                    self.figures, self.partitions = message[1], message[2]
                elif kind == "published":
                    self.published.append(*message[1:])
                else:
                    self._on_message(message)
        except (EOFError, OSError):
            log.error("event=worker_died detail=%r", "the runtime process ended; stopping")
            self._loop.remove_reader(self._conn.fileno())
            self._on_death()


# ---------------------------------------------------------------------- child side


def worker_main(conn: Connection, name: str, partitions: int, replicas: int,
                store_path: str, log_level: int) -> None:
    """Entry point of the runtime process."""
    from .runtime import Hooks, Runtime

    # The parent decides when we stop (it closes the pipe): a signal to the whole process
    # group (Ctrl-C, a supervisor's SIGTERM) must not kill us before it has left the cluster.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s level=%(levelname)s %(message)s")
    # Collect garbage rarely: full collections over a flow's state cost tens of ms each.
    gc.set_threshold(50_000, 50, 100)
    # User code yields the CPU to the event loop that answers probes (issue 15): with more
    # busy processes than cores, a probe's ack must not wait behind a batch.
    os.nice(WORKER_NICENESS)
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            try:
                conn.send(message)
            except (OSError, ValueError):
                os._exit(0)  # the parent is gone

    store = _open_store(store_path)
    sends = itertools.count(1)
    waiting: dict[int, Callable[[list | None], None]] = {}

    def hook_send(member: str, entries: list, on_marks: Callable[[list | None], None]) -> None:
        send_id = next(sends)
        waiting[send_id] = on_marks
        send(("send", send_id, member, entries))

    calls = itertools.count(1)
    answers: dict[int, Callable[[Any], None]] = {}

    def hook_call(member: str, kind: str, args: Any, on_reply: Callable[[Any], None]) -> None:
        call_id = next(calls)
        answers[call_id] = on_reply
        send(("call", call_id, member, kind, args))

    runtime = Runtime(name, partitions, replicas, store, Hooks(
        send=hook_send,
        call=hook_call,
        failed=lambda record, error: send(("failed", record.to_wire(), error)),
        progress=lambda fid, total, done: send(("progress", fid, total, done))))
    runtime.published = _Forward(send)  # type: ignore[assignment]

    def read() -> None:
        """The pipe, on a thread of its own: hand everything to the runtime."""
        try:
            while True:
                message = conn.recv()
                kind = message[0]
                if kind == "flow":
                    runtime.post("flow", FlowRecord.from_wire(message[1]))
                elif kind == "data":
                    _post_data(runtime, send, message[1], message[2])
                elif kind == "view":
                    runtime.post(*message)
                elif kind == "marks":
                    callback = waiting.pop(message[1], None)
                    if callback is not None:
                        callback(message[2])
                elif kind == "called":
                    callback = answers.pop(message[1], None)
                    if callback is not None:
                        callback(message[2])
                elif kind == "serve":
                    send(("served", message[1], _serve(runtime.server, *message[2])))
                elif kind == "rows":  # on its own thread: this one must keep reading
                    threading.Thread(target=lambda m=message: send(
                        ("rows", m[1], table_rows(store, m[2]))), daemon=True).start()
                elif kind == "log":
                    threading.Thread(target=lambda m=message: send(
                        ("logged", m[1], log_entries(store, runtime, m[2]))), daemon=True).start()
                elif kind == "usage":
                    threading.Thread(target=lambda m=message: send(
                        ("usage", m[1], store_usage(store))), daemon=True).start()
                elif kind == "plan":  # user code and hashing: on a thread of its own
                    threading.Thread(target=lambda m=message: send(
                        ("planned", m[1], source_splits(*m[2], partitions))),
                        daemon=True).start()
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone: so are we, at once

    def report() -> None:
        while True:
            time.sleep(STATUS_EVERY)
            send(("status", runtime.status(), runtime.partition_states()))

    threading.Thread(target=read, name="pipe", daemon=True).start()
    threading.Thread(target=report, name="report", daemon=True).start()
    runtime.run()


def _post_data(runtime: Any, send: Callable[[tuple], None], request_id: int,
               entries: list) -> None:
    marks: list = [None] * len(entries)
    left = [len(entries)]

    def reply(i: int, mark: int | None) -> None:  # on the runtime thread
        marks[i] = mark
        left[0] -= 1
        if left[0] == 0:
            send(("data_marks", request_id, marks))

    if not entries:
        send(("data_marks", request_id, marks))
    for i, entry in enumerate(entries):
        runtime.post("data", *entry, lambda mark, i=i: reply(i, mark))


def source_splits(text: str, path: str, partitions: int) -> dict[str, Any]:
    """Every source of a submitted flow cut into splits, once, for every member to read:
    ``{"splits": {source name: [split, ...]}}``, or ``{"error": why}``."""
    try:
        the_plan = make_plan(load_flow(text, path))
        splits = {name: source.splits(partitions) for name, source in the_plan.sources.items()}
        for stage in the_plan.stages:  # producers' batches go to this stage's tasks
            if stage.source is not None and isinstance(the_plan.sources[stage.source],
                                                       IngestSource):
                splits[stage.source] = [{**split, "stage": stage.id}
                                        for split in splits[stage.source]]
        return {"splits": splits}
    except FlowError as err:
        return {"error": str(err)}
    except Exception as err:  # noqa: BLE001  (the submit must get an answer)
        log.exception("event=split_failed path=%s", path)
        return {"error": f"cannot split the flow's sources: {type(err).__name__}: {err}"}


def _serve(server: Any, kind: str, args: Any) -> Any:
    """A peer's replication request against our store; None when refused."""
    try:
        return server.handle(kind, args)
    except (GossipflowError, ValueError, TypeError, KeyError) as err:
        log.warning("event=replication_refused kind=%s error=%r", kind, str(err))
        return None


class _Forward:
    """Stands in for the runtime's PublishBuffer: published records go to the parent."""

    def __init__(self, send: Callable[[tuple], None]) -> None:
        self._send = send

    def append(self, flow: str, sink: str, records: list) -> None:
        self._send(("published", flow, sink, records))


def _open_store(path: str) -> Store:
    deadline = time.monotonic() + STORE_OPEN_WAIT
    while True:
        try:
            # Not fsynced per commit: a killed daemon loses nothing (the OS has every
            # committed page); only a power loss could (see README, durability).
            return Store(path, sync=False)
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # the worker of a previous life is still letting go


def store_usage(store: Store) -> dict[str, Any]:
    """Per flow, the tasks whose data this store holds and their bytes (keys and values)."""
    out: dict[str, Any] = {}
    for task, size in store.sizes().items():
        flow = out.setdefault(task.flow, {"tasks": 0, "bytes": 0})
        flow["tasks"] += 1
        flow["bytes"] += size
    return out


def table_rows(store: Store, args: dict[str, Any]) -> dict[str, list]:
    """Table rows this store's copies hold for a flow version, per task with the copy's
    position (replicas hold copies too; the asker keeps the newest of each task):
    {"stage/partition": [epoch, last, {sink: packed rows}]}. The rows stay packed (one
    msgpack array of [key, value] per sink, built from the stored bytes) all the way to
    the client, so no daemon's event loop decodes a big table."""
    fid, key = args["flow"], args.get("key")
    out: dict[str, list] = {}
    for task in store.tasks():
        if task.flow != fid:
            continue
        rows: dict[bytes, list[bytes]] = {}
        for k, v in store.iter_state(task, start=TABLE):
            if not k.startswith(TABLE):
                break
            sink, _, packed = k[1:].partition(b"\x00")
            if key is None or _row_of(unpack(packed), key):
                rows.setdefault(sink, []).append(ROW + packed + v)
        meta = store.task_meta(task)
        out[f"{task.stage}/{task.partition}"] = [
            meta.epoch, meta.last, {s.decode(): packed_array(r) for s, r in rows.items()}]
    return out


def _row_of(row_key: Any, key: Any) -> bool:
    """Whether a table row's key is ``key``, or a window of ``key`` (windowed tables key
    their rows by (key, window start))."""
    return row_key == key or (type(row_key) is tuple and len(row_key) == 2
                              and row_key[0] == key)


LOG_READ_MAX = 5000
"""Records of one partition's log in one answer, at most."""


def log_entries(store: Store, runtime: Any, args: dict[str, Any]) -> dict[str, Any]:
    """The durable records of a log sink in the partitions this member is primary of,
    from the offsets asked: ``{"sink": name, "parts": {"p": [first, bound, packed]}}``
    where ``packed`` is the msgpack array of the records at offsets first, first + 1, ...
    (first is past the offset asked if retention dropped older ones) and ``bound`` the
    next offset to become readable; ``{"error": why}`` for a flow without that sink."""
    running = runtime.flows.get(args["flow"])
    if running is None:
        return {"sink": args.get("sink"), "parts": {}}
    logs = sorted(n for n, s in running.plan.sinks.items() if isinstance(s, LogSink))
    sink = args.get("sink") or (logs[0] if len(logs) == 1 else None)
    if sink not in logs:
        return {"error": f"flow {running.record.name!r} has log sinks: "
                         f"{', '.join(logs) or 'none'}" + ("; name one with --sink"
                                                          if len(logs) > 1 else "")}
    starts, end = args.get("from") or {}, bool(args.get("end"))
    parts: dict[str, list] = {}
    for task in list(running.tasks.values()):
        if sink not in task.stage.outputs or task.fenced:  # fenced: not readable yet
            continue
        first, bound = task.log_durable.get(sink, (0, 0))
        start = bound if end else max(first, int(starts.get(str(task.partition), 0)))
        values: list[bytes] = []
        prefix = log_key(sink, 0)[:-8]
        for key, value in store.iter_state(task.id, start=log_key(sink, start),
                                           limit=min(LOG_READ_MAX, max(bound - start, 0))):
            offset = int.from_bytes(key[-8:], "big")
            if not key.startswith(prefix) or offset >= bound:
                break
            if not values:
                start = offset  # retention may have dropped the ones before
            values.append(value)
        parts[str(task.partition)] = [start, bound, packed_array(values)]
    return {"sink": sink, "parts": parts}


ROW = b"\x92"
"""msgpack header of a two-element array: a row is ROW + packed key + packed value."""


def packed_array(items: list[bytes]) -> bytes:
    """The msgpack array of already packed ``items``."""
    n = len(items)
    if n < 16:
        header = bytes([0x90 | n])
    elif n < 1 << 16:
        header = b"\xdc" + n.to_bytes(2, "big")
    else:
        header = b"\xdd" + n.to_bytes(4, "big")
    return header + b"".join(items)
