"""Splits fixed at submit (issue 9, finding 7): made once where the flow is submitted,
read by every member from the flow's record, refused on a member whose file differs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import xxhash

from daemon.flows import FlowService
from daemon.registry import Registry
from daemon.store import Store
from daemon.task import FlowContext, PartitionTask, decode_batch
from daemon.worker import source_splits
from nodes import FlowError, load_flow
from nodes.plan import plan

FLOW = """
from nodes import Flow, sources, sinks
flow = Flow("wc")
(flow.source(sources.files("data/*.txt", min_split_bytes=100), name="lines")
     .flat_map(str.split).key_by(lambda w: w).count().sink(sinks.table()))
"""
P = 4


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "store", sync=False) as s:
        yield s


def flow_file(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("x y\n" * 100)  # 400 bytes: 4 splits
    (tmp_path / "data" / "b.txt").write_text("z\n")
    return FLOW, str(tmp_path / "wc.py")


def context(store: Store, text: str, path: str, fixed: dict | None) -> FlowContext:
    ctx = FlowContext("wc@1", plan(load_flow(text, path)), P, store, lambda *sent: True)
    ctx.plan_splits(None, fixed)
    return ctx


def test_the_submitting_daemon_splits_once_with_each_files_identity(tmp_path):
    text, path = flow_file(tmp_path)
    splits = source_splits(text, path, P)["splits"]
    a, b = str(tmp_path / "data" / "a.txt"), str(tmp_path / "data" / "b.txt")
    digest_a = xxhash.xxh3_64(b"x y\n" * 100).hexdigest()
    assert splits == {"lines": [
        *({"path": a, "start": s, "end": s + 100, "size": 400, "digest": digest_a}
          for s in range(0, 400, 100)),
        {"path": b, "start": 0, "end": 2, "size": 2, "digest": xxhash.xxh3_64(b"z\n").hexdigest()}]}
    error = source_splits(text.replace("data/*.txt", "nothing/*.txt"), path, P)["error"]
    assert "sources.files('nothing/*.txt') matched no files" in error


def test_every_member_plans_from_the_records_splits(store, tmp_path):
    text, path = flow_file(tmp_path)
    fixed = {"lines": source_splits(text, path, P)["splits"]["lines"][:2]}
    ctx = context(store, text, path, fixed)
    assert ctx.splits == fixed and ctx.split_partitions == {"lines": [0, 1]}
    (tmp_path / "data" / "c.txt").write_text("late\n")  # not there at submit: not read
    words: Counter = Counter()
    for p in (0, 1):
        task = PartitionTask(ctx, ctx.plan.stages[0], p)
        task.step()
        for _, _, payload in store.outbox(task.id):
            words.update(dict(decode_batch(payload)[1]))
    assert words == {"x": 50, "y": 50}  # a.txt's first 200 bytes, nothing else


@pytest.mark.parametrize("fixed, match", [
    ({}, "no valid splits for source 'lines'"),
    ({"lines": [{"start": 0, "stop": 3, "step": 1}]}, "no valid splits for source 'lines'"),
])
def test_splits_that_do_not_fit_the_flow_fail_it(store, tmp_path, fixed, match):
    text, path = flow_file(tmp_path)
    with pytest.raises(FlowError, match=match):
        context(store, text, path, fixed)


def test_a_task_refuses_a_file_other_than_at_submit(store, tmp_path):
    text, path = flow_file(tmp_path)
    ctx = context(store, text, path, source_splits(text, path, P)["splits"])
    (tmp_path / "data" / "a.txt").write_text("x y\n" * 101)
    task = PartitionTask(ctx, ctx.plan.stages[0], ctx.split_partitions["lines"][0])
    with pytest.raises(FlowError) as err:
        task.step()
    assert str(err.value) == (
        f"step 'lines' (source, declared at {path}:4): "
        f"{tmp_path / 'data' / 'a.txt'} differs from the file the flow was submitted with "
        "(404 bytes here, 400 at submit): every member must see the same files under the "
        "same path; resubmit once they do")


def test_a_flow_failed_by_a_member_names_that_member_once():
    """The runtime's error does not know the member; the daemon that reports it adds it."""
    service = FlowService.__new__(FlowService)  # only what failing a flow uses
    service.node = SimpleNamespace(name="c")
    service.registry = Registry("c")
    service.spread = lambda **fields: None
    record, _ = service.registry.submit("wc", "text", "/f/wc.py", "/f", ["a", "b", "c"])
    service._fail(record, "stage 'lines' partition 3: /data/in.txt differs ...")
    failed = service.registry.get("wc")
    assert (failed.status, failed.error) == (
        "failed", "member c: stage 'lines' partition 3: /data/in.txt differs ...")
