"""Failover benchmark: kill -9 a primary under a running flow, time the recovery.

Three local daemons (``--preset local``, R=2, real processes on 127.0.0.1) run
an unbounded flow: ``generate(None)`` records i, keyed by i mod 256 (split k of
the 256 yields k, k + 256, ... in order, all with key k), folded into (count,
sum). Once every key has records, the primary of partition 0 is SIGKILLed.
From the daemons' logs (one clock: this machine's) it prints the time from the
kill to:

- detection: every survivor declares the victim dead;
- takeover: the last of the victim's partitions runs again on a survivor;
- first record / all resumed: the first / the last of the victim's partitions
  processed a record again (``event=partition_resumed``);
- all keys: every key's count (read with ``query``) grew past its count at the
  kill; its baseline, measured in the same run before the kill, is
  - steady round: the same from an arbitrary moment with no failure. The
    sources of a saturated member take turns under the backpressure, so even
    without a failure a key waits this long for its source's next turn;

then cancels the flow and checks every key: at every commit key k's state must
be a prefix of its records (sum = c k + 256 c (c - 1) / 2), so a lost or a
duplicated record shows as an inconsistent key. Repeats ``--runs`` times.

    python scripts/benchmarks/failover.py [--runs 3] [--settle 3]
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from daemons import Cluster, cli, wait_for  # noqa: E402

NAMES = ["n0", "n1", "n2"]
PARTITIONS = 256
FLOW = f"""
from nodes import Flow, sources, sinks
flow = Flow("strides")
(flow.source(sources.generate(None, lambda i: i))
     .key_by(lambda i: str(i % {PARTITIONS}))
     .fold((0, 0), lambda acc, i: (acc[0] + 1, acc[1] + i))
     .sink(sinks.table()))
"""


def stamps(log: str, pattern: str) -> list[tuple[float, re.Match]]:
    """(unix time, match) of every log line matching ``pattern`` after its timestamp."""
    out = []
    for line in log.splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?" + pattern, line)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((when, m))
    return out


def inconsistent(rows: dict) -> int:
    """Keys whose (count, sum) is not a prefix of their records: lost or duplicated."""
    bad = PARTITIONS - len(rows)
    for key, (c, total) in rows.items():
        bad += c < 1 or total != c * int(key) + PARTITIONS * c * (c - 1) // 2
    return bad


def one_run(root: Path, settle: float) -> dict[str, float]:
    root.mkdir(parents=True)
    cluster = Cluster(root, preset="local")
    try:
        cluster.start_many(NAMES, replicas=2)
        flow = root / "strides.py"
        flow.write_text(FLOW)
        result = cli("submit", str(flow), "--node", cluster["n0"].address)
        if result.returncode:
            raise SystemExit(f"submit failed: {result.stderr}")

        def query() -> dict:
            return {k: v for k, v in cluster.request("n0", "query", timeout=10.0,
                                                      args={"name": "strides"})}

        def every_key_advanced(since: dict, start: float) -> float:
            """Seconds from ``start`` until every key's count passed its count in ``since``."""
            wait_for(lambda: all(v[0] > since[k][0] for k, v in query().items()), 60,
                     interval=0.5, message="every key advances")
            return time.time() - start

        wait_for(lambda: len(query()) == PARTITIONS, 120, interval=0.5,
                 message="every key has records")
        time.sleep(settle)
        rows, start = query(), time.time()
        steady_round = every_key_advanced(rows, start)
        placement = cluster.request("n0", "ring", timeout=10.0)["placement"]
        victim = next(r[0] for r in placement if r[0] != "n0")
        theirs = {p for p, r in enumerate(placement) if r[0] == victim}
        survivors = [n for n in NAMES if n != victim]
        rows = query()
        before = sum(c for c, _ in rows.values())
        killed = time.time()
        cluster.kill(victim, signal.SIGKILL)
        cluster.wait_exit(victim)
        all_keys = every_key_advanced(rows, killed)

        def running_all() -> bool:
            flows = cluster.request("n0", "ring", timeout=10.0)["flows"]
            parts = next(iter(flows.values()), {})
            return all(any(s["state"] == "active" and m != victim for m, s in
                           parts.get(str(p), {}).items()) for p in range(PARTITIONS))

        wait_for(running_all, 60, interval=0.1, message="the survivors run every partition")
        time.sleep(settle)
        after = sum(c for c, _ in query().values())
        cluster.request("n0", "cancel", args={"name": "strides"})
        rows = query()
        logs = {n: cluster[n].log_path.read_text() for n in survivors}
        dead = [t for n in survivors for t, _ in stamps(
            logs[n], rf"event=member_dead member={n} peer={victim} ") if t >= killed]
        active = [t for n in survivors for t, m in stamps(
            logs[n], r"event=partition_active .*? partition=(\d+) ")
            if t >= killed and int(m.group(2)) in theirs]
        resumed = [t for n in survivors for t, m in stamps(
            logs[n], r"event=partition_resumed .*? partition=(\d+) ")
            if t >= killed and int(m.group(2)) in theirs]
        if len(dead) < len(survivors) or not active or not resumed:
            raise SystemExit("the logs lack detection, takeover or resume events")
        return {"detection": max(dead) - killed, "takeover": max(active) - killed,
                "first record": min(resumed) - killed, "all resumed": max(resumed) - killed,
                "all keys": all_keys, "steady round": steady_round,
                "records during": after - before, "inconsistent": inconsistent(rows)}
    except BaseException:
        print(cluster.log_tails(), file=sys.stderr)
        raise
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds of steady running before the kill and after recovery")
    args = parser.parse_args()
    columns = ["detection", "takeover", "first record", "all resumed", "all keys",
               "steady round"]
    print(f"{'run':<5}" + "".join(f"{c + ' s':>15}" for c in columns)
          + f"{'records':>12}{'lost/dup keys':>15}")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="gossipflow-failover-") as tmp:
        for run in range(1, args.runs + 1):
            r = one_run(Path(tmp) / f"run{run}", args.settle)
            failures += r["inconsistent"]
            print(f"{run:<5}" + "".join(f"{r[c]:>15.2f}" for c in columns)
                  + f"{int(r['records during']):>12}{int(r['inconsistent']):>15}", flush=True)
    print("target: processing resumes within 3 s of the kill; 0 keys lost or duplicated\n"
          "(all keys: every key's count grew after the kill; steady round: the same from an "
          "arbitrary moment before it, with no failure: a source waits for its turn)")
    if failures:
        raise SystemExit(f"{failures} inconsistent keys")


if __name__ == "__main__":
    main()
