"""The files sink on the daemon (:class:`daemon.task.Segment`): lines are written only
once their commits are durable, in whole segment files whose names and bytes are the same
whichever primary writes them, so an old primary woken from a pause cannot damage what a
new one wrote, on a shared directory or on separate hosts (issue 9, finding 7)."""

from __future__ import annotations

import errno
import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from daemons import flow_record, submit, wait_for, write

import daemon.task as task_module
from daemon.store import Commit, Store
from daemon.task import SEGMENT_SECONDS, FlowContext, PartitionTask
from nodes import load_flow
from nodes.plan import plan

N = 300
FLOW = f"""
from nodes import Flow, sources, sinks
flow = Flow("out")
flow.source(sources.generate({N}, lambda i: {{"i": i, "s": "é\\u0000x"}})).sink(sinks.files("out"))
"""
EXPECTED = Counter(range(N))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def small_commits(monkeypatch):
    """20 records a commit, a segment closed by every commit unless told otherwise."""
    monkeypatch.setattr(task_module, "SOURCE_BATCHES_PER_COMMIT", 2)
    monkeypatch.setattr(task_module, "SEGMENT_BYTES", 1)


def member(tmp_path: Path, name: str, base: Path, clock: Clock) -> tuple[Store, FlowContext]:
    store = Store(tmp_path / f"store-{name}", sync=False)
    the_plan = plan(load_flow(FLOW, str(base / "flow.py")))
    ctx = FlowContext("out@1", the_plan, 1, store, lambda *sent: True, batch_size=10,
                      clock=clock)
    ctx.plan_splits()
    return store, ctx


def lines(directory: Path) -> dict[str, list[dict]]:
    """Per segment file, its records (asserting no NUL byte and whole lines)."""
    out = {}
    for path in sorted(directory.glob("part-*.jsonl")):
        data = path.read_bytes()
        assert b"\x00" not in data and data.endswith(b"\n")
        out[path.name] = [json.loads(line) for line in data.decode().splitlines()]
    return out


def counted(*directories: Path) -> Counter:
    """Records of the union by file name of ``directories`` (same name: same bytes)."""
    union: dict[str, list[dict]] = {}
    for directory in directories:
        for name, records in lines(directory).items():
            assert union.setdefault(name, records) == records
    return Counter(r["i"] for records in union.values() for r in records)


def step(task: PartitionTask, ship: list | None = None) -> None:
    """One step; with ``ship`` the commits it made are collected (as a replica gets them)."""
    task.step()
    if ship is not None:
        ship.extend(Commit.from_bytes(data) for _, data in task.log.commits)
        task.log.commits.clear()


def run_to_end(task: PartitionTask, clock: Clock) -> None:
    for _ in range(1000):
        if task.done:
            return
        step(task)
        clock.now += 0.01
    raise AssertionError("the task did not finish")


def test_lines_are_written_whole_once_durable(tmp_path, small_commits):
    clock = Clock()
    store, ctx = member(tmp_path, "a", tmp_path, clock)
    task = PartitionTask(ctx, ctx.plan.stages[0], 0, 1, ("b",))
    step(task)
    step(task)
    assert task.number == 2 and not (tmp_path / "out").exists()  # committed, not durable
    task.on_replicated("b", 1)
    assert list(lines(tmp_path / "out")) == ["part-00000-0000000001.jsonl"]
    for _ in range(100):
        if task.done:
            break
        step(task)
        task.on_replicated("b", task.number)
    assert task.done and counted(tmp_path / "out") == EXPECTED
    assert not list(store.outbox(task.id))  # written segments leave the store
    assert lines(tmp_path / "out")["part-00000-0000000001.jsonl"][0] == {"i": 0, "s": "é\x00x"}
    store.close()


def test_a_segment_closes_by_age_and_at_end_of_stream(tmp_path, monkeypatch):
    monkeypatch.setattr(task_module, "SOURCE_BATCHES_PER_COMMIT", 2)
    clock = Clock()
    store, ctx = member(tmp_path, "a", tmp_path, clock)
    task = PartitionTask(ctx, ctx.plan.stages[0], 0)
    step(task)
    clock.now += SEGMENT_SECONDS / 2
    step(task)
    assert not (tmp_path / "out").exists()  # 40 records in an open segment
    clock.now += SEGMENT_SECONDS / 2
    step(task)  # 60 records: the segment is a second old
    assert [len(r) for r in lines(tmp_path / "out").values()] == [60]
    run_to_end(task, clock)
    assert [len(r) for r in lines(tmp_path / "out").values()] == [60, N - 60]
    assert counted(tmp_path / "out") == EXPECTED
    store.close()


