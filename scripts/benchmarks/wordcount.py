"""Word count benchmark: plain Python against gossipflow on 1, 2 and 3 local daemons.

The corpus: --lines lines (default 2 000 000) of 8 words drawn from a
10 000-word vocabulary with a fixed seed (the generator of
``nodes_local.py``). Measured in one run, so the ratios compare like with like:

- plain: one process, ``Counter.update(line.split())`` over the files;
- gossipflow on N daemons (``--preset local``, real processes on 127.0.0.1):
  from ``submit`` to ``completed``, the result checked equal to plain's; with
  one replica (R=1) and, on 2 or more daemons, with R=2 (every commit on two
  members before its outputs leave): the ratio R=2 / R=1 is the cost of
  replication. Each run is compared with plain measured just before and just
  after it (this machine's speed drifts by up to 2x within minutes); the
  median of ``--repeat`` runs is shown, with the range of the ratio.

- Bytewax 0.21 (when installed: the optional ``bench`` extra), its natural
  flat_map + count_final on 1 and 2 processes, the result checked the same way.

    python scripts/benchmarks/wordcount.py [--lines 2000000] [--daemons 1,2,3] [--replicas 1,2]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemons import Cluster, free_port  # noqa: E402
from nodes_local import make_corpus  # noqa: E402


def plain(corpus: Path) -> tuple[Counter, float]:
    start = time.perf_counter()
    counts: Counter = Counter()
    for path in sorted(corpus.glob("*.txt")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                counts.update(line.split())
    return counts, time.perf_counter() - start


def gossipflow(flow_file: Path, daemons: int, replicas: int, root: Path,
               expected: Counter) -> float:
    names = [f"n{i}" for i in range(daemons)]
    root.mkdir(parents=True)
    cluster = Cluster(root, preset="local")
    try:
        cluster.start_many(names, replicas=replicas)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "daemon.cli", "submit", str(flow_file),
                                 "--node", cluster["n0"].address, "--wait"],
                                capture_output=True, text=True, cwd=ROOT)
        took = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"submit failed: {result.stderr or result.stdout}")
        rows = cluster.request("n0", "query", timeout=60, args={"name": "wordcount"})
        if {k: v for k, v in rows} != expected:
            raise SystemExit(f"{daemons} daemons: result differs from plain Counter")
        return took
    except BaseException:
        print(cluster.log_tails(), file=sys.stderr)
        raise
    finally:
        cluster.close()


def run_bytewax(flow: str, processes: int, env: dict[str, str], timeout: float) -> float:
    """Seconds to run Bytewax dataflow ``flow`` ("module:attr" in this directory) on
    ``processes`` processes with ``env`` added; every process is stopped by pid at the
    end, also on failure."""
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    start = time.perf_counter()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", flow]
        + (["-i", str(i), "-a", addresses] if processes > 1 else []),
        cwd=Path(__file__).resolve().parent, env={**os.environ, **env},
        start_new_session=True) for i in range(processes)]
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(codes):
        raise SystemExit(f"bytewax exited with {codes}")
    return time.perf_counter() - start


def bytewax(corpus: Path, out: Path, processes: int, expected: Counter) -> float:
    """The natural Bytewax word count (flat_map + count_final) on ``processes`` processes."""
    out.mkdir()
    took = run_bytewax("bytewax_wordcount:flow", processes,
                       {"WC_CORPUS": str(corpus), "WC_OUT": str(out)}, timeout=900)
    got = {}
    for path in out.iterdir():
        for line in path.read_text().splitlines():
            word, count = line.rsplit(" ", 1)
            got[word] = int(count)
    if got != expected:
        raise SystemExit(f"bytewax, {processes} process(es): result differs from plain Counter")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--daemons", default="1,2,3")
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per configuration; the median is shown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gossipflow-wc-") as tmp:
        work = Path(tmp)
        words = make_corpus(work / "corpus", args.lines, files=8)
        flow_file = work / "wordcount.py"
        flow_file.write_text((ROOT / "scripts/flows/wordcount.py").read_text())
        expected, plain_s = plain(work / "corpus")
        base = words / plain_s
        print(f"corpus: {args.lines} lines, {words} words, {len(expected)} distinct")
        print(f"(each gossipflow run is compared with plain measured just before and just "
              f"after it, as this machine's speed drifts; median of {args.repeat} runs, and "
              f"the range of the ratio)")
        print(f"{'what':<28} {'seconds':>8} {'M words/s':>10} {'plain s':>8} {'vs plain':>9}"
              f"  range")
        print(f"{'plain Python Counter':<28} {plain_s:>8.2f} {base / 1e6:>10.3f} "
              f"{plain_s:>8.2f} {1:>9.3f}")
        ours, runs = {}, {}
        for n in [int(x) for x in args.daemons.split(",")]:
            for r in [int(x) for x in args.replicas.split(",")]:
                if r > n:
                    continue
                trials = []  # (ratio, seconds, plain seconds)
                for i in range(args.repeat):
                    _, before = plain(work / "corpus")
                    took = gossipflow(flow_file, n, r, work / f"cluster{n}r{r}-{i}", expected)
                    _, after = plain(work / "corpus")
                    baseline = (before + after) / 2
                    trials.append((baseline / took, took, baseline))
                ratio, took, baseline = statistics.median_low(trials)
                rate = runs[n, r] = words / took
                ours[n] = max(ours.get(n, 0), rate) if r == 1 else ours.get(n, rate)
                low, high = min(trials)[0], max(trials)[0]
                print(f"{f'gossipflow, {n} daemon(s), R={r}':<28} {took:>8.2f} "
                      f"{rate / 1e6:>10.3f} {baseline:>8.2f} {ratio:>9.3f}  "
                      f"{low:.2f}-{high:.2f}", flush=True)
        costs = [f"{n} daemons {runs[n, 2] / runs[n, 1]:.2f}x" for n, r in runs
                 if r == 2 and (n, 1) in runs]
        if costs:
            print("replication, throughput R=2 / R=1: " + ", ".join(costs))
        if importlib.util.find_spec("bytewax") is None:
            print("bytewax: not installed (pip install -e '.[bench]'); skipped")
            return
        theirs = {}
        for processes in (1, 2):
            took = bytewax(work / "corpus", work / f"bytewax{processes}", processes, expected)
            rate = theirs[processes] = words / took
            print(f"{f'bytewax 0.21, {processes} process(es)':<28} {took:>8.2f} "
                  f"{rate / 1e6:>10.3f} {rate / base:>9.3f}", flush=True)
        best = max(theirs.values())
        print("gossipflow (R=1) / best bytewax: " + ", ".join(
            f"{n} daemon(s) {rate / best:.2f}x" for n, rate in ours.items()))


if __name__ == "__main__":
    main()
