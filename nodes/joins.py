"""Keyed joins of two streams with event time: interval, window and as-of joins.

Both sides arrive at one stage as rows ``(key, ts, bound, (side, value))``,
side "left" or "right" (see ``nodes.timed``); late records of either side
come out of ``.late`` as ``(key, (side, value))``. A record is late when its
ts is behind its bound. Per key, the state holds msgpack-able lists
(``[lefts, rights]``) and ``state[None]`` the head's ``[watermark, due]``
(see ``nodes.windowops``).

- interval join: x (left) and y (right) pair when x.ts + lower <= y.ts <= x.ts +
  upper, emitted as ``(key, (x, y))`` as soon as both are there; a left record
  is kept until the watermark passes x.ts + upper + allowed lateness (then, for
  how="left", ``(key, (x, None))`` if it never matched), a right one until it
  passes y.ts - lower + allowed lateness.
- window join: a windowed aggregation (``nodes.windowops``) whose windows emit
  every pair of the window, ``(key, Windowed(start, end, (x, y)))``.
- as-of join: each left record with the right value of greatest ts <= its ts,
  emitted once the watermark passes the left record's ts + allowed lateness, so
  no right record that could still come is missed.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort_right
from operator import itemgetter
from typing import Any

from nodes.errors import StepRef
from nodes.eventtime import MAX_TIME, to_datetime
from nodes.windowops import Agg, Records, TimedHead, WindowHead, clock, set_clock
from nodes.windows import Windowed

LEFT, RIGHT = "left", "right"
_first = itemgetter(0)


def _buffers(state: dict, key: Any) -> list:
    """The key's ``[lefts, rights]``, as lists that may be changed in place."""
    pair = state.get(key)
    if pair is None:
        pair = state[key] = [[], []]
    elif type(pair) is not list or type(pair[0]) is not list or type(pair[1]) is not list:
        pair = state[key] = [list(pair[0]), list(pair[1])]
    return pair


class IntervalJoinHead(TimedHead):
    """``state[key] = [[(ts, x, matched), ...], [(ts, y), ...]]``."""

    def __init__(self, ref: StepRef, lower: int, upper: int, how: str,
                 allowed_lateness: int):
        super().__init__(ref)
        self.lower, self.upper, self.how, self.lateness = lower, upper, how, allowed_lateness

    def apply(self, batch: Records, state: dict, touched: set) -> tuple[Records, Records]:
        watermark, due = clock(state)
        was = due
        lower, upper, lateness = self.lower, self.upper, self.lateness
        out: Records = []
        late: Records = []
        for key, ts, bound, tagged in batch:
            if ts < bound:
                late.append((key, tagged))
                continue
            side, value = tagged
            lefts, rights = _buffers(state, key)
            if side == LEFT:
                matched = False
                for yts, y in rights:
                    if ts + lower <= yts <= ts + upper:
                        out.append((key, (value, y)))
                        matched = True
                lefts.append((ts, value, matched))
                due = min(due, ts + upper + lateness + 1)
            else:
                for i, (xts, x, seen) in enumerate(lefts):
                    if xts + lower <= ts <= xts + upper:
                        out.append((key, (x, value)))
                        if not seen:
                            lefts[i] = (xts, x, True)
                rights.append((ts, value))
                due = min(due, ts - lower + lateness + 1)
            touched.add(key)
        if due != was:
            set_clock(state, touched, watermark, due)
        return out, late

    def fire(self, key: Any, held: Any, before: int, watermark: int,
             out: Records) -> tuple[Any, int]:
        lower, upper, lateness, due = self.lower, self.upper, self.lateness, MAX_TIME
        lefts, rights = held
        keep_l = []
        for entry in lefts:
            if entry[0] + upper + lateness < watermark:
                if self.how == LEFT and not entry[2]:
                    out.append((key, (entry[1], None)))
            else:
                keep_l.append(entry)
                due = min(due, entry[0] + upper + lateness + 1)
        keep_r = []
        for entry in rights:
            if entry[0] - lower + lateness >= watermark:
                keep_r.append(entry)
                due = min(due, entry[0] - lower + lateness + 1)
        if len(keep_l) == len(lefts) and len(keep_r) == len(rights):
            return held, due
        return ([keep_l, keep_r] if keep_l or keep_r else None), due


