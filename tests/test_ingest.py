"""Ingest on real daemons (issue 10): producers' records applied exactly once, acknowledged
only once durable, through kills and retries."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from daemons import ROOT, Cluster, clean_env, submit, table, wait_for, write

from daemon.ingest import producer_partition
from daemon.producer import Producer

pytestmark = pytest.mark.timeout(300)

THREE = ["n0", "n1", "n2"]
COUNTS = """
from nodes import Flow, sources, sinks
flow = Flow("clicks")
(flow.source(sources.ingest("clicks"))
     .key_by(lambda r: r["page"]).count().sink(sinks.table()))
"""


def lines(n: int, offset: int = 0) -> list[str]:
    return [json.dumps({"page": f"p{(i * 7919) % 101}", "i": i}) for i in range(offset, offset + n)]


def expected(records: list[str]) -> Counter:
    return Counter(json.loads(line)["page"] for line in records)


def counted(cluster: Cluster, node: str, want: Counter) -> None:
    """The table reaches ``want`` (an acknowledgement means the records are durable in
    the ingest stage; the count downstream follows a moment later) and stays there."""
    wait_for(lambda: table(cluster, node, "clicks") == want, 60, interval=0.2,
             message="the table counts every record once")
    time.sleep(1.0)
    assert table(cluster, node, "clicks") == want


def send(cluster: Cluster, node: str, path: Path, *args: str,
         timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).with_name("gossipflow")), "send", "clicks", "--file",
           str(path), "--node", cluster[node].address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=clean_env(), check=False)


def test_a_file_sent_twice_counts_once(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_many(THREE, replicas=2, partitions=64)
    assert submit(cluster, "n0", write(tmp_path, "clicks.py", COUNTS)).returncode == 0
    data = lines(20_000)
    path = tmp_path / "clicks.jsonl"
    path.write_text("\n".join(data) + "\n")
    first = send(cluster, "n1", path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["accepted=20000", "duplicates=0"]
    again = send(cluster, "n2", path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["accepted=0", "duplicates=20000"]
    counted(cluster, "n0", expected(data))


def primary_of(cluster: Cluster, producer: str) -> str:
    placement = cluster.request("n0", "ring")["placement"]
    return placement[producer_partition(producer, len(placement))][0]


def test_the_producers_primary_killed_mid_send_loses_and_doubles_nothing(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_many(THREE, replicas=2, partitions=64)
    assert submit(cluster, "n0", write(tmp_path, "clicks.py", COUNTS)).returncode == 0
    data = lines(100_000)
    path = tmp_path / "clicks.jsonl"
    path.write_text("\n".join(data) + "\n")
    producer = f"{socket.gethostname()}:clicks:{path}"
    victim = primary_of(cluster, producer)
    entry = next(n for n in THREE if n != victim)
    outcome: dict = {}
    sender = threading.Thread(target=lambda: outcome.update(run=send(cluster, entry, path)))
    sender.start()
    wait_for(lambda: sum(table(cluster, entry, "clicks").values()) >= 10_000, 60,
             message="part of the lines are counted")
    cluster.kill(victim, signal.SIGKILL)
    assert cluster.wait_exit(victim) == -signal.SIGKILL
    sender.join(240)
    first = outcome["run"]
    assert first.returncode == 0, first.stderr
    accepted = int(first.stdout.split()[0].removeprefix("accepted="))
    assert 0 < accepted <= 100_000
    again = send(cluster, entry, path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["accepted=0", "duplicates=100000"]
    counted(cluster, entry, expected(data))


def test_a_cut_off_primary_never_acknowledges_and_nothing_counts_twice(
        cluster: Cluster, tmp_path: Path) -> None:
    """The producer talks only to the primary of its partition, which is cut off from
    every peer: it has no majority, so it acknowledges nothing; after the heal every
    record counts once."""
    for i, name in enumerate(THREE):
        cluster.start(name, join=THREE[:1] if i else (), replicas=2, partitions=64,
                      fault_injection=True)
    cluster.wait_converged(THREE)
    assert submit(cluster, "n0", write(tmp_path, "clicks.py", COUNTS)).returncode == 0
    producer = "cut-producer"
    victim = primary_of(cluster, producer)
    others = [n for n in THREE if n != victim]
    with Producer("clicks", [cluster[victim].address], producer_id=producer,
                  batch=100) as warm:
        for line in lines(1000):
            warm.send(json.loads(line))
    cluster.block(victim, "all")
    wait_for(lambda: all(cluster.statuses(n)[victim] == "dead" for n in others), 20,
             message="the others see the victim dead")
    cut = Producer("clicks", [cluster[victim].address], producer_id=producer, start=1001,
                   batch=1000, timeout=1.0, give_up=8.0)
    for line in lines(1000, 1000):
        cut.send(json.loads(line))
    with pytest.raises(Exception, match="no acknowledgement"):
        cut.flush()
    assert cut.acked_upto == 1000  # nothing acknowledged while cut off
    cluster.block(victim, [])
    cluster.wait_converged(THREE, timeout=30)
    cut.give_up = 60.0
    assert cut.flush() == 2000
    cut.close()
    counted(cluster, others[0], expected(lines(2000)))


def test_two_producers_interleaved_one_killed_and_restarted_are_exact(
        cluster: Cluster, tmp_path: Path) -> None:
    """Producer a is a `gossipflow send` process SIGKILLed mid-send, then run again; b, a
    Python Producer, sends all the while through the daemons in another order."""
    cluster.start_many(THREE, replicas=2, partitions=64)
    assert submit(cluster, "n0", write(tmp_path, "clicks.py", COUNTS)).returncode == 0
    a_lines, b_lines = lines(60_000), lines(30_000, 60_000)
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(a_lines) + "\n")
    killed = subprocess.Popen(
        [str(Path(sys.executable).with_name("gossipflow")), "send", "clicks", "--file",
         str(path), "--node", cluster["n1"].address, "--batch", "500"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=clean_env(),
        start_new_session=True)
    try:
        with Producer("clicks", [cluster[n].address for n in THREE[::-1]], producer_id="b",
                      batch=700) as b:
            for i, line in enumerate(b_lines):
                b.send(json.loads(line))
                if i == 10_000:
                    wait_for(lambda: sum(table(cluster, "n0", "clicks").values()) > 20_000,
                             60, message="a has sent part of its lines")
                    killed.kill()
    finally:
        killed.kill()
        killed.wait(10)
    assert killed.returncode == -signal.SIGKILL
    again = send(cluster, "n2", path)
    assert again.returncode == 0, again.stderr
    accepted, duplicates = (int(w.split("=")[1]) for w in again.stdout.split())
    assert accepted + duplicates == 60_000 and 0 < duplicates < 60_000
    counted(cluster, "n0", expected(a_lines + b_lines))


def test_bad_input_gets_its_exit_code_and_loses_nothing(cluster: Cluster,
                                                       tmp_path: Path) -> None:
    cluster.start_many(THREE, replicas=2, partitions=64)
    assert submit(cluster, "n0", write(tmp_path, "clicks.py", COUNTS)).returncode == 0
    path = tmp_path / "bad.jsonl"
    good = lines(5)
    path.write_text("\n".join(good) + "\n{not json\n" + lines(1, 5)[0] + "\n")
    bad = send(cluster, "n0", path)
    assert bad.returncode == 1
    assert bad.stdout.split() == ["accepted=5", "duplicates=0"]
    assert "line 6 is not JSON" in bad.stderr and "nothing after it was sent" in bad.stderr
    counted(cluster, "n1", expected(good))
    unknown = subprocess.run(
        [str(Path(sys.executable).with_name("gossipflow")), "send", "views", "--file",
         str(path), "--node", cluster["n0"].address], capture_output=True, text=True,
        timeout=60, cwd=ROOT, env=clean_env(), check=False)
    assert unknown.returncode == 1
    assert "no running flow takes ingest 'views' (ingests of running flows: clicks)" \
        in unknown.stderr
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps({"page": "x" * (1 << 20)}) + "\n")
    refused = send(cluster, "n0", huge, "--producer-id", "huge")
    assert refused.returncode == 1 and "at most 1048576 bytes" in refused.stderr
    nobody = subprocess.run(
        [str(Path(sys.executable).with_name("gossipflow")), "send", "clicks", "--file",
         str(path), "--node", "127.0.0.1:9", "--timeout", "2"], capture_output=True,
        text=True, timeout=60, cwd=ROOT, env=clean_env(), check=False)
    assert nobody.returncode == 2 and "no acknowledgement for 2 s" in nobody.stderr
    counted(cluster, "n1", expected(good))
