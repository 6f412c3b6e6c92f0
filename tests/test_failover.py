"""Replication and failover on real daemons: kill them, lose nothing, count nothing twice.

Every daemon is a real process on 127.0.0.1 (UDP, ZeroMQ, LMDB); results are
compared with ``Counter`` over the same files. Daemons are killed with SIGKILL
mid-flow and, unlike in test_flows_cluster, the flow finishes *without* them:
their partitions move to the survivors, which hold copies of their commits.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from daemons import (
    WORDCOUNT,
    Cluster,
    cli,
    flow_record,
    stdlib_counts,
    submit,
    table,
    wait_for,
    write,
)

from daemon.ingest import producer_partition
from daemon.placement import place
from daemon.producer import Producer
from nodes.plan import partition_of

pytestmark = pytest.mark.timeout(300)

THREE = ["n0", "n1", "n2"]

P = 64
"""Partitions of the clusters running STRIDES: fewer sources, so each gets its turn
often (a generate source reads 50 000 records a step)."""
STRIDES = f"""
from nodes import Flow, sources, sinks
flow = Flow("forever")
(flow.source(sources.generate(None, lambda i: i))
     .key_by(lambda i: str(i % {P}))
     .fold((0, 0), lambda acc, i: (acc[0] + 1, acc[1] + i))
     .sink(sinks.table()))
"""
"""Unbounded: split k of the P yields k, k + P, k + 2P, ... in order, all with key "k", so
at every commit key "k"'s (count c, sum) covers a prefix: sum = c k + P c (c - 1) / 2.
A lost record breaks the sum, a duplicated one the count and the sum."""


def check_strides(rows: dict) -> None:
    assert set(rows) == {str(k) for k in range(P)}
    wrong = {k: (c, total) for k, (c, total) in rows.items()
             if c < 1 or total != c * int(k) + P * c * (c - 1) // 2}
    assert not wrong, f"keys whose records were lost or counted twice: {wrong}"


def running(cluster: Cluster, node: str) -> dict[int, dict[str, dict]]:
    """Partition -> {member: state} of the one running flow, from ``ring`` on ``node``."""
    flows = cluster.request(node, "ring", timeout=10.0)["flows"]
    assert len(flows) <= 1, flows
    parts = next(iter(flows.values()), {})
    return {int(p): members for p, members in parts.items()}


def took_over(cluster: Cluster, node: str, partition: int) -> list[int]:
    """Epochs at which ``node`` started running ``partition`` (from its log)."""
    found = re.findall(rf"event=partition_active member={node} flow=\S+ "
                       rf"partition={partition} epoch=(\d+)", cluster[node].log_path.read_text())
    return [int(e) for e in found]


def handed_over(cluster: Cluster, nodes: list[str], to: str, since: dict[str, int]) -> set[int]:
    """Partitions ``nodes`` handed over to ``to`` (copied, then stepped down) in their
    logs past ``since`` (node -> offset); none may have timed out."""
    found: set[int] = set()
    for node in nodes:
        text = cluster[node].log_path.read_text()[since.get(node, 0):]
        assert "event=handover_timeout" not in text, cluster[node].log_tail()
        found |= {int(p) for p, learners in re.findall(
            r"event=handover_done member=\S+ flow=\S+ partition=(\d+) to=(\S+)", text)
            if to in learners.split(",")}
    return found


def log_sizes(cluster: Cluster, nodes: list[str]) -> dict[str, int]:
    return {node: len(cluster[node].log_path.read_text()) for node in nodes}


def processing(cluster: Cluster, node: str) -> bool:
    record = flow_record(cluster, node, "wordcount")
    return record["status"] == "running" and sum(
        s["records_in"] for s in record["local"].values()) > 0


def finish_and_check(cluster: Cluster, nodes: list[str]) -> None:
    wait_for(lambda: flow_record(cluster, nodes[0], "wordcount")["status"] == "completed", 240,
             interval=0.5, message="the flow completes on the survivors")
    expected = stdlib_counts()
    for node in nodes:
        assert table(cluster, node, "wordcount") == expected


def test_killing_the_primary_of_partition_0_loses_nothing(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    cluster.start_many(THREE, replicas=2)
    victim = cluster.request("n0", "ring")["placement"][0][0]
    survivors = [n for n in THREE if n != victim]
    assert submit(cluster, survivors[0], write(tmp_path, "wc.py", WORDCOUNT)).returncode == 0
    wait_for(lambda: processing(cluster, victim), 30, message=f"{victim} is processing")
    cluster.kill(victim, signal.SIGKILL)
    assert cluster.wait_exit(victim) == -signal.SIGKILL
    finish_and_check(cluster, survivors)
    # partition 0 went to a survivor, at a higher epoch than the victim's
    victim_epochs = took_over(cluster, victim, 0)
    survivor_epochs = [e for n in survivors for e in took_over(cluster, n, 0)]
    assert victim_epochs and survivor_epochs and max(survivor_epochs) > max(victim_epochs)


def test_any_two_of_five_killed_at_once_with_three_replicas(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    five = [f"n{i}" for i in range(5)]
    cluster.start_many(five, replicas=3)
    assert submit(cluster, "n0", write(tmp_path, "wc.py", WORDCOUNT)).returncode == 0
    wait_for(lambda: processing(cluster, "n3") and processing(cluster, "n4"), 30,
             message="n3 and n4 are processing")
    for node in ("n3", "n4"):
        cluster.kill(node, signal.SIGKILL)
    for node in ("n3", "n4"):
        assert cluster.wait_exit(node) == -signal.SIGKILL
    finish_and_check(cluster, five[:3])


WORDS = """
from nodes import Flow, sources, sinks
flow = Flow("words")
flow.source(sources.ingest("words")).key_by(lambda w: w).count().sink(sinks.table())
"""
"""Unbounded: counts the words producers send, so it runs until cancelled."""


def words(start: int, n: int) -> list[str]:
    return [f"w{(i * 7919) % 4099}" for i in range(start, start + n)]


def stage_figures(cluster: Cluster, node: str, name: str) -> dict[str, dict[str, int]]:
    """``node``'s own per-stage figures of flow ``name``, by operator ("source", "count")."""
    local = flow_record(cluster, node, name)["local"]
    return {stage.split(" ", 1)[1]: figures for stage, figures in local.items()}


