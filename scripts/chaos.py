"""Chaos run: local daemons SIGKILLed and restarted while two flows run; every record
must count exactly once.

What it does (``scripts/chaos --help`` for the options):

1. Writes a corpus with a fixed seed (sized by ``--duration``) and two flow files
   into a temporary directory, and computes ``collections.Counter`` over the corpus
   (in a thread, while the cluster starts).
2. Starts ``--daemons`` daemons on free 127.0.0.1 ports (``--preset local``,
   ``--replicas R``), each in a process group of its own, and submits
   - ``chaos-wordcount-1``: a bounded word count over the corpus; whenever a round
     completes with more than MIN_ROUND seconds of chaos left, the same count is
     submitted again as ``chaos-wordcount-2``, ``-3``..., so kills always hit one;
   - ``chaos-generate``: an unbounded ``sources.generate(None, ...)``, checked as
     described in :data:`GENERATE_FLOW`.
3. For ``--duration`` seconds, every ``--kill-every`` seconds (+-20%, drawn from
   ``--seed``), SIGKILLs the process group of a random running daemon and starts it
   again (same name, port and data dir) ``--down-for`` seconds later. A daemon counts
   as down from its kill until it answers requests again; at most R-1 are down at once
   (a kill waits until that holds).
4. Restarts whatever is down, waits for the last word count to complete and for
   every split of the generator to advance, cancels the generator, queries every
   table (``gossipflow query --json``) and checks them: each word count equals the
   Counter, and every key of the generator is exactly consistent. Prints kills,
   records checked, lost and duplicated; exit 0 only if every check passed, 1
   otherwise (2 on bad arguments, 130/143 on Ctrl-C/SIGTERM).

Every process it starts is stopped by its own process group at the end (SIGTERM,
then SIGKILL), on success, failure, Ctrl-C or SIGTERM; daemons also get SIGKILL from
the kernel if this script dies (PR_SET_PDEATHSIG). Nothing is ever killed by name.
On failure the tail of each daemon's log is printed and the temporary directory is
kept (``--keep-dir`` keeps it always).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's daemon and nodes, whatever is installed

from daemon.client import request
from daemon.errors import ClientError

HOST = "127.0.0.1"
DAEMON_CMD = [sys.executable, "-m", "daemon.cli"]
WORDCOUNT, GENERATE = "chaos-wordcount", "chaos-generate"
GRACE = 3.0
"""Seconds a daemon gets to leave after SIGTERM before its group gets SIGKILL."""
WORDS_PER_SECOND = 100_000
"""Corpus words per second of --duration. Under the default chaos (and the generator's
load) one round of the word count then takes a quarter of the chaos on this 2-core
machine when nothing else runs, and all of it when other work loads the machine."""
MIN_ROUND = 5.0
"""A word count that completes with more seconds of chaos left than this (and than half
the time it took) is submitted again under the next name: kills keep hitting a bounded
flow, and the last round does not run long after the chaos."""
SAMPLE = 100
"""The generator passes on one index in SAMPLE. An unbounded source reads as fast as it
can: with every record shuffled and folded, 5 daemons saturate 2 cores (members are
falsely suspected, the word count crawls); generating an index costs far less."""
PARTITIONS = 64
"""--partitions of the chaos cluster. With 256 (the daemon's default) each of 5 daemons
on 2 cores runs ~52 generator source tasks, each reading 50 000 indices per step, so
every other task of the member waits ~0.5 s per round: the word count ran 5x slower."""
GENERATE_FLOW = '''\
"""Unbounded generator checked for lost and duplicated records (written by scripts/chaos).

sources.generate(None, fn) cuts indices into P strided splits: split j is read by
partition j's task as j, j + P, j + 2P, ... in that order. Each record is keyed by
its split, so a key's records all come from one upstream task, whose batches are
applied in sequence order (the receiver's high-water mark): the fold sees them in
index order. Its state (count, top, gaps, dups, total) is therefore, after every
commit, exactly (n, j + (n-1) S, 0, 0, n j + S n (n-1) / 2) for some n, where S is
the stride of the kept indices. A lost record shows as a gap (and a short count), a
duplicated one as a dup (and a long count). The check holds at every commit, so it
does not matter when the flow is stopped or when each member's rows are read; and
scripts/chaos cancels it only once every split has advanced after the last kill, so a
record lost during the kills is followed by later ones and shows as a gap.
"""
from nodes import Flow, sinks, sources

P = {partitions}  # the cluster's partition count: the number of splits
SAMPLE = {sample}  # one index in SAMPLE of each split goes on (the rest only costs generating)
S = P * SAMPLE


def fold(acc, i):
    count, top, gaps, dups, total = acc
    want = top + S if count else i % P
    if i < want:
        dups += 1
    elif i > want:
        gaps += (i - want) // S
    return (count + 1, max(top, i), gaps, dups, total + i)


flow = Flow("{name}")
(flow.source(sources.generate(None, lambda i: i), name="indices")
     .filter(lambda i: i // P % SAMPLE == 0, name="sample")
     .key_by(lambda i: "split-%04d" % (i % P), name="by split")
     .fold((0, -1, 0, 0, 0), fold, name="check")
     .sink(sinks.table(), name="state"))
'''
WORDCOUNT_FLOW = '''\
from nodes import Flow, sinks, sources
flow = Flow("{name}")
(flow.source(sources.files("corpus/*.txt"))      # relative to this file's directory
     .flat_map(str.split)
     .key_by(lambda w: w)
     .count()
     .sink(sinks.table()))
'''


class ChaosError(Exception):
    """A step of the run did not happen (a daemon did not start, a command failed...)."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: stop like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ---------------------------------------------------------------- output

T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f} s] {message}", flush=True)


