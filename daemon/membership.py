"""SWIM membership with suspicion, incarnations and Lifeguard's local health.

One :class:`Membership` per daemon keeps the member table and runs the
protocol on its clock and transport:

- **probe** one member per interval (round-robin over a shuffled list): PING,
  no ACK within the probe timeout -> PING_REQ through ``indirect_checks``
  others (who answer NACK when they cannot reach it either), still nothing
  by the end of the interval -> suspect it;
- **suspect -> dead** when its :class:`~daemon.suspicion.Suspicion` timer
  runs out; a member refutes suspicion about itself by raising its
  incarnation;
- **disseminate** updates piggybacked on pings and acks and in gossip rounds,
  each a limited number of times (:mod:`daemon.broadcast`), and repair what
  gossip missed with periodic full-state **push-pull** over request/response
  (also how a joiner learns the cluster from one seed);
- **Lifeguard**: a member that misses acks and nacks scores its own health
  worse and stretches its own timers, instead of accusing others.

Precedence of updates: for the same member, a higher incarnation wins;
at equal incarnation dead/left > suspect > alive. A member leaves by
declaring itself ``left`` (a dead update from itself).

The class does no I/O beyond its transport and never reads the wall clock,
so simulation tests run hundreds of members on a MemoryNetwork + FakeClock.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from .broadcast import BroadcastQueue
from .clock import Clock
from .config import PROTOCOL_VERSION, Config
from .errors import WireError
from .suspicion import Suspicion
from .transport.base import Transport
from .wire import MAX_INCARNATION, Codec, MessageType, Status

log = logging.getLogger("gossipflow.membership")

_PACKET_OVERHEAD = 160  # bytes reserved for a message's own fields and tag


@dataclass
class Member:
    """One row of the member table."""

    name: str
    address: str
    incarnation: int
    status: Status
    meta: dict[str, Any]
    since: float = 0.0
    """Clock time of the last status change."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "status": self.status.name.lower(),
                "incarnation": self.incarnation, "meta": self.meta}


@dataclass
class _Probe:
    target: str
    incarnation: int
    """The target's incarnation when probed: a failure says nothing about a later one."""
    acked: bool = False
    nacks: int = 0
    expected_nacks: int = 0
    timers: list = field(default_factory=list)


def cluster_meta(config: Config) -> dict[str, Any]:
    """The metadata a member advertises; every member of a cluster must agree on it."""
    return {"v": PROTOCOL_VERSION, "p": config.partitions, "r": config.replicas}