def test_a_member_added_mid_flow_takes_partitions_and_the_result_is_exact(
        cluster: Cluster, tmp_path: Path) -> None:
    """A word count over an ingest runs on three members (R=2) while a producer keeps
    sending; a fourth joins and takes over the partitions placement gives it (among them
    the producer's) while records still arrive. Records sent once it runs them go
    through it alone: its own figures show it applied and counted them; every record
    counts once."""
    cluster.start_many(THREE, replicas=2)
    partitions = cluster.request("n0", "ring")["partitions"]
    after_join = place([*THREE, "n3"], partitions, 2)
    producer_id = next(f"words-{i}" for i in range(1000)  # its ingest partition moves to n3
                       if after_join[producer_partition(f"words-{i}", partitions)][0] == "n3")
    assert submit(cluster, "n0", write(tmp_path, "words.py", WORDS)).returncode == 0
    producer = Producer("words", [cluster[n].address for n in THREE], producer_id=producer_id,
                        batch=500)
    sent: list[str] = []
    stop, failed = threading.Event(), []

    def keep_sending() -> None:  # all through the join and the handover
        try:
            while not stop.is_set():
                chunk = words(len(sent), 500)
                for word in chunk:
                    producer.send(word)
                producer.flush()
                sent.extend(chunk)
                time.sleep(0.05)
        except Exception as err:  # noqa: BLE001 (re-raised in the test's thread)
            failed.append(err)

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    try:
        wait_for(lambda: sum(table(cluster, "n1", "words").values()) >= 2000, 30,
                 message="the first records are counted")
        cluster.start("n3", join=["n0"], replicas=2)
        cluster.wait_converged([*THREE, "n3"])
        placement = cluster.request("n0", "ring")["placement"]
        assert placement == after_join
        theirs = {p for p, replicas in enumerate(placement) if replicas[0] == "n3"}
        assert theirs  # placement gives the new member partitions
        wait_for(lambda: {p for p, members in running(cluster, "n0").items()
                          if members.get("n3", {}).get("state") == "active"} == theirs,
                 60, message="n3 runs the partitions placement gives it")
        assert flow_record(cluster, "n3", "words")["status"] == "running"
        assert not failed, failed
    finally:
        stop.set()
        sender.join(60)
    assert not sender.is_alive() and not failed, failed
    assert len(sent) >= 2000
    before = stage_figures(cluster, "n3", "words")
    last = words(len(sent), 5000)  # sent once n3 runs its partitions: n3 alone takes them
    for word in last:
        producer.send(word)
    producer.flush()
    producer.close()
    sent.extend(last)
    expected = Counter(sent)
    wait_for(lambda: table(cluster, "n0", "words") == expected, 60, interval=0.2,
             message="the table counts every record sent once")
    for node in [*THREE, "n3"]:
        assert table(cluster, node, "words") == expected
    # n3 ran its partitions: it applied the producer's records (its ingest partition
    # is n3's) and counted the words of its partitions: the count gets (word, partial
    # count) per batch, so at least one per word. Its figures reach the daemon every
    # 0.3 s: they may lag the table a moment.
    mine = len({word for word in last if partition_of(word, partitions) in theirs})
    assert mine > 0

    def grown() -> dict[str, int]:
        return {stage: figures["records_in"] - before.get(stage, {}).get("records_in", 0)
                for stage, figures in stage_figures(cluster, "n3", "words").items()}

    deadline = time.monotonic() + 5.0
    while (grew := grown()).get("source", 0) < len(last) or grew.get("count", 0) < mine:
        if time.monotonic() > deadline:
            raise AssertionError(f"n3 did not apply the last {len(last)} records and count "
                                 f"the {mine} words of its partitions: records_in grew by "
                                 f"{grew}")
        time.sleep(0.1)
    assert {p for p, members in running(cluster, "n0").items()
            if members.get("n3", {}).get("state") == "active"} == theirs


