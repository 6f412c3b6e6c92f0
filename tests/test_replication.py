"""Replication and takeover on a MemoryNetwork and a FakeClock (no sleeps, no daemons).

Each simulated member is a Store in tmp_path, a ReplicaServer and a MemoryTransport
(:class:`~replicacluster.ReplicaCluster`). ``ReplicaCluster.call(src)`` is the ``call``
a runtime gives :class:`~daemon.takeover.Takeover`; its seeded fault hook loses requests
and replies, duplicates requests, and random latency reorders concurrent ones.

Covered: a primary's ReplicaLog shipping 200+ commits through lost, duplicated and
reordered messages; replicas refusing a stale epoch; a takeover catching up from
the most advanced copy; a replica restarting while a takeover restores it; and a
takeover of 128 tasks at random positions on 5 members.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from replicacluster import (
    FLOW,
    TASK,
    TIMEOUT,
    History,
    ask,
    content,
    data_of,
    entries,
    sealed,
    take_over,
)

from daemon.errors import StoreError
from daemon.replication import WINDOW, ReplicaLog, ReplicaServer, epoch_after, position
from daemon.store import Commit, TaskId, TaskMeta
from daemon.takeover import Takeover

# ---------------------------------------------------------------- 1. a lossy network


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("flight", [1, 4])
def test_commits_reach_replicas_through_lost_duplicated_reordered_messages(
        make_replica_cluster: Any, seed: int, flight: int) -> None:
    """240 commits shipped by a ReplicaLog, ``flight`` messages in flight per replica
    (1 as in the runtime; 4 so that they overtake each other), 20 % lost and 20 %
    duplicated: durable never runs ahead of a replica's store, and in the end every
    commit is durable and both replicas equal the primary."""
    cluster = make_replica_cluster(["a", "b", "c"], seed=seed, drop=0.2, duplicate=0.2,
                      latency=(0.001, 0.03))
    rng, primary, n = random.Random(seed), cluster.stores["a"], 240
    epoch = epoch_after(0, "a")
    history, log = History(TASK, rng), ReplicaLog(["b", "c"], last=0)
    call, in_flight = cluster.call("a"), {"b": 0, "c": 0}
    durable_seen = [0]

    def check() -> None:
        for m in log.replicas:
            held = cluster.stores[m].task_meta(TASK).last
            assert log.acked[m] <= held, f"acked {log.acked[m]} but {m} holds {held}"
            assert log.durable <= held
        assert durable_seen[0] <= log.durable <= log.last
        durable_seen[0] = log.durable

    def on_answer(m: str, count: int, answer: Any) -> None:
        in_flight[m] -= 1
        if not (isinstance(answer, list) and len(answer) == count):
            log.on_lost(m)
        else:
            for last, promised in answer:
                assert promised <= epoch  # 0 from a replica that has nothing yet
                log.on_reply(m, last)
        check()
        ship()

    def ship() -> None:
        for m in log.replicas:
            while in_flight[m] < flight and log.wants(m):
                batch = log.take(m)
                if not batch:
                    break
                in_flight[m], count = in_flight[m] + 1, len(batch)
                call(m, "commits", entries(batch),
                     lambda answer, m=m, k=count: on_answer(m, k, answer))

    for _ in range(n):
        commit = history.next(epoch)
        assert primary.apply(commit)
        log.add(commit.number, commit.to_bytes())
        ship()
        cluster.clock.advance(rng.uniform(0, 0.02))
        check()
    for _ in range(400):  # housekeeping: whatever was lost goes again
        if log.durable == n and not any(in_flight.values()):
            break
        ship()
        cluster.clock.advance(0.05)
        check()

    assert log.durable == n and log.backlog == 0
    assert not log.commits
    expected = content(primary, TASK)
    assert expected["taskmeta"] == TaskMeta(n, epoch, 0)
    for m in ("b", "c"):
        assert content(cluster.stores[m], TASK) == expected
    # the faults really happened: losses both ways, duplicates, requests overtaking
    assert cluster.stats["lost_requests"] and cluster.stats["lost_replies"]
    assert cluster.stats["duplicated"]
    firsts = [list(dict.fromkeys(ids)) for ids in cluster.arrivals.values()]
    assert any(ids != sorted(ids) for ids in firsts) == (flight > 1)


def test_replica_log_example_pipeline() -> None:
    """Window, gaps and losses on the ReplicaLog alone (no network)."""
    log = ReplicaLog(["b", "c"], last=2)
    for number in range(3, 3 + WINDOW + 5):
        log.add(number, b"%d" % number)
    assert [n for n, _ in log.take("b")] == list(range(3, 3 + WINDOW))  # the window
    assert log.take("b") == [] and not log.wants("b")
    log.on_reply("b", 2)  # a gap: b holds 2, everything from 3 goes again
    assert [n for n, _ in log.take("b")] == list(range(3, 3 + WINDOW))
    log.on_reply("b", 10)
    assert log.durable == 2 and log.acked["b"] == 10
    log.on_reply("c", 6)
    assert log.durable == 6 and log.commits[0][0] == 7
    log.on_lost("c")
    assert log.take("c")[0][0] == 7
    log.on_reply("b", 99)  # never more than we committed
    assert log.acked["b"] == log.last


def test_wants_agrees_with_take_after_a_late_reply() -> None:
    """wants(m) is documented as "whether take would return something for m"."""
    log = ReplicaLog(["b"], last=0)
    log.add(1, b"one")
    assert log.take("b") == [(1, b"one")]
    log.on_lost("b")  # timed out ...
    log.on_reply("b", 1)  # ... but the answer came after all
    assert log.durable == 1 and not log.commits
    assert log.wants("b") == bool(log.take("b"))


# ---------------------------------------------------------------- 2. stale epochs


@pytest.mark.parametrize("how", ["promise", "takeover"])
def test_replica_refuses_commits_of_an_older_epoch(make_replica_cluster: Any, how: str) -> None:
    """Once b promised c's epoch, a's commits (new ones, a resent one) and a's
    snapshot are refused: the answer shows the newer epoch and b's copy is unchanged."""
    cluster = make_replica_cluster(["a", "b", "c"])
    old = epoch_after(0, "a")
    commits = History(TASK, random.Random(1)).commits(8, old)
    for c in commits:
        cluster.stores["a"].apply(c)
    ok = ask(cluster, "a", "b", "commits", entries([(0, c.to_bytes()) for c in commits[:5]]))
    assert ok == [[5, old]] * 5

    new = epoch_after(old, "c")
    if how == "promise":
        assert ask(cluster, "c", "b", "promise", {"tasks": [list(TASK)], "epoch": new}) \
            == [[5, old, new, 0, []]]
        last, epoch, accepted = 5, old, [0, []]
    else:
        ready, failed = take_over(cluster, "c", new, {0: [TASK]}, {0: ["c", "b"]}, ["b", "c"])
        assert (ready, failed) == ([0], [])
        assert content(cluster.stores["c"], TASK) == content(cluster.stores["b"], TASK)
        last, epoch, accepted = 6, new, [new, ["c", "b"]]  # sealed at the new epoch
    before = content(cluster.stores["b"], TASK)
    assert before["taskmeta"] == TaskMeta(last, epoch, new)

    late = entries([(0, c.to_bytes()) for c in commits[5:]])
    assert ask(cluster, "a", "b", "commits", late) == [[last, new]] * 3
    again = entries([(0, commits[4].to_bytes())])
    assert ask(cluster, "a", "b", "commits", again) == [[last, new]]
    restore = {"task": list(TASK), "epoch": old, "chunks": list(cluster.stores["a"].snapshot(TASK))}
    assert ask(cluster, "a", "b", "restore", restore) == [last, new]
    assert ask(cluster, "a", "b", "promise", {"tasks": [list(TASK)], "epoch": old}) \
        == [[last, epoch, new, *accepted]]  # a lower promise does not lower ours
    assert ask(cluster, "a", "b", "accept", {"tasks": [list(TASK)], "epoch": old,
                                              "sets": [["a", "b"]]}) == [new]
    assert content(cluster.stores["b"], TASK) == before
    # the old primary's ReplicaLog sees the refusal: nothing past 5 becomes durable
    log = ReplicaLog(["b"], last=5)
    for c in commits[5:]:
        log.add(c.number, c.to_bytes())
    last, promised = ask(cluster, "a", "b", "commits", entries(log.take("b")))[-1]
    assert promised > old  # the runtime steps the task down on this answer
    assert last == before["taskmeta"].last and log.durable == 5


