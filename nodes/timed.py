"""Stateless steps over timed records, in a source stage after ``event_time``.

After ``event_time`` a stage carries *rows* ``(key, ts, bound, value)``: the
key (None on a plain stream), the timestamp in ms, the record's lateness bound
(see ``nodes.eventtime``) and the record. User functions see what they would
see without event time (the record, or (key, value) on a keyed stream); every
output inherits its input's ts and bound. Keyed rows are what a window or join
stage receives (``route`` reads the key from ``row[0]``). Where a timed stream
meets a step without event time (a sink, a count, a shuffle) ``strip`` turns
rows back into records.

Example:
    >>> from nodes import Flow, sources, sinks
    >>> from datetime import timedelta
    >>> flow = Flow("t")
    >>> s = flow.source(sources.generate(3, float)).event_time(lambda r: r,
    ...                                                        max_delay=timedelta(0))
    >>> doubled = s.map(lambda r: r * 2)
    >>> doubled.sink(sinks.publish())
    >>> stamp = compile_event_time(s.step, keyed=False)
    >>> rows, top = stamp([2.0, 1.0], None)
    >>> rows, top
    ([(None, 2000, -4611686018427387904, 2.0), (None, 1000, 2000, 1.0)], 2000)
    >>> compile_timed(doubled.step, keyed=False)(rows)
    [(None, 2000, -4611686018427387904, 4.0), (None, 1000, 2000, 2.0)]
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate, repeat
from operator import itemgetter, length_hint, mul, sub
from typing import Any

from nodes.errors import callback_error, describe_fn, safe_repr
from nodes.eventtime import MIN_TIME, to_ms
from nodes.operators import call_each, compile_stateless

Rows = list
_key, _ts, _bound, _value = itemgetter(0), itemgetter(1), itemgetter(2), itemgetter(3)
_second = itemgetter(1)  # the value of a (key, value) record
_NUMBERS = frozenset({int, float})


def strip(rows: Rows, keyed: bool) -> list:
    """Rows back to records: ``(key, value)`` tuples when keyed, else the values."""
    if keyed:
        return [(r[0], r[3]) for r in rows]
    return list(map(_value, rows))


def _views(rows: Rows, keyed: bool) -> list:
    return strip(rows, keyed)


def compile_event_time(step: Any, keyed: bool) -> Callable[[list, int | None],
                                                           tuple[Rows, int | None]]:
    """``run(records, split_time) -> (rows, split_time)`` for an event_time step.

    ``split_time`` is the split's largest timestamp so far (None: none yet); each
    record's bound is that of the records before it in the split.
    """
    ref, fn, spec = step.ref, step.fn, step.arg
    behind = spec.max_delay + spec.allowed_lateness

    def run(records: list, split_time: int | None) -> tuple[Rows, int | None]:
        it = iter(records)
        try:
            stamps = list(map(fn, it))
        except Exception as err:
            raise callback_error(ref, fn, records[len(records) - length_hint(it) - 1],
                                 err) from err
        times = _milliseconds(step, records, stamps)
        if not times:
            return [], split_time
        # the bound of record i: the largest ts before it, less max_delay and lateness
        tops = list(accumulate(times, max, initial=MIN_TIME if split_time is None
                               else split_time))
        top = tops.pop()
        bounds = list(map(sub, tops, repeat(behind)))
        if tops[0] == MIN_TIME:
            bounds[0] = MIN_TIME
        if keyed:
            rows = list(zip(map(_key, records), times, bounds, map(_second, records)))
        else:
            rows = list(zip(repeat(None), times, bounds, records))
        return rows, top
    return run


def _milliseconds(step: Any, records: list, stamps: list) -> list[int]:
    """The timestamps as ms: from C loops for plain int/float seconds."""
    if _NUMBERS.issuperset(map(type, stamps)):
        try:
            return list(map(round, map(mul, stamps, repeat(1000))))
        except (OverflowError, ValueError):
            pass  # inf or nan: named below
    try:
        return list(map(to_ms, stamps))
    except TypeError:
        _bad_stamp(step, records, stamps)
        raise


def _bad_stamp(step: Any, records: list, stamps: list) -> None:
    for record, stamp in zip(records, stamps):
        try:
            to_ms(stamp)
        except TypeError as err:
            raise step.ref.error(
                f"{describe_fn(step.fn)} returned {type(stamp).__name__} {safe_repr(stamp, 80)}"
                f" for record {safe_repr(record)}: {err}. Return an aware datetime or epoch"
                " seconds, e.g. lambda r: r['ts']") from err


def compile_timed(step: Any, keyed: bool) -> Callable[[Rows], Rows]:
    """``run(rows) -> rows`` for a map, filter, flat_map, inspect, map_values or key_by
    step on a timed stream (``keyed``: its input rows are keyed)."""
    kind, ref, fn = step.kind, step.ref, step.fn
    if kind == "key_by":
        keys_of = compile_stateless(step)

        def run(rows: Rows) -> Rows:
            values = list(map(_value, rows))
            return list(zip(keys_of(values), map(_ts, rows), map(_bound, rows), values))
    elif kind == "map_values":
        each = call_each(ref, fn)

        def run(rows: Rows) -> Rows:
            out = each(list(map(_value, rows)))
            return [(r[0], r[1], r[2], o) for r, o in zip(rows, out)]
    elif kind == "map":
        each = call_each(ref, fn)

        def run(rows: Rows) -> Rows:
            out = each(_views(rows, keyed))
            return [(None, r[1], r[2], o) for r, o in zip(rows, out)]
    elif kind == "inspect":
        look = compile_stateless(step)

        def run(rows: Rows) -> Rows:
            look(_views(rows, keyed))
            return rows
    elif kind == "filter":
        each = call_each(ref, fn)

        def run(rows: Rows) -> Rows:
            return [r for r, keep in zip(rows, each(_views(rows, keyed))) if keep]
    elif kind == "flat_map":
        each = call_each(ref, fn)

        def run(rows: Rows) -> Rows:
            views = _views(rows, keyed)
            out: Rows = []
            append = out.append
            for view, r, items in zip(views, rows, each(views)):
                try:
                    for item in items:
                        append((None, r[1], r[2], item))
                except TypeError as err:
                    raise callback_error(
                        ref, fn, view, err, "flat_map's function must return an iterable"
                        " (list, tuple, generator) of output records; return [] for none"
                    ) from err
            return out
    else:
        raise KeyError(kind)
    return run
