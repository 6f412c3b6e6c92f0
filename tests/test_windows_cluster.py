"""Windows and joins on real daemons: the rows (tumbling, sliding, session), late records
and join pairs of ``nodes.testing.run``, also when a daemon is killed mid-flow (event
time, issue 11); windows over live data with idle ingest partitions."""

from __future__ import annotations

import json
import random
from collections import Counter
import signal
from pathlib import Path

import pytest
from daemons import Cluster, cli, wait_for

from nodes import load_flow
from nodes.eventtime import to_ms
from nodes.testing import run
from nodes.windows import Windowed

pytestmark = pytest.mark.timeout(240)

THREE = ["n0", "n1", "n2"]
PARTITIONS = 16
FLOW = '''
import time
from datetime import timedelta as td
from nodes import Flow, sources, sinks, windows


def slowly(click):
    time.sleep(0.0002)  # so that each file takes several commits: a kill lands inside one
    return click


flow = Flow("clicks")
clicks = (flow.source(sources.jsonl("clicks/*.jsonl")).map(slowly)
              .event_time(lambda c: c["ts"], max_delay=td(seconds=2)))
users = clicks.key_by(lambda c: c["user"])
per_10s = users.window(windows.tumbling(td(seconds=10))).count()
per_10s.sink(sinks.table(), name="counts")
per_10s.late.sink(sinks.files("late"), name="late")
sessions = users.map_values(lambda c: 1).window(windows.session(td(seconds=3))).sum()
sessions.sink(sinks.table(), name="sessions")
sliding = users.window(windows.sliding(td(seconds=20), td(seconds=5))).count()
sliding.sink(sinks.table(), name="sliding")
buys = (flow.source(sources.jsonl("buys/*.jsonl"))
            .event_time(lambda b: b["ts"], max_delay=td(seconds=1))
            .key_by(lambda b: b["user"]))
paid = users.interval_join(buys, lower=td(0), upper=td(seconds=2), how="left")
paid.map(lambda kv: [kv[0], kv[1][0]["ts"], kv[1][1] and kv[1][1]["ts"]]).sink(
    sinks.files("pairs"), name="pairs")
'''