X, Y = "10.0.1.18:7400", "10.0.1.96:7400"
"""Two member names whose xxh32 agrees in the low 20 bits: their epochs collided when
an epoch kept only 20 bits of the proposer's hash."""


def test_two_members_never_take_over_at_the_same_epoch(make_replica_cluster: Any) -> None:
    """x and y both take over partition 0 in the same round (their views differ for a
    moment): at most one round may succeed, or r acknowledges y's commit 1 while it
    holds x's, and y releases outputs r does not have."""
    cluster = make_replica_cluster([X, Y, "r"])
    ex, ey = epoch_after(0, X), epoch_after(0, Y)
    ready_x, _ = take_over(cluster, X, ex, {0: [TASK]}, {0: [X, "r"]}, [X, Y, "r"])
    ready_y, _ = take_over(cluster, Y, ey, {0: [TASK]}, {0: [Y, "r"]}, [X, Y, "r"])
    assert ex != ey and ready_x and ready_y  # both rounds ran; the later promise stands
    nx, ny = (cluster.stores[m].task_meta(TASK).last + 1 for m in (X, Y))
    mine = Commit(TASK, ex, nx, state_puts={b"who": b"x"})
    theirs = Commit(TASK, ey, ny, state_puts={b"who": b"y"})
    ax = ask(cluster, X, "r", "commits", entries([(1, mine.to_bytes())]))
    ay = ask(cluster, Y, "r", "commits", entries([(1, theirs.to_bytes())]))
    winner, loser = (ay, ax) if ey > ex else (ax, ay)
    assert winner == [[max(nx, ny), max(ex, ey)]] and loser[0][1] == max(ex, ey)
    assert loser[0][1] > min(ex, ey)  # the loser sees a newer epoch: it steps down
    assert cluster.stores["r"].get_state(TASK, b"who") == (b"y" if ey > ex else b"x")


