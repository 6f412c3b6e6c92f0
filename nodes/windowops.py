"""Windowed aggregations: the heads of window stages and their per-key state.

A timed head (windows here, joins in ``nodes.joins``) takes keyed rows
``(key, ts, bound, value)`` (see ``nodes.timed``) and keeps, in the
partition's state dict, msgpack-able values only (ints, lists, dicts with int
keys; lists may come back as tuples after a restore and are copied before
they change):

- ``state[None]``: ``[watermark, due]``, the watermark the head last advanced to
  and the earliest time at which advancing has work to do;
- ``state[key]``: tumbling and sliding: ``{window start: accumulator}``;
  sessions: a list of ``[start, last ts, accumulator]``, by start.

``apply(rows, state, touched) -> (output, late)`` adds records: a record joins
every window whose end is past its bound (sessions: a record not behind its
bound); the others are late, returned as ``(key, value)``. A window that has
already fired (allowed lateness) re-emits its updated value at once.
``advance(watermark, state, touched) -> output`` fires the windows that end at
or before the watermark (tumbling, sliding) and drops them once the watermark
passes end + allowed lateness; a session fires and is dropped once the
watermark reaches its end + allowed lateness.

Accumulators: count and sum keep a number, reduce the reduction (``fn`` must
be associative and commutative: records of different splits may come in any
order); fold and collect keep ``(ts, value)`` pairs and fold them in event-time
order (ties in arrival order) when the window is emitted.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

from nodes.errors import StepRef, callback_error, describe_fn, typed
from nodes.eventtime import MAX_TIME, MIN_TIME, to_datetime
from nodes.stateful import NUMBERS, Head
from nodes.windows import Session, Tumbling, Windowed, Windower

CLOCK = None
"""The state key of a timed head's own ``[watermark, due]`` (user keys are str/bytes)."""
COMBINED = MIN_TIME - 2
"""The bound of a row ``(key, window start, COMBINED, partial)``: what the sending side
combined for one window of count, sum or reduce (see :class:`WindowPartials`)."""
_first = itemgetter(0)
Records = list


def clock(state: dict) -> tuple[int, int]:
    """(watermark, due) of a timed head's partition state."""
    value = state.get(CLOCK)
    return (MIN_TIME, MAX_TIME) if value is None else (value[0], value[1])


def set_clock(state: dict, touched: set, watermark: int, due: int) -> None:
    state[CLOCK] = [watermark, due]
    touched.add(CLOCK)


class TimedHead(Head):
    """Base of window and join heads: rows in, watermark-driven output."""

    partials = False
    timed = True

    def apply(self, batch: Records, state: dict, touched: set) -> tuple[Records, Records]:
        raise NotImplementedError

    def advance(self, watermark: int, state: dict, touched: set) -> Records:
        """Fire what ``watermark`` closes, key by key (:meth:`fire`), once it reaches the
        earliest time a key has work; a watermark not above the last does nothing."""
        before, due = clock(state)
        if watermark <= before:
            return []
        out: Records = []
        if watermark >= due:
            due = MAX_TIME
            for key in [k for k in state if k is not CLOCK]:
                held = state[key]
                kept, key_due = self.fire(key, held, before, watermark, out)
                due = min(due, key_due)
                if kept is not held:
                    touched.add(key)
                    if kept:
                        state[key] = kept
                    else:
                        del state[key]
        set_clock(state, touched, watermark, due)
        return out

    def fire(self, key: Any, held: Any, before: int, watermark: int,
             out: Records) -> tuple[Any, int]:
        """One key's state as the watermark moves from ``before`` to ``watermark``: add what
        fires to ``out``; return what stays (``held`` itself if nothing changed, empty to
        drop the key) and the next time it has work (MAX_TIME: none)."""
        raise NotImplementedError


# -- accumulators ----------------------------------------------------------------------------

