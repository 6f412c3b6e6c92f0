"""One history per partition whatever the network does (:mod:`daemon.ownership`), on a
MemoryNetwork and a FakeClock with real stores (the ReplicaCluster of replicacluster.py).

The review's reproductions of issue 9:

1. a takeover from a copy that is not the latest: ten commits at e1 on d and e (their
   set accepted while a and b were cut off), then a takeover by a with view {a,b,c}:
   a must wait, then continue from d's copy once d answers;
2. released commits overwritten (Raft's figure 8): takeovers with one member down
   each time; a commit released under one epoch must survive every later takeover;
4. a replica whose store is wiped and reopened answers behind its acknowledgement;
   the primary sees it and the next takeover copies it again; a wiped copy is never
   taken over from.

Plus the rules as pure functions: the voters' majority and the choice of a copy.
"""

from __future__ import annotations

import random
import shutil
from typing import Any

import pytest
from replicacluster import (
    FLOW,
    TIMEOUT,
    History,
    ask,
    content,
    data_of,
    entries,
    sealed,
    take_over,
)

from daemon.ownership import Answer, choose, quorate, voters
from daemon.replication import ReplicaLog, epoch_after
from daemon.store import Commit, TaskId

TASKS = [TaskId(FLOW, 1, 0), TaskId(FLOW, 2, 0)]
FIVE = ["a", "b", "c", "d", "e"]


def ship(cluster: Any, primary: str, replicas: list[str], commits: list[Commit]) -> None:
    """``primary`` applies ``commits`` and every replica gets them (they become durable)."""
    cluster.stores[primary].apply_many(commits)
    for replica in replicas:
        answer = ask(cluster, primary, replica, "commits",
                     entries([(0, c.to_bytes()) for c in commits], commits[0].task))
        assert answer[-1] == [commits[-1].number, commits[-1].epoch]


def epoch_for(cluster: Any, member: str, tasks: list[TaskId] = TASKS) -> int:
    """An epoch for ``member``'s next takeover above every epoch any store holds (the
    runtime gets there by retrying with the epochs a failed round saw)."""
    seen = max(max(m.epoch, m.promised) for store in cluster.stores.values()
               for m in map(store.task_meta, tasks))
    return epoch_after(seen, member)


# ---------------------------------------------------------------- the rules


@pytest.mark.parametrize(("present", "voting", "expected"), [
    ("abc", "abcde", True), ("ab", "abcde", False), ("ab", "abc", True), ("a", "ab", False),
    ("a", "a", True), ("xyz", "abc", False), ("abcxyz", "abc", True), ("", "", False),
    ("ab", "abcd", False), ("abc", "abcd", True),
])
def test_quorate_counts_voters_only(present: str, voting: str, expected: bool) -> None:
    assert quorate(present, frozenset(voting)) is expected


def test_voters_are_the_submitted_members_less_those_forgotten() -> None:
    assert voters(["a", "b", "c"], []) == frozenset("abc")
    assert voters(["a", "b", "c"], ["b", "q"]) == frozenset("ac")
    # a 2-member flow that lost b for good: a alone is a majority once b is forgotten
    assert not quorate(["a"], voters(["a", "b"], []))
    assert quorate(["a"], voters(["a", "b"], ["b"]))


def test_choose_needs_a_member_of_the_last_set_holding_its_epoch() -> None:
    old = Answer(last=20, epoch=3, promised=9, accepted_epoch=3, accepted=("a", "b"))
    new_d = Answer(last=10, epoch=7, promised=9, accepted_epoch=7, accepted=("d", "e"))
    wiped_d = Answer(last=0, epoch=0, promised=9, accepted_epoch=0, accepted=())
    # only a newer set's news, from c: neither d nor e answered
    c = Answer(last=0, epoch=0, promised=9, accepted_epoch=7, accepted=("d", "e"))
    assert choose({"a": old, "c": c}, "a").source is None
    assert choose({"a": old, "c": c, "d": new_d}, "a").source == "d"
    assert choose({"a": old, "c": c, "d": wiped_d}, "a").source is None  # d lost its copy
    # never a set: any copy, the most advanced, ours on a tie
    fresh = Answer(0, 0, 9, 0, ())
    assert choose({"a": fresh, "b": fresh}, "b").source == "b"
    assert choose({"a": Answer(4, 2, 9, 0, ()), "b": fresh}, "b").source == "a"


