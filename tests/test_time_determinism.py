"""Issue 11, point 9 in the local runner: a tumbling, a sliding, a session and an
interval-join flow over a few thousand out-of-order events in six files give the same
rows and the same late records for partitions 1 and 8 and batch sizes 1 and 1000 (and
with every state packed and unpacked at each commit), equal to a plain-Python reference
that applies the horizon rule per file; in-order events are never late."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from datetime import timedelta

import pytest

from nodes import Flow, sinks, sources, windows
from nodes.eventtime import EPOCH, MIN_TIME
from nodes.testing import run

S = timedelta(seconds=1)
MAX_DELAY = 5000
KEYS = [f"k{i}" for i in range(12)]
CONFIGS = [{"partitions": p, "batch_size": b} for p in (1, 8) for b in (1, 1000)]
CONFIGS.append({"partitions": 3, "batch_size": 7, "commit_every": 2, "msgpack_state": True})


def make_events(seed: int, in_order: bool) -> dict[str, list[dict]]:
    """Six files of 600 events {"id": unique int, "k", "ms", "v"}; out of order within MAX_DELAY
    mostly, 5% up to 30 s behind; files start up to 40 s apart."""
    rng = random.Random(seed)
    files = {}
    for f in range(6):
        base, events = rng.randint(0, 40_000), []
        for i in range(600):
            base += rng.randint(0, 2000)
            behind = 0 if in_order else (rng.randint(0, MAX_DELAY - 100) if rng.random() < 0.95
                                         else rng.randint(MAX_DELAY, 30_000))
            events.append({"id": f * 10_000 + i, "k": rng.choice(KEYS), "ms": base - behind,
                           "v": rng.randint(1, 9)})
        files[f"{f}.jsonl"] = events
    return files


def bounds(files: dict[str, list[dict]]) -> list[tuple[dict, int]]:
    """Every event with its bound: its file's max ms so far less MAX_DELAY."""
    out = []
    for name in sorted(files):
        top = MIN_TIME
        for e in files[name]:
            out.append((e, MIN_TIME if top == MIN_TIME else top - MAX_DELAY))
            top = max(top, e["ms"])
    return out


def reference(kind: str, files: dict[str, list[dict]]) -> tuple[dict, list]:
    rows: Counter = Counter()
    late = []
    if kind in ("tumbling", "sliding"):
        size, every = (10_000, 10_000) if kind == "tumbling" else (10_000, 2_500)
        for e, bound in bounds(files):
            ms = e["ms"]
            starts = [s for s in range(ms - ms % every, ms - size, -every) if s + size > bound]
            for s in starts:
                rows[(e["k"], s, s + size)] += e["id"]
            if not starts:
                late.append((e["k"], e["id"]))
        return dict(rows), sorted(late)
    kept = defaultdict(list)
    for e, bound in bounds(files):
        if e["ms"] < bound:
            late.append((e["k"], e["id"]))
        else:
            kept[e["k"]].append(e)
    if kind == "session":
        gap = 3000
        for k, events in kept.items():
            start = last = None
            for e in sorted(events, key=lambda e: e["ms"]):
                if last is not None and e["ms"] - last < gap:
                    last, rows[(k, start)] = e["ms"], rows[(k, start)] + 1
                else:
                    start = last = e["ms"]
                    rows[(k, start)] = 1
            # ends follow from the last ms of each session
        ends = {}
        for k, events in kept.items():
            for e in events:
                s = max(st for kk, st in rows if kk == k and st <= e["ms"])
                ends[(k, s)] = max(ends.get((k, s), 0), e["ms"] + gap)
        return {(k, s, ends[(k, s)]): n for (k, s), n in rows.items()}, sorted(late)
    pairs = Counter()  # interval join: even v on the left, odd on the right
    for k, events in kept.items():
        for x in events:
            for y in events:
                if x["v"] % 2 == 0 and y["v"] % 2 and x["ms"] - 2000 <= y["ms"] <= x["ms"] + 3000:
                    pairs[(k, x["id"], y["id"])] += 1
    return dict(pairs), sorted(late)


def build(kind: str, base_dir) -> Flow:
    flow = Flow(kind, base_dir=base_dir)
    stamped = (flow.source(sources.jsonl("in/*.jsonl"))
                   .event_time(lambda e: e["ms"] / 1000, max_delay=MAX_DELAY * S / 1000))
    keyed = stamped.key_by(lambda e: e["k"])
    if kind == "interval_join":
        left = keyed.filter(lambda kv: kv[1]["v"] % 2 == 0)
        right = keyed.filter(lambda kv: kv[1]["v"] % 2 == 1)
        (left.interval_join(right, -2 * S, 3 * S)
             .map(lambda kv: (kv[0], kv[1][0]["id"], kv[1][1]["id"])).sink(sinks.publish()))
        return flow
    windower = {"tumbling": windows.tumbling(10 * S),
                "sliding": windows.sliding(10 * S, 2.5 * S),
                "session": windows.session(3 * S)}[kind]
    values = keyed.map_values(lambda e: e["id"])
    (values.window(windower).sum() if kind != "session" else values.window(windower).count()
     ).sink(sinks.table())
    return flow


def outcome(kind: str, result) -> tuple[dict, list]:
    late = result.late()
    late = sorted(late) if kind != "interval_join" else sorted(
        (k, e["id"]) for k, (_, e) in late)
    if kind == "interval_join":
        return dict(Counter(result.published)), late
    return {(k, ms(w.start), ms(w.end)): w.value for k, w in result.rows()}, late


def ms(dt) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)


@pytest.mark.parametrize("in_order", [False, True], ids=["out_of_order", "in_order"])
@pytest.mark.parametrize("kind", ["tumbling", "sliding", "session", "interval_join"])
def test_same_rows_and_late_records_for_every_run(tmp_path, kind, in_order):
    files = make_events(seed=11, in_order=in_order)
    (tmp_path / "in").mkdir()
    for name, events in files.items():
        (tmp_path / "in" / name).write_text("".join(json.dumps(e) + "\n" for e in events))
    expected_rows, expected_late = reference(kind, files)
    assert expected_rows and (expected_late == []) == in_order
    flow = build(kind, tmp_path)
    for config in CONFIGS:
        assert outcome(kind, run(flow, **config)) == (expected_rows, expected_late), config