# ---------------------------------------------------------------- ports


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_is_free(port: int) -> bool:
    """True if ``port`` can be bound on 127.0.0.1 for both TCP and UDP right now."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:  # as ZeroMQ binds: TIME_WAIT leftovers are fine
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` ports free for TCP and UDP, below the ephemeral range, so that no
    client's outgoing connection takes one while its daemon is down."""
    low = _ephemeral_low()
    rng = random.Random()  # not the run's seed: two runs at once must not collide
    found: list[int] = []
    for _ in range(1000):
        port = rng.randrange(20000, low) if low > 21000 else rng.randrange(1024, 65536)
        if port not in found and port_is_free(port):
            found.append(port)
            if len(found) == count:
                return found
    raise ChaosError(f"found only {len(found)} free ports of {count}")


# ---------------------------------------------------------------- processes


def _load_prctl() -> Callable[..., int] | None:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not after fork
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL if this script dies (Linux)."""
    if _prctl is not None:
        _prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOSSIPFLOW_NODE", "GOSSIPFLOW_SECRET_FILE")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Daemon:
    """One daemon: its arguments, its process (group) of the moment and its state.

    ``state`` is ``up`` (answers requests), ``down`` (killed, waiting for its restart)
    or ``starting`` (restarted, not answering yet); only ``up`` daemons are killed.
    """

    def __init__(self, name: str, port: int, workdir: Path, seeds: list[str],
                 preset: str, replicas: int, partitions: int, host: str = HOST,
                 prefix: list[str] | None = None,
                 requester: Callable[..., Any] | None = None) -> None:
        """``host``: the address to bind; ``prefix``: a command to run the daemon and its
        CLI commands under (e.g. ``ip netns exec NS``); ``requester``: what sends its API
        requests, ``request(node, op, args, timeout=)`` (default: daemon.client's)."""
        self.name, self.port, self.host = name, port, host
        self.prefix = list(prefix or [])
        self.requester = requester or request
        self.data_dir = workdir / "data" / name
        self.log_path = workdir / f"{name}.log"
        self.args = ["start", "--name", name, "--bind", self.address,
                     "--data-dir", str(self.data_dir), "--preset", preset,
                     "--replicas", str(replicas), "--partitions", str(partitions)]
        if seeds:
            self.args += ["--join", ",".join(seeds)]
        self.proc: subprocess.Popen | None = None
        self.state = "down"
        self.starts = 0
        self.restart_at = 0.0
        self.started_at = 0.0
        self.killed_at = 0.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"----- chaos: start #{self.starts}: {' '.join(self.args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.prefix + DAEMON_CMD + self.args, cwd=ROOT, env=clean_env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True,
                preexec_fn=_die_with_parent)  # noqa: PLW1509 (only prctl, looked up before)
        self.state = "starting"
        self.started_at = time.monotonic()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        """Signal the daemon's process group (its pid: start_new_session), unless reaped:
        once reaped the number may belong to someone else."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group (the daemon and its runtime process) and reap it."""
        self.signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
        self.state = "down"
        self.killed_at = time.monotonic()

    def request(self, op: str, args: dict[str, Any] | None = None,
                timeout: float = 3.0) -> Any:
        """An API request to this daemon (what the CLI sends)."""
        return self.requester(self.address, op, args, timeout=timeout)

    def answers(self, timeout: float = 0.3) -> bool:
        try:
            return self.request("status", timeout=timeout)["name"] == self.name
        except (ClientError, KeyError, TypeError):
            return False

    def log_tail(self, lines: int) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def stop_all(daemons: list[Daemon], grace: float = GRACE) -> None:
    """SIGTERM every group at once, wait up to ``grace``, SIGKILL what is left; reap all."""
    live = [d for d in daemons if d.proc is not None and d.proc.returncode is None]
    for d in live:
        d.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for d in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            d.proc.wait(max(0.0, deadline - time.monotonic()))
    for d in live:
        if d.proc.returncode is None:
            print(f"chaos: {d.name} (pid {d.proc.pid}) did not leave within {grace:g} s:"
                  f" SIGKILL to its group", file=sys.stderr)
            d.signal_group(signal.SIGKILL)
            d.proc.wait()