@pytest.mark.parametrize("replicas", [2, 1])
def test_a_member_joining_gets_its_partitions_copied_in_the_background(
        cluster: Cluster, tmp_path: Path, replicas: int) -> None:
    """A fourth member joins an unbounded flow: the primaries copy it the partitions
    placement gives it while they keep running them, then step down; it takes them
    over finding its copies current (no catch-up), and nothing is lost or doubled.
    With one replica too: then the copy is the only way the data moves."""
    cluster.start_many(THREE, replicas=replicas, partitions=P)
    assert submit(cluster, "n0", write(tmp_path, "forever.py", STRIDES)).returncode == 0
    wait_for(lambda: len(cluster.request("n1", "query", timeout=10.0,
                                         args={"name": "forever"})) == P,
             30, message="every split has produced records")
    since = log_sizes(cluster, THREE)
    cluster.start("n3", join=["n0"], replicas=replicas, partitions=P)
    cluster.wait_converged([*THREE, "n3"])
    theirs = {p for p, r in enumerate(cluster.request("n0", "ring")["placement"])
              if r[0] == "n3"}
    assert theirs
    seen: set[tuple[str, str]] = set()  # (member, state) of the moves ring showed

    def n3_runs_its_partitions() -> bool:
        parts = running(cluster, "n0")
        for members in parts.values():
            for member, state in members.items():
                if state["state"] == "handing over":  # to whom, and copying or draining
                    assert state["to"] and isinstance(state["copying"], bool), state
                seen.add((member, state["state"]))
        return {p for p, members in parts.items()
                if members.get("n3", {}).get("state") == "active"} == theirs

    wait_for(n3_runs_its_partitions, 30, interval=0.01,
             message="n3 runs the partitions placement gives it")
    # ring showed the moves while they happened: the primaries copying, n3 waiting
    assert any(state == "handing over" for _, state in seen), seen
    assert ("n3", "awaiting copy") in seen, seen
    assert theirs <= handed_over(cluster, THREE, "n3", since)
    assert "event=catch_up" not in cluster["n3"].log_path.read_text()
    assert "event=takeover_deferred" in cluster["n3"].log_path.read_text()
    shown = cli("ring", "--node", cluster["n0"].address)
    assert shown.returncode == 0, shown.stderr
    header = next(line for line in shown.stdout.splitlines() if line.startswith("MEMBER")
                  and "HANDING OVER" in line)
    assert header.split()[:2] == ["MEMBER", "RUNNING"]
    rows = {line.split()[0]: line.split() for line in shown.stdout.splitlines()
            if line.split()[:1] == ["n3"] and len(line.split()) == 6}
    assert int(rows["n3"][1]) == len(theirs)  # running its partitions, none moving
    cluster.request("n0", "cancel", args={"name": "forever"})
    wait_for(lambda: flow_record(cluster, "n0", "forever")["status"] == "cancelled", 10)
    check_strides(dict(cluster.request("n3", "query", timeout=10.0, args={"name": "forever"})))