def meta_mismatch(ours: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    """Why a member with ``theirs`` cannot join a cluster with ``ours``, or None."""
    labels = {"v": "protocol version", "p": "partition count", "r": "replica count"}
    for key, label in labels.items():
        if theirs.get(key) != ours.get(key):
            return (f"{label} differs: this cluster uses {ours.get(key)}, "
                    f"the other member {theirs.get(key)}")
    return None


class Membership:
    """The member table and the SWIM protocol that keeps it.

    Args:
        name: this member's unique name.
        config: protocol tunables (see :mod:`daemon.config`).
        clock: time and timers.
        transport: packets and requests; ``transport.address`` is advertised.
        codec: message encoding (and auth tags when a secret is set).
        incarnation: starting incarnation (a restarted member passes its last + 1).
        rng: randomness for probe order and gossip targets (seed it in simulation).
        on_change: called with each Member whose status changed.
        on_incarnation: called with our incarnation whenever it rises (to persist it).
        on_refused: called with the reason when a seed refuses our join.
    """

    def __init__(self, name: str, config: Config, clock: Clock, transport: Transport,
                 codec: Codec, incarnation: int = 0, rng: random.Random | None = None,
                 on_change: Callable[[Member], None] | None = None,
                 on_incarnation: Callable[[int], None] | None = None,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.transport = transport
        self.codec = codec
        self.rng = rng or random.Random()
        self.meta = cluster_meta(config)
        self.me = Member(name, transport.address, incarnation, Status.ALIVE, self.meta, clock.now())
        self.members: dict[str, Member] = {name: self.me}
        self.stats: Counter[str] = Counter()
        self.awareness = 0
        self.running = False
        self.leaving = False
        self.joined = False
        self._notify = on_change or (lambda member: None)
        self._on_incarnation = on_incarnation or (lambda inc: None)
        self._on_refused = on_refused or (lambda reason: None)
        self._broadcasts = BroadcastQueue()
        self._suspicions: dict[str, Suspicion] = {}
        self._acks: dict[int, Callable[[], None]] = {}
        self._nacks: dict[int, Callable[[], None]] = {}
        self._seq = itertools.count(1)
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._seeds: list[str] = []
        self._live: list[Member] | None = None  # cache of live_members(), reset on any change
        self._exchanges: dict[str, tuple[Callable[[], list], Callable[[list], None]]] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self, seeds: list[str] | None = None) -> None:
        """Start the timers and, with ``seeds``, join through them (retrying until one answers).

        The owner routes the transport's packets to :meth:`handle_packet` and
        PUSH_PULL requests to :meth:`handle_push_pull`.
        """
        self.running = True
        self._seeds = [s for s in (seeds or []) if s != self.transport.address]
        self._queue_alive(self.me)
        self._every(self.config.probe_interval, self._probe_tick, scaled=True)
        if self.config.gossip_interval:
            self._every(self.config.gossip_interval, self._gossip_tick)
        self._every(self.config.push_pull_interval, self._push_pull_tick)
        self._every(self.config.reconnect_interval, self._reconnect_tick)
        if self._seeds:
            self._join_tick()
        else:
            self.joined = True

    def leave(self) -> None:
        """Announce that we leave (status ``left``); keep running ``leave_timeout`` to spread it."""
        if self.leaving:
            return
        self.leaving = True
        self.me.status = Status.LEFT
        self._live = None
        self._queue(self.me.name, {"k": Status.LEFT, "n": self.name, "i": self.me.incarnation,
                                   "f": self.name})
        self._gossip_tick()

    def stop(self) -> None:
        """Stop all activity at once (as a crash would)."""
        self.running = False
        for suspicion in self._suspicions.values():
            suspicion.cancel()
        self.transport.close()

    def add_state_exchange(self, field: str, get: Callable[[], list],
                           merge: Callable[[list], None]) -> None:
        """Carry more replicated state in every push-pull: ``get()`` is sent as ``field``
        (a list field the wire schema allows), ``merge(items)`` takes the peer's."""
        self._exchanges[field] = (get, merge)

    # ------------------------------------------------------------------ views

    def live_members(self) -> list[Member]:
        """Members alive or suspect (not yet declared dead), ourselves included."""
        if self._live is None:
            self._live = [m for m in self.members.values()
                          if m.status in (Status.ALIVE, Status.SUSPECT)]
        return self._live

    def status_of(self, name: str) -> Status | None:
        member = self.members.get(name)
        return member.status if member else None

    def _cluster_size(self) -> int:
        return len(self.live_members())

    # ------------------------------------------------------------------ timers

    def _every(self, interval: float, tick: Callable[[], None], scaled: bool = False) -> None:
        """Run ``tick`` every ``interval`` from a random phase (stretched by local health
        if ``scaled``)."""
        def run() -> None:
            if not self.running:
                return
            try:
                tick()
            finally:  # a failing tick is logged by the loop; the protocol must keep ticking
                delay = interval * (self.awareness + 1) if scaled else interval
                self.clock.call_later(delay, run)
        self.clock.call_later(interval * self.rng.random(), run)

    def _awareness(self, delta: int) -> None:
        self.awareness = min(max(self.awareness + delta, 0), self.config.awareness_max - 1)

    # ------------------------------------------------------------------ probing

    def _next_probe_target(self) -> Member | None:
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                member = self.members.get(self._probe_order[self._probe_index])
                self._probe_index += 1
                if member is not None and member.status in (Status.ALIVE, Status.SUSPECT):
                    return member
            self._probe_order = [m.name for m in self.live_members() if m.name != self.name]
            self.rng.shuffle(self._probe_order)
            self._probe_index = 0
        return None

    def _probe_tick(self) -> None:
        if self.leaving:
            return
        target = self._next_probe_target()
        if target is None:
            return
        self.stats["probes"] += 1
        scale = self.awareness + 1
        probe = _Probe(target.name, target.incarnation)
        seq = next(self._seq)

        def on_ack() -> None:
            probe.acked = True
            for timer in probe.timers:
                timer.cancel()
            self._awareness(-1)

        self._acks[seq] = on_ack
        self._send(target.address, MessageType.PING,
                   {"s": seq, "t": target.name, "f": self.name, "a": self.transport.address})
        probe.timers.append(self.clock.call_later(
            self.config.probe_timeout * scale, self._indirect_probe, probe, seq, target))
        probe.timers.append(self.clock.call_later(
            self.config.probe_interval * scale, self._probe_failed, probe, seq, target))

    def _indirect_probe(self, probe: _Probe, seq: int, target: Member) -> None:
        if probe.acked or not self.running:
            return
        helpers = [m for m in self.live_members()
                   if m.status == Status.ALIVE and m.name not in (self.name, target.name)]
        helpers = self.rng.sample(helpers, min(self.config.indirect_checks, len(helpers)))
        probe.expected_nacks = len(helpers)

        def on_nack() -> None:
            probe.nacks += 1

        self._nacks[seq] = on_nack
        for helper in helpers:
            self._send(helper.address, MessageType.PING_REQ,
                       {"s": seq, "t": target.name, "ta": target.address, "f": self.name,
                        "a": self.transport.address})

    def _probe_failed(self, probe: _Probe, seq: int, target: Member) -> None:
        self._acks.pop(seq, None)
        self._nacks.pop(seq, None)
        if probe.acked or not self.running:
            return
        self.stats["probes_failed"] += 1
        if probe.expected_nacks:
            self._awareness(max(probe.expected_nacks - probe.nacks, 0))
        else:
            self._awareness(1)
        log.info("event=probe_failed member=%s target=%s awareness=%d",
                 self.name, target.name, self.awareness)
        self._apply_suspect(target.name, probe.incarnation, self.name)

    # ------------------------------------------------------------------ inbound

    def handle_packet(self, src: str, data: bytes) -> None:
        """A UDP packet: decode, check, dispatch; bad input is counted and dropped."""
        if not self.running:
            return
        try:
            kind, body = self.codec.decode(data)
        except WireError as err:
            self._drop(src, err)
            return
        self.stats["packets_in"] += 1
        for update in body.get("u", ()):
            self._apply_update(update)
        handler = {MessageType.PING: self._on_ping, MessageType.PING_REQ: self._on_ping_req,
                   MessageType.ACK: self._on_ack, MessageType.NACK: self._on_nack,
                   MessageType.GOSSIP: lambda body: None}.get(kind)
        if handler is None:
            self._drop(src, WireError(f"{kind.name} is not a gossip packet"))
        else:
            handler(body)

    def _drop(self, src: str, err: Exception) -> None:
        reason = type(err).__name__
        self.stats[f"dropped_{reason}"] += 1
        self.stats["dropped"] += 1
        if self.stats["dropped"] <= 10 or self.stats["dropped"] % 1000 == 0:
            log.warning("event=packet_dropped member=%s from=%s reason=%s detail=%r count=%d",
                        self.name, src, reason, str(err), self.stats["dropped"])

    def _on_ping(self, body: dict[str, Any]) -> None:
        if body["t"] != self.name:  # meant for a former owner of our address
            self.stats["pings_misaddressed"] += 1
            return
        self._send(body["a"], MessageType.ACK, {"s": body["s"], "f": self.name})

    def _on_ping_req(self, body: dict[str, Any]) -> None:
        seq = next(self._seq)
        requester, their_seq = body["a"], body["s"]
        state = {"acked": False}

        def on_ack() -> None:
            state["acked"] = True
            self._send(requester, MessageType.ACK, {"s": their_seq, "f": self.name})

        def nack() -> None:
            if not state["acked"]:
                self._send(requester, MessageType.NACK, {"s": their_seq, "f": self.name})

        self._acks[seq] = on_ack
        self._send(body["ta"], MessageType.PING,
                   {"s": seq, "t": body["t"], "f": self.name, "a": self.transport.address})
        # The requester gives up at the end of its probe interval, about one probe
        # timeout from now: nack at half of it so the nack is there before then.
        self.clock.call_later(self.config.probe_timeout / 2, nack)
        self.clock.call_later(self.config.probe_timeout, self._acks.pop, seq, None)

    def _on_ack(self, body: dict[str, Any]) -> None:
        handler = self._acks.pop(body["s"], None)
        if handler is not None:
            handler()

    def _on_nack(self, body: dict[str, Any]) -> None:
        handler = self._nacks.get(body["s"])
        if handler is not None:
            handler()

    # ------------------------------------------------------------------ outbound

    def _send(self, address: str, kind: MessageType, body: dict[str, Any]) -> None:
        """Send a packet, filling its spare room with piggybacked updates."""
        updates = self._broadcasts.take(self.config.retransmit_limit(self._cluster_size()),
                                        self.config.max_packet_size - _PACKET_OVERHEAD)
        if updates:
            body["u"] = updates
        self.stats["packets_out"] += 1
        self.transport.send_packet(address, self.codec.encode(kind, body))

    def _gossip_tick(self) -> None:
        """Push pending updates to a few random members (the dead ones recently, too)."""
        if not len(self._broadcasts):
            return
        now = self.clock.now()
        targets = [m for m in self.live_members() if m.name != self.name] + [
            m for m in self.members.values()
            if m.status == Status.DEAD and now - m.since < self.config.gossip_to_dead]
        for member in self.rng.sample(targets, min(self.config.gossip_nodes, len(targets))):
            budget = self.config.max_packet_size - _PACKET_OVERHEAD
            updates = self._broadcasts.take(self.config.retransmit_limit(self._cluster_size()),
                                            budget)
            if not updates:
                return
            self.stats["packets_out"] += 1
            self.transport.send_packet(
                member.address, self.codec.encode(MessageType.GOSSIP,
                                                  {"f": self.name, "u": updates}))

    # ------------------------------------------------------------------ push-pull

    def _state(self) -> list[dict[str, Any]]:
        return [{"n": m.name, "a": m.address, "i": m.incarnation, "s": int(m.status),
                 "m": m.meta} for m in self.members.values()]

    def _push_pull(self, address: str, join: bool, on_done: Callable[[bool], None]) -> None:
        request = self.codec.encode(MessageType.PUSH_PULL, {
            "f": self.name, "j": join, "st": self._state(), "m": self.meta,
            **self._exchange_out()})

        def on_reply(data: bytes | None) -> None:
            if not self.running:
                return
            if data is None:
                on_done(False)
                return
            try:
                kind, body = self.codec.decode(data)
            except WireError as err:
                self._drop(address, err)
                on_done(False)
                return
            if kind == MessageType.ERROR:
                log.error("event=join_refused member=%s seed=%s reason=%r",
                          self.name, address, body["error"])
                self._on_refused(body["error"])
                on_done(False)
            elif kind == MessageType.PUSH_PULL_REPLY:
                self._merge_state(body["f"], body["st"])
                self._exchange_in(address, body)
                on_done(True)
            else:
                on_done(False)

        self.stats["push_pulls"] += 1
        self.transport.request(address, request, self.config.request_timeout, on_reply)

    def handle_push_pull(self, body: dict[str, Any]) -> tuple[MessageType, dict[str, Any]]:
        """Answer a PUSH_PULL request: check compatibility, merge theirs, return ours."""
        reason = meta_mismatch(self.meta, body["m"])
        if reason:
            log.error("event=join_refused member=%s from=%s reason=%r",
                      self.name, body["f"], reason)
            self.stats["refused_members"] += 1
            return MessageType.ERROR, {"error": f"member {self.name} refused {body['f']}: {reason}"}
        self._merge_state(body["f"], body["st"])
        self._exchange_in(body["f"], body)
        return MessageType.PUSH_PULL_REPLY, {"f": self.name, "st": self._state(),
                                             **self._exchange_out()}

    def _exchange_out(self) -> dict[str, list]:
        return {field: get() for field, (get, _) in self._exchanges.items()}

    def _exchange_in(self, peer: str, body: dict[str, Any]) -> None:
        for name, (_, merge) in self._exchanges.items():
            if name in body:
                try:
                    merge(body[name])
                except WireError as err:
                    self._drop(peer, err)

    def _merge_state(self, sender: str, states: list[dict[str, Any]]) -> None:
        for state in states:
            status = state["s"]
            if status == Status.ALIVE:
                self._apply_update({"k": Status.ALIVE, "n": state["n"], "i": state["i"],
                                    "a": state["a"], "m": state["m"]})
            elif status == Status.LEFT:
                self._apply_update({"k": Status.LEFT, "n": state["n"], "i": state["i"],
                                    "f": state["n"]})
            elif status in (Status.SUSPECT, Status.DEAD):
                # Only suspect what another member thinks dead: let it refute.
                self._apply_update({"k": Status.SUSPECT, "n": state["n"], "i": state["i"],
                                    "f": sender})

    def _join_tick(self) -> None:
        if not self.running or self.joined:
            return
        pending = {"left": len(self._seeds), "ok": False}

        def on_done(ok: bool) -> None:
            pending["left"] -= 1
            pending["ok"] |= ok
            if ok and not self.joined:
                self.joined = True
                log.info("event=joined member=%s members=%d", self.name, len(self.live_members()))
            if pending["left"] == 0 and not pending["ok"] and not self.joined:
                self.clock.call_later(self.config.join_retry_interval, self._join_tick)

        for seed in self._seeds:
            self._push_pull(seed, True, on_done)

    def _push_pull_tick(self) -> None:
        peers = [m for m in self.members.values()
                 if m.status == Status.ALIVE and m.name != self.name]
        if peers:
            self._push_pull(self.rng.choice(peers).address, False, lambda ok: None)
        self._reap_tombstones()

    def _reconnect_tick(self) -> None:
        """Try one dead member: after a network partition heals, this rejoins the halves."""
        dead = [m for m in self.members.values() if m.status == Status.DEAD]
        if dead:
            self._push_pull(self.rng.choice(dead).address, False, lambda ok: None)

    def _reap_tombstones(self) -> None:
        now = self.clock.now()
        for member in list(self.members.values()):
            if (member.status in (Status.DEAD, Status.LEFT)
                    and now - member.since > self.config.tombstone_timeout):
                del self.members[member.name]
                self._live = None

    # ------------------------------------------------------------------ state changes

    def _apply_update(self, update: dict[str, Any]) -> None:
        kind = update["k"]
        if update["i"] >= MAX_INCARNATION and update["n"] != self.name:
            # its member could never outbid it (the wire stops there), so adopting it
            # would wedge that member out for good: a forged or corrupt update
            self.stats["refused_incarnations"] += 1
            return
        if kind == Status.ALIVE:
            self._apply_alive(update)
        elif kind == Status.SUSPECT:
            self._apply_suspect(update["n"], update["i"], update.get("f", "?"))
        elif kind in (Status.DEAD, Status.LEFT):
            self._apply_dead(update["n"], update["i"], update.get("f", "?"))

    def _apply_alive(self, update: dict[str, Any]) -> None:
        name, incarnation = update["n"], update["i"]
        address, meta = update.get("a"), update.get("m")
        if address is None or meta is None:
            return
        if name == self.name:
            if incarnation > self.me.incarnation and not self.leaving:
                self._refute(incarnation)  # a stale alive from an earlier life of ours
            return
        if meta != self.meta and meta_mismatch(self.meta, meta):
            self.stats["refused_members"] += 1
            return
        member = self.members.get(name)
        if member is None:
            member = Member(name, address, incarnation, Status.ALIVE, meta, self.clock.now())
            self.members[name] = member
            self._queue_alive(member)
            log.info("event=member_joined member=%s peer=%s address=%s incarnation=%d",
                     self.name, name, address, incarnation)
            self._on_change(member)
            return
        if incarnation <= member.incarnation:
            return
        if address != member.address and member.status == Status.ALIVE:
            log.warning("event=address_conflict member=%s peer=%s known=%s claimed=%s",
                        self.name, name, member.address, address)
            return
        old = member.status
        member.address, member.incarnation, member.meta = address, incarnation, meta
        member.status = Status.ALIVE
        self._cancel_suspicion(name)
        self._queue_alive(member)
        if old != Status.ALIVE:
            member.since = self.clock.now()
            log.info("event=member_alive member=%s peer=%s incarnation=%d was=%s",
                     self.name, name, incarnation, old.name.lower())
            self._on_change(member)

    def _apply_suspect(self, name: str, incarnation: int, by: str) -> None:
        member = self.members.get(name)
        if member is None or incarnation < member.incarnation:
            return
        suspicion = self._suspicions.get(name)
        if suspicion is not None:
            if suspicion.confirm(by):
                self._queue(name, {"k": Status.SUSPECT, "n": name, "i": incarnation, "f": by})
            return
        if member.status != Status.ALIVE:
            return
        if name == self.name:
            if not self.leaving:
                self._refute(incarnation)
            return
        member.incarnation = incarnation
        member.status = Status.SUSPECT
        member.since = self.clock.now()
        self.stats["suspicions"] += 1
        self._queue(name, {"k": Status.SUSPECT, "n": name, "i": incarnation, "f": by})
        n = self._cluster_size()
        minimum = self.config.suspicion_timeout(n)
        self._suspicions[name] = Suspicion(
            self.clock, by, self.config.suspicion_confirmations(n), minimum,
            minimum * self.config.suspicion_max_mult,
            lambda: self._suspicion_expired(name, incarnation))
        log.info("event=member_suspect member=%s peer=%s incarnation=%d by=%s",
                 self.name, name, incarnation, by)
        self._on_change(member)

    def _suspicion_expired(self, name: str, incarnation: int) -> None:
        self._suspicions.pop(name, None)
        member = self.members.get(name)
        if self.running and member is not None and member.status == Status.SUSPECT \
                and member.incarnation == incarnation:
            self._apply_dead(name, incarnation, self.name)

    def _apply_dead(self, name: str, incarnation: int, by: str) -> None:
        member = self.members.get(name)
        if member is None or incarnation < member.incarnation:
            return
        if member.status in (Status.DEAD, Status.LEFT):
            return
        if name == self.name:
            if not self.leaving:
                self._refute(incarnation)
            return
        self._cancel_suspicion(name)
        old = member.status
        member.incarnation = incarnation
        member.status = Status.LEFT if by == name else Status.DEAD
        member.since = self.clock.now()
        self._queue(name, {"k": member.status, "n": name, "i": incarnation, "f": by})
        log.info("event=member_%s member=%s peer=%s incarnation=%d by=%s was=%s",
                 member.status.name.lower(), self.name, name, incarnation, by, old.name.lower())
        self._on_change(member)

    def _on_change(self, member: Member) -> None:
        self._live = None
        self._notify(member)

    def _refute(self, incarnation: int) -> None:
        """Others think we are suspect, dead or older: outbid them with a higher incarnation."""
        if incarnation >= MAX_INCARNATION:  # forged: outbidding it would overflow the wire
            self.stats["refused_incarnations"] += 1
            log.warning("event=refute_refused member=%s incarnation=%d", self.name, incarnation)
            return
        self.me.incarnation = max(self.me.incarnation, incarnation) + 1
        self.stats["refutations"] += 1
        self._awareness(1)
        self._on_incarnation(self.me.incarnation)
        self._queue_alive(self.me)
        log.info("event=refute member=%s incarnation=%d", self.name, self.me.incarnation)

    def _cancel_suspicion(self, name: str) -> None:
        suspicion = self._suspicions.pop(name, None)
        if suspicion is not None:
            suspicion.cancel()

    def _queue_alive(self, member: Member) -> None:
        self._queue(member.name, {"k": Status.ALIVE, "n": member.name, "i": member.incarnation,
                                  "a": member.address, "m": member.meta})

    def _queue(self, name: str, update: dict[str, Any]) -> None:
        update["k"] = int(update["k"])
        self._broadcasts.queue(name, update)
