"""SWIM membership in simulation: many members on a MemoryNetwork and a FakeClock.

Every run is seeded: a failing seed replays exactly.
"""

from __future__ import annotations

import pytest

from daemon.config import Config
from daemon.wire import Codec, Status
from simcluster import SimCluster, address

LAN = Config.preset("lan")
LOCAL = Config.preset("local")


def started(n: int, config: Config, seed: int = 1, **kwargs) -> SimCluster:
    cluster = SimCluster(n, config, seed=seed, **kwargs)
    cluster.start_all()
    assert cluster.run_until(cluster.converged, timeout=120, step=0.5) is not None, \
        "cluster did not converge"
    return cluster


@pytest.mark.slow
def test_200_members_converge_from_one_seed():
    cluster = started(200, LAN)
    names = {f"m{i}" for i in range(200)}
    for member in cluster.members.values():
        assert {n for n, m in member.members.items() if m.status == Status.ALIVE} == names
    assert not [e for e in cluster.events if e[3] in (Status.DEAD, Status.SUSPECT)]


@pytest.mark.parametrize("n, config", [pytest.param(200, LAN, marks=pytest.mark.slow),
                                       (5, LOCAL), (50, LOCAL)],
                         ids=["lan-200", "local-5", "local-50"])
def test_killed_member_known_dead_by_all_within_the_preset_bound(n, config):
    cluster = started(n, config)
    victim = "m3"
    cluster.kill(victim)
    expected = {name: Status.ALIVE for name in cluster.members} | {victim: Status.DEAD}
    took = cluster.run_until(lambda: cluster.converged(expected), timeout=300, step=0.01)
    assert took is not None
    bound = config.detection_bound(n)
    print(f"n={n} detection={took:.2f}s bound={bound:.2f}s")
    assert took <= bound
    # Nobody else was ever suspected on the way.
    assert {e[2] for e in cluster.events if e[3] != Status.ALIVE} == {victim}


def test_suspected_but_alive_member_refutes():
    cluster = started(20, LAN)
    target = "m5"
    cluster.net.partition([address(5)])
    took = cluster.run_until(lambda: Status.SUSPECT in cluster.views_of(target).values(),
                             timeout=60, step=0.1)
    assert took is not None, "nobody suspected the cut-off member"
    cluster.net.heal()
    cluster.run(LAN.suspicion_timeout(20) * LAN.suspicion_max_mult + 10)
    assert cluster.converged()
    assert cluster.members[target].me.incarnation >= 1
    assert cluster.members[target].stats["refutations"] >= 1
    assert not [e for e in cluster.events if e[3] == Status.DEAD]
    assert {obs: st for obs, st in cluster.views_of(target).items()} == {
        f"m{i}": Status.ALIVE for i in range(20) if i != 5}


@pytest.mark.slow
def test_five_percent_loss_gives_no_false_death_in_ten_minutes():
    cluster = started(50, LAN, seed=7, drop_rate=0.05)
    cluster.events.clear()
    cluster.run(600)
    assert cluster.net.stats["packets_dropped"] > 1000  # the loss really happened
    assert not [e for e in cluster.events if e[3] == Status.DEAD]
    assert cluster.converged()


def test_network_partition_heals():
    cluster = started(20, LAN, seed=3)
    left = [address(i) for i in range(10)]
    right = [address(i) for i in range(10, 20)]
    cluster.net.partition(left, right)
    cluster.run(120)
    # Each side has declared the other dead.
    for i in range(20):
        view = cluster.members[f"m{i}"].members
        same_side = range(0, 10) if i < 10 else range(10, 20)
        assert {n for n, m in view.items() if m.status == Status.ALIVE} == {
            f"m{j}" for j in same_side}
    cluster.net.heal()
    took = cluster.run_until(cluster.converged, timeout=180, step=0.5)
    assert took is not None, "the halves did not find each other again"
    print(f"partition healed in {took:.1f}s of simulated time")


def test_restarted_member_rejoins_with_higher_incarnation():
    cluster = started(10, LOCAL)
    old = cluster.members["m4"].me.incarnation
    cluster.kill("m4")
    expected = {name: Status.ALIVE for name in cluster.members} | {"m4": Status.DEAD}
    assert cluster.run_until(lambda: cluster.converged(expected), timeout=30) is not None
    cluster.restart("m4")
    assert cluster.run_until(cluster.converged, timeout=30) is not None
    assert {m.members["m4"].incarnation for m in cluster.running()} == {old + 1}


def test_restarted_member_without_saved_incarnation_refutes_its_tombstone():
    cluster = started(10, LOCAL)
    cluster.kill("m4")
    expected = {name: Status.ALIVE for name in cluster.members} | {"m4": Status.DEAD}
    assert cluster.run_until(lambda: cluster.converged(expected), timeout=30) is not None
    cluster.incarnations["m4"] = -1  # data dir wiped: it starts again at incarnation 0
    cluster.restart("m4")
    assert cluster.run_until(cluster.converged, timeout=30) is not None
    assert cluster.members["m4"].stats["refutations"] >= 1


def test_graceful_leave_is_left_not_dead():
    cluster = started(10, LOCAL)
    leaver = cluster.members["m6"]
    cluster.events.clear()
    leaver.leave()
    cluster.run(LOCAL.leave_timeout)
    leaver.stop()
    expected = {name: Status.ALIVE for name in cluster.members} | {"m6": Status.LEFT}
    assert cluster.run_until(lambda: cluster.converged(expected), timeout=30) is not None
    assert not [e for e in cluster.events if e[2] == "m6" and e[3] != Status.LEFT]


def test_member_with_other_partition_count_is_refused_on_both_sides():
    cluster = started(5, LOCAL)
    stranger = cluster.add("m9", config=LOCAL.replace(partitions=64))
    cluster.run(5)
    assert cluster.refusals and "partition count differs" in cluster.refusals[0]
    assert "256" in cluster.refusals[0] and "64" in cluster.refusals[0]
    assert not stranger.joined
    for name in ["m0", "m1", "m2", "m3", "m4"]:
        assert set(cluster.members[name].members) == {"m0", "m1", "m2", "m3", "m4"}
    assert cluster.members["m0"].stats["refused_members"] >= 1


def test_member_with_wrong_secret_never_joins_and_is_counted():
    cluster = started(5, LOCAL, secret=b"right")
    intruder = cluster.add("m9", codec=Codec(b"wrong"))
    cluster.run(5)
    assert not intruder.joined
    for name in ["m0", "m1", "m2", "m3", "m4"]:
        assert set(cluster.members[name].members) == {"m0", "m1", "m2", "m3", "m4"}
    assert cluster.members["m0"].stats["dropped_AuthError"] >= 1


def test_lifeguard_isolated_member_doubts_itself_then_recovers():
    cluster = started(10, LOCAL)
    lonely = cluster.members["m2"]
    cluster.net.partition([address(2)])
    cluster.run(1.0)
    assert lonely.awareness == LOCAL.awareness_max - 1
    cluster.net.heal()
    assert cluster.run_until(lambda: lonely.awareness == 0, timeout=30) is not None


def test_same_seed_replays_exactly():
    def trace(seed: int):
        cluster = started(30, LOCAL, seed=seed, drop_rate=0.05)
        cluster.kill("m1")
        cluster.run(5)
        return cluster.events, dict(cluster.net.stats)

    assert trace(11) == trace(11)
    assert trace(11) != trace(12)
