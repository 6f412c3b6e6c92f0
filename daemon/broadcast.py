"""The piggyback queue: each membership update is sent a limited number of times.

An update about a member replaces any older update about the same member
still queued (only the newest state matters). Updates sent fewest times go
first, newest first among equals, and an update is dropped once it has been
sent ``limit`` times (``Config.retransmit_limit``), as in memberlist's
TransmitLimitedQueue.

Example:
    >>> q = BroadcastQueue()
    >>> q.queue("n1", {"k": 0, "n": "n1", "i": 1})
    >>> q.take(limit=1, budget=1000)
    [{'k': 0, 'n': 'n1', 'i': 1}]
    >>> q.take(limit=1, budget=1000)
    []
"""

from __future__ import annotations

import itertools
from typing import Any

import msgpack


class _Entry:
    __slots__ = ("update", "size", "transmits", "order")

    def __init__(self, update: dict[str, Any], order: int) -> None:
        self.update = update
        self.size = len(msgpack.packb(update, use_bin_type=True))
        self.transmits = 0
        self.order = order


class BroadcastQueue:
    """Updates waiting to ride on outgoing packets, keyed by the member they describe."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def queue(self, member: str, update: dict[str, Any]) -> None:
        """Queue ``update`` about ``member``, replacing an older one about it."""
        self._entries[member] = _Entry(update, next(self._order))

    def take(self, limit: int, budget: int) -> list[dict[str, Any]]:
        """Updates to send now whose encoded sizes fit ``budget`` bytes.

        Args:
            limit: transmissions after which an update is dropped.
            budget: bytes available in the packet for updates.
        """
        chosen: list[dict[str, Any]] = []
        ranked = sorted(self._entries.items(), key=lambda kv: (kv[1].transmits, -kv[1].order))
        for member, entry in ranked:
            if entry.size + 1 > budget:
                continue
            budget -= entry.size + 1
            chosen.append(entry.update)
            entry.transmits += 1
            if entry.transmits >= limit:
                del self._entries[member]
        return chosen
