"""Sources: splits cover the input exactly once; offsets resume exactly."""

from __future__ import annotations

import json
import os
from itertools import pairwise
from pathlib import Path

import msgpack
import xxhash
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes import FlowError, sources
from nodes.errors import StepRef

REF = StepRef("src", "source", "flow.py:3")
LINE = st.text(alphabet=st.sampled_from("ab é日€\t\r😀"), max_size=40)
FILE = st.tuples(st.lists(LINE, max_size=30), st.booleans())  # lines, trailing newline


def write(directory: Path, files: list[tuple[list[str], bool]]) -> list[str]:
    """Write files; return the lines a reader must produce, in file order."""
    expected = []
    for i, (lines, trailing) in enumerate(files):
        text = "\n".join(lines) + ("\n" if trailing and lines else "")
        (directory / f"f{i:03d}.txt").write_bytes(text.encode("utf-8"))
        if text:  # every piece between newlines is a line, but none after a final newline
            expected += text.split("\n")[: -1 if text.endswith("\n") else None]
    return expected


def read_all(source, splits: list, max_records: int) -> list:
    out = []
    for split in splits:
        offset, done = None, False
        while not done:
            records, new, done = source.read(split, offset, max_records)
            assert isinstance(new, int) and (offset is None or new >= offset)
            out += records
            offset = new
    return out


def bound(source, directory: Path):
    return source.bind(REF, directory)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(files=st.lists(FILE, min_size=1, max_size=4), parallelism=st.integers(1, 25),
       max_records=st.integers(1, 12))
def test_splits_read_every_line_exactly_once(tmp_path_factory, files, parallelism, max_records):
    directory = tmp_path_factory.mktemp("lines")
    expected = write(directory, files)
    src = bound(sources.files("*.txt", min_split_bytes=1), directory)
    splits = src.splits(parallelism)
    assert msgpack.unpackb(msgpack.packb(splits)) == splits  # splits travel between daemons
    assert read_all(src, splits, max_records) == expected


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(file=FILE, cuts=st.lists(st.floats(0, 1), max_size=8), max_records=st.integers(1, 9))
def test_any_byte_cuts_even_inside_characters(tmp_path_factory, file, cuts, max_records):
    directory = tmp_path_factory.mktemp("cuts")
    expected = write(directory, [file])
    src = bound(sources.files("*.txt"), directory)
    path = str(directory / "f000.txt")
    size = os.path.getsize(path)
    points = sorted({0, size, *(int(c * size) for c in cuts)})
    splits = [{"path": path, "start": a, "end": b} for a, b in pairwise(points)]
    assert read_all(src, splits, max_records) == expected


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=FILE, parallelism=st.integers(1, 6), crash_after=st.integers(0, 10))
def test_resume_from_a_checkpointed_offset(tmp_path_factory, file, parallelism, crash_after):
    """Read, "crash" after some batches losing the uncommitted ones, resume from the offset."""
    directory = tmp_path_factory.mktemp("resume")
    expected = write(directory, [file])
    src = bound(sources.files("*.txt", min_split_bytes=1), directory)
    out = []
    for split in src.splits(parallelism):
        committed, offset, done, batches = [], None, False, 0
        while not done:
            records, new, done = src.read(split, offset, 2)
            batches += 1
            if batches == crash_after:  # lose this batch: restart from the last commit
                done = False
                continue
            committed += records
            offset = new
        out += committed
    assert out == expected


def test_lines_split_without_trailing_newline_and_empty_lines(tmp_path):
    (tmp_path / "a.txt").write_bytes("x\n\ny€\r\nlast".encode())
    src = bound(sources.files("a.txt", min_split_bytes=1), tmp_path)
    assert read_all(src, src.splits(3), 10) == ["x", "", "y€\r", "last"]


def test_empty_files_have_no_splits_and_big_files_spread(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "big.txt").write_text("line\n" * 1000)
    src = bound(sources.files("*.txt", min_split_bytes=1), tmp_path)
    splits = src.splits(8)
    assert len(splits) == 8 and {s["path"] for s in splits} == {str(tmp_path / "big.txt")}
    assert splits[0]["start"] == 0 and splits[-1]["end"] == 5000
    assert all(a["end"] == b["start"] for a, b in pairwise(splits))
    assert len(bound(sources.files("*.txt", min_split_bytes=2000), tmp_path).splits(8)) == 3
    assert len(bound(sources.files("*.txt"), tmp_path).splits(8)) == 1  # 1 MiB minimum


