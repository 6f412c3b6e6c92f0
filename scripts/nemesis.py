"""Nemesis run: daemons in network namespaces of their own, cut apart, paused and killed
while a word count and an unbounded generator run; every record must count once, and
every flow must finish soon after the last heal.

Topology (needs root and ``ip netns``): ``--daemons`` N network namespaces
``gfn<pid>-1`` .. ``gfn<pid>-N`` and a namespace ``gfn<pid>-br`` holding a bridge
``gfb<pid>``; a veth pair per daemon (``gfv<pid>-K`` on the bridge, ``eth0`` in the
daemon's namespace, 10.77.0.K/24). Every daemon binds 10.77.0.K:7400 inside its own
namespace (``ip netns exec``), so the network between them is a real one: cuts are
blackhole routes (``ip -n NS_A route add blackhole ADDR_B/32``, and the reverse), not
a filter in the daemon. No address exists outside those namespaces, so no packet of
the run can go anywhere else. API requests go through a small helper process per
namespace (``daemon.client.request`` run inside it), CLI commands through
``ip netns exec NS python -m daemon.cli ... --node 10.77.0.K:7400``.

Nemeses, drawn from ``--seed`` one after the other (each applied, held for a drawn
duration, healed; a line per event):

- ``cut-3|2``, ``cut-2|2|1``: the members split into groups that cannot reach each other;
- ``bridge``: two sides cut apart, one member reaching both;
- ``one-way``: A's packets to B are dropped (blackhole on A only);
- ``pause``: SIGSTOP of a primary's process group for 2-10 s, then SIGCONT;
- ``kill9``: SIGKILL of a daemon's group, restarted ~1 s later;
- ``term2``: SIGTERM to R members at once, SIGKILL 0.5 s later, both restarted;
- ``wipe``: SIGKILL of a daemon, its data dir deleted, restarted empty.

The flows and their checks are scripts/chaos.py's (imported, not copied): the word
count in rounds against ``collections.Counter`` and the generator's exact series.
At the end everything is healed and restarted, the last word count must complete and
every split of the generator advance within ``--timeout`` s (default 60) of that last
heal; then the generator is cancelled and every table checked. Exit 0 only if all
checks pass (1 otherwise, 2 on bad arguments, 130/143 on Ctrl-C/SIGTERM).

Everything it creates (namespaces, with the veths and bridge in them) is deleted on
exit, whatever the exit; every daemon and helper is stopped by its own process group
(SIGTERM, then SIGKILL) and gets PR_SET_PDEATHSIG. Nothing is ever killed by name.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chaos  # noqa: E402  (scripts/chaos.py: daemons, flows, checks)
from chaos import (GENERATE, GENERATE_FLOW, ROOT, ChaosError, Daemon,  # noqa: E402
                   Run, count_words, say, stop_all, write_corpus)

from daemon.errors import NodeUnreachableError  # noqa: E402

PORT = 7400
SUBNET = "10.77.0"
KINDS = ("cut-3|2", "cut-2|2|1", "bridge", "one-way", "pause", "kill9", "term2", "wipe")
HOLD = {"cut-3|2": (2.0, 6.0), "cut-2|2|1": (2.0, 6.0), "bridge": (2.0, 6.0),
        "one-way": (2.0, 6.0), "pause": (2.0, 10.0), "kill9": (0.8, 1.2),
        "term2": (0.8, 1.2), "wipe": (0.8, 1.2)}
"""Seconds each kind of nemesis is held (drawn uniformly); for the kills, the time down."""
GAP = (0.5, 1.5)
"""Seconds between a heal and the next nemesis (drawn uniformly)."""

AGENT = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
from daemon.client import request
for line in sys.stdin:
    q = json.loads(line)
    try:
        out = {"ok": request(q["node"], q["op"], q["args"], timeout=q["timeout"])}
    except Exception as err:
        out = {"err": "%s: %s" % (type(err).__name__, err)}
    sys.stdout.write(json.dumps(out, default=repr) + "\n")
    sys.stdout.flush()
'''


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise ChaosError(f"`ip {' '.join(args)}` exited {done.returncode}: "
                         f"{done.stderr.strip()}")
    return done


def netns_available() -> str | None:
    """None if this process can create network namespaces, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no `ip` command"
    name = f"gfnprobe{os.getpid()}"
    done = ip("netns", "add", name, check=False)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    ip("netns", "del", name, check=False)
    return None


