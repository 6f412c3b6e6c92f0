"""scripts/chaos, short: 5 daemons, a SIGKILL and restart every ~2 s for 25 s while a
word count (3 M words, in rounds) and an unbounded generator run; every record must
count once. Also: the generator's check sees a lost and a duplicated record.

The script runs as a subprocess in a session of its own: if it overruns, the test
SIGTERMs its process group (the script and the CLI commands it runs); the script
stops its daemons itself (the kernel kills them if it dies) and prints their logs
when a check fails.
"""

from __future__ import annotations

import importlib.util
import re
import runpy
import sys
from pathlib import Path

import pytest
from daemons import run_script

from nodes import load_flow
from nodes.testing import run

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--duration", "12", "--kill-every", "2", "--down-for", "0.5", "--words", "1500000",
        "--seed", "4", "--timeout", "60"]
MIN_KILLS = 3
LIMIT = 240.0
"""Seconds before the test gives up on the script (a normal run takes 40-60 s)."""

pytestmark = pytest.mark.timeout(LIMIT + 30)


@pytest.mark.slow
def test_chaos_short_run_counts_every_record_once() -> None:
    code, output, _ = run_script("chaos.py", ARGS, LIMIT, grace=20)
    assert code == 0, f"scripts/chaos exited {code}:\n{output}"
    kills = re.search(r"^kills: (\d+)", output, re.MULTILINE)
    assert kills, f"no kill count in the output:\n{output}"
    assert int(kills.group(1)) >= MIN_KILLS, output
    assert re.search(r"^records checked: \d+, lost: 0, duplicated: 0$", output,
                     re.MULTILINE), output


def load_chaos():  # scripts/ is not a package
    spec = importlib.util.spec_from_file_location("gossipflow_chaos_script",
                                                  ROOT / "scripts" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(60)
def test_generator_check_sees_a_lost_and_a_duplicated_record(tmp_path: Path) -> None:
    chaos = load_chaos()
    partitions, sample = 8, 3
    stride = partitions * sample
    text = chaos.GENERATE_FLOW.format(name="g", partitions=partitions, sample=sample)
    path = tmp_path / "generate.py"
    path.write_text(text)
    table = run(load_flow(text, str(path)), partitions=partitions,
                limit=stride * 50).table()
    figures = chaos.check_generate(table, partitions, sample)
    assert figures == {"keys": partitions, "records": 50 * partitions, "lost": 0,
                       "duplicated": 0, "inconsistent": 0, "missing": 0, "unexpected": 0}

    namespace = runpy.run_path(str(path))  # the flow's own fold

    def state(indices: list[int]) -> tuple:
        acc = (0, -1, 0, 0, 0)
        for i in indices:
            acc = namespace["fold"](acc, i)
        return acc

    series = [3 + k * stride for k in range(10)]
    cases = {"exact": (series, 0, 0), "lost": (series[:4] + series[5:], 1, 0),
             "lost first": (series[1:], 1, 0), "duplicated": (series[:5] + series, 0, 5),
             "again later": (series + series[3:4], 0, 1)}
    for what, (indices, lost, duplicated) in cases.items():
        figures = chaos.check_generate({"split-0003": state(indices)}, partitions, sample)
        assert (figures["lost"], figures["duplicated"]) == (lost, duplicated), what
        assert figures["inconsistent"] == (1 if lost or duplicated else 0), what