def write_clicks(root: Path, files: int = 6, per_file: int = 6000, seed: int = 7) -> None:
    """Clicks of 20 users, ts in seconds, mostly rising within a file, some up to 4 s
    behind the latest (some of those late under max_delay 2 s), and every 1000th 45 s
    ahead (most records after it are late: a restart that forgot how far its split had
    got would take them)."""
    rng = random.Random(seed)
    (root / "clicks").mkdir()
    for f in range(files):
        lines = []
        for i in range(per_file):
            ts = 1_700_000_000 + i * 0.05 + f * 0.01 - (rng.random() * 4 if rng.random() < 0.1
                                                        else 0) + 45 * (i % 1000 == 999)
            lines.append(json.dumps({"ts": round(ts, 3), "user": f"u{rng.randrange(20)}"}))
        (root / "clicks" / f"f{f}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "buys").mkdir()
    for f in range(2):
        buys = [{"ts": round(1_700_000_000 + i * 0.4 + rng.random(), 3),
                 "user": f"u{rng.randrange(20)}"} for i in range(per_file // 8)]
        (root / "buys" / f"b{f}.jsonl").write_text(
            "".join(json.dumps(b) + "\n" for b in buys))


def cluster_rows(cluster: Cluster, node: str, sink: str) -> dict:
    rows = cluster.request(node, "query", timeout=10.0, args={"name": "clicks", "sink": sink})
    return {(key[0], key[1]): value for key, value in rows}


def local_rows(result, sink: str) -> dict:
    return {(key, to_ms(w.start)): w for key, w in result.rows(sink)}


def lines(root: Path, sink: str) -> list:
    """The lines a files sink wrote, sorted."""
    return sorted(line for path in (root / sink).glob("part-*.jsonl")
                  for line in path.read_text().splitlines())


def test_windows_on_three_daemons_equal_the_local_runner_through_a_kill(
        cluster: Cluster, tmp_path: Path) -> None:
    write_clicks(tmp_path)
    path = tmp_path / "clicks.py"
    path.write_text(FLOW)
    local = run(load_flow(FLOW.replace(".map(slowly)", ""), str(path)),  # same, faster
                partitions=PARTITIONS)
    expected_late, expected_pairs = lines(tmp_path, "late"), lines(tmp_path, "pairs")
    assert local.late("window") and expected_late  # the input has late records
    assert any(json.loads(pair)[2] is None for pair in expected_pairs)  # and unmatched
    assert any(json.loads(pair)[2] is not None for pair in expected_pairs)  # and matched
    counts = local_rows(local, "counts")
    assert sum(w.value for w in counts.values()) + len(local.late("window")) == 6 * 6000
    for old in [*(tmp_path / "late").glob("*"), *(tmp_path / "pairs").glob("*")]:
        old.unlink()

    cluster.start_many(THREE, partitions=PARTITIONS)
    result = cli("submit", str(path), "--node", cluster["n0"].address, timeout=180)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: sum(f["records_in"] for stage, f in cluster.request(
        "n1", "flow", args={"name": "clicks"})["local"].items()
        if stage.startswith("0 ")) >= 7000, 30, interval=0.05,
        message="n1 is half way through its files")
    assert cluster.request("n0", "flow", args={"name": "clicks"})["status"] == "running"
    cluster.kill("n1", signal.SIGKILL)
    assert cluster.wait_exit("n1") == -signal.SIGKILL
    cluster.restart("n1")
    wait_for(lambda: cluster.request("n0", "flow", args={"name": "clicks"})["status"]
             == "completed", 180, interval=0.5, message="the flow completes")

    assert cluster_rows(cluster, "n2", "counts") == counts
    assert cluster_rows(cluster, "n0", "sessions") == local_rows(local, "sessions")
    assert cluster_rows(cluster, "n1", "sliding") == local_rows(local, "sliding")
    assert lines(tmp_path, "late") == expected_late  # every late record once, none else
    assert lines(tmp_path, "pairs") == expected_pairs

    (key, start), window = sorted(counts.items())[0]
    answer = cli("query", "clicks", key, "--sink", "counts", "--json",
                 "--node", cluster["n1"].address)
    assert answer.returncode == 0, answer.stderr
    rows = json.loads(answer.stdout)
    assert rows[0] == {"key": key, "start": start, "end": to_ms(window.end),
                       "value": window.value}
    assert [r["start"] for r in rows] == sorted(s for k, s in counts if k == key)

    status = cluster.request("n2", "progress", args={"name": "clicks"}, timeout=5.0)
    windowed = next(f for stage, f in status["stages"].items() if stage.endswith(" window"))
    assert windowed["late"] == len(local.late("window"))
    assert windowed["watermark"] == 1 << 62  # every source ended: event time at its end


def test_windowed_values_travel_between_stages_as_windowed(tmp_path: Path) -> None:
    """What a window emits crosses a shuffle intact (a msgpack extension, not a list)."""
    from nodes.codec import pack, unpack
    from nodes.eventtime import to_datetime

    w = Windowed(to_datetime(0), to_datetime(10_000), {"n": [1, 2]})
    assert unpack(pack([("k", w)])) == (("k", Windowed(w.start, w.end, {"n": (1, 2)})),)


SENSORS = '''
from datetime import timedelta as td
from nodes import Flow, sources, sinks, windows

flow = Flow("sensors")
readings = (flow.source(sources.ingest("readings"))
                .event_time(lambda r: r["ts"], max_delay=td(seconds=1), idle_after=td(seconds=1)))
per_10s = (readings.key_by(lambda r: r["sensor"])
                   .window(windows.tumbling(td(seconds=10))).count())
per_10s.sink(sinks.table(), name="counts")
'''


def test_live_windows_fire_as_idle_ingest_partitions_leave_the_watermark(
        cluster: Cluster, tmp_path: Path) -> None:
    """Windows over an ingest: the partitions no producer feeds turn idle after
    idle_after and leave the minimum, so windows fire on the one producer's event time;
    a second producer's record behind a fired window is late (after idle), never a second
    row; once that producer's partition is idle again, event time moves on."""
    from daemon.ingest import producer_partition
    from daemon.producer import Producer

    cluster.start_many(THREE, partitions=PARTITIONS)
    path = tmp_path / "sensors.py"
    path.write_text(SENSORS)
    result = cli("submit", str(path), "--node", cluster["n0"].address, timeout=60)
    assert result.returncode == 0, result.stderr
    first, second = "a", next(p for p in "bcdefgh" if producer_partition(p, PARTITIONS)
                              != producer_partition("a", PARTITIONS))
    nodes = [cluster[n].address for n in THREE]
    readings = [{"ts": i / 5, "sensor": f"s{i % 3}"} for i in range(300)]  # 0 .. 59.8 s
    with Producer("readings", nodes, producer_id=first) as producer:
        for reading in readings:
            producer.send(reading)
        producer.flush()

    def rows() -> dict:
        got = cluster.request("n1", "query", timeout=10.0,
                              args={"name": "sensors", "sink": "counts"})
        return {(key[0], key[1]): window.value for key, window in got}

    fired = Counter((r["sensor"], int(r["ts"] // 10) * 10_000) for r in readings
                    if r["ts"] < 50)  # the watermark is 58.8 s: [50, 60) stays open
    wait_for(lambda: rows() == fired, 60, interval=0.3, message="windows up to 50 s fire")

    with Producer("readings", nodes, producer_id=second) as producer:
        producer.send({"ts": 5, "sensor": "s0"})  # [0, 10) has fired
        producer.flush()

    def figures() -> dict:
        stages = cluster.request("n2", "progress", args={"name": "sensors"},
                                 timeout=5.0)["stages"]
        return next(f for stage, f in stages.items() if stage.endswith(" window"))

    wait_for(lambda: figures()["late_after_idle"] == 1, 30, interval=0.3,
             message="the record behind a fired window is counted late after idle")
    assert figures()["late"] == 1 and rows() == fired  # no second row for [0, 10)

    with Producer("readings", nodes, producer_id=first, start=301) as producer:
        producer.send({"ts": 100, "sensor": "s1"})
        producer.flush()
    fired.update((r["sensor"], 50_000) for r in readings if r["ts"] >= 50)
    wait_for(lambda: rows() == fired, 60, interval=0.3,
             message="[50, 60) fires once the second producer's partition idles again")
