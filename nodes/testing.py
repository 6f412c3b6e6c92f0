"""Run a flow in one process, with the semantics the cluster has.

``run`` executes the flow's *plan* the way the daemon's partition tasks
will: every source is cut into splits (split i belongs to partition
``i % partitions``), read in batches of ``batch_size`` records and fed to
its stage; every ``commit_every`` batches, and at the end of each split,
the runner commits: it drains the outboxes of all stages in stage order,
delivers sink records, and routes records sent to another stage by the
partition of their key into that stage's per-partition task and state.

Splits are read one after another, so every keyed operator sees each key's
records in source order, like a plain Python loop over the input: results
in sinks.table() (and of order-sensitive operators such as stateful_map)
are identical for every ``partitions``, ``batch_size`` and ``commit_every``.
How often a keyed operator's changelog reports a key does depend on them
(once per key per commit, as in the cluster), so compare the *last* value
per key when a changelog goes to files or publish sinks.

Records are passed by reference, except that files sinks store what they
write (JSON) and publish sinks store a copy made at commit, as the cluster
would send it.

Event time: watermarks move as on the cluster. A split's watermark is its
largest ts so far less max_delay (minus infinity before it is read, plus
infinity once done), a source task's the minimum over its splits, and a
window or join stage's the minimum over the source tasks (with splits) that
feed it; at every commit, after the records sent to it, each task of such a
stage advances to that watermark, which fires the windows it closes. The end
of every source is plus infinity: everything fires. Which records are late
does not depend on any of this (see ``nodes.eventtime``); ``Result.late()``
has them, per window or join step, whether or not the flow uses ``.late``.
A table fed by a windowed step keeps one row per (key, window start).

Example:
    >>> from nodes import Flow, sources, sinks
    >>> flow = Flow("squares")
    >>> (flow.source(sources.generate(5, lambda i: i))
    ...      .key_by(lambda i: "odd" if i % 2 else "even").map_values(lambda i: i * i)
    ...      .sum().sink(sinks.table()))
    >>> run(flow, partitions=2).table()
    {'even': 20, 'odd': 10}
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import msgpack

from nodes.errors import FlowError, typed
from nodes.eventtime import MAX_TIME, MIN_TIME
from nodes.flow import Flow
from nodes.loader import load_flow
from nodes.plan import Outbox, Plan, Stage, plan, route
from nodes.sinks import FilesSink, LogSink, PublishSink, TableSink
from nodes.sources import IngestSource, Source
from nodes.windows import Windowed


class Result:
    """What a local run delivered to its sinks.

    Attributes:
        tables: table sink name -> {key: latest value}.
        file_records: files sink name -> {partition: records written}.
        published_records: publish sink name -> records, in delivery order.
        late_records: window or join step name -> its late records, in the order
            its tasks found them (per key: arrival order).
        plan: the Plan that ran.
    """

    def __init__(self, plan: Plan, partitions: int):
        self.plan = plan
        self.late_records: dict[str, list] = {s.head: [] for s in plan.stages if s.timed}
        self.tables: dict[str, dict] = {}
        self.file_records: dict[str, dict[int, list]] = {}
        self.published_records: dict[str, list] = {}
        for name, sink in plan.sinks.items():
            if isinstance(sink, TableSink):
                self.tables[name] = {}
            elif isinstance(sink, FilesSink):
                self.file_records[name] = {p: [] for p in range(partitions)}
            else:
                self.published_records[name] = []

    def table(self, sink_name: str | None = None) -> dict:
        """The latest value per key of a table sink (the only one if no name is given)."""
        return self._pick(self.tables, "table", sink_name)

    def rows(self, sink_name: str | None = None) -> list[tuple[Any, Windowed]]:
        """A windowed table's rows, ``(key, Windowed(start, end, value))`` sorted by key,
        then start."""
        table = self.table(sink_name)
        return sorted(((k[0], v) for k, v in table.items()), key=lambda kv: (kv[0], kv[1][0]))

    def late(self, step_name: str | None = None) -> list:
        """The late records of a window or join step (the only one if no name is given):
        ``(key, value)``; joins: ``(key, (side, value))``."""
        return self._pick(self.late_records, "late", step_name)

    @property
    def files(self) -> dict[int, list]:
        """The only files sink's records: partition -> records written (as read back from JSON)."""
        return self._pick(self.file_records, "files", None)

    @property
    def published(self) -> list:
        """The only publish sink's records."""
        return self._pick(self.published_records, "publish", None)

    def _pick(self, sinks: dict, kind: str, name: str | None) -> Any:
        if name is None and len(sinks) == 1:
            return next(iter(sinks.values()))
        if name in sinks:
            return sinks[name]
        have = ", ".join(repr(n) for n in sinks) or "none"
        attr = {"table": "tables", "files": "file_records", "publish": "published_records",
                "late": "late_records"}
        raise LookupError(
            f"flow '{self.plan.flow_name}' has {kind} {'steps' if kind == 'late' else 'sinks'}:"
            f" {have}; "
            + (f"no {kind} sink named {name!r}" if name is not None
               else f"name one: result.{attr[kind]}[NAME]" + ("" if kind != "table"
                                                              else " or result.table(NAME)")))


