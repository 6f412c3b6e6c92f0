"""The flow registry: last-writer-wins records that converge whatever the delivery order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.errors import DecodeError, FlowExistsError, UnknownFlowError
from daemon.registry import FlowRecord, Registry, flow_version


def test_same_text_again_is_a_no_op():
    registry = Registry("n1")
    first, created = registry.submit("wc", "text", "/a/wc.py", "/a", ["n1"])
    again, created_again = registry.submit("wc", "text", "/b/wc.py", "/b", ["n1"])
    assert created and not created_again and again == first
    assert first.version == flow_version("text") and len(first.version) == 16


def test_every_submission_after_a_run_stopped_is_a_new_run():
    """A, then B (replace), then A again: three runs with three flow ids, none reusing
    another's state or progress; the same text after it completed runs again too."""
    from daemon.runtime import flow_id
    registry = Registry("n1")
    a1, _ = registry.submit("wc", "A", "/p", "/d", ["n1"])
    b, _ = registry.submit("wc", "B", "/p", "/d", ["n1"], replace=True)
    a2, created = registry.submit("wc", "A", "/p", "/d", ["n1"], replace=True)
    assert created and a2.version == a1.version
    assert len({flow_id(a1), flow_id(b), flow_id(a2)}) == 3
    registry.set_status("wc", "completed")
    a3, created = registry.submit("wc", "A", "/p", "/d", ["n1"])
    assert created and a3.status == "running" and flow_id(a3) != flow_id(a2)
    assert all(flow_id(r).startswith("wc@") for r in (a1, b, a2, a3))


def test_changed_text_is_refused_unless_replace():
    registry = Registry("n1")
    old, _ = registry.submit("wc", "one", "/a/wc.py", "/a", ["n1"])
    with pytest.raises(FlowExistsError, match="--replace"):
        registry.submit("wc", "two", "/a/wc.py", "/a", ["n1"])
    new, created = registry.submit("wc", "two", "/a/wc.py", "/a", ["n1"], replace=True)
    assert created and new.version == flow_version("two") and new.stamp > old.stamp
    assert registry.get("wc") == new


def test_status_changes_and_unknown_flows():
    registry = Registry("n1")
    registry.submit("wc", "text", "/a/wc.py", "/a", ["n1"])
    assert registry.set_status("wc", "failed", "boom").error == "boom"
    assert registry.get("wc").status == "failed"
    with pytest.raises(UnknownFlowError, match="no flow named 'nope' \\(flows: wc\\)"):
        registry.get("nope")
    with pytest.raises(ValueError):
        registry.set_status("wc", "paused")


def test_newer_change_wins_on_every_member_after_exchange():
    a, b = Registry("a"), Registry("b")
    record, _ = a.submit("wc", "text", "/a/wc.py", "/a", ["n1"])
    b.merge(record)
    b.set_status("wc", "cancelled")          # b's change is later: it has seen a's clock
    a.merge_wire(b.to_wire())
    assert a.get("wc").status == "cancelled"
    assert a.merge_wire(b.to_wire()) == []   # nothing new the second time


def test_records_from_the_network_are_checked():
    good = Registry("a").submit("wc", "t", "/p", "/d", ["n1"])[0].to_wire()
    for broken in [None, [], {**good, "status": "paused"}, {**good, "clock": "1"},
                   {k: v for k, v in good.items() if k != "text"}, {**good, "clock": True}]:
        with pytest.raises(DecodeError):
            FlowRecord.from_wire(broken)


SPLITS = {"lines": [{"path": "/data/in.txt", "start": 0, "end": 400, "size": 812,
                     "digest": "0123456789abcdef"},
                    {"path": "/data/in.txt", "start": 400, "end": 812, "size": 812,
                     "digest": "0123456789abcdef"}],
          "numbers": [{"start": 0, "stop": None, "step": 2}, {"start": 1, "stop": None, "step": 2}]}


def test_a_record_carries_its_splits_over_the_wire_and_to_disk():
    import json

    import msgpack

    record, _ = Registry("a").submit("wc", "t", "/p", "/d", ["n1"], splits=SPLITS)
    assert record.splits == SPLITS and "splits" not in record.summary()
    over_wire = msgpack.unpackb(msgpack.packb(record.to_wire()), raw=False)
    assert FlowRecord.from_wire(over_wire) == record
    assert FlowRecord.from_wire(json.loads(json.dumps(record.to_wire()))) == record
    b = Registry("b")
    assert b.merge_wire([over_wire]) == [record] and b.get("wc").splits == SPLITS
    assert b.set_status("wc", "failed", "boom").splits == SPLITS  # kept by every change


@pytest.mark.parametrize("splits", [
    None, [], {"lines": None}, {"lines": {}}, {1: []}, {"lines": [None]}, {"lines": [[0, 1]]},
    {"lines": [{1: 2}]}, {"lines": [{"start": -1}]}, {"lines": [{"start": True}]},
    {"lines": [{"start": 1.5}]}, {"lines": [{"path": ["/a"]}]}, {"lines": [{"digest": b"x"}]},
])
def test_malformed_splits_from_the_network_are_refused(splits):
    good = Registry("a").submit("wc", "t", "/p", "/d", ["n1"], splits=SPLITS)[0].to_wire()
    with pytest.raises(DecodeError, match="splits"):
        FlowRecord.from_wire({**good, "splits": splits})
    with pytest.raises(DecodeError, match="splits"):
        Registry("b").merge_wire([{**good, "splits": splits}])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32))
def test_members_converge_whatever_the_order(seed):
    rng = random.Random(seed)
    members = [Registry(f"n{i}") for i in range(3)]
    sent: list[dict] = []
    for _ in range(20):
        registry = rng.choice(members)
        name = rng.choice(["f1", "f2"])
        try:
            if rng.random() < 0.5:
                registry.submit(name, rng.choice(["t1", "t2"]), "/p", "/d", ["n1"],
                                replace=rng.random() < 0.5)
            else:
                registry.set_status(name, rng.choice(["completed", "cancelled", "failed"]))
        except (FlowExistsError, UnknownFlowError):
            pass
        sent.extend(registry.to_wire())
        if rng.random() < 0.3:  # partial, reordered delivery while changes go on
            rng.choice(members).merge_wire(rng.sample(sent, min(len(sent), 3)))
    for registry in members:
        shuffled = sent[:]
        rng.shuffle(shuffled)
        registry.merge_wire(shuffled)
    assert members[0].flows == members[1].flows == members[2].flows


def test_one_running_flow_per_ingest_name():
    registry = Registry("n1")
    clicks = {"source": [{"ingest": "clicks", "stage": 0}]}
    record, _ = registry.submit("a", "text a", "/p", "/d", ["n1"], splits=clicks)
    assert registry.ingest("clicks") == (record, 0) and registry.ingests() == ["clicks"]
    with pytest.raises(FlowExistsError, match="ingest 'clicks' is taken by running flow 'a'"):
        registry.submit("b", "text b", "/p", "/d", ["n1"], splits=clicks)
    registry.submit("a", "text a2", "/p", "/d", ["n1"], replace=True, splits=clicks)
    registry.set_status("a", "cancelled")
    assert registry.ingest("clicks") is None
    assert registry.submit("b", "text b", "/p", "/d", ["n1"], splits=clicks)[1]
