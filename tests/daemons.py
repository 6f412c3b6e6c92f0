"""Real gossipflow daemons as child processes, for multi-process tests.

Each daemon is ``python -m daemon.cli start ...`` in its own process group
(``start_new_session=True``), bound to a free 127.0.0.1 port (free for both
TCP and UDP), with its data dir under pytest's ``tmp_path`` and its stderr
in a log file of its own. The ``cluster`` fixture (conftest.py) stops every
process it started, by pid / process group (SIGTERM, then SIGKILL after a grace
period), even when the test fails, and then prints the tail of each daemon's log.
Nothing is ever killed by name. Also here: helpers to submit and query flows
(:func:`submit`, :func:`table`, :func:`flow_record`) and raw ZeroMQ requests.

Example:
    from daemons import Cluster

    def test_two(cluster: Cluster) -> None:
        cluster.start("n0")
        cluster.start("n1", join=["n0"])
        cluster.wait_converged(["n0", "n1"])
        assert cluster.statuses("n1") == {"n0": "alive", "n1": "alive"}
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import random
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq

from daemon.client import request
from daemon.errors import ClientError

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
GRACE = 3.0
"""Seconds a daemon gets to leave after SIGTERM before the finaliser SIGKILLs it."""
DAEMON_CMD = [sys.executable, "-m", "daemon.cli"]
FAULT_INJECTION_ENV = "GOSSIPFLOW_FAULT_INJECTION"
_ENV_DROP = ("GOSSIPFLOW_NODE", "GOSSIPFLOW_SECRET_FILE", FAULT_INJECTION_ENV)

# Every process group started by this module, so an interrupted run still cleans up.
_live_groups: dict[int, subprocess.Popen] = {}
_used_ports: set[int] = set()


# ---------------------------------------------------------------- ports


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if ``port`` can be bound on ``host`` for both TCP and UDP right now."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = HOST) -> int:
    """A port free for both TCP and UDP on ``host``, not handed out before by this process.

    Picked below the kernel's ephemeral range, so a client's outgoing
    connection cannot take it while a daemon is down for a restart.
    """
    low, _ = _ephemeral_range()
    rng = random.Random()
    candidates = (rng.randrange(20000, low) for _ in range(200)) if low > 21000 else iter(())
    for port in candidates:
        if port not in _used_ports and port_is_free(port, host):
            _used_ports.add(port)
            return port
    for _ in range(100):  # fall back to whatever the kernel hands out
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _used_ports and port_is_free(port, host):
            _used_ports.add(port)
            return port
    raise RuntimeError(f"no port free for both TCP and UDP on {host}")


# ---------------------------------------------------------------- processes


def _load_prctl() -> Callable[..., int] | None:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not after fork
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _die_with_parent() -> None:
    """In the child: get SIGKILL if the test process dies (Linux), so nothing outlives it."""
    if _prctl is not None:
        _prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for daemons and CLI runs: ours minus GOSSIPFLOW_* settings."""
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen, grace: float = GRACE) -> int:
    """SIGTERM the process group of ``proc``, SIGKILL it after ``grace`` seconds; its exit code."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
    code = proc.wait()
    _live_groups.pop(proc.pid, None)
    return code


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process group of ``proc`` (its pid: start_new_session), if not yet reaped.

    Once reaped, the pid may belong to someone else: never signal it then.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live_groups.values()):
        _signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(5)


# ---------------------------------------------------------------- polling


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> T:
    """Poll ``predicate()`` until it returns something truthy, and return that.

    A :class:`~daemon.errors.ClientError` from the predicate (daemon not up
    yet) counts as "not yet".

    Raises:
        AssertionError: still falsy after ``timeout`` seconds; says what the
            predicate last returned or raised.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except ClientError as err:
            last = err
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message}: not true within {timeout:g} s; last: {last!r}")
        time.sleep(interval)


# ---------------------------------------------------------------- the cluster


