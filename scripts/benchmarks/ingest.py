"""Ingest benchmark (issue 10): producers into a keyed count on three real daemons.

Three local daemons (``--preset local``, R=2, ``--partitions`` 256, real processes on
127.0.0.1, see tests/daemons.py) run ``sources.ingest("bench") -> key_by -> count
-> table`` and, beside it, ``filter(has "log") -> sinks.log()`` named "out". Records
are small dicts ``{"k": "key<v mod 1000>", "v": v}``, every ``v`` sent once, so the
table must equal the ``Counter`` of the keys sent: checked after every run (the count
stage lags the acknowledgement, so we wait for it and print how long it took). Only
the latency part's records carry ``"log": 1`` and reach the log (so throughput and
kill figures do not pay for the log, only for the filter). Producers and the log
follower run in processes of their own.

1. Throughput: one ``daemon.producer.Producer`` (batches of 1 000) sends
   ``--records`` records, timed from its first send to ``flush()`` returning (every
   record durable on both replicas): with the default 4 requests in flight straight
   to the primary of its partition, the same through another daemon (which
   forwards), and with ``--in-flight`` requests to its primary; then four producer
   processes at once, each its own id, ``--records`` / 4 each: total records/s.
   Baseline in the same run: the raw ZeroMQ PUSH/PULL ceiling for the same records
   (msgpack batches of 1 000 over tcp 127.0.0.1 between two processes, unpacked by
   the receiver). CPU seconds of every daemon process and its worker child
   (``/proc/PID/stat``) during the send and until the table is exact.
2. Latency, open loop: record k offered at t0 + k / rate whatever the
   acknowledgements do (one process: it hands the records due to the producer, cuts
   batches by the producer's ``--linger`` and takes acknowledgements as they come,
   waiting at most 1 ms between), at each of ``--rates`` for ``--seconds``, through
   each of ``--routes``; p50/p99/max from a record's scheduled time to its
   acknowledgement (``acked_upto`` passing it), and the rate achieved (records / time
   to the last acknowledgement). A backlog stays in the producer's queue (never
   dropped), so an offered rate not held shows as growing latency and a lower
   achieved rate. Also p50/p99/max from the scheduled time to the record appearing
   in ``gossipflow tail bench --sink out --from end --follow``: a follower process
   runs during each measurement with ``daemon.consumer.Consumer`` (the same ``log``
   requests tail sends: from the end, polling again at once while records come, else
   after tail's default ``--interval`` 0.2 s), notes ``time.time()`` as each record
   appears (the schedule converted to the same clock), and counts what it saw: every
   record exactly once, or the run is not exact. The follower's polls load the
   daemons too, so the acknowledgement figures include that.
3. Kill -9 of the producer's primary (from the ``ring`` placement and
   ``daemon.ingest.producer_partition``) ``--kill-after`` s into ``--kill-seconds``
   of ``--kill-rate`` records/s offered through another daemon: the longest gap
   between acknowledgements, when the survivors knew (from their logs), and the
   table exact afterwards.

Every daemon started is stopped (by pid / process group) at the end, also on
failure or Ctrl-C; so is every helper process (by pid). Exits 1 if a table or the
log was not exact; a figure short of the issue's target is printed as such, not a
failure.

    python scripts/benchmarks/ingest.py [--records 300000] [--seconds 5]
        [--rates 1000,10000,50000] [--routes forwarded] [--in-flight 16]
        [--skip-throughput] [--skip-latency] [--skip-kill] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemons import Cluster, cli, wait_for  # noqa: E402
from failover import stamps  # noqa: E402

from daemon.ingest import producer_partition  # noqa: E402
from daemon.producer import Producer  # noqa: E402

NAMES = ["n0", "n1", "n2"]
INGEST = "bench"
KEYS = 1000
BATCH = 1000
TARGET = 250_000
"""Records/s the issue asks of one producer."""
LATENCY_GOAL = 0.050
"""Seconds: the issue's goal for p99 at 10 000 records/s."""
TAIL_INTERVAL = 0.2
"""Seconds between polls of the log while nothing new comes: ``gossipflow tail``'s
``--interval`` default."""
FOLLOW_WAIT = 30.0
"""Seconds the follower may take after the sender's flush to see every record."""
FLOW = f"""
from nodes import Flow, sources, sinks
flow = Flow("bench")
records = flow.source(sources.ingest({INGEST!r}))
records.key_by(lambda r: r["k"]).count().sink(sinks.table())
records.filter(lambda r: "log" in r).sink(sinks.log(), name="out")
"""
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def record(v: int, logged: bool = False) -> dict:
    """Record ``v``; ``logged``: it also goes to the log sink "out"."""
    out = {"k": f"key{v % KEYS}", "v": v}
    if logged:
        out["log"] = 1
    return out


