"""Pure maths and small pieces: config formulas, suspicion timeouts, the clock, the queue."""

from __future__ import annotations

import math

import msgpack
import pytest

from daemon.broadcast import BroadcastQueue
from daemon.clock import FakeClock
from daemon.config import Config
from daemon.errors import ConfigError
from daemon.suspicion import Suspicion, suspicion_timeout
from daemon.transport.memory import MemoryNetwork

LAN = Config.preset("lan")


@pytest.mark.parametrize("n, expected", [(1, 4.0), (5, 4.0), (10, 4.0), (100, 8.0),
                                         (1000, 12.0)])
def test_lan_suspicion_timeout_follows_memberlist(n, expected):
    assert LAN.suspicion_timeout(n) == pytest.approx(expected)


@pytest.mark.parametrize("n, expected", [(1, 4), (9, 4), (10, 8), (99, 8), (100, 12), (1000, 16)])
def test_retransmit_limit(n, expected):
    assert LAN.retransmit_limit(n) == expected


@pytest.mark.parametrize("n, expected", [(2, 0), (3, 0), (4, 2), (200, 2)])
def test_expected_confirmations_need_enough_members(n, expected):
    assert LAN.suspicion_confirmations(n) == expected


@pytest.mark.parametrize("confirmations, expected", [
    (0, 6.0), (1, 6.0 - 5.0 * math.log(2) / math.log(3)), (2, 1.0), (5, 1.0)])
def test_suspicion_timeout_shrinks_on_a_log_scale(confirmations, expected):
    assert suspicion_timeout(confirmations, 2, 1.0, 6.0) == pytest.approx(expected)


def test_no_expected_confirmations_means_minimum():
    assert suspicion_timeout(0, 0, 1.0, 6.0) == 1.0


def test_local_preset_promises_detection_within_1_5_s_for_up_to_five_daemons():
    local = Config.preset("local")
    assert all(local.detection_bound(n) <= 1.5 for n in range(2, 6))


@pytest.mark.parametrize("change, message", [
    ({"partitions": 100}, "power of two"),
    ({"partitions": 0}, "power of two"),
    ({"probe_timeout": 2.0}, "must be below probe_interval"),
    ({"replicas": 0}, r"replicas must be in 1\.\.16"),
    ({"probe_interval": 0}, "probe_interval must be > 0"),
])
def test_config_is_validated_with_the_allowed_range(change, message):
    with pytest.raises(ConfigError, match=message):
        LAN.replace(**change)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="lan, local, test"):
        Config.preset("wan")


def test_suspicion_fires_once_at_max_then_earlier_with_confirmations():
    clock = FakeClock()
    fired = []
    Suspicion(clock, "a", 2, 1.0, 6.0, lambda: fired.append(clock.now()))
    clock.advance(10)
    assert fired == [6.0]

    fired.clear()
    start = clock.now()
    s = Suspicion(clock, "a", 2, 1.0, 6.0, lambda: fired.append(clock.now() - start))
    clock.advance(0.5)
    assert s.confirm("b") and not s.confirm("b") and not s.confirm("a")
    assert s.confirm("c") and not s.confirm("d")  # enough confirmations: no more shortening
    clock.advance(10)
    assert fired == [pytest.approx(1.0)]


def test_fake_clock_runs_timers_in_order_at_their_time():
    clock = FakeClock()
    seen = []
    clock.call_later(2, lambda: seen.append(("b", clock.now())))
    clock.call_later(1, lambda: seen.append(("a", clock.now())))
    clock.call_later(1, lambda: clock.call_later(0.5, lambda: seen.append(("c", clock.now()))))
    clock.call_later(1.2, lambda: seen.append("cancelled")).cancel()
    clock.advance(5)
    assert seen == [("a", 1), ("c", 1.5), ("b", 2)] and clock.now() == 5


def test_broadcast_queue_replaces_older_updates_and_limits_retransmits():
    q = BroadcastQueue()
    q.queue("n1", {"n": "n1", "i": 1})
    q.queue("n1", {"n": "n1", "i": 2})
    q.queue("n2", {"n": "n2", "i": 1})
    assert len(q) == 2
    first = q.take(limit=2, budget=1000)
    assert first == [{"n": "n2", "i": 1}, {"n": "n1", "i": 2}]  # newest first
    assert q.take(limit=2, budget=1000) == first
    assert q.take(limit=2, budget=1000) == []


def test_broadcast_queue_respects_the_byte_budget():
    q = BroadcastQueue()
    for i in range(100):
        q.queue(f"n{i}", {"n": f"n{i}", "pad": "x" * 50})
    size = len(msgpack.packb({"n": "n10", "pad": "x" * 50}, use_bin_type=True)) + 1
    taken = q.take(limit=3, budget=600)
    assert len(taken) == 600 // size  # as many as fit, each counted packed plus one byte
    assert sum(len(msgpack.packb(t, use_bin_type=True)) + 1 for t in taken) <= 600


def test_memory_network_drops_duplicates_and_partitions_deterministically():
    def run(seed):
        clock = FakeClock()
        net = MemoryNetwork(clock, seed=seed, drop_rate=0.2, duplicate_rate=0.2)
        got = []
        a, b, c = (net.transport(x) for x in ("a", "b", "c"))
        for t in (a, b, c):
            t.start(lambda src, data, t=t: got.append((t.address, src, data)), lambda d, r: r(d))
        for i in range(200):
            a.send_packet("b", bytes([i]))
        net.partition(["a"], ["b", "c"])
        a.send_packet("b", b"cut")
        b.send_packet("c", b"same side")
        clock.advance(1)
        return got, dict(net.stats)

    got, stats = run(5)
    assert run(5) == (got, stats)
    received = [g for g in got if g[0] == "b"]
    assert 130 < len(received) < 210  # about 80% arrive, some twice
    assert stats["packets_dropped"] > 20
    assert len({g[2] for g in received}) < len(received)  # duplicates happened
    assert ("b", "a", b"cut") not in got and ("c", "b", b"same side") in got


def test_memory_requests_time_out_to_closed_endpoints():
    clock = FakeClock()
    net = MemoryNetwork(clock)
    a, b = net.transport("a"), net.transport("b")
    b.start(lambda s, d: None, lambda data, reply: reply(data + b"!"))
    replies = []
    a.request("b", b"hi", 1.0, replies.append)
    clock.advance(0.1)
    b.close()
    a.request("b", b"again", 1.0, replies.append)
    clock.advance(2)
    assert replies == [b"hi!", None]