# ---------------------------------------------------------------- 3. takeover


@pytest.mark.parametrize("positions", [
    {"b": (11, 6), "c": (7, 9)},  # stage 1: b ahead (one commit past a's durable 10)
    {"b": (7, 10), "c": (10, 10)},  # stage 1: c ahead; stage 2: equal
    {"b": (10, 0), "c": (10, 4)},  # stage 2: b has never seen the task
], ids=["b-ahead", "c-ahead", "b-empty"])
def test_takeover_continues_from_the_most_advanced_copy(
        make_replica_cluster: Any, positions: dict[str, tuple[int, int]]) -> None:
    """a (old primary) dies; c takes over partition 0 with replicas [c, b]: both end
    with the most advanced copy of each task and promise the new epoch; a, back,
    cannot commit on b any more, while c can."""
    cluster = make_replica_cluster(["a", "b", "c"], seed=3)
    tasks = [TaskId(FLOW, 1, 0), TaskId(FLOW, 2, 0)]
    old = epoch_after(0, "a")
    histories = {t: History(t, random.Random(t.stage)).commits(12, old) for t in tasks}
    for t, commits in histories.items():
        cluster.stores["a"].apply_many(commits[:11])
        for i, m in enumerate(["b", "c"]):
            cluster.stores[m].apply_many(commits[:positions[m][tasks.index(t)]])
    best = {t: max((position(cluster.stores[m].task_meta(t)), m) for m in ("b", "c"))[1]
            for t in tasks}
    expected = {t: data_of(content(cluster.stores[best[t]], t)) for t in tasks}
    cluster.endpoints["a"].close()

    new = epoch_after(old, "c")
    ready, failed = take_over(cluster, "c", new, {0: tasks}, {0: ["c", "b"]}, ["b", "c"])
    assert (ready, failed) == ([0], [])
    for t in tasks:
        for m in ("b", "c"):
            got = content(cluster.stores[m], t)
            assert data_of(got) == sealed(expected[t], new), (t, m)
            assert got["taskmeta"].promised == new

    cluster.start("a")  # a comes back with its store and commits 12 at its old epoch
    t = tasks[0]
    before = content(cluster.stores["b"], t)
    mine = cluster.stores["a"].task_meta(t).last
    stale = History(t, random.Random(99)).commits(mine + 1, old)[-1]
    answer = ask(cluster, "a", "b", "commits", entries([(0, stale.to_bytes())], t))
    assert answer == [[before["taskmeta"].last, new]]
    assert content(cluster.stores["b"], t) == before
    # the new primary's next commit is accepted
    nxt = Commit(t, new, before["taskmeta"].last + 1, state_puts={b"new": b"1"})
    cluster.stores["c"].apply(nxt)
    assert ask(cluster, "c", "b", "commits", entries([(0, nxt.to_bytes())], t)) \
        == [[nxt.number, new]]
    assert content(cluster.stores["b"], t) == content(cluster.stores["c"], t)


