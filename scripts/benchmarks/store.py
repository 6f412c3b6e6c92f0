"""Commit throughput of daemon.store against a raw LMDB loop writing the same keys.

Run: python scripts/benchmarks/store.py [--seconds S]   (in the project's .venv)

Each commit changes K state keys (16 random bytes -> 8 bytes) plus one offset and
one mark, in one write transaction. "raw" is a bare lmdb loop (one txn per commit,
txn.put per key) into an env opened the same way, writing the same keys in the same
run; "putmulti" is the same with Cursor.putmulti, the fastest raw form. Each
configuration runs until S seconds or 200,000 keys, whichever comes first (sync=on
fsyncs each commit, so small commits there measure the disk, not the code).

Columns:
  K           changed keys per commit
  sync        fsync at every commit
  commits/s   Store.apply calls per second
  keys/s      state writes per second through Store.apply
  raw keys/s  the same keys through the raw loop; putmulti keys/s likewise
  ours/raw    our time per commit / the raw loop's (target <= 1.5 at K = 10,000)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lmdb

from daemon.store import Commit, Store, TaskId

SIZES = (1, 100, 10_000)
TASK = TaskId("bench", 1, 0)


def batches(k: int, count: int) -> list[dict[bytes, bytes]]:
    return [{os.urandom(16): os.urandom(8) for _ in range(k)} for _ in range(count)]


def timed(run: Callable[[dict[bytes, bytes], int], None], data: list[dict[bytes, bytes]],
          seconds: float) -> tuple[int, float]:
    """Runs commits until ``seconds`` or the data runs out; returns (commits, elapsed)."""
    start = time.perf_counter()
    n = 0
    for n, puts in enumerate(data, 1):
        run(puts, n)
        if time.perf_counter() - start > seconds:
            break
    return n, time.perf_counter() - start


def ours(path: str, sync: bool) -> tuple[Callable, Callable[[], None]]:
    store = Store(path, sync=sync)

    def run(puts: dict[bytes, bytes], n: int) -> None:
        store.apply(Commit(TASK, 1, n, state_puts=puts, offsets={"split-0": b"%d" % n},
                           marks={"upstream": n}))
    return run, store.close


def raw(path: str, sync: bool, multi: bool) -> tuple[Callable, Callable[[], None]]:
    env = lmdb.open(path, map_size=1 << 30, max_dbs=8, sync=sync, metasync=sync,
                    writemap=False)
    db = env.open_db(b"state")

    def run(puts: dict[bytes, bytes], n: int) -> None:
        with env.begin(write=True, db=db) as txn:
            if multi:
                txn.cursor().putmulti(puts.items())
            else:
                for k, v in puts.items():
                    txn.put(k, v)
    return run, env.close


def row(k: int, sync: bool, seconds: float) -> str:
    data = batches(k, max(1, 200_000 // k))
    results = []
    for make in (lambda p: ours(p, sync), lambda p: raw(p, sync, False),
                 lambda p: raw(p, sync, True)):
        path = tempfile.mkdtemp(prefix="gf-bench-", dir=os.environ.get("BENCH_DIR"))
        try:
            run, close = make(path)
            n, elapsed = timed(run, data, seconds)
            close()
        finally:
            shutil.rmtree(path)
        results.append(n / elapsed)  # commits per second
    us, loop, multi = results
    return (f"{k:>6} {'on' if sync else 'off':>4} {us:>10,.0f} {us * k:>12,.0f} "
            f"{loop * k:>12,.0f} {multi * k:>14,.0f} {loop / us:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per configuration")
    args = parser.parse_args()
    print(f"{'K':>6} {'sync':>4} {'commits/s':>10} {'keys/s':>12} {'raw keys/s':>12} "
          f"{'putmulti keys/s':>14} {'ours/raw':>9}")
    for sync in (False, True):
        for k in SIZES:
            print(row(k, sync, args.seconds), flush=True)


if __name__ == "__main__":
    main()
