"""Local runner benchmark: scripts/flows/wordcount.py against a plain Counter loop.

Generates a corpus (200 000 lines of 8 words drawn from a 10 000-word
vocabulary, fixed seed) in a temporary directory next to a copy of the
wordcount flow, then measures in the same process:

- plain: ``for line in file: counts.update(line.split())`` over the files;
- nodes: ``nodes.testing.run_file(wordcount.py)``: the flow's plan with
  partitions, batches, combiners, routing and per-partition state.

Both results are checked equal. Prints words/s of each (best of --repeat)
and the ratio plain/nodes (the target is <= 2).

    python scripts/benchmarks/nodes_local.py [--lines 200000] [--partitions 8]
        [--batch-size 1000] [--commit-every 10] [--files 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import glob
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from nodes.testing import run_file  # noqa: E402


def make_corpus(directory: Path, lines: int, files: int, seed: int = 42) -> int:
    """Write ``lines`` lines of 8 words into ``files`` files; return the word count."""
    rng = random.Random(seed)
    vocab = [f"w{i:04d}{rng.choice('abcdefgh')}" for i in range(10_000)]
    directory.mkdir(parents=True)
    per_file = -(-lines // files)
    written = 0
    for f in range(files):
        n = min(per_file, lines - written)
        text = "\n".join(" ".join(rng.choices(vocab, k=8)) for _ in range(n))
        (directory / f"part{f}.txt").write_text(text + "\n", encoding="utf-8")
        written += n
    return written * 8


def plain(pattern: str) -> Counter:
    counts: Counter = Counter()
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as f:
            for line in f:
                counts.update(line.split())
    return counts


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--commit-every", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nodes-bench-") as tmp:
        tmp = Path(tmp)
        shutil.copy(ROOT / "scripts" / "flows" / "wordcount.py", tmp / "wordcount.py")
        words = make_corpus(tmp / "corpus", args.lines, args.files)
        t_plain, expected = best(lambda: plain(str(tmp / "corpus" / "*.txt")), args.repeat)
        t_nodes, result = best(lambda: run_file(
            tmp / "wordcount.py", partitions=args.partitions, batch_size=args.batch_size,
            commit_every=args.commit_every), args.repeat)
        if result.table() != dict(expected):
            raise SystemExit("MISMATCH: the flow's counts differ from Counter's")
    print(f"corpus: {args.lines} lines, {words} words, {len(expected)} distinct, "
          f"{args.files} files; partitions={args.partitions} batch_size={args.batch_size} "
          f"commit_every={args.commit_every}; best of {args.repeat}")
    print(f"plain Counter loop   {words / t_plain / 1e6:6.2f} M words/s  ({t_plain:.3f} s)")
    print(f"nodes.testing.run    {words / t_nodes / 1e6:6.2f} M words/s  ({t_nodes:.3f} s)")
    print(f"ratio plain/nodes    {t_nodes / t_plain:6.2f}x  (target <= 2)")


if __name__ == "__main__":
    main()