def test_takeover_fails_without_a_majority_of_the_voters(make_replica_cluster: Any) -> None:
    """With voters b and c, c alone (b does not answer) is no majority: the round ends
    for every partition; nothing is restored anywhere."""
    cluster = make_replica_cluster(["b", "c"])
    old = epoch_after(0, "a")
    cluster.stores["b"].apply_many(History(TASK, random.Random(2)).commits(5, old))
    before = content(cluster.stores["c"], TASK)
    cluster.endpoints["b"].close()
    new = epoch_after(old, "c")
    ready, failed = take_over(cluster, "c", new, {0: [TASK], 1: [TaskId(FLOW, 1, 1)]},
                              {0: ["c", "b"], 1: ["c", "b"]}, ["b", "c"])
    assert ready == [] and sorted(failed) == [(0, new), (1, new)]
    assert data_of(content(cluster.stores["c"], TASK)) == data_of(before)


def test_tasks_run_fenced_once_sealed_and_open_only_when_seal_and_accept_are_answered(
        make_replica_cluster: Any) -> None:
    """The round starts the tasks (``on_running``) as soon as seal and accept are sent,
    and calls ``on_ready`` (they may release) only once both are answered well; when a
    newer round's promise reaches a majority meanwhile, the partition fails after it
    started running (its owner stops it: it released nothing)."""
    cluster = make_replica_cluster(["a", "b", "c"])
    t = TaskId(FLOW, 1, 0)
    new = epoch_after(epoch_after(0, "a"), "c")
    events: list[tuple[str, int]] = []
    base = cluster.call("c")
    newer = 0

    def call(member: str, kind: str, args: Any, on_reply: Callable) -> None:
        if kind == "accept" and member in "ab" and newer:
            cluster.stores[member].set_promise(t, newer)  # a newer round came first
        base(member, kind, args, on_reply)

    def round_(epoch: int) -> list[tuple[str, int]]:
        events.clear()
        Takeover("c", cluster.stores["c"], call, epoch, {0: [t]}, {0: ["c", "b"]},
                 ["a", "b", "c"], frozenset("abc"), lambda p: events.append(("ready", p)),
                 lambda p, seen: events.append(("failed", seen)),
                 soon=lambda fn: cluster.clock.call_later(0, fn),
                 on_running=lambda p: events.append(
                     ("running", cluster.stores["c"].task_meta(t).epoch))).start()
        cluster.clock.advance(10 * TIMEOUT)
        return list(events)

    assert round_(new) == [("running", new), ("ready", 0)]  # sealed here, then open
    assert cluster.stores["b"].task_meta(t) == cluster.stores["c"].task_meta(t)
    newer = new + 5
    assert round_(new + 2) == [("running", new + 2), ("failed", newer)]
    assert round_(new + 4) == [("failed", newer)]  # refused at the promise: never ran


# ---------------------------------------------------------------- 4. restart mid-catch-up


def test_replica_restarting_during_restore_fails_the_round_then_a_later_round_syncs_it(
        make_replica_cluster: Any) -> None:
    """c restores its copy on d; d dies while the restore travels and restarts. The
    round fails for the partition, d's copy is as it was (plus the promise), and a
    second round at a higher epoch brings d level with c."""
    cluster = make_replica_cluster(["c", "d"], seed=5)
    old = epoch_after(0, "a")
    commits = History(TASK, random.Random(4)).commits(12, old)
    cluster.stores["c"].apply_many(commits)
    cluster.stores["d"].apply_many(commits[:4])
    d_before = content(cluster.stores["d"], TASK)

    base, crashed = cluster.call("c"), []

    def call(member: str, kind: str, args: Any, on_reply: Callable[[Any], None]) -> None:
        base(member, kind, args, on_reply)
        if kind == "restore_part" and member == "d" and not crashed:
            crashed.append(kind)
            cluster.crash("d")  # before the request arrives

    first = epoch_after(old, "c")
    ready, failed = take_over(cluster, "c", first, {0: [TASK]}, {0: ["c", "d"]}, ["c", "d"],
                              call=call)
    assert crashed and ready == [] and failed == [(0, 0)]
    after = content(cluster.stores["d"], TASK)
    assert data_of(after) == data_of(d_before)
    assert after["taskmeta"] == TaskMeta(4, old, first)  # the promise came before the crash

    cluster.start("d")
    seen = max(failed[0][1], *cluster.stores["c"].task_meta(TASK)[1:])
    second = epoch_after(seen, "c")
    assert second > first
    ready, failed = take_over(cluster, "c", second, {0: [TASK]}, {0: ["c", "d"]}, ["c", "d"])
    assert (ready, failed) == ([0], [])
    c_copy, d_copy = content(cluster.stores["c"], TASK), content(cluster.stores["d"], TASK)
    assert c_copy == d_copy
    assert c_copy["taskmeta"] == TaskMeta(13, second, second)  # sealed


