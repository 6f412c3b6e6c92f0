"""The ``gossipflow`` command line (click).

``start`` runs a daemon in the foreground; every other command asks one
daemon (``--node``, or env GOSSIPFLOW_NODE, default 127.0.0.1:7400) and prints
its answer, as a table or with ``--json``. An unreachable daemon or a refused
request prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from nodes.codec import json_default, unpack
from nodes.eventtime import MAX_TIME, MIN_TIME, to_datetime, to_ms
from nodes.windows import Windowed

from . import client
from .config import PRESETS, Config
from .errors import ClientError, ConfigError, GossipflowError, RequestRefusedError
from .replication import ROUND_SHIFT

DEFAULT_NODE = "127.0.0.1:7400"
EXIT_ERROR = 2
STATE_COLUMNS = {"active": 1, "handing over": 2, "taking over": 3, "awaiting copy": 3}
"""Column of `ring`'s per-flow table counting partitions in each state."""


def load_secret(path: str | None) -> bytes | None:
    """The cluster key derived from a secret file (any length; surrounding whitespace ignored)."""
    if path is None:
        return None
    try:
        text = Path(path).read_bytes().strip()
    except OSError as err:
        raise ConfigError(f"cannot read --secret-file {path}: {err.strerror}") from err
    if not text:
        raise ConfigError(f"--secret-file {path} is empty")
    return hashlib.blake2b(text, digest_size=32, person=b"gossipflow").digest()


def _fail(message: str) -> None:
    click.echo(f"gossipflow: {message}", err=True)
    sys.exit(EXIT_ERROR)


@click.group()
@click.version_option(package_name="gossipflow")
def main() -> None:
    """gossipflow: a peer-to-peer dataflow daemon. No coordinator: every daemon is the same."""


@main.command()
@click.option("--name", required=True, help="This member's unique name.")
@click.option("--bind", default=DEFAULT_NODE, show_default=True,
              help="HOST:PORT for gossip (UDP) and requests (TCP).")
@click.option("--join", "joins", multiple=True, metavar="HOST:PORT[,HOST:PORT...]",
              help="Seed members to join through (repeatable or comma-separated).")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="Where this member keeps its state.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="lan", show_default=True,
              help="Timer preset: lan (hosts on a network), local (one machine), test.")
@click.option("--secret-file", type=click.Path(dir_okay=False), envvar="GOSSIPFLOW_SECRET_FILE",
              help="Cluster secret: every packet is tagged with it (env GOSSIPFLOW_SECRET_FILE).")
@click.option("--partitions", type=int, default=256, show_default=True,
              help="Partition count P (power of two; must match the cluster).")
@click.option("--replicas", type=int, default=2, show_default=True,
              help="Replica set size R (must match the cluster).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def start(name: str, bind: str, joins: tuple[str, ...], data_dir: str, preset: str,
          secret_file: str | None, partitions: int, replicas: int, log_level: str) -> None:
    """Run a daemon in the foreground (SIGTERM or Ctrl-C leaves the cluster gracefully)."""
    from .node import Node

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s level=%(levelname)s %(message)s")
    seeds = [s.strip() for item in joins for s in item.split(",") if s.strip()]
    try:
        config = Config.preset(preset, partitions=partitions, replicas=replicas)
        node = Node(name, bind, data_dir, config, seeds=seeds, secret=load_secret(secret_file))
    except GossipflowError as err:
        _fail(str(err))
    sys.exit(node.run())


SUBMIT_TIMEOUT = 300.0
"""Seconds ``submit`` waits at least: the daemon reads every input file once (its digest)."""


