"""Windows over event time: tumbling, sliding, session; and their output, Windowed.

Use them on a keyed stream with event time:

    from datetime import timedelta as td
    per_min = (clicks.key_by(lambda c: c["user"])
                     .window(windows.tumbling(td(minutes=1)))
                     .count())                   # or sum(), reduce(fn), fold(init, fn), collect()

A windowed aggregation emits ``(key, Windowed(start, end, value))`` when its
window fires (the watermark reached ``end``); start and end are aware UTC
datetimes. A table sink keeps one row per (key, start).

- ``tumbling(size, offset)``: windows [epoch + offset + k size, ... + size).
- ``sliding(size, every)``: windows of ``size`` starting every ``every`` (size a
  multiple of every), so each record is in size / every windows.
- ``session(gap)``: records closer than ``gap`` to each other are one session,
  window [first ts, last ts + gap); a record closer than gap to two sessions
  merges them.

Example:
    >>> from datetime import timedelta
    >>> w = tumbling(timedelta(seconds=10))
    >>> w.size, w.starts(12_345)
    (10000, (10000,))
    >>> sliding(timedelta(seconds=10), timedelta(seconds=5)).starts(12_345)
    (10000, 5000)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from nodes.errors import FlowError, format_location, user_location
from nodes.eventtime import duration_ms


class Windowed:
    """What a windowed step emits per key: the window (aware UTC datetimes) and its value.

    Unpacks like a tuple (``start, end, value = w``); not a tuple subclass, so that the
    daemon's msgpack carries it as its own type between stages (``nodes.codec``).

    >>> from datetime import timezone
    >>> w = Windowed(datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2,
    ...              tzinfo=timezone.utc), 3)
    >>> w.value, w[2], tuple(w)[2]
    (3, 3, 3)
    """

    __slots__ = ("start", "end", "value")

    def __init__(self, start: datetime, end: datetime, value: Any) -> None:
        self.start, self.end, self.value = start, end, value

    def __iter__(self) -> Any:
        return iter((self.start, self.end, self.value))

    def __getitem__(self, i: int) -> Any:
        return (self.start, self.end, self.value)[i]

    def __len__(self) -> int:
        return 3

    def __eq__(self, other: object) -> bool:
        return type(other) is Windowed and tuple(self) == tuple(other)  # type: ignore[arg-type]

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __reduce__(self) -> tuple:
        return Windowed, tuple(self)

    def __repr__(self) -> str:
        return f"Windowed(start={self.start!r}, end={self.end!r}, value={self.value!r})"


class Windower:
    """Base of the window kinds; made by ``tumbling``, ``sliding`` and ``session``."""

    kind = "windower"

    def __init__(self) -> None:
        filename, line = user_location()
        self.where = format_location(filename, line)

    def describe(self) -> dict[str, Any]:
        """A msgpack-able description, for status output."""
        return {"kind": self.kind, **{k: v for k, v in vars(self).items() if k != "where"}}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items() if k != "where")
        return f"windows.{self.kind}({fields})"


class Tumbling(Windower):
    """Fixed, non-overlapping windows of ``size`` ms, aligned to the epoch plus ``offset``."""

    kind = "tumbling"

    def __init__(self, size: int, offset: int):
        super().__init__()
        self.size, self.offset = size, offset % size

    def starts(self, ts: int) -> tuple[int, ...]:
        """The start of the window holding ``ts``."""
        return (ts - (ts - self.offset) % self.size,)


class Sliding(Windower):
    """Windows of ``size`` ms starting every ``every`` ms (aligned to the epoch)."""

    kind = "sliding"

    def __init__(self, size: int, every: int):
        super().__init__()
        self.size, self.every = size, every

    def starts(self, ts: int) -> tuple[int, ...]:
        """The starts of the size / every windows holding ``ts``, latest first."""
        last = ts - ts % self.every
        return tuple(range(last, ts - self.size, -self.every))


class Session(Windower):
    """Per key, runs of records closer than ``gap`` ms to each other."""

    kind = "session"

    def __init__(self, gap: int):
        super().__init__()
        self.gap = gap


def tumbling(size: timedelta, offset: timedelta = timedelta(0)) -> Tumbling:
    """Fixed windows of ``size``: [epoch + offset + k size, epoch + offset + (k+1) size).

    Args:
        size: the window length (whole milliseconds, > 0).
        offset: shifts the windows' alignment, e.g. ``timedelta(hours=2)`` for days
            starting at 02:00 UTC with ``size=timedelta(days=1)``.

    Raises:
        FlowError: size or offset is not a timedelta of whole milliseconds, or size is 0.

    Example: ``keyed.window(windows.tumbling(timedelta(minutes=1))).count()``
    """
    return Tumbling(_ms(size, "size", "tumbling", positive=True),
                    _ms(offset, "offset", "tumbling", signed=True))


def sliding(size: timedelta, every: timedelta) -> Sliding:
    """Overlapping windows of ``size`` starting every ``every``.

    Args:
        size: the window length; a multiple of ``every``.
        every: the distance between window starts (> 0).

    Raises:
        FlowError: not timedeltas of whole milliseconds, or size not a multiple of every.

    Example: ``keyed.window(windows.sliding(timedelta(minutes=10), timedelta(minutes=1)))``
    """
    size_ms = _ms(size, "size", "sliding", positive=True)
    every_ms = _ms(every, "every", "sliding", positive=True)
    if size_ms % every_ms:
        where = format_location(*user_location())
        raise FlowError(f"windows.sliding() at {where}: size must be a multiple of every;"
                        f" got size={size} and every={every}", where=where)
    return Sliding(size_ms, every_ms)


def session(gap: timedelta) -> Session:
    """Sessions: a key's records closer than ``gap`` to each other, window
    [first ts, last ts + gap).

    Raises:
        FlowError: gap is not a timedelta of whole milliseconds > 0.

    Example: ``keyed.window(windows.session(timedelta(minutes=30))).collect()``
    """
    return Session(_ms(gap, "gap", "session", positive=True))


def _ms(value: Any, label: str, kind: str, *, positive: bool = False,
        signed: bool = False) -> int:
    where = format_location(*user_location())
    try:
        if signed and isinstance(value, timedelta) and value < timedelta(0):
            return -duration_ms(-value, label)
        return duration_ms(value, label, positive=positive)
    except (TypeError, ValueError) as err:
        raise FlowError(f"windows.{kind}() at {where}: {err}", where=where) from err
