"""Flow and Stream: declaring a dataflow graph.

A flow is built by chaining operators on streams; each call adds a named
step to the flow and returns the stream of its output:

    flow = Flow("wordcount")
    (flow.source(sources.files("corpus/*.txt"))
         .flat_map(str.split)
         .key_by(lambda w: w)
         .count()
         .sink(sinks.table()))

Streams are plain (any records) or keyed ((key, value) tuples, after
``key_by`` or a keyed operator). ``filter``, ``inspect`` and ``map_values``
keep a stream keyed; ``map`` and ``flat_map`` make it plain. Keyed operators
(``count``, ``sum``, ``reduce``, ``fold``, ``stateful_map``) and
``sinks.table()`` need a keyed stream.

Every step has a name unique in its flow (given with ``name=``, or generated:
"map", "map_2", ...) and remembers the file and line that declared it;
errors name both. Mistakes that can be seen at declaration (a keyed operator
on a plain stream, a non-callable function, a duplicate name) raise
FlowError at once; ``Flow.validate`` checks the whole graph (a source, a
sink, no stream leading nowhere). Nothing runs here: ``nodes.plan`` turns a
flow into stages and ``nodes.testing.run`` executes them.

Example:
    >>> from nodes import Flow, sources, sinks
    >>> flow = Flow("squares")
    >>> flow.source(sources.generate(3, lambda i: i * i)).sink(sinks.publish())
    >>> [step.name for step in flow.steps]
    ['source', 'publish']
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

from nodes.errors import FlowError, StepRef, format_location, typed, user_location
from nodes.eventtime import EventTime, duration_ms

STATELESS = frozenset({"map", "filter", "flat_map", "key_by", "inspect", "map_values"})
KEY_PRESERVING = frozenset({"filter", "inspect", "map_values", "event_time"})  # same key
KEYED_OPS = frozenset({"count", "sum", "reduce", "fold", "stateful_map"})
TIMED_OPS = frozenset({"window", "interval_join", "window_join", "join_asof"})
"""Keyed operators over event time (the heads of window and join stages); each has a
``.late`` stream (step kind "late")."""
HEADS = KEYED_OPS | TIMED_OPS
_FLOW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


class Step:
    """One node of a flow's graph.

    Attributes:
        kind: "source", "sink", "merge", or an operator name ("map", "count", ...).
        name: unique within the flow.
        where: "file:line" of the declaration.
        inputs: the steps whose output this step consumes (none for a source).
        fn: the user's function, if the step has one.
        arg: the Source or Sink of a source/sink step; the initial accumulator of a fold.
        keyed: the step's output records are (key, value) tuples.
        index: declaration order (a topological order of the graph).
        pending: keyed by a key_by whose shuffle is still to come (the next step
            that is not key-preserving is in another stage).
        time: the event_time steps that stamp this step's output (empty: no event
            time, e.g. after a shuffle or a keyed operator).
        late: the step's ``.late`` step once declared (window and join steps).
    """

    __slots__ = ("arg", "fn", "index", "inputs", "keyed", "kind", "late", "name", "pending",
                 "time", "where")

    def __init__(self, kind: str, name: str, where: str, inputs: tuple[Step, ...],
                 fn: Callable | None, arg: Any, keyed: bool, index: int):
        self.kind, self.name, self.where, self.inputs = kind, name, where, inputs
        self.fn, self.arg, self.keyed, self.index = fn, arg, keyed, index
        self.late: Step | None = None
        producers = expand(inputs)
        if kind == "merge":
            parts = {_partitioning(p) for p in inputs}
            self.pending = "plain" not in parts and "pending" in parts
            timed = all(p.time for p in inputs)
            self.time = tuple(dict.fromkeys(t for p in inputs for t in p.time)) if timed else ()
        elif kind in STATELESS or kind == "event_time":
            parts = {_partitioning(p) for p in producers}
            shuffled = "pending" in parts and kind not in KEY_PRESERVING
            self.pending = kind == "key_by" or (kind in KEY_PRESERVING and "plain" not in parts
                                                and "pending" in parts)
            timed = not shuffled and all(p.time for p in producers)
            self.time = (self,) if kind == "event_time" else (
                tuple(dict.fromkeys(t for p in producers for t in p.time)) if timed else ())
        else:
            self.pending, self.time = False, ()

    @property
    def ref(self) -> StepRef:
        """The step's name, kind and declaration site, for messages."""
        return StepRef(self.name, self.kind, self.where)

    @property
    def label(self) -> str:
        """``"step 'parse' (map, declared at flow.py:7)"``."""
        return self.ref.label

    def __repr__(self) -> str:
        return f"<Step {self.name!r} {self.kind} at {self.where}>"


