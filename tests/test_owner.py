"""The ownership state machine (:mod:`daemon.owner`) driven directly: several members,
each an :class:`~daemon.owner.Owner` with a real store and ReplicaServer on one
MemoryNetwork and FakeClock (the ReplicaCluster of replicacluster.py), fed views and ticks.

Its host runs stand-in tasks (what a Handover reads of a PartitionTask), so the only
commits are the takeovers' seals. Checked at every tick, activation and opening (a
takeover activates its partition fenced, then opens it: lets it release):

- *one writer*: per task, at most one active owner whose whole replica set (itself
  included) would accept a commit of its epoch (no store there promised or holds a
  newer one), and the epoch of that owner never goes down;
- *one history*: no two openings of a partition at one epoch, and, ordered by epoch,
  each opening's copy holds more commits than the one before (it continued from the
  last durable copy and sealed it, never from an older copy). A fenced activation
  whose round fails released nothing: a later round may go on without its seal.

Covered: a primary leaves (5 members); a 3|2 cut and its heal (the minority steps
down, the majority runs only what the availability rule allows); random cuts, heals,
crashes, restarts and stale or wrong views: 120 events on 40 members, 200 on 12 with
R=3.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from replicacluster import ReplicaCluster

from daemon.owner import Host, Owner, View
from daemon.replication import ReplicaLog, ReplicaServer
from daemon.store import TaskId

FLOW = "wc@1"
STAGES = (0, 1)
TICK = 0.05
"""Seconds between two ticks of every owner (the runtime's REPORT_EVERY)."""
FIVE = ["a", "b", "c", "d", "e"]


def tasks_of(p: int) -> list[TaskId]:
    return [TaskId(FLOW, stage, p) for stage in STAGES]


class Task:
    """What an Owner and its Handover read of a running PartitionTask (it never commits)."""

    def __init__(self, task: TaskId, epoch: int, replicas: tuple[str, ...], last: int) -> None:
        self.id, self.epoch, self.number = task, epoch, last
        self.log = ReplicaLog(replicas, last)
        self.paused = False


class Member:
    """One incarnation of a member: an Owner whose host runs stand-in tasks. After a
    crash (``alive`` False) nothing reaches it any more: no answer, no ``soon``."""

    def __init__(self, sim: Sim, name: str) -> None:
        self.sim, self.name, self.alive = sim, name, True
        self.store = sim.cluster.stores[name]
        self.running: dict[int, list[Task]] = {}
        self.seals: dict[int, list[int | None]] = {}
        """Per partition activated: its seal's number per task, or None where a newer
        round's commit is in its store already (it activates fenced)."""
        sim.cluster.servers[name] = ReplicaServer(
            self.store, running=lambda task: task.partition in self.running)
        clock, base = sim.cluster.clock, sim.cluster.call(name)

        def call(member: str, kind: str, args: Any, on_reply: Callable[[Any], None]) -> None:
            sim.calls.append((name, member, kind))
            if self.alive:
                base(member, kind, args, lambda answer: self.alive and on_reply(answer))

        def soon(fn: Callable[[], None]) -> None:
            clock.call_later(0, lambda: self.alive and fn())

        self.owner = Owner(name, FLOW, sim.partitions, tasks_of, sim.voters, self.store,
                           Host(activate=self.activate,
                                deactivate=lambda p: self.running.pop(p, None),
                                call=call, soon=soon, shipped=lambda task: None,
                                open=self.open), clock.now)

    def activate(self, p: int, epoch: int, replicas: tuple[str, ...]) -> list[Task]:
        assert self.alive, f"{self.name} crashed but activated partition {p}"
        metas = [self.store.task_meta(t) for t in tasks_of(p)]
        tasks = [Task(t, epoch, replicas, meta.last) for t, meta in zip(tasks_of(p), metas)]
        self.sim.check(p, (self.name, epoch, replicas))
        self.running[p] = tasks
        self.seals[p] = [meta.last if meta.epoch == epoch else None for meta in metas]
        return tasks

    def open(self, p: int) -> None:
        assert self.alive and p in self.running, f"{self.name} opened partition {p} idle"
        task = self.running[p][0]
        self.sim.activated(self.name, p, task.epoch, self.seals[p])


class Sim:
    """Members on one ReplicaCluster, each with an Owner; the checks of the module docstring."""

    def __init__(self, cluster: ReplicaCluster, names: list[str], partitions: int,
                 replicas: int = 2) -> None:
        self.cluster, self.clock, self.net = cluster, cluster.clock, cluster.net
        self.names, self.partitions, self.replicas = names, partitions, replicas
        self.voters = frozenset(names)
        self.members = {name: Member(self, name) for name in names}
        self.down: set[str] = set()
        self.views: dict[str, list[str]] = {}
        self.history: dict[int, list[tuple[int, str, list[int | None]]]] = {}
        """Per partition, every opening: (epoch, member, its seal's number per task, or
        None where a newer round's commit is in its store already)."""
        self.activations: list[tuple[float, str, int]] = []
        """Every opening in order: (time, member, partition)."""
        self.writer_epoch: dict[TaskId, int] = {}
        self.checks = 0
        self.calls: list[tuple[str, str, str]] = []
        """Every request an owner made: (from, to, kind)."""

    @property
    def up(self) -> list[Member]:
        return [m for name, m in self.members.items() if name not in self.down]

    # ------------------------------------------------------------------ driving

    def view(self, name: str, alive: list[str]) -> None:
        self.views[name] = sorted(alive)
        self.members[name].owner.view(View.of(name, alive, (), self.partitions, self.replicas))

    def reachable(self, name: str) -> list[str]:
        return [m for m in self.names if m not in self.down
                and (m == name or self.net.reachable(name, m))]

    def true_views(self) -> None:
        for member in self.up:
            self.view(member.name, self.reachable(member.name))

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / TICK)):
            for member in self.up:
                member.owner.tick()
            self.clock.advance(TICK)
            self.check()

    def settle(self, limit: float = 30.0) -> float:
        """Run until every partition runs on the primary of its view alone, with the
        replicas of its view (at most ``limit`` seconds); returns the seconds it took."""
        for i in range(round(limit / TICK)):
            sets = self.placement()
            if all(self.owners(p) == [rset[0]] and self.members[rset[0]].owner.states()[str(p)]
                   == {"epoch": self.epoch(p), "replicas": rset[1:], "state": "active",
                       "unreplicated": 0} for p, rset in enumerate(sets)):
                return i * TICK
            self.run(TICK)
        return limit

    def crash(self, name: str) -> None:
        self.members[name].alive = False
        self.cluster.endpoints[name].close()
        self.down.add(name)

    def restart(self, name: str) -> None:
        """``name`` comes back with its store and a fresh owner (no view yet)."""
        self.down.discard(name)
        self.views.pop(name, None)
        self.members[name] = Member(self, name)
        self.cluster.start(name)

    # ------------------------------------------------------------------ looking

    def owners(self, p: int) -> list[str]:
        return [m.name for m in self.up if m.owner.parts[p].active is not None]

    def placement(self) -> list[list[str]]:
        """The replica sets in the view of the first member up."""
        name = self.up[0].name
        return View.of(name, self.views[name], (), self.partitions, self.replicas).sets

    def epoch(self, p: int) -> int:
        """The epoch of partition p's one owner."""
        (name,) = self.owners(p)
        active = self.members[name].owner.parts[p].active
        assert active is not None
        return active.epoch

    # ------------------------------------------------------------------ the checks

    def accepts(self, task: TaskId, epoch: int, members: tuple[str, ...]) -> bool:
        """Whether every store of ``members`` would apply a commit of ``task`` at ``epoch``."""
        return all(max(meta.epoch, meta.promised) <= epoch
                   for meta in (self.cluster.stores[m].task_meta(task) for m in members))

    def check(self, p: int | None = None, new: tuple[str, int, tuple[str, ...]] | None = None
              ) -> None:
        """One writer per task (the owners active now, and ``new`` about to be)."""
        self.checks += 1
        for q in range(self.partitions) if p is None else [p]:
            owners = [(m.name, a.epoch, a.replicas) for m in self.up
                      if (a := m.owner.parts[q].active) is not None]
            owners += [new] if new else []
            for task in tasks_of(q):
                writers = sorted((epoch, name) for name, epoch, replicas in owners
                                 if self.accepts(task, epoch, (name, *replicas)))
                assert len(writers) <= 1, f"{task}: two owners can make commits durable: " \
                                          f"{writers} (t={self.clock.now():.2f})"
                if writers:
                    epoch = writers[0][0]
                    assert epoch >= self.writer_epoch.get(task, 0), f"{task}: epoch went back"
                    self.writer_epoch[task] = epoch

    def activated(self, name: str, p: int, epoch: int, lasts: list[int | None]) -> None:
        history = self.history.setdefault(p, [])
        assert epoch not in {e for e, _, _ in history}, f"partition {p}: epoch {epoch} twice"
        history.append((epoch, name, lasts))
        self.activations.append((self.clock.now(), name, p))
        for i in range(len(STAGES)):  # seals, by epoch: each round went on from the last
            seals = [lasts[i] for _, _, lasts in sorted(history) if lasts[i] is not None]
            assert seals == sorted(set(seals)), \
                f"partition {p}: a takeover went on from an older copy: {sorted(history)}"
        self.check(p)


