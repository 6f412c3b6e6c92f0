"""Network-cut benchmark: a 3|2 cut under a running word count, timed from the heal.

Five daemons (``--preset local --replicas 2 --partitions 64``), each in a network
namespace of its own on a bridge: scripts/nemesis.py's network, daemons and API helpers,
imported, not copied (needs root and ``ip netns``). Every run starts a fresh cluster and
submits, one after the other, two word counts over the same corpus (scripts/chaos.py's
writer, ``--words`` words drawn with ``--seed``):

- base: no nemesis; the time from its submission (``gossipflow submit`` returned) to
  ``completed``;
- cut: the same flow under another name; ``--cut-after`` s (default 2) after its
  submission the members are split 3|2 (blackhole routes both ways between the
  groups), held ``--hold`` s (default 8), then healed. From the heal:

  - active: the first ``ring`` (polled through one daemon as fast as it answers; each
    member's worker reports its partitions every 0.3 s) in which that daemon sees all
    five members, every member answered, and every partition of the flow is ``active``
    on exactly one member (``-`` if the flow completed before a ring showed that: with
    a small corpus the last activation comes a fraction of a second before the end);
  - placed: the same, and every partition is held by its placed primary alone, with its
    placed replicas (no copy, handover or takeover left);
  - last activation: the last ``event=partition_active`` of the flow in any daemon's log
    (one clock: this machine's), a cross-check of ``active`` free of the polling;
  - done: ``completed``;
  - and its whole time from submission against base's (ratio, and the seconds lost).

Both tables must equal ``collections.Counter`` of the corpus, exactly. Prints a row per
run and the medians; exit 0 only if every flow completed with the exact count (1
otherwise, 2 without root or ``ip netns`` or on bad arguments, 130/143 on
Ctrl-C/SIGTERM). Every namespace (with its veths and bridge) is deleted after each run
and on any exit; every daemon and helper is stopped by its own process group (nemesis's
cleanup). Nothing is killed by name.

    scripts/bench cut [--runs 3] [--words 6000000] [--hold 8] [--seed 1]
"""

from __future__ import annotations

import argparse
import atexit
import collections
import json
import math
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/
from chaos import WORDCOUNT_FLOW, ChaosError, Interrupted, count_words, say, write_corpus
from nemesis import Nemesis, Network, netns_available

DAEMONS, REPLICAS, PARTITIONS = 5, 2, 64
COLUMNS = ["base s", "cut s", "ratio", "extra s", "heal>active s", "heal>placed s",
           "last activation s", "heal>done s"]


class Problem(Exception):
    """A run's check failed (the run's figures are still printed)."""


def partition_sets(ring: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The flow's partitions in ``ring`` if the asking daemon sees every member alive and
    all of them answered, else None."""
    if not ring or ring["incomplete"] or len(ring["members"]) != DAEMONS:
        return None
    mine = [parts for fid, parts in ring["flows"].items() if fid.rsplit("@", 1)[0] == name]
    return mine[0] if len(mine) == 1 else None


def all_active(ring: dict[str, Any] | None, name: str) -> bool:
    """Every partition of the flow ``active`` on exactly one member."""
    parts = partition_sets(ring, name)
    return parts is not None and all(
        sum(1 for s in parts.get(str(p), {}).values() if s["state"] == "active") == 1
        for p in range(PARTITIONS))


def all_placed(ring: dict[str, Any] | None, name: str) -> bool:
    """Every partition held by its placed primary alone, active, with its placed replicas."""
    parts = partition_sets(ring, name)
    if parts is None:
        return False
    for p, sets in enumerate(ring["placement"]):
        states = parts.get(str(p), {})
        mine = states.get(sets[0])
        if len(states) != 1 or not mine or mine["state"] != "active" \
                or mine["replicas"] != sets[1:]:
            return False
    return True


def activations(run: Nemesis, name: str, since: float) -> list[float]:
    """Unix times of the flow's ``event=partition_active`` lines after ``since``, from
    every daemon's log."""
    pattern = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?event=partition_active "
                         r"member=\S+ flow=(\S+) ")
    out = []
    for d in run.daemons:
        try:
            text = d.log_path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            m = pattern.match(line)
            if m and m.group(2).rsplit("@", 1)[0] == name:
                when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if when >= since:
                    out.append(when)
    return out