def expand(steps: Iterable[Step]) -> list[Step]:
    """The steps feeding ``steps``, with merges replaced by what they merge."""
    out: list[Step] = []
    for step in steps:
        out += expand(step.inputs) if step.kind == "merge" else [step]
    return out


def _partitioning(step: Step) -> str:
    return "pending" if step.pending else "keyed" if step.keyed else "plain"


def in_source_stage(step: Step) -> bool:
    """Whether ``step`` runs in its source's stage (no shuffle or keyed operator before)."""
    if step.kind == "source":
        return True
    if step.kind in HEADS or step.kind == "late":
        return False
    if step.kind != "merge" and step.kind not in KEY_PRESERVING and any(
            p.pending for p in expand(step.inputs)):
        return False
    return all(in_source_stage(p) for p in step.inputs)


class Flow:
    """A named dataflow graph: sources, operators, sinks.

    Args:
        name: the flow's id in the cluster: 1-128 letters, digits, "_", ".", "-".
        base_dir: directory that relative paths in sources and sinks are resolved
            against. Defaults to the directory of the file that creates the flow
            (the working directory for code typed at a prompt); a relative value
            is taken relative to that directory.

    Raises:
        FlowError: the name is not valid.

    Example:
        >>> Flow("clicks").name
        'clicks'
    """

    def __init__(self, name: str, *, base_dir: str | os.PathLike | None = None):
        filename, line = user_location()
        self.where = format_location(filename, line)
        if not isinstance(name, str) or not _FLOW_NAME.match(name):
            raise FlowError(
                f"Flow name must be 1-128 letters, digits, '_', '.' or '-', starting with a"
                f" letter or digit; got {typed(name)} at {self.where}", where=self.where)
        self.name = name
        if filename.startswith("<") or not filename:
            home = Path.cwd()
        else:
            home = Path(os.path.abspath(filename)).parent
        self.base_dir = home / base_dir if base_dir is not None else home
        self._steps: list[Step] = []
        self._names: dict[str, Step] = {}

    def __repr__(self) -> str:
        return f"<Flow {self.name!r} at {self.where}: {len(self._steps)} steps>"

    @property
    def steps(self) -> tuple[Step, ...]:
        """Every step, in declaration order."""
        return tuple(self._steps)

    def source(self, source: Any, *, name: str | None = None) -> Stream:
        """Start a stream reading ``source``.

        Args:
            source: a source from ``nodes.sources`` (files, jsonl, generate).
            name: the step's name; default "source", "source_2", ...

        Returns:
            The stream of the source's records (plain, not keyed).

        Raises:
            FlowError: ``source`` is not a source, or the name is taken.
        """
        from nodes.sources import Source

        where = _where()
        if not isinstance(source, Source):
            raise FlowError(
                f"flow.source() at {where} needs a source such as sources.files('data/*.txt')"
                f" or sources.generate(100, fn); got {typed(source)}", where=where)
        step = self._add("source", name, where, (), None, source, keyed=False)
        return Stream(self, step)

    def validate(self) -> None:
        """Check the whole graph.

        Raises:
            FlowError: no source, no sink, or a stream that leads nowhere (the
                message names every such step with its file and line).
        """
        if not any(step.kind == "source" for step in self._steps):
            raise FlowError(
                f"flow '{self.name}' (created at {self.where}) has no source: start a stream"
                " with flow.source(sources.files('data/*.txt'))", where=self.where)
        if not any(step.kind == "sink" for step in self._steps):
            raise FlowError(
                f"flow '{self.name}' (created at {self.where}) has no sink: end each stream"
                " with .sink(...), e.g. .sink(sinks.table())", where=self.where)
        used = {id(parent) for step in self._steps for parent in step.inputs}
        dead = [s for s in self._steps if s.kind != "sink" and id(s) not in used]
        if dead:
            names = ", ".join(f"'{s.name}' ({s.kind} at {s.where})" for s in dead)
            raise FlowError(
                f"flow '{self.name}': {'a stream leads' if len(dead) == 1 else 'streams lead'}"
                f" nowhere after {names}: end it with .sink(...) (e.g. sinks.publish()),"
                " or remove the step", step=dead[0].name, where=dead[0].where)

    def _add(self, kind: str, name: str | None, where: str, inputs: tuple[Step, ...],
             fn: Callable | None, arg: Any, keyed: bool) -> Step:
        if name is None:
            base = kind if kind not in ("sink", "source") else (
                "source" if kind == "source" else getattr(arg, "kind", "sink"))
            name, n = base, 1
            while name in self._names:
                n += 1
                name = f"{base}_{n}"
        elif not isinstance(name, str) or not name or len(name) > 128 or not name.isprintable():
            raise FlowError(f"{kind} at {where}: name= must be a non-empty printable str of"
                            f" at most 128 characters; got {typed(name)}", where=where)
        elif name in self._names:
            other = self._names[name]
            raise FlowError(
                f"{kind} at {where}: the step name '{name}' is already used by the {other.kind}"
                f" at {other.where}; step names must be unique within a flow",
                step=name, where=where)
        step = Step(kind, name, where, inputs, fn, arg, keyed, len(self._steps))
        self._steps.append(step)
        self._names[name] = step
        return step


