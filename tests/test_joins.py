"""Joins over event time (issue 11): interval, window and as-of joins, run by
nodes.testing.run for several partition counts and batch sizes."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import pytest

from nodes import Flow, FlowError, sinks, sources, windows
from nodes.testing import run
from nodes.windows import Windowed

S = timedelta(seconds=1)
HERE = "test_joins.py"
MATRIX = [(1, 1, 1), (3, 2, 3), (8, 1, 1), (8, 1000, 10)]
IDS = [f"P{p}-B{b}-C{c}" for p, b, c in MATRIX]


@pytest.fixture(params=MATRIX, ids=IDS)
def cfg(request) -> dict:
    p, b, c = request.param
    return {"partitions": p, "batch_size": b, "commit_every": c, "msgpack_state": b == 2}


def gen(items: list) -> sources.GenerateSource:
    return sources.generate(len(items), items.__getitem__)


def at(seconds: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def side(flow: Flow, name: str, items: list, max_delay: float = 5, lateness: float = 0):
    """(key, ts seconds, ...) tuples keyed by key, stamped with ts."""
    return (flow.source(gen(items), name=name)
                .event_time(lambda r: r[1], max_delay=max_delay * S,
                            allowed_lateness=lateness * S)
                .key_by(lambda r: r[0]))


def pairs(result) -> list:
    return sorted(result.published, key=repr)


ORDERS = [("o1", 0), ("o2", 5), ("o3", 100), ("o5", 200)]
PAYMENTS = [("o1", 20), ("o4", 60), ("o2", 25), ("o3", 110), ("o5", 230)]


@pytest.mark.parametrize("how, extra", [("inner", []), ("left", [("o2", (("o2", 5), None))])])
def test_expected_interval_join(cfg, how, extra):
    flow = Flow("paid")
    orders, payments = side(flow, "orders", ORDERS), side(flow, "payments", PAYMENTS)
    orders.interval_join(payments, 0 * S, 30 * S, how=how).sink(sinks.publish())
    result = run(flow, **cfg)
    assert pairs(result) == sorted([("o1", (("o1", 0), ("o1", 20))),
                                    ("o3", (("o3", 100), ("o3", 110))),
                                    ("o5", (("o5", 200), ("o5", 230)))] + extra, key=repr)
    assert result.late() == [("o2", ("right", ("o2", 25)))]  # its horizon: 60 - 5 = 55


def test_interval_join_negative_bounds_many_to_many_and_late_left(cfg):
    flow = Flow("around")
    left = side(flow, "left", [("k", 10), ("k", 20), ("k", 40), ("k", 12)], max_delay=0)
    right = side(flow, "right", [("k", 5), ("k", 8), ("k", 15), ("k", 19), ("k", 35)],
                 max_delay=100)
    joined = left.interval_join(right, -5 * S, 0 * S, how="left")
    joined.map(lambda kv: (kv[1][0][1], kv[1][1] and kv[1][1][1])).sink(sinks.publish())
    result = run(flow, **cfg)
    assert sorted(result.published, key=repr) == sorted(
        [(10, 5), (10, 8), (20, 15), (20, 19), (40, 35)], key=repr)
    assert result.late() == [("k", ("left", ("k", 12)))]


def test_interval_join_left_emits_unmatched_once_the_watermark_passes_ts_plus_upper():
    log: list = []
    flow = Flow("unmatched")
    left = side(flow, "left", [("k", 0), ("k", 50)], max_delay=0)
    right = side(flow, "right", [("k", 9), ("k", 10), ("k", 11), ("k", 30)], max_delay=0)
    (right.inspect(lambda kv: log.append(("read", kv[1][1])))
          .merge(left.inspect(lambda kv: log.append(("read", kv[1][1]))))
          .key_by(lambda kv: kv[0]).sink(sinks.publish(), name="reads"))
    (left.interval_join(right, 0 * S, 10 * S, how="left")
         .inspect(lambda kv: log.append(("out", kv[1][0][1], kv[1][1] and kv[1][1][1])))
         .sink(sinks.publish(), name="out"))
    run(flow, partitions=1, batch_size=1, commit_every=1)
    # left is read first (the right source not started: nothing passes); 50 unmatched
    # leaves once the right side's watermark passes 50 + 10: at its end of stream.
    assert log == [("read", 0), ("read", 50), ("read", 9), ("out", 0, 9), ("read", 10),
                   ("out", 0, 10), ("read", 11), ("read", 30), ("out", 50, None)]


def test_window_join_emits_every_pair_of_the_window_at_its_close(cfg):
    flow = Flow("wj")
    a = side(flow, "a", [("k", 1, "a1"), ("k", 3, "a2"), ("k", 7, "a3"), ("j", 2, "a4")])
    b = side(flow, "b", [("k", 2, "b1"), ("k", 6, "b2"), ("j", 8, "b3"), ("k", 4, "b4")])
    joined = a.map_values(lambda r: r[2]).window_join(b.map_values(lambda r: r[2]),
                                                      windows.tumbling(5 * S))
    joined.sink(sinks.publish())
    result = run(flow, **cfg)
    expected = [("k", Windowed(at(0), at(5), (x, y))) for x in ("a1", "a2") for y in ("b1", "b4")]
    expected += [("k", Windowed(at(5), at(10), ("a3", "b2")))]
    assert sorted(result.published, key=repr) == sorted(expected, key=repr)
    by_window = [r for r in result.published if r[1].start == at(0)]
    assert by_window == expected[:4]  # a window's pairs in event-time order
    assert result.late() == []


def test_window_join_sliding_and_late_records(cfg):
    flow = Flow("wjs")
    a = side(flow, "a", [("k", 1), ("k", 20), ("k", 2)], max_delay=0)
    b = side(flow, "b", [("k", 3)], max_delay=0)
    a.window_join(b, windows.sliding(10 * S, 5 * S)).sink(sinks.publish())
    result = run(flow, **cfg)
    assert sorted((w.start, w.value) for _, w in result.published) == [
        (at(-5), (("k", 1), ("k", 3))), (at(0), (("k", 1), ("k", 3)))]
    assert result.late() == [("k", ("left", ("k", 2)))]


@pytest.mark.parametrize("how, missing", [("left", [(("v", 3), None)]), ("inner", [])])
def test_join_asof_takes_the_right_value_of_greatest_ts_not_after(cfg, how, missing):
    flow = Flow(f"asof_{how}")
    clicks = side(flow, "clicks", [("u", 5), ("u", 10), ("v", 3), ("u", 30), ("u", 21),
                                   ("u", 1)], max_delay=10)
    profiles = side(flow, "profiles", [("u", 0, "p0"), ("u", 10, "p10"), ("u", 20, "p20"),
                                       ("w", 25, "pw")], max_delay=0)
    joined = clicks.join_asof(profiles.map_values(lambda r: r[2]), how=how)
    joined.map(lambda kv: kv[1]).sink(sinks.publish())
    result = run(flow, **cfg)
    assert sorted(result.published, key=repr) == sorted(
        [(("u", 5), "p0"), (("u", 10), "p10"), (("u", 30), "p20"), (("u", 21), "p20")]
        + missing, key=repr)
    assert result.late() == [("u", ("left", ("u", 1)))]  # horizon 30 - 10


def test_join_asof_late_right_record_goes_to_late():
    flow = Flow("asoflate")
    clicks = side(flow, "clicks", [("u", 5), ("u", 25)], max_delay=0)
    profiles = side(flow, "profiles", [("u", 0, "a"), ("u", 20, "b"), ("u", 4, "late")],
                    max_delay=0)
    joined = clicks.join_asof(profiles.map_values(lambda r: r[2]))
    joined.sink(sinks.publish())
    joined.late.sink(sinks.publish(), name="late")
    result = run(flow, partitions=2, batch_size=1)
    assert sorted(result.published_records["publish"], key=repr) == [
        ("u", (("u", 25), "b")), ("u", (("u", 5), "a"))]
    assert result.published_records["late"] == [("u", ("right", "late"))]


@pytest.mark.parametrize("build, message", [
    (lambda a, b, p: a.interval_join(b, 5 * S, 0 * S), "lower must be <= upper"),
    (lambda a, b, p: a.interval_join(b, 0 * S, S, how="outer"), "how must be one of"),
    (lambda a, b, p: a.join_asof(p), "needs a stream with event time on the right"),
    (lambda a, b, p: p.join_asof(a), "needs a stream with event time on the left"),
    (lambda a, b, p: a.window_join(b, windows.session(S)), r"needs windows.tumbling"),
    (lambda a, b, p: a.interval_join(Flow("other").source(gen([1])), 0 * S, S),
     "belongs to flow 'other'"),
    (lambda a, b, p: a.join_asof(b.map(str)), "needs a keyed stream on the right"),
])
def test_join_declaration_errors(build, message):
    flow = Flow("f")
    a, b = side(flow, "a", [("k", 1)]), side(flow, "b", [("k", 1)])
    plain = flow.source(gen([("k", 1)]), name="p").key_by(lambda r: r[0])
    with pytest.raises(FlowError, match=message) as err:
        build(a, b, plain)
    assert f"{HERE}:{sys._getframe().f_lineno - 1}" not in str(err.value)  # the lambda's line
    assert HERE in str(err.value) and err.value.where.split(":")[0].endswith(HERE)
