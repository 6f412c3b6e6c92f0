"""Suspicion timers (Lifeguard): a suspect is declared dead when its timer runs out.

The timer starts at ``max_timeout`` and shrinks towards ``min_timeout`` as
independent members confirm the suspicion, on a log scale: with ``k``
expected confirmations, after ``n`` of them the timeout is
``max - (max - min) * log(n + 1) / log(k + 1)``, never below ``min``.
"""

from __future__ import annotations

import math
from typing import Callable

from .clock import Clock, Timer


def suspicion_timeout(confirmations: int, expected: int, min_timeout: float,
                      max_timeout: float) -> float:
    """Total suspicion timeout after ``confirmations`` of ``expected``.

    >>> suspicion_timeout(0, 2, 1.0, 6.0)
    6.0
    >>> suspicion_timeout(2, 2, 1.0, 6.0)
    1.0
    """
    if expected < 1:
        return min_timeout
    fraction = math.log(confirmations + 1) / math.log(expected + 1)
    return max(min_timeout, max_timeout - fraction * (max_timeout - min_timeout))


class Suspicion:
    """One member's suspicion: counts distinct confirmers, fires ``on_timeout`` once."""

    def __init__(self, clock: Clock, first_from: str, expected: int, min_timeout: float,
                 max_timeout: float, on_timeout: Callable[[], None]) -> None:
        self._clock = clock
        self._start = clock.now()
        self._expected = expected
        self._min, self._max = min_timeout, max_timeout
        self._confirmers = {first_from}
        self._on_timeout = on_timeout
        self._timer: Timer = clock.call_later(self._remaining(), on_timeout)

    @property
    def confirmations(self) -> int:
        return len(self._confirmers) - 1

    def confirm(self, by: str) -> bool:
        """Record an independent confirmation; True if it was new (and so shortened the timer)."""
        if by in self._confirmers or self.confirmations >= self._expected:
            return False
        self._confirmers.add(by)
        self._timer.cancel()
        self._timer = self._clock.call_later(self._remaining(), self._on_timeout)
        return True

    def cancel(self) -> None:
        self._timer.cancel()

    def _remaining(self) -> float:
        total = suspicion_timeout(self.confirmations, self._expected, self._min, self._max)
        return max(0.0, total - (self._clock.now() - self._start))
