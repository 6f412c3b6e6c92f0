"""Event time: timestamps in milliseconds, split watermarks, horizons.

Inside a flow every timestamp is an int of milliseconds since the epoch (UTC);
datetimes appear only in what a flow outputs (``Windowed``). Watermarks are
ints too: ``MIN_TIME`` stands for minus infinity (nothing known yet) and
``MAX_TIME`` for plus infinity (end of stream).

A split's time state is the largest timestamp read from it so far (an int, or
None before its first record): a msgpack-able value the runtime stores beside
the split's offset. The split's watermark is that maximum less ``max_delay``.
Every record leaves the source stage with its *bound*: the watermark of its
split just before it was read (its horizon) less ``allowed_lateness``. A record
whose timestamp (tumbling, sliding: whose window end) is not past its bound is
late; that decision never depends on batching, partitions or timing.

Example:
    >>> to_ms(1.5), to_ms(datetime(1970, 1, 1, 0, 0, 2, tzinfo=UTC))
    (1500, 2000)
    >>> spec = EventTime(max_delay=5000, allowed_lateness=0, idle_after=None)
    >>> spec.split_watermark(None, False), spec.split_watermark(12000, False)
    (-4611686018427387904, 7000)
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

MIN_TIME = -(1 << 62)
"""Minus infinity: the watermark of a split not started, of a task that knows nothing."""
MAX_TIME = 1 << 62
"""Plus infinity: the watermark of a finished split, of a stream that ended."""
IDLE = MIN_TIME - 1
"""The watermark of a source task whose input read nothing for ``idle_after``: it leaves
the minimum of the stages it feeds until it reads again (issue 11, point 8)."""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


class EventTime(NamedTuple):
    """An ``event_time`` declaration, in milliseconds (seconds for idle_after)."""

    max_delay: int
    allowed_lateness: int
    idle_after: float | None

    def split_watermark(self, split_time: int | None, done: bool) -> int:
        """The watermark of a split whose time state is ``split_time``."""
        if done:
            return MAX_TIME
        if split_time is None:
            return MIN_TIME
        return split_time - self.max_delay

    def describe(self) -> dict[str, Any]:
        return {"max_delay_ms": self.max_delay, "allowed_lateness_ms": self.allowed_lateness,
                "idle_after_s": self.idle_after}


def to_ms(value: Any) -> int:
    """Milliseconds since the epoch of an aware datetime or epoch seconds (int, float).

    Raises:
        TypeError: a naive datetime, a bool, or any other type.
    """
    kind = type(value)
    if kind is int:
        return value * 1000
    if kind is float:
        if not math.isfinite(value):
            raise TypeError(f"a timestamp must be finite; got {value!r}")
        return round(value * 1000)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise TypeError("a naive datetime has no time zone: give it one, e.g."
                            " dt.replace(tzinfo=timezone.utc)")
        return (value - EPOCH) // MS
    if isinstance(value, int) and kind is not bool:
        return int(value) * 1000
    if isinstance(value, float):
        return to_ms(float(value))
    raise TypeError("a timestamp must be an aware datetime or epoch seconds (int or float)")


@lru_cache(maxsize=1 << 14)
def to_datetime(ms: int) -> datetime:
    """The aware UTC datetime of ``ms`` milliseconds since the epoch (windows of many keys
    share their bounds: cached)."""
    return EPOCH + timedelta(milliseconds=ms)


def duration_ms(value: Any, what: str, *, positive: bool = False) -> int:
    """A timedelta as whole milliseconds (for declarations).

    Raises:
        TypeError: not a timedelta (the message starts with ``what``).
        ValueError: negative (or zero when ``positive``), or not a whole number of
            milliseconds; the message starts with ``what``.
    """
    if not isinstance(value, timedelta):
        raise TypeError(f"{what} must be a datetime.timedelta, e.g. timedelta(seconds=5);"
                         f" got {type(value).__name__} {value!r:.60}")
    if value % MS:
        raise ValueError(f"{what} must be a whole number of milliseconds; got {value}")
    ms = value // MS
    if ms < 0 or (positive and ms == 0):
        raise ValueError(f"{what} must be {'greater than' if positive else 'at least'} zero;"
                         f" got {value}")
    return ms