def test_answers_from_the_wire_are_checked() -> None:
    assert Answer.parse([1, 2, 3, 4, ["a"]]) == Answer(1, 2, 3, 4, ("a",))
    for bad in (None, [1, 2, 3], [1, 2, 3, 4, "a"], [1, 2, 3, True, []], [1, 2, 3, 4, [5]]):
        assert Answer.parse(bad) is None


# ---------------------------------------------------------------- finding 1


@pytest.mark.parametrize("accepted_by", [["c", "d", "e"], FIVE])
def test_a_partition_whose_last_set_is_cut_off_waits(make_replica_cluster: Any,
                                                      accepted_by: list[str]) -> None:
    """d takes partition 0 over with set [d, e] while a and b are cut off (view c,d,e:
    a majority of the five voters), or with all five; ten commits at its epoch reach d
    and e. Then the cut moves: a takes over with view {a,b,c}. Before, a continued from
    its own stale copy; now it waits, and nothing changes on a, b or c. Once d
    answers, a continues from d's copy."""
    cluster = make_replica_cluster(FIVE, seed=11)
    old = epoch_after(0, "a")
    histories = {t: History(t, random.Random(t.stage)) for t in TASKS}
    for t in TASKS:  # a's first epoch: three commits on a and b
        ship(cluster, "a", ["b"], histories[t].commits(3, old))
    e1 = epoch_for(cluster, "d")
    ready, failed = take_over(cluster, "d", e1, {0: TASKS}, {0: ["d", "e"]}, accepted_by,
                              voters=frozenset(FIVE))
    assert (ready, failed) == ([0], [])
    for t in TASKS:  # ten commits at e1 on d and e
        start = cluster.stores["d"].task_meta(t).last
        fork = histories[t].fork(random.Random(7))
        fork.number = start
        ship(cluster, "d", ["e"], fork.commits(10, e1))
    expected = {t: data_of(content(cluster.stores["d"], t)) for t in TASKS}
    before = {(m, t): data_of(content(cluster.stores[m], t)) for m in "abc" for t in TASKS}

    for m in ("d", "e"):
        cluster.endpoints[m].close()  # the cut: a, b, c see only each other
    e2 = epoch_for(cluster, "a")
    ready, failed = take_over(cluster, "a", e2, {0: TASKS}, {0: ["a", "b"]}, ["a", "b", "c"],
                              voters=frozenset(FIVE))
    assert ready == [] and failed and failed[0][0] == 0
    assert {(m, t): data_of(content(cluster.stores[m], t)) for m in "abc" for t in TASKS} \
        == before  # nothing restored, no seal: a's stale copy went nowhere

    cluster.start("d")  # healed (for d): the next round hears d and takes its copy
    e3 = epoch_for(cluster, "a")
    ready, failed = take_over(cluster, "a", e3, {0: TASKS}, {0: ["a", "b"]},
                              ["a", "b", "c", "d"], voters=frozenset(FIVE))
    assert (ready, failed) == ([0], [])
    for t in TASKS:
        for m in ("a", "b"):
            assert data_of(content(cluster.stores[m], t)) == sealed(expected[t], e3), (m, t)