class Agg:
    """How a window accumulates its records and what it emits."""

    def __init__(self, ref: StepRef, fn: Callable | None = None, init: Any = None):
        self.ref, self.fn, self.init = ref, fn, init

    def first(self, ts: int, value: Any) -> Any:
        return [(ts, value)]

    def add(self, acc: Any, ts: int, value: Any) -> Any:
        acc = acc if type(acc) is list else list(acc)
        acc.append((ts, value))
        return acc

    def merge(self, earlier: Any, later: Any) -> Any:
        return list(earlier) + list(later)

    def value(self, acc: Any) -> Any:
        return acc

    def outputs(self, key: Any, start: int, end: int, acc: Any) -> Records:
        """The records a window emits when it fires."""
        return [(key, Windowed(to_datetime(start), to_datetime(end), self.value(acc)))]

    def update(self, key: Any, start: int, end: int, acc: Any, ts: int, value: Any) -> Records:
        """The records a fired window emits when it accepts a late record."""
        return self.outputs(key, start, end, acc)


class CountAgg(Agg):
    def first(self, ts: int, value: Any) -> Any:
        return 1

    def add(self, acc: Any, ts: int, value: Any) -> Any:
        return acc + 1

    def merge(self, earlier: Any, later: Any) -> Any:
        return earlier + later


class SumAgg(CountAgg):
    def first(self, ts: int, value: Any) -> Any:
        if type(value) not in NUMBERS:
            raise self.ref.error(
                f"sum() needs int or float values; got {typed(value)}. Turn the values into"
                " numbers first, e.g. .map_values(lambda r: r['amount'])")
        return value

    def add(self, acc: Any, ts: int, value: Any) -> Any:
        return acc + self.first(ts, value)


class ReduceAgg(Agg):
    def first(self, ts: int, value: Any) -> Any:
        return value

    def add(self, acc: Any, ts: int, value: Any) -> Any:
        try:
            return self.fn(acc, value)
        except Exception as err:
            raise callback_error(self.ref, self.fn, (acc, value), err,
                                 what="accumulator and value") from err

    def merge(self, earlier: Any, later: Any) -> Any:
        return self.add(earlier, 0, later)


class CollectAgg(Agg):
    def value(self, acc: Any) -> Any:
        return [v for _, v in sorted(acc, key=_first)]


class FoldAgg(Agg):
    def value(self, acc: Any) -> Any:
        fn, init = self.fn, self.init
        if callable(init):
            try:
                total = init()
            except Exception as err:
                raise self.ref.error(
                    f"its init {describe_fn(init)} raised {type(err).__name__}: {err}; init"
                    " must be a zero-argument callable making a fresh accumulator (e.g."
                    " list) or an immutable value (e.g. 0)") from err
        else:
            total = init
        value = None
        try:
            for _, value in sorted(acc, key=_first):
                total = fn(total, value)
        except Exception as err:
            raise callback_error(self.ref, fn, value, err, what="value") from err
        return total


AGGS = {"count": CountAgg, "sum": SumAgg, "reduce": ReduceAgg, "fold": FoldAgg,
        "collect": CollectAgg}
COMBINABLE = (CountAgg, SumAgg, ReduceAgg)
"""Accumulators whose partials merge: a window of them may be combined before a shuffle."""


# -- tumbling and sliding --------------------------------------------------------------------

class WindowPartials(dict):
    """A sender's rows for a window stage since its last drain: ``(key, start) ->
    partial`` for the windows records joined, and the rows of late records as they came
    (they keep their values: ``.late`` gets them). ``items()`` gives the rows to send."""

    def __init__(self) -> None:
        super().__init__()
        self.late: Records = []

    def __len__(self) -> int:
        return dict.__len__(self) + len(self.late)

    def items(self) -> Records:  # type: ignore[override]
        return [(key, start, COMBINED, acc) for (key, start), acc in dict.items(self)] \
            + self.late