@dataclass
class Daemon:
    """One daemon process and what it takes to start it again."""

    name: str
    port: int
    data_dir: Path
    log_path: Path
    args: list[str]
    secret_file: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables (e.g. GOSSIPFLOW_FAULT_INJECTION=1), kept for restarts."""
    proc: subprocess.Popen | None = None
    starts: int = 0
    exit_codes: list[int] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class Cluster:
    """Starts, signals and queries daemons; stops them all in :meth:`close`.

    Args:
        root: a private directory (pytest's ``tmp_path``) for data dirs and logs.
        preset: the ``--preset`` every daemon gets unless told otherwise.
    """

    def __init__(self, root: Path, preset: str = "local") -> None:
        self.root = Path(root)
        self.preset = preset
        self.daemons: dict[str, Daemon] = {}

    def __getitem__(self, name: str) -> Daemon:
        return self.daemons[name]

    # ------------------------------------------------------------ lifecycle

    def start(self, name: str, join: Iterable[str] = (), *, secret_file: Path | str | None = None,
              partitions: int | None = None, replicas: int | None = None,
              preset: str | None = None, extra: Iterable[str] = (),
              port: int | None = None, env: dict[str, str] | None = None,
              fault_injection: bool = False) -> Daemon:
        """Start daemon ``name``; ``join`` holds names of started daemons or HOST:PORTs.

        ``env`` adds environment variables; ``fault_injection`` sets
        GOSSIPFLOW_FAULT_INJECTION=1, so :meth:`block` can cut it off from peers
        (give it to every daemon of the cluster: see daemon/transport/faults.py).
        Returns at once (the daemon may not answer yet: use :meth:`wait_up`).
        """
        if name in self.daemons:
            raise ValueError(f"daemon {name!r} exists already: use restart()")
        seeds = [self.daemons[j].address if j in self.daemons else j for j in join]
        port = port or free_port()
        data_dir = self.root / name
        args = ["start", "--name", name, "--bind", f"{HOST}:{port}",
                "--data-dir", str(data_dir), "--preset", preset or self.preset]
        if seeds:
            args += ["--join", ",".join(seeds)]
        if secret_file is not None:
            args += ["--secret-file", str(secret_file)]
        if partitions is not None:
            args += ["--partitions", str(partitions)]
        if replicas is not None:
            args += ["--replicas", str(replicas)]
        args += list(extra)
        env = dict(env or {})
        if fault_injection:
            env[FAULT_INJECTION_ENV] = "1"
        daemon = Daemon(name, port, data_dir, self.root / f"{name}.log", args,
                        Path(secret_file) if secret_file is not None else None, env)
        self.daemons[name] = daemon
        self._spawn(daemon)
        return daemon

    def _spawn(self, daemon: Daemon) -> None:
        daemon.starts += 1
        with open(daemon.log_path, "ab") as log:
            log.write(f"----- start #{daemon.starts}: {' '.join(daemon.args)}\n".encode())
            log.flush()
            # preexec_fn only calls prctl, looked up before the fork: safe with threads around.
            daemon.proc = subprocess.Popen(
                DAEMON_CMD + daemon.args, cwd=ROOT, env=clean_env(**daemon.env),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=_die_with_parent)  # noqa: PLW1509
        _live_groups[daemon.proc.pid] = daemon.proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to daemon ``name`` (its pid only; see :meth:`stop` for the group)."""
        daemon = self.daemons[name]
        assert daemon.running(), f"{name} is not running:\n{daemon.log_tail()}"
        os.kill(daemon.pid, sig)

    def wait_exit(self, name: str, timeout: float = 10.0) -> int:
        """Wait for daemon ``name`` to exit; its exit code (negative: killed by that signal)."""
        daemon = self.daemons[name]
        assert daemon.proc is not None
        try:
            code = daemon.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still running {timeout:g} s later:\n"
                                 f"{daemon.log_tail()}") from None
        _live_groups.pop(daemon.proc.pid, None)
        daemon.exit_codes.append(code)
        return code

    def restart(self, name: str) -> Daemon:
        """Start ``name`` again, same arguments (name, port, data dir), once it has exited."""
        daemon = self.daemons[name]
        if daemon.running():
            raise AssertionError(f"{name} is still running (pid {daemon.pid}): kill it first")
        if daemon.proc is not None and daemon.proc.pid in _live_groups:
            self.wait_exit(name, 5.0)
        self._spawn(daemon)
        return daemon

    def stop(self, name: str, grace: float = GRACE) -> int:
        """SIGTERM, then SIGKILL after ``grace``; the exit code."""
        daemon = self.daemons[name]
        assert daemon.proc is not None
        code = stop_process(daemon.proc, grace)
        daemon.exit_codes.append(code)
        return code

    def close(self, grace: float = GRACE) -> None:
        """Stop every daemon this cluster started (all SIGTERMed at once, then waited for)."""
        procs = [d.proc for d in self.daemons.values() if d.proc is not None]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        for proc in procs:
            stop_process(proc, 0)

    # ------------------------------------------------------------ queries

    def request(self, name: str, op: str, timeout: float = 2.0, secret: bytes | None = None,
                secret_file: Path | str | None = None, args: dict | None = None) -> Any:
        """An API request to daemon ``name`` through the in-process client.

        The daemon's own secret is used unless ``secret``/``secret_file`` is given.
        """
        from daemon.cli import load_secret

        daemon = self.daemons[name]
        if secret is None:
            secret = load_secret(str(secret_file or daemon.secret_file)
                                 if (secret_file or daemon.secret_file) else None)
        return request(daemon.address, op, args, timeout=timeout, secret=secret)

    def block(self, name: str, peers: Iterable[str] | str) -> dict[str, Any]:
        """Daemon ``name`` (started with ``fault_injection=True``) drops all traffic with
        ``peers`` (names of daemons or HOST:PORTs), or with every peer for ``"all"``;
        ``[]`` heals. Returns its answer: ``{"block": ..., "dropped": N}``."""
        spec: Any = peers if peers == "all" else [
            self.daemons[p].address if p in self.daemons else p for p in peers]
        return self.request(name, "faults", args={"block": spec})

    def members(self, name: str, **kwargs: Any) -> list[dict[str, Any]]:
        """``members`` as daemon ``name`` sees them (a list of dicts)."""
        return self.request(name, "members", **kwargs)

    def statuses(self, name: str, **kwargs: Any) -> dict[str, str]:
        """{member name: status} as daemon ``name`` sees it."""
        return {m["name"]: m["status"] for m in self.members(name, **kwargs)}

    def incarnations(self, name: str) -> dict[str, int]:
        return {m["name"]: m["incarnation"] for m in self.members(name)}

    def stats(self, name: str, **kwargs: Any) -> dict[str, int]:
        return self.request(name, "status", **kwargs)["stats"]

    def wait_up(self, name: str, timeout: float = 10.0) -> None:
        """Wait until daemon ``name`` answers requests (fails early if it exits)."""
        daemon = self.daemons[name]

        def up() -> bool:
            if not daemon.running():
                raise AssertionError(f"{name} exited with {daemon.proc.returncode}:\n"
                                     f"{daemon.log_tail()}")
            return self.request(name, "status", timeout=0.5)["name"] == name

        wait_for(up, timeout, message=f"{name} answers")

    def wait_converged(self, names: Iterable[str], timeout: float = 10.0,
                       observers: Iterable[str] | None = None) -> None:
        """Wait until every observer (default: ``names``) sees exactly ``names``, all alive."""
        expected = {n: "alive" for n in names}
        observers = list(observers if observers is not None else expected)

        def converged() -> bool:
            return all(self.statuses(o, timeout=0.5) == expected for o in observers)

        wait_for(converged, timeout, interval=0.05,
                 message=f"{sorted(observers)} all see exactly {sorted(expected)} alive")

    def start_many(self, names: list[str], **kwargs: Any) -> None:
        """Start ``names`` (the rest join through the first) and wait for them to converge."""
        self.start(names[0], **kwargs)
        for name in names[1:]:
            self.start(name, join=[names[0]], **kwargs)
        self.wait_converged(names)

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(f"===== {d.name} ({d.address}, log {d.log_path}) =====\n"
                         f"{d.log_tail(lines)}" for d in self.daemons.values())