@pytest.mark.parametrize("cut", ["no end", "middle chunk lost", "header only", "nothing",
                                 "garbage"])
def test_a_restore_broken_off_leaves_the_replica_as_it_was(make_replica_cluster: Any,
                                                           cut: str) -> None:
    """A snapshot that arrives incomplete is refused whole: the server raises (the
    harness answers None) and d's data, position and promise are unchanged."""
    cluster = make_replica_cluster(["c", "d"])
    old = epoch_after(0, "a")
    commits = History(TASK, random.Random(6)).commits(30, old)
    cluster.stores["c"].apply_many(commits)
    cluster.stores["d"].apply_many(commits[:9])
    chunks = list(cluster.stores["c"].snapshot(TASK))
    assert len(chunks) >= 4  # header, several databases, end
    broken = {"no end": chunks[:-1], "middle chunk lost": chunks[:2] + chunks[3:],
              "header only": chunks[:1], "nothing": [], "garbage": [b"\x93\x01", 7]}[cut]
    before = content(cluster.stores["d"], TASK)
    with pytest.raises(StoreError):
        cluster.servers["d"].handle("restore", {"task": list(TASK), "epoch": epoch_after(old, "c"),
                                                "chunks": broken})
    assert ask(cluster, "c", "d", "restore",
               {"task": list(TASK), "epoch": epoch_after(old, "c"), "chunks": broken}) is None
    assert content(cluster.stores["d"], TASK) == before


# ---------------------------------------------------------------- 5. many tasks


@pytest.mark.parametrize("seed", [1, 2])
def test_takeover_of_many_tasks_levels_every_replica(make_replica_cluster: Any, seed: int) -> None:
    """64 partitions x 2 stages on 5 members at random positions, some on a newer
    branch (epoch e2) than others (an old primary's non-durable commits at e1): one
    round makes every replica of every partition equal the most advanced copy."""
    names = ["m0", "m1", "m2", "m3", "m4"]
    cluster = make_replica_cluster(names, seed=seed, latency=(0.0005, 0.01))
    rng = random.Random(seed)
    e1, e2 = epoch_after(0, "m3"), epoch_after(epoch_after(0, "m3"), "m4")
    me, partitions = "m0", range(64)
    tasks = {p: [TaskId(FLOW, 1, p), TaskId(FLOW, 2, p)] for p in partitions}
    sets = {p: [me, *rng.sample(names[1:], 2)] for p in partitions}
    for p in partitions:
        for t in tasks[p]:
            base = rng.randrange(0, 6)
            hist = History(t, rng)
            common = hist.commits(base, e1)
            old_branch = hist.fork(random.Random(rng.random()))
            old_tail = old_branch.commits(rng.randrange(0, 4), e1)
            new_tail = hist.commits(rng.randrange(0, 4), e2) if rng.random() < 0.7 else []
            for m in names:
                chain = common + (new_tail if rng.random() < 0.5 else old_tail)
                cluster.stores[m].apply_many(chain[:rng.randrange(len(chain) + 1)])
    before = {(m, t): content(cluster.stores[m], t) for m in names for ts in tasks.values()
              for t in ts}
    best = {t: max(data_of(before[m, t])[1][::-1] for m in names) for ts in tasks.values()
            for t in ts}  # the highest (epoch, last) any copy holds
    new = epoch_after(e2, me)

    ready, failed = take_over(cluster, me, new, tasks, sets, names)
    assert failed == [] and sorted(ready) == list(partitions)
    restores = 0
    for p in partitions:
        for t in tasks[p]:
            holders = [m for m in names if data_of(before[m, t])[1][::-1] == best[t]]
            assert len({repr(data_of(before[m, t])) for m in holders}) == 1  # one history
            expected = data_of(before[holders[0], t])
            for m in names:
                got = content(cluster.stores[m], t)
                assert got["taskmeta"].promised == new, (m, t)
                if m in sets[p]:
                    assert data_of(got) == sealed(expected, new), (m, t)
                    restores += data_of(before[m, t]) != expected
                else:  # not in the set: only the promise changed
                    assert data_of(got) == data_of(before[m, t]), (m, t)
    assert restores > 50  # most tasks had a copy to bring level