def test_without_a_majority_of_voters_nothing_is_promised_over(make_replica_cluster: Any) -> None:
    """Two of five voters (a 3|2 cut's minority) never take over, even with a copy."""
    cluster = make_replica_cluster(FIVE, seed=12)
    old = epoch_after(0, "a")
    for t in TASKS:
        ship(cluster, "a", ["b"], History(t, random.Random(t.stage)).commits(4, old))
    for m in ("c", "d", "e"):
        cluster.endpoints[m].close()
    ready, failed = take_over(cluster, "a", epoch_for(cluster, "a"), {0: TASKS},
                              {0: ["a", "b"]}, ["a", "b"], voters=frozenset(FIVE))
    assert ready == [] and [p for p, _ in failed] == [0]


# ---------------------------------------------------------------- finding 2


def test_a_released_commit_survives_takeovers_with_one_member_down_each_time(
        make_replica_cluster: Any) -> None:
    """Raft's figure 8 with write-all sets over a, b, c (R=2):

    1. a takes over with [a, b]: three durable commits; a fourth on a only; a goes down;
    2. c takes over with [c, b]: b's copy; a commit at c's epoch on c only; c goes down;
    3. a is back; b takes over with [b, a]: it continues from a's copy, whose fourth
       commit is now on b and a, durable: its outputs are released;
    4. c is back, a goes down; c takes over with [c, b].
    Before the seal, c's copy (its own epoch, number 4) looked newer than b's (a's
    old epoch, number 4) and overwrote the released commit. Now b's copy carries the
    seal of round 3 and wins: the released commit stays."""
    cluster = make_replica_cluster(["a", "b", "c"], seed=13)
    history = {t: History(t, random.Random(t.stage)) for t in TASKS}
    ready, _ = take_over(cluster, "a", epoch_for(cluster, "a"), {0: TASKS}, {0: ["a", "b"]},
                         ["a", "b", "c"])
    assert ready == [0]
    for t in TASKS:
        history[t].number = cluster.stores["a"].task_meta(t).last
        e = cluster.stores["a"].task_meta(t).epoch
        ship(cluster, "a", ["b"], history[t].commits(3, e))
        cluster.stores["a"].apply(history[t].fork(random.Random(1)).commits(1, e)[0])
    cluster.endpoints["a"].close()

    ready, _ = take_over(cluster, "c", epoch_for(cluster, "c"), {0: TASKS}, {0: ["c", "b"]},
                         ["b", "c"])
    assert ready == [0]
    for t in TASKS:  # c commits at its epoch, on c only (not durable, never released)
        meta = cluster.stores["c"].task_meta(t)
        cluster.stores["c"].apply(Commit(t, meta.epoch, meta.last + 1,
                                         state_puts={b"unreleased": b"c"}))
    cluster.endpoints["c"].close()

    cluster.start("a")
    ready, _ = take_over(cluster, "b", epoch_for(cluster, "b"), {0: TASKS}, {0: ["b", "a"]},
                         ["a", "b"])
    assert ready == [0]
    released = {t: data_of(content(cluster.stores["b"], t)) for t in TASKS}
    for t in TASKS:  # b continued from a's copy: a's fourth commit is on both now
        assert released[t] == data_of(content(cluster.stores["a"], t))
        assert cluster.stores["b"].get_state(t, b"unreleased") is None

    cluster.endpoints["a"].close()
    cluster.start("c")
    e4 = epoch_for(cluster, "c")
    ready, _ = take_over(cluster, "c", e4, {0: TASKS}, {0: ["c", "b"]}, ["b", "c"])
    assert ready == [0]
    for t in TASKS:
        for m in ("b", "c"):
            assert data_of(content(cluster.stores[m], t)) == sealed(released[t], e4), (m, t)


# ---------------------------------------------------------------- finding 4