class WindowHead(TimedHead):
    """Tumbling or sliding windows per key: ``state[key] = {start: accumulator}``.

    With ``combine`` (count, sum or reduce without allowed lateness, in a flow whose
    inputs never idle) the sending side combines each window's records before the
    shuffle (:meth:`combine_rows`): which windows a record joins is decided by its bound
    alone, and nothing reaches a window after it fired, so the rows are the same."""

    def __init__(self, ref: StepRef, windower: Windower, agg: Agg, allowed_lateness: int,
                 combine: bool = False):
        super().__init__(ref)
        self.windower, self.agg, self.lateness = windower, agg, allowed_lateness
        self.size = windower.size
        self.partials = combine and allowed_lateness == 0 and type(agg) in COMBINABLE

    def new_partials(self) -> WindowPartials:
        return WindowPartials()

    def combine_rows(self, acc: WindowPartials, rows: Records) -> None:
        """Fold rows ``(key, ts, bound, value)`` into ``acc`` (sending side)."""
        size, starts, first, add = self.size, self.windower.starts, self.agg.first, self.agg.add
        get = acc.get
        for row in rows:
            key, ts, bound, value = row
            joined = False
            for start in starts(ts):
                if start + size > bound:
                    window = (key, start)
                    partial = get(window)
                    acc[window] = first(ts, value) if partial is None \
                        else add(partial, ts, value)
                    joined = True
            if not joined:
                acc.late.append(row)

    def _merge(self, state: dict, key: Any, start: int, partial: Any) -> Any:
        """A combined row into its window; returns the window's accumulator."""
        windows = state.get(key)
        if windows is None:
            windows = state[key] = {}
        acc = windows.get(start)
        windows[start] = acc = partial if acc is None else self.agg.merge(acc, partial)
        return acc

    def apply(self, batch: Records, state: dict, touched: set) -> tuple[Records, Records]:
        if isinstance(self.windower, Tumbling):
            return self._apply_tumbling(batch, state, touched)
        watermark, due = clock(state)
        was = due
        size, lateness, agg, starts = self.size, self.lateness, self.agg, self.windower.starts
        out: Records = []
        late: Records = []
        for key, ts, bound, value in batch:
            if bound == COMBINED:
                self._merge(state, key, ts, value)
                touched.add(key)
                due = min(due, ts + size)
                continue
            windows = None
            for start in starts(ts):
                end = start + size
                if end <= bound:
                    continue
                if windows is None:
                    windows = state.get(key)
                    if windows is None:
                        windows = state[key] = {}
                acc = windows.get(start)
                windows[start] = acc = (agg.first(ts, value) if acc is None
                                        else agg.add(acc, ts, value))
                if end <= watermark:  # fired already, kept for allowed lateness
                    out += agg.update(key, start, end, acc, ts, value)
                    due = min(due, end + lateness)
                elif end < due:
                    due = end
            if windows is None:
                late.append((key, value))
            else:
                touched.add(key)
        if due != was:
            set_clock(state, touched, watermark, due)
        return out, late

    def _apply_tumbling(self, batch: Records, state: dict,
                        touched: set) -> tuple[Records, Records]:
        """``apply`` for one window per record (the hot path of windowed counts)."""
        watermark, due = clock(state)
        was = due
        size, offset, lateness, agg = self.size, self.windower.offset, self.lateness, self.agg
        counting = type(agg) is CountAgg
        first, add = agg.first, agg.add
        get, touch = state.get, touched.add
        out: Records = []
        late: Records = []
        for key, ts, bound, value in batch:
            if bound == COMBINED:
                self._merge(state, key, ts, value)
                touch(key)
                if ts + size < due:
                    due = ts + size
                continue
            start = ts - (ts - offset) % size
            end = start + size
            if end <= bound:
                late.append((key, value))
                continue
            windows = get(key)
            if windows is None:
                windows = state[key] = {}
            if counting:
                windows[start] = acc = windows.get(start, 0) + 1
            else:
                acc = windows.get(start)
                windows[start] = acc = first(ts, value) if acc is None else add(acc, ts, value)
            touch(key)
            if end <= watermark:  # fired already, kept for allowed lateness
                out += agg.update(key, start, end, acc, ts, value)
                due = min(due, end + lateness)
            elif end < due:
                due = end
        if due != was:
            set_clock(state, touched, watermark, due)
        return out, late

    def fire(self, key: Any, held: Any, before: int, watermark: int,
             out: Records) -> tuple[Any, int]:
        size, lateness, due = self.size, self.lateness, MAX_TIME
        kept = {}
        for start in sorted(held):
            end = start + size
            if before < end <= watermark:
                out += self.agg.outputs(key, start, end, held[start])
            if end + lateness > watermark:
                kept[start] = held[start]
                due = min(due, end if end > watermark else end + lateness)
        return (held if len(kept) == len(held) else kept), due