def cli(*args: str, timeout: float = 20.0, **env: str) -> subprocess.CompletedProcess:
    """Run ``gossipflow ARGS...`` (the installed console script) and capture its output."""
    script = Path(sys.executable).with_name("gossipflow")
    cmd = [str(script)] if script.exists() else DAEMON_CMD
    return subprocess.run(cmd + list(args), check=False, cwd=ROOT, env=clean_env(**env),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- flows and raw requests

STDLIB = os.path.join(sysconfig.get_paths()["stdlib"], "*.py")
WORDCOUNT = f'''
from nodes import Flow, sources, sinks
flow = Flow("wordcount")
(flow.source(sources.files({STDLIB!r}))
     .flat_map(str.split)
     .key_by(lambda w: w)
     .count()
     .sink(sinks.table()))
'''
"""A word count of the standard library's ``*.py`` files; :func:`stdlib_counts` is its result."""


def stdlib_counts() -> Counter:
    counts: Counter = Counter()
    for path in glob.glob(STDLIB):
        with open(path, encoding="utf-8", newline="") as f:
            for line in f:
                counts.update(line.split())
    return counts


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def submit(cluster: Cluster, node: str, path: Path, *args: str, timeout: float = 180):
    return cli("submit", str(path), "--node", cluster[node].address, *args, timeout=timeout)


def table(cluster: Cluster, node: str, name: str, sink: str | None = None) -> dict:
    rows = cluster.request(node, "query", timeout=10.0, args={"name": name, "sink": sink})
    return {k: v for k, v in rows}


def flow_record(cluster: Cluster, node: str, name: str) -> dict:
    return cluster.request(node, "flow", args={"name": name})


def zmq_requests(address: str, packets: list[bytes], timeout: float = 2.0) -> list[bytes]:
    """Send each packet as a ZeroMQ request [id, packet]; the replies, in order."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://{address}")
        replies = []
        for i, packet in enumerate(packets):
            sock.send_multipart([i.to_bytes(8, "big"), packet])
            assert sock.poll(int(timeout * 1000)), f"no reply to garbage request {i}"
            request_id, reply = sock.recv_multipart()
            assert request_id == i.to_bytes(8, "big")
            replies.append(reply)
        return replies
    finally:
        sock.close()


def run_script(script: str, args: list[str], limit: float, grace: float) -> tuple[int, str, int]:
    """Run ``scripts/SCRIPT`` with ``args`` in a session of its own; (exit code, output,
    pid). Past ``limit`` seconds its process group gets SIGTERM (the script stops its
    daemons and cleans up), then SIGKILL after ``grace`` more, and the test fails."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOSSIPFLOW_NODE", "GOSSIPFLOW_SECRET_FILE")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / script), *args],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        pytest.fail(f"scripts/{script} {' '.join(args)} still running after {limit:g} s:\n"
                    f"{output}")
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(output)  # shown with -rA, and with a failure if any
    return proc.returncode, output, proc.pid
