"""The plan: a flow cut into stages, each compiled to one batch function.

This is the contract between ``nodes`` and any runtime (the local runner in
``nodes.testing``, the daemon's partition tasks). A runtime never looks at
steps; it reads sources, feeds batches to stages, routes what a stage sends
to another stage by key, and delivers sink records.

Stages. The graph is cut at every shuffle: where a keyed stream (after
``key_by``) meets a step that needs its records partitioned by key. A stage
starts at one *entry* and fuses every stateless step reachable from it
without crossing a shuffle:

- a **source stage** reads one source (``stage.source``);
- a **keyed stage** has a keyed operator at its head (``stage.head``) that
  consumes the shuffled records of its ``inputs``, with one state dict per
  partition;
- a **shuffle stage** has no head: the records of a key_by (or of a
  filter/inspect/map_values after it) routed to their key's partition, for
  steps that are not keyed operators (a sink, a map, ...).

``filter``, ``inspect`` and ``map_values`` right after a key_by run before
the shuffle (on the sending side). Merges disappear: each consumer of a
merge reads all of its inputs, and a stateless step reached from several
stages is compiled into each of them. Stage ids are a topological order.

Calling a stage (per partition task):

    outbox = stage.outbox()                    # per task, per commit
    stage.feed(batch, state, outbox)           # any number of batches
    touched = outbox.touched                   # state keys written (keyed stages)
    outputs = outbox.drain()                   # {sink name | stage id: [records]}
    for target, records in outputs.items():
        if isinstance(target, str): deliver to sink `target` for this partition
        else: for p, part in enumerate(route(records, P)): send part to stage
              `target`, partition p (a list per partition; skip empty ones)

``batch`` is a list: records read from the source (source stage) or records
routed to this partition ((key, value) tuples, or (key, partial) when
``stage.partials``). ``state`` is the partition's dict key -> state (None for
stages without a head); feed mutates it in place. Records sent to a stage
with ``partials`` are already combined, one (key, partial) per key over
everything fed since the last drain. ``stage.process(batch, state)`` is feed
plus drain for one batch.

Sources and sinks: a source stage's task reads ``plan.sources[stage.source]``
(``splits(P)``, then ``read(split, offset, max_records)``, see
``nodes.sources``), each split read by one partition's task. A sink's records
are delivered per partition task: ``plan.sinks[name]`` says what it is
(table: (key, value) records, latest wins; files: ``file_for(partition)``
and ``encode(records)``; publish). Keyed heads emit a changelog: one
(key, result) per key updated in a batch (stateful_map: one per record).
If a commit fails, the runtime restores the ``touched`` keys of the state
from its last commit before retrying.

Event time (issue 11). A source stage with ``stage.event_time`` (an
``EventTime``: max_delay and allowed_lateness in ms, idle_after in s) stamps
its records; a *timed* stage (``stage.timed``: its head is a window or join)
takes them with watermarks. Watermarks and timestamps are int ms;
``nodes.eventtime.MIN_TIME`` / ``MAX_TIME`` are minus / plus infinity. What a
runtime must do:

1. Source tasks: per split i, keep a time state ``t_i`` (None at first; then an
   int: the largest ts read from the split) beside the split's offset, in the
   same commit (e.g. offsets key ``t{i}``), and hand it back on the next read:

       t_i = stage.feed(records, None, outbox, t_i)    # returns the new t_i

   The split's watermark is ``stage.split_watermark(t_i, done_i)``; the task's
   watermark is the minimum over its splits (a split not started has t None:
   MIN_TIME; a done split MAX_TIME). A source without event time always gives
   MAX_TIME. With event time, sources split independently of P (``Source.timed``,
   set by the plan: files/jsonl one split per file, generate fixed ranges), so
   splits and their watermarks are the same for every cluster.
2. Every outbox entry a source task sends to a timed stage carries the task's
   watermark after that commit's reads, beside the records and under the same
   sequence number (replay resends the same pair); an entry with no records and
   a new watermark may be sent alone (at most every 200 ms per destination).
3. Timed tasks: per upstream sender (the source tasks with splits of every stage in
   ``stage.inputs``) keep the last watermark received (MIN_TIME until the first
   entry, MAX_TIME after its end of stream), stored with the high-water marks. For
   each entry, in sequence order: ``stage.feed(records, state, outbox)``, then update
   that sender's watermark, then ``stage.advance(min over senders, state, outbox)``.
   ``advance`` fires the windows the watermark closes into the outbox (their records
   go to sinks and stages as usual) and is a no-op for a watermark not above the
   last; when every sender is done, advance(MAX_TIME) fires everything.
   Firing, the state it drops and its output are in ``outbox``/``touched`` like any
   feed: commit them together, so each window fires exactly once across failover.
4. State: a timed head keeps everything in the partition's ``state`` dict:
   ``state[None]`` is ``[watermark, due]`` (the watermark advanced to, and the next
   time advance has work), user keys (str/bytes) hold msgpack-able lists, dicts with
   int keys, ints and the user's values. It is written through ``touched`` as for
   other heads (None included) and reads back correctly when lists come back as
   tuples (``use_list=False``, ``strict_map_key=False``).
5. Late records: ``outbox.late`` (step name -> records) holds a timed stage's late
   records since the last drain; read it before ``drain()`` to count them per step
   (status). A flow that uses ``.late`` also gets them as ordinary output.

Given the same sequence of (entry, watermark) per sender, a timed task fires the
same windows; which records are late is decided at the source (by the split's
own history), so the final rows do not depend on how entries of different
senders interleave, on batching, or on commit timing (``reduce`` functions must
be commutative as well as associative; ``fold`` and ``collect`` see values in
event-time order, ties in arrival order).

Example:
    >>> from nodes import Flow, sources, sinks
    >>> flow = Flow("wc")
    >>> (flow.source(sources.generate(4, lambda i: "a b a"))
    ...      .flat_map(str.split).key_by(lambda w: w).count().sink(sinks.table()))
    >>> p = plan(flow)
    >>> [(s.id, s.kind, s.inputs, s.outputs) for s in p.stages]
    [(0, 'source', (), (1,)), (1, 'keyed', (0,), ('table',))]
    >>> sorted(p.stages[0].process(["a b a", "b"])[1])
    [('a', 2), ('b', 2)]
    >>> state = {}
    >>> p.stages[1].process([("a", 2), ("b", 2)], state)
    {'table': [('a', 2), ('b', 2)]}
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

from daemon.placement import partition_of as _placement_partition_of
from nodes.errors import FlowError
from nodes.flow import HEADS, KEY_PRESERVING, TIMED_OPS, Flow, Step, expand
from nodes.joins import LEFT, RIGHT, make_join_head
from nodes.operators import compile_counting_key_by, compile_stateless
from nodes.sinks import Sink
from nodes.sources import IngestSource, Source
from nodes.stage import (
    Outbox,
    Output,
    Stage,
    op_combine,
    op_combine_rows,
    op_count_keys,
    op_emit,
    op_emit_sided,
    op_event_time,
    op_keys,
    op_node,
    op_strip,
)
from nodes.stateful import Head, make_head
from nodes.timed import compile_event_time, compile_timed
from nodes.windowops import make_window_head

__all__ = ["Outbox", "Output", "Plan", "Stage", "partition_of", "plan", "route"]
ROUTE_CACHE_LIMIT = 1 << 20
_route_cache: dict[int, dict] = {}


def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition of a record key: xxh64 of its bytes (str as UTF-8) mod P.

    For a power-of-two P (every cluster) this is ``daemon.placement.partition_of``;
    other counts (the local runner accepts any) use the same hash mod P.

    Example:
        >>> partition_of("apple", 256) == partition_of(b"apple", 256)
        True
    """
    if type(key) is str:
        key = key.encode("utf-8", "surrogatepass")
    if partitions & (partitions - 1) == 0:
        return _placement_partition_of(key, partitions)
    if type(key) is not bytes or type(partitions) is not int or partitions < 1:
        raise TypeError(f"partition_of needs str/bytes and an int >= 1; got {key!r:.60},"
                        f" {partitions!r}")
    return xxhash.xxh64_intdigest(key) % partitions


