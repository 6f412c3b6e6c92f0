"""The real transport: UDP datagrams for gossip, ZeroMQ over TCP for requests.

Both use the same port number: UDP host:port for packets, a ROUTER socket
bound to tcp://host:port for requests. Outgoing requests go through one
DEALER per peer; frames are [request id, payload]. Everything runs on the
daemon's :class:`~daemon.loop.EventLoop` thread.

With ``GOSSIPFLOW_FAULT_INJECTION=1`` in the environment, ``faults`` (a
:class:`~.faults.FaultFilter`) drops traffic to and from blocked peers, so
tests can partition real processes; otherwise it is None and costs nothing.
"""

from __future__ import annotations

import itertools
from collections import Counter
import logging
import socket
from typing import Any

import zmq

from ..errors import ConfigError, TransportError
from ..loop import EventLoop
from . import faults as _faults
from .base import PacketHandler, ReplyHandler, RequestHandler, parse_address
from .faults import FaultFilter

log = logging.getLogger("gossipflow.transport")

MAX_DATAGRAM = 65507
_DRAIN = 256  # messages read per wake-up before giving timers a turn


class UdpZmqTransport:
    """UDP + ZeroMQ transport bound to ``address`` ("host:port").

    Args:
        faults: the fault-injection switch; by default one if the environment
            turns it on (:func:`.faults.from_env`), else None.
    """

    def __init__(self, loop: EventLoop, address: str, context: zmq.Context | None = None,
                 faults: FaultFilter | None = None):
        self.loop = loop
        self.address = address
        self.faults = faults if faults is not None else _faults.from_env()
        host, port = parse_address(address)
        self._context = context or zmq.Context.instance()
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._udp.bind((host, port))
        except OSError as err:
            self._udp.close()
            raise TransportError(f"cannot bind UDP {address}: {err.strerror}") from err
        self._udp.setblocking(False)
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if self.faults is not None:  # peers' DEALERs reconnect under the same routing id
            self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        try:
            self._router.bind(f"tcp://{host}:{port}")
        except zmq.ZMQError as err:
            self._udp.close()
            self._router.close()
            raise TransportError(f"cannot bind TCP {address}: {err}") from err
        self._dealers: dict[str, zmq.Socket] = {}
        self._pending: dict[bytes, tuple[ReplyHandler, Any, str]] = {}
        self._ids = itertools.count(1)
        self._on_packet: PacketHandler | None = None
        self._on_request: RequestHandler | None = None
        self.closed = False
        self.stats: Counter[str] = Counter()

    def start(self, on_packet: PacketHandler, on_request: RequestHandler) -> None:
        self._on_packet, self._on_request = on_packet, on_request
        self.loop.add_reader(self._udp, self._read_udp)
        self.loop.add_reader(self._router, self._read_router)

    def send_packet(self, to: str, data: bytes) -> None:
        if self.closed:
            return
        if self.faults is not None and self.faults.active and self._blocked(to, "udp_out"):
            return
        try:
            self._udp.sendto(data, parse_address(to))
        except (OSError, ConfigError) as err:  # full buffer, unreachable, bad address: lost
            log.debug("event=udp_send_failed to=%s error=%s", to, err)

    def request(self, to: str, data: bytes, timeout: float, on_reply: ReplyHandler) -> None:
        if self.closed:
            self.loop.clock.call_later(0, on_reply, None)
            return
        if self.faults is not None and self.faults.active and self._blocked(to, "request_out"):
            # As over a cut network: nothing leaves, the request times out.
            request_id = next(self._ids).to_bytes(8, "big")
            timer = self.loop.clock.call_later(timeout, self._expire, request_id)
            self._pending[request_id] = (on_reply, timer, to)
            return
        dealer = self._dealers.get(to) or self._connect(to)
        request_id = next(self._ids).to_bytes(8, "big")
        try:
            dealer.send_multipart([request_id, data], flags=zmq.NOBLOCK)
        except zmq.ZMQError:  # queue full: the peer is not taking requests
            self.loop.clock.call_later(0, on_reply, None)
            return
        timer = self.loop.clock.call_later(timeout, self._expire, request_id)
        self._pending[request_id] = (on_reply, timer, to)

    def cancel(self, to: str) -> None:
        """Answer every pending request to ``to`` with None now (its member died or
        restarted: no reply will come) and drop the connection."""
        for request_id, (on_reply, timer, dest) in list(self._pending.items()):
            if dest == to:
                del self._pending[request_id]
                timer.cancel()
                self.loop.clock.call_later(0, on_reply, None)
        dealer = self._dealers.pop(to, None)
        if dealer is not None:
            self.loop.remove_reader(dealer)
            dealer.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in [self._udp, self._router, *self._dealers.values()]:
            self.loop.remove_reader(sock)
            sock.close()
        self._dealers.clear()

    def _connect(self, to: str) -> zmq.Socket:
        host, port = parse_address(to)
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, 64)
        if self.faults is not None:  # so the peer tells our requests from a client's
            dealer.setsockopt(zmq.ROUTING_ID, _faults.peer_identity(self.address))
        dealer.connect(f"tcp://{host}:{port}")
        self._dealers[to] = dealer
        self.loop.add_reader(dealer, lambda: self._read_dealer(dealer, to))
        return dealer

    def _blocked(self, address: str, what: str) -> bool:
        """True (and counted) if fault injection drops ``what`` to/from ``address``."""
        return self.faults.blocks(address) and self._count_fault(what)

    def _blocked_identity(self, identity: bytes, what: str) -> bool:
        """Like :meth:`_blocked` for a ROUTER routing id (clients' always pass)."""
        return self.faults.blocks_identity(identity) and self._count_fault(what)

    def _count_fault(self, what: str) -> bool:
        self.stats["dropped_FaultInjected"] += 1
        self.stats[f"dropped_FaultInjected_{what}"] += 1
        return True

    def _expire(self, request_id: bytes) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return
        # The connection stays: other requests to that peer may still be answered (a slow
        # peer is not a dead one; a dead one's connection goes in cancel()).
        entry[0](None)

    def _read_udp(self) -> None:
        for _ in range(_DRAIN):
            try:
                data, (host, port) = self._udp.recvfrom(MAX_DATAGRAM)[:2]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. ICMP port unreachable from an earlier send
                log.debug("event=udp_recv_failed error=%s", err)
                continue
            src = f"{host}:{port}"
            if self.faults is not None and self.faults.active and self._blocked(src, "udp_in"):
                continue
            self._on_packet(src, data)

    def _read_router(self) -> None:
        for _ in range(_DRAIN):
            try:
                frames = self._router.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 3:
                self.stats["dropped_BadFrames"] += 1
                log.debug("event=bad_request frames=%d", len(frames))
                continue
            identity, request_id, data = frames
            if (self.faults is not None and self.faults.active
                    and self._blocked_identity(identity, "request_in")):
                continue
            self._on_request(data, self._replier(identity, request_id))

    def _replier(self, identity: bytes, request_id: bytes):
        def reply(answer: bytes) -> None:
            if not self.closed:
                if (self.faults is not None and self.faults.active
                        and self._blocked_identity(identity, "reply_out")):
                    return
                try:
                    self._router.send_multipart([identity, request_id, answer], flags=zmq.NOBLOCK)
                except zmq.ZMQError as err:
                    log.debug("event=reply_failed error=%s", err)
        return reply

    def _read_dealer(self, dealer: zmq.Socket, peer: str) -> None:
        for _ in range(_DRAIN):
            if dealer.closed:  # a reply handler cancelled this peer's requests
                return
            try:
                frames = dealer.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            if (self.faults is not None and self.faults.active
                    and self._blocked(peer, "reply_in")):
                continue  # its request stays pending and times out
            entry = self._pending.pop(frames[0], None)
            if entry is not None:
                on_reply, timer, _ = entry
                timer.cancel()
                on_reply(frames[1])
