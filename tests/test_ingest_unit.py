"""Ingest without daemons: the task's per-producer marks (a retry never counts twice),
requests checked, and the local runner fed like the cluster (issue 10)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from daemon.errors import RequestRefusedError
from daemon.ingest import MAX_BATCH_RECORDS, check_request, producer_partition
from daemon.store import Store
from daemon.task import PRODUCER, FlowContext, Inbound, PartitionTask
from nodes import Flow, FlowError, load_flow, sinks, sources
from nodes.plan import plan
from nodes.testing import run

FLOW = """
from nodes import Flow, sources, sinks
flow = Flow("clicks")
flow.source(sources.ingest("clicks")).key_by(lambda r: r).count().sink(sinks.table())
"""


@pytest.fixture
def task(tmp_path: Path):
    with Store(tmp_path / "store", sync=False) as store:
        the_plan = plan(load_flow(FLOW, str(tmp_path / "clicks.py")))
        sent: list = []
        ctx = FlowContext("clicks@1", the_plan, 2, store,
                          lambda task, dest, seq, payload: sent.append((dest, seq)) or True)
        ctx.plan_splits()
        yield PartitionTask(ctx, the_plan.stages[0], 1, 1, ("b",))


def produce(task: PartitionTask, producer: str, first: int, records: list, answers: list
            ) -> None:
    task.receive(Inbound(PRODUCER + producer, first, False, records, answers.append), 0.0)


def test_records_past_the_mark_are_applied_once_and_answered_once_durable(task) -> None:
    answers: list = []
    produce(task, "a", 1, ["x", "y", "z"], answers)
    produce(task, "a", 1, ["x", "y", "z"], answers)  # a retry: a duplicate
    produce(task, "a", 3, ["z", "w"], answers)  # straddles the mark: only "w" is new
    produce(task, "a", 9, ["late"], answers)  # past mark + 1: not applied
    produce(task, "b", 1, ["q"], answers)  # another producer has a mark of its own
    assert task.wake_at(0.0) == 0.0 and not task.input_done
    task.step()
    assert answers == []  # committed, not durable yet
    task.on_replicated("b", task.number)
    assert answers == [[3, 3], [3, 0], [4, 1], [4, 0], [1, 1]]
    assert task.records_in == 5 and task.marks == {"p:a": 4, "p:b": 1}
    assert not task.done  # an ingest task runs until the flow is cancelled


def test_marks_survive_a_restart_from_the_store(task) -> None:
    answers: list = []
    produce(task, "a", 1, ["x", "y"], answers)
    task.step()
    task.on_replicated("b", task.number)
    again = PartitionTask(task.ctx, task.stage, 1, 2, ())
    produce(again, "a", 1, ["x", "y", "z"], answers)
    again.step()
    assert answers == [[2, 2], [3, 1]]


def test_requests_are_checked() -> None:
    ok = {"ingest": "clicks", "producer": "web-1", "first": 1, "records": [1]}
    assert check_request(ok) == ("clicks", "web-1", 1, [1])
    for bad, words in [({"producer": "has space"}, "printable"), ({"first": 0}, ">= 1"),
                       ({"records": []}, "a list of 1"), ({"ingest": 3}, "ingest name"),
                       ({"records": [0] * (MAX_BATCH_RECORDS + 1)}, "a list of 1")]:
        with pytest.raises(RequestRefusedError, match=words):
            check_request({**ok, **bad})


def test_a_producer_always_maps_to_one_partition() -> None:
    spread = Counter(producer_partition(f"p{i}", 16) for i in range(1600))
    assert producer_partition("web-1", 16) == producer_partition("web-1", 16)
    assert set(spread) == set(range(16)) and max(spread.values()) < 200


def test_the_local_runner_takes_ingest_records() -> None:
    flow = Flow("clicks")
    flow.source(sources.ingest("clicks")).key_by(lambda r: r).count().sink(sinks.table())
    words = ["a", "b", "a", "c", "a"] * 100
    assert run(flow, partitions=4, ingest={"clicks": words}).table() == Counter(words)
    with pytest.raises(FlowError, match="unbounded"):
        run(flow)
    with pytest.raises(FlowError, match="letters, digits"):
        sources.ingest("no spaces allowed")


def test_a_producer_silent_past_its_ttl_is_forgotten_and_refused_past_record_1(
        task, monkeypatch) -> None:
    import daemon.task as task_module

    answers: list = []
    produce(task, "a", 1, ["x", "y"], answers)
    produce(task, "new", 5, ["overtook"], answers)  # never seen: waits for its record 1
    task.step()
    task.on_replicated("b", task.number)
    assert answers == [[2, 2], [0, 0]]
    now = task_module.time.time()
    monkeypatch.setattr(task_module.time, "time", lambda: now + 7 * 86400 + 1)
    task._forget_at = 0.0
    produce(task, "a", 3, ["z"], answers)  # forgotten: refused, never applied
    produce(task, "b", 1, ["q"], answers)
    task.step()
    task.on_replicated("b", task.number)
    assert answers[2:] == [[0, -1], [1, 1]] and task.marks["p:a"] == 0
    produce(task, "a", 1, ["again"], answers)  # it may start again from 1
    task.step()
    task.on_replicated("b", task.number)
    assert answers[4:] == [[1, 1]]


def test_a_busy_ingest_task_answers_no_mark_and_queues_nothing_more(task) -> None:
    from daemon.task import MAX_PRODUCED_RECORDS

    answers: list = []
    produce(task, "a", 1, ["x"] * MAX_PRODUCED_RECORDS, answers)
    produce(task, "b", 1, ["y"], answers)  # busy: answered at once, not queued
    assert answers == [None] and task.inbox_records == MAX_PRODUCED_RECORDS
    task.step()
    task.on_replicated("b", task.number)
    produce(task, "b", 1, ["y"], answers)  # room again
    task.step()
    task.on_replicated("b", task.number)
    assert answers[1:] == [[MAX_PRODUCED_RECORDS, MAX_PRODUCED_RECORDS], [1, 1]]