def route(records: list, partitions: int) -> list[list]:
    """Split (key, value) records by the partition of their key.

    Returns:
        A list of ``partitions`` lists (some empty), records in their original order.
    """
    if partitions == 1:
        return [records]
    cache = _route_cache.get(partitions)
    if cache is None or len(cache) > ROUTE_CACHE_LIMIT:
        cache = _route_cache[partitions] = {}
    parts: list[list] = [[] for _ in range(partitions)]
    appends = [part.append for part in parts]
    get = cache.get
    for record in records:
        key = record[0]
        p = get(key)
        if p is None:
            p = cache[key] = partition_of(key, partitions)
        appends[p](record)
    return parts


class Plan:
    """A flow's stages, sources and sinks.

    Attributes:
        flow_name: the flow's name.
        base_dir: the directory relative paths were resolved against.
        stages: every stage; ``stages[i].id == i``, upstream before downstream.
        sources: source step name -> Source (bound: absolute paths, step for messages).
        sinks: sink step name -> Sink (bound likewise).
    """

    def __init__(self, flow_name: str, base_dir: Path, stages: list[Stage],
                 sources: dict[str, Source], sinks: dict[str, Sink]):
        self.flow_name, self.base_dir = flow_name, base_dir
        self.stages, self.sources, self.sinks = tuple(stages), sources, sinks

    def __repr__(self) -> str:
        return f"<Plan {self.flow_name!r}: {len(self.stages)} stages>"

    def describe(self) -> dict[str, Any]:
        """A msgpack-able summary, for status output."""
        return {"flow": self.flow_name, "stages": [s.describe() for s in self.stages],
                "sources": {n: s.describe() for n, s in self.sources.items()},
                "sinks": {n: s.describe() for n, s in self.sinks.items()}}