# ---------------------------------------------------------------- the command line


def gossipflow(*args: str, timeout: float = 60.0, check: bool = True,
               prefix: list[str] | None = None) -> str:
    """Run ``python -m daemon.cli ARGS`` (what ``gossipflow ARGS`` runs), under the
    command ``prefix`` if any (e.g. ``ip netns exec NS``); its stdout.

    Raises:
        ChaosError: it exited non-zero (with ``check``) or took longer than ``timeout``.
    """
    try:
        done = subprocess.run(list(prefix or []) + DAEMON_CMD + list(args), cwd=ROOT, env=clean_env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise ChaosError(f"`gossipflow {' '.join(args)}` took over {timeout:g} s") from err
    if check and done.returncode != 0:
        raise ChaosError(f"`gossipflow {' '.join(args)}` exited {done.returncode}: "
                         f"{done.stderr.strip()}")
    return done.stdout


# ---------------------------------------------------------------- the inputs


def write_corpus(directory: Path, words: int, seed: int, files: int = 8) -> int:
    """Text files of about ``words`` words drawn with ``seed`` (a Zipf-like vocabulary
    with some non-ASCII letters, lines of 1-16 words); the number of words written."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz" * 4 + "éüßøçñ漢字ж"
    vocabulary = sorted({"".join(rng.choices(letters, k=rng.randint(1, 10)))
                         for _ in range(20_000)})
    rng.shuffle(vocabulary)
    cum_weights = list(itertools.accumulate(1 / (rank + 1) ** 0.9
                                            for rank in range(len(vocabulary))))
    pool = []
    for _ in range(20_000):
        line = rng.choices(vocabulary, cum_weights=cum_weights, k=rng.randint(1, 16))
        pool.append((" ".join(line), len(line)))
    mean = sum(n for _, n in pool) / len(pool)
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    per_file = max(1, round(words / mean / files))
    for f in range(files):
        lines = rng.choices(pool, k=per_file)
        written += sum(n for _, n in lines)
        (directory / f"part-{f:02d}.txt").write_text(
            "\n".join(text for text, _ in lines) + "\n", encoding="utf-8")
    return written


def count_words(directory: Path) -> collections.Counter:
    """collections.Counter of the whitespace-separated words of every file, read back."""
    counts: collections.Counter = collections.Counter()
    for path in sorted(directory.glob("*.txt")):
        counts.update(path.read_text(encoding="utf-8").split())
    return counts


# ---------------------------------------------------------------- checks


def check_generate(table: dict[str, Any], partitions: int, sample: int) -> dict[str, int]:
    """Figures of the generator's table (see GENERATE_FLOW): keys, records, lost,
    duplicated, inconsistent (keys whose state is not exactly the series up to its top
    index), missing (splits without a key) and unexpected keys."""
    stride = partitions * sample
    figures = {"keys": len(table), "records": 0, "lost": 0, "duplicated": 0,
               "inconsistent": 0}
    expected_keys = {f"split-{j:04d}" for j in range(partitions)}
    figures["missing"] = len(expected_keys - set(table))
    figures["unexpected"] = len(set(table) - expected_keys)
    for key, state in sorted(table.items()):
        if key not in expected_keys:
            continue
        j = int(key.rsplit("-", 1)[1])
        count, top, gaps, dups, total = state
        figures["records"] += count
        figures["lost"] += gaps
        figures["duplicated"] += dups
        n = (top - j) // stride + 1
        if (top - j) % stride or count != n or total != n * j + stride * n * (n - 1) // 2:
            figures["inconsistent"] += 1
            if not gaps and not dups:  # out of order or rewound: count the difference
                figures["lost"] += max(0, n - count)
                figures["duplicated"] += max(0, count - n)
            if figures["inconsistent"] <= 5:
                print(f"  {key}: state {state}: {n} records expected up to index {top}")
    return figures


# ---------------------------------------------------------------- the run


@dataclass
class Round:
    """One submission of the word count (a flow of its own name)."""

    name: str
    path: Path
    submitted_at: float
    done_at: float | None = None
    status: str = "running"
    error: str = ""
    kills: int = 0
    """Kills while it ran."""


class Run:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.flowdir = workdir / "flow"
        self.rng = random.Random(args.seed)
        self.daemons: list[Daemon] = []
        self.kills = 0
        self.deferred = 0
        self.unexpected: list[str] = []
        self.rounds: list[Round] = []
        self.chaos_end = 0.0
        self._next_status = 0.0

    # ------------------------------------------------------------ daemons

    def stop_everything(self) -> None:
        stop_all(self.daemons)

    def node(self) -> str:
        """The address of a daemon that answers now (for client commands)."""
        return self.up_daemon().address

    def up_daemon(self) -> Daemon:
        up = [d for d in self.daemons if d.state == "up"]
        if not up:
            raise ChaosError("no daemon is up to ask")
        return up[0]

    def cli(self, *args: str, timeout: float = 60.0, check: bool = True,
            daemon: Daemon | None = None) -> str:
        """``gossipflow ARGS --node D`` for an up daemon D (or ``daemon``), run under D's
        command prefix."""
        d = daemon or self.up_daemon()
        return gossipflow(*args, "--node", d.address, timeout=timeout, check=check,
                          prefix=d.prefix)

    def start_cluster(self) -> None:
        a = self.args
        ports = free_ports(a.daemons)
        for i, port in enumerate(ports):  # every other daemon is a seed: any one up will do
            d = Daemon(f"c{i + 1}", port, self.workdir,
                       [f"{HOST}:{other}" for other in ports if other != port],
                       "local", a.replicas, a.partitions)
            self.daemons.append(d)
            d.start()
        say(f"started {a.daemons} daemons: "
            + ", ".join(f"{d.name}={d.address}" for d in self.daemons))
        self.wait_all_up(30.0)
        self.wait_converged(30.0)
        say("every daemon sees all of them alive")

    def tend(self) -> None:
        """Restart daemons whose down time is over; mark those that answer as up;
        notice daemons that exited on their own."""
        now = time.monotonic()
        for d in self.daemons:
            if d.state == "down" and now >= d.restart_at:
                d.start()
                say(f"restart {d.name} (pid {d.proc.pid})")
            elif d.state == "starting":
                if not d.running():
                    self._exited(d)
                elif d.answers():
                    d.state = "up"
                    if d.starts > 1:
                        say(f"{d.name} answers again, {time.monotonic() - d.killed_at:.1f} s"
                            f" after its kill")
            elif d.state == "up" and not d.running():
                self._exited(d)

    def _exited(self, d: Daemon) -> None:
        code = d.proc.returncode
        self.unexpected.append(f"{d.name} exited with {code} by itself")
        say(f"PROBLEM: {d.name} exited with {code} without being killed; restarting it")
        d.state, d.restart_at, d.killed_at = "down", time.monotonic(), time.monotonic()

    def wait_all_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for d in self.daemons:
            if d.state == "down":
                d.restart_at = 0.0
        while any(d.state != "up" for d in self.daemons):
            if time.monotonic() > deadline:
                late = [d.name for d in self.daemons if d.state != "up"]
                raise ChaosError(f"{', '.join(late)} did not answer within {timeout:g} s")
            self.tend()
            time.sleep(0.05)

    def wait_converged(self, timeout: float) -> None:
        names = {d.name for d in self.daemons}
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                views = [{m["name"]: m["status"] for m in d.request("members",
                                                                  timeout=1.0)}
                         for d in self.daemons]
                if all(v == dict.fromkeys(names, "alive") for v in views):
                    return
                last = views
            except ClientError as err:
                last = err
            self.tend()
            time.sleep(0.1)
        raise ChaosError(f"the daemons did not all see each other alive within {timeout:g} s;"
                         f" last: {last}")

    # ------------------------------------------------------------ flows

    def submit_round(self) -> Round:
        """Submit the word count again, under the next name (``gossipflow submit``)."""
        name = f"{WORDCOUNT}-{len(self.rounds) + 1}"
        path = self.flowdir / f"{name}.py"
        path.write_text(WORDCOUNT_FLOW.format(name=name))
        self.cli("submit", str(path), "--timeout", "10")
        round_ = Round(name, path, time.monotonic())
        self.rounds.append(round_)
        say(f"submitted {name}")
        return round_

    def ask(self, op: str, args: dict[str, Any], timeout: float = 2.0) -> Any:
        """An API request (what the CLI sends) to the first up daemon that answers."""
        last: Exception = ChaosError("no daemon is up to ask")
        for d in self.daemons:
            if d.state == "up":
                try:
                    return d.request(op, args, timeout=timeout)
                except ClientError as err:
                    last = err
        raise ChaosError(f"`{op}` got no answer: {last}")

    def finished(self, round_: Round, record: dict[str, Any]) -> None:
        round_.done_at, round_.status = time.monotonic(), record["status"]
        round_.error = record.get("error") or ""
        after = (f", {round_.done_at - self.chaos_end:.1f} s after the chaos"
                 if self.chaos_end else "")
        say(f"{round_.name} {round_.status}, {round_.done_at - round_.submitted_at:.1f} s "
            f"after its submission{after} ({round_.kills} kills while it ran)"
            + (f": {round_.error}" if round_.error else ""))

    def watch_rounds(self, end: float) -> None:
        """Every 0.5 s: has the running word count finished? Then, with enough chaos left
        (see MIN_ROUND), submit the next round."""
        now = time.monotonic()
        if now < self._next_status:
            return
        self._next_status = now + 0.5
        current = self.rounds[-1]
        if current.done_at is not None:
            return
        try:
            record = self.ask("flow", {"name": current.name}, timeout=1.0)
        except ChaosError:
            return
        if record["status"] == "running":
            return
        self.finished(current, record)
        took = current.done_at - current.submitted_at
        if current.status == "completed" and end - time.monotonic() > max(MIN_ROUND,
                                                                           took / 2):
            self.submit_round()

    def generator_table(self) -> dict[str, Any]:
        """The generator's table now, as ``gossipflow query`` gets it ({} if no answer)."""
        for _ in range(3):
            try:
                return dict(self.ask("query", {"name": GENERATE}, timeout=30.0))
            except ChaosError as err:
                say(f"asking again: {err}")
        return {}

    def wait_generator_advances(self, before: dict[str, Any], timeout: float) -> int:
        """Wait until every split's key has more records than in ``before`` (taken when
        the chaos was over): a record lost in the chaos is then followed by later ones,
        so it shows as a gap. The number of splits that advanced."""
        start = time.monotonic()
        while True:
            now = self.generator_table()
            advanced = sum(1 for key, state in now.items()
                           if state[0] > before.get(key, (0,))[0])
            if advanced == self.args.partitions or time.monotonic() > start + timeout:
                say(f"{advanced} of {self.args.partitions} splits of {GENERATE} advanced "
                    f"within {time.monotonic() - start:.1f} s")
                return advanced
            time.sleep(0.2)

    # ------------------------------------------------------------ chaos

    def chaos(self) -> None:
        a = self.args
        if a.kill_every <= 0:
            say(f"no kills (--kill-every {a.kill_every:g}); running for {a.duration:g} s")
        end = time.monotonic() + a.duration
        next_kill = time.monotonic() + a.kill_every * self.rng.uniform(0.8, 1.2)
        waiting = False
        while time.monotonic() < end:
            self.tend()
            self.watch_rounds(end)
            now = time.monotonic()
            if a.kill_every > 0 and now >= next_kill:
                down = [d for d in self.daemons if d.state != "up"]
                if len(down) < a.replicas - 1:
                    self.kill(self.rng.choice([d for d in self.daemons if d.state == "up"]),
                              down)
                    next_kill = now + a.kill_every * self.rng.uniform(0.8, 1.2)
                    waiting = False
                elif not waiting:
                    waiting = True
                    self.deferred += 1
                    say(f"next kill waits: {', '.join(d.name for d in down)} not back yet"
                        f" (at most R-1 = {a.replicas - 1} down)")
            time.sleep(0.05)

    def kill(self, victim: Daemon, down: list[Daemon]) -> None:
        pid = victim.proc.pid
        victim.kill()
        victim.restart_at = time.monotonic() + self.args.down_for
        self.kills += 1
        for round_ in self.rounds:
            if round_.done_at is None:
                round_.kills += 1
        others = f"; also down: {', '.join(d.name for d in down)}" if down else ""
        say(f"kill #{self.kills}: SIGKILL to {victim.name}'s process group {pid}{others}")

    # ------------------------------------------------------------ the whole run

    def run(self) -> bool:
        a = self.args
        corpus = self.flowdir / "corpus"
        words = a.words if a.words is not None else int(WORDS_PER_SECOND * a.duration)
        written = write_corpus(corpus, words, a.seed)
        size = sum(p.stat().st_size for p in corpus.glob("*.txt"))
        say(f"corpus: {written} words ({size / 1e6:.1f} MB), seed {a.seed}, in {corpus}")
        counted: list[collections.Counter] = []  # by a thread, while the cluster starts
        counting = threading.Thread(target=lambda: counted.append(count_words(corpus)),
                                    name="counter", daemon=True)
        counting.start()
        generate_file = self.flowdir / "generate.py"
        generate_file.write_text(GENERATE_FLOW.format(name=GENERATE, partitions=a.partitions,
                                                      sample=a.sample))

        self.start_cluster()
        self.submit_round()
        self.cli("submit", str(generate_file), "--timeout", "10")
        say(f"submitted {GENERATE}")

        self.chaos()
        self.chaos_end = time.monotonic()
        say(f"chaos over: {self.kills} kills in {a.duration:g} s; restarting what is down")
        self.wait_all_up(60.0)
        self.wait_converged(60.0)
        before = self.generator_table()

        last = self.rounds[-1]
        deadline = time.monotonic() + a.timeout
        while last.done_at is None and time.monotonic() < deadline:
            try:  # what `gossipflow submit --wait` does
                flows = json.loads(self.cli("flows", "--json", "--timeout", "10"))
            except ChaosError as err:  # a loaded daemon may be slow: ask again
                say(f"asking again: {err}")
                continue
            record = {f["name"]: f for f in flows}.get(last.name, {"status": "missing"})
            if record["status"] != "running":
                self.finished(last, record)
            else:
                time.sleep(0.5)

        advanced = self.wait_generator_advances(before, 30.0)
        self.cli("cancel", GENERATE, "--timeout", "10")
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:  # every daemon stops it (not needed for the check)
            try:
                seen = [d.request("flow", {"name": GENERATE}, timeout=1.0)["status"]
                        for d in self.daemons]
            except ClientError:
                seen = []
            if seen and all(s != "running" for s in seen):
                break
            time.sleep(0.1)
        progress = json.loads(self.cli("status", GENERATE, "--json", "--timeout", "10"))
        generate_status = progress["status"]
        say(f"{GENERATE} {generate_status} on every daemon")
        return self.check(written, counting, counted, generate_status, progress, advanced)

    def check(self, written: int, counting: threading.Thread,
              counted: list[collections.Counter], generate_status: str,
              progress: dict[str, Any], advanced: int) -> bool:
        """Query every table (``gossipflow query --json``), compare, print the figures."""
        a = self.args
        problems: list[str] = []
        counting.join()
        if not counted:
            raise ChaosError("counting the corpus's words failed (see the traceback above)")
        expected = counted[0]
        if sum(expected.values()) != written:
            raise ChaosError(f"the corpus reads back as {sum(expected.values())} words, "
                             f"not {written}")
        node = self.up_daemon()
        wc = {"records": 0, "lost": 0, "duplicated": 0}
        lines = []
        for round_ in self.rounds:
            if round_.status != "completed":
                problems.append(f"{round_.name} is {round_.status}, not completed"
                                + (f" within {a.timeout:g} s after the chaos"
                                   if round_.status == "running" else f": {round_.error}"))
                print(f"gossipflow status {round_.name} --json:\n" + self.cli(
                    "status", round_.name, "--json", "--timeout", "10", check=False,
                    daemon=node))
            got = json.loads(self.cli("query", round_.name, "--json", "--timeout", "60",
                                      timeout=120, daemon=node))
            lost = sum(max(0, n - got.get(w, 0)) for w, n in expected.items())
            dup = sum(max(0, n - expected.get(w, 0)) for w, n in got.items())
            wc["records"] += written
            wc["lost"] += lost
            wc["duplicated"] += dup
            wrong = sorted(w for w in set(got) | set(expected) if got.get(w) != expected.get(w))
            if wrong:
                unfinished = "" if round_.status == "completed" else " (it did not complete)"
                problems.append(f"{round_.name}: {len(wrong)} words differ from Counter"
                                f"{unfinished}, e.g. " + ", ".join(
                                    f"{w!r}: {got.get(w)} not {expected.get(w)}"
                                    for w in wrong[:5]))
            took = (round_.done_at or time.monotonic()) - round_.submitted_at
            lines.append(f"  {round_.name}: {round_.status} in {took:.1f} s with "
                         f"{round_.kills} kills while it ran: lost {lost}, duplicated {dup}")

        table = json.loads(self.cli("query", GENERATE, "--json", "--timeout", "60",
                                    timeout=120, daemon=node))
        gen = check_generate(table, a.partitions, a.sample)
        if generate_status != "cancelled":
            problems.append(f"{GENERATE} is {generate_status}, not cancelled: "
                            f"{progress.get('error')}")
        if gen["lost"] or gen["duplicated"] or gen["inconsistent"]:
            problems.append(f"{GENERATE}: {gen['inconsistent']} keys inconsistent")
        if gen["missing"] or gen["unexpected"]:
            problems.append(f"{GENERATE}: {gen['missing']} of {a.partitions} splits never "
                            f"reached the table, {gen['unexpected']} unexpected keys")
        if gen["records"] == 0:
            problems.append(f"{GENERATE}: no record reached the table")
        if advanced < a.partitions:
            problems.append(f"{GENERATE}: only {advanced} of {a.partitions} splits advanced "
                            f"after the chaos")
        problems += self.unexpected
        self.report(written, expected, wc, lines, gen, generate_status, problems)
        return not problems

    def report(self, written: int, expected: collections.Counter, wc: dict[str, int],
               lines: list[str], gen: dict[str, int], generate_status: str,
               problems: list[str]) -> None:
        """Print the figures of :meth:`check` and its verdict."""
        a = self.args
        wall = time.monotonic() - T0
        records = wc["records"] + gen["records"]
        lost, dup = wc["lost"] + gen["lost"], wc["duplicated"] + gen["duplicated"]
        print()
        print(f"daemons {a.daemons}, replicas {a.replicas}, partitions {a.partitions}, "
              f"seed {a.seed}, chaos {a.duration:g} s, kill every {a.kill_every:g} s "
              f"(+-20%), down for {a.down_for:g} s")
        print(f"kills: {self.kills} (SIGKILL of a daemon's process group, restarted with the "
              f"same name, port and data dir; {self.deferred} kills waited for R-1)")
        print(f"{WORDCOUNT}: {len(self.rounds)} round{'s' * (len(self.rounds) > 1)} of "
              f"{written} words ({len(expected)} distinct), each checked against "
              f"collections.Counter: {wc['records']} records, lost {wc['lost']}, "
              f"duplicated {wc['duplicated']}")
        print("\n".join(lines))
        print(f"{GENERATE}: {generate_status}; {gen['records']} records checked over "
              f"{gen['keys']} keys: lost {gen['lost']}, duplicated {gen['duplicated']}, "
              f"inconsistent keys {gen['inconsistent']}")
        print(f"records checked: {records}, lost: {lost}, duplicated: {dup}")
        print(f"wall time: {wall:.1f} s")
        print(f"summary: kills={self.kills} records={records} lost={lost} duplicated={dup} "
              f"wall={wall:.1f}s ok={int(not problems)}")
        if problems:
            print("FAILED:\n  " + "\n  ".join(problems))
        else:
            print("OK: every record counted exactly once")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/chaos", description="Local daemons SIGKILLed and restarted while a "
        "bounded word count and an unbounded generator run; checks that no record is lost "
        "or counted twice.")
    p.add_argument("--daemons", type=int, default=5, help="how many daemons (default 5)")
    p.add_argument("--replicas", type=int, default=2,
                   help="--replicas R of every daemon; at most R-1 are down at once (default 2)")
    p.add_argument("--partitions", type=int, default=PARTITIONS,
                   help=f"--partitions of every daemon (default {PARTITIONS})")
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds of kills; also sizes the corpus (default 60)")
    p.add_argument("--kill-every", type=float, default=4.0,
                   help="seconds between kills, +-20%% (default 4; 0: no kills)")
    p.add_argument("--down-for", type=float, default=1.0,
                   help="seconds between a kill and the restart (default 1)")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the corpus, the victims and the intervals (default 1)")
    p.add_argument("--words", type=int, default=None,
                   help=f"corpus size in words (default {WORDS_PER_SECOND} x --duration)")
    p.add_argument("--sample", type=int, default=SAMPLE,
                   help="the generator passes on one index in SAMPLE of each split: the rest"
                   f" only costs generating (default {SAMPLE})")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds the word count may take after the chaos (default "
                   "120 + 2 x --duration)")
    p.add_argument("--keep-dir", action="store_true",
                   help="keep the temporary directory (data, logs) even on success")
    args = p.parse_args(argv)
    if args.daemons < 2:
        p.error("--daemons must be at least 2")
    if args.replicas < 2:
        p.error("--replicas must be at least 2: at most R-1 daemons may be down at once")
    if args.replicas > args.daemons:
        p.error("--replicas cannot exceed --daemons")
    if args.partitions < 1 or args.partitions & (args.partitions - 1):
        p.error("--partitions must be a power of two")
    if args.duration <= 0 or args.down_for < 0 or args.kill_every < 0 or args.sample < 1:
        p.error("--duration must be > 0, --down-for and --kill-every >= 0, --sample >= 1")
    if args.timeout is None:
        args.timeout = 120.0 + 2 * args.duration
    return args