@pytest.fixture
def make_sim(tmp_path: Path) -> Any:
    """``make_sim(names, partitions, seed=...)``: a Sim on a ReplicaCluster in tmp_path."""
    made: list[ReplicaCluster] = []

    def make(names: list[str], partitions: int, seed: int = 0, replicas: int = 2) -> Sim:
        made.append(ReplicaCluster(tmp_path, names, seed=seed))
        return Sim(made[-1], names, partitions, replicas)

    yield make
    for cluster in made:
        cluster.close()


# ---------------------------------------------------------------- a primary leaves


def test_a_primary_leaves_and_each_partition_gets_one_owner_at_a_higher_epoch(
        make_sim: Any) -> None:
    sim = make_sim(FIVE, 16, seed=1)
    sim.true_views()
    assert sim.settle() < 2.0
    before = {p: (sim.owners(p)[0], sim.epoch(p)) for p in range(16)}
    sets = View.of("a", FIVE, (), 16, 2).sets
    gone = sets[0][0]

    sim.crash(gone)
    since, calls = len(sim.activations), len(sim.calls)
    sim.true_views()
    assert sim.settle() < 2.0
    # a dead primary runs nothing: its partitions are promised at once, never probed
    assert [c for c in sim.calls[calls:] if c[2] == "probe"] == []
    assert any(c[2] == "promise" for c in sim.calls[calls:])
    after = View.of("a", [m for m in FIVE if m != gone], (), 16, 2).sets
    moved = 0
    for p in range(16):
        assert sim.owners(p) == [after[p][0]]
        activated = [name for _, name, q in sim.activations[since:] if q == p]
        if after[p] == sets[p]:
            assert (sim.owners(p)[0], sim.epoch(p)) == before[p] and not activated
        else:
            moved += 1
            assert activated == [after[p][0]] and sim.epoch(p) > before[p][1]
        states = sim.members[after[p][0]].owner.states()
        assert states[str(p)] == {"epoch": sim.epoch(p), "replicas": after[p][1:],
                                  "state": "active", "unreplicated": 0}
    assert moved >= sum(gone in s for s in sets)


