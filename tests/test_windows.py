"""Event time and windows (issue 11), run by nodes.testing.run: the issue's expected
outputs, each semantic point, declaration errors, and the stage contract."""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import msgpack
import pytest

from nodes import Flow, FlowError, sinks, sources, windows
from nodes.eventtime import MAX_TIME, MIN_TIME, to_ms
from nodes.plan import plan, route
from nodes.testing import run
from nodes.windowops import COMBINED
from nodes.windows import Windowed

S = timedelta(seconds=1)
HERE = "test_windows.py"
MATRIX = [(1, 1, 1), (3, 4, 2), (8, 1, 1), (8, 1000, 10)]
IDS = [f"P{p}-B{b}-C{c}" for p, b, c in MATRIX]


@pytest.fixture(params=MATRIX, ids=IDS)
def cfg(request) -> dict:
    p, b, c = request.param
    return {"partitions": p, "batch_size": b, "commit_every": c}


def lineno() -> int:
    return sys._getframe(1).f_lineno


def gen(items: list) -> sources.GenerateSource:
    return sources.generate(len(items), items.__getitem__)


def at(seconds: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def rows(result, sink: str | None = None) -> list[tuple]:
    """(key, start s, end s, value) per row, sorted."""
    return [(k, w.start.timestamp(), w.end.timestamp(), w.value)
            for k, w in result.rows(sink)]


def stamped(flow: Flow, items: list, max_delay: float, lateness: float = 0, **kw):
    """A one-key timed stream of (ts seconds, tag) records, or plain seconds."""
    return (flow.source(gen(items), **kw)
                .event_time(lambda r: r[0] if isinstance(r, tuple) else r,
                            max_delay=max_delay * S, allowed_lateness=lateness * S)
                .key_by(lambda r: "k"))


def write_jsonl(directory, files: dict[str, list]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in records))


# -- the expected outputs ---------------------------------------------------------------

def test_expected_tumbling_count(cfg):
    flow = Flow("tumbling")
    counts = (stamped(flow, [1, 12, 8, 19, 11, 3, 25, 14, 23], max_delay=5)
              .window(windows.tumbling(10 * S)).count())
    counts.sink(sinks.table())
    result = run(flow, **cfg)
    assert rows(result) == [("k", 0, 10, 2), ("k", 10, 20, 3), ("k", 20, 30, 2)]
    assert result.late() == [("k", 3), ("k", 14)]


@pytest.mark.parametrize("kind", ["tumbling", "sliding"])
@pytest.mark.parametrize("agg", ["count", "sum"])
def test_combining_before_the_shuffle_changes_no_row(cfg, kind, agg):
    """Without an input that may idle, count and sum combine per window on the sending
    side; with ``idle_after`` declared (the local runner never idles) they do not: the
    same rows and the same late records either way."""
    rng = random.Random(5)
    items = [(i / 10 - (rng.random() * 15 if rng.random() < 0.2 else 0), i % 7)
             for i in range(2000)]
    windower = windows.tumbling(10 * S) if kind == "tumbling" else \
        windows.sliding(10 * S, 5 * S)
    results = []
    for idle in (None, timedelta(hours=1)):
        flow = Flow("combined")
        keyed = (flow.source(gen(items))
                     .event_time(lambda r: r[0], max_delay=3 * S, idle_after=idle)
                     .key_by(lambda r: f"k{r[1] % 3}").map_values(lambda r: r[1]))
        w = keyed.window(windower)
        (w.count() if agg == "count" else w.sum()).sink(sinks.table())
        stage = plan(flow).stages[1]
        assert stage.partials == (idle is None)  # combined only when no input idles
        result = run(flow, **cfg)
        results.append((rows(result), sorted(result.late())))
    assert results[0] == results[1] and results[0][0] and results[0][1]