def test_a_replica_wiped_and_reopened_is_copied_again(make_replica_cluster: Any,
                                                      tmp_path: Any) -> None:
    """b's store is wiped and reopened under the same name, with no view change: a's
    next commit comes back with b at 0, behind what b acknowledged (before, a resent
    forever and the partition stopped). The runtime then takes the partition over
    again: that round copies b from a's snapshot."""
    cluster = make_replica_cluster(["a", "b", "c"], seed=14)
    t = TASKS[0]
    ready, _ = take_over(cluster, "a", epoch_for(cluster, "a", [t]), {0: [t]}, {0: ["a", "b"]},
                         ["a", "b", "c"])
    assert ready == [0]
    meta = cluster.stores["a"].task_meta(t)
    log = ReplicaLog(["b"], last=meta.last)
    history = History(t, random.Random(3))
    history.number = meta.last
    call = cluster.call("a")
    for commit in history.commits(6, meta.epoch):
        cluster.stores["a"].apply(commit)
        log.add(commit.number, commit.to_bytes())
        answers: list[Any] = []
        call("b", "commits", entries(log.take("b"), t), answers.append)
        cluster.clock.advance(TIMEOUT)
        log.on_reply("b", answers[0][-1][0])
    assert log.durable == log.last

    cluster.endpoints["b"].close()
    cluster.stores["b"].close()
    shutil.rmtree(tmp_path / "b")
    cluster.open_store("b")
    cluster.start("b")
    commit = history.commits(1, meta.epoch)[0]
    cluster.stores["a"].apply(commit)
    log.add(commit.number, commit.to_bytes())
    last, promised = ask(cluster, "a", "b", "commits", entries(log.take("b"), t))[-1]
    assert (last, promised) == (0, 0) and log.lost("b", last)

    e = epoch_for(cluster, "a", [t])
    ready, failed = take_over(cluster, "a", e, {0: [t]}, {0: ["a", "b"]}, ["a", "b", "c"])
    assert (ready, failed) == ([0], [])
    assert content(cluster.stores["b"], t) == content(cluster.stores["a"], t)
    assert cluster.stores["b"].task_meta(t).last == commit.number + 1  # sealed at e


def test_a_wiped_copy_is_never_taken_over_from(make_replica_cluster: Any, tmp_path: Any) -> None:
    """Set [a, b] at a's epoch; b is wiped and restarts; a goes down. c takes over with
    view {b, c}: b answers with an empty copy, which must not count as the last set's
    copy: the partition waits for a, then continues from a's copy."""
    cluster = make_replica_cluster(["a", "b", "c"], seed=15)
    t = TASKS[0]
    ready, _ = take_over(cluster, "a", epoch_for(cluster, "a", [t]), {0: [t]}, {0: ["a", "b"]},
                         ["a", "b", "c"])
    assert ready == [0]
    history = History(t, random.Random(5))
    history.number = cluster.stores["a"].task_meta(t).last
    ship(cluster, "a", ["b"], history.commits(5, cluster.stores["a"].task_meta(t).epoch))
    expected = data_of(content(cluster.stores["a"], t))

    cluster.endpoints["b"].close()
    cluster.stores["b"].close()
    shutil.rmtree(tmp_path / "b")
    cluster.open_store("b")
    cluster.start("b")
    cluster.endpoints["a"].close()
    ready, failed = take_over(cluster, "c", epoch_for(cluster, "c", [t]), {0: [t]},
                              {0: ["c", "b"]}, ["b", "c"])
    assert ready == [] and failed
    assert cluster.stores["b"].task_meta(t).last == 0 and cluster.stores["c"].task_meta(t).last == 0

    cluster.start("a")
    e = max(epoch_for(cluster, m, [t]) for m in "abc")
    ready, failed = take_over(cluster, "c", epoch_after(e, "c"), {0: [t]}, {0: ["c", "b"]},
                              ["a", "b", "c"])
    assert (ready, failed) == ([0], [])
    for m in ("b", "c"):
        assert data_of(content(cluster.stores[m], t))[0] == expected[0]


