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
from pathlib import Path
from typing import Any

from nodes.errors import FlowError, StepRef, format_location, typed, user_location

STATELESS = frozenset({"map", "filter", "flat_map", "key_by", "inspect", "map_values"})
KEY_PRESERVING = frozenset({"filter", "inspect", "map_values"})  # keyed in, keyed out, same key
KEYED_OPS = frozenset({"count", "sum", "reduce", "fold", "stateful_map"})
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
    """

    __slots__ = ("arg", "fn", "index", "inputs", "keyed", "kind", "name", "where")

    def __init__(self, kind: str, name: str, where: str, inputs: tuple[Step, ...],
                 fn: Callable | None, arg: Any, keyed: bool, index: int):
        self.kind, self.name, self.where, self.inputs = kind, name, where, inputs
        self.fn, self.arg, self.keyed, self.index = fn, arg, keyed, index

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


def _plain_hint(step: Step) -> str:
    if step.kind in ("map", "flat_map") and any(p.keyed for p in step.inputs):
        return (f": {step.kind} drops the key. Call .key_by(fn) first, or use"
                " .map_values(fn) to change values and keep the keys")
    return ": call .key_by(fn) first, e.g. .key_by(lambda r: str(r['id']))"


def _where() -> str:
    filename, line = user_location()
    return format_location(filename, line)


__all__ = ["Flow", "FlowError", "Step", "Stream"]
