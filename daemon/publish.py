"""The live stream of publish sinks: a bounded buffer per member, read with cursors.

Records reach a publish sink's buffer after the commit that produced them.
``gossipflow tail`` asks any daemon, which asks every member holding part of
the flow for what was published after that member's cursor. The buffer is a
live view, not a log: it keeps the last ``capacity`` records per member and
is empty after a restart (records committed before a crash are not published
again). For a durable stream, use a files sink.

Example:
    >>> stream = PublishBuffer(capacity=2)
    >>> stream.append("f@1", "out", ["a", "b", "c"])
    >>> stream.since("f@1", 0)
    ([['out', 'b'], ['out', 'c']], 3)
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class PublishBuffer:
    """Recent published records of this member, per flow version, numbered from 1."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._flows: dict[str, deque[tuple[int, str, Any]]] = {}
        self._last: dict[str, int] = {}

    def append(self, flow: str, sink: str, records: list) -> None:
        """Publish ``records`` of sink ``sink`` (called by the runtime after a commit)."""
        with self._lock:
            buffer = self._flows.setdefault(flow, deque(maxlen=self._capacity))
            last = self._last.get(flow, 0)
            buffer.extend((last + i, sink, record) for i, record in enumerate(records, 1))
            self._last[flow] = last + len(records)

    def since(self, flow: str, cursor: int) -> tuple[list[list], int]:
        """Records numbered after ``cursor`` as [sink, record], and the new cursor."""
        with self._lock:
            buffer = self._flows.get(flow, ())
            return ([[sink, record] for n, sink, record in buffer if n > cursor],
                    self._last.get(flow, 0))