def client_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --node, --json, --secret-file and --timeout, and turn errors into one line + exit 2."""
    @click.option("--node", envvar="GOSSIPFLOW_NODE", default=DEFAULT_NODE, show_default=True,
                  help="Any daemon of the cluster, HOST:PORT (env GOSSIPFLOW_NODE).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("--secret-file", type=click.Path(dir_okay=False),
                  envvar="GOSSIPFLOW_SECRET_FILE", help="The cluster secret, if it has one.")
    @click.option("--timeout", type=float, default=3.0, show_default=True,
                  help="Seconds to wait for the daemon.")
    @functools.wraps(fn)
    def wrapper(node: str, as_json: bool, secret_file: str | None, timeout: float,
                **kwargs: Any) -> None:
        def ask(op: str, args: dict[str, Any] | None = None, at_least: float = 0.0) -> Any:
            return client.request(node, op, args, timeout=max(timeout, at_least),
                                  secret=load_secret(secret_file))
        try:
            fn(ask=ask, as_json=as_json, **kwargs)
        except (ClientError, ConfigError) as err:
            _fail(str(err))
    return wrapper


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _print_table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


@main.command()
@client_command
def members(ask: Callable[..., Any], as_json: bool) -> None:
    """Every member the daemon knows, with status and incarnation."""
    result = ask("members")
    if as_json:
        _print_json(result)
    else:
        _print_table([[m["name"], m["address"], m["status"], m["incarnation"]] for m in result],
                     ["NAME", "ADDRESS", "STATUS", "INCARNATION"])


@main.command()
@client_command
def ring(ask: Callable[..., Any], as_json: bool) -> None:
    """Partition placement, and who runs each partition of each flow (epoch, replicas,
    takeovers in progress: --json shows every partition)."""
    result = ask("ring")
    if as_json:
        _print_json(result)
        return
    click.echo(f"{result['partitions']} partitions, {result['replicas']} replicas, "
               f"{len(result['members'])} live members")
    load: dict[str, list[int]] = {name: [0, 0] for name in result["members"]}
    for replicas in result["placement"]:
        for rank, name in enumerate(replicas):
            load[name][0 if rank == 0 else 1] += 1
    _print_table([[name, p, r] for name, (p, r) in sorted(load.items())],
                 ["MEMBER", "PRIMARY", "REPLICA"])
    for fid, parts in sorted(result["flows"].items()):
        rows: dict[str, list] = {}
        for members in parts.values():
            for name, state in members.items():
                row = rows.setdefault(name, [name, 0, 0, 0, 0, 0])
                row[STATE_COLUMNS.get(state["state"], 3)] += 1
                row[4] = max(row[4], state["epoch"] >> ROUND_SHIFT)
                row[5] += state["unreplicated"]
        click.echo(f"\nflow {fid}: {len(parts)} of {result['partitions']} partitions running")
        _print_table(sorted(rows.values()),
                     ["MEMBER", "RUNNING", "HANDING OVER", "TAKING OVER", "MAX ROUND",
                      "UNREPLICATED"])
    if result["incomplete"]:
        click.echo(f"incomplete: {result['incomplete']}")


def _print_windows(rows: list[list[Any]], as_json: bool) -> None:
    """A windowed table, one row per key and window, sorted by key, then start: JSON
    objects {key, start, end, value} (times in epoch ms), or a table (ISO times)."""
    windows = sorted(([key[0] if isinstance(key, list) else key, w] for key, w in rows),
                     key=lambda row: (repr(row[0]), row[1].start))
    if as_json:
        click.echo(json.dumps([{"key": key, "start": to_ms(w.start), "end": to_ms(w.end),
                                "value": w.value} for key, w in windows], indent=2,
                              default=json_default))
    else:
        _print_table([[key, w.start.isoformat(), w.end.isoformat(), w.value]
                      for key, w in windows], ["KEY", "START", "END", "VALUE"])


def _late(figures: dict[str, Any]) -> str:
    """A window or join stage's late records, and how many came after an idle input."""
    if "late" not in figures:
        return ""
    idle = figures.get("late_after_idle", 0)
    return f"{figures['late']}" + (f" ({idle} after idle)" if idle else "")


def _event_time(watermark: int | None) -> str:
    """A watermark (ms) for people: an ISO time, "start" before any record, "end" after
    the last, "" for a stage without event time."""
    if watermark is None:
        return ""
    if watermark <= MIN_TIME:
        return "start"
    if watermark >= MAX_TIME:
        return "end"
    return to_datetime(watermark).isoformat(timespec="milliseconds")


