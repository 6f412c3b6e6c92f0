"""Every operator and sink, run by nodes.testing.run, against plain Python.

Each flow runs for partitions in {1, 3, 8} x batch sizes {1, 7, 1000} (with
different commit intervals) and must give exactly the plain-Python answer.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes import Flow, sinks, sources
from nodes.operators import is_identity
from nodes.plan import partition_of
from nodes.testing import run

MATRIX = [(p, b, c) for p in (1, 3, 8) for b, c in ((1, 1), (7, 3), (1000, 10))]
IDS = [f"P{p}-B{b}-C{c}" for p, b, c in MATRIX]

rng = random.Random(7)
VOCAB = [f"w{i}" for i in range(40)] + ["é", "日本", "a b"]
WORDS = [rng.choice(VOCAB) for _ in range(600)]
LINES = [" ".join(rng.choices(VOCAB[:40], k=rng.randint(0, 9))) for _ in range(300)]
NUMS = [rng.randint(-50, 100) for _ in range(500)]


@pytest.fixture(params=MATRIX, ids=IDS)
def cfg(request) -> dict:
    p, b, c = request.param
    return {"partitions": p, "batch_size": b, "commit_every": c}


def gen(items: list) -> sources.GenerateSource:
    return sources.generate(len(items), items.__getitem__)


def by_key(pairs) -> dict:
    out = defaultdict(list)
    for k, v in pairs:
        out[k].append(v)
    return dict(out)


def last_per_key(pairs) -> dict:
    return dict(pairs)


# -- stateless ------------------------------------------------------------------------------

def test_map_filter_flat_map_inspect_keep_source_order(cfg):
    seen = []
    flow = Flow("stateless")
    (flow.source(gen(LINES))
         .flat_map(str.split)
         .map(str.upper)
         .filter(lambda w: not w.endswith("7"))
         .inspect(seen.append)
         .sink(sinks.publish()))
    expected = [w.upper() for line in LINES for w in line.split() if not w.upper().endswith("7")]
    result = run(flow, **cfg)
    assert result.published == expected
    assert seen == expected


def test_merge_of_two_sources(cfg):
    flow = Flow("merge")
    a = flow.source(gen(WORDS[:100]), name="a")
    b = flow.source(gen(NUMS[:80]), name="b").map(str)
    a.merge(b).map(lambda r: f"<{r}>").sink(sinks.publish())
    result = run(flow, **cfg)
    assert result.published == [f"<{r}>" for r in WORDS[:100] + [str(n) for n in NUMS[:80]]]


def test_fan_out_to_several_sinks(cfg):
    flow = Flow("fanout")
    s = flow.source(gen(NUMS))
    s.filter(lambda n: n % 2).sink(sinks.publish(), name="odd")
    s.map(lambda n: n * 10).sink(sinks.publish(), name="tens")
    result = run(flow, **cfg)
    assert result.published_records["odd"] == [n for n in NUMS if n % 2]
    assert result.published_records["tens"] == [n * 10 for n in NUMS]


def test_key_by_into_publish_is_shuffled_and_complete(cfg):
    flow = Flow("shuffle")
    flow.source(gen(WORDS)).key_by(lambda w: w[:2]).sink(sinks.publish())
    result = run(flow, **cfg)
    assert sorted(result.published) == sorted((w[:2], w) for w in WORDS)
    assert by_key(result.published) == by_key((w[:2], w) for w in WORDS)  # per key: in order


def test_key_by_into_files_sink_writes_each_key_in_its_partition(cfg, tmp_path):
    flow = Flow("tofiles", base_dir=tmp_path)
    flow.source(gen(WORDS)).key_by(lambda w: w).sink(sinks.files("out"))
    result = run(flow, **cfg)
    P = cfg["partitions"]
    assert sorted(result.files) == list(range(P))
    for p, records in result.files.items():
        assert all(partition_of(k, P) == p for k, _ in records)
        written = (tmp_path / "out" / f"part-{p:05d}.jsonl").read_text(encoding="utf-8")
        assert [json.loads(line) for line in written.splitlines()] == records
    everything = [tuple(r) for records in result.files.values() for r in records]
    assert sorted(everything) == sorted((w, w) for w in WORDS)


def test_key_by_into_table_keeps_the_latest_record_per_key(cfg):
    flow = Flow("latest")
    flow.source(gen(WORDS)).key_by(lambda w: w[:2]).sink(sinks.table())
    assert run(flow, **cfg).table() == {w[:2]: w for w in WORDS}


def test_map_values_and_filter_on_keyed_stream(cfg):
    flow = Flow("mapvalues")
    (flow.source(gen(NUMS))
         .key_by(lambda n: "neg" if n < 0 else str(n % 5))
         .filter(lambda kv: kv[1] != 0)
         .map_values(lambda n: n * n)
         .sink(sinks.table()))
    expected = {}
    for n in NUMS:
        if n != 0:
            expected["neg" if n < 0 else str(n % 5)] = n * n
    assert run(flow, **cfg).table() == expected


# -- keyed ----------------------------------------------------------------------------------

def test_count_is_counter(cfg):
    flow = Flow("count")
    flow.source(gen(LINES)).flat_map(str.split).key_by(lambda w: w).count().sink(sinks.table())
    assert run(flow, **cfg).table() == Counter(w for line in LINES for w in line.split())


def test_count_by_identity_and_by_other_keys_is_counter(cfg):
    """key_by(lambda w: w) counts without calling the function (is_identity); a
    function that only looks alike is still called."""
    def same(word):
        return word

    words = [w for line in LINES for w in line.split()]
    for key, expected in [(same, Counter(words)), (lambda w, suffix="!": w + suffix,
                                                   Counter(w + "!" for w in words)),
                          (str.upper, Counter(w.upper() for w in words))]:
        flow = Flow("count")
        flow.source(gen(LINES)).flat_map(str.split).key_by(key).count().sink(sinks.table())
        assert run(flow, **cfg).table() == expected
    assert is_identity(same) and is_identity(lambda w: w)
    assert not any(map(is_identity, [lambda w, x=1: w, lambda *w: w, lambda w: str(w), str,
                                     lambda: None, len]))


def test_count_changelog_ends_at_the_count_and_only_grows(cfg):
    flow = Flow("changelog")
    flow.source(gen(WORDS)).key_by(lambda w: w).count().sink(sinks.publish())
    published = run(flow, **cfg).published
    assert last_per_key(published) == Counter(WORDS)
    for values in by_key(published).values():
        assert values == sorted(set(values))
    if cfg["batch_size"] == 1 and cfg["commit_every"] == 1:  # one record per commit
        assert sorted(published) == sorted(
            (w, n) for w, c in Counter(WORDS).items() for n in range(1, c + 1))


def test_sum_is_a_dict_loop(cfg):
    flow = Flow("sum")
    flow.source(gen(NUMS)).key_by(lambda n: str(n % 7)).sum().sink(sinks.table())
    expected: dict = {}
    for n in NUMS:
        expected[str(n % 7)] = expected.get(str(n % 7), 0) + n
    assert run(flow, **cfg).table() == expected


def test_sum_of_mapped_values_bools_and_floats(cfg):
    flow = Flow("sum2")
    (flow.source(gen(NUMS)).key_by(lambda n: "k" if n > 0 else "j")
         .map_values(lambda n: n > 10).sum(name="big").sink(sinks.table(), name="bigs"))
    (flow.source(gen(NUMS), name="halves").key_by(lambda n: "x").map_values(lambda n: n / 2)
         .sum(name="half").sink(sinks.table(), name="halftable"))
    result = run(flow, **cfg)
    assert result.table("bigs") == {"k": sum(n > 10 for n in NUMS if n > 0),
                                    "j": sum(n > 10 for n in NUMS if n <= 0)}
    assert result.table("halftable") == {"x": pytest.approx(sum(NUMS) / 2)}


def test_reduce_keeps_source_order_per_key(cfg):
    # string concatenation is associative but not commutative: any reordering shows
    flow = Flow("reduce")
    flow.source(gen(WORDS)).key_by(lambda w: w[-1]).map_values(lambda w: w + ",").reduce(
        lambda a, b: a + b).sink(sinks.table())
    expected: dict = {}
    for w in WORDS:
        expected[w[-1]] = expected.get(w[-1], "") + w + ","
    assert run(flow, **cfg).table() == expected


def test_fold_with_factory_and_with_immutable_init(cfg):
    flow = Flow("fold")
    s = flow.source(gen(NUMS)).key_by(lambda n: str(n % 4))
    s.fold(list, lambda acc, n: acc + [n], name="lists").sink(sinks.table(), name="lists_t")
    s.fold(0, lambda acc, n: acc * 3 + n, name="poly").sink(sinks.table(), name="poly_t")

    def grow(acc, n):  # a mutable accumulator changed in place
        acc.append(n)
        return acc
    s.fold(list, grow, name="inplace").sink(sinks.table(), name="inplace_t")
    result = run(flow, **cfg)
    lists, poly = defaultdict(list), defaultdict(int)
    for n in NUMS:
        lists[str(n % 4)].append(n)
        poly[str(n % 4)] = poly[str(n % 4)] * 3 + n
    assert result.table("lists_t") == dict(lists)
    assert result.table("inplace_t") == dict(lists)
    assert result.table("poly_t") == dict(poly)


def test_stateful_map_outputs_and_state_deletion(cfg):
    def every_third(state, word):  # running count that restarts after 3
        n = (state or 0) + 1
        return (None if n == 3 else n), f"{word}#{n}"

    flow = Flow("stateful")
    flow.source(gen(WORDS)).key_by(lambda w: w).stateful_map(every_third).sink(sinks.publish())
    expected, state = [], {}
    for w in WORDS:
        new, out = every_third(state.get(w), w)
        if new is None:
            state.pop(w, None)
        else:
            state[w] = new
        expected.append((w, out))
    published = run(flow, **cfg).published
    assert by_key(published) == by_key(expected)
    assert sorted(published) == sorted(expected)


def test_keyed_op_after_keyed_op(cfg):
    flow = Flow("chain")
    (flow.source(gen(WORDS)).key_by(lambda w: w).count()
         .reduce(max).sink(sinks.table(), name="max"))
    assert run(flow, **cfg).table() == Counter(WORDS)


def test_rekey_after_count(cfg):
    # group the count changelog by first letter: the latest count of each word wins
    flow = Flow("rekey")
    counts = flow.source(gen(WORDS)).key_by(lambda w: w).count()
    counts.sink(sinks.table(), name="counts")
    (counts.map(lambda kv: kv).key_by(lambda kv: kv[0][:1])
           .fold(dict, lambda d, wc: {**d, wc[0]: wc[1]}).sink(sinks.table(), name="by"))
    result = run(flow, **cfg)
    assert result.table("counts") == Counter(WORDS)
    expected = defaultdict(dict)
    for w, c in Counter(WORDS).items():
        expected[w[:1]][w] = c
    assert result.table("by") == dict(expected)


def test_merge_of_keyed_streams_then_count(cfg):
    flow = Flow("mergekeyed")
    a = flow.source(gen(WORDS), name="a").key_by(lambda w: w)
    b = flow.source(gen(LINES), name="b").flat_map(str.split).key_by(lambda w: w)
    a.merge(b).count().sink(sinks.table())
    expected = Counter(WORDS) + Counter(w for line in LINES for w in line.split())
    assert run(flow, **cfg).table() == expected


def test_inspect_and_filter_before_the_shuffle(cfg):
    seen = []
    flow = Flow("prefilter")
    (flow.source(gen(WORDS)).key_by(lambda w: w).inspect(seen.append)
         .filter(lambda kv: kv[0] != "w1").count().sink(sinks.table()))
    result = run(flow, **cfg)
    assert result.table() == {w: c for w, c in Counter(WORDS).items() if w != "w1"}
    assert seen == [(w, w) for w in WORDS]


def test_bytes_keys_and_str_subclass_keys(cfg):
    class Tag(str):
        pass

    flow = Flow("keys")
    s = flow.source(gen(WORDS))
    s.key_by(lambda w: w.encode()).count(name="b").sink(sinks.table(), name="bytes")
    s.key_by(lambda w: Tag(w)).count(name="t").sink(sinks.table(), name="tags")
    s.key_by(lambda w: Tag(w), name="tag2").map_values(len).sum(name="s").sink(
        sinks.table(), name="lens")
    result = run(flow, **cfg)
    assert result.table("bytes") == {w.encode(): c for w, c in Counter(WORDS).items()}
    assert result.table("tags") == Counter(WORDS)
    assert all(type(k) is str for k in result.table("tags"))
    assert result.table("lens") == {w: c * len(w) for w, c in Counter(WORDS).items()}


# -- sources and sinks end to end -----------------------------------------------------------

def test_files_source_word_count(cfg, tmp_path):
    (tmp_path / "in").mkdir()
    text = "\n".join(LINES)
    (tmp_path / "in" / "a.txt").write_text(text, encoding="utf-8")  # no final newline
    (tmp_path / "in" / "b.txt").write_text("é 日本 é\n\n", encoding="utf-8")
    (tmp_path / "in" / "empty.txt").write_text("", encoding="utf-8")
    flow = Flow("files", base_dir=tmp_path)
    flow.source(sources.files("in/*.txt", min_split_bytes=64)).flat_map(str.split).key_by(
        lambda w: w).count().sink(sinks.table())
    expected = Counter(text.split()) + Counter(["é", "日本", "é"])
    assert run(flow, **cfg).table() == expected


def test_jsonl_source_to_files_sink(cfg, tmp_path):
    events = [{"user": f"u{i % 5}", "n": i, "tags": ["x"] * (i % 3)} for i in range(120)]
    lines = [json.dumps(e) for e in events]
    lines.insert(10, "   ")
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    flow = Flow("jsonl", base_dir=tmp_path)
    (flow.source(sources.jsonl("*.jsonl", min_split_bytes=64)).filter(lambda e: e["n"] % 2)
         .map(lambda e: {"u": e["user"], "t": len(e["tags"])}).sink(sinks.files("out")))
    result = run(flow, **cfg)
    written = [r for p in sorted(result.files) for r in result.files[p]]
    assert written == [{"u": e["user"], "t": len(e["tags"])} for e in events if e["n"] % 2]


def test_unbounded_generate_with_limit(cfg):
    flow = Flow("unbounded")
    flow.source(sources.generate(None, lambda i: i % 11)).key_by(str).count().sink(
        sinks.table())
    assert run(flow, **cfg, limit=500).table() == Counter(str(i % 11) for i in range(500))


def test_publish_snapshots_records_at_commit():
    def grow(acc, n):
        acc.append(n)
        return acc

    flow = Flow("snapshot")
    flow.source(gen([1, 2, 3])).key_by(lambda n: "k").fold(list, grow).sink(sinks.publish())
    assert run(flow, partitions=1, batch_size=1, commit_every=1).published == [
        ("k", [1]), ("k", [1, 2]), ("k", [1, 2, 3])]


def test_files_sink_replaces_old_part_files(tmp_path):
    flow = Flow("replace", base_dir=tmp_path)
    flow.source(gen(WORDS)).key_by(lambda w: w).sink(sinks.files("out"))
    run(flow, partitions=8)
    run(flow, partitions=2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "part-00000.jsonl", "part-00001.jsonl"]


# -- properties ------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(words=st.lists(st.text(min_size=1, max_size=4), max_size=200),
       partitions=st.integers(1, 9), batch_size=st.integers(1, 50), commit=st.integers(1, 5))
def test_count_and_ordered_reduce_for_any_input(words, partitions, batch_size, commit):
    flow = Flow("prop")
    s = flow.source(gen(words)).key_by(lambda w: w[:1])
    s.count().sink(sinks.table(), name="count_t")
    s.reduce(lambda a, b: a + b, name="concat").sink(sinks.table(), name="concat_t")
    result = run(flow, partitions=partitions, batch_size=batch_size, commit_every=commit)
    concat: dict = {}
    for w in words:
        concat[w[:1]] = concat.get(w[:1], "") + w
    assert result.table("count_t") == Counter(w[:1] for w in words)
    assert result.table("concat_t") == concat
