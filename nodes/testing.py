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

from nodes.errors import FlowError, typed
from nodes.flow import Flow
from nodes.loader import load_flow
from nodes.plan import Outbox, Plan, Stage, plan, route
from nodes.sinks import FilesSink, LogSink, PublishSink, TableSink
from nodes.sources import IngestSource


class Result:
    """What a local run delivered to its sinks.

    Attributes:
        tables: table sink name -> {key: latest value}.
        file_records: files sink name -> {partition: records written}.
        published_records: publish sink name -> records, in delivery order.
        plan: the Plan that ran.
    """

    def __init__(self, plan: Plan, partitions: int):
        self.plan = plan
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
        attr = {"table": "tables", "files": "file_records", "publish": "published_records"}
        raise LookupError(
            f"flow '{self.plan.flow_name}' has {kind} sinks: {have}; "
            + (f"no {kind} sink named {name!r}" if name is not None
               else f"name one: result.{attr[kind]}[NAME]" + ("" if kind != "table"
                                                              else " or result.table(NAME)")))


def run(flow: Flow, partitions: int = 8, batch_size: int = 1000, *, commit_every: int = 10,
        limit: int | None = None, ingest: dict[str, list] | None = None) -> Result:
    """Execute a flow's plan in this process.

    Args:
        flow: the flow (validated here).
        partitions: number of partitions (any int >= 1; the cluster uses a power of two).
        batch_size: records read from a source per batch.
        commit_every: batches per commit (the cluster commits every few tens of ms).
        limit: read at most this many records from each unbounded source
            (required if the flow has one, unless ``ingest`` feeds it).
        ingest: ingest name -> the records producers would send (``sources.ingest``).

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
    runner = _Runner(the_plan, partitions, batch_size, commit_every, limit, ingest or {})
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


def _snapshot(records: list) -> list:
    """A deep copy, as the cluster sends records serialised at commit (as is if impossible)."""
    try:
        return pickle.loads(pickle.dumps(records, pickle.HIGHEST_PROTOCOL))
    except (pickle.PicklingError, TypeError, AttributeError):
        return records


class _Runner:
    def __init__(self, the_plan: Plan, partitions: int, batch_size: int, commit_every: int,
                 limit: int | None, ingest: dict[str, list]):
        self.plan, self.P, self.ingest = the_plan, partitions, ingest
        self.batch_size, self.commit_every, self.limit = batch_size, commit_every, limit
        self.result = Result(the_plan, partitions)
        stages = the_plan.stages
        self.states = [[{} for _ in range(partitions)] if s.head else None for s in stages]
        self.outboxes: list[list[Outbox]] = [[s.outbox() for _ in range(partitions)]
                                             for s in stages]
        self.dirty: list[set[int]] = [set() for _ in stages]
        self.file_data: dict[tuple[str, int], list[bytes]] = {}

    def run(self) -> None:
        for stage in self.plan.stages:
            if stage.source is not None:
                self.read(stage)
        self.commit()
        for name, sink in self.plan.sinks.items():
            if isinstance(sink, FilesSink):
                self.write_files(name, sink)

    def read(self, stage: Stage) -> None:
        source = self.plan.sources[stage.source]
        if isinstance(source, IngestSource) and source.name in self.ingest:
            source = source.fed(self.ingest[source.name])
        if not source.bounded:
            if self.limit is None:
                raise source.step.error(
                    f"sources.{source.kind}() is unbounded: pass run(..., limit=N) to read"
                    " its first N records")
            source = source.limit(self.limit)
        outboxes, dirty, P = self.outboxes[stage.id], self.dirty[stage.id], self.P
        for i, split in enumerate(source.splits(P)):
            part = i % P
            offset, done, batches = None, False, 0
            while not done:
                records, offset, done = source.read(split, offset, self.batch_size)
                if records:
                    stage.feed(records, None, outboxes[part])
                    dirty.add(part)
                batches += 1
                if batches % self.commit_every == 0 and not done:
                    self.commit()
            self.commit()

    def commit(self) -> None:
        stages, P = self.plan.stages, self.P
        for stage in stages:
            dirty = self.dirty[stage.id]
            if not dirty:
                continue
            parts = sorted(dirty)
            dirty.clear()
            for part in parts:
                for target, records in self.outboxes[stage.id][part].drain().items():
                    if isinstance(target, str):
                        self.deliver(target, part, records)
                        continue
                    down = stages[target]
                    states, outboxes = self.states[target], self.outboxes[target]
                    for p, routed in enumerate(route(records, P)):
                        if routed:
                            down.feed(routed, states[p] if states else None, outboxes[p])
                            self.dirty[target].add(p)

    def deliver(self, name: str, partition: int, records: list) -> None:
        sink = self.plan.sinks[name]
        if isinstance(sink, TableSink):
            self.result.tables[name].update(records)
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