class JoinAgg(Agg):
    """A window join's windows: every (left, right) pair, in event-time order."""

    def _sides(self, acc: Any) -> tuple[list, list]:
        lefts, rights = [], []
        for _, (side, value) in sorted(acc, key=_first):
            (lefts if side == LEFT else rights).append(value)
        return lefts, rights

    def outputs(self, key: Any, start: int, end: int, acc: Any) -> Records:
        lefts, rights = self._sides(acc)
        s, e = to_datetime(start), to_datetime(end)
        return [(key, Windowed(s, e, (x, y))) for x in lefts for y in rights]

    def update(self, key: Any, start: int, end: int, acc: Any, ts: int, value: Any) -> Records:
        side, new = value
        lefts, rights = self._sides(acc[:-1])  # acc ends with the new record
        s, e = to_datetime(start), to_datetime(end)
        if side == LEFT:
            return [(key, Windowed(s, e, (new, y))) for y in rights]
        return [(key, Windowed(s, e, (x, new))) for x in lefts]


class AsofJoinHead(TimedHead):
    """``state[key] = [[(ts, x), ...] waiting, [(ts, y), ...] by ts]``."""

    def __init__(self, ref: StepRef, how: str, allowed_lateness: int):
        super().__init__(ref)
        self.how, self.lateness = how, allowed_lateness

    def apply(self, batch: Records, state: dict, touched: set) -> tuple[Records, Records]:
        watermark, due = clock(state)
        was = due
        lateness = self.lateness
        late: Records = []
        for key, ts, bound, tagged in batch:
            if ts < bound:
                late.append((key, tagged))
                continue
            side, value = tagged
            lefts, rights = _buffers(state, key)
            if side == LEFT:
                lefts.append((ts, value))
                due = min(due, ts + lateness + 1)
            else:
                insort_right(rights, (ts, value), key=_first)
                if len(rights) > 1:
                    due = min(due, rights[1][0] + lateness + 1)
            touched.add(key)
        if due != was:
            set_clock(state, touched, watermark, due)
        return [], late

    def fire(self, key: Any, held: Any, before: int, watermark: int,
             out: Records) -> tuple[Any, int]:
        lateness, inner, due = self.lateness, self.how != LEFT, MAX_TIME
        lefts, rights = held
        waiting = []
        for entry in sorted(lefts, key=_first):
            ts = entry[0]
            if ts + lateness < watermark:
                at = bisect_right(rights, ts, key=_first)
                if at:
                    out.append((key, (entry[1], rights[at - 1][1])))
                elif not inner:
                    out.append((key, (entry[1], None)))
            else:
                waiting.append(entry)
                due = min(due, ts + lateness + 1)
        # keep the right records a left one not yet seen may still need
        keep = rights[max(0, bisect_left(rights, watermark - lateness, key=_first) - 1):]
        if len(keep) > 1:
            due = min(due, keep[1][0] + lateness + 1)
        if len(waiting) == len(lefts) and len(keep) == len(rights):
            return held, due
        return ([waiting, list(keep)] if waiting or keep else None), due


def make_join_head(step: Any) -> TimedHead:
    """The head of an interval_join, window_join or join_asof step (arg: JoinSpec)."""
    spec = step.arg
    if step.kind == "interval_join":
        return IntervalJoinHead(step.ref, spec.lower, spec.upper, spec.how,
                                spec.allowed_lateness)
    if step.kind == "join_asof":
        return AsofJoinHead(step.ref, spec.how, spec.allowed_lateness)
    return WindowHead(step.ref, spec.windower, JoinAgg(step.ref), spec.allowed_lateness)