@pytest.mark.parametrize("order, expected, late", [
    ([0, 5, 22, 25, 14, 60], [("k", 0, 35, 5), ("k", 60, 70, 1)], []),
    ([0, 5, 22, 25, 60, 14], [("k", 0, 15, 2), ("k", 22, 35, 2), ("k", 60, 70, 1)],
     [("k", 14)]),
])
def test_expected_sessions(cfg, order, expected, late):
    flow = Flow("sessions")
    counts = stamped(flow, order, max_delay=15).window(windows.session(10 * S)).count()
    counts.sink(sinks.table())
    result = run(flow, **cfg)
    assert rows(result) == expected
    assert result.late() == late


# -- 1: event_time ------------------------------------------------------------------------------

def test_event_time_takes_aware_datetimes_and_epoch_seconds_to_the_millisecond():
    assert [to_ms(v) for v in (2, 2.0004, 2.0006, at(2.5), at(-1))] == [2000, 2000, 2001,
                                                                         2500, -1000]
    berlin = timezone(timedelta(hours=1))
    assert to_ms(datetime(1970, 1, 1, 1, 0, 3, 999999, tzinfo=berlin)) == 3999
    flow = Flow("kinds")
    items = [{"t": 1}, {"t": 4.9996}, {"t": at(5.0004)}, {"t": at(9.999)}]
    (flow.source(gen(items)).event_time(lambda r: r["t"], max_delay=0 * S)
         .key_by(lambda r: "k").window(windows.tumbling(5 * S)).collect()
         .sink(sinks.table()))
    result = run(flow, partitions=2)
    assert result.rows() == [
        ("k", Windowed(at(0), at(5), [{"t": 1}])),
        ("k", Windowed(at(5), at(10), [{"t": 4.9996}, {"t": at(5.0004)}, {"t": at(9.999)}]))]
    start = result.rows()[0][1].start
    assert start.tzinfo is UTC and start.utcoffset() == timedelta(0)


def test_a_naive_datetime_fails_naming_the_step_and_function():
    flow = Flow("naive")
    line = lineno() + 1
    stream = flow.source(gen([datetime(2024, 1, 1)])).event_time(lambda r: r, max_delay=S)
    stream.key_by(lambda r: "k").window(windows.tumbling(S)).count().sink(sinks.table())
    with pytest.raises(FlowError) as err:
        run(flow)
    message = str(err.value)
    assert f"step 'event_time' (event_time, declared at tests/{HERE}:{line})" in message
    assert "returned datetime" in message and "naive datetime" in message


def test_files_and_jsonl_split_per_file_with_event_time(tmp_path):
    write_jsonl(tmp_path / "in", {f"{i}.jsonl": [{"t": j} for j in range(300)]
                                  for i in range(3)})
    flow = Flow("perfile", base_dir=tmp_path)
    src = flow.source(sources.jsonl("in/*.jsonl", min_split_bytes=100))
    (src.event_time(lambda r: r["t"], max_delay=S).key_by(lambda r: "k")
        .window(windows.tumbling(100 * S)).count().sink(sinks.table()))
    source = plan(flow).sources["source"]
    assert source.timed
    for parallelism in (1, 4, 64):
        assert [(s["path"].rsplit("/", 1)[1], s["start"], s["end"])
                for s in source.splits(parallelism)] == [
            (f"{i}.jsonl", 0, (tmp_path / "in" / f"{i}.jsonl").stat().st_size)
            for i in range(3)]
    plain = Flow("ranges", base_dir=tmp_path)
    plain.source(sources.jsonl("in/*.jsonl", min_split_bytes=100)).sink(sinks.publish())
    assert len(plan(plain).sources["source"].splits(64)) > 3  # byte ranges without it
    assert rows(run(flow, partitions=4)) == [("k", 0, 100, 300), ("k", 100, 200, 300),
                                             ("k", 200, 300, 300)]


def test_generate_splits_do_not_depend_on_partitions_with_event_time():
    flow = Flow("gen")
    (flow.source(sources.generate(250_000, float)).event_time(lambda r: r, max_delay=S)
         .key_by(lambda r: "k").window(windows.tumbling(S)).count().sink(sinks.table()))
    source = plan(flow).sources["source"]
    expected = [{"start": 0, "stop": 100_000, "step": 1},
                {"start": 100_000, "stop": 200_000, "step": 1},
                {"start": 200_000, "stop": 250_000, "step": 1}]
    assert source.splits(1) == source.splits(8) == expected