def test_a_takeover_refused_after_its_tasks_started_fenced_stops_them_and_retries(
        make_sim: Any) -> None:
    """The accept of a round meets a newer promise on a majority after the primary
    started its tasks fenced: the owner stops them (they released nothing, the sim
    records no opening) and a later round, above the epoch met, opens the partition."""
    sim = make_sim(["a", "b", "c"], 1, seed=4)
    primary = View.of("a", "abc", (), 1, 2).sets[0][0]
    member = sim.members[primary]
    call, stops = member.owner.host.call, []
    newer: list[int] = []

    def refusing(to: str, kind: str, args: Any, on_reply: Callable[[Any], None]) -> None:
        if kind == "accept" and to != primary and not newer:
            newer.append(args["epoch"] + 1)
        if kind == "accept" and newer and args["epoch"] < newer[0]:
            for t in tasks_of(0):
                sim.cluster.stores[to].set_promise(t, newer[0])
        call(to, kind, args, on_reply)

    member.owner.host.call = refusing
    deactivate = member.owner.host.deactivate
    member.owner.host.deactivate = lambda p: stops.append(p) or deactivate(p)
    sim.true_views()
    sim.run(0.2)
    assert stops == [0] and newer and sim.history.get(0, []) == []  # ran fenced, stopped
    assert sim.settle() < 2.0  # the next round goes above the promise it met
    (opened,) = sim.history[0]
    assert opened[:2] == (sim.epoch(0), primary) and sim.epoch(0) > newer[0]


# ---------------------------------------------------------------- a 3|2 cut and its heal