def keys_of(first: int, n: int) -> Counter:
    """The Counter of the keys of records first .. first + n - 1."""
    full, rest = divmod(n, KEYS)
    counts = Counter({f"key{k}": full for k in range(KEYS)} if full else {})
    counts.update(f"key{v % KEYS}" for v in range(first, first + rest))
    return counts


def spawn(target: Callable, *args: Any) -> tuple[multiprocessing.Process, Connection]:
    """Start ``target(conn, *args)`` (a function of this module) in a fresh process; our
    end of its pipe."""
    ours, theirs = multiprocessing.Pipe()
    proc = multiprocessing.get_context("spawn").Process(
        target=_child, args=(theirs, target.__name__, *args), daemon=True)
    proc.start()
    theirs.close()
    return proc, ours


def expect(conn: Connection, kind: str, timeout: float = 600.0) -> tuple:
    if not conn.poll(timeout):
        raise SystemExit(f"a benchmark process did not say {kind!r} within {timeout:g} s")
    message = conn.recv()
    if message[0] == "error":
        raise SystemExit(f"a benchmark process failed: {message[1]}")
    if message[0] != kind:
        raise SystemExit(f"a benchmark process said {message[0]!r}, expected {kind!r}")
    return message


def _child(conn: Connection, name: str, *args: Any) -> None:
    """A child's body, ``globals()[name](conn, *args)``; an exception goes to the parent
    as ("error", text)."""
    try:
        globals()[name](conn, *args)
    except BaseException as err:  # noqa: BLE001 - reported, then the child exits
        conn.send(("error", f"{type(err).__name__}: {err}"))


# ---------------------------------------------------------------- child processes


def _zmq_pull(conn: Connection, port: int, n: int) -> None:
    import msgpack
    import zmq

    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.bind(f"tcp://127.0.0.1:{port}")
    conn.send(("ready",))
    got, cpu = 0, time.process_time()
    while got < n:
        got += len(msgpack.unpackb(sock.recv(), raw=False))
    conn.send(("done", time.monotonic(), time.process_time() - cpu))
    sock.close(linger=0)


def _zmq_push(conn: Connection, port: int, first: int, n: int) -> None:
    import msgpack
    import zmq

    records = [record(v) for v in range(first, first + n)]
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.connect(f"tcp://127.0.0.1:{port}")
    conn.send(("ready",))
    conn.recv()
    cpu, start = time.process_time(), time.monotonic()
    for i in range(0, n, BATCH):
        sock.send(msgpack.packb(records[i:i + BATCH], use_bin_type=True))
    conn.send(("done", start, time.process_time() - cpu))
    sock.close(linger=-1)


def _throughput(conn: Connection, nodes: list[str], producer_id: str, first: int,
                n: int, in_flight: int) -> None:
    records = [record(v) for v in range(first, first + n)]
    producer = Producer(INGEST, nodes, producer_id=producer_id, batch=BATCH,
                        in_flight=in_flight, give_up=120.0)
    conn.send(("ready",))
    conn.recv()
    cpu, start = time.process_time(), time.monotonic()
    for r in records:
        producer.send(r)
    mark = producer.flush()
    end = time.monotonic()
    producer.close()
    conn.send(("done", start, end, time.process_time() - cpu, mark, producer.accepted))


