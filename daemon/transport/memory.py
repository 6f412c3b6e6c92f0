"""An in-memory network for simulation: many members in one process.

Every packet and request passes through :meth:`MemoryNetwork.route`, driven
by one seeded ``random.Random``: drop, duplicate, delay and partition. The
same seed replays the same run exactly. Time is a :class:`FakeClock`.

Example:
    >>> from daemon.clock import FakeClock
    >>> net = MemoryNetwork(FakeClock(), seed=1)
    >>> a, b = net.transport("a:1"), net.transport("b:1")
    >>> got = []
    >>> b.start(lambda src, data: got.append((src, data)), lambda data, reply: reply(data))
    >>> a.send_packet("b:1", b"hi"); net.clock.advance(1); got
    [('a:1', b'hi')]
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Iterable

from ..clock import FakeClock
from .base import PacketHandler, ReplyHandler, RequestHandler


class MemoryNetwork:
    """Routes packets between :class:`MemoryTransport` endpoints.

    Attributes:
        drop_rate: chance a datagram is lost (requests ride a reliable stream,
            like TCP, and are only stopped by partitions and closed endpoints).
        duplicate_rate: chance a datagram arrives twice.
        latency: (low, high) seconds, uniform, per delivery.
        stats: counts of sent, delivered, dropped packets and requests.
    """

    def __init__(self, clock: FakeClock, seed: int = 0, drop_rate: float = 0.0,
                 duplicate_rate: float = 0.0, latency: tuple[float, float] = (0.0005, 0.002)):
        self.clock = clock
        self.rng = random.Random(seed)
        self.drop_rate = drop_rate
        self.duplicate_rate = duplicate_rate
        self.latency = latency
        self.stats: Counter[str] = Counter()
        self._endpoints: dict[str, MemoryTransport] = {}
        self._group: dict[str, int] = {}

    def transport(self, address: str) -> "MemoryTransport":
        """A new endpoint at ``address`` (replacing a closed one, as a restart does)."""
        endpoint = MemoryTransport(self, address)
        self._endpoints[address] = endpoint
        return endpoint

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut the network: only members of the same group reach each other.
        Addresses in no group form one more group together."""
        self._group = {addr: i for i, group in enumerate(groups, start=1) for addr in group}

    def heal(self) -> None:
        self._group = {}

    def reachable(self, src: str, dst: str) -> bool:
        endpoint = self._endpoints.get(dst)
        return (endpoint is not None and not endpoint.closed
                and self._group.get(src, 0) == self._group.get(dst, 0))

    def route(self, src: str, dst: str, reliable: bool) -> list[float]:
        """Delays of the copies of one message from src to dst; [] = lost."""
        if not self.reachable(src, dst):
            return []
        if not reliable and self.rng.random() < self.drop_rate:
            return []
        copies = 2 if not reliable and self.rng.random() < self.duplicate_rate else 1
        return [self.rng.uniform(*self.latency) for _ in range(copies)]

    def _send(self, src: str, dst: str, data: bytes) -> None:
        self.stats["packets_sent"] += 1
        delays = self.route(src, dst, reliable=False)
        if not delays:
            self.stats["packets_dropped"] += 1
        for delay in delays:
            self.clock.call_later(delay, self._deliver, src, dst, data)

    def _deliver(self, src: str, dst: str, data: bytes) -> None:
        endpoint = self._endpoints.get(dst)
        if endpoint is None or endpoint.closed or endpoint.on_packet is None:
            self.stats["packets_dropped"] += 1
            return
        self.stats["packets_delivered"] += 1
        endpoint.on_packet(src, data)

    def _request(self, src: str, dst: str, data: bytes, timeout: float,
                 on_reply: ReplyHandler) -> None:
        self.stats["requests_sent"] += 1
        state = {"done": False}

        def finish(reply: bytes | None) -> None:
            if not state["done"]:
                state["done"] = True
                on_reply(reply)

        timer = self.clock.call_later(timeout, finish, None)

        def reply(answer: bytes) -> None:
            for delay in self.route(dst, src, reliable=True):
                self.clock.call_later(delay, lambda: (timer.cancel(), finish(answer)))

        def arrive() -> None:
            endpoint = self._endpoints.get(dst)
            if endpoint is not None and not endpoint.closed and endpoint.on_request is not None:
                endpoint.on_request(data, reply)

        for delay in self.route(src, dst, reliable=True):
            self.clock.call_later(delay, arrive)


class MemoryTransport:
    """One member's endpoint on a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self.network = network
        self.address = address
        self.closed = False
        self.on_packet: PacketHandler | None = None
        self.on_request: RequestHandler | None = None

    def start(self, on_packet: PacketHandler, on_request: RequestHandler) -> None:
        self.on_packet, self.on_request = on_packet, on_request

    def send_packet(self, to: str, data: bytes) -> None:
        if not self.closed:
            self.network._send(self.address, to, data)

    def request(self, to: str, data: bytes, timeout: float, on_reply: ReplyHandler) -> None:
        if self.closed:
            self.network.clock.call_later(0, on_reply, None)
        else:
            self.network._request(self.address, to, data, timeout, on_reply)

    def cancel(self, to: str) -> None:
        """Requests here are answered or time out on their own; nothing to cut short."""

    def close(self) -> None:
        self.closed = True