# -- 2, 4: watermarks and firing ------------------------------------------------------------------

def test_watermark_is_the_minimum_over_splits_and_tasks_and_fires_at_window_end(tmp_path):
    """Split A is read first; split B (not started: minus infinity) holds every window
    back; then B's watermark (its max ts) fires [0,10) once it reaches 10."""
    write_jsonl(tmp_path / "in", {"a.jsonl": [0, 5, 10, 15, 20, 25],
                                  "b.jsonl": [0, 5, 10, 15, 20, 25]})
    reads = [("read", t) for t in (0, 5, 10, 15, 20, 25)]
    for partitions in (1, 2):
        log = logged_run(tmp_path, partitions)
        assert log == reads + reads[:3] + [("fire", 0, 4)] + reads[3:5] + [
            ("fire", 10, 4), ("read", 25), ("fire", 20, 4)], partitions


def logged_run(tmp_path, partitions: int) -> list:
    log: list = []
    flow = Flow("marks", base_dir=tmp_path)
    (flow.source(sources.jsonl("in/*.jsonl")).event_time(lambda t: t, max_delay=0 * S)
         .inspect(lambda t: log.append(("read", t)))
         .key_by(lambda t: "k").window(windows.tumbling(10 * S)).count()
         .inspect(lambda kw: log.append(("fire", kw[1].start.timestamp(), kw[1].value)))
         .sink(sinks.publish()))
    run(flow, partitions=partitions, batch_size=1, commit_every=1)
    return log


def test_a_join_waits_for_the_source_not_started_yet():
    log: list = []
    flow = Flow("twosources")
    a = stamped(flow, [0, 30, 60], max_delay=0, name="a")
    b = stamped(flow, [1, 31, 61], max_delay=0, name="b")
    (a.merge(b).inspect(lambda kv: log.append(("read", kv[1])))
      .window(windows.tumbling(10 * S)).count()
      .inspect(lambda kw: log.append(("fire", kw[1].start.timestamp())))
      .sink(sinks.table()))
    result = run(flow, partitions=2, batch_size=1, commit_every=1)
    assert rows(result) == [("k", 0, 10, 2), ("k", 30, 40, 2), ("k", 60, 70, 2)]
    assert log == [("read", 0), ("read", 30), ("read", 60), ("read", 1), ("read", 31),
                   ("fire", 0), ("read", 61), ("fire", 30), ("fire", 60)]


def test_stage_contract_split_time_watermarks_advance_and_msgpack_state():
    flow = Flow("contract")
    w = (flow.source(gen([])).event_time(lambda r: r, max_delay=2 * S)
             .key_by(lambda r: "k").window(windows.tumbling(10 * S)).count())
    w.sink(sinks.table())
    w.late.sink(sinks.publish(), name="late")
    source, window = plan(flow).stages
    assert (source.event_time.max_delay, window.timed, window.inputs) == (2000, True, (0,))
    outbox = source.outbox()
    split_time = source.feed([3, 1, 12], None, outbox)
    assert split_time == 12000
    assert source.split_watermark(split_time, False) == 10000
    assert source.split_watermark(None, False) == MIN_TIME
    assert source.split_watermark(split_time, True) == MAX_TIME
    split_time = source.feed([4], None, outbox, split_time)  # behind 12 - 2: late
    assert split_time == 12000
    sent = outbox.drain()[1]
    # a count with no input that may idle combines per window before the shuffle; the late
    # record goes as its row (key, ts, bound, value), its value kept for .late
    assert sent == [("k", 0, COMBINED, 2), ("k", 10000, COMBINED, 1), ("k", 4000, 10000, 4)]
    assert route(sent, 4)[next(i for i, p in enumerate(route(sent, 4)) if p)] == sent
    state: dict = {}
    out = window.outbox()
    window.feed(sent, state, out)
    assert out.late == {"window": [("k", 4)]}
    assert out.drain() == {"late": [("k", 4)]}
    restored = {msgpack.unpackb(msgpack.packb(k), strict_map_key=False, use_list=False):
                msgpack.unpackb(msgpack.packb(v), strict_map_key=False, use_list=False)
                for k, v in state.items()}
    assert restored == {None: (MIN_TIME, 10000), "k": {0: 2, 10000: 1}}
    window.advance(9999, restored, out)
    assert out.drain() == {}
    window.advance(10000, restored, out)
    assert out.touched == {None, "k"}
    assert out.drain() == {"table": [("k", Windowed(at(0), at(10), 2))]}
    window.advance(10000, restored, out)  # idempotent
    window.advance(MAX_TIME, restored, out)
    assert out.drain() == {"table": [("k", Windowed(at(10), at(20), 1))]}
    assert restored == {None: [MAX_TIME, MAX_TIME]}


