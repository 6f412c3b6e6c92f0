"""scripts/nemesis, short: 5 daemons in network namespaces of their own, one 3|2 cut, one
SIGSTOP of a primary and one restart with a wiped data dir while a word count and an
unbounded generator run; every record must count once and every flow finish within
60 s of the last heal.

Needs root and ``ip netns`` (the script makes namespaces, a bridge and veths, and
deletes them on exit); skipped otherwise -- CI runs as root, so it runs there. The
script runs as a subprocess in a session of its own: if it overruns, the test SIGTERMs
its process group (the script and the commands it runs); the script then stops its
daemons and deletes its namespaces itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from daemons import run_script

ROOT = Path(__file__).resolve().parent.parent
WORDS = 1_500_000
ARGS = ["--sequence", "cut-3|2,pause,wipe", "--words", str(WORDS), "--seed", "3",
        "--timeout", "60"]
LIMIT = 300.0
"""Seconds before the test gives up on the script (a normal run takes about 30-45 s)."""


def _netns_unavailable() -> str | None:
    """None if this process may create network namespaces (what the script checks too)."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no `ip` command"
    name = f"gfnprobe{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


_WHY = _netns_unavailable()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(LIMIT + 60),
    pytest.mark.skipif(_WHY is not None,
                       reason=f"scripts/nemesis needs root and `ip netns` ({_WHY}); "
                       "the CI runs as root, so it runs there"),
]


def test_nemesis_short_run_cut_pause_wipe_counts_every_record_once() -> None:
    code, output, pid = run_script("nemesis.py", ARGS, LIMIT, grace=30)
    tag = f"gfn{pid}-"
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tag not in left, f"namespaces of the run left behind:\n{left}"
    assert code == 0, f"scripts/nemesis exited {code}:\n{output}"
    for kind in ("cut-3|2", "pause", "wipe"):
        assert re.search(rf"^\[.*\] event \d+: {re.escape(kind)} ", output, re.MULTILINE), \
            f"no {kind} event:\n{output}"
    summary = re.search(r"^summary: events=3 records=(\d+) lost=0 duplicated=0 "
                        r"heal_to_done=([\d.]+)s wall=[\d.]+s ok=1$", output, re.MULTILINE)
    assert summary, f"no passing summary line:\n{output}"
    # every word of the corpus, plus the generator's records checked at the end
    assert int(summary.group(1)) > WORDS and float(summary.group(2)) <= 60.0, output