def test_a_restarted_member_catches_up_and_gets_its_partitions_back(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_many(THREE, replicas=2, partitions=P)
    flow = write(tmp_path, "forever.py", STRIDES)
    assert submit(cluster, "n0", flow).returncode == 0
    mine = {p for p, r in enumerate(cluster.request("n0", "ring")["placement"]) if r[0] == "n2"}

    def active_on(member: str) -> set[int]:
        return {p for p, members in running(cluster, "n0").items()
                if members.get(member, {}).get("state") == "active"}

    wait_for(lambda: active_on("n2") == mine, 30, message="n2 runs its partitions")
    cluster.kill("n2", signal.SIGKILL)
    assert cluster.wait_exit("n2") == -signal.SIGKILL
    wait_for(lambda: not active_on("n2") and len(active_on("n0") | active_on("n1")) == P, 30,
             message="the survivors run every partition")
    since = log_sizes(cluster, THREE)
    cluster.restart("n2")
    cluster.wait_converged(THREE)
    wait_for(lambda: active_on("n2") == mine, 60, message="n2 gets its partitions back")
    # copied back to it while the others ran them, not fetched in its takeover
    assert mine <= handed_over(cluster, ["n0", "n1"], "n2", since)
    assert "event=catch_up" not in cluster["n2"].log_path.read_text()[since["n2"]:]
    wait_for(lambda: len(cluster.request("n1", "query", timeout=10.0,
                                         args={"name": "forever"})) == P,
             30, message="every split has produced records")
    cluster.request("n0", "cancel", args={"name": "forever"})
    wait_for(lambda: flow_record(cluster, "n0", "forever")["status"] == "cancelled", 10)
    check_strides(dict(cluster.request("n1", "query", timeout=10.0, args={"name": "forever"})))


def test_an_isolated_primary_stops_and_its_partitions_move_without_double_counting(
        cluster: Cluster, tmp_path: Path) -> None:
    """The primary of partition 0 is cut off from every peer (the transport's fault
    switch), not killed: its sources keep producing, but it sees no majority, so it
    steps down and commits nothing durable; the others take its partitions over at a
    higher epoch. After healing it catches up from their copies and gets its
    partitions back; every key is still an exact prefix of its records."""
    for i, name in enumerate(THREE):
        cluster.start(name, join=THREE[:1] if i else (), replicas=2, partitions=P,
                      fault_injection=True)
    cluster.wait_converged(THREE)
    assert submit(cluster, "n0", write(tmp_path, "forever.py", STRIDES)).returncode == 0
    victim = cluster.request("n0", "ring")["placement"][0][0]
    others = [n for n in THREE if n != victim]
    wait_for(lambda: len(cluster.request(others[0], "query", timeout=10.0,
                                         args={"name": "forever"})) == P,
             60, message="every split has produced records")
    before = max(took_over(cluster, victim, 0))

    cluster.block(victim, "all")
    wait_for(lambda: all(cluster.statuses(n)[victim] == "dead" for n in others)
             and all(cluster.statuses(victim)[n] == "dead" for n in others), 20,
             message="the cut shows on both sides")
    wait_for(lambda: max((e for n in others for e in took_over(cluster, n, 0)), default=0)
             > before, 20, message="a survivor took partition 0 over at a higher epoch")
    wait_for(lambda: re.search(rf"event=step_down member={victim} flow=\S+ partition=0 ",
                               cluster[victim].log_path.read_text()), 20,
             message="the cut-off primary stepped down")

    cluster.block(victim, [])
    cluster.wait_converged(THREE, timeout=30)
    wait_for(lambda: max(took_over(cluster, victim, 0))
             > max(e for n in others for e in took_over(cluster, n, 0)), 60,
             message="the healed member takes partition 0 back at a newer epoch still")
    cluster.request(others[0], "cancel", args={"name": "forever"})
    wait_for(lambda: flow_record(cluster, victim, "forever")["status"] == "cancelled", 10)
    check_strides(dict(cluster.request(victim, "query", timeout=10.0, args={"name": "forever"})))


def test_two_daemons_that_lose_one_carry_on_once_it_is_forgotten(
        cluster: Cluster, tmp_path: Path) -> None:
    """n0 and n1 (R=2) run a word count; n1 is killed for good. n0 alone is no majority
    of the flow's voters {n0, n1}, so it runs nothing (it cannot tell a dead n1 from a
    cut-off one). ``gossipflow forget n1`` removes n1's vote: n0 takes every partition
    over and the flow completes with the exact result. Forgetting a live member or the
    member asked is refused."""
    two = ["n0", "n1"]
    cluster.start_many(two, replicas=2)
    refused = cli("forget", "n1", "--node", cluster["n0"].address)
    assert refused.returncode != 0 and "n1 is alive" in refused.stderr, refused.stderr
    refused = cli("forget", "n0", "--node", cluster["n0"].address)
    assert refused.returncode != 0 and "member you asked" in refused.stderr, refused.stderr
    assert submit(cluster, "n0", write(tmp_path, "wc.py", WORDCOUNT)).returncode == 0
    wait_for(lambda: processing(cluster, "n1"), 30, message="n1 is processing")
    cluster.kill("n1", signal.SIGKILL)
    assert cluster.wait_exit("n1") == -signal.SIGKILL
    wait_for(lambda: cluster.statuses("n0")["n1"] == "dead", 10, message="n1 is seen dead")
    wait_for(lambda: not running(cluster, "n0"), 10, message="n0 alone runs nothing")
    assert flow_record(cluster, "n0", "wordcount")["status"] == "running"
    forgot = cli("forget", "n1", "--node", cluster["n0"].address)
    assert forgot.returncode == 0 and forgot.stdout.strip() == "forgotten: n1", forgot.stderr
    finish_and_check(cluster, ["n0"])


MANY_KEYS = 200_000
FILL = f"""
from nodes import Flow, sources, sinks
flow = Flow("fill")
(flow.source(sources.generate({MANY_KEYS}, lambda i: i))
     .key_by(lambda i: "key-%07d" % i)
     .count()
     .sink(sinks.table()))
"""


def test_a_full_disk_pauses_the_flow_until_space_is_freed(cluster: Cluster,
                                                         tmp_path: Path) -> None:
    """One daemon whose data dir is a 48 MiB tmpfs, most of it taken by a filler file:
    a flow that writes more than is left finds the disk full. It pauses (its commits
    abort, the store stays intact, the flow stays running) and resumes once the filler
    is deleted; the result is exact."""
    mount = tmp_path / "n0"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
                             check=False, capture_output=True, text=True)
    assert mounted.returncode == 0, f"mounting a tmpfs needs root: {mounted.stderr}"
    try:
        filler = mount / "filler"
        filler.write_bytes(b"\0" * (40 << 20))
        cluster.start_many(["n0"], replicas=1, partitions=8)
        assert submit(cluster, "n0", write(tmp_path, "fill.py", FILL)).returncode == 0
        wait_for(lambda: "event=disk_full" in cluster["n0"].log(), 120, interval=0.2,
                 message="the flow finds the disk full")
        assert flow_record(cluster, "n0", "fill")["status"] == "running"
        filler.unlink()
        wait_for(lambda: flow_record(cluster, "n0", "fill")["status"] == "completed", 120,
                 interval=0.5, message="the flow resumes and completes once space is free")
        rows = table(cluster, "n0", "fill")
        assert rows == {"key-%07d" % i: 1 for i in range(MANY_KEYS)}
    finally:
        cluster.close()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_churn_leaves_each_member_holding_its_share(cluster: Cluster, tmp_path: Path) -> None:
    """Four members (R=2, 16 partitions) run an unbounded flow; each in turn is killed
    and restarted. While one is down its partitions get new replica sets, copied to
    members that hand them back when it returns. Those copies are dropped once a
    newer set holds the partition: every member then holds at most 1.5x its share of
    the tasks' copies (2 stages x 16 partitions x R / 4 = 16), where keeping every copy
    drifts toward all 32; and the result stays exact."""
    four, partitions = ["n0", "n1", "n2", "n3"], 16
    cluster.start_many(four, replicas=2, partitions=partitions)
    flow = STRIDES.replace(f"% {P}", f"% {partitions}")
    assert submit(cluster, "n0", write(tmp_path, "forever.py", flow)).returncode == 0

    def settled() -> bool:
        placement = cluster.request("n0", "ring")["placement"]
        parts = running(cluster, "n0")
        return all(parts.get(p, {}).get(r[0], {}).get("state") == "active"
                   for p, r in enumerate(placement))

    wait_for(settled, 60, interval=0.2, message="every partition runs on its primary")
    for victim in four[1:]:
        cluster.kill(victim, signal.SIGKILL)
        assert cluster.wait_exit(victim) == -signal.SIGKILL
        wait_for(lambda v=victim: cluster.statuses("n0")[v] == "dead", 10)
        wait_for(settled, 60, interval=0.2, message=f"the others run {victim}'s partitions")
        cluster.restart(victim)
        cluster.wait_converged(four, timeout=30)
        wait_for(settled, 90, interval=0.2, message=f"{victim} gets its partitions back")
    share = 2 * partitions * 2 // len(four)

    def held() -> dict[str, int]:
        return {n: cluster.request(n, "usage", timeout=10.0).get(flow_id_of(cluster), {})
                .get("tasks", 0) for n in four}

    # tasks with data: every source (one split each) and the folds of partitions with keys
    with_data = partitions + len({partition_of(str(k), partitions) for k in range(partitions)})
    wait_for(lambda: max(held().values()) <= 1.5 * share and sum(held().values()) == 2 * with_data,
             30, interval=1.0, message=f"every member holds at most 1.5 x {share} copies and "
             f"every task with data R=2: {held()}")
    assert any("event=stale_copies_dropped" in cluster[n].log() for n in four)
    cluster.request("n0", "cancel", args={"name": "forever"})
    wait_for(lambda: flow_record(cluster, "n0", "forever")["status"] == "cancelled", 10)
    rows = dict(cluster.request("n1", "query", timeout=10.0, args={"name": "forever"}))
    assert set(rows) == {str(k) for k in range(partitions)}
    assert all(total == c * int(k) + partitions * c * (c - 1) // 2
               for k, (c, total) in rows.items()), rows