def test_glob_is_relative_to_base_dir_and_recursive(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "one.txt").write_text("1\n")
    (tmp_path / "d" / "e" / "two.txt").write_text("2\n")
    src = bound(sources.files("d/**/*.txt"), tmp_path)
    assert sorted(read_all(src, src.splits(2), 5)) == ["1", "2"]


def test_no_matching_file_names_the_step_and_the_pattern(tmp_path):
    src = bound(sources.files("nothing/*.txt"), tmp_path)
    with pytest.raises(FlowError) as err:
        src.splits(4)
    message = str(err.value)
    assert "step 'src' (source, declared at flow.py:3)" in message
    assert "sources.files('nothing/*.txt') matched no files" in message and str(tmp_path) in message


def test_invalid_utf8_names_file_and_line(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine\nalso fine\nbad \xff here\n")
    src = bound(sources.files("bad.txt"), tmp_path)
    with pytest.raises(FlowError, match=r"bad\.txt:3 is not valid UTF-8") as err:
        read_all(src, src.splits(1), 10)
    assert err.value.step == "src"


def test_jsonl_values_blank_lines_and_errors(tmp_path):
    values = [{"a": 1}, [1, 2], "s", 3.5, None, {"nested": {"é": True}}]
    text = "\n".join(json.dumps(v) for v in values[:3]) + "\n\n  \n" + "\n".join(
        json.dumps(v) for v in values[3:])
    (tmp_path / "ok.jsonl").write_text(text, encoding="utf-8")
    src = bound(sources.jsonl("ok.jsonl", min_split_bytes=1), tmp_path)
    for parallelism in (1, 2, 5):
        assert read_all(src, src.splits(parallelism), 2) == values
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n\n{"a": \n', encoding="utf-8")
    src = bound(sources.jsonl("bad.jsonl"), tmp_path)
    with pytest.raises(FlowError, match=r"bad\.jsonl:3 is not valid JSON"):
        read_all(src, src.splits(1), 10)


@pytest.mark.parametrize("count", [0, 1, 5, 100])
@pytest.mark.parametrize("parallelism", [1, 3, 8])
def test_generate_splits_cover_the_range(count, parallelism):
    src = sources.generate(count, lambda i: i * 2)
    splits = src.splits(parallelism)
    assert msgpack.unpackb(msgpack.packb(splits)) == splits
    assert len(splits) == min(count, parallelism)
    for max_records in (1, 4, 1000):
        assert read_all(src, splits, max_records) == [i * 2 for i in range(count)]


def test_generate_unbounded_strides_and_limit():
    src = sources.generate(None, lambda i: i)
    splits = src.splits(3)
    assert splits == [{"start": i, "stop": None, "step": 3} for i in range(3)]
    records, offset, done = src.read(splits[1], None, 4)
    assert (records, offset, done) == ([1, 4, 7, 10], 4, False)
    assert src.read(splits[1], offset, 2) == ([13, 16], 6, False)
    limited = src.limit(10)
    assert limited.bounded and read_all(limited, limited.splits(3), 2) == list(range(10))


def test_generate_function_error_names_index():
    src = sources.generate(10, lambda i: 1 // (i - 6)).bind(REF, ".")
    with pytest.raises(FlowError) as err:
        read_all(src, src.splits(2), 3)
    message = str(err.value)
    assert "step 'src' (source, declared at flow.py:3) failed" in message
    assert "ZeroDivisionError" in message and "index: 6" in message
    assert "test_nodes_sources.py:" in message  # the lambda's file and line
    assert isinstance(err.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize("call, match", [
    (lambda: sources.generate(-1, str), "count that is an int >= 0"),
    (lambda: sources.generate(3, "nope"), "needs a function"),
    (lambda: sources.files(""), "needs a glob pattern"),
    (lambda: sources.generate(3, str).splits(0), "parallelism that is an int >= 1"),
])
def test_bad_source_arguments(call, match):
    with pytest.raises(FlowError, match=match):
        call()


# ------------------------------------------------ the files a flow was submitted with

SAME_FILES = ("every member must see the same files under the same path;"
              " resubmit once they do")


@pytest.fixture
def hashes(monkeypatch) -> list[str]:
    """The paths hashed (sources._hash calls) from now on."""
    import nodes.sources

    hashed: list[str] = []
    real = nodes.sources._hash

    def counting(f):
        hashed.append(f.name)
        return real(f)

    monkeypatch.setattr(nodes.sources, "_hash", counting)
    return hashed


def differs(path: Path, what: str) -> str:
    return (f"step 'src' (source, declared at flow.py:3): {path} differs from the file the"
            f" flow was submitted with ({what}): {SAME_FILES}")


def test_file_splits_carry_size_and_digest_hashed_once(tmp_path, hashes):
    data = b"".join(b"line %d\n" % i for i in range(2000))
    (tmp_path / "a.txt").write_bytes(data)
    (tmp_path / "b.txt").write_bytes(b"b\n")
    src = bound(sources.files("*.txt", min_split_bytes=1000), tmp_path)
    splits = src.splits(8)
    digest = xxhash.xxh3_64(data).hexdigest()
    assert [(s["path"], s["size"], s["digest"]) for s in splits] == \
        [(str(tmp_path / "a.txt"), len(data), digest)] * 8 + \
        [(str(tmp_path / "b.txt"), 2, xxhash.xxh3_64(b"b\n").hexdigest())]
    assert msgpack.unpackb(msgpack.packb(splits)) == splits  # they travel in the flow's record
    assert hashes == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]  # once per file
    expected = data.decode().split("\n")[:-1] + ["b"]
    assert read_all(src, splits, 7) == expected  # each read checks the file ...
    other = bound(sources.files("*.txt", min_split_bytes=1000), tmp_path)
    assert read_all(other, splits, 50) == expected
    assert len(hashes) == 2  # ... by fstat against what this process hashed already


def test_a_file_replaced_by_the_same_bytes_is_hashed_again_and_read(tmp_path, hashes):
    path = tmp_path / "a.txt"
    path.write_bytes(b"x\ny\n")
    src = bound(sources.files("a.txt"), tmp_path)
    splits = src.splits(1)
    (tmp_path / "copy").write_bytes(b"x\ny\n")
    os.replace(tmp_path / "copy", path)  # another inode: another identity, same content
    assert read_all(src, splits, 10) == ["x", "y"]
    assert hashes == [str(path)] * 2


@pytest.mark.parametrize("change, what", [
    (lambda path: (path.with_suffix(".new").write_bytes(b"1\n2\nX\n"),
                   os.replace(path.with_suffix(".new"), path)),
     "same size, other content: digest {here} here, {submitted} at submit"),
    (lambda path: path.write_bytes(b"1\n2\n3\n4\n"), "8 bytes here, 6 at submit"),
    (lambda path: path.unlink(), "missing here, 6 bytes at submit"),
])
def test_a_file_other_than_at_submit_is_refused_naming_it(tmp_path, change, what):
    path = tmp_path / "in.txt"
    path.write_bytes(b"1\n2\n3\n")
    src = bound(sources.files("in.txt"), tmp_path)
    splits = src.splits(1)
    change(path)
    with pytest.raises(FlowError) as err:
        src.read(splits[0], None, 10)
    here = xxhash.xxh3_64(b"1\n2\nX\n").hexdigest()
    assert str(err.value) == differs(path, what.format(here=here,
                                                       submitted=splits[0]["digest"]))
    assert err.value.step == "src"


def test_a_file_changed_while_read_is_caught_at_the_next_read(tmp_path, hashes):
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\nb\nc\nd\n")
    src = bound(sources.files("in.txt"), tmp_path)
    split = src.splits(1)[0]
    records, offset, done = src.read(split, None, 2)
    assert (records, done) == (["a", "b"], False)
    with open(path, "r+b") as f:  # in place: same inode, same size, other bytes
        f.write(b"A")
    info = os.stat(path)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1))  # whatever the fs's clock
    with pytest.raises(FlowError) as err:
        src.read(split, offset, 2)
    here = xxhash.xxh3_64(b"A\nb\nc\nd\n").hexdigest()
    assert str(err.value) == differs(
        path, f"same size, other content: digest {here} here, {split['digest']} at submit")
    with open(path, "ab") as f:
        f.write(b"e\n")
    with pytest.raises(FlowError) as err:
        src.read(split, offset, 2)
    assert str(err.value) == differs(path, "10 bytes here, 8 at submit")
    assert len(hashes) == 2  # at submit, and once after the in-place change


def test_splits_without_identity_are_not_checked(tmp_path):
    (tmp_path / "in.txt").write_bytes(b"1\n2\n")
    src = bound(sources.files("in.txt"), tmp_path)
    split = {k: v for k, v in src.splits(1)[0].items() if k in ("path", "start", "end")}
    (tmp_path / "in.txt").write_bytes(b"1\n2\n3\n")
    assert read_all(src, [split], 10) == ["1", "2"]  # its byte range, whatever the file