def test_a_cut_3_2_runs_only_what_the_majority_may_and_heals_to_one_owner_each(
        make_sim: Any) -> None:
    sim = make_sim(FIVE, 32, seed=2)
    sim.true_views()
    assert sim.settle() < 2.0
    last_sets = {p: {sim.owners(p)[0], *sim.members[sim.owners(p)[0]].owner.parts[p]
                     .active.replicas} for p in range(32)}
    major, minor = ["a", "b", "c"], ["d", "e"]
    stranded = [p for p in range(32) if not last_sets[p] & set(major)]
    assert stranded and len(stranded) < 32  # the cut strands some partitions, not all
    assert {sim.owners(p)[0] for p in range(32)} & set(minor)
    since = len(sim.activations)

    sim.net.partition(major, minor)
    sim.true_views()
    sim.run(5.0)
    sets = sim.placement()  # over a, b and c
    for p in range(32):
        if p in stranded:  # its whole last set is on the minority side: it waits
            assert sim.owners(p) == [], p
        else:
            assert sim.owners(p) == [sets[p][0]], p
    assert not any(sim.members[m].owner.parts[p].active or sim.members[m].owner.parts[p].takeover
                   for m in minor for p in range(32))  # the minority stepped down, tries nothing
    during = [name for _, name, _ in sim.activations[since:]]
    assert during and set(during) <= set(major)
    assert all(sim.members[m].owner.states() == {} for m in minor)

    sim.net.heal()
    sim.true_views()
    assert sim.settle() < 10.0
    sim.run(1.0)  # and it stays so
    assert all(len(sim.owners(p)) == 1 for p in range(32))
    assert sim.checks > 100


def test_a_cut_2_2_with_two_replicas_stops_both_halves_and_heals(make_sim: Any) -> None:
    """Four voters cut in two halves: neither sees a majority of the flow's voters, so
    neither runs anything (no partition gets two histories, none gets a new one); after
    the heal every partition has one owner again."""
    sim = make_sim(["a", "b", "c", "d"], 16, seed=3)
    sim.true_views()
    assert sim.settle() < 2.0
    before = {p: sim.epoch(p) for p in range(16)}
    since = len(sim.activations)

    sim.net.partition(["a", "b"], ["c", "d"])
    sim.true_views()
    sim.run(5.0)
    assert all(sim.owners(p) == [] for p in range(16))  # both halves stepped down
    assert sim.activations[since:] == []  # and took nothing over
    assert all(sim.members[m].owner.states() == {} for m in "abcd")

    sim.net.heal()
    sim.true_views()
    assert sim.settle() < 10.0
    assert all(len(sim.owners(p)) == 1 and sim.epoch(p) > before[p] for p in range(16))
    assert sim.checks > 50


# ---------------------------------------------------------------- random faults


@pytest.mark.slow
@pytest.mark.parametrize("seed,members,partitions,replicas,events", [
    (1, 40, 16, 2, 120), (2, 12, 16, 3, 200)])
def test_random_cuts_crashes_and_stale_views_keep_one_writer_and_one_history(
        make_sim: Any, seed: int, members: int, partitions: int, replicas: int,
        events: int) -> None:
    """``events`` drawn from ``seed``: a cut into 2 or 3 groups, a heal, a crash (at
    most a fifth of the members down), a restart. After each, every member that is up
    gets a view: usually what it reaches, sometimes with members it cannot reach (not
    yet found dead: it may believe in a majority it does not have) or without one it
    can (falsely suspected), sometimes none (its gossip lags). Then 0.05-1 s pass. The
    checks run throughout; at the end, healed and with true views, every partition has
    one owner again."""
    rng = random.Random(seed)
    names = [f"m{i:02d}" for i in range(members)]
    sim = make_sim(names, partitions, seed=seed, replicas=replicas)
    sim.true_views()
    assert sim.settle() < 3.0
    for _ in range(events):
        roll = rng.random()
        if roll < 0.3:
            shuffled = rng.sample(names, len(names))
            cuts = sorted(rng.sample(range(1, members), rng.choice([1, 2])))
            sim.net.partition(*(shuffled[i:j] for i, j in zip([0, *cuts], [*cuts, members])))
        elif roll < 0.5:
            sim.net.heal()
        elif roll < 0.75 and len(sim.down) < members // 5:
            sim.crash(rng.choice([n for n in names if n not in sim.down]))
        elif sim.down:
            sim.restart(rng.choice(sorted(sim.down)))
        for member in sim.up:
            if rng.random() < 0.2 and member.name in sim.views:
                continue  # its view lags
            alive = sim.reachable(member.name)
            gone = [m for m in names if m not in alive]
            if rng.random() < 0.2 and gone:  # some it cannot reach, still believed alive
                alive += rng.sample(gone, rng.randint(1, len(gone)))
            if rng.random() < 0.2 and len(alive) > 1:
                alive.remove(rng.choice([m for m in alive if m != member.name]))
            sim.view(member.name, alive)
        sim.run(rng.uniform(TICK, 1.0))

    sim.net.heal()
    for name in sorted(sim.down):
        sim.restart(name)
    sim.true_views()
    assert sim.settle() < 30.0
    assert all(len(sim.history.get(p, [])) > 3 for p in range(partitions))  # it was busy