# ---------------------------------------------------------------- 6. chunked transfers


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_snapshots_move_chunk_by_chunk_through_a_lossy_network(
        make_replica_cluster: Any, seed: int, monkeypatch: Any) -> None:
    """A task of about 6 MiB (7+ chunks) is pushed from a to b and pulled from b by c
    while 15 % of requests or replies are lost and 20 % duplicated: each chunk is
    asked again on its own (up to 10 times here: losses this dense come in runs), and
    both copies end equal to a's."""
    from daemon import transfer
    from daemon.transfer import Pull, Push

    monkeypatch.setattr(transfer, "TRIES", 10)

    cluster = make_replica_cluster(["a", "b", "c"], seed=seed, drop=0.15, duplicate=0.2)
    rng, epoch = random.Random(seed), epoch_after(0, "a")
    big = Commit(TASK, epoch, 1, state_puts={b"k%05d" % i: rng.randbytes(3000)
                                             for i in range(2000)})
    cluster.stores["a"].apply(big)
    chunks = list(cluster.stores["a"].snapshot(TASK))
    assert len(chunks) >= 7
    pushed: list[Any] = []
    Push(cluster.call("a"), "b", TASK, epoch, chunks, pushed.append).start()
    cluster.clock.advance(200 * TIMEOUT)
    assert pushed == [[1, epoch]]
    assert content(cluster.stores["b"], TASK) == {**content(cluster.stores["a"], TASK),
                                                  "taskmeta": TaskMeta(1, epoch, epoch)}
    pulled: list[Any] = []
    Pull(cluster.call("c"), "b", TASK, pulled.append).start()
    cluster.clock.advance(200 * TIMEOUT)
    assert len(pulled) == 1 and pulled[0] is not None
    cluster.stores["c"].restore(TASK, pulled[0])
    assert data_of(content(cluster.stores["c"], TASK)) == data_of(content(cluster.stores["a"],
                                                                          TASK))
    assert cluster.stats["lost_requests"] + cluster.stats["lost_replies"] > 0


def test_a_push_to_a_member_that_lost_its_staged_chunks_starts_over(
        make_replica_cluster: Any) -> None:
    """b restarts mid-transfer (its staged chunks are gone): it answers the next chunk
    with "restart", the push's next round starts from chunk 0 and the restore completes."""
    from daemon.transfer import Push

    cluster = make_replica_cluster(["a", "b"], seed=9)
    epoch = epoch_after(0, "a")
    cluster.stores["a"].apply(Commit(TASK, epoch, 1, state_puts={
        b"k%05d" % i: bytes(3000) for i in range(1500)}))
    chunks = list(cluster.stores["a"].snapshot(TASK))
    real, seen = cluster.call("a"), []

    def call(member: str, kind: str, args: Any, on_reply: Callable[[Any], None]) -> None:
        seen.append(args["index"])

        def answered(answer: Any) -> None:
            if args["index"] == 3 and seen.count(3) == 1:  # b restarts: staged chunks lost
                cluster.servers["b"] = ReplicaServer(cluster.stores["b"])
            on_reply(answer)

        real(member, kind, args, answered)

    done: list[Any] = []
    Push(call, "b", TASK, epoch, chunks, done.append).start()
    cluster.clock.advance(100 * TIMEOUT)
    assert done == [[1, epoch]] and seen.count(0) == 2  # the second round from chunk 0
    assert data_of(content(cluster.stores["b"], TASK)) == data_of(content(cluster.stores["a"],
                                                                          TASK))