class Network:
    """The namespaces, bridge and veths of one run, and the blackhole routes of the cuts.
    Every namespace is recorded before anything is put in it, so :meth:`cleanup` (any
    number of times, from any exit path) deletes exactly what this run created."""

    def __init__(self, count: int) -> None:
        self.tag = f"gfn{os.getpid()}"
        self.count = count
        self.bridge_ns = f"{self.tag}-br"
        self.bridge = f"gfb{os.getpid()}"
        self.created: list[str] = []
        self.routes: set[tuple[int, int]] = set()  # (k, j): blackhole to j in k's namespace
        self._lock = threading.Lock()

    def ns(self, k: int) -> str:
        return f"{self.tag}-{k}"

    @staticmethod
    def addr(k: int) -> str:
        return f"{SUBNET}.{k}"

    def _add_ns(self, name: str) -> None:
        ip("netns", "add", name)
        self.created.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def setup(self) -> None:
        self._add_ns(self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "add", self.bridge, "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", self.bridge, "up")
        for k in range(1, self.count + 1):
            ns, veth = self.ns(k), f"gfv{os.getpid()}-{k}"
            self._add_ns(ns)
            ip("-n", self.bridge_ns, "link", "add", veth, "type", "veth", "peer", "name",
               "eth0", "netns", ns)
            ip("-n", self.bridge_ns, "link", "set", veth, "master", self.bridge, "up")
            ip("-n", ns, "addr", "add", f"{self.addr(k)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    def block(self, k: int, j: int) -> None:
        """Drop what k sends to j (j's packets still reach k)."""
        if (k, j) not in self.routes:
            ip("-n", self.ns(k), "route", "add", "blackhole", f"{self.addr(j)}/32")
            self.routes.add((k, j))

    def cut(self, a: int, b: int) -> None:
        self.block(a, b)
        self.block(b, a)

    def heal(self) -> None:
        for k, j in sorted(self.routes):
            ip("-n", self.ns(k), "route", "del", "blackhole", f"{self.addr(j)}/32",
               check=False)
        self.routes.clear()

    def cleanup(self) -> None:
        with self._lock:
            self.routes.clear()
            while self.created:  # the veths go with the namespaces, the bridge with its own
                ip("netns", "del", self.created.pop(), check=False)


class Agent:
    """A helper process inside one namespace that sends API requests for us (the client
    must be in the namespace to reach its addresses)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-u", "-c", AGENT, str(ROOT)],
            cwd=ROOT, env=chaos.clean_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, start_new_session=True, preexec_fn=chaos._die_with_parent)  # noqa: PLW1509
        self._lock = threading.Lock()

    def request(self, node: str, op: str, args: dict[str, Any] | None = None,
                timeout: float = 3.0) -> Any:
        with self._lock:
            try:
                self.proc.stdin.write(json.dumps({"node": node, "op": op, "args": args or {},
                                                  "timeout": timeout}) + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except (OSError, ValueError) as err:
                raise NodeUnreachableError(f"helper in {self.ns} gone: {err}") from err
        if not line:
            raise NodeUnreachableError(f"helper in {self.ns} exited")
        answer = json.loads(line)
        if "err" in answer:
            raise NodeUnreachableError(answer["err"])
        return answer["ok"]

    def stop(self) -> None:
        if self.proc.returncode is None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@dataclass
class Event:
    number: int
    kind: str
    members: str
    start: float
    hold: float
    end: float = 0.0
    names: list[str] = field(default_factory=list)


class Nemesis(Run):
    """scripts/chaos's run with nemeses instead of its periodic kills."""

    def __init__(self, args: argparse.Namespace, workdir: Path, net: Network) -> None:
        super().__init__(args, workdir)
        self.net = net
        self.agents: list[Agent] = []
        self.events: list[Event] = []
        self.kinds = args.nemeses
        self.last_heal = 0.0
        self.stable_skips = 0

    # ------------------------------------------------------------ cluster

    def start_cluster(self) -> None:
        a = self.args
        self.net.setup()
        say(f"network: namespaces {self.net.ns(1)}..{self.net.ns(a.daemons)}, bridge "
            f"{self.net.bridge} in {self.net.bridge_ns}, {SUBNET}.1-{a.daemons}/24")
        addresses = [f"{self.net.addr(k)}:{PORT}" for k in range(1, a.daemons + 1)]
        for k in range(1, a.daemons + 1):
            agent = Agent(self.net.ns(k))
            self.agents.append(agent)
            d = Daemon(f"n{k}", PORT, self.workdir,
                       [x for x in addresses if x != addresses[k - 1]], "local", a.replicas,
                       a.partitions, host=self.net.addr(k),
                       prefix=["ip", "netns", "exec", self.net.ns(k)],
                       requester=agent.request)
            d.k = k  # type: ignore[attr-defined]
            self.daemons.append(d)
            d.start()
        say(f"started {a.daemons} daemons: "
            + ", ".join(f"{d.name}={d.address}" for d in self.daemons))
        self.wait_all_up(60.0)
        self.wait_converged(60.0)
        say("every daemon sees all of them alive")

    def stop_everything(self) -> None:
        for d in self.daemons:
            if d.state == "paused":
                d.signal_group(signal.SIGCONT)
        self.net.heal()
        stop_all(self.daemons)
        for agent in self.agents:
            agent.stop()

    def cli(self, *args: str, timeout: float = 60.0, check: bool = True,
            daemon: Daemon | None = None) -> str:
        """As Run.cli, but a daemon that does not answer (one crashing over and over, say)
        makes it ask the next up daemon: the checks still run."""
        candidates = [daemon] if daemon else [d for d in self.daemons if d.state == "up"]
        if daemon:
            candidates += [d for d in self.daemons if d.state == "up" and d is not daemon]
        last: Exception = ChaosError("no daemon is up to ask")
        for d in candidates:
            try:
                return super().cli(*args, timeout=timeout, check=check, daemon=d)
            except ChaosError as err:
                last = err
                say(f"asking another daemon: {err}")
        raise last

    def wait_up(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while any(d.state != "up" for d in self.daemons):
            if time.monotonic() > deadline:
                return False
            self.idle(0.05)
        return True

    def idle(self, seconds: float) -> None:
        """Sleep ``seconds`` while restarting what is due and watching the rounds."""
        end = time.monotonic() + seconds
        while True:
            self.tend()
            self.watch_rounds(self.nemesis_end)
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.05, left))

    def ring(self) -> dict[str, Any] | None:
        try:
            return self.ask("ring", {}, timeout=5.0)
        except ChaosError:
            return None

    def stable(self, timeout: float) -> bool:
        """Wait until every running flow's every partition is active on its placed
        primary with its placed replicas (no copy or takeover in progress): only then is
        every partition on R members, so taking R-1 away (or wiping one) loses nothing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ring = self.ring()
            if ring and not ring["incomplete"] and len(ring["members"]) == len(self.daemons):
                ok = True
                for parts in ring["flows"].values():
                    for p, sets in enumerate(ring["placement"]):
                        states = parts.get(str(p), {})
                        mine = states.get(sets[0])
                        if (len(states) != 1 or not mine or mine["state"] != "active"
                                or mine["replicas"] != sets[1:]):
                            ok = False
                if ok:
                    return True
            self.idle(0.5)
        return False

    # ------------------------------------------------------------ nemeses

    def chaos(self) -> None:
        a = self.args
        self.nemesis_end = time.monotonic() + a.duration
        if a.start_after:
            self.idle(a.start_after)
        sequence = list(a.sequence or [])
        while sequence if a.sequence else time.monotonic() < self.nemesis_end:
            if not self.wait_up(30.0):
                say("PROBLEM: not every daemon answers 30 s after the last heal: "
                    + ", ".join(f"{d.name}={d.state}" for d in self.daemons if d.state != "up"))
            kind = sequence.pop(0) if a.sequence else self.rng.choice(self.kinds)
            if kind in ("term2", "wipe") and not self.stable(20.0):
                self.stable_skips += 1
                say(f"{kind} skipped: partitions not all active on their placed members "
                    f"within 20 s")
                continue
            low, high = HOLD[kind]
            hold = self.rng.uniform(low, high)
            self.nemesis(kind, hold if a.hold is None else a.hold)
            self.idle(self.rng.uniform(*GAP))
        self.nemesis_end = 0.0

    def groups(self, sizes: list[int]) -> list[list[Daemon]]:
        members = list(self.daemons)
        self.rng.shuffle(members)
        out, i = [], 0
        for size in sizes:
            out.append(sorted(members[i:i + size], key=lambda d: d.k))
            i += size
        return out

    def cut_groups(self, groups: list[list[Daemon]]) -> None:
        for gi, group in enumerate(groups):
            for other in groups[gi + 1:]:
                for x in group:
                    for y in other:
                        self.net.cut(x.k, y.k)

    @staticmethod
    def show(groups: list[list[Daemon]]) -> str:
        return "|".join(",".join(d.name for d in g) for g in groups)

    def primary(self) -> Daemon:
        """The primary of a random partition of a running flow (``ring``), else anyone."""
        ring = self.ring()
        candidates = []
        if ring:
            for parts in ring["flows"].values():
                for states in parts.values():
                    candidates += [name for name, s in states.items() if s["state"] == "active"]
        up = [d for d in self.daemons if d.state == "up"]
        chosen = [d for d in up if d.name in candidates]  # in name order: reproducible
        return self.rng.choice(chosen or up)

    def nemesis(self, kind: str, hold: float) -> None:
        n = len(self.daemons)
        start = time.monotonic()
        event = Event(len(self.events) + 1, kind, "", start, hold)
        self.events.append(event)
        for round_ in self.rounds:
            if round_.done_at is None:
                round_.kills += 1  # "kills while it ran": here nemeses while it ran
        heal: Callable[[], None]
        if kind.startswith("cut-") or kind == "bridge":
            if kind == "cut-3|2":
                groups = self.groups([(n + 1) // 2, n // 2])
            elif kind == "cut-2|2|1":
                groups = self.groups([n // 3 + (i < n % 3) for i in range(3)])
            else:
                middle, *rest = self.groups([1, (n - 1) // 2, n - 1 - (n - 1) // 2])
                groups = rest
            self.cut_groups([g for g in groups if g])
            event.members = self.show(groups)
            if kind == "bridge":
                event.members = f"{middle[0].name} bridges {self.show(groups)}"
            heal = self.net.heal
        elif kind == "one-way":
            x, y = self.groups([1, 1])
            self.net.block(x[0].k, y[0].k)
            event.members = f"{x[0].name}-/->{y[0].name}"
            heal = self.net.heal
        elif kind == "pause":
            victim = self.primary()
            victim.signal_group(signal.SIGSTOP)
            victim.state = "paused"
            event.members = victim.name

            def heal() -> None:
                victim.signal_group(signal.SIGCONT)
                victim.state = "up"
        else:
            up = sorted((d for d in self.daemons if d.state == "up"), key=lambda d: d.k)
            count = min(self.args.replicas, len(up)) if kind == "term2" else 1
            victims = self.rng.sample(up, count)
            if kind == "term2":
                for d in victims:
                    d.signal_group(signal.SIGTERM)
                time.sleep(0.5)
            for d in victims:
                d.kill()  # SIGKILL to the group, reaped
                d.restart_at = math.inf
                if kind == "wipe":
                    shutil.rmtree(d.data_dir, ignore_errors=True)
            event.members = ",".join(d.name for d in victims)

            def heal() -> None:
                for d in victims:
                    d.restart_at = 0.0
                self.tend()
        self.idle(max(0.0, start + hold - time.monotonic()))
        heal()
        event.end = self.last_heal = time.monotonic()
        say(f"event {event.number}: {kind} {event.members} at {event.start - chaos.T0:.1f} s"
            f" for {event.end - event.start:.1f} s")

    # ------------------------------------------------------------ the whole run

    def run(self) -> bool:
        a = self.args
        corpus = self.flowdir / "corpus"
        words = a.words if a.words is not None else int(chaos.WORDS_PER_SECOND * a.duration)
        written = write_corpus(corpus, words, a.seed)
        size = sum(p.stat().st_size for p in corpus.glob("*.txt"))
        say(f"corpus: {written} words ({size / 1e6:.1f} MB), seed {a.seed}, in {corpus}")
        counted: list[collections.Counter] = []
        counting = threading.Thread(target=lambda: counted.append(count_words(corpus)),
                                    name="counter", daemon=True)
        counting.start()
        generate_file = self.flowdir / "generate.py"
        generate_file.write_text(GENERATE_FLOW.format(name=GENERATE, partitions=a.partitions,
                                                      sample=a.sample))
        self.nemesis_end = 0.0
        self.start_cluster()
        self.submit_round()
        self.cli("submit", str(generate_file), "--timeout", "10")
        say(f"submitted {GENERATE}")

        self.chaos()
        self.net.heal()
        for d in self.daemons:
            if d.state == "paused":
                d.signal_group(signal.SIGCONT)
                d.state = "up"
            if d.state == "down":
                d.restart_at = 0.0
        self.tend()
        self.last_heal = self.chaos_end = time.monotonic()
        deadline = self.last_heal + a.timeout
        say(f"nemeses over: {len(self.events)} events in {a.duration:g} s; all healed, "
            f"flows must finish by {deadline - chaos.T0:.1f} s")
        before = self.generator_table()

        last = self.rounds[-1]
        self.gen_done = None
        advanced, next_table = 0, 0.0
        while (last.done_at is None or self.gen_done is None) \
                and time.monotonic() < deadline:
            self.tend()
            if self.gen_done is None and time.monotonic() >= next_table:
                # every split past its count at the heal: a record lost in the nemeses
                # is then followed by later ones, so it shows as a gap
                now = self.generator_table()
                advanced = sum(1 for key, state in now.items()
                               if state[0] > before.get(key, (0,))[0])
                next_table = time.monotonic() + 1.0
                if advanced == a.partitions:
                    self.gen_done = time.monotonic()
                    say(f"every split of {GENERATE} advanced, "
                        f"{self.gen_done - self.last_heal:.1f} s after the last heal")
            if last.done_at is None:
                try:
                    record = self.ask("flow", {"name": last.name}, timeout=2.0)
                except ChaosError as err:
                    say(f"asking again: {err}")
                    record = {"status": "running"}
                if record["status"] != "running":
                    self.finished(last, record)
                    continue
            time.sleep(0.5)
        self.wc_done = last.done_at
        if last.done_at is None:
            say(f"PROBLEM: {last.name} still running {a.timeout:g} s after the last heal")
            self.diagnose(last.name)
        if self.gen_done is None:
            say(f"PROBLEM: only {advanced} of {a.partitions} splits of {GENERATE} advanced "
                f"within {a.timeout:g} s of the last heal")
            self.diagnose(GENERATE)
        self.cli("cancel", GENERATE, "--timeout", "10")
        stop_by = time.monotonic() + 30.0
        while time.monotonic() < stop_by:
            try:
                seen = [d.request("flow", {"name": GENERATE}, timeout=1.0)["status"]
                        for d in self.daemons]
            except Exception:  # noqa: BLE001  (a helper's error: ask again)
                seen = []
            if seen and all(s != "running" for s in seen):
                break
            time.sleep(0.1)
        progress = json.loads(self.cli("status", GENERATE, "--json", "--timeout", "10"))
        say(f"{GENERATE} {progress['status']}")
        return self.check(written, counting, counted, progress["status"], progress, advanced)

    def diagnose(self, name: str) -> None:
        """What each member thinks of an unfinished flow, and the ring's partition states."""
        print(f"--- diagnosis of {name}:")
        for d in self.daemons:
            try:
                r = d.request("flow", {"name": name}, timeout=3.0)
                stages = {s: (f["done"], f["tasks"], f["unacked"])
                          for s, f in r.get("local", {}).items()}
                print(f"  {d.name}: status {r['status']}, tasks done {r['tasks_done']} of "
                      f"{r['tasks']}; local stages (done, tasks, unacked): {stages}")
            except Exception as err:  # noqa: BLE001
                print(f"  {d.name}: no answer ({err})")
        ring = self.ring()
        if ring:
            for fid, parts in ring["flows"].items():
                if not fid.startswith(name):
                    continue
                states = collections.Counter(s["state"] for m in parts.values()
                                             for s in m.values())
                unrep = sum(s["unreplicated"] for m in parts.values() for s in m.values())
                print(f"  ring {fid}: {len(parts)} partitions; states {dict(states)}; "
                      f"unreplicated {unrep}; incomplete: {ring['incomplete']!r}")
        with contextlib.suppress(ChaosError):
            print("  status --json: " + self.cli("status", name, "--json", "--timeout", "10",
                                                 check=False)[:4000])

    def report(self, written: int, expected: collections.Counter, wc: dict[str, int],
               lines: list[str], gen: dict[str, int], generate_status: str,
               problems: list[str]) -> None:
        a = self.args
        if self.wc_done is None:
            problems.append(f"the word count did not complete within {a.timeout:g} s of "
                            f"the last heal")
        if self.gen_done is None:
            problems.append(f"{GENERATE} did not advance on every split within "
                            f"{a.timeout:g} s of the last heal")
        done = [t for t in (self.wc_done, self.gen_done) if t is not None]
        heal_to_done = (max(done) - self.last_heal) if len(done) == 2 else float("nan")
        wall = time.monotonic() - chaos.T0
        records = wc["records"] + gen["records"]
        lost, dup = wc["lost"] + gen["lost"], wc["duplicated"] + gen["duplicated"]
        kinds = collections.Counter(e.kind for e in self.events)
        print()
        print(f"daemons {a.daemons} (network namespaces {self.net.tag}-*), replicas "
              f"{a.replicas}, partitions {a.partitions}, seed {a.seed}, nemeses "
              + (f"in sequence {','.join(a.sequence)}" if a.sequence else
                 f"{a.duration:g} s of {','.join(self.kinds)}"))
        print(f"events: {len(self.events)} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))};"
              f" {self.stable_skips} kills skipped for an unsettled ring)")
        print(f"{chaos.WORDCOUNT}: {len(self.rounds)} round{'s' * (len(self.rounds) > 1)} of "
              f"{written} words ({len(expected)} distinct), each checked against "
              f"collections.Counter: {wc['records']} records, lost {wc['lost']}, "
              f"duplicated {wc['duplicated']}")
        print("\n".join(line.replace(" kills while", " nemeses while") for line in lines))
        print(f"{GENERATE}: {generate_status}; {gen['records']} records checked over "
              f"{gen['keys']} keys: lost {gen['lost']}, duplicated {gen['duplicated']}, "
              f"inconsistent keys {gen['inconsistent']}")
        print(f"records checked: {records}, lost: {lost}, duplicated: {dup}")
        print(f"last heal to completion: {heal_to_done:.1f} s (word count "
              + (f"{self.wc_done - self.last_heal:.1f} s" if self.wc_done else "never")
              + ", every generator split advanced "
              + (f"{self.gen_done - self.last_heal:.1f} s" if self.gen_done else "never")
              + ")")
        print(f"wall time: {wall:.1f} s")
        print(f"summary: events={len(self.events)} records={records} lost={lost} "
              f"duplicated={dup} heal_to_done={heal_to_done:.1f}s wall={wall:.1f}s "
              f"ok={int(not problems)}")
        if problems:
            print("FAILED:\n  " + "\n  ".join(problems))
        else:
            print("OK: every record counted exactly once, every flow finished after the heal")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/nemesis", description="Daemons in network namespaces cut apart, paused "
        "and killed while a word count and an unbounded generator run; checks that no record "
        "is lost or counted twice and that every flow finishes after the last heal. Root.")
    p.add_argument("--daemons", type=int, default=5, help="how many daemons (default 5)")
    p.add_argument("--replicas", type=int, default=2, help="--replicas R (default 2)")
    p.add_argument("--partitions", type=int, default=chaos.PARTITIONS,
                   help=f"--partitions (default {chaos.PARTITIONS})")
    p.add_argument("--duration", type=float, default=300.0,
                   help="seconds of nemeses; also sizes the corpus (default 300)")
    p.add_argument("--seed", type=int, default=1, help="seed of everything drawn (default 1)")
    p.add_argument("--nemeses", default=",".join(KINDS),
                   help="comma list of the kinds to draw from (default: all): "
                   + ", ".join(KINDS))
    p.add_argument("--sequence", default=None,
                   help="comma list of nemeses to apply exactly, in this order (instead of "
                   "drawing them for --duration)")
    p.add_argument("--hold", type=float, default=None,
                   help="hold every nemesis this many seconds (default: drawn per kind)")
    p.add_argument("--start-after", type=float, default=0.0,
                   help="seconds between the submissions and the first nemesis (default 0)")
    p.add_argument("--words", type=int, default=None,
                   help=f"corpus size in words (default {chaos.WORDS_PER_SECOND} x --duration)")
    p.add_argument("--sample", type=int, default=chaos.SAMPLE,
                   help=f"the generator keeps one index in SAMPLE (default {chaos.SAMPLE})")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds after the last heal by which the word count must complete "
                   "and every generator split advance (default 60)")
    p.add_argument("--keep-dir", action="store_true",
                   help="keep the work directory (data, logs) even on success")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.nemeses.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        p.error(f"unknown nemeses {unknown}; choose from {', '.join(KINDS)}")
    args.nemeses = kinds
    if args.sequence is not None:
        args.sequence = [k.strip() for k in args.sequence.split(",") if k.strip()]
        unknown = [k for k in args.sequence if k not in KINDS]
        if unknown or not args.sequence:
            p.error(f"unknown nemeses in --sequence {unknown}; choose from {', '.join(KINDS)}")
    if args.daemons < 3 or args.daemons > 200:
        p.error("--daemons must be 3..200")
    if args.replicas < 2 or args.replicas > args.daemons:
        p.error("--replicas must be 2..--daemons")
    if args.partitions < 1 or args.partitions & (args.partitions - 1):
        p.error("--partitions must be a power of two")
    if args.duration <= 0 or args.timeout <= 0 or args.sample < 1:
        p.error("--duration and --timeout must be > 0, --sample >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = netns_available()
    if why:
        print(f"nemesis: needs root and `ip netns`: {why}", file=sys.stderr)
        return 2

    net = Network(args.daemons)
    atexit.register(net.cleanup)  # also if something below escapes the finally
    workdir = Path(tempfile.mkdtemp(prefix="gossipflow-nemesis."))
    try:
        return chaos.run_script("nemesis", lambda: Nemesis(args, workdir, net), args.keep_dir,
                                workdir)
    finally:
        net.cleanup()


if __name__ == "__main__":
    sys.exit(main())