class Stream:
    """The output of a step; chain operators on it.

    Every operator takes ``name=`` (unique in the flow; generated if omitted),
    returns the Stream of its output, and raises FlowError at once, naming
    the calling file and line, if its function is not callable or it needs a
    keyed stream and this one is plain.

    Attributes:
        flow: the Flow it belongs to.
        step: the Step producing it.
        keyed: records are (key, value) tuples partitioned by key.
    """

    __slots__ = ("flow", "step")

    def __init__(self, flow: Flow, step: Step):
        self.flow, self.step = flow, step

    @property
    def keyed(self) -> bool:
        return self.step.keyed

    def __repr__(self) -> str:
        return f"<Stream from {self.step.name!r} ({'keyed' if self.keyed else 'plain'})>"

    # -- stateless ---------------------------------------------------------------------------

    def map(self, fn: Callable[[Any], Any], *, name: str | None = None) -> Stream:
        """One output per record: ``fn(record)``. The result is a plain stream.

        Example: ``stream.map(json.loads)``
        """
        return self._then("map", fn, name, keyed=False)

    def filter(self, fn: Callable[[Any], Any], *, name: str | None = None) -> Stream:
        """Keep the records for which ``fn(record)`` is true; keeps a stream keyed.

        Example: ``stream.filter(lambda line: line.strip())``
        """
        return self._then("filter", fn, name, keyed=self.keyed)

    def flat_map(self, fn: Callable[[Any], Iterable[Any]], *, name: str | None = None) -> Stream:
        """Zero or more outputs per record: the items of ``fn(record)``. Plain stream.

        Example: ``stream.flat_map(str.split)``
        """
        return self._then("flat_map", fn, name, keyed=False)

    def inspect(self, fn: Callable[[Any], Any], *, name: str | None = None) -> Stream:
        """Call ``fn(record)`` for its side effect; records pass through unchanged.

        Example: ``stream.inspect(print)``
        """
        return self._then("inspect", fn, name, keyed=self.keyed)

    def key_by(self, fn: Callable[[Any], str | bytes], *, name: str | None = None) -> Stream:
        """Key each record: emits ``(fn(record), record)``, shuffled to the key's partition.

        Args:
            fn: returns the record's key, a str or bytes.
            name: the step's name.

        Returns:
            A keyed stream.

        Example: ``stream.key_by(lambda click: str(click["user"]))``
        """
        return self._then("key_by", fn, name, keyed=True)

    def map_values(self, fn: Callable[[Any], Any], *, name: str | None = None) -> Stream:
        """On a keyed stream: ``(key, value) -> (key, fn(value))``; stays keyed.

        Example: ``stream.key_by(lambda o: o["user"]).map_values(lambda o: o["total"]).sum()``
        """
        return self._then("map_values", fn, name, keyed=True, needs_key=True)

    def merge(self, *others: Stream, name: str | None = None) -> Stream:
        """All records of this stream and ``others``; keyed only if all of them are.

        Example: ``clicks.merge(views).key_by(lambda e: e["user"])``
        """
        where = _where()
        for other in others:
            if not isinstance(other, Stream):
                raise FlowError(f"merge at {where} needs streams; got {typed(other)}",
                                where=where)
            if other.flow is not self.flow:
                raise FlowError(
                    f"merge at {where}: stream from '{other.step.name}' belongs to flow"
                    f" '{other.flow.name}', not '{self.flow.name}'; a flow can only merge"
                    " its own streams", where=where)
        streams = (self, *others)
        keyed = all(s.keyed for s in streams)
        step = self.flow._add("merge", name, where, tuple(s.step for s in streams), None,
                              None, keyed)
        return Stream(self.flow, step)

    # -- keyed -------------------------------------------------------------------------------

    def count(self, *, name: str | None = None) -> Stream:
        """Number of records per key; emits (key, count) when a key's count changes.

        Example: ``words.key_by(lambda w: w).count()``
        """
        return self._then("count", None, name, keyed=True, needs_key=True)

    def sum(self, *, name: str | None = None) -> Stream:
        """Sum of the values (int or float) per key; emits (key, sum) on change.

        Example: ``orders.key_by(lambda o: o["user"]).map_values(lambda o: o["total"]).sum()``
        """
        return self._then("sum", None, name, keyed=True, needs_key=True)

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None) -> Stream:
        """Combine the values per key with ``fn(acc, value) -> acc``; emits (key, acc).

        The first value is the initial accumulator. ``fn`` must be associative: it
        also combines partial results computed before the shuffle.

        Example: ``temps.key_by(lambda t: t["city"]).map_values(lambda t: t["c"]).reduce(max)``
        """
        return self._then("reduce", fn, name, keyed=True, needs_key=True)

    def fold(self, init: Any, fn: Callable[[Any, Any], Any], *,
             name: str | None = None) -> Stream:
        """Accumulate the values per key with ``fn(acc, value) -> acc``; emits (key, acc).

        Args:
            init: a zero-argument callable making a fresh accumulator (``list``,
                ``dict``), or an immutable initial value (``0``, ``""``).
            fn: folds one value into the accumulator and returns the accumulator.
            name: the step's name.

        Example: ``events.key_by(lambda e: e["user"]).fold(list, lambda acc, e: acc + [e])``
        """
        return self._then("fold", fn, name, keyed=True, needs_key=True, arg=init)

    def stateful_map(self, fn: Callable[[Any, Any], tuple[Any, Any]], *,
                     name: str | None = None) -> Stream:
        """Per key, ``fn(state, value) -> (new_state, output)``; emits (key, output).

        ``state`` is None for a key's first value; returning a new_state of None
        deletes the key's state.

        Example: ``stream.stateful_map(lambda seen, v: (True, seen is None))  # first sighting``
        """
        return self._then("stateful_map", fn, name, keyed=True, needs_key=True)

    # -- event time --------------------------------------------------------------------------

    def event_time(self, fn: Callable[[Any], Any], *, max_delay: timedelta,
                   allowed_lateness: timedelta = timedelta(0),
                   idle_after: timedelta | None = None, name: str | None = None) -> Stream:
        """Stamp each record with its event time; needed by windows and joins.

        Declared in a source's stage (before any shuffle); records keep their value.
        Each split of the source tracks the largest ts read so far; its watermark is
        that less ``max_delay``, and a record behind the watermark its split had
        just before it was read (less ``allowed_lateness``) is late downstream.

        Args:
            fn: returns the record's time: an aware datetime, or epoch seconds (int
                or float); kept to the millisecond.
            max_delay: how far out of order records may arrive within a split.
            allowed_lateness: how long windows stay open after they fire: each
                late record they accept emits the updated value.
            idle_after: a split that read nothing for this long stops holding the
                watermark back (cluster only; the local runner never idles).
            name: the step's name.

        Raises:
            FlowError: fn is not callable, a duration is not a timedelta of whole
                milliseconds >= 0, the stream already has event time, or it is past a
                shuffle (a key_by followed by another step, or a keyed operator).

        Example: ``clicks.event_time(lambda c: c["ts"], max_delay=timedelta(seconds=5))``
        """
        where = _where()
        if not callable(fn):
            raise FlowError(f"event_time() at {where} needs a function returning the record's"
                            f" time; got {typed(fn)}", where=where)
        try:
            delay = duration_ms(max_delay, "max_delay")
            lateness = duration_ms(allowed_lateness, "allowed_lateness")
            idle = None if idle_after is None else duration_ms(
                idle_after, "idle_after", positive=True) / 1000
        except (TypeError, ValueError) as err:
            raise FlowError(f"event_time() at {where}: {err}", where=where) from err
        if not in_source_stage(self.step):
            raise FlowError(
                f"event_time() at {where} must be declared in its source's stage, before the"
                f" first shuffle, but '{self.step.name}' ({self.step.kind} at"
                f" {self.step.where}) comes after a shuffle or a keyed operator: move"
                " .event_time(...) right after flow.source(...)", where=where)
        first = _first_event_time(self.step)
        if first is not None:
            raise FlowError(
                f"event_time() at {where}: the stream already has event time, declared at"
                f" {first.where}; declare it once per source", where=where)
        spec = EventTime(delay, lateness, idle)
        step = self.flow._add("event_time", name, where, (self.step,), fn, spec, self.keyed)
        return Stream(self.flow, step)

    def window(self, windower: Any) -> WindowedStream:
        """Group a keyed stream with event time into windows; then aggregate with
        ``count()``, ``sum()``, ``reduce(fn)``, ``fold(init, fn)`` or ``collect()``.

        Args:
            windower: ``windows.tumbling(size)``, ``windows.sliding(size, every)`` or
                ``windows.session(gap)``.

        Raises:
            FlowError: not a windower, or the stream is not keyed or has no event time.

        Example: ``clicks.key_by(user).window(windows.tumbling(timedelta(minutes=1))).count()``
        """
        from nodes.windows import Windower

        where = _where()
        if not isinstance(windower, Windower):
            raise FlowError(f"window() at {where} needs windows.tumbling(size),"
                            " windows.sliding(size, every) or windows.session(gap);"
                            f" got {typed(windower)}", where=where)
        self._check_timed("window", where)
        return WindowedStream(self, windower, where)

    def interval_join(self, other: Stream, lower: timedelta, upper: timedelta, *,
                      how: str = "inner", name: str | None = None) -> Stream:
        """Pair x (this stream) with y (``other``) of the same key when
        x.ts + lower <= y.ts <= x.ts + upper; emits ``(key, (x, y))``.

        Args:
            other: a keyed stream with event time.
            lower, upper: the bounds (inclusive; either may be negative; lower <= upper).
            how: "inner", or "left" to also emit ``(key, (x, None))`` once the
                watermark passes x.ts + upper with no match for x.
            name: the step's name.

        Example: ``orders.interval_join(payments, timedelta(0), timedelta(minutes=30))``
        """
        where = _where()
        try:
            low = _signed_ms(lower, "lower")
            high = _signed_ms(upper, "upper")
        except (TypeError, ValueError) as err:
            raise FlowError(f"interval_join() at {where}: {err}", where=where) from err
        if low > high:
            raise FlowError(f"interval_join() at {where}: lower must be <= upper; got"
                            f" lower={lower}, upper={upper}", where=where)
        return self._join("interval_join", other, how, ("inner", "left"), where, name,
                          lower=low, upper=high)

    def window_join(self, other: Stream, windower: Any, *, name: str | None = None) -> Stream:
        """Every pair (x, y) of a key's records of this stream and ``other`` in the same
        window, emitted when the window fires: ``(key, Windowed(start, end, (x, y)))``.

        Args:
            other: a keyed stream with event time.
            windower: ``windows.tumbling(...)`` or ``windows.sliding(...)``.
            name: the step's name.

        Example: ``a.window_join(b, windows.tumbling(timedelta(minutes=5)))``
        """
        from nodes.windows import Session, Windower

        where = _where()
        if not isinstance(windower, Windower) or isinstance(windower, Session):
            raise FlowError(f"window_join() at {where} needs windows.tumbling(size) or"
                            f" windows.sliding(size, every); got {typed(windower)}",
                            where=where)
        return self._join("window_join", other, "inner", ("inner",), where, name,
                          windower=windower)

    def join_asof(self, other: Stream, *, how: str = "left", name: str | None = None) -> Stream:
        """Join each record x of this stream with the value of ``other`` of greatest
        ts <= x.ts for its key: ``(key, (x, y))``, emitted once the watermark passes
        x.ts (how="left": ``(key, (x, None))`` when there is none; "inner": nothing).

        Example: ``clicks.join_asof(profiles, how="left")``
        """
        return self._join("join_asof", other, how, ("left", "inner"), _where(), name)

    @property
    def late(self) -> Stream:
        """The late records of a window or join step, as ``(key, value)`` (joins:
        ``(key, (side, value))`` with side "left" or "right"). Unused, they are dropped
        and counted.

        Example: ``per_minute.late.sink(sinks.files("late"))``
        """
        step = self.step
        if step.kind not in TIMED_OPS:
            where = _where()
            raise FlowError(
                f".late at {where}: only windowed steps and joins have late records;"
                f" '{step.name}' is a {step.kind} (declared at {step.where})", where=where)
        if step.late is None:
            step.late = self.flow._add("late", f"{step.name}.late", _where(), (step,), None,
                                       None, keyed=True)
        return Stream(self.flow, step.late)

    def _check_timed(self, what: str, where: str, role: str = "") -> None:
        if not self.keyed:
            raise FlowError(
                f"{what}() at {where} needs a keyed stream{role}, but '{self.step.name}'"
                f" ({self.step.kind} at {self.step.where}) produces plain records"
                f"{_plain_hint(self.step)}", where=where)
        if not self.step.time:
            lost = _first_event_time(self.step) is not None
            raise FlowError(
                f"{what}() at {where} needs a stream with event time{role}, but"
                f" '{self.step.name}' ({self.step.kind} at {self.step.where}) has none: "
                + ("event time ends at a shuffle or a keyed operator; key the stream once,"
                   " right before the window or join" if lost else
                   "declare it on the source's stream, e.g. .event_time(lambda r: r['ts'],"
                   " max_delay=timedelta(seconds=5))"), where=where)

    def _join(self, kind: str, other: Any, how: str, hows: tuple[str, ...], where: str,
              name: str | None, lower: int = 0, upper: int = 0,
              windower: Any = None) -> Stream:
        if not isinstance(other, Stream):
            raise FlowError(f"{kind}() at {where} needs a keyed stream to join with;"
                            f" got {typed(other)}", where=where)
        if other.flow is not self.flow:
            raise FlowError(f"{kind}() at {where}: stream from '{other.step.name}' belongs to"
                            f" flow '{other.flow.name}', not '{self.flow.name}'", where=where)
        if how not in hows:
            raise FlowError(f"{kind}() at {where}: how must be one of"
                            f" {', '.join(map(repr, hows))}; got {typed(how)}", where=where)
        self._check_timed(kind, where, " on the left")
        other._check_timed(kind, where, " on the right")
        spec = JoinSpec(lower, upper, how, windower,
                        _lateness(self.step.time + other.step.time))
        step = self.flow._add(kind, name, where, (self.step, other.step), None, spec, True)
        return Stream(self.flow, step)

    # -- sink --------------------------------------------------------------------------------

    def sink(self, sink: Any, *, name: str | None = None) -> None:
        """End the stream in ``sink`` (from ``nodes.sinks``).

        Args:
            sink: sinks.table(), sinks.files(dir) or sinks.publish().
            name: the step's name; default the sink's kind ("table", "files", ...).

        Raises:
            FlowError: not a sink, or a table sink on a plain stream.
        """
        from nodes.sinks import Sink

        where = _where()
        if not isinstance(sink, Sink):
            raise FlowError(f"sink() at {where} needs a sink such as sinks.table(),"
                            f" sinks.files('out') or sinks.publish(); got {typed(sink)}",
                            where=where)
        if sink.needs_keyed and not self.keyed:
            raise FlowError(
                f"sinks.{sink.kind}() at {where} needs a keyed stream of (key, value) records,"
                f" but '{self.step.name}' ({self.step.kind} at {self.step.where}) produces"
                f" plain records{_plain_hint(self.step)}", where=where)
        self.flow._add("sink", name, where, (self.step,), None, sink, keyed=False)

    # -- internals ---------------------------------------------------------------------------

    def _then(self, kind: str, fn: Callable | None, name: str | None, *, keyed: bool,
              needs_key: bool = False, arg: Any = None) -> Stream:
        where = _where()
        if kind not in ("count", "sum") and not callable(fn):
            raise FlowError(f"{kind}() at {where} needs a function; got {typed(fn)}",
                            where=where)
        if needs_key and not self.keyed:
            raise FlowError(
                f"{kind}() at {where} needs a keyed stream, but '{self.step.name}'"
                f" ({self.step.kind} at {self.step.where}) produces plain records"
                f"{_plain_hint(self.step)}", where=where)
        step = self.flow._add(kind, name, where, (self.step,), fn, arg, keyed)
        return Stream(self.flow, step)