@main.command()
@click.argument("flow", required=False)
@client_command
def status(ask: Callable[..., Any], as_json: bool, flow: str | None) -> None:
    """The daemon itself (health, counters), or with FLOW that flow's state."""
    if flow is not None:
        record = ask("progress", {"name": flow})
        if as_json:
            _print_json(record)
            return
        for key in ("name", "version", "status", "error", "path"):
            click.echo(f"{key}: {record[key]}")
        click.echo(f"tasks done: {record['tasks_done']} of {record['tasks']}")
        stages = sorted(record["stages"].items(), key=lambda kv: int(kv[0].split()[0]))
        timed = any("watermark" in f for _, f in stages)
        _print_table([[stage, f["records_in"], f["records_out"], f"{f['done']}/{f['tasks']}",
                       f["unacked"]] + ([_event_time(f.get("watermark")), _late(f)]
                                        if timed else []) for stage, f in stages],
                     ["STAGE", "RECORDS IN", "RECORDS OUT", "PARTITIONS DONE", "UNACKED"]
                     + (["WATERMARK", "LATE"] if timed else []))
        parts = record["partitions"]
        moving = sorted(int(p) for p, members in parts.items()
                        if any(s["state"] != "active" for s in members.values()))
        click.echo(f"partitions running: {len(parts)}, moving (copy, handover or takeover): "
                   f"{', '.join(map(str, moving)) or 'none'} (--json: epoch, replicas and "
                   "state of each)")
        if record["incomplete"]:
            click.echo(f"incomplete: {record['incomplete']}")
        return
    result = ask("status")
    if as_json:
        _print_json(result)
        return
    for key in ("name", "address", "incarnation", "awareness", "joined", "uptime"):
        click.echo(f"{key}: {result[key]}")
    for key, value in sorted(result["stats"].items()):
        click.echo(f"  {key}: {value}")


EXIT_FLOW_INVALID = 1


@main.command()
@click.argument("flow_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--replace", is_flag=True, help="Run this text instead of a different one "
              "already registered under the same name.")
@click.option("--wait", is_flag=True, help="Wait until the flow completes (exit 0) or "
              "fails (exit 1, with its error).")
@client_command
def submit(ask: Callable[..., Any], as_json: bool, flow_file: str, replace: bool,
           wait: bool) -> None:
    """Check FLOW_FILE here, then run it on the cluster (through any daemon)."""
    from nodes import FlowError, load_flow

    path = Path(flow_file).resolve()
    try:
        text = path.read_text(encoding="utf-8")
        flow = load_flow(text, str(path))
    except (OSError, UnicodeDecodeError) as err:
        click.echo(f"gossipflow: cannot read {flow_file}: {err}", err=True)
        sys.exit(EXIT_FLOW_INVALID)
    except FlowError as err:
        click.echo(f"gossipflow: {err}", err=True)
        click.echo("gossipflow: nothing was submitted", err=True)
        sys.exit(EXIT_FLOW_INVALID)
    result = ask("submit", {"name": flow.name, "text": text, "path": str(path),
                            "base_dir": str(flow.base_dir), "replace": replace},
                 at_least=SUBMIT_TIMEOUT)
    record = result["flow"]
    if not wait:
        if as_json:
            _print_json(result)
        else:
            verb = "submitted" if result["created"] else "already running (same text)"
            click.echo(f"flow {record['name']} version {record['version']}: {verb}")
        return
    while record["status"] == "running":
        time.sleep(0.05)
        record = ask("flow", {"name": flow.name})
    if as_json:
        _print_json(record)
    else:
        click.echo(f"flow {record['name']} {record['status']}"
                   + (f": {record['error']}" if record["error"] else ""))
    if record["status"] != "completed":
        sys.exit(EXIT_FLOW_INVALID)


@main.command()
@client_command
def flows(ask: Callable[..., Any], as_json: bool) -> None:
    """Every flow in the cluster's registry."""
    result = ask("flows")
    if as_json:
        _print_json(result)
        return
    _print_table([[f["name"], f["version"], f["status"],
                   time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f["submitted"]))]
                  for f in result], ["NAME", "VERSION", "STATUS", "SUBMITTED"])


@main.command()
@click.argument("name")
@click.argument("key", required=False)
@click.option("--sink", help="Which table sink, when the flow has several.")
@client_command
def query(ask: Callable[..., Any], as_json: bool, name: str, key: str | None,
          sink: str | None) -> None:
    """Flow NAME's table (the latest value per key), or the value of KEY, from any daemon."""
    rows = ask("query", {"name": name, "key": key, "sink": sink})
    if key is not None and not rows:
        click.echo(f"gossipflow: key {key!r} is not in {name}'s table", err=True)
        sys.exit(EXIT_FLOW_INVALID)
    if any(type(value) is Windowed for _, value in rows):
        _print_windows(rows, as_json)
        return
    if key is not None:
        value = rows[0][1]
        click.echo(json.dumps(value, default=json_default) if as_json else value)
        return
    rows.sort(key=lambda row: repr(row[0]))
    if as_json:
        click.echo(json.dumps({str(k): v for k, v in rows}, indent=2, sort_keys=True,
                              default=json_default))
    else:
        _print_table([[k, v] for k, v in rows], ["KEY", "VALUE"])


