"""Flows on real daemons (processes on 127.0.0.1, UDP, ZeroMQ, LMDB): exact results.

Every result is compared with plain Python over the same input (``Counter``) or
with ``nodes.testing.run`` of the same flow.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from daemons import (
    STDLIB,
    WORDCOUNT,
    Cluster,
    cli,
    flow_record,
    stdlib_counts,
    submit,
    table,
    wait_for,
    write,
    zmq_requests,
)

from daemon.registry import flow_version
from nodes import load_flow
from nodes.testing import run

pytestmark = pytest.mark.timeout(240)

THREE = ["n0", "n1", "n2"]
def test_stdlib_wordcount_on_three_daemons_is_exact(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_many(THREE)
    result = submit(cluster, "n1", write(tmp_path, "wc.py", WORDCOUNT), "--wait")
    assert result.returncode == 0, result.stderr
    assert "flow wordcount completed" in result.stdout
    expected = stdlib_counts()
    for node in THREE:  # every daemon serves the same answer
        assert table(cluster, node, "wordcount") == expected
    key, count = expected.most_common(1)[0]
    answer = cli("query", "wordcount", key, "--node", cluster["n2"].address)
    assert answer.returncode == 0 and answer.stdout.strip() == str(count)
    # status FLOW: per-stage figures summed over the three daemons
    status = cluster.request("n2", "progress", args={"name": "wordcount"}, timeout=5.0)
    assert status["status"] == "completed" and status["tasks_done"] == status["tasks"] == 512
    stages = status["stages"]
    assert set(stages) == {"0 source", "1 count"}
    assert all(s["done"] == s["tasks"] == 256 and s["unacked"] == 0 for s in stages.values())
    lines = 0
    for path in glob.glob(STDLIB):
        data = Path(path).read_bytes()
        lines += data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    assert stages["0 source"]["records_in"] == lines
    assert stages["1 count"]["records_in"] == stages["0 source"]["records_out"]
    assert stages["1 count"]["records_out"] >= len(expected)

    # the same figures as the CLI prints them, and the member table, the daemon's status
    node = cluster["n2"].address
    shown = cli("status", "wordcount", "--node", node)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.splitlines()
    assert "status: completed" in text and "tasks done: 512 of 512" in text
    rows = {" ".join(line.split()[:2]): line.split()[2:] for line in text
            if re.match(r"\d+ \w+ ", line)}
    assert rows == {stage: [str(f["records_in"]), str(f["records_out"]), "256/256", "0"]
                    for stage, f in stages.items()}
    members = cli("members", "--node", node)
    assert members.returncode == 0, members.stderr
    assert members.stdout.split()[:4] == ["NAME", "ADDRESS", "STATUS", "INCARNATION"]
    table_rows = sorted(line.split()[:3] for line in members.stdout.splitlines()[1:])
    assert table_rows == [[n, cluster[n].address, "alive"] for n in THREE]
    daemon_status = cli("status", "--node", node)
    assert daemon_status.returncode == 0, daemon_status.stderr
    assert daemon_status.stdout.splitlines()[:2] == ["name: n2", f"address: {node}"]
    for name in THREE:  # started without --secret-file: each says so once
        assert cluster[name].log_path.read_text().count("event=insecure") == 1
    # (that a busy daemon is not suspected is tests/test_load.py's, on a heavier flow and
    # with the daemons' own load alone: here the rest of the suite's load may intrude)


def test_wordcount_exact_after_kill_9_and_restart_mid_flow(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    cluster.start_many(THREE)
    result = submit(cluster, "n0", write(tmp_path, "wc.py", WORDCOUNT))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: sum(s["records_in"] for s in flow_record(cluster, "n1", "wordcount")
                         ["local"].values()) > 0, 30, message="n1 is processing")
    assert flow_record(cluster, "n1", "wordcount")["status"] == "running"
    cluster.kill("n1", signal.SIGKILL)
    assert cluster.wait_exit("n1") == -signal.SIGKILL
    time.sleep(0.5)
    cluster.restart("n1")
    wait_for(lambda: flow_record(cluster, "n0", "wordcount")["status"] == "completed", 180,
             interval=0.5, message="the flow completes after the restart")
    expected = stdlib_counts()
    for node in THREE:
        assert table(cluster, node, "wordcount") == expected


@pytest.mark.parametrize("text, message", [
    ("from nodes import Flow\nflow = Flow('x'\n", "bad.py:2: syntax error"),
    ("import no_such_module_here\n", "bad.py:1"),
    ("from nodes import Flow\n", "no Flow"),
    ("from nodes import Flow, sources, sinks\nflow = Flow('x')\n"
     "flow.source(sources.generate(3, str)).count().sink(sinks.table())\n", "key_by"),
    ("from nodes import Flow, sources\nflow = Flow('x')\n"
     "flow.source(sources.generate(3, str)).map(str)\n", "sink"),
])
def test_bad_flows_are_refused_before_reaching_the_cluster(cluster: Cluster, tmp_path: Path,
                                                           text: str, message: str) -> None:
    cluster.start("n0")
    result = submit(cluster, "n0", write(tmp_path, "bad.py", text))
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "nothing was submitted" in result.stderr
    assert cluster.request("n0", "flows") == []


FAILING = '''
from nodes import Flow, sources, sinks

def parse(record):
    if record == "7":
        raise ValueError("cannot parse seven")
    return record

flow = Flow("failing")
(flow.source(sources.generate(20, str))
     .map(parse, name="parse")
     .key_by(lambda r: r)
     .count()
     .sink(sinks.table()))
'''


def test_raising_user_function_fails_the_flow_and_daemons_stay_up(cluster: Cluster,
                                                                  tmp_path: Path) -> None:
    cluster.start_many(THREE)
    result = submit(cluster, "n2", write(tmp_path, "failing.py", FAILING), "--wait")
    assert result.returncode == 1
    for fragment in ("flow failing failed", "step 'parse'", "failing.py:4", "ValueError",
                     "cannot parse seven", "'7'"):
        assert fragment in result.stdout, result.stdout
    for node in THREE:
        assert flow_record(cluster, node, "failing")["status"] == "failed"
    cluster.wait_converged(THREE)
    result = submit(cluster, "n0", write(tmp_path, "wc.py", WORDCOUNT), "--wait")
    assert result.returncode == 0, result.stderr


OPERATORS = '''
from nodes import Flow, sources, sinks

flow = Flow("operators")
numbers = flow.source(sources.generate(5000, lambda i: i), name="numbers")
keyed = numbers.filter(lambda i: i % 7 != 0).key_by(lambda i: str(i % 13))
keyed.count(name="count").sink(sinks.table(), name="counts")
keyed.map_values(lambda i: i * 2).sum(name="sum").sink(sinks.table(), name="sums")
keyed.reduce(max, name="max").sink(sinks.table(), name="maxima")
keyed.fold(lambda: 0, lambda acc, i: acc + 1, name="fold").sink(sinks.table(), name="folds")
(keyed.stateful_map(lambda s, i: ((s or 0) + i, (s or 0) + i), name="running")
      .sink(sinks.table(), name="running_totals"))
words = flow.source(sources.generate(300, lambda i: f"w{i % 11} w{i % 5}"), name="words")
more = flow.source(sources.generate(50, lambda i: f"x{i % 3}"), name="more")
(words.flat_map(str.split).map(str.upper).inspect(lambda w: None).merge(more)
      .key_by(lambda w: w).count(name="wc").sink(sinks.table(), name="word_counts"))
'''


def test_every_keyed_operator_matches_the_local_runner(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_many(THREE, partitions=16)  # 8 stages: 16 partitions keep it quick
    path = write(tmp_path, "operators.py", OPERATORS)
    result = submit(cluster, "n0", path, "--wait")
    assert result.returncode == 0, result.stderr
    local = run(load_flow(OPERATORS, str(path)))
    for sink in ("counts", "sums", "maxima", "folds", "running_totals", "word_counts"):
        expected = local.table(sink)
        assert expected, sink
        assert table(cluster, "n1", "operators", sink) == expected, sink
    # and against plain Python
    kept = [i for i in range(5000) if i % 7]
    assert table(cluster, "n2", "operators", "sums") == {
        str(k): sum(2 * i for i in kept if i % 13 == k) for k in range(13)}


JSONL_TO_FILES = '''
from nodes import Flow, sources, sinks
flow = Flow("sales")
(flow.source(sources.jsonl("sales/*.jsonl"))
     .key_by(lambda sale: sale["shop"])
     .map_values(lambda sale: sale["amount"])
     .sum()
     .sink(sinks.files("out")))
'''


def test_jsonl_source_and_files_sink_on_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_many(THREE)
    (tmp_path / "sales").mkdir()
    expected: Counter = Counter()
    for f in range(3):
        lines = []
        for i in range(2000):
            shop, amount = f"shop{(i * 7 + f) % 23}", (i % 17) + f
            expected[shop] += amount
            lines.append(json.dumps({"shop": shop, "amount": amount}))
        (tmp_path / "sales" / f"day{f}.jsonl").write_text("\n".join(lines) + "\n")
    result = submit(cluster, "n0", write(tmp_path, "sales.py", JSONL_TO_FILES), "--wait")
    assert result.returncode == 0, result.stderr
    latest: dict = {}
    parts = sorted((tmp_path / "out").glob("part-*.jsonl"))
    assert parts
    for part in parts:
        for line in part.read_text().splitlines():
            shop, total = json.loads(line)
            assert total >= latest.get(shop, 0)  # a changelog: totals only grow
            latest[shop] = total
    assert latest == expected
    local = run(load_flow(JSONL_TO_FILES, str(tmp_path / "sales.py")))
    assert {k: v for records in local.files.values() for k, v in records} == expected


PUBLISH = '''
from nodes import Flow, sources, sinks
flow = Flow("squares")
(flow.source(sources.generate(500, lambda i: i))
     .map(lambda i: {"n": i, "square": i * i})
     .sink(sinks.publish()))
'''


def test_publish_sink_is_tailed_through_any_daemon(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_many(THREE)
    result = submit(cluster, "n1", write(tmp_path, "squares.py", PUBLISH), "--wait")
    assert result.returncode == 0, result.stderr
    tailed = cli("tail", "squares", "--from-start", "--count", "500", "--node",
                 cluster["n2"].address, timeout=30)
    assert tailed.returncode == 0, tailed.stderr
    records = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert sorted(records, key=lambda r: r["n"]) == [{"n": i, "square": i * i}
                                                     for i in range(500)]
    local = run(load_flow(PUBLISH, str(tmp_path / "squares.py")))
    assert sorted(r["n"] for r in local.published) == list(range(500))


SMALL_COUNT = """
from nodes import Flow, sources, sinks
flow = Flow("small")
(flow.source(sources.generate(3000, lambda i: "w%d" % (i % 60)))
     .key_by(lambda w: w).count().sink(sinks.table()))