def run_script(name: str, start: Callable[[], Any], keep_dir: bool, workdir: Path) -> int:
    """Run ``start()``'s run object (its ``run()`` says whether every check passed) with
    the exits of a script: 0 passed, 1 failed (with each daemon's last log lines),
    130/143/129 interrupted; its ``stop_everything()`` runs on every exit, and the work
    dir is kept only after a failure or with ``keep_dir``."""

    def interrupted(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    run = None
    code = 1
    try:
        run = start()
        code = 0 if run.run() else 1
    except ChaosError as err:
        print(f"{name}: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{name}: interrupted (Ctrl-C)", file=sys.stderr)
        code = 130
    except Interrupted as err:
        print(f"{name}: interrupted ({err})", file=sys.stderr)
        code = 128 + err.signum
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
        if run is not None:
            run.stop_everything()
        if code == 1 and run is not None and run.daemons:  # failed (not interrupted)
            print("\nlast lines of each daemon's log:", file=sys.stderr)
            for d in run.daemons:
                print(f"--- {d.name} ({d.address}, {d.starts} starts, {d.log_path})\n"
                      f"{d.log_tail(25)}", file=sys.stderr)
        if code in (0, 130, 128 + signal.SIGTERM, 128 + signal.SIGHUP) and not keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)  # kept only to look into a failure
        else:
            print(f"{name}: data dirs and logs kept in {workdir}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="gossipflow-chaos."))
    return run_script("chaos", lambda: Run(args, workdir), args.keep_dir, workdir)


if __name__ == "__main__":
    sys.exit(main())
