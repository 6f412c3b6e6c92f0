"""Membership benchmark: failure detection time and gossip traffic.

Simulation (MemoryNetwork + FakeClock, lan preset): for N members, time
until 99.9% and 100% of the others know a killed member is dead, and
packets sent per member per second in steady state. Real processes
(local preset, 127.0.0.1): time from SIGKILL until every other daemon
shows the victim dead.

    python scripts/benchmarks/membership.py [--sizes 10,100,1000] [--real 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from daemon.config import Config  # noqa: E402
from daemon.wire import Status  # noqa: E402
from simcluster import SimCluster  # noqa: E402


def simulate(n: int, preset: str, seed: int) -> dict[str, float]:
    config = Config.preset(preset)
    cluster = SimCluster(n, config, seed=seed)
    cluster.prefill()
    cluster.run(10)  # settle into steady state
    sent_before, t_before = cluster.net.stats["packets_sent"], cluster.clock.now()
    cluster.run(30)
    per_member = (cluster.net.stats["packets_sent"] - sent_before) / (
        n * (cluster.clock.now() - t_before))
    victim = "m1"
    cluster.events.clear()
    killed_at = cluster.clock.now()
    cluster.kill(victim)
    need = math.ceil(0.999 * (n - 1))
    knowers: set[str] = set()
    t999 = t_all = None
    deadline = killed_at + 10 * config.detection_bound(n)
    while cluster.clock.now() < deadline and t_all is None:
        cluster.run(0.05)
        for when, observer, member, status in cluster.events:
            if member == victim and status == Status.DEAD:
                knowers.add(observer)
        cluster.events.clear()
        if t999 is None and len(knowers) >= need:
            t999 = cluster.clock.now() - killed_at
        if len(knowers) == n - 1:
            t_all = cluster.clock.now() - killed_at
    return {"n": n, "t999": t999, "t_all": t_all, "bound": config.detection_bound(n),
            "packets": per_member}


def real_detection(members: int, runs: int) -> list[float]:
    """SIGKILL one daemon per run; seconds until every other daemon shows it dead."""
    import signal
    import tempfile

    from daemons import Cluster

    names = [f"n{i}" for i in range(members)]
    times = []
    with tempfile.TemporaryDirectory(prefix="gossipflow-bench-") as root:
        cluster = Cluster(Path(root), preset="local")
        try:
            cluster.start_many(names)
            for run in range(runs):
                victim = names[1 + run % (members - 1)]
                others = [n for n in names if n != victim]
                start = time.monotonic()
                cluster.kill(victim, signal.SIGKILL)
                while not all(cluster.statuses(o, timeout=0.5).get(victim) == "dead"
                              for o in others):
                    if time.monotonic() - start > 15:
                        raise SystemExit(f"{victim} not detected dead within 15 s")
                    time.sleep(0.01)
                times.append(time.monotonic() - start)
                cluster.restart(victim)
                cluster.wait_converged(names, timeout=15)
        finally:
            cluster.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--preset", default="lan")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--real", type=int, default=5, help="daemons for the real run (0: skip)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    print(f"simulation, preset {args.preset}, seed {args.seed}")
    print(f"{'N':>6} {'99.9% know (s)':>15} {'all know (s)':>13} {'bound (s)':>10} "
          f"{'packets/member/s':>17} {'wall (s)':>9}")
    for n in [int(x) for x in args.sizes.split(",")]:
        start = time.perf_counter()
        r = simulate(n, args.preset, args.seed)
        fmt = lambda v: f"{v:.2f}" if v is not None else "never"  # noqa: E731
        print(f"{n:>6} {fmt(r['t999']):>15} {fmt(r['t_all']):>13} {r['bound']:>10.2f} "
              f"{r['packets']:>17.2f} {time.perf_counter() - start:>9.1f}", flush=True)
    if args.real:
        times = real_detection(args.real, args.runs)
        print(f"\nreal processes, preset local, {args.real} daemons on 127.0.0.1: SIGKILL -> "
              f"all others show dead: " + ", ".join(f"{t:.2f}" for t in times)
              + f" s (median {statistics.median(times):.2f} s, promise 1.50 s)")


if __name__ == "__main__":
    main()
