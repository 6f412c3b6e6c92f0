"""A busy daemon is not a dead one (issue 15): three daemons run a flow whose map burns
CPU on every record, long enough to keep both cores of this machine busy for about
10 s, while every daemon's member list is polled in parallel: no member may be seen
suspect or dead anywhere, and no daemon may have raised a suspicion.

The runtime process (user code) runs at niceness 10, below the daemon's event loop
that answers probes. ``scripts/test tests/test_load.py`` once runs it once; the README
gives the figures of ten runs in a row.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from daemons import Cluster, flow_record, submit, table, wait_for, write

pytestmark = pytest.mark.timeout(240)

THREE = ["n0", "n1", "n2"]
RECORDS = 30_000
BURN = 0.0007
"""Seconds of CPU per record: 30 000 x 0.7 ms = 21 CPU-seconds, about 10 s of both cores."""
HEAVY = f"""
import time
from nodes import Flow, sources, sinks

def burn(i):
    until = time.process_time() + {BURN}
    while time.process_time() < until:
        pass
    return i

flow = Flow("heavy")
(flow.source(sources.generate({RECORDS}, lambda i: i))
     .map(burn)
     .key_by(lambda i: str(i % 97))
     .count()
     .sink(sinks.table()))
"""


def test_a_cpu_heavy_flow_causes_no_suspicion(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_many(THREE, partitions=16)
    seen: Counter = Counter()  # (observer, member, status) seen not alive
    polls = Counter()
    stop = threading.Event()

    def poll(observer: str) -> None:
        while not stop.is_set():
            try:
                statuses = cluster.statuses(observer, timeout=2.0)
            except Exception as err:  # noqa: BLE001 - an unanswered poll is a finding too
                seen[(observer, "-", f"no answer: {type(err).__name__}")] += 1
            else:
                polls[observer] += 1
                for member, status in statuses.items():
                    if status != "alive":
                        seen[(observer, member, status)] += 1
            time.sleep(0.05)

    pollers = [threading.Thread(target=poll, args=(n,), daemon=True) for n in THREE]
    for thread in pollers:
        thread.start()
    started = time.monotonic()
    try:
        assert submit(cluster, "n0", write(tmp_path, "heavy.py", HEAVY)).returncode == 0
        wait_for(lambda: flow_record(cluster, "n0", "heavy")["status"] == "completed", 200,
                 interval=0.5, message="the CPU-heavy flow completes")
    finally:
        stop.set()
        for thread in pollers:
            thread.join(5)
    took = time.monotonic() - started
    assert took > 10, f"the flow took {took:.1f} s: too little load to mean anything"
    assert all(polls[n] > 50 for n in THREE), polls
    assert not seen, f"members seen not alive while the flow ran: {dict(seen)}"
    assert {n: cluster.stats(n).get("suspicions", 0) for n in THREE} == dict.fromkeys(THREE, 0)
    expected = Counter(str(i % 97) for i in range(RECORDS))
    assert table(cluster, "n1", "heavy") == dict(expected)
