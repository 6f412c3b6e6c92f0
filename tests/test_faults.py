"""The fault-injection switch (daemon/transport/faults.py): the filter, the real transport
with it, the ``faults`` request, and partitions of real daemons that heal.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import zmq
from daemons import Cluster, free_port, wait_for

from daemon import api
from daemon.errors import ConfigError, RequestRefusedError
from daemon.loop import EventLoop
from daemon.transport import faults
from daemon.transport.faults import FaultFilter, peer_identity
from daemon.transport.udpzmq import UdpZmqTransport
from daemon.wire import MessageType

pytestmark = pytest.mark.timeout(90)

THREE = ["n0", "n1", "n2"]

# ---------------------------------------------------------------- the filter


def test_filter_blocks_nothing_until_told() -> None:
    f = FaultFilter()
    assert not f.active and not f.blocks("127.0.0.1:7401")
    assert not f.blocks_identity(peer_identity("127.0.0.1:7401"))
    assert f.describe() == {"block": []}


def test_filter_blocks_listed_peers_then_all_then_heals() -> None:
    f = FaultFilter()
    f.block(["127.0.0.1:7402", "127.0.0.1:7403"])
    assert f.active and f.describe() == {"block": ["127.0.0.1:7402", "127.0.0.1:7403"]}
    assert [f.blocks(a) for a in ("127.0.0.1:7401", "127.0.0.1:7402", "127.0.0.1:7403")] == [
        False, True, True]
    assert f.blocks_identity(peer_identity("127.0.0.1:7402"))
    assert not f.blocks_identity(peer_identity("127.0.0.1:7401"))

    f.block("all")
    assert f.active and f.describe() == {"block": "all"}
    assert f.blocks("10.0.0.9:1") and f.blocks_identity(peer_identity("10.0.0.9:1"))

    f.block([])
    assert not f.active and f.describe() == {"block": []}
    assert not f.blocks("127.0.0.1:7402")


@pytest.mark.parametrize("identity", [b"", b"\x00\x6b\x8b\x45\x67", b"\x00"])
def test_filter_never_blocks_a_client_routing_id(identity: bytes) -> None:
    """ZeroMQ makes up ids starting with a zero byte: a client's requests always pass."""
    f = FaultFilter()
    f.block("all")
    assert not f.blocks_identity(identity)


@pytest.mark.parametrize("spec", ["none", "127.0.0.1:7402", ["127.0.0.1"], [7402], None,
                                  {"127.0.0.1:7402": 1}, ["127.0.0.1:0"]])
def test_filter_refuses_a_bad_spec_and_keeps_what_it_had(spec: Any) -> None:
    f = FaultFilter()
    f.block(["127.0.0.1:7402"])
    with pytest.raises(ConfigError, match='"block" must be "all" or a list of HOST:PORT'):
        f.block(spec)
    assert f.describe() == {"block": ["127.0.0.1:7402"]}


@pytest.mark.parametrize("value, on", [("1", True), ("0", False), ("", False), ("yes", False),
                                       (None, False)])
def test_switch_is_on_only_with_the_variable_set_to_1(value: str | None, on: bool) -> None:
    environ = {} if value is None else {faults.ENV_VAR: value}
    assert faults.enabled(environ) is on
    assert (faults.from_env(environ) is not None) is on


# ---------------------------------------------------------------- the op, in process


def _ask(node: Any, args: dict[str, Any]) -> tuple[MessageType, dict[str, Any]]:
    answers: list[tuple[MessageType, dict[str, Any]]] = []
    api.handle(node, "faults", args, lambda kind, body: answers.append((kind, body)))
    assert len(answers) == 1
    return answers[0]