# -- 3: lateness ----------------------------------------------------------------------------------

def test_sliding_record_joins_only_the_windows_that_end_after_its_horizon(cfg):
    flow = Flow("sliding_late")
    (stamped(flow, [12, 4, 8], max_delay=0).window(windows.sliding(10 * S, 5 * S)).count()
        .sink(sinks.table()))
    result = run(flow, **cfg)
    assert rows(result) == [("k", 5, 15, 2), ("k", 10, 20, 1)]
    assert result.late() == [("k", 4)]


def test_lateness_is_per_split_not_per_arrival(tmp_path, cfg):
    """File b is far behind file a, but in order within itself: nothing is late."""
    write_jsonl(tmp_path / "in", {"a.jsonl": [100, 101, 102], "b.jsonl": [0, 1, 2, 50]})
    flow = Flow("persplit", base_dir=tmp_path)
    (flow.source(sources.jsonl("in/*.jsonl")).event_time(lambda t: t, max_delay=0 * S)
         .key_by(lambda t: "k").window(windows.tumbling(10 * S)).count()
         .sink(sinks.table()))
    result = run(flow, **cfg)
    assert rows(result) == [("k", 0, 10, 3), ("k", 50, 60, 1), ("k", 100, 110, 3)]
    assert result.late() == []


def test_allowed_lateness_overwrites_the_row_with_each_accepted_record():
    flow = Flow("lateness")
    counts = (stamped(flow, [1, 12, 7, 9, 16, 8], max_delay=0, lateness=5)
              .window(windows.tumbling(10 * S)).count())
    counts.sink(sinks.table())
    counts.sink(sinks.publish())
    result = run(flow, partitions=1, batch_size=1, commit_every=1)
    assert [(w.start.timestamp(), w.value) for _, w in result.published] == [
        (0, 1), (0, 2), (0, 3), (10, 2)]
    assert rows(result) == [("k", 0, 10, 3), ("k", 10, 20, 2)]
    assert result.late() == [("k", 8)]  # 16 - 5 > 10: [0,10) is gone


def test_allowed_lateness_results_do_not_depend_on_batching(cfg):
    flow = Flow("lateness2")
    (stamped(flow, [1, 12, 7, 9, 16, 8, 3, 30, 19, 22], max_delay=0, lateness=5)
        .window(windows.tumbling(10 * S)).sum().sink(sinks.table()))
    flow2 = Flow("lateness2b")
    (flow2.source(gen([1, 12, 7, 9, 16, 8, 3, 30, 19, 22]))
          .event_time(lambda t: t, max_delay=0 * S, allowed_lateness=5 * S)
          .key_by(lambda t: "k").window(windows.tumbling(10 * S)).sum()
          .sink(sinks.table()))
    result = run(flow2, **cfg)
    # horizons: -, 1, 12, 12, 12, 16, 16, 16, 30, 30; bounds 5 less
    assert rows(result) == [("k", 0, 10, 1 + 7 + 9), ("k", 10, 20, 12 + 16),
                            ("k", 20, 30, 22), ("k", 30, 40, 30)]
    assert result.late() == [("k", 8), ("k", 3), ("k", 19)]


