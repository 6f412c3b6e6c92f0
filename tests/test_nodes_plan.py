"""The plan: stage cuts, the feed/outbox contract, combiners, partitioning."""

from __future__ import annotations

from collections import Counter

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon import placement
from nodes import Flow, sinks, sources
from nodes.plan import partition_of, plan, route


def gen(items: list) -> sources.GenerateSource:
    return sources.generate(len(items), items.__getitem__)


def shape(p) -> list[tuple]:
    return [(s.id, s.kind, s.source, s.head_kind, s.inputs, s.steps, s.outputs, s.partials)
            for s in p.stages]


def wordcount() -> Flow:
    flow = Flow("wordcount")
    (flow.source(gen(["a b a", "b c"])).flat_map(str.split).key_by(lambda w: w).count()
         .sink(sinks.table()))
    return flow


def test_wordcount_is_two_stages_cut_at_key_by():
    p = plan(wordcount())
    assert shape(p) == [
        (0, "source", "source", None, (), ("flat_map", "key_by"), (1,), False),
        (1, "keyed", None, "count", (0,), (), ("table",), True),
    ]
    assert list(p.sources) == ["source"] and list(p.sinks) == ["table"]
    assert msgpack.unpackb(msgpack.packb(p.describe())) == p.describe()


def test_source_stage_sends_one_partial_per_key_over_all_batches_of_a_commit():
    stage = plan(wordcount()).stages[0]
    outbox = stage.outbox()
    stage.feed(["a b a", "c"], None, outbox)
    stage.feed(["b a"], None, outbox)
    assert sorted(outbox.drain()[1]) == [("a", 3), ("b", 2), ("c", 1)]
    assert outbox.drain() == {}
    assert stage.process(["x x"]) == {1: [("x", 2)]}


def test_keyed_stage_merges_partials_into_state_and_reports_touched_keys():
    stage = plan(wordcount()).stages[1]
    state = {"a": 5}
    outbox = stage.outbox()
    stage.feed([("a", 2), ("b", 1)], state, outbox)
    stage.feed([("b", 4)], state, outbox)
    assert state == {"a": 7, "b": 5}
    assert outbox.touched == {"a", "b"}
    assert outbox.drain() == {"table": [("a", 7), ("b", 1), ("b", 5)]}
    assert outbox.touched == set()
    assert msgpack.unpackb(msgpack.packb(state)) == state  # count state is msgpack-able


def test_filter_inspect_map_values_run_before_the_shuffle():
    flow = Flow("f")
    (flow.source(gen([1])).key_by(str).filter(bool).inspect(print).map_values(float).sum()
         .sink(sinks.publish()))
    assert shape(plan(flow)) == [
        (0, "source", "source", None, (), ("key_by", "filter", "inspect", "map_values"), (1,),
         False),
        (1, "keyed", None, "sum", (0,), (), ("publish",), True),
    ]


def test_key_by_into_non_keyed_steps_makes_a_shuffle_stage():
    flow = Flow("f")
    keyed = flow.source(gen([1])).key_by(str)
    keyed.map(repr).sink(sinks.publish())
    keyed.fold(0, max).sink(sinks.table())
    p = plan(flow)
    assert shape(p) == [
        (0, "source", "source", None, (), ("key_by",), (1, 2), False),
        (1, "shuffle", None, None, (0,), ("map",), ("publish",), False),
        (2, "keyed", None, "fold", (0,), (), ("table",), False),
    ]
    assert p.stages[1].name == "shuffle:key_by"
    assert p.stages[0].process([7]) == {1: [("7", 7)], 2: [("7", 7)]}


def test_merge_duplicates_stateless_steps_into_each_source_stage():
    flow = Flow("f")
    a = flow.source(gen(["a"]), name="a")
    b = flow.source(gen(["b"]), name="b")
    a.merge(b).map(str.upper, name="up").key_by(str).count().sink(sinks.table())
    assert shape(plan(flow)) == [
        (0, "source", "a", None, (), ("up", "key_by"), (2,), False),
        (1, "source", "b", None, (), ("up", "key_by"), (2,), False),
        (2, "keyed", None, "count", (0, 1), (), ("table",), True),
    ]


def test_keyed_op_after_keyed_op_is_a_new_stage():
    flow = Flow("f")
    (flow.source(gen(["a"])).key_by(str).count().filter(bool).reduce(max)
         .map(str).sink(sinks.publish()))
    assert shape(plan(flow)) == [
        (0, "source", "source", None, (), ("key_by",), (1,), False),
        (1, "keyed", None, "count", (0,), ("filter",), (2,), True),
        (2, "keyed", None, "reduce", (1,), ("map",), ("publish",), True),
    ]


def test_merging_a_stream_with_itself_doubles_it():
    flow = Flow("f")
    s = flow.source(gen(["a"]))
    s.merge(s).sink(sinks.publish())
    s.key_by(str).merge(s.key_by(str, name="k2")).count().sink(sinks.table())
    p = plan(flow)
    out = p.stages[0].process(["a"])
    assert out["publish"] == ["a", "a"] and out[1] == [("a", 2)]


def test_stage_descriptions_and_splits_are_msgpack_able(tmp_path):
    (tmp_path / "a.txt").write_text("x\ny\n")
    flow = Flow("f", base_dir=tmp_path)
    flow.source(sources.files("*.txt")).sink(sinks.files("out"))
    p = plan(flow)
    assert msgpack.unpackb(msgpack.packb(p.describe())) == p.describe()
    splits = p.sources["source"].splits(4)
    assert msgpack.unpackb(msgpack.packb(splits)) == splits
    assert p.sinks["files"].file_for(3) == tmp_path / "out" / "part-00003.jsonl"


@given(st.one_of(st.text(max_size=20), st.binary(max_size=20)))
def test_partition_of_is_placement_for_powers_of_two(key):
    raw = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    for P in (1, 2, 8, 256):
        assert partition_of(key, P) == placement.partition_of(raw, P)
    assert 0 <= partition_of(key, 3) < 3


def test_route_keeps_order_within_partitions():
    records = [(f"k{i % 17}", i) for i in range(200)]
    for P in (1, 3, 8):
        parts = route(records, P)
        assert len(parts) == P
        assert sorted(r for part in parts for r in part) == sorted(records)
        for p, part in enumerate(parts):
            assert all(partition_of(k, P) == p for k, _ in part)
            assert [i for _, i in part] == sorted(i for _, i in part)


def test_partition_of_spreads_keys():
    counts = Counter(partition_of(f"word{i}", 8) for i in range(8000))
    assert len(counts) == 8 and min(counts.values()) > 850


def test_plan_validates():
    flow = Flow("f")
    flow.source(gen([1]))
    with pytest.raises(Exception, match="has no sink"):
        plan(flow)