def flow_id_of(cluster: Cluster, name: str = "forever", node: str = "n0") -> str:
    record = flow_record(cluster, node, name)
    return f"{name}@{record['run']}"


BIG_KEYS = 200_000
BIG = f"""
import time
from nodes import Flow, sources, sinks
K, PAD = {BIG_KEYS}, "x" * 1000

def slow(i):
    if i >= K:  # every key written once: from then on, a trickle of updates
        time.sleep(0.002)
    return i

flow = Flow("big")
(flow.source(sources.generate(None, slow))
     .key_by(lambda i: "k%06d" % (i % K))
     .fold((0, -1, ""), lambda acc, i: (acc[0] + 1, i, PAD))
     .sink(sinks.table()))
"""
"""One partition holding over 200 MB: 200 000 keys of about 1 KB each. Key k gets k,
k + K, k + 2K... in order, so (count c, last i) must satisfy i = k + K (c - 1)."""


def test_a_partition_of_200_mb_is_copied_to_a_joining_member_while_it_runs(
        cluster: Cluster, tmp_path: Path) -> None:
    """One partition (P=1, R=2) holds over 200 MB of state; a member joins whose
    placement includes it: the running primary copies it over chunk by chunk while
    the flow goes on (before, the copy travelled in one message with a 3 s deadline
    and never arrived), the new member ends with the whole state, nothing is lost."""
    cluster.start_many(["n0", "n1"], replicas=2, partitions=1)
    assert submit(cluster, "n0", write(tmp_path, "big.py", BIG)).returncode == 0

    def stored(node: str) -> int:
        return cluster.request(node, "usage", timeout=20.0).get(flow_id_of(cluster, "big"),
                                                                  {}).get("bytes", 0)

    wait_for(lambda: min(stored("n0"), stored("n1")) > 200 << 20, 180, interval=1.0,
             message="the partition holds over 200 MB on both replicas")
    joiner = next(name for name in (f"j{i}" for i in range(100))
                  if name in place(["n0", "n1", name], 1, 2)[0])
    since = log_sizes(cluster, ["n0", "n1"])
    cluster.start(joiner, join=["n0"], replicas=2, partitions=1)
    cluster.wait_converged(["n0", "n1", joiner], timeout=30)
    wait_for(lambda: handed_over(cluster, ["n0", "n1"], joiner, since) == {0}, 180,
             interval=1.0, message=f"the partition is copied and handed over to {joiner}")
    assert stored(joiner) > 200 << 20
    cluster.request("n0", "cancel", args={"name": "big"})
    wait_for(lambda: flow_record(cluster, "n0", "big")["status"] == "cancelled", 10)
    rows = dict(cluster.request(joiner, "query", timeout=60.0, args={"name": "big"}))
    assert len(rows) == BIG_KEYS
    wrong = {k: v[:2] for k, v in rows.items()
             if v[0] < 1 or v[1] != int(k[1:]) + BIG_KEYS * (v[0] - 1)}
    assert not wrong, f"keys whose records were lost or counted twice: {list(wrong.items())[:5]}"


