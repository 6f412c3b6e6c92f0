"""Handover (copy in the background, then step down) and the takeover's probe, on a
MemoryNetwork and a FakeClock: real stores, real snapshots, lost answers.

The primary's tasks are stand-ins holding what :class:`~daemon.handover.Handover`
reads of a PartitionTask (id, number, epoch, log, paused); their commits are
applied to the primary's store and added to the log as the runtime does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from replicacluster import FLOW, TIMEOUT, History, ReplicaCluster, content, data_of, entries

from daemon import handover as handover_module
from daemon.handover import Handover
from daemon.transfer import TRIES
from daemon.replication import ReplicaLog, ReplicaServer, epoch_after
from daemon.store import TaskId
from daemon.takeover import Takeover

TASKS = [TaskId(FLOW, 0, 3), TaskId(FLOW, 1, 3)]


@pytest.fixture
def replica_cluster(tmp_path: Path) -> Iterator[ReplicaCluster]:
    """Members a (the primary), b (its replica) and c (the learner)."""
    made = ReplicaCluster(tmp_path, ["a", "b", "c"])
    yield made
    made.close()


@dataclass(eq=False)
class Task:
    """What a Handover reads and writes of a running PartitionTask."""

    id: TaskId
    epoch: int
    log: ReplicaLog
    history: History
    number: int = 0
    paused: bool = False
    shipped: list = field(default_factory=list)

    def commit(self, cluster: ReplicaCluster, count: int) -> None:
        """``count`` commits on the primary "a" (as PartitionTask._commit does)."""
        for c in self.history.commits(count, self.epoch):
            cluster.stores["a"].apply(c)
            self.log.add(c.number, c.to_bytes())
            self.number = c.number


def running_tasks(cluster: ReplicaCluster, commits: int, replicas: tuple[str, ...] = ("b",)
                  ) -> list[Task]:
    """Primary "a" runs TASKS at its epoch, ``commits`` each, all on ``replicas`` too."""
    epoch = epoch_after(0, "a")
    tasks = []
    for t in TASKS:
        task = Task(t, epoch, ReplicaLog(replicas, 0), History(t, random.Random(t.stage)))
        task.commit(cluster, commits)
        for member in replicas:
            cluster.stores[member].apply_many(  # the same seed: the same commits
                History(t, random.Random(t.stage)).commits(commits, epoch))
            task.log.on_reply(member, commits)
        tasks.append(task)
    return tasks


def ship(cluster: ReplicaCluster, task: Task, to: tuple[str, ...] | None = None) -> None:
    """Send the task's log to the members (``to``, or all) that want commits."""
    for member in to or task.log.members:
        batch = task.log.take(member)
        if batch:
            cluster.call("a")(member, "commits", entries(batch, task.id),
                              lambda answer, m=member: task.log.on_reply(m, answer[0][0]))
    cluster.clock.advance(TIMEOUT + 0.01)


def make_handover(cluster: ReplicaCluster, tasks: list[Task], learners: tuple[str, ...] = ("c",),
                  call: Any = None) -> tuple[Handover, list, list]:
    shipped: list = []
    stale: list = []
    handover = Handover(3, learners, tasks, cluster.stores["a"], call or cluster.call("a"),
                        now=0.0, on_shipped=shipped.append, on_stale=stale.append)
    return handover, shipped, stale


def test_a_handover_copies_while_commits_go_on_then_drains_and_is_done(
        replica_cluster: ReplicaCluster) -> None:
    tasks = running_tasks(replica_cluster, 20)
    handover, shipped, stale = make_handover(replica_cluster, tasks)
    handover.start()
    for task in tasks:  # the flow keeps committing while the snapshots travel
        task.commit(replica_cluster, 5)
        assert task.log.take("c") == []  # nothing follows a snapshot not yet restored
        assert task.log.durable == 20  # the learner does not hold durability back
    assert handover.check(0.1) == "copying"
    replica_cluster.clock.advance(TIMEOUT + 0.01)
    assert sorted(t.id for t in shipped) == TASKS and not stale
    for task in tasks:
        task.commit(replica_cluster, 3)
        ship(replica_cluster, task, to=("b",))
    assert handover.check(0.2) == "draining"  # c is within LAG: no more commits
    assert all(task.paused for task in tasks)
    for task in tasks:
        ship(replica_cluster, task)
    assert handover.check(0.3) == "done"
    for t in TASKS:
        expected = data_of(content(replica_cluster.stores["a"], t))
        assert expected[1] == (28, epoch_after(0, "a"))
        assert data_of(content(replica_cluster.stores["c"], t)) == expected
        assert data_of(content(replica_cluster.stores["b"], t)) == expected
    assert handover.copies == 2


