"""Windows benchmark: tumbling 1-minute counts per key, plain Python against gossipflow
(and Bytewax 0.21 when installed).

The events: --events JSON lines (default 10 000 000) in 8 files, seeded, like
``{"ts": 1767225600.123, "k": "k17"}``: event times 1 ms apart in each file
(about 21 minutes of event time for 10 M), 1 000 keys, key k only in file k % 8 (as
in a topic partitioned by key: Bytewax's watermark is per key across all files, so a
key spread over files read at different speeds would have late events in Bytewax only),
1% of events moved back 1 ms to 3 s: out of order, but behind their file's latest
by less than max_delay 5 s, so no event is late and all three agree. In one run:

- plain: one process, ``json.loads`` each line and
  ``counts[(key, ts_ms // 60000)] += 1`` in a dict;
- gossipflow on --daemons daemons (default 3, ``--preset local``, R=2, real
  processes on 127.0.0.1): ``jsonl -> event_time(max_delay 5 s) -> key_by ->
  tumbling(1 min) -> count -> table``, from ``submit`` to ``completed``, the table
  checked equal to plain's counts and the window stage's late count 0. Each run is
  compared with plain measured just before and just after it (this machine's speed
  drifts); the median of ``--repeat`` runs is shown, with the range of the ratio;
- Bytewax 0.21 (when installed: the optional ``bench`` extra): EventClock on the
  event's ts, TumblingWindower(1 min, aligned to the epoch), count_window by key
  (``bytewax_windows.py``), on 1 and 2 processes, checked the same way.

    python scripts/benchmarks/windows.py [--events 10000000] [--daemons 3] [--repeat 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemons import Cluster  # noqa: E402
from wordcount import run_bytewax  # noqa: E402

FILES, KEYS = 8, 1000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MAX_BEHIND_MS = 3000  # how far back an out-of-order event is moved (max_delay is 5 s)
FLOW = '''\
from datetime import timedelta as td
from nodes import Flow, sources, sinks, windows
flow = Flow("windows")
(flow.source(sources.jsonl("events/*.jsonl"))
     .event_time(lambda e: e["ts"], max_delay=td(seconds=5))
     .key_by(lambda e: e["k"])
     .window(windows.tumbling(td(minutes=1)))
     .count()
     .sink(sinks.table()))
'''

Counts = dict[tuple[str, int], int]  # (key, window start in minutes since the epoch) -> count


def make_events(root: Path, events: int, seed: int = 11) -> None:
    """Write ``events`` events into FILES files of ``root`` (one big write each)."""
    root.mkdir(parents=True)
    rng = random.Random(seed)
    millis = [f"{i:03d}" for i in range(1000)]
    for f in range(FILES):
        n = events // FILES + (f < events % FILES)
        keys = rng.choices([f"k{k}" for k in range(f, KEYS, FILES)], k=n)
        ts = list(range(START_MS, START_MS + n))
        for i in rng.sample(range(1, n), n // 100):
            ts[i] -= rng.randint(1, MAX_BEHIND_MS)
        (root / f"events-{f}.jsonl").write_text("".join(
            [f'{{"ts": {ms // 1000}.{millis[ms % 1000]}, "k": "{k}"}}\n'
             for ms, k in zip(ts, keys)]))


def plain(events: Path) -> tuple[Counts, float]:
    start = time.perf_counter()
    counts: defaultdict = defaultdict(int)
    loads = json.loads
    for path in sorted(events.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                e = loads(line)
                counts[(e["k"], round(e["ts"] * 1000) // 60000)] += 1
    return dict(counts), time.perf_counter() - start


def gossipflow(flow_file: Path, daemons: int, root: Path, expected: Counts) -> tuple[float, int]:
    """Seconds from submit to completed, and the window stage's late count."""
    names = [f"n{i}" for i in range(daemons)]
    root.mkdir(parents=True)
    cluster = Cluster(root, preset="local")
    try:
        cluster.start_many(names, replicas=min(2, daemons))
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "daemon.cli", "submit", str(flow_file),
                                 "--node", cluster["n0"].address, "--wait"],
                                capture_output=True, text=True, cwd=ROOT)
        took = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"submit failed: {result.stderr or result.stdout}")
        rows = cluster.request("n0", "query", timeout=120, args={"name": "windows"})
        got = {(key, start_ms // 60000): w.value for (key, start_ms), w in rows}
        if got != expected:
            raise SystemExit(f"{daemons} daemons: result differs from plain: "
                             f"{describe(got, expected)}")
        stages = cluster.request("n0", "progress", args={"name": "windows"})["stages"]
        late = next(s["late"] for name, s in stages.items() if name.endswith(" window"))
        if late:
            raise SystemExit(f"{daemons} daemons: {late} events late (expected none)")
        return took, late
    except BaseException:
        print(cluster.log_tails(), file=sys.stderr)
        raise
    finally:
        cluster.close()


def describe(got: Counts, expected: Counts) -> str:
    missing = expected.keys() - got.keys()
    extra = got.keys() - expected.keys()
    wrong = [k for k in expected.keys() & got.keys() if got[k] != expected[k]]
    return (f"{len(missing)} windows missing, {len(extra)} extra, {len(wrong)} with another "
            f"count; {sum(got.values())} events counted of {sum(expected.values())}")


def bytewax(events: Path, out: Path, processes: int, expected: Counts) -> float:
    """Bytewax's count_window (``bytewax_windows.py``) on ``processes`` processes."""
    late_dir = out / "late"
    (out / "counts").mkdir(parents=True)
    late_dir.mkdir()
    took = run_bytewax("bytewax_windows:flow", processes,
                       {"WIN_EVENTS": str(events), "WIN_OUT": str(out / "counts"),
                        "WIN_LATE": str(late_dir)}, timeout=1800)
    got: Counts = {}
    for path in (out / "counts").iterdir():
        for line in path.read_text().splitlines():
            key, window, count = line.split(" ")
            got[key, int(window)] = int(count)
    late = sum(len(p.read_text().splitlines()) for p in late_dir.iterdir())
    if got != expected:
        raise SystemExit(f"bytewax, {processes} process(es): result differs from plain "
                         f"({late} events late): {describe(got, expected)}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1,
                        help="gossipflow runs; the median is shown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gossipflow-windows-") as tmp:
        work = Path(tmp)
        made = time.perf_counter()
        make_events(work / "events", args.events)
        made = time.perf_counter() - made
        flow_file = work / "windows.py"
        flow_file.write_text(FLOW)
        expected, plain_s = plain(work / "events")
        base = args.events / plain_s
        print(f"events: {args.events} in {FILES} files ({made:.1f} s to write), {KEYS} keys, "
              f"{len(expected)} (key, minute) windows, 1% out of order by up to "
              f"{MAX_BEHIND_MS / 1000:g} s (max_delay 5 s)")
        print(f"(each gossipflow run is compared with plain measured just before and just "
              f"after it, as this machine's speed drifts; median of {args.repeat} run(s), "
              f"and the range of the ratio)")
        print(f"{'what':<28} {'seconds':>8} {'M events/s':>11} {'plain s':>8} {'vs plain':>9}"
              f"  range")
        print(f"{'plain Python dict':<28} {plain_s:>8.2f} {base / 1e6:>11.3f} "
              f"{plain_s:>8.2f} {1:>9.3f}", flush=True)
        trials = []  # (ratio, seconds, plain seconds, late)
        for i in range(args.repeat):
            _, before = plain(work / "events")
            took, late = gossipflow(flow_file, args.daemons, work / f"cluster{i}", expected)
            _, after = plain(work / "events")
            baseline = (before + after) / 2
            trials.append((baseline / took, took, baseline, late))
        ratio, took, baseline, late = statistics.median_low(trials)
        ours = args.events / took
        low, high = min(trials)[0], max(trials)[0]
        print(f"{f'gossipflow, {args.daemons} daemon(s), R={min(2, args.daemons)}':<28} "
              f"{took:>8.2f} {ours / 1e6:>11.3f} {baseline:>8.2f} {ratio:>9.3f}  "
              f"{low:.2f}-{high:.2f}", flush=True)
        print(f"gossipflow window stage, late events: {late}")
        if importlib.util.find_spec("bytewax") is None:
            print("bytewax: not installed (pip install -e '.[bench]'); skipped")
            return
        theirs = {}
        for processes in (1, 2):
            took = bytewax(work / "events", work / f"bytewax{processes}", processes, expected)
            rate = theirs[processes] = args.events / took
            print(f"{f'bytewax 0.21, {processes} process(es)':<28} {took:>8.2f} "
                  f"{rate / 1e6:>11.3f} {'':>8} {rate / base:>9.3f}", flush=True)
        print(f"gossipflow / best bytewax: {ours / max(theirs.values()):.2f}x")


if __name__ == "__main__":
    main()