# -- sessions --------------------------------------------------------------------------------

class SessionHead(TimedHead):
    """Sessions per key: ``state[key] = [[start, last ts, accumulator], ...]`` by start.

    A session fires, and is dropped, once the watermark reaches its end (last ts +
    gap) plus the allowed lateness; a record that is not late can never touch a
    fired session, so a fired session is never reopened.
    """

    def __init__(self, ref: StepRef, windower: Session, agg: Agg, allowed_lateness: int):
        super().__init__(ref)
        self.gap, self.agg, self.lateness = windower.gap, agg, allowed_lateness

    def apply(self, batch: Records, state: dict, touched: set) -> tuple[Records, Records]:
        watermark, due = clock(state)
        was = due
        gap, agg, lateness = self.gap, self.agg, self.lateness
        late: Records = []
        for key, ts, bound, value in batch:
            if ts < bound:
                late.append((key, value))
                continue
            sessions = state.get(key)
            if sessions is None:
                sessions = state[key] = []
            elif type(sessions) is not list:
                sessions = state[key] = list(sessions)
            near = [i for i, s in enumerate(sessions) if s[0] - gap < ts < s[1] + gap]
            if not near:
                at = sum(1 for s in sessions if s[0] < ts)
                sessions.insert(at, [ts, ts, agg.first(ts, value)])
                end = ts + gap
            else:
                first = sessions[near[0]]
                start, last, acc = first[0], first[1], first[2]
                for i in near[1:]:
                    other = sessions[i]
                    acc = agg.merge(acc, other[2])
                    last = max(last, other[1])
                acc = agg.add(acc, ts, value)
                del sessions[near[0]: near[-1] + 1]
                sessions.insert(near[0], [min(start, ts), max(last, ts), acc])
                end = max(last, ts) + gap
            due = min(due, end + lateness)
            touched.add(key)
        if due != was:
            set_clock(state, touched, watermark, due)
        return [], late

    def fire(self, key: Any, held: Any, before: int, watermark: int,
             out: Records) -> tuple[Any, int]:
        gap, lateness, due = self.gap, self.lateness, MAX_TIME
        keep = []
        for session in held:
            start, last, acc = session[0], session[1], session[2]
            if last + gap + lateness <= watermark:
                out += self.agg.outputs(key, start, last + gap, acc)
            else:
                keep.append(session)
                due = min(due, last + gap + lateness)
        return (held if len(keep) == len(held) else keep), due


def make_window_head(step: Any, combine: bool = False) -> TimedHead:
    """The head of a ``window`` step (its arg: WindowSpec); ``combine``: its inputs never
    idle, so tumbling and sliding count, sum and reduce may combine before the shuffle."""
    spec = step.arg
    agg = AGGS[spec.agg](step.ref, step.fn, spec.init)
    if isinstance(spec.windower, Session):
        return SessionHead(step.ref, spec.windower, agg, spec.allowed_lateness)
    return WindowHead(step.ref, spec.windower, agg, spec.allowed_lateness, combine)