def test_a_copy_whose_answer_is_lost_is_made_again_from_a_fresh_snapshot(
        replica_cluster: ReplicaCluster) -> None:
    tasks = running_tasks(replica_cluster, 10)
    calls: list[str] = []
    real = replica_cluster.call("a")

    first: list[str] = []

    def lossy(member: str, kind: str, args: Any, on_reply: Any) -> None:
        calls.append(kind)
        if kind == "restore_part" and args["xfer"] in (first or first.append(args["xfer"])
                                                      or first):
            replica_cluster.clock.call_later(TIMEOUT, on_reply, None)  # broken off: no answer, ever
            return
        real(member, kind, args, on_reply)

    handover, shipped, _ = make_handover(replica_cluster, tasks, call=lossy)
    handover.start()
    replica_cluster.clock.advance(TRIES * TIMEOUT + 0.01)  # every try of the first chunk is lost
    assert len(shipped) == 1
    for task in tasks:
        task.commit(replica_cluster, 2)
    assert handover.check(0.5) == "copying"
    assert handover.copies == 2  # not at once: COPY_AGAIN_AFTER later
    assert handover.check(0.5 + handover_module.COPY_AGAIN_AFTER) == "copying"
    assert handover.copies == 3  # the broken copy starts again, at commit 12
    replica_cluster.clock.advance(TIMEOUT + 0.01)
    assert len(shipped) == 2 and handover.copies == 3
    for _ in range(2):
        for task in tasks:
            ship(replica_cluster, task)
        handover.check(2.0)
    assert handover.check(2.0) == "done"
    for t in TASKS:
        assert data_of(content(replica_cluster.stores["c"], t)) \
            == data_of(content(replica_cluster.stores["a"], t))


def test_a_learner_that_promised_a_newer_epoch_makes_the_primary_stale(
        replica_cluster: ReplicaCluster) -> None:
    tasks = running_tasks(replica_cluster, 4)
    newer = epoch_after(epoch_after(0, "a"), "c")
    replica_cluster.stores["c"].set_promise(TASKS[0], newer)
    before = content(replica_cluster.stores["c"], TASKS[0])
    handover, shipped, stale = make_handover(replica_cluster, tasks)
    handover.start()
    replica_cluster.clock.advance(TIMEOUT + 0.01)
    assert [t.id for t in stale] == [TASKS[0]] and [t.id for t in shipped] == [TASKS[1]]
    assert content(replica_cluster.stores["c"], TASKS[0]) == before


def test_a_handover_that_cannot_finish_times_out_and_cancel_unpauses(
        replica_cluster: ReplicaCluster) -> None:
    tasks = running_tasks(replica_cluster, 4)
    handover, _, _ = make_handover(replica_cluster, tasks)
    handover.start()
    replica_cluster.clock.advance(TIMEOUT + 0.01)
    for task in tasks:
        task.commit(replica_cluster, 2)  # and the replicas never acknowledge them
    assert handover.check(0.1) == "draining"
    assert handover.check(handover_module.TIMEOUT + 1) == "timeout"
    handover.cancel()
    assert not any(task.paused for task in tasks)
    assert all(task.log.members == ("b",) for task in tasks)


def test_the_takeover_waits_for_a_member_still_running_the_partition(
        replica_cluster: ReplicaCluster) -> None:
    """Step 0: c, new primary of partition 3, probes; a still runs it, so c defers
    and promises nothing. Once a has stepped down, the same round goes through."""
    running_tasks(replica_cluster, 6, replicas=("b", "c"))
    runs = {"a"}
    for name in ("a", "b", "c"):
        replica_cluster.servers[name] = ReplicaServer(replica_cluster.stores[name],
                                                      running=lambda task, n=name: n in runs)
    epoch = epoch_after(epoch_after(0, "a"), "c")

    def round_() -> tuple[list[int], list[int]]:
        deferred: list[int] = []
        ready: list[int] = []
        Takeover("c", replica_cluster.stores["c"], replica_cluster.call("c"), epoch,
                 {3: list(TASKS)}, {3: ["c", "a"]}, ["a", "b", "c"], frozenset("abc"),
                 ready.append, lambda p, seen: None,
                 defer_to_running=frozenset({3}), on_deferred=deferred.append).start()
        replica_cluster.clock.advance(10 * TIMEOUT)
        return deferred, ready

    assert round_() == ([3], [])
    assert all(replica_cluster.stores[m].task_meta(t).promised < epoch
               for m in ("a", "b", "c") for t in TASKS)
    runs.clear()
    assert round_() == ([], [3])
    assert all(replica_cluster.stores[m].task_meta(t).promised == epoch
               for m in ("a", "b", "c") for t in TASKS)
