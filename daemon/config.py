"""Every tunable of a daemon in one frozen Config, with named presets.

Each field says what it trades and which formula it feeds. Presets:

- ``lan``: memberlist's LAN defaults; for real networks of hosts.
- ``local``: every daemon on one machine; fast timers, so a killed member is
  known dead by every other member of a cluster of up to 5 within 1.5 s
  (see :meth:`Config.detection_bound`).
- ``test``: ``local`` with short tombstones and join retries, for tests.

Example:
    >>> round(Config.preset("local").suspicion_timeout(5), 3)
    0.36
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import ConfigError

PROTOCOL_VERSION = 4
"""Members of one cluster must run the same version: 2 spreads source splits over the
members a flow was submitted to (1 gave split i to partition i mod P); 3 brought the
takeover rules of daemon/ownership.py; 4 carries the splits, made once at submit, in the
flow record (before, every member made its own)."""


@dataclass(frozen=True)
class Config:
    # --- failure detection (SWIM) ---
    probe_interval: float = 1.0
    """Seconds between probes of one member (round-robin over a shuffled list).
    Detection time and probe traffic both scale with it."""
    probe_timeout: float = 0.5
    """Seconds to wait for a direct ack before asking others (ping-req).
    Must be below probe_interval; set above the network's p99 round trip."""
    indirect_checks: int = 3
    """k: members asked to probe a silent member for us. More k, fewer false
    suspicions under packet loss, more traffic per failed probe."""
    suspicion_mult: int = 4
    """Suspicion timeout minimum = suspicion_mult * max(1, log10 N) * probe_interval.
    Also sets the confirmations expected: k = suspicion_mult - 2."""
    suspicion_max_mult: float = 6.0
    """Suspicion timeout starts at suspicion_max_mult * minimum and shrinks
    towards the minimum with independent confirmations (Lifeguard)."""
    awareness_max: int = 8
    """Lifeguard local health: a struggling member stretches its own probe
    interval and timeout up to this multiple instead of accusing others."""

    # --- dissemination ---
    retransmit_mult: int = 4
    """Each update is piggybacked retransmit_mult * ceil(log10(N + 1)) times."""
    gossip_interval: float = 0.2
    """Seconds between gossip rounds that push pending updates to gossip_nodes
    random members (besides riding on pings and acks). 0 disables."""
    gossip_nodes: int = 3
    """Fan-out of each gossip round."""
    gossip_to_dead: float = 30.0
    """Seconds a dead member still receives gossip, so one that was only cut
    off learns it was declared dead and refutes."""
    push_pull_interval: float = 30.0
    """Seconds between full-state exchanges with one random member; repairs
    whatever gossip missed. Traffic per exchange grows with N."""
    reconnect_interval: float = 30.0
    """Seconds between attempts to reach one random dead member by push-pull,
    so two halves of a healed network partition find each other again."""
    max_packet_size: int = 1400
    """Bytes per UDP gossip packet (piggybacked updates are cut to fit)."""

    # --- membership lifetime ---
    tombstone_timeout: float = 3600.0
    """Seconds a dead or left member is kept (and shown) before it is forgotten."""
    join_retry_interval: float = 1.0
    """Seconds between attempts to reach the --join seeds until one answers."""
    request_timeout: float = 5.0
    """Seconds to wait for a request/response exchange (push-pull, API)."""
    leave_timeout: float = 1.0
    """Seconds a leaving member spends spreading its `left` state before it exits."""

    # --- cluster shape (must match on every member) ---
    partitions: int = 256
    """P, fixed for the cluster's life; a power of two."""
    replicas: int = 2
    """R, members per partition's replica set."""

    def __post_init__(self) -> None:
        positive = ["probe_interval", "probe_timeout", "suspicion_max_mult", "push_pull_interval",
                    "reconnect_interval", "tombstone_timeout", "join_retry_interval",
                    "request_timeout", "leave_timeout"]
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError(f"probe_timeout ({self.probe_timeout}) must be below "
                              f"probe_interval ({self.probe_interval})")
        if self.gossip_interval < 0 or self.gossip_to_dead < 0:
            raise ConfigError("gossip_interval and gossip_to_dead must be >= 0")
        if not 1 <= self.suspicion_max_mult <= 100:
            raise ConfigError(
                f"suspicion_max_mult must be in 1..100, got {self.suspicion_max_mult}")
        for name, low, high in [("indirect_checks", 0, 16), ("suspicion_mult", 1, 20),
                                ("awareness_max", 1, 64), ("retransmit_mult", 1, 20),
                                ("gossip_nodes", 1, 64), ("max_packet_size", 512, 65000),
                                ("replicas", 1, 16)]:
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"{name} must be in {low}..{high}, got {value!r}")
        p = self.partitions
        if not (1 <= p <= 65536 and p & (p - 1) == 0):
            raise ConfigError(f"partitions must be a power of two in 1..65536, got {p!r}")

    @classmethod
    def preset(cls, name: str, **overrides: object) -> "Config":
        """The named preset (lan, local, test) with ``overrides`` applied."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes: object) -> "Config":
        return dataclasses.replace(self, **changes)

    # --- the formulas the tunables feed (pure, table-tested) ---

    def suspicion_timeout(self, members: int) -> float:
        """Minimum suspicion timeout for a cluster of ``members``."""
        return self.suspicion_mult * max(1.0, math.log10(max(members, 1))) * self.probe_interval

    def suspicion_confirmations(self, members: int) -> int:
        """Independent confirmations that bring the timeout down to its minimum."""
        k = self.suspicion_mult - 2
        return k if members - 2 >= k else 0

    def retransmit_limit(self, members: int) -> int:
        """How many times one update is piggybacked."""
        return self.retransmit_mult * math.ceil(math.log10(members + 1))

    def detection_bound(self, members: int) -> float:
        """Seconds within which every member knows a killed member is dead.

        First failed probe: every member probes each other once per round, so
        for small clusters some member probes the dead one within
        ``members - 1`` intervals, plus the interval that probe takes; for large
        ones some member does within a few intervals with overwhelming
        probability (we allow 8). Then the suspicion timeout at its maximum
        (no confirmations) and a few gossip rounds to spread the death.
        """
        rounds = min(members - 1, 8) + 1
        spread = 3 * max(self.gossip_interval or self.probe_interval, 0.01) * math.ceil(
            math.log10(members + 1))
        return (rounds * self.probe_interval
                + self.suspicion_max_mult * self.suspicion_timeout(members) + spread)


PRESETS: dict[str, Config] = {
    "lan": Config(),
    "local": Config(
        probe_interval=0.12, probe_timeout=0.08, suspicion_mult=3, suspicion_max_mult=2.0,
        awareness_max=4, gossip_interval=0.05, gossip_to_dead=10.0, push_pull_interval=5.0,
        reconnect_interval=3.0, tombstone_timeout=600.0, join_retry_interval=0.2,
        request_timeout=2.0, leave_timeout=0.3,
    ),
    "test": Config(
        probe_interval=0.1, probe_timeout=0.05, suspicion_mult=3, suspicion_max_mult=2.0,
        awareness_max=4, gossip_interval=0.05, gossip_to_dead=5.0, push_pull_interval=2.0,
        reconnect_interval=1.0, tombstone_timeout=60.0, join_retry_interval=0.1,
        request_timeout=2.0, leave_timeout=0.3,
    ),
}