def plan(flow: Flow) -> Plan:
    """Validate a flow and cut it into compiled stages.

    Args:
        flow: the flow.

    Returns:
        Its Plan.

    Raises:
        FlowError: the flow does not validate (see ``Flow.validate``).
    """
    flow.validate()
    return _Planner(flow).build()


class _Planner:
    """Builds a Plan: merge elimination, shuffle edges, stage membership, programs."""

    def __init__(self, flow: Flow):
        self.flow = flow
        self.steps = [s for s in flow.steps if s.kind != "merge"]
        self.producers = {id(s): self._expand(s) for s in self.steps}
        self.consumers: dict[int, list[Step]] = {id(s): [] for s in self.steps}
        for step in self.steps:
            for p in self.producers[id(step)]:
                self.consumers[id(p)].append(step)
        self.partitioning: dict[int, str] = {}  # plain | pending | keyed
        for step in self.steps:
            self.partitioning[id(step)] = self._partitioning(step)

    def _expand(self, step: Step) -> list[Step]:
        return expand(step.inputs)

    def _partitioning(self, step: Step) -> str:
        if step.kind in ("source", "map", "flat_map", "sink"):
            return "plain"
        if step.kind == "key_by":
            return "pending"
        if step.kind in HEADS or step.kind == "late":
            return "keyed"
        ins = {self.partitioning[id(p)] for p in self.producers[id(step)]}
        return "plain" if "plain" in ins else "pending" if "pending" in ins else "keyed"

    def boundary(self, u: Step, v: Step) -> tuple[str, Step] | None:
        """Is u -> v a shuffle? ("head", v) into a keyed op, ("shuffle", u) after key_by."""
        if v.kind in HEADS:
            return ("head", v)
        if self.partitioning[id(u)] == "pending" and v.kind not in KEY_PRESERVING:
            return ("shuffle", u)
        return None

    def build(self) -> Plan:
        entries = []
        for s in self.steps:
            if s.kind == "source":
                entries.append((s.index, 0, "source", s))
            elif s.kind in HEADS:
                entries.append((s.index, 0, "keyed", s))
            if any(self.boundary(s, v) == ("shuffle", s) for v in self.consumers[id(s)]):
                entries.append((s.index, 1, "shuffle", s))
        entries.sort(key=lambda e: (e[0], e[1]))
        self.stage_of = {(kind, id(s)): i for i, (_, _, kind, s) in enumerate(entries)}
        stages = []
        steady = not any(  # no input may go idle: windows may combine before a shuffle
            (s.kind == "source" and isinstance(s.arg, IngestSource))
            or (s.kind == "event_time" and s.arg.idle_after is not None) for s in self.steps)
        for i, (_, _, kind, anchor) in enumerate(entries):
            head = _make_head(anchor, steady) if kind == "keyed" else None
            name = anchor.name if kind != "shuffle" else f"shuffle:{anchor.name}"
            stages.append(Stage(i, name, kind, anchor.name if kind == "source" else None,
                                head, anchor if kind == "keyed" else None))
        self.heads = {i: s._head for i, s in enumerate(stages) if s._head is not None}
        self.stage_head = {i: e[3] for i, e in enumerate(entries) if e[2] == "keyed"}
        inputs: dict[int, set[int]] = {i: set() for i in range(len(stages))}
        for stage, (_, _, kind, anchor) in zip(stages, entries):
            self._compile(stage, kind, anchor)
            for o in stage.outputs:
                if isinstance(o, int):
                    inputs[o].add(stage.id)
        for stage in stages:
            stage.inputs = tuple(sorted(inputs[stage.id]))
        base = Path(self.flow.base_dir)
        sources = {s.name: s.arg.bind(s.ref, base) for s in self.steps if s.kind == "source"}
        for stage in stages:
            if stage.event_time is not None:
                sources[stage.source].timed = True  # splits that do not depend on P
        sinks = {s.name: s.arg.bind(s.ref, base) for s in self.steps if s.kind == "sink"}
        return Plan(self.flow.name, base, stages, sources, sinks)

    def _target(self, u: Step, v: Step) -> int | None:
        b = self.boundary(u, v)
        if b is None:
            return None
        kind, step = b
        return self.stage_of[("keyed" if kind == "head" else "shuffle", id(step))]

    def _members(self, kind: str, anchor: Step) -> tuple[list[Step], list[Step]]:
        """(members in topological order, entry consumers of a shuffle stage)."""
        if kind == "shuffle":
            start = [v for v in self.consumers[id(anchor)]
                     if self.boundary(anchor, v) == ("shuffle", anchor)]
        else:
            start = [anchor]
        seen = {id(s): s for s in start}
        queue = list(start)
        while queue:
            x = queue.pop()
            for v in self.consumers[id(x)]:
                if id(v) not in seen and self.boundary(x, v) is None:
                    seen[id(v)] = v
                    queue.append(v)
        return sorted(seen.values(), key=lambda s: s.index), start

    def _compile(self, stage: Stage, kind: str, anchor: Step) -> None:
        members, entry_consumers = self._members(kind, anchor)
        slot = {}
        if kind != "shuffle":
            slot[id(anchor)] = 0
        n = 1
        for m in members:
            if id(m) not in slot and m.kind != "sink":
                slot[id(m)] = n
                n += 1
        stage._slots = n
        entry_ids = {id(s) for s in entry_consumers}
        outputs: list[Output] = []
        program: list[Callable] = []
        keys_slots: dict[int, int] = {}  # key_by step id -> slot holding (keys, values)
        stripped: dict[int, int] = {}  # timed step id -> slot holding its rows as records

        def records_of(p: Step) -> int:
            """The slot holding p's output as records (rows stripped of their time)."""
            nonlocal n
            if not p.time or (kind == "shuffle" and p is anchor):
                return slot[id(p)]
            if id(p) not in stripped:
                stripped[id(p)] = n
                n += 1
                stage._slots = n
                program.append(op_strip(slot[id(p)], n - 1, p.keyed))
            return stripped[id(p)]

        stamps = {id(m): m for m in members if m.kind == "event_time"}
        if len(stamps) > 1:
            a, b = sorted(stamps.values(), key=lambda m: m.index)[:2]
            raise FlowError(
                f"step '{b.name}' (event_time at {b.where}): the records of a source get one"
                f" event time, and '{a.name}' (event_time at {a.where}) already stamps this"
                " source's records; declare event_time once, before the streams branch",
                step=b.name, where=b.where)
        if stamps:
            stage.event_time = next(iter(stamps.values())).arg
        for m in members:
            if id(m) == id(anchor) and kind != "shuffle":
                ins: list[int] = []
            else:
                ins = [0] * self.producers[id(m)].count(anchor) if id(m) in entry_ids else []
                local = [p for p in self.producers[id(m)]
                         if id(p) in slot and self.boundary(p, m) is None]
                ins += ([slot[id(p)] for p in local] if m.time and m.kind != "event_time"
                        else [records_of(p) for p in local])
            if m.kind == "late":
                stage._late_slot = slot[id(m)]
            elif m.kind == "event_time":
                run = compile_event_time(m, keyed=m.keyed)
                program.append(op_event_time(run, ins, slot[id(m)]))
            elif m.time:
                keyed_in = m.keyed and m.kind in KEY_PRESERVING
                program.append(op_node(compile_timed(m, keyed_in), ins, slot[id(m)]))
            elif m.kind == "sink":
                outputs.append(m.name)
                program.append(op_emit(m.name, ins))
            elif m.kind == "key_by" and self._counting_target(m) is not None:
                t = self._counting_target(m)
                outputs += [t] if t not in outputs else []
                program.append(op_count_keys(compile_counting_key_by(m), ins, t))
                continue  # its only consumer is that count: nothing else to send
            elif m.kind == "key_by":
                keys_slots[id(m)] = n
                n += 1
                stage._slots = n
                program.append(op_keys(compile_stateless(m), ins, slot[id(m)], n - 1,
                                     self._needs_tuples(m)))
            elif m.kind in HEADS:
                pass  # the head: slot 0 holds its changelog
            elif m.kind != "source":
                program.append(op_node(compile_stateless(m), ins, slot[id(m)]))
            # shuffles out of m
            targets: dict[int, int] = {}
            for v in self.consumers[id(m)]:
                t = self._target(m, v)
                if t is not None and (self.boundary(m, v)[0] == "head" or t not in targets):
                    targets[t] = targets.get(t, 0) + 1
            for t, times in targets.items():
                if t not in outputs:
                    outputs.append(t)
                head = self.heads.get(t)
                if head is not None and getattr(head, "timed", False):
                    for side in self._sides(m, self.stage_head[t]):
                        program.append(op_combine_rows(head, t, slot[id(m)]) if head.partials
                                       else op_emit(t, [slot[id(m)]]) if side is None
                                       else op_emit_sided(t, slot[id(m)], side))
                    continue
                for _ in range(times if head is not None else 1):
                    if head is not None and head.partials:
                        program.append(op_combine(head, t, keys_slots.get(id(m)),
                                                  records_of(m)))
                    else:
                        program.append(op_emit(t, [records_of(m)]))
        stage._program = program
        stage.outputs = tuple(outputs)
        stage._partial_heads = {t: self.heads[t] for t in outputs
                                if isinstance(t, int) and t in self.heads
                                and self.heads[t].partials}
        stage.steps = tuple(m.name for m in members
                            if m.kind not in ("sink", "source", "late") and m.kind not in HEADS)

    def _sides(self, m: Step, head: Step) -> list[str | None]:
        """How m's rows enter a timed head: once per time m feeds it (joins: per side)."""
        if head.kind not in ("interval_join", "window_join", "join_asof"):
            return [None] * self.producers[id(head)].count(m)
        left, right = expand(head.inputs[:1]), expand(head.inputs[1:])
        return [LEFT] * left.count(m) + [RIGHT] * right.count(m)

    def _counting_target(self, step: Step) -> int | None:
        """The stage id if a key_by's one consumer is a count (fused key_by + combiner)."""
        consumers = self.consumers[id(step)]
        if len(consumers) == 1 and consumers[0].kind == "count" and not step.time:
            return self._target(step, consumers[0])
        return None

    def _needs_tuples(self, step: Step) -> bool:
        """Does anything consume a key_by's output as (key, value) tuples?"""
        for v in self.consumers[id(step)]:
            b = self.boundary(step, v)
            if b is None or b[0] == "shuffle":
                return True
            head = self.heads.get(self._target(step, v))
            if head is None or not head.partials:
                return True
        return False


def _make_head(step: Step, steady: bool = False) -> Head:
    if step.kind == "window":
        return make_window_head(step, combine=steady)
    if step.kind in TIMED_OPS:
        return make_join_head(step)
    return make_head(step)