def run(flow: Flow, partitions: int = 8, batch_size: int = 1000, *, commit_every: int = 10,
        limit: int | None = None, ingest: dict[str, list] | None = None,
        msgpack_state: bool = False) -> Result:
    """Execute a flow's plan in this process.

    Args:
        flow: the flow (validated here).
        partitions: number of partitions (any int >= 1; the cluster uses a power of two).
        batch_size: records read from a source per batch.
        commit_every: batches per commit (the cluster commits every few tens of ms).
        limit: read at most this many records from each unbounded source
            (required if the flow has one, unless ``ingest`` feeds it).
        ingest: ingest name -> the records producers would send (``sources.ingest``).
        msgpack_state: at every commit, pack and unpack every keyed state and split
            time state the way the daemon stores them (lists come back as tuples):
            checks that a flow's state is msgpack-able and survives a restore.

    Returns:
        A Result with what every sink received.

    Raises:
        FlowError: the flow is invalid, a user function failed, or input is unreadable.

    Example: ``assert run(flow).table() == dict(Counter(words))``
    """
    for label, value in (("partitions", partitions), ("batch_size", batch_size),
                         ("commit_every", commit_every)):
        if type(value) is not int or value < 1:
            raise ValueError(f"run() needs {label} as an int >= 1; got {typed(value)}")
    the_plan = plan(flow)
    runner = _Runner(the_plan, partitions, batch_size, commit_every, limit, ingest or {},
                     msgpack_state)
    runner.run()
    return runner.result


def run_file(path: str | os.PathLike, **kwargs: Any) -> Result:
    """Load a flow file the way the daemon does (``load_flow``) and ``run`` it.

    Args:
        path: the flow file.
        **kwargs: passed to ``run``.

    Raises:
        FlowError: the file does not load or validate, or the run fails.
    """
    text = Path(path).read_text(encoding="utf-8")
    return run(load_flow(text, os.fspath(path)), **kwargs)


