"""Flow files: load_flow as the daemon runs it, run_file, and scripts/flows/wordcount.py."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from nodes import Flow, FlowError, load_flow
from nodes.testing import run, run_file

WORDCOUNT = Path(__file__).resolve().parents[1] / "scripts" / "flows" / "wordcount.py"
HEADER = "from nodes import Flow, sources, sinks\n"


def make_corpus(directory: Path, seed: int) -> Counter:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(300)] + ["naïve", "日本語", "x"]
    directory.mkdir()
    expected: Counter = Counter()
    for f in range(3):
        lines = [" ".join(rng.choices(vocab, k=rng.randint(0, 12))) for _ in range(400)]
        text = "\n".join(lines) + ("\n" if f != 1 else "")  # one file without a final newline
        (directory / f"{f}.txt").write_text(text, encoding="utf-8")
        expected.update(text.split())
    (directory / "notes.md").write_text("not matched by *.txt")
    return expected


@pytest.mark.parametrize("partitions, batch_size", [(1, 1000), (3, 7), (8, 1), (8, 1000)])
def test_wordcount_script_equals_counter(tmp_path, partitions, batch_size):
    shutil.copy(WORDCOUNT, tmp_path / "wordcount.py")
    expected = make_corpus(tmp_path / "corpus", seed=partitions * 31 + batch_size)
    result = run_file(tmp_path / "wordcount.py", partitions=partitions, batch_size=batch_size)
    assert result.table() == expected


def test_wordcount_script_is_the_documented_flow():
    text = WORDCOUNT.read_text()
    assert 'sources.files("corpus/*.txt")' in text and ".key_by(lambda w: w)" in text
    flow = load_flow(text, str(WORDCOUNT))
    assert flow.name == "wordcount" and flow.base_dir == WORDCOUNT.parent


def test_load_flow_resolves_paths_next_to_the_file_not_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "data.txt").write_text("b a b\n")
    text = HEADER + ('flow = Flow("rel")\n'
                     'flow.source(sources.files("data.txt")).flat_map(str.split)'
                     '.key_by(lambda w: w).count().sink(sinks.table())\n')
    monkeypatch.chdir("/")
    flow = load_flow(text, str(tmp_path / "rel.py"))
    assert run(flow).table() == {"a": 1, "b": 2}


def test_base_dir_can_be_overridden(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "d.txt").write_text("q\n")
    text = HEADER + (f'flow = Flow("o", base_dir={str(tmp_path / "in")!r})\n'
                     'flow.source(sources.files("*.txt")).sink(sinks.publish())\n')
    assert run(load_flow(text, "/elsewhere/o.py")).published == ["q"]
    flow = Flow("late")
    flow.base_dir = tmp_path
    from nodes import sinks, sources
    flow.source(sources.files("in/*.txt")).sink(sinks.publish())
    assert run(flow).published == ["q"]


def test_flow_created_in_a_module_defaults_base_dir_to_its_directory():
    assert Flow("here").base_dir == Path(__file__).resolve().parent


@pytest.mark.parametrize("body, line, message", [
    ("flow = Flow('x')\nflow.source(\n", 3, "syntax error"),
    ("import not_a_module_anywhere\n", 2, "import failed: ModuleNotFoundError"),
    ("flow = Flow('x')\n\nx = 1 / 0\n", 4, "error while loading the flow: ZeroDivisionError"),
    ("def f():\n    raise KeyError('k')\nf()\n", 3, "KeyError"),
    ("import sys\nsys.exit(3)\n", 3, "SystemExit"),
])
def test_load_errors_name_file_and_line(body, line, message):
    with pytest.raises(FlowError) as err:
        load_flow(HEADER + body, "/flows/bad.py")
    assert str(err.value).startswith(f"/flows/bad.py:{line}: ")
    assert message in str(err.value)
    assert err.value.where == f"/flows/bad.py:{line}"


def test_no_flow_and_two_flows():
    with pytest.raises(FlowError, match=r"/f\.py: defines no Flow at module level"):
        load_flow(HEADER + "x = 1\n", "/f.py")
    two = HEADER + "a = Flow('a')\nb = Flow('b')\nc = a\n"
    with pytest.raises(FlowError, match=r"defines 2 flows at module level \('a' \(created at "
                                        r"/f\.py:2\), 'b' \(created at /f\.py:3\)\)"):
        load_flow(two, "/f.py")


def test_invalid_flow_names_the_step_line_in_the_file():
    text = HEADER + ("flow = Flow('x')\n"
                     "s = flow.source(sources.generate(3, str))\n"
                     "s.sink(sinks.publish())\n"
                     "s.map(len, name='lost')\n")
    with pytest.raises(FlowError, match=r"after 'lost' \(map at /f\.py:5\)"):
        load_flow(text, "/f.py")
    bad_key = HEADER + "flow = Flow('x')\nflow.source(sources.generate(3, str)).count()\n"
    with pytest.raises(FlowError, match=r"count\(\) at /f\.py:3 needs a keyed stream"):
        load_flow(bad_key, "/f.py")


def test_runtime_errors_quote_the_flow_files_source_line(tmp_path):
    path = tmp_path / "flow.py"
    path.write_text(HEADER + "flow = Flow('x')\n"
                    "(flow.source(sources.generate(3, lambda i: i))\n"
                    "     .key_by(lambda i: i)\n"
                    "     .count().sink(sinks.table()))\n")
    with pytest.raises(FlowError) as err:
        run_file(path)
    message = str(err.value)
    assert "step 'key_by' (key_by, declared at" in message and "flow.py:4" in message
    assert "(`.key_by(lambda i: i)`) returned int 0" in message


def test_flow_file_can_define_classes_and_helpers(tmp_path):
    text = HEADER + ("from dataclasses import dataclass\n"
                     "@dataclass\nclass Order:\n    user: str\n    total: float\n"
                     "flow = Flow('orders')\n"
                     "(flow.source(sources.generate(4, lambda i: Order(f'u{i % 2}', i)))\n"
                     "     .key_by(lambda o: o.user).map_values(lambda o: o.total).sum()\n"
                     "     .sink(sinks.table()))\n")
    path = tmp_path / "orders.py"
    path.write_text(text)
    assert run_file(path).table() == {"u0": 2, "u1": 4}
