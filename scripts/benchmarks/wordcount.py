"""Word count benchmark: plain Python against gossipflow on 1, 2 and 3 local daemons.

The corpus: --lines lines (default 2 000 000) of 8 words drawn from a
10 000-word vocabulary with a fixed seed (the generator of
``nodes_local.py``). Measured in one run, so the ratios compare like with like:

- plain: one process, ``Counter.update(line.split())`` over the files;
- gossipflow on N daemons (``--preset local``, real processes on 127.0.0.1):
  from ``submit`` to ``completed``, the result checked equal to plain's.

Bytewax is not run yet (it says so); DESIGN.md's figures for it come from the
same machine.

    python scripts/benchmarks/wordcount.py [--lines 2000000] [--daemons 1,2,3]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemons import Cluster  # noqa: E402
from nodes_local import make_corpus  # noqa: E402


def plain(corpus: Path) -> tuple[Counter, float]:
    start = time.perf_counter()
    counts: Counter = Counter()
    for path in sorted(corpus.glob("*.txt")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                counts.update(line.split())
    return counts, time.perf_counter() - start


def gossipflow(flow_file: Path, daemons: int, root: Path, expected: Counter) -> float:
    names = [f"n{i}" for i in range(daemons)]
    root.mkdir(parents=True)
    cluster = Cluster(root, preset="local")
    try:
        cluster.start_many(names)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--daemons", default="1,2,3")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gossipflow-wc-") as tmp:
        work = Path(tmp)
        words = make_corpus(work / "corpus", args.lines, files=8)
        flow_file = work / "wordcount.py"
        flow_file.write_text((ROOT / "scripts/flows/wordcount.py").read_text())
        expected, plain_s = plain(work / "corpus")
        base = words / plain_s
        print(f"corpus: {args.lines} lines, {words} words, {len(expected)} distinct")
        print(f"{'what':<28} {'seconds':>8} {'M words/s':>10} {'vs plain':>9}")
        print(f"{'plain Python Counter':<28} {plain_s:>8.2f} {base / 1e6:>10.3f} {1:>9.3f}")
        for n in [int(x) for x in args.daemons.split(",")]:
            took = gossipflow(flow_file, n, work / f"cluster{n}", expected)
            rate = words / took
            print(f"{f'gossipflow, {n} daemon(s)':<28} {took:>8.2f} {rate / 1e6:>10.3f} "
                  f"{rate / base:>9.3f}", flush=True)
        if importlib.util.find_spec("bytewax") is None:
            print("bytewax: not installed; skipped (DESIGN.md measured 0.25-0.30 M words/s "
                  "for its natural flat_map + count_final on this machine)")
        else:
            print("bytewax: installed, but this benchmark does not run it yet; skipped")


if __name__ == "__main__":
    main()