class CutRun:
    """One run: a fresh cluster (nemesis's), the base flow, the cut flow, the checks."""

    def __init__(self, number: int, args: argparse.Namespace, top: Path, net: Network,
                 flowdir: Path, expected: collections.Counter) -> None:
        self.number, self.args, self.flowdir, self.expected = number, args, flowdir, expected
        self.workdir = top / f"run{number}"
        self.workdir.mkdir(parents=True)
        self.cluster = Nemesis(argparse.Namespace(
            daemons=DAEMONS, replicas=REPLICAS, partitions=PARTITIONS, seed=args.seed,
            nemeses=["cut-3|2"]), self.workdir, net)
        self.cluster.rng = random.Random(f"cut-{args.seed}-{number}")  # the groups drawn
        self.problems: list[str] = []
        self.row = dict.fromkeys(COLUMNS, math.nan)
        """This run's figures (those measured so far if a check stops it)."""

    # ------------------------------------------------------------ helpers

    def submit(self, name: str) -> float:
        path = self.flowdir / f"{name}.py"  # next to corpus/, which the flow reads
        path.write_text(WORDCOUNT_FLOW.format(name=name))
        self.cluster.cli("submit", str(path), "--timeout", "10")
        submitted = time.monotonic()
        say(f"run {self.number}: submitted {name}")
        return submitted

    def status(self, name: str) -> str:
        self.cluster.tend()
        try:
            record = self.cluster.ask("flow", {"name": name}, timeout=2.0)
        except ChaosError:
            return "running"  # no answer (a loaded or cut daemon): ask again
        if record["status"] not in ("running", "completed"):
            self.problems.append(f"{name} is {record['status']}: {record.get('error')}")
        return record["status"]

    def wait_done(self, name: str, deadline: float) -> float | None:
        while time.monotonic() < deadline:
            if self.status(name) != "running":
                return time.monotonic()
            time.sleep(0.1)
        return None

    def check(self, name: str) -> None:
        got = json.loads(self.cluster.cli("query", name, "--json", "--timeout", "60",
                                          timeout=120))
        if got != dict(self.expected):
            wrong = sorted(w for w in set(got) | set(self.expected)
                           if got.get(w) != self.expected.get(w))
            self.problems.append(f"{name}: {len(wrong)} words differ from Counter, e.g. "
                                 + ", ".join(f"{w!r}: {got.get(w)} not {self.expected.get(w)}"
                                             for w in wrong[:5]))
        else:
            say(f"run {self.number}: {name} equals Counter ({sum(got.values())} words, "
                f"{len(got)} distinct)")

    # ------------------------------------------------------------ the run

    def run(self) -> dict[str, float]:
        a, c = self.args, self.cluster
        nan = math.nan
        row = self.row
        c.start_cluster()

        base = f"cut-base-{self.number}"
        submitted = self.submit(base)
        done = self.wait_done(base, submitted + a.timeout)
        if done is None:
            raise Problem(f"{base} still running {a.timeout:g} s after its submission")
        row["base s"] = done - submitted
        say(f"run {self.number}: {base} done in {row['base s']:.1f} s")
        self.check(base)

        name = f"cut-cut-{self.number}"
        submitted = self.submit(name)
        deadline = submitted + a.cut_after + a.hold + a.timeout
        done = None
        while time.monotonic() < submitted + a.cut_after:
            if self.status(name) != "running":
                raise Problem(f"{name} finished {time.monotonic() - submitted:.1f} s after its "
                              f"submission, before the cut: raise --words")
            time.sleep(0.1)
        groups = c.groups([(DAEMONS + 1) // 2, DAEMONS // 2])
        c.cut_groups(groups)
        cut_at = time.monotonic()
        say(f"run {self.number}: cut {c.show(groups)} "
            f"{cut_at - submitted:.1f} s after the submission, for {a.hold:g} s")
        while time.monotonic() < cut_at + a.hold:
            if done is None and self.status(name) != "running":
                done = time.monotonic()
                say(f"run {self.number}: {name} finished during the cut")
            time.sleep(0.1)
        c.net.heal()
        healed, healed_unix = time.monotonic(), time.time()
        say(f"run {self.number}: healed after {healed - cut_at:.1f} s")

        active = placed = None
        next_status = 0.0  # the ring is asked as often as it answers, the status every 0.25 s
        while (done is None or active is None or placed is None) \
                and time.monotonic() < deadline:
            if done is None and time.monotonic() >= next_status:
                next_status = time.monotonic() + 0.25
                if self.status(name) != "running":
                    done = time.monotonic()
            if done is None and (active is None or placed is None):
                ring = c.ring()
                now = time.monotonic()
                if active is None and all_active(ring, name):
                    active = now
                    say(f"run {self.number}: every partition active on exactly one member, "
                        f"{active - healed:.1f} s after the heal")
                if placed is None and all_placed(ring, name):
                    placed = now
            elif done is not None:
                break  # done: its partitions left the ring
            else:
                time.sleep(0.05)
        if done is None:
            raise Problem(f"{name} still running {a.timeout:g} s after the heal")
        say(f"run {self.number}: {name} done {done - healed:.1f} s after the heal, "
            f"{done - submitted:.1f} s after its submission")
        times = activations(c, name, healed_unix)
        row.update({"cut s": done - submitted, "heal>done s": done - healed,
                    "heal>active s": active - healed if active else nan,
                    "heal>placed s": placed - healed if placed else nan,
                    "last activation s": max(times) - healed_unix if times else nan})
        row["ratio"] = row["cut s"] / row["base s"]
        row["extra s"] = row["cut s"] - row["base s"]
        if active is None:
            say(f"run {self.number}: {name} completed before every partition was seen active "
                f"on exactly one member")
        self.check(name)
        return row


def print_row(label: str, row: dict[str, float], exact: str) -> None:
    cells = "".join(f"{('-' if math.isnan(row[c]) else f'{row[c]:.2f}'):>{len(c) + 3}}"
                    for c in COLUMNS)
    print(f"{label:<8}{cells}{exact:>8}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench cut", description="5 daemons in network namespaces (root, "
        "`ip netns`); per run, a word count with no cut, then the same under a 3|2 cut "
        "held --hold s: time from the heal to every partition active and to completion, "
        "and the whole time against the uncut count's.")
    p.add_argument("--runs", type=int, default=3, help="runs, a fresh cluster each (default 3)")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the corpus and the groups (default 1)")
    p.add_argument("--words", type=int, default=6_000_000,
                   help="corpus size in words (default 6000000)")
    p.add_argument("--hold", type=float, default=8.0,
                   help="seconds the cut is held (default 8)")
    p.add_argument("--cut-after", type=float, default=2.0,
                   help="seconds from the cut flow's submission to the cut (default 2)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds a flow may run after its submission (base) or after the "
                   "heal (cut) (default 300)")
    p.add_argument("--keep-dir", action="store_true",
                   help="keep the work directory (data, logs) even on success")
    args = p.parse_args(argv)
    if args.runs < 1 or args.words < 1 or args.hold <= 0 or args.cut_after < 0 \
            or args.timeout <= 0:
        p.error("--runs and --words must be >= 1, --hold and --timeout > 0, --cut-after >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = netns_available()
    if why:
        print(f"bench cut: needs root and `ip netns`: {why}", file=sys.stderr)
        return 2

    def interrupted(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    net = Network(DAEMONS)
    atexit.register(net.cleanup)  # also if something escapes the finally below
    top = Path(tempfile.mkdtemp(prefix="gossipflow-cut."))
    flowdir = top / "flow"
    corpus = flowdir / "corpus"
    rows: list[tuple[int, dict[str, float], str]] = []
    failures: list[str] = []
    written = 0
    code = 1
    run: CutRun | None = None
    try:
        written = write_corpus(corpus, args.words, args.seed)
        size = sum(p.stat().st_size for p in corpus.glob("*.txt"))
        say(f"corpus: {written} words ({size / 1e6:.1f} MB), seed {args.seed}, in {corpus}")
        expected = count_words(corpus)
        if sum(expected.values()) != written:
            raise ChaosError(f"the corpus reads back as {sum(expected.values())} words, "
                             f"not {written}")
        for number in range(1, args.runs + 1):
            run = CutRun(number, args, top, net, flowdir, expected)
            try:
                row = run.run()
            except Problem as err:
                run.problems.append(str(err))
                row = run.row
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_IGN)  # let this run's cleanup finish
                try:
                    run.cluster.stop_everything()
                finally:
                    net.cleanup()
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    for sig in (signal.SIGTERM, signal.SIGHUP):
                        signal.signal(sig, interrupted)
            problems = run.problems + run.cluster.unexpected
            if problems:
                failures += [f"run {number}: {p}" for p in problems]
                for p in problems:
                    say(f"PROBLEM: run {number}: {p}")
                print("\nlast lines of each daemon's log:", file=sys.stderr)
                for d in run.cluster.daemons:
                    print(f"--- {d.name} ({d.address}, {d.log_path})\n{d.log_tail(15)}",
                          file=sys.stderr)
            rows.append((number, row, "no" if problems else "yes"))
        code = 1 if failures else 0
    except ChaosError as err:
        print(f"bench cut: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bench cut: interrupted (Ctrl-C)", file=sys.stderr)
        code = 130
    except Interrupted as err:
        print(f"bench cut: interrupted ({err})", file=sys.stderr)
        code = 128 + err.signum
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        try:
            if run is not None:
                run.cluster.stop_everything()  # nothing left if the run's own finally ran
        finally:
            net.cleanup()
        if code in (0, 130, 128 + signal.SIGTERM, 128 + signal.SIGHUP) and not args.keep_dir:
            shutil.rmtree(top, ignore_errors=True)
        else:
            print(f"bench cut: data dirs and logs kept in {top}", file=sys.stderr)

    if rows:
        print()
        print(f"{DAEMONS} daemons in network namespaces, --preset local, R={REPLICAS}, "
              f"{PARTITIONS} partitions; word count of {written} words (seed {args.seed}); "
              f"cut {(DAEMONS + 1) // 2}|{DAEMONS // 2} at {args.cut_after:g} s, "
              f"held {args.hold:g} s")
        print(f"{'run':<8}" + "".join(f"{c:>{len(c) + 3}}" for c in COLUMNS)
              + f"{'exact':>8}")
        for number, row, exact in rows:
            print_row(str(number), row, exact)
        medians = {c: statistics.median(v) if (v := [r[c] for _, r, _ in rows
                                                     if not math.isnan(r[c])]) else math.nan
                   for c in COLUMNS}
        print_row("median", medians, "")
        print("base/cut s: submission to completed, without / with the cut (same cluster, "
              "one after the other); ratio = cut/base, extra s = cut - base;\n"
              "heal>active: every partition active on exactly one member (ring, polled); "
              "heal>placed: each on its placed primary alone with its placed replicas\n"
              "(-: the flow completed before a ring showed it); last activation: the flow's "
              "last event=partition_active in the logs, from the heal;\nheal>done: completed; "
              "exact: both tables equal collections.Counter")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
    return code


if __name__ == "__main__":
    sys.exit(main())
