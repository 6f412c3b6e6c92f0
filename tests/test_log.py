"""The durable delivery log (``sinks.log()``) on real daemons (issue 10): consumers read
every record once, in order per partition, resuming from saved offsets across kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from daemons import ROOT, Cluster, clean_env, flow_record, submit, wait_for, write

from daemon.consumer import Consumer
from nodes.plan import partition_of

pytestmark = pytest.mark.timeout(300)

THREE = ["n0", "n1", "n2"]
N = 200_000
LOGGED = f"""
from nodes import Flow, sources, sinks
flow = Flow("logged")
(flow.source(sources.generate({N}, lambda i: i))
     .key_by(lambda i: str(i % 13)).map_values(lambda i: i * 2).sink(sinks.log()))
"""


def read_until(consumer: Consumer, total: int, seen: list, limit: float = 120) -> None:
    wait_for(lambda: seen.extend(consumer.poll()) or len(seen) >= total, limit, interval=0.05,
             message=f"the consumer read {total} records")


def check_once_in_order(seen: list, n: int) -> None:
    """Every record once, and per partition the offsets 0, 1, 2, ... in the order read."""
    assert Counter(value // 2 for _, _, (_, value) in seen) == Counter(range(n))
    by_partition: dict[int, list[int]] = {}
    for partition, offset, _ in seen:
        by_partition.setdefault(partition, []).append(offset)
    for partition, offsets in by_partition.items():
        assert offsets == list(range(len(offsets))), partition


def test_a_consumer_resumes_from_its_offsets_across_a_kill(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    cluster.start_many(THREE, replicas=2, partitions=64)
    assert submit(cluster, "n0", write(tmp_path, "logged.py", LOGGED)).returncode == 0
    nodes = [cluster[n].address for n in THREE]
    seen: list = []
    first = Consumer("logged", nodes)
    read_until(first, N // 3, seen)
    saved = dict(first.offsets)  # the consumer "dies" here, its offsets saved
    victim = cluster.request("n0", "ring")["placement"][0][0]
    cluster.kill(victim, signal.SIGKILL)
    assert cluster.wait_exit(victim) == -signal.SIGKILL
    survivors = [cluster[n].address for n in THREE if n != victim]
    wait_for(lambda: flow_record(cluster, THREE.index(victim) and "n0" or "n1",
                                 "logged")["status"] == "completed", 180, interval=0.5,
             message="the flow completes on the survivors")
    again = Consumer("logged", survivors, offsets=saved)
    read_until(again, N, seen)
    assert again.poll() == [] and again.dropped == 0
    check_once_in_order(seen, N)


def gossipflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("gossipflow")), *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=clean_env(), check=False)


def test_tail_prints_the_log_from_start_end_or_offsets_and_retention_drops_the_oldest(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_many(THREE, replicas=2, partitions=64)
    kept = LOGGED.replace('"logged"', '"kept"').replace(f"generate({N}", "generate(5000") \
        .replace("sinks.log()", "sinks.log(records=100)")
    assert submit(cluster, "n0", write(tmp_path, "kept.py", kept), "--wait").returncode == 0
    node = cluster["n1"].address
    everything = gossipflow("tail", "kept", "--from", "start", "--node", node, "--json")
    assert everything.returncode == 0, everything.stderr
    lines = [json.loads(line) for line in everything.stdout.splitlines()]
    per_partition = Counter(line["partition"] for line in lines)
    assert set(per_partition) == {partition_of(str(k), 64) for k in range(13)}
    assert set(per_partition.values()) == {100}
    for partition in per_partition:  # the last 100 offsets of each partition
        offsets = [line["offset"] for line in lines if line["partition"] == partition]
        assert offsets == list(range(offsets[0], offsets[0] + 100)) and offsets[0] > 0
    assert gossipflow("tail", "kept", "--from", "end", "--node", node).stdout == ""
    some = lines[0]
    rest = gossipflow("tail", "kept", "--from", f"{some['partition']}:{some['offset'] + 90}",
                      "--node", node, "--json")
    mine = [json.loads(line) for line in rest.stdout.splitlines()
            if json.loads(line)["partition"] == some["partition"]]
    assert [line["offset"] for line in mine] == list(range(some["offset"] + 90,
                                                           some["offset"] + 100))
    bad = gossipflow("tail", "kept", "--from", "x:y", "--node", node)
    assert bad.returncode == 2 and "partition:offset" in bad.stderr


def test_a_record_is_readable_only_once_its_commit_is_durable(tmp_path: Path) -> None:
    """log_entries serves a primary's log up to its last durable commit, and retention
    by bytes keeps the newest records."""
    from types import SimpleNamespace

    import msgpack

    from daemon.store import Store
    from daemon.task import FlowContext, PartitionTask
    from daemon.worker import log_entries
    from nodes import load_flow
    from nodes.plan import plan

    text = ('from nodes import Flow, sources, sinks\nflow = Flow("l")\n'
            'flow.source(sources.generate(100, lambda i: i)).sink(sinks.log(bytes=50))\n')
    with Store(tmp_path / "store", sync=False) as store:
        the_plan = plan(load_flow(text, str(tmp_path / "l.py")))
        ctx = FlowContext("l@1", the_plan, 1, store, lambda *sent: True, batch_size=10)
        ctx.plan_splits()
        task = PartitionTask(ctx, the_plan.stages[0], 0, 1, ("b",))
        running = SimpleNamespace(plan=the_plan, record=SimpleNamespace(name="l"),
                                  tasks={(0, 0): task})
        runtime = SimpleNamespace(flows={"l@1": running})

        def read(**args) -> list:
            part = log_entries(store, runtime, {"flow": "l@1", **args})["parts"]["0"]
            return [part[0], part[1], msgpack.unpackb(part[2])]

        task.step()
        assert read() == [0, 0, []]  # committed, not on the replica yet
        task.on_replicated("b", task.number)
        first, bound, records = read()
        assert bound == 100 and records == list(range(first, 100))
        assert sum(len(msgpack.packb(r)) for r in records) <= 50 < sum(
            len(msgpack.packb(r)) for r in range(first - 1, 100))
        assert read(end=True) == [100, 100, []]
        assert log_entries(store, runtime, {"flow": "l@1", "sink": "x"}) == {
            "error": "flow 'l' has log sinks: log"}
