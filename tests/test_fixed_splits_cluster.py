"""Splits fixed at submit, on real daemons: one member sees other bytes under the same path.

That member runs in a mount namespace of its own (root: ``unshare --mount``) where a
copy directory is bind-mounted over the data directory, as a host with its own disk
would see its own copy. The mount lives and dies with the daemon's process.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import daemons
import pytest
import xxhash
from daemons import Cluster, cli

pytestmark = pytest.mark.timeout(240)

SAME_FILES = ("every member must see the same files under the same path;"
              " resubmit once they do")
FLOW = '''
from nodes import Flow, sources, sinks
flow = Flow({name!r})
(flow.source(sources.files({pattern!r}, min_split_bytes=1000))
     .flat_map(str.split)
     .key_by(lambda w: w)
     .count()
     .sink(sinks.table()))
'''


def words(seed: int, count: int) -> str:
    rng = random.Random(seed)
    return "".join(f"{rng.choice(['ant', 'bee', 'cat', 'dog', 'eel'])}{rng.randrange(30)}"
                   f"{' ' if i % 8 else chr(10)}" for i in range(1, count + 1))


def corpus(tmp_path: Path, other_b: bool) -> tuple[Path, Path]:
    """``data`` (a.txt and b.txt, which is several splits long) and ``copy``: the same
    files, except b.txt with other bytes of the same size if ``other_b``."""
    data, copy = tmp_path / "data", tmp_path / "copy"
    data.mkdir()
    copy.mkdir()
    files = {"a.txt": words(1, 300), "b.txt": words(2, 2000)}
    for name, text in files.items():
        (data / name).write_text(text)
        (copy / name).write_text(text)
    if other_b:
        (copy / "b.txt").write_text(files["b.txt"].replace("ant", "cow"))
        assert (copy / "b.txt").stat().st_size == (data / "b.txt").stat().st_size
        assert (copy / "b.txt").read_bytes() != (data / "b.txt").read_bytes()
    return data, copy


def start_with_copy(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, data: Path,
                    copy: Path) -> None:
    """n0 and n1 see ``data``; n2, in a mount namespace of its own, sees ``copy`` there."""
    cluster.start("n0")
    cluster.start("n1", join=["n0"])
    mounted = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(copy), str(data)]
    with monkeypatch.context() as patch:
        patch.setattr(daemons, "DAEMON_CMD", mounted + daemons.DAEMON_CMD)
        cluster.start("n2", join=["n0"])
    cluster.wait_converged(["n0", "n1", "n2"])
    seen = Path(f"/proc/{cluster['n2'].pid}/root") / data.relative_to("/") / "b.txt"
    assert seen.read_bytes() == (copy / "b.txt").read_bytes()  # the namespace works


def submit(cluster: Cluster, tmp_path: Path, name: str, pattern: str):
    path = tmp_path / f"{name}.py"
    path.write_text(FLOW.format(name=name, pattern=pattern))
    return cli("submit", str(path), "--wait", "--node", cluster["n0"].address, timeout=120)


def table(cluster: Cluster, node: str, name: str) -> dict:
    return dict(cluster.request(node, "query", timeout=10.0, args={"name": name}))


def counts(*paths: Path) -> Counter:
    return Counter(w for path in paths for w in path.read_text().split())


def test_a_member_whose_copy_differs_fails_the_flow_naming_itself_and_the_file(
        cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, copy = corpus(tmp_path, other_b=True)
    start_with_copy(cluster, monkeypatch, data, copy)
    result = submit(cluster, tmp_path, "wordcount", str(data / "*.txt"))
    assert result.returncode == 1, result.stdout + result.stderr
    here = xxhash.xxh3_64((copy / "b.txt").read_bytes()).hexdigest()
    submitted = xxhash.xxh3_64((data / "b.txt").read_bytes()).hexdigest()
    tail = (f"{data / 'b.txt'} differs from the file the flow was submitted with (same size, "
            f"other content: digest {here} here, {submitted} at submit): {SAME_FILES}")
    for node in ("n0", "n1", "n2"):
        status = cli("status", "wordcount", "--node", cluster[node].address)
        assert status.returncode == 0, status.stderr
        error = next(line for line in status.stdout.splitlines() if line.startswith("error: "))
        assert error.startswith("error: member n2: ") and error.endswith(tail), error
        assert error.count("n2") == 1 and "n0" not in error and "n1" not in error, error
        assert "status: failed" in status.stdout
    # the daemons keep running, and run the next flow over a file every member sees alike
    assert all(cluster[node].running() for node in ("n0", "n1", "n2"))
    result = submit(cluster, tmp_path, "same", str(data / "a.txt"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert table(cluster, "n2", "same") == counts(data / "a.txt")


def test_members_with_identical_copies_complete_the_flow_exactly(
        cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, copy = corpus(tmp_path, other_b=False)
    start_with_copy(cluster, monkeypatch, data, copy)
    result = submit(cluster, tmp_path, "wordcount", str(data / "*.txt"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "flow wordcount completed" in result.stdout
    expected = counts(data / "a.txt", data / "b.txt")
    for node in ("n0", "n1", "n2"):
        assert table(cluster, node, "wordcount") == expected
