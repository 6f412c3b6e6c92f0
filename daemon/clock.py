"""Time for protocol code: a Clock protocol, a real SystemClock and a FakeClock.

Protocol code never calls ``time.time()`` or ``sleep``; it asks its clock
for ``now()`` and schedules work with ``call_later``. The real daemon runs
timers on a :class:`SystemClock` inside its event loop; simulation tests use a
:class:`FakeClock` and ``advance`` it, so simulated minutes take milliseconds.

Example:
    >>> clock = FakeClock()
    >>> fired = []
    >>> _ = clock.call_later(2.0, fired.append, "x")
    >>> clock.advance(1.0); fired
    []
    >>> clock.advance(1.0); fired
    ['x']
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Any, Callable, Protocol


class Timer:
    """A scheduled call; ``cancel()`` makes it a no-op."""

    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock(Protocol):
    """What protocol code may ask of time."""

    def now(self) -> float: ...

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer: ...


class TimerQueue:
    """A heap of timers, run in order of their deadline (ties in order of scheduling)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()

    def now(self) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(self.now() + max(0.0, delay), fn, args)
        heapq.heappush(self._heap, (timer.when, next(self._order), timer))
        return timer

    def next_deadline(self) -> float | None:
        """The deadline of the earliest live timer, or None."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Timer | None:
        """Remove and return the earliest live timer due at ``now``, or None."""
        deadline = self.next_deadline()
        if deadline is None or deadline > now:
            return None
        return heapq.heappop(self._heap)[2]


class SystemClock(TimerQueue):
    """Monotonic time; its timers are run by the daemon's event loop."""

    def now(self) -> float:
        return time.monotonic()

    def run_due(self) -> None:
        """Run every timer that is due now."""
        while (timer := self.pop_due(self.now())) is not None:
            timer.fn(*timer.args)


class FakeClock(TimerQueue):
    """Time that only moves when a test advances it; timers run as it passes them."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running each timer at its own deadline."""
        self.run_until(self._now + seconds)

    def run_until(self, deadline: float) -> None:
        """Run timers in order until ``deadline``, then set the time to it."""
        while (timer := self.pop_due(deadline)) is not None:
            self._now = max(self._now, timer.when)
            timer.fn(*timer.args)
        self._now = max(self._now, deadline)
