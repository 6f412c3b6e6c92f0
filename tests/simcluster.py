"""A simulated cluster: many Membership instances on one MemoryNetwork and FakeClock."""

from __future__ import annotations

import random

from daemon.clock import FakeClock
from daemon.config import Config
from daemon.membership import Member, Membership
from daemon.transport.memory import MemoryNetwork
from daemon.errors import WireError
from daemon.wire import Codec, MessageType, Status


def address(i: int) -> str:
    return f"10.0.{i // 250}.{i % 250 + 1}:7400"


class SimCluster:
    """``n`` members named m0..m{n-1}; every one joins through m0."""

    def __init__(self, n: int, config: Config, seed: int = 0, drop_rate: float = 0.0,
                 secret: bytes | None = None) -> None:
        self.config = config
        self.clock = FakeClock()
        self.net = MemoryNetwork(self.clock, seed=seed, drop_rate=drop_rate)
        self.rng = random.Random(seed)
        self.codec = Codec(secret)
        self.members: dict[str, Membership] = {}
        self.incarnations: dict[str, int] = {}
        self.refusals: list[str] = []
        self.events: list[tuple[float, str, str, Status]] = []
        """(time, observer, member, new status) for every status change anyone saw."""
        for i in range(n):
            self.add(f"m{i}", start=False)

    def add(self, name: str, start: bool = True, config: Config | None = None,
            codec: Codec | None = None) -> Membership:
        i = int(name[1:])
        member = Membership(
            name, config or self.config, self.clock, self.net.transport(address(i)),
            codec or self.codec,
            incarnation=self.incarnations.get(name, -1) + 1,
            rng=random.Random(self.rng.random()),
            on_incarnation=lambda inc, name=name: self.incarnations.__setitem__(name, inc),
            on_refused=self.refusals.append,
            on_change=lambda m, name=name: self.events.append(
                (self.clock.now(), name, m.name, m.status)))
        self.incarnations[name] = member.me.incarnation
        self.members[name] = member
        member.transport.start(member.handle_packet, self._request_handler(member))
        if start:
            member.start([address(0)] if name != "m0" else [])
        return member

    def _request_handler(self, member: Membership):
        def on_request(data: bytes, reply) -> None:
            try:
                kind, body = member.codec.decode(data)
            except WireError as err:
                member._drop("request", err)
                return
            if kind == MessageType.PUSH_PULL and member.running:
                reply(member.codec.encode(*member.handle_push_pull(body)))
        return on_request

    def start_all(self, spread: float = 1.0) -> None:
        """Start every member, at random moments within ``spread`` seconds."""
        for name, member in self.members.items():
            seeds = [] if name == "m0" else [address(0)]
            self.clock.call_later(self.rng.random() * spread, member.start, seeds)

    def prefill(self) -> None:
        """Start every member already knowing all others alive (skips the join phase)."""
        for member in self.members.values():
            for other in self.members.values():
                if other is not member:
                    member.members[other.name] = Member(
                        other.name, other.transport.address, other.me.incarnation, Status.ALIVE,
                        other.meta, self.clock.now())
            member._live = None
            member.start([])

    def run(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def running(self) -> list[Membership]:
        return [m for m in self.members.values() if m.running]

    def kill(self, name: str) -> None:
        self.members[name].stop()

    def restart(self, name: str) -> Membership:
        return self.add(name)

    def views_of(self, name: str) -> dict[str, Status]:
        """What every running member thinks of ``name`` (observer -> status)."""
        return {m.name: m.members[name].status for m in self.running()
                if m.name != name and name in m.members}

    def converged(self, expected: dict[str, Status] | None = None) -> bool:
        """Every running member sees exactly ``expected`` (default: all running members alive)."""
        if expected is None:
            expected = {name: Status.ALIVE for name in self.members}
        watchers = self.running()
        if not watchers:
            return False
        for member in watchers:
            view = {name: m.status for name, m in member.members.items()}
            if view != expected:
                return False
        return True

    def run_until(self, predicate, timeout: float, step: float = 0.05) -> float | None:
        """Advance in ``step``s until ``predicate()``; the simulated time taken, or None."""
        start = self.clock.now()
        while self.clock.now() - start <= timeout:
            if predicate():
                return self.clock.now() - start
            self.clock.advance(step)
        return None