def _transport(monkeypatch: pytest.MonkeyPatch, value: str | None) -> UdpZmqTransport:
    if value is None:
        monkeypatch.delenv(faults.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(faults.ENV_VAR, value)
    return UdpZmqTransport(EventLoop(), f"127.0.0.1:{free_port()}")


def test_faults_request_is_refused_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = _transport(monkeypatch, None)
    try:
        assert transport.faults is None
        node = SimpleNamespace(name="n0", transport=transport)
        for args in ({"block": "all"}, {"block": []}, {}):
            kind, body = _ask(node, args)
            assert kind == MessageType.ERROR
            assert body["error"] == ("fault injection is off on n0: the faults request is for "
                                     "tests; start the daemon with "
                                     "GOSSIPFLOW_FAULT_INJECTION=1 to use it")
    finally:
        transport.close()


def test_faults_request_sets_and_reports_with_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    transport = _transport(monkeypatch, "1")
    try:
        node = SimpleNamespace(name="n0", transport=transport)
        assert _ask(node, {}) == (MessageType.API_REPLY,
                                  {"result": {"block": [], "dropped": 0}})
        assert _ask(node, {"block": ["127.0.0.1:9", "127.0.0.1:8"]}) == (
            MessageType.API_REPLY, {"result": {"block": ["127.0.0.1:8", "127.0.0.1:9"],
                                               "dropped": 0}})
        kind, body = _ask(node, {"block": 7})
        assert kind == MessageType.ERROR and "list of HOST:PORT" in body["error"]
        assert _ask(node, {"block": "all"})[1]["result"]["block"] == "all"
        assert _ask(node, {"block": []})[1]["result"]["block"] == []
    finally:
        transport.close()


# ---------------------------------------------------------------- the real transport


class _Running:
    """Two fault-injecting transports on one event loop thread, recording what arrives."""

    def __init__(self) -> None:
        self.loop = EventLoop()
        self.a = UdpZmqTransport(self.loop, f"127.0.0.1:{free_port()}", faults=FaultFilter())
        self.b = UdpZmqTransport(self.loop, f"127.0.0.1:{free_port()}", faults=FaultFilter())
        self.packets: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
        self.held: list[Any] | None = None
        """Set to a list to hold requests' reply functions there instead of answering."""
        for t in (self.a, self.b):
            t.start(lambda src, data, me=t.address: self.packets.put((me, src, data)),
                    self._answer)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _answer(self, data: bytes, reply: Any) -> None:
        if self.held is not None:
            self.held.append(reply)
        else:
            reply(b"re:" + data)

    def call(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def packet(self, src: Any, dst: Any, data: bytes) -> tuple[str, str, bytes] | None:
        """Send a datagram src -> dst; what arrived within 0.3 s, or None."""
        self.call(src.send_packet, dst.address, data)
        try:
            return self.packets.get(timeout=0.3)
        except queue.Empty:
            return None

    def ask(self, src: Any, dst: Any, data: bytes, timeout: float = 0.3) -> bytes | None:
        """A request src -> dst; its reply, or None when it timed out."""
        replies: queue.Queue[bytes | None] = queue.Queue()
        self.call(src.request, dst.address, data, timeout, replies.put)
        return replies.get(timeout=timeout + 2)

    def close(self) -> None:
        done = threading.Event()
        self.call(lambda: (self.a.close(), self.b.close(), done.set()))
        done.wait(2)
        self.loop.stop()
        self.thread.join(2)
        self.loop.close()


@pytest.fixture
def pair() -> Iterator[_Running]:
    running = _Running()
    try:
        yield running
    finally:
        running.close()


def _client(address: str, data: bytes, timeout: float = 1.0) -> bytes | None:
    """A request from a plain DEALER, as daemon/client.py makes it."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://{address}")
        sock.send_multipart([os.urandom(8), data])
        return sock.recv_multipart()[1] if sock.poll(int(timeout * 1000)) else None
    finally:
        sock.close()


def test_blocked_peer_is_cut_off_both_ways_while_clients_get_through(pair: _Running) -> None:
    a, b = pair.a, pair.b
    assert pair.packet(a, b, b"p1") == (b.address, a.address, b"p1")
    assert pair.ask(a, b, b"q1") == b"re:q1"
    assert pair.ask(b, a, b"q2") == b"re:q2"

    a.faults.block([b.address])  # only a blocks: b's traffic must die at a's end too
    assert pair.packet(a, b, b"p2") is None       # udp_out at a
    assert pair.packet(b, a, b"p3") is None       # udp_in at a
    assert pair.ask(a, b, b"q3") is None          # request_out at a: times out
    assert pair.ask(b, a, b"q4") is None          # request_in at a (b's routing id)
    assert _client(a.address, b"c1") == b"re:c1"  # a client still gets its answer
    assert {k: v for k, v in a.stats.items() if k.startswith("dropped_FaultInjected")} == {
        "dropped_FaultInjected": 4, "dropped_FaultInjected_udp_out": 1,
        "dropped_FaultInjected_udp_in": 1, "dropped_FaultInjected_request_out": 1,
        "dropped_FaultInjected_request_in": 1}
    assert not any(k.startswith("dropped_FaultInjected") for k in b.stats)

    a.faults.block([])
    assert pair.packet(a, b, b"p5") == (b.address, a.address, b"p5")
    assert pair.packet(b, a, b"p6") == (a.address, b.address, b"p6")
    assert pair.ask(a, b, b"q5") == b"re:q5"
    assert pair.ask(b, a, b"q6") == b"re:q6"
    assert a.stats["dropped_FaultInjected"] == 4


def test_block_all_drops_replies_in_flight(pair: _Running) -> None:
    """A reply that comes back after the block (either way) is dropped, not delivered."""
    a, b = pair.a, pair.b
    slow: list[Any] = []
    pair.held = slow
    replies: queue.Queue[bytes | None] = queue.Queue()
    pair.call(a.request, b.address, b"q", 0.5, replies.put)
    wait_for(lambda: slow, 2.0, message="b holds a's request")
    a.faults.block("all")
    pair.call(slow[0], b"late")
    assert replies.get(timeout=3) is None
    assert a.stats["dropped_FaultInjected_reply_in"] == 1

    a.faults.block([])
    pair.call(a.request, b.address, b"q", 0.5, replies.put)
    wait_for(lambda: len(slow) == 2, 2.0, message="b holds a's second request")
    b.faults.block("all")
    pair.call(slow[1], b"late")
    assert replies.get(timeout=3) is None
    wait_for(lambda: b.stats["dropped_FaultInjected_reply_out"] == 1, 2.0,
             message="b dropped its reply")


# ---------------------------------------------------------------- real daemons


def _wait_statuses(cluster: Cluster, expected: dict[str, dict[str, str]],
                   timeout: float = 20.0) -> None:
    """Wait until each observer's {member: status} is exactly ``expected[observer]``."""
    def seen() -> bool:
        return all(cluster.statuses(o, timeout=0.5) == want for o, want in expected.items())

    wait_for(seen, timeout, interval=0.05, message=f"statuses {expected}")


@pytest.mark.parametrize("how", ["isolated_blocks_all", "others_block_it"])
def test_partitioned_daemon_is_declared_dead_then_heals(cluster: Cluster, how: str) -> None:
    cluster.start_many(THREE, fault_injection=True)
    victim, others = "n2", ["n0", "n1"]
    if how == "isolated_blocks_all":
        assert cluster.block(victim, "all") == {"block": "all", "dropped": 0}
    else:
        for name in others:
            assert cluster.block(name, [victim])["block"] == [cluster[victim].address]

    _wait_statuses(cluster, {
        "n0": {"n0": "alive", "n1": "alive", "n2": "dead"},
        "n1": {"n0": "alive", "n1": "alive", "n2": "dead"},
        "n2": {"n0": "dead", "n1": "dead", "n2": "alive"}})
    assert all(cluster[n].running() for n in THREE)  # cut off, not killed
    blockers = [victim] if how == "isolated_blocks_all" else others
    for name in blockers:
        assert cluster.request(name, "faults")["dropped"] > 0
        assert cluster.stats(name)["dropped_FaultInjected"] > 0

    for name in blockers:
        assert cluster.block(name, [])["block"] == []
    cluster.wait_converged(THREE, timeout=30.0)
    for name in THREE:
        assert {m["name"] for m in cluster.members(name)} == set(THREE)
        assert {m["status"] for m in cluster.members(name)} == {"alive"}


def test_daemon_without_the_variable_refuses_faults(cluster: Cluster) -> None:
    cluster.start("n0")
    cluster.wait_up("n0")
    with pytest.raises(RequestRefusedError, match="fault injection is off on n0.*"
                                                  "GOSSIPFLOW_FAULT_INJECTION=1"):
        cluster.block("n0", "all")
    assert cluster.stats("n0").get("dropped_FaultInjected", 0) == 0
    assert cluster.statuses("n0") == {"n0": "alive"}


def test_fault_injection_survives_a_restart(cluster: Cluster) -> None:
    """The harness keeps a daemon's environment for restart(): the switch is still there."""
    cluster.start("n0", fault_injection=True)
    cluster.wait_up("n0")
    cluster.stop("n0")
    cluster.restart("n0")
    cluster.wait_up("n0")
    assert cluster.block("n0", "all")["block"] == "all"
    assert cluster.statuses("n0") == {"n0": "alive"}
