"""Report on daemon.placement: balance, movement on join/leave, and speed.

Run: python scripts/benchmarks/placement.py   (in the project's .venv)

Columns:
  max/avg   most replica slots on one member / P*R/N
  floor     ceil(P*R/N) / (P*R/N), the best max/avg any placement can reach
  join      slots moved when node-N joins node-0..node-(N-1), / optimum P*R/(N+1)
  leave     slots moved when node-0 leaves node-0..node-(N-1), / optimum P*R/N
  ms/call   mean wall time of one place() on N members
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from daemon.placement import moved_slots, place

MEMBERS = (3, 5, 10, 30, 100)
PARTITIONS = (256, 1024)
REPLICAS = (1, 2, 3)


def names(n: int) -> list[str]:
    return [f"node-{i}" for i in range(n)]


BUDGET_MS = 100.0
"""A membership change places every partition again: place(N=30, P=1024, R=3) within this."""


def per_call_ms(n: int, p: int, r: int) -> float:
    """Mean wall time of place() over at least 3 calls and 0.2 s."""
    runs, start = 0, time.perf_counter()
    while True:
        place(names(n), p, r)
        runs += 1
        if runs >= 3 and time.perf_counter() - start > 0.2:
            return (time.perf_counter() - start) / runs * 1000


def row(n: int, p: int, r: int) -> str:
    ms = per_call_ms(n, p, r)
    base = place(names(n), p, r)
    avg = p * r / n
    load = Counter(m for s in base for m in s)
    joined = place(names(n + 1), p, r)
    left = place(names(n)[1:], p, r)
    join = moved_slots(base, joined) / (p * r / (n + 1))
    leave = moved_slots(base, left) / (p * r / n)
    return (f"{n:>5} {p:>6} {r:>3} {max(load.values()) / avg:>9.4f} "
            f"{math.ceil(avg) / avg:>9.4f} {join:>7.3f} {leave:>7.3f} {ms:>9.2f}")


def main() -> None:
    print(f"{'N':>5} {'P':>6} {'R':>3} {'max/avg':>9} {'floor':>9} {'join':>7} {'leave':>7} "
          f"{'ms/call':>9}")
    for n in MEMBERS:
        for p in PARTITIONS:
            for r in REPLICAS:
                print(row(n, p, r), flush=True)
    ms = per_call_ms(30, 1024, 3)
    print(f"place(N=30, P=1024, R=3): {ms:.1f} ms per call; budget {BUDGET_MS:g} ms: "
          f"{'met' if ms < BUDGET_MS else 'NOT met'}")


if __name__ == "__main__":
    main()