@main.command()
@click.argument("name")
@click.option("--from", "from_", default=None, metavar="start|end|P:O,...",
              help="Log sinks: where to begin: every record kept, only new ones, or saved "
              "offsets (partition:offset, comma-separated; other partitions from 0).")
@click.option("--follow", is_flag=True, help="Log sinks: keep printing records as they come.")
@click.option("--sink", default=None, help="The log sink, if the flow has several.")
@click.option("--from-start", is_flag=True,
              help="Publish sinks: begin with what the daemons still hold.")
@click.option("--count", type=int, default=None, help="Stop after this many records.")
@click.option("--interval", type=float, default=0.2, show_default=True,
              help="Seconds between polls.")
@client_command
def tail(ask: Callable[..., Any], as_json: bool, name: str, from_: str | None, follow: bool,
         sink: str | None, from_start: bool, count: int | None, interval: float) -> None:
    """Print flow NAME's records as JSON lines: its log sink's (from --from, with
    partition and offset under --json; --follow to keep going), else what its publish
    sinks publish, until Ctrl-C."""
    try:
        offsets = _offsets(from_ or "start")
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--from") from err
    try:
        result = ask("log", {"name": name, "sink": sink, "end": offsets is None, "from": {}})
    except RequestRefusedError as err:
        if "has log sinks: none" not in str(err) or from_ or follow:
            raise
        _tail_published(ask, as_json, name, from_start, count, interval)
        return
    if offsets is None:
        offsets = {int(p): part[1] for p, part in result["parts"].items()}
    shown = 0
    try:
        while count is None or shown < count:
            result = ask("log", {"name": name, "sink": sink,
                                 "from": {str(p): o for p, o in offsets.items()}})
            got = 0
            for key, (first, _, packed) in sorted(result["parts"].items(),
                                                  key=lambda item: int(item[0])):
                partition = int(key)
                at = offsets.get(partition, 0)
                records = unpack(packed, use_list=True)[
                    max(at - first, 0):]
                for i, record in enumerate(records, max(first, at)):
                    if count is not None and shown >= count:
                        break
                    click.echo(json.dumps({"partition": partition, "offset": i,
                                           "record": record}, default=json_default) if as_json
                               else json.dumps(record, default=json_default))
                    offsets[partition] = i + 1
                    shown += 1
                    got += 1
            if not follow and not got:
                break
            if not got:
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    if not as_json and not follow:
        click.echo("next: " + ",".join(f"{p}:{o}" for p, o in sorted(offsets.items())),
                   err=True)


def _offsets(text: str) -> dict[int, int] | None:
    """--from: "start" -> {}, "end" -> None, "3:120,7:0" -> {3: 120, 7: 0}."""
    if text in ("start", "end"):
        return {} if text == "start" else None
    try:
        pairs = [item.split(":") for item in text.split(",") if item]
        offsets = {int(p): int(o) for p, o in pairs}
    except ValueError:
        raise ValueError(f"{text!r}: give start, end or partition:offset,...") from None
    if any(p < 0 or o < 0 for p, o in offsets.items()):
        raise ValueError(f"{text!r}: partitions and offsets are >= 0")
    return offsets


def _tail_published(ask: Callable[..., Any], as_json: bool, name: str, from_start: bool,
                    count: int | None, interval: float) -> None:
    """What flow NAME's publish sinks publish, as JSON lines, until Ctrl-C."""
    cursors: dict[str, int] = {}
    shown = 0
    first = True
    try:
        while count is None or shown < count:
            result = ask("tail", {"name": name, "cursors": cursors})
            cursors.update(result["cursors"])
            if not first or from_start:
                for sink_name, record in result["records"]:
                    if count is not None and shown >= count:
                        break
                    click.echo(json.dumps(record, default=json_default) if not as_json else
                               json.dumps({"sink": sink_name, "record": record},
                                          default=json_default))
                    shown += 1
            first = False
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("name")
@client_command
def cancel(ask: Callable[..., Any], as_json: bool, name: str) -> None:
    """Stop flow NAME everywhere."""
    record = ask("cancel", {"name": name})
    if as_json:
        _print_json(record)
    else:
        click.echo(f"flow {name}: {record['status']}")