class _TimedProducer(Producer):
    """A Producer that notes when each acknowledgement moved ``acked_upto``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acks: list[tuple[float, int]] = []
        self.most_waiting = 0

    def _answered(self, batch: Any, raw: bytes) -> None:
        before = self.acked_upto
        super()._answered(batch, raw)
        if self.acked_upto > before:
            self.acks.append((time.monotonic(), self.acked_upto))

    def _pump(self, wait: float) -> None:
        self.most_waiting = max(self.most_waiting, len(self._waiting))
        super()._pump(wait)


def _open_loop(conn: Connection, nodes: list[str], producer_id: str, first: int,
               rate: float, seconds: float, linger: float, in_flight: int,
               timeout: float, logged: bool) -> None:
    """Offer record k (0-based) at t0 + k / rate, never waiting for acknowledgements
    (they are taken as they come, between sends); then flush. The result has t0 on both
    clocks (monotonic and time.time())."""
    total = int(rate * seconds)
    producer = _TimedProducer(INGEST, nodes, producer_id=producer_id, batch=BATCH,
                              in_flight=in_flight, linger=linger, timeout=timeout,
                              give_up=120.0)
    conn.send(("ready",))
    conn.recv()
    cpu = time.process_time()
    t0 = time.monotonic() + 0.005
    t0_wall = time.time() + (t0 - time.monotonic())
    conn.send(("started", t0))
    sent, behind, late = 0, 0.0, []
    while sent < total:
        now = time.monotonic()
        due = min(total, int((now - t0) * rate) + 1) if now >= t0 else 0
        if due > sent:
            lag = now - (t0 + sent / rate)
            behind = max(behind, lag)
            if lag > 0.010:
                late.append((round(now - t0, 3), round(lag, 3)))
            for v in range(first + sent, first + due):
                producer.send(record(v, logged))
            sent = due
        producer.poll()  # cuts a batch older than linger, takes answers
        producer._pump(0.001)  # wait for answers up to 1 ms (the schedule's tick)
    handed = time.monotonic()
    mark = producer.flush()
    cpu = time.process_time() - cpu
    producer.close()
    latencies, previous = [], 0
    for when, upto in producer.acks:  # record seq s was offered at t0 + (s - 1) / rate
        latencies.extend(when - t0 - (s - 1) / rate for s in range(previous + 1, upto + 1))
        previous = upto
    conn.send(("done", {
        "t0": t0, "t0_wall": t0_wall, "total": total, "mark": mark, "accepted": producer.accepted,
        "behind": behind, "late": late, "handed": handed - t0,
        "acks": [when - t0 for when, _ in producer.acks], "latencies": sorted(latencies),
        "ack_marks": [upto for _, upto in producer.acks],
        "most_waiting": producer.most_waiting, "cpu": cpu}))


def _follow(conn: Connection, nodes: list[str], first: int, total: int) -> None:
    """``gossipflow tail bench --sink out --from end --follow`` with a Consumer: note
    time.time() as each record of values first .. first + total - 1 appears, until all
    have appeared or the parent says stop; then one more poll (a late duplicate)."""
    from daemon.consumer import Consumer

    consumer = Consumer("bench", nodes, sink="out", offsets="end", poll_every=TAIL_INTERVAL)
    consumer.poll()  # from the end: where each partition's log ends now
    conn.send(("ready",))
    seen: list[tuple[int, float]] = []  # (v, when it appeared)
    distinct, other, last = set(), 0, False
    while not last:
        last = len(distinct) >= total or conn.poll()
        batch = consumer.poll()
        now = time.time()
        for _, _, r in batch:
            if first <= r["v"] < first + total:
                seen.append((r["v"], now))
                distinct.add(r["v"])
            else:
                other += 1
        if not batch and not last:
            time.sleep(TAIL_INTERVAL)
    conn.send(("done", seen, other, consumer.dropped))


# ---------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime + stime


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def role(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"
    if "resource_tracker" in cmd:
        return "resource tracker"
    if "spawn_main" in cmd or "forkserver" in cmd:
        return "worker"
    return cmd[:30]


def daemon_processes(cluster: Cluster) -> dict[int, str]:
    """{pid: "n0 daemon" / "n0 worker" / ...} of every running daemon and its children."""
    out = {}
    for name, daemon in cluster.daemons.items():
        if daemon.running():
            out[daemon.pid] = f"{name} daemon"
            for child in descendants(daemon.pid):
                out[child] = f"{name} {role(child)}"
    return out


def cpu_snapshot(processes: dict[int, str]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) or 0.0 for pid in processes}


# ---------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, cluster: Cluster, args: argparse.Namespace) -> None:
        self.cluster = cluster
        self.args = args
        self.expected: Counter = Counter()
        self.next_value = 0
        self.children: list[multiprocessing.Process] = []
        self.nodes: dict[str, str] = {}  # name: address, once started
        self.ids = 0

    def producer_id(self, name: str) -> str:
        """A producer id not used before in this run (one used again would start at
        record 1 again: its records would be answered as duplicates)."""
        self.ids += 1
        return f"{name}-{self.ids}"

    def values(self, n: int) -> int:
        first = self.next_value
        self.next_value += n
        self.expected.update(keys_of(first, n))
        return first

    def primary(self, producer_id: str, asked: str = "n0") -> str:
        placement = self.cluster.request(asked, "ring", timeout=10.0)["placement"]
        return placement[producer_partition(producer_id, len(placement))][0]

    def route(self, producer_id: str, via: str, avoid: str | None = None) -> list[str]:
        """The producer's daemon list: its primary first (``via="primary"``), or another
        daemon first, which forwards (the primary then last)."""
        primary = self.primary(producer_id)
        others = [n for n in NAMES if n != primary and n != avoid]
        order = [primary] + others if via == "primary" else others + [primary]
        return [self.nodes[n] for n in order]

    def table(self, asked: str) -> dict:
        rows = self.cluster.request(asked, "query", timeout=10.0, args={"name": "bench"})
        return {k: v for k, v in rows}

    def wait_exact(self, asked: str = "n0", timeout: float = 180.0) -> tuple[bool, float]:
        """Wait for the table to equal the Counter of everything sent: (exact, seconds)."""
        start = time.monotonic()
        try:
            wait_for(lambda: self.table(asked) == self.expected, timeout, interval=0.1,
                     message="the table equals the Counter of the records sent")
        except AssertionError:
            got = self.table(asked)
            differ = sum(1 for k in self.expected if got.get(k) != self.expected[k])
            print(f"  NOT exact after {timeout:g} s: {sum(got.values())} records counted of "
                  f"{sum(self.expected.values())}, {differ} keys differ")
            return False, time.monotonic() - start
        return True, time.monotonic() - start

    def start(self, target: Callable, *args: Any) -> Connection:
        proc, conn = spawn(target, *args)
        self.children.append(proc)
        return conn

    def stop_children(self) -> None:
        for proc in self.children:
            if proc.is_alive():
                proc.terminate()  # this process by its pid (multiprocessing keeps it)
                proc.join(3)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        self.children.clear()

    # ------------------------------------------------------------ parts

    def zmq_ceiling(self, n: int) -> float:
        from daemons import free_port

        port = free_port()
        pull = self.start(_zmq_pull, port, n)
        expect(pull, "ready")
        push = self.start(_zmq_push, port, 0, n)
        expect(push, "ready")
        push.send("go")
        _, start, send_cpu = expect(push, "done")
        _, end, recv_cpu = expect(pull, "done")
        self.stop_children()
        rate = n / (end - start)
        print(f"{'ZeroMQ PUSH/PULL, msgpack batches of 1000':<52}{n:>9}{end - start:>9.2f}"
              f"{rate:>12,.0f}{1:>9.2f}   cpu: push {send_cpu:.2f} s, pull {recv_cpu:.2f} s")
        return rate

    def throughput(self, label: str, senders: list[tuple[str, list[str], int]],
                   ceiling: float, in_flight: int = 4) -> tuple[float, dict]:
        """Producers ``(id, nodes, records)`` at once; prints a row, returns records/s and
        the CPU figures."""
        conns = []
        for producer_id, nodes, n in senders:
            conns.append(self.start(_throughput, nodes, producer_id, self.values(n), n,
                                    in_flight))
        for conn in conns:
            expect(conn, "ready")
        processes = daemon_processes(self.cluster)
        before = cpu_snapshot(processes)
        wall = time.monotonic()
        for conn in conns:
            conn.send("go")
        results = [expect(conn, "done") for conn in conns]
        flushed = cpu_snapshot(processes)
        send_wall = time.monotonic() - wall
        exact, lag = self.wait_exact()
        counted = cpu_snapshot(processes)
        total_wall = time.monotonic() - wall
        self.stop_children()
        total = sum(n for _, _, n in senders)
        start = min(r[1] for r in results)
        end = max(r[2] for r in results)
        rate = total / (end - start)
        accepted = sum(r[5] for r in results)
        print(f"{label:<52}{total:>9}{end - start:>9.2f}{rate:>12,.0f}{rate / ceiling:>9.2f}"
              f"   table exact: {'yes' if exact else 'NO'} ({lag:.1f} s after flush);"
              f" accepted {accepted}")
        cpu = {"processes": processes, "send": {p: flushed[p] - before[p] for p in processes},
               "count": {p: counted[p] - flushed[p] for p in processes},
               "send_wall": send_wall, "count_wall": total_wall - send_wall,
               "producers": [r[3] for r in results], "exact": exact, "records": total}
        return rate, cpu

    def open_loop(self, producer_id: str, nodes: list[str], rate: float, seconds: float,
                  during: Callable[[float], None] | None = None, follow: bool = False) -> dict:
        """One open-loop run; ``follow``: its records go to the log too, and a follower
        times them there (``result["tail"]``: latencies, seen, exact, text)."""
        args = self.args
        total = int(rate * seconds)
        first = self.values(total)
        if follow:
            follower = self.start(_follow, list(self.nodes.values()), first, total)
            expect(follower, "ready")
        conn = self.start(_open_loop, nodes, producer_id, first, rate, seconds,
                          args.linger, args.in_flight, args.timeout, follow)
        expect(conn, "ready")
        conn.send("go")
        _, t0 = expect(conn, "started")
        if during is not None:
            during(t0)
        _, result = expect(conn, "done")
        if follow:
            if not follower.poll(FOLLOW_WAIT):
                follower.send("stop")
            _, seen, other, dropped = expect(follower, "done")
            distinct = len({v for v, _ in seen})
            exact = len(seen) == distinct == total and not other and not dropped
            result["tail"] = {
                "latencies": sorted(when - result["t0_wall"] - (v - first) / rate
                                    for v, when in seen),
                "seen": len(seen), "exact": exact,
                "text": f"seen {len(seen)} of {total}: {total - distinct} missing, "
                        f"{len(seen) - distinct} more than once, {other} not of this run, "
                        f"{dropped} dropped by retention"}
        self.stop_children()
        return result

    # ------------------------------------------------------------ report helpers


def quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def print_cpu(cpu: dict, label: str) -> None:
    processes = cpu["processes"]
    print(f"\nCPU seconds per process, {label} (from /proc/PID/stat, utime + stime):")
    print(f"  {'process':<22}{'send':>8}{'% of wall':>11}{'until exact':>13}{'% of wall':>11}")
    for pid, name in sorted(processes.items(), key=lambda kv: kv[1]):
        s, c = cpu["send"][pid], cpu["count"][pid]
        if s < 0.005 and c < 0.005:
            continue
        print(f"  {name + f' ({pid})':<22}{s:>8.2f}{100 * s / cpu['send_wall']:>10.0f}%"
              f"{c:>13.2f}{100 * c / max(cpu['count_wall'], 1e-9):>10.0f}%")
    for i, p in enumerate(cpu["producers"]):
        print(f"  {f'producer {i}':<22}{p:>8.2f}{100 * p / cpu['send_wall']:>10.0f}%")
    daemons = sum(cpu["send"].values())
    print(f"  {'all daemons':<22}{daemons:>8.2f}{100 * daemons / cpu['send_wall']:>10.0f}%"
          f"{sum(cpu['count'].values()):>13.2f}"
          f"{100 * sum(cpu['count'].values()) / max(cpu['count_wall'], 1e-9):>10.0f}%")
    every, cores = daemons + sum(cpu["count"].values()), os.cpu_count() or 1
    print(f"  daemon CPU per record, until exact: {1e6 * every / cpu['records']:.1f} us "
          f"(producers: {1e6 * sum(cpu['producers']) / cpu['records']:.1f} us); {cores} cores "
          f"give {cores * 1e6 / TARGET:.0f} us per record at {TARGET:,} records/s")
    print(f"  (wall: send {cpu['send_wall']:.2f} s, then {cpu['count_wall']:.2f} s until the "
          f"table was exact; this machine has {os.cpu_count()} cores = "
          f"{100 * (os.cpu_count() or 1)}%)")


def throughput_part(bench: Bench, n: int) -> int:
    """Part 1: prints its tables; returns how many of its runs were not exact."""
    failures = 0
    print(f"\n1. Throughput: batches of {BATCH}; from first send to flush() returning "
          f"(all durable on R=2)")
    print(f"{'what':<52}{'records':>9}{'seconds':>9}{'records/s':>12}{'vs ZMQ':>9}")
    ceiling = bench.zmq_ceiling(n)
    rows = {}  # label: (records/s, cpu figures)

    def one_producer(name: str, route: str, in_flight: int) -> str:
        producer_id = bench.producer_id(name)
        primary = bench.primary(producer_id)
        nodes = bench.route(producer_id, route)
        entry = next(n for n in NAMES if bench.nodes[n] == nodes[0])
        to = f"-> {primary}, its primary" if route == "primary" else \
            f"-> {entry}, forwarded to {primary}"
        label = f"1 producer, in_flight {in_flight} {to}"
        rows[label] = bench.throughput(label, [(producer_id, nodes, n)], ceiling,
                                       in_flight)
        return label

    first = one_producer("bench-one", "primary", 4)
    one_producer("bench-one-fwd", "forwarded", 4)
    one_producer("bench-one-16", "primary", bench.args.in_flight)
    four = [bench.producer_id(f"bench-four-{i}") for i in range(4)]
    primaries = [bench.primary(p) for p in four]
    label4 = f"4 producers (processes), in_flight 4 -> {','.join(primaries)}"
    rows[label4] = bench.throughput(
        label4, [(p, bench.route(p, "primary"), n // 4) for p in four], ceiling)
    single = {label: rate for label, (rate, _) in rows.items() if label != label4}
    best = max(single, key=single.get)
    print(f"\ntarget (issue 10): >= {TARGET:,} records/s for one producer: "
          f"{'met' if single[best] >= TARGET else 'NOT met'} (best {single[best]:,.0f} "
          f"records/s = {single[best] / TARGET:.2f}x the target: {best})")
    failures += sum(not cpu["exact"] for _, cpu in rows.values())
    cpu_one, cpu_four = rows[first][1], rows[label4][1]
    print_cpu(cpu_one, first)
    print_cpu(cpu_four, "4 producers")
    return failures


def latency_part(bench: Bench) -> int:
    """Part 2: prints its table; returns how many of its runs were not exact."""
    args, failures = bench.args, 0
    print(f"\n2. Latency, open loop: record k offered at t0 + k/rate (never waiting for "
          f"acks), {args.seconds:g} s per rate, linger {args.linger * 1000:g} ms, "
          f"in_flight {args.in_flight}; from the scheduled time to the acknowledgement "
          f"(ack) and to the record appearing in `tail --follow` of the log sink (tail)")
    print(f"{'route':<11}{'offered/s':>10}{'records':>9}{'achieved/s':>11}{'ack p50 ms':>11}"
          f"{'ack p99 ms':>11}{'ack max ms':>11}{'tail p50 ms':>12}{'tail p99 ms':>12}"
          f"{'tail max ms':>12}{'tail seen':>10}{'sender late ms':>15}{'queued batches':>15}"
          f"{'daemons CPU':>12}{'exact':>7}")
    p99_at_10k = {}
    for route in args.routes:
        for rate in args.rates:
            producer_id = bench.producer_id(f"bench-lat-{route}-{rate}")
            processes = daemon_processes(bench.cluster)
            before, started = cpu_snapshot(processes), time.monotonic()
            r = bench.open_loop(producer_id, bench.route(producer_id, route), rate,
                                args.seconds, follow=True)
            after, took = cpu_snapshot(processes), time.monotonic() - started
            cpu = sum(after[p] - before[p] for p in processes) / took
            exact, _ = bench.wait_exact()
            tail = r["tail"]
            failures += (not exact) + (not tail["exact"])
            lat, tail_lat = r["latencies"], tail["latencies"] or [float("nan")]
            achieved = r["total"] / r["acks"][-1]
            p99 = quantile(lat, 0.99)
            if rate == 10_000:
                p99_at_10k[route] = p99, quantile(tail_lat, 0.99)
            print(f"{route:<11}{rate:>10,}{r['total']:>9}{achieved:>11,.0f}"
                  f"{1000 * quantile(lat, 0.5):>11.1f}{1000 * p99:>11.1f}"
                  f"{1000 * lat[-1]:>11.1f}{1000 * quantile(tail_lat, 0.5):>12.1f}"
                  f"{1000 * quantile(tail_lat, 0.99):>12.1f}{1000 * tail_lat[-1]:>12.1f}"
                  f"{tail['seen']:>10}{1000 * r['behind']:>15.1f}"
                  f"{r['most_waiting']:>15}{cpu:>11.0%} {'yes' if exact else 'NO':>6}", flush=True)
            if not tail["exact"]:
                print(f"  the log as tail --follow saw it is NOT exact: {tail['text']}")
    for route, p99s in p99_at_10k.items():
        print(f"goal (issue 10): p99 under {LATENCY_GOAL * 1000:g} ms at 10 000 records/s, "
              f"{route}: " + ", ".join(
                  f"to the {what} {'met' if p99 < LATENCY_GOAL else 'NOT met'} "
                  f"(p99 {1000 * p99:.1f} ms)" for what, p99 in zip(("ack", "tail"), p99s)))
    print("(achieved/s: records / time from t0 to the last acknowledgement; tail: a "
          "follower process with daemon.consumer.Consumer, tail's log requests from the end, "
          f"polling again at once while records come, else after {TAIL_INTERVAL:g} s as "
          "tail's --interval; tail seen: records it saw, each once when exact; sender late: "
          "how far the sender fell behind its schedule; queued batches: most batches "
          "waiting for a free in-flight slot; daemons CPU: CPU time of the three daemons "
          "and their workers (/proc) over the run's wall time, 100% = one core of the "
          "machine's 2; exact: the table)")
    return failures


def kill_part(bench: Bench) -> int:
    """Part 3: kill -9 of the producer's primary while it sends; returns 1 if the table is
    not exact afterwards."""
    args, cluster, failures = bench.args, bench.cluster, 0
    producer_id = bench.producer_id("bench-kill")
    victim = bench.primary(producer_id)
    nodes = bench.route(producer_id, "forwarded")
    survivor = next(n for n in NAMES if n != victim)
    killed: dict[str, float] = {}

    def kill(t0: float) -> None:
        time.sleep(max(0.0, t0 + args.kill_after - time.monotonic()))
        killed["at"], killed["wall"] = time.monotonic(), time.time()
        cluster.kill(victim, signal.SIGKILL)
        cluster.wait_exit(victim)

    rate = args.kill_rate
    partition = producer_partition(producer_id, args.partitions)
    entry = next(n for n in NAMES if bench.nodes[n] == nodes[0])
    print(f"\n3. Kill -9 of the producer's primary ({victim}, partition {partition}) "
          f"{args.kill_after:g} s into {args.kill_seconds:g} s at {rate:,} records/s "
          f"offered (open loop as above); the producer sends through {entry} (its "
          f"list: the survivors, then the victim) with its resend timeout "
          f"{args.timeout:g} s")
    r = bench.open_loop(producer_id, nodes, rate, args.kill_seconds, during=kill)
    exact, lag = bench.wait_exact(survivor)
    failures += not exact
    kill_at = killed["at"] - r["t0"]
    acks = r["acks"]
    gaps = sorted(((b - a, a - kill_at) for a, b in zip([0.0] + acks, acks)),
                  reverse=True)
    after = next((a - kill_at for a in acks if a > kill_at), float("nan"))
    resumed = next((i for i, a in enumerate(acks) if a > kill_at), len(acks) - 1)
    drained = (r["mark"] - r["ack_marks"][max(resumed - 1, 0)]) / max(
        acks[-1] - acks[resumed], 1e-9)
    lat = r["latencies"]
    print(f"  longest gap between acknowledgements: {gaps[0][0]:.2f} s (from "
          f"{gaps[0][1]:+.2f} s after the kill); the next longest: "
          + ", ".join(f"{g:.2f} s" for g, _ in gaps[1:4]))
    print(f"  first acknowledgement after the kill: {after:.2f} s after it; then the "
          f"backlog went at {drained:,.0f} records/s until the last acknowledgement "
          f"{acks[-1] - kill_at:.2f} s after the kill")
    logs = {n: cluster[n].log() for n in NAMES if n != victim}
    dead = [t for n, text in logs.items() for t, _ in stamps(
        text, rf"event=member_dead member={n} peer={victim} ") if t >= killed["wall"]]
    active = [t for text in logs.values() for t, _ in stamps(
        text, rf"event=partition_active .*?partition={partition} ")
        if t >= killed["wall"]]
    print("  from the logs: every survivor knew the victim dead "
          + (f"{max(dead) - killed['wall']:.2f} s" if len(dead) == len(logs)
             else "(not in the logs)")
          + f" after the kill; partition {partition} active on a survivor "
          + (f"{min(active) - killed['wall']:.2f} s" if active else "(not in the logs)")
          + " after it")
    duplicates = r["mark"] - r["accepted"]
    print(f"  records {r['total']}, acknowledged up to {r['mark']}, {duplicates} of them "
          f"answered as duplicates (applied before the kill, their answer lost); "
          f"latency p50 {1000 * quantile(lat, 0.5):.1f} ms, p99 "
          f"{1000 * quantile(lat, 0.99):.0f} ms, max {1000 * lat[-1]:.0f} ms; sender "
          f"late at most {1000 * r['behind']:.1f} ms")
    print(f"  table exact afterwards: {'yes' if exact else 'NO'} ({lag:.1f} s after "
          f"the flush, asked {survivor})")
    return failures


def run(args: argparse.Namespace, root: Path) -> int:
    cluster = Cluster(root, preset="local")
    bench = Bench(cluster, args)
    failures = 0
    try:
        cluster.start_many(NAMES, replicas=2, partitions=args.partitions)
        bench.nodes = {n: cluster[n].address for n in NAMES}
        flow = root / "bench_flow.py"
        flow.write_text(FLOW)
        result = cli("submit", str(flow), "--node", cluster["n0"].address, timeout=60)
        if result.returncode:
            raise SystemExit(f"submit failed: {result.stderr or result.stdout}")
        wait_for(lambda: cluster.request("n0", "ring", timeout=5.0)["flows"], 30,
                 interval=0.1, message="the flow runs")
        # warm up: a first small send makes every partition's task and connection exist
        with Producer(INGEST, list(bench.nodes.values()), producer_id="bench-warmup") as warm:
            first = bench.values(2000)
            for v in range(first, first + 2000):
                warm.send(record(v))
        bench.wait_exact()
        load = os.getloadavg()
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
              f"({os.cpu_count()} cores; other work on this machine competes for them)")
        print(f"3 daemons (preset local, R=2, {args.partitions} partitions) on 127.0.0.1; flow "
              f"ingest({INGEST!r}) -> key_by -> count -> table, {KEYS} keys; "
              f"records like {record(17)}")

        if not args.skip_throughput:
            failures += throughput_part(bench, args.records)
        if not args.skip_latency:
            failures += latency_part(bench)
        if not args.skip_kill:
            failures += kill_part(bench)
        load = os.getloadavg()
        print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    except BaseException:
        print(cluster.log_tails(), file=sys.stderr)
        raise
    finally:
        bench.stop_children()
        cluster.close()
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=300_000,
                        help="records for the throughput runs (split over the 4 producers)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per latency rate")
    parser.add_argument("--rates", default="1000,10000,50000",
                        help="offered records/s of the latency runs")
    parser.add_argument("--routes", default="forwarded",
                        help="latency runs send to: 'primary' (the producer's primary "
                             "first), 'forwarded' (another daemon first), or both")
    parser.add_argument("--linger", type=float, default=0.005,
                        help="seconds a partial batch waits (latency and kill runs)")
    parser.add_argument("--in-flight", type=int, default=16,
                        help="requests in flight (latency and kill runs)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="the producer's resend timeout (latency and kill runs)")
    parser.add_argument("--kill-rate", type=int, default=10_000)
    parser.add_argument("--kill-seconds", type=float, default=10.0)
    parser.add_argument("--kill-after", type=float, default=3.0)
    parser.add_argument("--partitions", type=int, default=256,
                        help="P of the cluster (256: the presets' default)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-kill", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="a small version: 20 000 records, 1 s per rate, a 4 s kill run")
    args = parser.parse_args()
    if args.quick:
        args.records, args.seconds = 20_000, 1.0
        args.kill_seconds, args.kill_after = 4.0, 1.0
    args.rates = [int(x) for x in args.rates.split(",")]
    args.routes = [x.strip() for x in args.routes.split(",")]
    if any(r not in ("primary", "forwarded") for r in args.routes):
        parser.error("--routes takes primary and/or forwarded")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    with tempfile.TemporaryDirectory(prefix="gossipflow-ingest-") as tmp:
        failures = run(args, Path(tmp))
    if failures:
        raise SystemExit(f"{failures} part(s) not exact")


if __name__ == "__main__":
    main()