def _restored(value: Any) -> Any:
    """``value`` packed and unpacked as the daemon stores state."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, use_list=False,
                           strict_map_key=False)


def _snapshot(records: list) -> list:
    """A deep copy, as the cluster sends records serialised at commit (as is if impossible)."""
    try:
        return pickle.loads(pickle.dumps(records, pickle.HIGHEST_PROTOCOL))
    except (pickle.PicklingError, TypeError, AttributeError):
        return records


class _Runner:
    def __init__(self, the_plan: Plan, partitions: int, batch_size: int, commit_every: int,
                 limit: int | None, ingest: dict[str, list], msgpack_state: bool):
        self.plan, self.P, self.ingest = the_plan, partitions, ingest
        self.batch_size, self.commit_every, self.limit = batch_size, commit_every, limit
        self.msgpack_state = msgpack_state
        self.result = Result(the_plan, partitions)
        stages = the_plan.stages
        self.states = [[{} for _ in range(partitions)] if s.head else None for s in stages]
        self.outboxes: list[list[Outbox]] = [[s.outbox() for _ in range(partitions)]
                                             for s in stages]
        self.dirty: list[set[int]] = [set() for _ in stages]
        self.file_data: dict[tuple[str, int], list[bytes]] = {}
        self.splits: dict[int, tuple[Source, list]] = {}
        """Per source stage: the source (bounded) and its splits."""
        self.split_times: dict[int, list[list]] = {}
        """Per source stage, per split: [time state, done]."""
        self.watermarks = [MIN_TIME] * len(stages)
        """Per timed stage, the watermark its tasks last advanced to."""

    def run(self) -> None:
        for stage in self.plan.stages:
            if stage.source is not None:
                source = self.bounded(stage)
                splits = source.splits(self.P)
                self.splits[stage.id] = (source, splits)
                self.split_times[stage.id] = [[None, False] for _ in splits]
        for stage in self.plan.stages:
            if stage.source is not None:
                self.read(stage)
        self.commit()
        for name, sink in self.plan.sinks.items():
            if isinstance(sink, FilesSink):
                self.write_files(name, sink)

    def bounded(self, stage: Stage) -> Source:
        source = self.plan.sources[stage.source]
        if isinstance(source, IngestSource) and source.name in self.ingest:
            source = source.fed(self.ingest[source.name])
        if not source.bounded:
            if self.limit is None:
                raise source.step.error(
                    f"sources.{source.kind}() is unbounded: pass run(..., limit=N) to read"
                    " its first N records")
            source = source.limit(self.limit)
        return source

    def read(self, stage: Stage) -> None:
        source, splits = self.splits[stage.id]
        times = self.split_times[stage.id]
        outboxes, dirty, P = self.outboxes[stage.id], self.dirty[stage.id], self.P
        for i, split in enumerate(splits):
            part = i % P
            offset, done, batches = None, False, 0
            while not done:
                records, offset, done = source.read(split, offset, self.batch_size)
                if records:
                    times[i][0] = stage.feed(records, None, outboxes[part], times[i][0])
                    dirty.add(part)
                batches += 1
                if batches % self.commit_every == 0 and not done:
                    self.commit()
            times[i][1] = True
            self.commit()

    def watermark(self, stage: Stage) -> int:
        """A timed stage's watermark: the minimum over the source tasks that feed it
        (those with splits), each the minimum over its splits."""
        senders: dict[tuple[int, int], int] = {}
        for up in stage.inputs:
            source_stage = self.plan.stages[up]
            for i, (split_time, done) in enumerate(self.split_times[up]):
                mark = source_stage.split_watermark(split_time, done)
                task = (up, i % self.P)
                senders[task] = min(senders.get(task, MAX_TIME), mark)
        return min(senders.values(), default=MAX_TIME)

    def commit(self) -> None:
        stages, P = self.plan.stages, self.P
        for stage in stages:
            dirty = self.dirty[stage.id]
            if stage.timed:
                watermark = self.watermark(stage)
                if watermark > self.watermarks[stage.id]:
                    self.watermarks[stage.id] = watermark
                    for part, state in enumerate(self.states[stage.id]):
                        stage.advance(watermark, state, self.outboxes[stage.id][part])
                        dirty.add(part)
            if not dirty:
                continue
            parts = sorted(dirty)
            dirty.clear()
            for part in parts:
                outbox = self.outboxes[stage.id][part]
                for name, late in outbox.late.items():
                    self.result.late_records[name] += late
                for target, records in outbox.drain().items():
                    if isinstance(target, str):
                        self.deliver(target, part, records)
                        continue
                    down = stages[target]
                    states, outboxes = self.states[target], self.outboxes[target]
                    for p, routed in enumerate(route(records, P)):
                        if routed:
                            down.feed(routed, states[p] if states else None, outboxes[p])
                            self.dirty[target].add(p)
        if self.msgpack_state:
            self.restore_all()

    def restore_all(self) -> None:
        """Every state and split time as the daemon would read them back from its store."""
        for states in self.states:
            for state in states or ():
                items = [(_restored(k), _restored(v)) for k, v in state.items()]
                state.clear()
                state.update(items)
        for times in self.split_times.values():
            for entry in times:
                entry[0] = _restored(entry[0])

    def deliver(self, name: str, partition: int, records: list) -> None:
        sink = self.plan.sinks[name]
        if isinstance(sink, TableSink):
            table = self.result.tables[name]
            if records and type(records[0][1]) is Windowed:
                for key, value in records:
                    table[(key, value.start) if type(value) is Windowed else key] = value
            else:
                table.update(records)
        elif isinstance(sink, FilesSink):
            data = sink.encode(records)
            self.file_data.setdefault((name, partition), []).append(data)
            lines = data.decode("utf-8").split("\n")
            lines.pop()  # after the last newline
            self.result.file_records[name][partition] += map(json.loads, lines)
        elif isinstance(sink, (PublishSink, LogSink)):
            records = _snapshot(records)
            self.result.published_records[name] += records

    def write_files(self, name: str, sink: FilesSink) -> None:
        directory = sink.path
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for old in directory.glob("part-*.jsonl"):
                old.unlink()
            for part in range(self.P):
                target = sink.file_for(part)
                tmp = target.with_suffix(".jsonl.tmp")
                tmp.write_bytes(b"".join(self.file_data.get((name, part), ())))
                os.replace(tmp, target)
        except OSError as err:
            raise FlowError(f"{sink.step.label}: cannot write {directory}: {err}",
                            step=sink.step.name, where=sink.step.where) from err