# -- 5: windows -----------------------------------------------------------------------------------

def test_tumbling_offset_aligns_windows():
    flow = Flow("offset")
    (stamped(flow, [0, 2, 3, 11, 13], max_delay=100)
        .window(windows.tumbling(10 * S, offset=3 * S)).count().sink(sinks.table()))
    assert rows(run(flow)) == [("k", -7, 3, 2), ("k", 3, 13, 2), ("k", 13, 23, 1)]


def test_sliding_windows_equal_plain_python(cfg):
    times = [i * 0.7 for i in range(200)]
    flow = Flow("sliding")
    (flow.source(gen(times)).event_time(lambda t: t, max_delay=0 * S)
         .key_by(lambda t: "even" if int(t) % 2 == 0 else "odd")
         .window(windows.sliding(6 * S, 2 * S)).count().sink(sinks.table()))
    expected = Counter()
    for t in times:
        ms = round(t * 1000)
        for start in range(ms - ms % 2000, ms - 6000, -2000):
            expected[("even" if int(t) % 2 == 0 else "odd", start / 1000)] += 1
    assert {(k, s): v for k, s, _, v in rows(run(flow, **cfg))} == expected


def test_session_merges_on_a_bridging_record(cfg):
    flow = Flow("bridge")
    (stamped(flow, [0, 18, 9, 40], max_delay=20).window(windows.session(10 * S)).count()
        .sink(sinks.table()))
    result = run(flow, **cfg)
    assert rows(result) == [("k", 0, 28, 3), ("k", 40, 50, 1)]


def test_session_records_exactly_gap_apart_are_two_sessions():
    flow = Flow("gap")
    (stamped(flow, [0, 10, 20], max_delay=20).window(windows.session(10 * S)).count()
        .sink(sinks.table()))
    assert rows(run(flow)) == [("k", 0, 10, 1), ("k", 10, 20, 1), ("k", 20, 30, 1)]


def test_a_fired_session_is_never_reopened(cfg):
    flow = Flow("fired")
    (stamped(flow, [0, 8, 20, 45, 14, 5], max_delay=0).window(windows.session(10 * S))
        .count().sink(sinks.table()))
    result = run(flow, **cfg)
    assert rows(result) == [("k", 0, 18, 2), ("k", 20, 30, 1), ("k", 45, 55, 1)]
    assert result.late() == [("k", 14), ("k", 5)]


def test_session_allowed_lateness_accepts_a_bridging_record_until_end_plus_lateness(cfg):
    flow = Flow("sessionlate")
    (stamped(flow, [0, 8, 20, 45, 14], max_delay=0, lateness=31)
        .window(windows.session(10 * S)).count().sink(sinks.table()))
    result = run(flow, **cfg)
    assert rows(result) == [("k", 0, 30, 4), ("k", 45, 55, 1)]
    assert result.late() == []


# -- 6: output and aggregations ------------------------------------------------------------------

def test_collect_is_in_event_time_order_ties_in_read_order(cfg):
    flow = Flow("collect")
    items = [(5, "a"), (3, "b"), (5, "c"), (1, "d"), (3, "e"), (12, "f")]
    (stamped(flow, items, max_delay=100).map_values(lambda r: r[1])
        .window(windows.tumbling(10 * S)).collect().sink(sinks.table()))
    result = run(flow, **cfg, msgpack_state=True)
    assert rows(result) == [("k", 0, 10, ["d", "b", "e", "a", "c"]), ("k", 10, 20, ["f"])]


