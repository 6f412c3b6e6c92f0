"""A compiled stage and its outbox: what a runtime calls, per partition task.

``nodes.plan`` builds the stages; this module is how they run. A stage's
program is a short list of ops, one per fused step, each working on whole
batches held in numbered slots (slot 0: the batch entering the stage, or the
changelog of its keyed head). Sends to a stage whose head is combinable go
through its combiner into the outbox's accumulators, so what leaves a task
at commit is one (key, partial) per key.

See ``nodes.plan`` for the calling contract. Example:
    >>> from nodes import Flow, sources, sinks
    >>> from nodes.plan import plan
    >>> flow = Flow("wc")
    >>> flow.source(sources.generate(1, str)).key_by(str).count().sink(sinks.table())
    >>> source, counter = plan(flow).stages
    >>> outbox = source.outbox()
    >>> source.feed(["a", "b", "a"], None, outbox)
    >>> source.feed(["a"], None, outbox)
    >>> outbox.drain()
    {1: [('a', 3), ('b', 1)]}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nodes.eventtime import MAX_TIME, MIN_TIME, EventTime
from nodes.stateful import Head
from nodes.windowops import clock

if TYPE_CHECKING:
    from nodes.flow import Step

Output = str | int  # a sink's name, or a downstream stage's id


class Outbox:
    """What one partition task produced since its last commit.

    Attributes:
        lists: output -> records (sinks, and stages that take plain records).
        partials: stage id -> accumulator of partials (stages with ``partials``).
        touched: keys of the task's state written since the last drain.
        late: window or join step name -> its late records since the last drain (read
            before draining: the runtime counts them; ``.late`` streams get them too).
        split_time: the time state of the split being fed (source stages with event
            time; see ``Stage.feed``).
    """

    __slots__ = ("_heads", "_order", "late", "late_after_idle", "lists", "partials",
                 "split_time", "touched")

    def __init__(self, outputs: tuple[Output, ...], heads: dict[int, Head]):
        self._order, self._heads = outputs, heads
        self.lists: dict[Output, list] = {o: [] for o in outputs if o not in heads}
        self.partials: dict[int, dict] = {o: h.new_partials() for o, h in heads.items()}
        self.touched: set = set()
        self.late: dict[str, list] = {}
        self.late_after_idle: dict[str, int] = {}
        self.split_time: int | None = None

    def size(self) -> int:
        """Records held: listed records plus one per key of each accumulator."""
        return sum(map(len, self.lists.values())) + sum(map(len, self.partials.values()))

    def drain(self) -> dict[Output, list]:
        """Take everything out: ``{output: records}`` for the non-empty outputs.

        Partials come out as one (key, partial) per key. ``touched`` is reset too
        (read it first).
        """
        out: dict[Output, list] = {}
        for o in self._order:
            if o in self.lists:
                if self.lists[o]:
                    out[o] = self.lists[o]
                    self.lists[o] = []
            elif self.partials[o]:
                out[o] = list(self.partials[o].items())
                self.partials[o] = self._heads[o].new_partials()
        self.touched = set()
        self.late = {}
        self.late_after_idle = {}
        return out


class Stage:
    """A unit of execution: one task per partition (or per source split).

    Attributes:
        id: index in ``Plan.stages`` (a topological order).
        name: for status and logs: the source's or head's step name, or
            "shuffle:<step>" for a shuffle stage.
        kind: "source", "keyed" or "shuffle".
        source: the source step's name (source stages), else None.
        inputs: ids of the stages that send records here.
        head: the keyed step's name (keyed stages), else None.
        head_kind: "count", "sum", "reduce", "fold" or "stateful_map", else None.
        partials: input records are (key, partial) to merge (count, sum, reduce).
        steps: the fused stateless steps, in execution order.
        outputs: sink names (str) and downstream stage ids (int).
        event_time: the source's event time declaration (source stages with
            ``event_time``), else None.
        timed: the head is a window or join: the task feeds it watermarks
            (``advance``), and its inputs carry them.
    """

    def __init__(self, id: int, name: str, kind: str, source: str | None,
                 head: Head | None, head_step: Step | None):
        self.id, self.name, self.kind, self.source = id, name, kind, source
        self._head = head
        self.head = head_step.name if head_step else None
        self.head_kind = head_step.kind if head_step else None
        self.partials = bool(head and head.partials)
        self.timed = bool(getattr(head, "timed", False))
        self.event_time: EventTime | None = None
        self._late_slot = 0  # the slot of the head's .late stream (0: none)
        self.may_idle = False
        """A timed stage whose inputs may go idle (the runtime says so): records behind
        its fired windows are then possible, and go to ``.late``."""
        self.inputs: tuple[int, ...] = ()
        self.steps: tuple[str, ...] = ()
        self.outputs: tuple[Output, ...] = ()
        self._program: list[Callable] = []
        self._slots = 1
        self._partial_heads: dict[int, Head] = {}

    def __repr__(self) -> str:
        return (f"<Stage {self.id} {self.name!r} {self.kind} inputs={self.inputs}"
                f" steps={self.steps} outputs={self.outputs}>")

    def outbox(self) -> Outbox:
        """A fresh outbox for one partition task of this stage."""
        return Outbox(self.outputs, self._partial_heads)

    def feed(self, batch: list, state: dict | None, outbox: Outbox,
             split_time: int | None = None) -> int | None:
        """Run one batch through the stage, adding its results to ``outbox``.

        Args:
            batch: a list of records (see the module docstring).
            state: the partition's keyed state (keyed stages), mutated in place.
            outbox: from ``outbox()``; accumulates until drained.
            split_time: source stages with event time: the time state of the split
                the batch was read from (None before its first batch).

        Returns:
            The split's new time state (source stages with event time; else None): a
            small msgpack-able value to store with the split's offset.

        Raises:
            FlowError: a user function failed or returned a bad value.
        """
        slots = [None] * self._slots
        if self._head is None:
            slots[0] = batch
        elif self.timed:
            batch, raised = _past_fired(batch, self._head, state) if self.may_idle \
                else (batch, ())
            slots[0], late = self._head.apply(batch, state, outbox.touched)
            if late:
                outbox.late.setdefault(self.head, []).extend(late)
                if raised:
                    after = sum(id(record[1]) in raised for record in late)
                    outbox.late_after_idle[self.head] = \
                        outbox.late_after_idle.get(self.head, 0) + after
            if self._late_slot:
                slots[self._late_slot] = late
        else:
            slots[0] = self._head.apply(batch, state, outbox.touched)
        outbox.split_time = split_time
        for op in self._program:
            op(slots, outbox)
        return outbox.split_time

    def advance(self, watermark: int, state: dict, outbox: Outbox) -> None:
        """Timed stages: the task's watermark is now ``watermark`` (ms; ``MAX_TIME`` at
        end of stream): fire the windows it closes, into ``outbox``. Idempotent; a
        watermark at or below the last one does nothing."""
        if not self.timed:
            return
        slots = [None] * self._slots
        slots[0] = self._head.advance(watermark, state, outbox.touched)
        if self._late_slot:
            slots[self._late_slot] = []
        if slots[0]:
            for op in self._program:
                op(slots, outbox)

    def split_watermark(self, split_time: int | None, done: bool) -> int:
        """The watermark of a split of this source stage: its largest ts less max_delay
        (``MIN_TIME`` before its first record, ``MAX_TIME`` once done, and always
        ``MAX_TIME`` for a source without event time)."""
        if self.event_time is None:
            return MAX_TIME
        return self.event_time.split_watermark(split_time, done)

    def process(self, batch: list, state: dict | None = None) -> dict[Output, list]:
        """``feed`` one batch into a fresh outbox and drain it.

        Returns:
            ``{output: records}`` for the outputs that received records.
        """
        outbox = self.outbox()
        self.feed(batch, state if state is not None or self._head is None else {}, outbox)
        return outbox.drain()

    def describe(self) -> dict[str, Any]:
        """A msgpack-able summary, for status output."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "source": self.source,
                "inputs": list(self.inputs), "head": self.head, "head_kind": self.head_kind,
                "partials": self.partials, "steps": list(self.steps),
                "outputs": list(self.outputs), "timed": self.timed,
                "event_time": self.event_time.describe() if self.event_time else None}