@main.command()
@click.argument("name")
@client_command
def forget(ask: Callable[..., Any], as_json: bool, name: str) -> None:
    """Remove member NAME for good (it must be stopped and never come back with its data
    dir): it no longer counts towards any flow's majority, so the others carry on."""
    result = ask("forget", {"name": name})
    if as_json:
        _print_json(result)
    else:
        click.echo(f"forgotten: {', '.join(result['forgotten'])}")


@main.command()
@click.argument("name")
@click.option("--node", "nodes", multiple=True, envvar="GOSSIPFLOW_NODE",
              default=[DEFAULT_NODE], show_default=True,
              help="A daemon to send to, HOST:PORT; repeat for fallbacks (env GOSSIPFLOW_NODE).")
@click.option("--file", "file_", type=click.Path(dir_okay=False, exists=True),
              help="Read JSON lines from this file instead of standard input.")
@click.option("--producer-id", help="Default: this host, NAME and the input file, so the "
              "same command run again sends nothing twice.")
@click.option("--batch", type=click.IntRange(1, 10_000), default=1000, show_default=True,
              help="Records per request.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds without an acknowledgement before giving up.")
@click.option("--secret-file", type=click.Path(dir_okay=False),
              envvar="GOSSIPFLOW_SECRET_FILE", help="The cluster secret, if it has one.")
def send(name: str, nodes: tuple[str, ...], file_: str | None, producer_id: str | None,
         batch: int, timeout: float, secret_file: str | None) -> None:
    """Send JSON lines (one record each) to ingest NAME, exactly once.

    Record n is line n of the input: run the same command again after a crash and the
    daemons drop what they already hold. Prints accepted=N duplicates=D and exits 0 once
    every line is durable; 1 for a line that is not JSON (the lines before it are sent)
    or an unknown ingest; 2 when no daemon acknowledges within --timeout.
    """
    from .producer import Producer

    source = os.path.abspath(file_) if file_ else "stdin"
    producer_id = producer_id or f"{socket.gethostname()}:{name}:{source}"
    stream = open(file_, encoding="utf-8") if file_ else sys.stdin  # noqa: SIM115
    producer = Producer(name, list(nodes), producer_id=producer_id, batch=batch,
                        give_up=timeout, secret=load_secret(secret_file))
    bad = None
    try:
        for number, line in enumerate(_lines(stream, producer.poll), 1):
            try:
                record = json.loads(line)
            except ValueError as err:
                bad = f"line {number} is not JSON ({err}): {line.strip()[:80]!r}"
                break
            producer.send(record)
        producer.flush()
    except ValueError as err:  # a record too large
        bad = str(err)
        producer.flush()
    except (ClientError, ConfigError) as err:
        click.echo(f"accepted={producer.accepted} acknowledged_up_to_line="
                   f"{producer.acked_upto}")
        kind = EXIT_FLOW_INVALID if isinstance(err, RequestRefusedError) else EXIT_ERROR
        click.echo(f"gossipflow: {err}", err=True)
        sys.exit(kind)
    finally:
        producer.close()
        if file_:
            stream.close()
    acked = min(producer.acked_upto, producer.next_seq - 1)
    click.echo(f"accepted={producer.accepted} duplicates={acked - producer.accepted}")
    if bad:
        click.echo(f"gossipflow: {bad}; nothing after it was sent", err=True)
        sys.exit(EXIT_FLOW_INVALID)


def _lines(stream: Any, idle: Callable[[], None], every: float = 0.02) -> Iterator[str]:
    """The lines of ``stream``, read on a thread of its own; ``idle()`` is called while
    none comes (a slow pipe's records still go out, after the producer's linger)."""
    lines: queue.Queue = queue.Queue(maxsize=10_000)

    def read() -> None:
        try:
            for line in stream:
                lines.put(line)
            lines.put(None)
        except (OSError, ValueError) as err:  # unreadable, or not UTF-8
            lines.put(err)

    threading.Thread(target=read, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=every)
        except queue.Empty:
            idle()
            continue
        if line is None:
            return
        if isinstance(line, Exception):
            raise line
        yield line


if __name__ == "__main__":
    main()