ITEMS = [(i % 17, i) for i in range(60)]
BY_WINDOW: dict[float, list] = {}
for _t, _v in sorted(ITEMS, key=lambda tv: tv[0]):  # event-time order, ties in read order
    BY_WINDOW.setdefault(_t // 5 * 5, []).append(_v)


@pytest.mark.parametrize("agg, args, expected", [
    ("sum", (), {s: sum(vs) for s, vs in BY_WINDOW.items()}),
    ("reduce", (max,), {s: max(vs) for s, vs in BY_WINDOW.items()}),
    ("fold", ("", lambda acc, v: acc + f"{v},"),
     {s: "".join(f"{v}," for v in vs) for s, vs in BY_WINDOW.items()}),
    ("fold", (list, lambda acc, v: [*acc, v]), BY_WINDOW),
])
def test_sum_reduce_fold_per_window(cfg, agg, args, expected):
    flow = Flow("aggs")
    windowed = (stamped(flow, ITEMS, max_delay=20).map_values(lambda r: r[1])
                .window(windows.tumbling(5 * S)))
    getattr(windowed, agg)(*args).sink(sinks.table())
    got = {s: v for _, s, _, v in rows(run(flow, **cfg, msgpack_state=True))}
    assert got == expected


def test_table_keeps_one_row_per_key_and_window_start_and_files_get_iso_times(tmp_path):
    flow = Flow("out", base_dir=tmp_path)
    counts = (flow.source(gen([(0, "a"), (1, "b"), (11, "a"), (2, "a")]))
                  .event_time(lambda r: r[0], max_delay=5 * S).key_by(lambda r: r[1])
                  .window(windows.tumbling(10 * S)).count())
    counts.sink(sinks.table())
    counts.sink(sinks.files("out"))
    result = run(flow, partitions=1)
    assert result.table() == {("a", at(0)): Windowed(at(0), at(10), 2),
                              ("a", at(10)): Windowed(at(10), at(20), 1),
                              ("b", at(0)): Windowed(at(0), at(10), 1)}
    written = sorted((json.loads(line) for line in
                      (tmp_path / "out" / "part-00000.jsonl").read_text().splitlines()),
                     key=lambda row: (row[0], row[1]["start"]))
    zero, ten, twenty = (f"1970-01-01T00:00:{s}+00:00" for s in ("00", "10", "20"))
    assert written == [["a", {"start": zero, "end": ten, "value": 2}],
                       ["a", {"start": ten, "end": twenty, "value": 1}],
                       ["b", {"start": zero, "end": ten, "value": 1}]]


def test_late_stream_goes_to_sinks_and_unused_late_is_dropped_and_counted(cfg):
    items = [1, 12, 8, 19, 11, 3, 25, 14, 23]
    flow = Flow("late")
    counts = stamped(flow, items, max_delay=5).window(windows.tumbling(10 * S)).count()
    counts.sink(sinks.table())
    counts.late.map_values(lambda t: t * 10).sink(sinks.publish())
    result = run(flow, **cfg)
    assert result.published == [("k", 30), ("k", 140)]
    assert result.late() == [("k", 3), ("k", 14)]
    assert counts.late.step is counts.late.step  # one .late step per window
    quiet = Flow("quiet")
    stamped(quiet, items, max_delay=5).window(windows.tumbling(10 * S)).count(
        name="per10").sink(sinks.table())
    result = run(quiet, **cfg)
    assert result.late_records == {"per10": [("k", 3), ("k", 14)]}
    assert result.plan.stages[1].describe()["timed"] is True


# -- declaration errors ---------------------------------------------------------------------------

def test_window_on_a_stream_without_event_time():
    keyed = Flow("f").source(gen([1])).key_by(str)
    at_line = lineno() + 2
    with pytest.raises(FlowError) as err:
        keyed.window(windows.tumbling(S))
    assert f"window() at tests/{HERE}:{at_line} needs a stream with event time" in str(err.value)
    assert "declare it on the source's stream" in str(err.value)
    assert err.value.where.endswith(f"{HERE}:{at_line}")


def test_window_after_a_shuffle_lost_event_time():
    flow = Flow("f")
    keyed = (flow.source(gen([1])).event_time(lambda r: r, max_delay=S).key_by(str)
             .map(lambda kv: kv[1]).key_by(str))
    with pytest.raises(FlowError, match="event time ends at a shuffle"):
        keyed.window(windows.tumbling(S))


def test_window_on_a_plain_stream():
    stream = Flow("f").source(gen([1])).event_time(lambda r: r, max_delay=S)
    with pytest.raises(FlowError, match=r"window\(\) at .* needs a keyed stream"):
        stream.window(windows.tumbling(S))


@pytest.mark.parametrize("build", [
    lambda s: s.key_by(str).map(str),                 # after a shuffle
    lambda s: s.key_by(str).count(),                  # after a keyed operator
])
def test_event_time_after_a_shuffle(build):
    stream = build(Flow("f").source(gen([1])))
    line = lineno() + 2
    with pytest.raises(FlowError) as err:
        stream.event_time(lambda r: 1, max_delay=S)
    assert f"event_time() at tests/{HERE}:{line} must be declared in its source's stage" \
        in str(err.value)


def test_event_time_after_key_by_stays_in_the_source_stage(cfg):
    flow = Flow("keyfirst")
    (flow.source(gen([1, 12, 8, 19, 11, 3, 25, 14, 23])).key_by(lambda t: "k")
         .event_time(lambda kv: kv[1], max_delay=5 * S)
         .window(windows.tumbling(10 * S)).count().sink(sinks.table()))
    result = run(flow, **cfg)
    assert rows(result) == [("k", 0, 10, 2), ("k", 10, 20, 3), ("k", 20, 30, 2)]


def test_event_time_declared_twice():
    flow = Flow("f")
    stream = flow.source(gen([1])).event_time(lambda r: r, max_delay=S).map(str)
    with pytest.raises(FlowError, match="already has event time, declared at"):
        stream.event_time(lambda r: r, max_delay=S)
    flow = Flow("g")
    src = flow.source(gen([1]))
    src.event_time(lambda r: r, max_delay=S).key_by(str).window(
        windows.tumbling(S)).count().sink(sinks.table())
    src.event_time(lambda r: r, max_delay=S).key_by(str).window(
        windows.tumbling(S)).count().sink(sinks.table(), name="t2")
    with pytest.raises(FlowError, match="the records of a source get one event time"):
        plan(flow)


@pytest.mark.parametrize("call, message", [
    (lambda: windows.sliding(10 * S, 3 * S),
     r"windows.sliding\(\) at .*: size must be a multiple of every"),
    (lambda: windows.tumbling(0 * S), "size must be greater than zero"),
    (lambda: windows.tumbling(10), "size must be a datetime.timedelta"),
    (lambda: windows.session(timedelta(microseconds=1500)), "whole number of milliseconds"),
    (lambda: Flow("f").source(gen([1])).event_time(lambda r: r, max_delay=5),
     "max_delay must be a datetime.timedelta"),
    (lambda: Flow("f").source(gen([1])).event_time(lambda r: r, max_delay=-S),
     "max_delay must be at least zero"),
    (lambda: Flow("f").source(gen([1])).event_time(None, max_delay=S), "needs a function"),
    (lambda: Flow("f").source(gen([1])).key_by(str).late, "only windowed steps and joins"),
    (lambda: Flow("f").source(gen([1])).event_time(lambda r: r, max_delay=S).key_by(str)
     .window("minute"), r"needs windows.tumbling\(size\)"),
])
def test_declaration_errors(call, message):
    with pytest.raises(FlowError, match=message) as err:
        call()
    assert HERE in str(err.value)


def test_unsinked_late_stream_is_a_stream_leading_nowhere():
    flow = Flow("f")
    counts = stamped(flow, [1], max_delay=1).window(windows.tumbling(S)).count()
    counts.sink(sinks.table())
    counts.late.map_values(str)
    with pytest.raises(FlowError, match="leads nowhere after 'map_values'"):
        plan(flow)


def test_flows_without_event_time_plan_as_before():
    flow = Flow("wc")
    (flow.source(gen(["a b a"])).flat_map(str.split).key_by(lambda w: w).count()
         .sink(sinks.table()))
    source, counter = plan(flow).stages
    assert (source.event_time, source.timed, counter.timed) == (None, False, False)
    assert source.split_watermark(None, False) == MAX_TIME
    assert not plan(flow).sources["source"].timed