def _past_fired(rows: list, head: Head, state: dict) -> tuple[list, set[int]]:
    """A timed head's rows with each bound raised to what its state still holds (its
    watermark less the allowed lateness), and the ids of the values raised.

    Without idleness no bound is below it: a record's bound is its split's watermark
    before it was read, and the head's watermark is the lowest of its senders', sent
    after their records. A split that went idle (``idle_after``) left that minimum, so
    its records may be behind windows that fired meanwhile: raised, they go to
    ``.late`` (counted late after idle) instead of opening a fired window again."""
    watermark = clock(state)[0]
    if watermark <= MIN_TIME:
        return rows, set()
    floor = watermark - head.lateness
    if all(row[2] >= floor for row in rows):
        return rows, set()
    raised = {id(row[3]) for row in rows if row[2] < floor}
    return [row if row[2] >= floor else (row[0], row[1], floor, row[3]) for row in rows], raised


def _gather(slots: list, ins: list[int]) -> list:
    if len(ins) == 1:
        return slots[ins[0]]
    out: list = []
    for i in ins:
        out += slots[i]
    return out


def op_node(run: Callable, ins: list[int], out: int) -> Callable:
    if len(ins) == 1:
        (i,) = ins

        def op(slots: list, outbox: Outbox) -> None:
            slots[out] = run(slots[i])
    else:
        def op(slots: list, outbox: Outbox) -> None:
            slots[out] = run(_gather(slots, ins))
    return op