class WindowSpec(NamedTuple):
    """The arg of a ``window`` step."""

    windower: Any
    agg: str  # count, sum, reduce, fold, collect
    init: Any
    allowed_lateness: int  # ms: the largest of the inputs' event_time declarations


class JoinSpec(NamedTuple):
    """The arg of an interval_join, window_join or join_asof step."""

    lower: int
    upper: int
    how: str
    windower: Any
    allowed_lateness: int


class WindowedStream:
    """A keyed stream grouped into windows (``Stream.window``); aggregate it.

    Each aggregation emits ``(key, Windowed(start, end, value))`` per window when the
    window fires, and has a ``.late`` stream.
    """

    __slots__ = ("stream", "where", "windower")

    def __init__(self, stream: Stream, windower: Any, where: str):
        self.stream, self.windower, self.where = stream, windower, where

    def __repr__(self) -> str:
        return f"<WindowedStream {self.windower!r} of {self.stream.step.name!r}>"

    def count(self, *, name: str | None = None) -> Stream:
        """Records per window."""
        return self._agg("count", None, None, name)

    def sum(self, *, name: str | None = None) -> Stream:
        """Sum of the values (int or float) per window."""
        return self._agg("sum", None, None, name)

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None) -> Stream:
        """``fn(acc, value) -> acc`` over the window's values; fn must be associative and
        commutative (records of different splits arrive in any order)."""
        return self._agg("reduce", fn, None, name)

    def fold(self, init: Any, fn: Callable[[Any, Any], Any], *,
             name: str | None = None) -> Stream:
        """``fn(acc, value) -> acc`` from ``init`` (a factory such as ``list``, or an
        immutable value) over the window's values in event-time order."""
        return self._agg("fold", fn, init, name)

    def collect(self, *, name: str | None = None) -> Stream:
        """The window's values as a list, in event-time order (ties in read order)."""
        return self._agg("collect", None, None, name)

    def _agg(self, agg: str, fn: Callable | None, init: Any, name: str | None) -> Stream:
        where = _where()
        if agg in ("reduce", "fold") and not callable(fn):
            raise FlowError(f"window {agg}() at {where} needs a function; got {typed(fn)}",
                            where=where)
        stream = self.stream
        spec = WindowSpec(self.windower, agg, init, _lateness(stream.step.time))
        step = stream.flow._add("window", name, where, (stream.step,), fn, spec, True)
        return Stream(stream.flow, step)


def _lateness(stamps: tuple[Step, ...]) -> int:
    return max((s.arg.allowed_lateness for s in stamps), default=0)


def _first_event_time(step: Step) -> Step | None:
    if step.kind == "event_time":
        return step
    return next(filter(None, map(_first_event_time, step.inputs)), None)


def _signed_ms(value: Any, label: str) -> int:
    if isinstance(value, timedelta) and value < timedelta(0):
        return -duration_ms(-value, label)
    return duration_ms(value, label)


def _plain_hint(step: Step) -> str:
    if step.kind in ("map", "flat_map") and any(p.keyed for p in step.inputs):
        return (f": {step.kind} drops the key. Call .key_by(fn) first, or use"
                " .map_values(fn) to change values and keep the keys")
    return ": call .key_by(fn) first, e.g. .key_by(lambda r: str(r['id']))"


def _where() -> str:
    filename, line = user_location()
    return format_location(filename, line)


__all__ = ["Flow", "FlowError", "Step", "Stream", "WindowedStream"]