def test_a_voter_that_lost_its_store_recovers_its_votes_before_voting(
        make_replica_cluster: Any, tmp_path: Any) -> None:
    """a takes partition 0 over with set [a, b], accepted by a, b and c only (d and e
    were cut off); c's store is then wiped. Voting at once, c would answer "no set
    accepted", and d with view {c, d, e} would start the partition afresh beside a's
    history. Instead c refuses to vote until it has recovered its votes from ceil(5/2)
    other voters: with only d and e it cannot; with a, d and e it takes the accepted
    set [a, b] and a promise far above every epoch seen. Then d's round, with a and b
    cut off, waits."""
    from daemon.recovery import Recovery, bumped
    from daemon.replication import ReplicaServer

    cluster = make_replica_cluster(FIVE, seed=16)
    t = TASKS[0]
    e1 = epoch_for(cluster, "a", [t])
    ready, _ = take_over(cluster, "a", e1, {0: [t]}, {0: ["a", "b"]}, ["a", "b", "c"],
                         voters=frozenset(FIVE))
    assert ready == [0]
    history = History(t, random.Random(8))
    history.number = cluster.stores["a"].task_meta(t).last
    ship(cluster, "a", ["b"], history.commits(4, e1))

    cluster.endpoints["c"].close()
    cluster.stores["c"].close()
    shutil.rmtree(tmp_path / "c")
    store = cluster.open_store("c")
    assert store.created
    recovered: list[bool] = []
    cluster.servers["c"] = ReplicaServer(store, votes=lambda flow: bool(recovered))
    cluster.start("c")
    assert ask(cluster, "d", "c", "promise", {"tasks": [list(t)], "epoch": e1 + 1}) is None

    for m in ("a", "b"):
        cluster.endpoints[m].close()  # the cut moves: a and b away
    ready, failed = take_over(cluster, "d", epoch_for(cluster, "d", [t]), {0: [t]},
                              {0: ["d", "e"]}, ["c", "d", "e"], voters=frozenset(FIVE))
    assert ready == [] and failed  # d and e alone are no majority; c does not vote

    done: list[bool] = []
    Recovery("c", store, cluster.call("c"), [t], ["c", "d", "e"], frozenset(FIVE),
             done.append).start()
    cluster.clock.advance(10 * TIMEOUT)
    assert done == [False]  # two of the four others: a majority that accepted may hide

    cluster.start("a")
    Recovery("c", store, cluster.call("c"), [t], ["a", "c", "d", "e"], frozenset(FIVE),
             done.append).start()
    cluster.clock.advance(10 * TIMEOUT)
    assert done == [False, True]
    seen = max(max(m.epoch, m.promised) for m in (cluster.stores[n].task_meta(t) for n in FIVE
                                                  if n != "c"))
    assert store.accepted(t) == (e1, ("a", "b")) and store.task_meta(t).promised == bumped(seen)
    recovered.append(True)

    cluster.endpoints["a"].close()
    ready, failed = take_over(cluster, "d", epoch_after(bumped(seen), "d"), {0: [t]},
                              {0: ["d", "e"]}, ["c", "d", "e"], voters=frozenset(FIVE))
    assert ready == [] and failed  # c's recovered vote names [a, b]: the partition waits
    assert cluster.stores["d"].task_meta(t).last == 0


def test_lost_votes_are_kept_in_the_store_until_recovered(tmp_path: Any) -> None:
    """A new store votes in nothing until the first view names the flows it voted in;
    those stay unvoted, across a restart, until recovered; an old store votes at once."""
    from daemon.recovery import LostVotes
    from daemon.store import Store

    with Store(tmp_path / "s", sync=False) as store:
        lost = LostVotes(store, "a")
        assert not lost.votes("f") and not lost.votes("g")
        lost.joined(["f"])
        assert not lost.votes("f") and lost.votes("g")
        assert lost.due("f", 0.0) and not lost.due("f", 0.5) and lost.due("f", 1.0)
    with Store(tmp_path / "s", sync=False) as store:  # a crash mid-recovery: still lost
        lost = LostVotes(store, "a")
        assert not lost.votes("f") and lost.votes("g")
        lost.done("f", "recovered")
        assert lost.votes("f")
    with Store(tmp_path / "s", sync=False) as store:
        assert LostVotes(store, "a").votes("f")