def op_keys(run: Callable, ins: list[int], out: int, cols: int, tuples: bool) -> Callable:
    def op(slots: list, outbox: Outbox) -> None:
        values = _gather(slots, ins)
        keys = run(values)
        slots[cols] = (keys, values)
        if tuples:
            slots[out] = list(zip(keys, values))
    return op


def op_count_keys(run: Callable, ins: list[int], target: int) -> Callable:
    def op(slots: list, outbox: Outbox) -> None:
        run(_gather(slots, ins), outbox.partials[target])
    return op


def op_emit(output: Output, ins: list[int]) -> Callable:
    def op(slots: list, outbox: Outbox) -> None:
        records = outbox.lists[output]
        for i in ins:
            records += slots[i]
    return op


def op_event_time(run: Callable, ins: list[int], out: int) -> Callable:
    def op(slots: list, outbox: Outbox) -> None:
        slots[out], outbox.split_time = run(_gather(slots, ins), outbox.split_time)
    return op


def op_strip(rows: int, out: int, keyed: bool) -> Callable:
    from nodes.timed import strip

    def op(slots: list, outbox: Outbox) -> None:
        slots[out] = strip(slots[rows], keyed)
    return op


def op_emit_sided(output: Output, rows: int, side: str) -> Callable:
    """Keyed rows to a join stage, their values tagged with the side they join on."""
    def op(slots: list, outbox: Outbox) -> None:
        outbox.lists[output] += [(r[0], r[1], r[2], (side, r[3])) for r in slots[rows]]
    return op


def op_combine_rows(head: Any, target: int, rows: int) -> Callable:
    """Timed rows into a window stage's partials (it combines before the shuffle)."""
    def op(slots: list, outbox: Outbox) -> None:
        head.combine_rows(outbox.partials[target], slots[rows])
    return op


def op_combine(head: Head, target: int, cols: int | None, tuples: int) -> Callable:
    if cols is not None:
        def op(slots: list, outbox: Outbox) -> None:
            keys, values = slots[cols]
            head.combine(outbox.partials[target], keys, values)
    else:
        def op(slots: list, outbox: Outbox) -> None:
            head.combine_records(outbox.partials[target], slots[tuples])
    return op