def test_a_completed_flow_outlives_every_member_losing_its_data_in_turn(
        cluster: Cluster, tmp_path: Path) -> None:
    """A word count completes on three daemons (R=2); then each daemon in turn is killed,
    its data dir wiped, and restarted. A completed flow stays placed, so its partitions
    are copied back to R members before the next loss: every copy that existed at the
    end has been wiped, and the table is still exact on every member."""
    import shutil

    cluster.start_many(THREE, replicas=2, partitions=16)
    assert submit(cluster, "n0", write(tmp_path, "wc.py", WORDCOUNT), "--wait").returncode == 0

    def settled() -> bool:
        placement = cluster.request("n0", "ring")["placement"]
        parts = running(cluster, "n0")
        return all({m for m, s in parts.get(p, {}).items() if s["state"] == "active"} == {r[0]}
                   and parts[p][r[0]]["replicas"] == r[1:] for p, r in enumerate(placement))

    def copies() -> dict[str, int]:
        return {n: cluster.request(n, "usage", timeout=10.0).get(flow_id_of(cluster, "wordcount"),
                                                                   {}).get("tasks", 0)
                for n in THREE}

    wait_for(settled, 60, interval=0.2, message="every partition placed and replicated")
    total = sum(copies().values())  # R copies of every task with data
    assert total > 0
    for victim in THREE:
        wait_for(lambda: settled() and sum(copies().values()) == total, 60, interval=0.5,
                 message=f"every task has R copies again: {copies()}")
        cluster.kill(victim, signal.SIGKILL)
        assert cluster.wait_exit(victim) == -signal.SIGKILL
        shutil.rmtree(cluster[victim].data_dir)
        cluster.restart(victim)
        cluster.wait_converged(THREE, timeout=30)
    wait_for(lambda: settled() and sum(copies().values()) == total, 60, interval=0.5,
             message=f"every task has R copies again: {copies()}")
    expected = stdlib_counts()
    assert flow_record(cluster, "n2", "wordcount")["status"] == "completed"
    for node in THREE:
        assert table(cluster, node, "wordcount") == expected