"""


def test_a_query_says_it_is_incomplete_while_a_partitions_only_copy_is_down(
        cluster: Cluster, tmp_path: Path) -> None:
    """With R=1 a dead member's partitions are placed on live members that hold nothing of
    them: the query says which partitions it lacks instead of answering part of the
    table; with the member back, the whole table again."""
    cluster.start_many(THREE, partitions=8, replicas=1)
    result = submit(cluster, "n0", write(tmp_path, "small.py", SMALL_COUNT), "--wait")
    assert result.returncode == 0, result.stderr
    expected = Counter(f"w{i % 60}" for i in range(3000))
    assert table(cluster, "n1", "small") == expected
    placement = cluster.request("n0", "ring")["placement"]
    gone = sorted(p for p, members in enumerate(placement) if members == ["n2"])
    assert gone, placement
    cluster.kill("n2", signal.SIGKILL)
    assert cluster.wait_exit("n2") == -signal.SIGKILL
    wait_for(lambda: cluster.statuses("n0").get("n2") == "dead", 10)
    answer = cli("query", "small", "--node", cluster["n0"].address)
    assert answer.returncode != 0 and answer.stdout == ""
    assert "no member that answered holds partitions" in answer.stderr, answer.stderr
    cluster.restart("n2")
    wait_for(lambda: table(cluster, "n0", "small") == expected, 30,
             message="the whole table once n2 is back")


def runtime_processes(pid: int) -> list[int]:
    """Pids of the processes whose parent is ``pid`` (a daemon's runtime process...)."""
    children = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text()
                                            .rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return children


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_publish_buffer_keeps_the_last_10_000_and_ends_with_its_daemon(
        cluster: Cluster, tmp_path: Path) -> None:
    """A member keeps the last 10 000 records a flow published; kill -9 of the daemon ends
    its runtime process too (no orphan holds the store), and a restart starts empty."""
    cluster.start_many(["n0", "n1"], partitions=1, replicas=1)
    flow = PUBLISH.replace("generate(500,", "generate(15_000,")
    result = submit(cluster, "n0", write(tmp_path, "squares.py", flow), "--wait")
    assert result.returncode == 0, result.stderr
    answer = cluster.request("n1", "tail", timeout=10.0, args={"name": "squares", "cursors": {}})
    assert sorted(record["n"] for _, record in answer["records"]) == list(range(5_000, 15_000))

    publisher = cluster.request("n0", "ring")["placement"][0][0]  # one partition: all of it
    children = runtime_processes(cluster[publisher].pid)
    assert children, "the daemon has its runtime process"
    cluster.kill(publisher, signal.SIGKILL)
    assert cluster.wait_exit(publisher) == -signal.SIGKILL
    wait_for(lambda: not any(map(running, children)), 5,
             message="the runtime processes of the killed daemon exit")

    cluster.restart(publisher)
    cluster.wait_up(publisher)
    wait_for(lambda: flow_record(cluster, publisher, "squares")["status"] == "completed", 10,
             message="the restarted member knows the flow")
    answer = cluster.request(publisher, "tail", timeout=10.0,
                             args={"name": "squares", "cursors": {}})
    assert answer["records"] == [] and not answer["incomplete"]


ENDLESS = """
from nodes import Flow, sources, sinks
flow = Flow("endless")
numbers = flow.source(sources.generate(None, lambda i: i))
numbers.filter(lambda i: i % 1000 == 0).map(str).sink(sinks.publish())
numbers.key_by(lambda i: str(i // 100_000)).count().sink(sinks.table())
"""
"""Unbounded and fast: publishes every 1000th number; its table's counts change with every
commit (a new row every 100 000 numbers)."""


def test_replace_runs_the_new_text_and_cancel_stops_a_flow(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    cluster.start_many(THREE, partitions=16)
    text = "\n".join([
        "from nodes import Flow, sources, sinks",
        "flow = Flow('numbers')",
        "(flow.source(sources.generate(1000, lambda i: i)).key_by(lambda i: str(i % {m}))",
        "     .count().sink(sinks.table()))", ""])
    path = write(tmp_path, "numbers.py", text.format(m=3))
    assert submit(cluster, "n0", path, "--wait").returncode == 0
    assert table(cluster, "n1", "numbers") == {"0": 334, "1": 333, "2": 333}
    first_run = flow_record(cluster, "n1", "numbers")["run"]
    again = submit(cluster, "n1", path, "--wait")  # a new run, from scratch: same result
    assert again.returncode == 0 and table(cluster, "n1", "numbers") == {"0": 334, "1": 333,
                                                                          "2": 333}
    assert flow_record(cluster, "n1", "numbers")["run"] != first_run
    write(tmp_path, "numbers.py", text.format(m=2))
    refused = submit(cluster, "n2", path)
    assert refused.returncode == 2 and "--replace" in refused.stderr
    assert submit(cluster, "n2", path, "--replace", "--wait").returncode == 0
    assert table(cluster, "n0", "numbers") == {"0": 500, "1": 500}
    old = re.escape(f"numbers@{flow_version(text.format(m=3))}.")  # then the run's stamp
    for node in THREE:  # every member held copies of the replaced version: freed
        wait_for(lambda node=node: re.search(rf"event=replaced_version_dropped member={node} "
                                             rf"flow={old}\S+ tasks=[1-9]",
                                             cluster[node].log_path.read_text()), 10,
                 message=f"{node} drops the replaced version's data")

    endless = write(tmp_path, "endless.py", ENDLESS)
    assert submit(cluster, "n0", endless).returncode == 0
    wait_for(lambda: flow_record(cluster, "n2", "endless")["status"] == "running", 10)
    cursors: dict[str, int] = {}

    def published() -> int:
        """Records published since the last call (every member's, through n2)."""
        answer = cluster.request("n2", "tail", timeout=10.0,
                                 args={"name": "endless", "cursors": cursors})
        cursors.update(answer["cursors"])
        return len(answer["records"])

    def rows() -> dict:
        return table(cluster, "n0", "endless")

    # output grows right up to the cancel: new records published, the table changing
    wait_for(lambda: published() > 0 and len(rows()) > 0, 10, message="endless produces")
    last_rows, fresh = rows(), [0]

    def producing() -> bool:
        fresh[0] += published()
        return fresh[0] > 0 and rows() != last_rows

    wait_for(producing, 10, message="endless keeps publishing and changing its table")
    assert cli("cancel", "endless", "--node", cluster["n1"].address).returncode == 0
    wait_for(lambda: all(flow_record(cluster, n, "endless")["status"] == "cancelled"
                         for n in THREE), 10, message="cancelled everywhere")
    # a step under way when the cancel arrived may still commit: once no member runs a
    # partition of it (a member reports that after its last step's output), nothing
    # more may come out of the flow
    endless_id = f"endless@{flow_record(cluster, 'n2', 'endless')['run']}"

    def stopped() -> bool:
        ring = cluster.request("n2", "ring", timeout=10.0)
        return not ring["incomplete"] and endless_id not in ring["flows"]

    wait_for(stopped, 10, message="no member runs a partition of endless")
    published()
    stopped_rows = rows()
    late: list[int] = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        time.sleep(0.25)
        late.append(published())
        assert rows() == stopped_rows, "the table changed after the cancel"
    assert not any(late), f"records published after the cancel: {late}"
    listed = cli("flows", "--json", "--node", cluster["n2"].address)
    assert {f["name"]: f["status"] for f in json.loads(listed.stdout)} == {
        "numbers": "completed", "endless": "cancelled"}


def test_whole_cluster_killed_mid_flow_resumes_exactly(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_many(THREE)
    assert submit(cluster, "n2", write(tmp_path, "wc.py", WORDCOUNT)).returncode == 0
    wait_for(lambda: sum(s["records_in"] for s in flow_record(cluster, "n0", "wordcount")
                         ["local"].values()) > 0, 30, message="n0 is processing")
    assert flow_record(cluster, "n1", "wordcount")["status"] == "running"  # mid-flow
    for node in THREE:
        cluster.kill(node, signal.SIGKILL)
    for node in THREE:
        assert cluster.wait_exit(node) == -signal.SIGKILL
    cluster.restart("n0")
    for node in ("n1", "n2"):
        cluster.restart(node)
    cluster.wait_converged(THREE, timeout=20)
    wait_for(lambda: flow_record(cluster, "n1", "wordcount")["status"] == "completed", 120,
             interval=0.5, message="the flow completes after the whole cluster restarted")
    expected = stdlib_counts()
    for node in THREE:
        assert table(cluster, node, "wordcount") == expected


def test_malformed_shuffle_batches_are_refused_and_counted(cluster: Cluster) -> None:
    from daemon.wire import Codec, MessageType

    cluster.start_many(["n0", "n1"])
    before = cluster.stats("n0").get("dropped_DecodeError", 0)
    bad = [Codec().encode(MessageType.DATA, {"b": [["f@1", 0, 0, "0/0", 1]]}),      # 5 fields
           Codec().encode(MessageType.DATA, {"b": [["f@1", "0", 0, "0/0", 1, b""]]}),  # str stage
           Codec().encode(MessageType.DATA, {"b": ["not a list"]})]
    replies = [Codec().decode(r) for r in zmq_requests(cluster["n0"].address, bad)]
    assert [kind for kind, _ in replies] == [MessageType.ERROR] * 3
    assert all("DATA entries are" in body["error"] for _, body in replies)
    assert cluster.stats("n0").get("dropped_DecodeError", 0) == before + 3
    # a well-formed batch for a flow nobody runs gets "no mark" (the sender would retry)
    unknown = Codec().encode(MessageType.DATA, {"b": [["nope@1", 1, 0, "0/0", 1, b"\x92\xc2\x90"]]})
    kind, body = Codec().decode(zmq_requests(cluster["n0"].address, [unknown])[0])
    assert kind == MessageType.API_REPLY and body["result"] == [None]
    cluster.wait_converged(["n0", "n1"])


def test_a_dead_runtime_process_stops_its_daemon(cluster: Cluster) -> None:
    cluster.start_many(["n0", "n1"])
    parent = cluster["n0"].pid
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    assert len(children) >= 1
    for child in children:  # the runtime process (and multiprocessing's helper, if any)
        os.kill(int(child), signal.SIGKILL)
    assert cluster.wait_exit("n0", timeout=10) == 1
    assert "event=worker_died" in cluster["n0"].log()
    wait_for(lambda: cluster.statuses("n1").get("n0") in ("dead", "left"), 10,
             message="n1 sees n0 gone")