@pytest.mark.parametrize("shared", [True, False], ids=["shared-dir", "separate-hosts"])
def test_an_old_primary_woken_from_a_pause_cannot_damage_the_output(tmp_path, small_commits,
                                                                    shared):
    """a commits 1-3 (on b, a does not know yet) and 4 (on a only), then pauses; b takes
    over from its copy and finishes the flow; then a wakes up and learns 1-3 are durable."""
    clock = Clock()
    host_a, host_b = tmp_path / "a", tmp_path / ("a" if shared else "b")
    host_a.mkdir(), host_b.mkdir(exist_ok=True)
    store_a, ctx_a = member(tmp_path, "a", host_a, clock)
    store_b, ctx_b = member(tmp_path, "b", host_b, clock)
    old = PartitionTask(ctx_a, ctx_a.plan.stages[0], 0, 1, ("b",))
    shipped: list[Commit] = []
    for _ in range(3):
        step(old, shipped)
    store_b.apply_many(shipped)
    step(old)  # commit 4: never on b
    assert old.number == 4 and not (host_a / "out").exists()

    new = PartitionTask(ctx_b, ctx_b.plan.stages[0], 0, 2, ())
    run_to_end(new, clock)
    before = {p.name: p.read_bytes() for p in (host_b / "out").glob("*")}
    assert counted(host_b / "out") == EXPECTED

    old.on_replicated("b", 3)  # a wakes: it writes segments 1-3, never 4
    assert sorted(p.name for p in (host_a / "out").glob("*"))[:3] == [
        f"part-00000-{seq:010d}.jsonl" for seq in (1, 2, 3)]
    if shared:
        assert {p.name: p.read_bytes() for p in (host_b / "out").glob("*")} == before
    else:
        assert len(list((host_a / "out").glob("*"))) == 3
    assert counted(host_a / "out", host_b / "out") == EXPECTED
    store_a.close()
    store_b.close()


def test_a_full_disk_delays_a_segment_and_loses_nothing(tmp_path, small_commits, monkeypatch):
    clock = Clock()
    store, ctx = member(tmp_path, "a", tmp_path, clock)
    real, calls = task_module.write_atomically, []

    def full_once(path, data, **kw):
        calls.append(path.name)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, **kw)

    monkeypatch.setattr(task_module, "write_atomically", full_once)
    task = PartitionTask(ctx, ctx.plan.stages[0], 0)
    step(task)
    assert not list((tmp_path / "out").glob("*")) and task.write_again_at > clock.now
    step(task)
    assert len(calls) == 1  # not before the retry time
    assert task.wake_at(clock.now) is not None
    run_to_end(task, clock)
    assert calls[:2] == ["part-00000-0000000001.jsonl"] * 2 and not task.broken
    assert counted(tmp_path / "out") == EXPECTED
    store.close()


def test_a_sink_that_cannot_write_breaks_the_task_with_the_path(tmp_path, small_commits,
                                                                 monkeypatch):
    clock = Clock()
    store, ctx = member(tmp_path, "a", tmp_path, clock)

    def denied(path, data, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(task_module, "write_atomically", denied)
    task = PartitionTask(ctx, ctx.plan.stages[0], 0)
    step(task)
    assert "files sink cannot write" in task.broken and "part-00000-0000000001" in task.broken
    assert [seq for _, seq, _ in store.outbox(task.id)] == [1]  # kept: nothing lost
    store.close()


# ---------------------------------------------------------------------- on real daemons

PAUSED = """
from nodes import Flow, sources, sinks
flow = Flow("paused")
(flow.source(sources.generate(600_000, lambda i: i))
     .key_by(lambda i: str(i % 97)).map_values(lambda i: i).sink(sinks.files("out")))
"""


def test_a_primary_paused_mid_flow_leaves_every_line_exactly_once(cluster, tmp_path):
    """The whole process group of partition 0's primary is stopped (a VM pause) while
    it writes, long enough for the others to take its partitions over, then continued:
    it wakes up as a stale primary with segments in its outbox. The directory, shared by
    all, holds every record exactly once."""
    three = ["n0", "n1", "n2"]
    cluster.start_many(three, replicas=2)
    victim = cluster.request("n0", "ring")["placement"][0][0]
    others = [n for n in three if n != victim]
    assert submit(cluster, others[0], write(tmp_path, "paused.py", PAUSED)).returncode == 0
    wait_for(lambda: any(s["records_in"] for s in flow_record(
        cluster, victim, "paused")["local"].values()), 30, message=f"{victim} is processing")
    os.killpg(cluster[victim].pid, signal.SIGSTOP)
    try:
        wait_for(lambda: all(cluster.statuses(n)[victim] == "dead" for n in others), 20,
                 message="the others see the paused member dead")
        wait_for(lambda: "event=partition_active" in "".join(
            cluster[n].log_path.read_text().split(f"peer={victim}", 1)[-1] for n in others),
            20, message="the others took partitions over")
    finally:
        os.killpg(cluster[victim].pid, signal.SIGCONT)
    wait_for(lambda: flow_record(cluster, others[0], "paused")["status"] == "completed", 180,
             interval=0.5, message="the flow completes")
    found = Counter()
    for path in sorted((tmp_path / "out").glob("part-*.jsonl")):
        data = path.read_bytes()
        assert b"\x00" not in data and data.endswith(b"\n"), path
        found.update(i for _, i in map(json.loads, data.decode().splitlines()))
    assert found == Counter(range(600_000))
