"""Sources: where a flow's records come from, cut into resumable splits.

Every source follows one contract, which the local runner and the daemon
both use:

- ``splits(parallelism) -> list[dict]``: cut the input into independent
  splits, small msgpack-able dicts. Split i is read by one task (the local
  runner gives it to partition ``i % P``; the daemon spreads splits evenly
  over the members the flow was submitted to).
- ``read(split, offset, max_records) -> (records, new_offset, done)``: the
  next records of a split after ``offset`` (None for a split never read).
  ``new_offset`` is an int to checkpoint with the task's state; reading again
  from it after a crash continues exactly after the last record returned.
  Fewer than ``max_records`` records (even none) may come back before
  ``done``; once ``done`` is true, the split has no more records.

The daemon splits every source once, where the flow is submitted, and every
member reads those splits (they travel with the flow's record). A files split
also carries the file's identity at submit (``size`` and ``digest``, xxh3_64
of the whole file): a reader checks its own file against it before reading,
and again (cheaply, by fstat) at every read, and fails the flow if it differs.

Sources in a flow are declared relative to the flow's ``base_dir``; the plan
binds them (``bind(step, base_dir)``) to absolute paths and to their step, so
errors name the step.

Example:
    >>> src = generate(5, lambda i: i * 10)
    >>> src.splits(2)
    [{'start': 0, 'stop': 2, 'step': 1}, {'start': 2, 'stop': 5, 'step': 1}]
    >>> src.read({'start': 2, 'stop': 5, 'step': 1}, None, 2)
    ([20, 30], 2, False)
"""

from __future__ import annotations

import copy
import glob as globlib
import json
import math
import os
import re
from collections.abc import Callable
from itertools import pairwise
from operator import length_hint
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

from nodes.endpoint import Endpoint
from nodes.errors import FlowError, StepRef, callback_error, safe_repr, typed

Split = dict[str, Any]
MIN_CHUNK = 4096        # bytes read per call, at least ...
BYTES_PER_RECORD = 256  # ... and this much per record asked for (until line lengths are known)
MAX_CHUNK = 1 << 22
MIN_SPLIT_BYTES = 4 << 20  # smaller ranges are not worth a task (and a commit) each
TIMED_SPLIT_RECORDS = 100_000
"""Records per split of a generate (or locally fed ingest) source with event time: splits
must not depend on the partition count, since each split has its own watermark."""
HASH_CHUNK = 1 << 20       # bytes hashed per read when a file's digest is computed
SAME_FILES = ("every member must see the same files under the same path;"
              " resubmit once they do")

INGEST_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
Identity = tuple[int, int, int, int]
_digests: dict[str, tuple[Identity, str]] = {}
"""Per path, the identity of the file last hashed in this process and its digest: a
file is hashed again only once it is another file (replaced) or changed."""


class Source(Endpoint):
    """Base class of sources. Subclasses implement ``splits`` and ``read``."""

    kind = "source"
    family = "sources"
    bounded = True
    split_fields: frozenset[str] = frozenset()
    """Fields every split of this source has (checked on splits from the network)."""
    timed = False
    """Set by the plan when the source's records get event time: its splits then do not
    depend on ``parallelism`` (files and jsonl: one per file)."""

    def limit(self, count: int) -> Source:
        """A bounded version with at most ``count`` records (tests of unbounded flows)."""
        return self

    def splits(self, parallelism: int) -> list[Split]:
        raise NotImplementedError

    def read(self, split: Split, offset: int | None, max_records: int) -> tuple[list, int, bool]:
        raise NotImplementedError


class _LineSource(Source):
    """Newline-delimited files matched by a glob, split into byte ranges.

    A range [start, end) of a file owns every line that *starts* inside it, so
    ranges cut anywhere (even inside a multi-byte character) read every line
    exactly once. Offsets are byte positions of the next line start.
    """

    split_fields = frozenset({"path", "start", "end"})

    def __init__(self, pattern: str, min_split_bytes: int = MIN_SPLIT_BYTES):
        super().__init__()
        if not isinstance(pattern, (str, os.PathLike)) or not str(pattern):
            raise FlowError(f"sources.{self.kind}() needs a glob pattern such as"
                            f" 'data/*.txt'; got {typed(pattern)}")
        if type(min_split_bytes) is not int or min_split_bytes < 1:
            raise FlowError(f"sources.{self.kind}() needs min_split_bytes as an int >= 1;"
                            f" got {typed(min_split_bytes)}")
        self.pattern, self.min_split_bytes = str(pattern), min_split_bytes
        self._line_bytes: dict[str, int] = {}
        """Per file, the mean line length of the last read (to size the next)."""

    def paths(self) -> list[str]:
        """The matching files, sorted, as absolute paths."""
        base = self.base_dir or Path.cwd()
        pattern = os.path.join(base, os.path.expanduser(self.pattern))
        found = sorted(p for p in globlib.glob(pattern, recursive=True) if os.path.isfile(p))
        if not found:
            raise self._error(
                f"sources.{self.kind}({self.pattern!r}) matched no files (pattern resolved"
                f" to {pattern!r}); relative patterns are relative to the flow file's"
                " directory (Flow(base_dir=...) overrides it)")
        return [os.path.abspath(p) for p in found]

    def splits(self, parallelism: int) -> list[Split]:
        """Byte ranges of about total_size / parallelism bytes; empty files have none.

        Ranges are at least ``min_split_bytes`` long (except a file's last), so
        small inputs make fewer splits than ``parallelism``. Each file is hashed
        once, however many ranges it has.

        Returns:
            ``[{"path": abs_path, "start": byte, "end": byte, "size": file bytes,
            "digest": xxh3_64 hex of the file}, ...]`` in file order.
        """
        _check_parallelism(parallelism)
        sized = [(path, os.path.getsize(path)) for path in self.paths()]
        total = sum(size for _, size in sized)
        target = max(self.min_split_bytes, math.ceil(total / parallelism))
        out = []
        for path, size in sized:
            if size:
                size, digest = self._identify(path)
                width = size if self.timed else math.ceil(size / math.ceil(size / target))
                out += [{"path": path, "start": s, "end": min(s + width, size),
                         "size": size, "digest": digest} for s in range(0, size, width)]
        return out

    def _identify(self, path: str) -> tuple[int, str]:
        """The size and digest of the file at ``path`` now.

        Raises:
            FlowError: it cannot be read, or it changed while being hashed.
        """
        try:
            with open(path, "rb") as f:
                info = os.fstat(f.fileno())
                return info.st_size, self._digest(path, f, info)
        except OSError as err:
            raise self._error(f"cannot read {path}: {err}") from err

    def _digest(self, path: str, f: BinaryIO, info: os.stat_result) -> str:
        """xxh3_64 (hex) of the whole open file ``f``, hashed once per identity."""
        identity = _identity(info)
        known = _digests.get(path)
        if known is not None and known[0] == identity:
            return known[1]
        digest = _hash(f)
        if _identity(os.fstat(f.fileno())) != identity:
            raise self._error(f"{path} changed while it was being read: sources.{self.kind}()"
                              " reads files that do not change while the flow runs")
        _digests[path] = (identity, digest)
        return digest

    def _check_file(self, split: Split, f: BinaryIO, info: os.stat_result) -> None:
        """The open file must be the one the flow was submitted with (``size`` and
        ``digest`` of the split): an fstat and a lookup unless it is new or changed."""
        path, size, digest = split["path"], split.get("size"), split["digest"]
        if info.st_size != size:
            raise self._differs(path, f"{info.st_size} bytes here, {size} at submit")
        here = self._digest(path, f, info)
        if here != digest:
            raise self._differs(path, f"same size, other content: digest {here} here,"
                                      f" {digest} at submit")

    def _differs(self, path: str, what: str) -> FlowError:
        return self._error(f"{path} differs from the file the flow was submitted with"
                           f" ({what}): {SAME_FILES}")

    def read_bytes(self, split: Split, offset: int | None,
                   max_records: int) -> tuple[bytes, int, int, bool]:
        """The next whole lines of a split as raw bytes.

        Returns:
            (data, start, new_offset, done): ``data`` is at most ``max_records``
            complete lines (each ending in ``\\n`` except a file's last line),
            read from file position ``start``.

        Raises:
            FlowError: the file cannot be read, or (for a split with ``digest``) it is
                not the file the flow was submitted with.
        """
        path, end = split["path"], split["end"]
        pos = split["start"] if offset is None else offset
        try:
            with open(path, "rb") as f:
                info = os.fstat(f.fileno())
                if "digest" in split:
                    self._check_file(split, f, info)
                end = min(end, info.st_size)
                if pos > 0:
                    f.seek(pos - 1)
                    if f.read(1) != b"\n":  # inside a line owned by the previous range
                        f.readline()
                    pos = f.tell()
                if pos >= end:
                    return b"", pos, pos, True
                # Aim a little under max_records lines of the length seen so far in this
                # file, so that cutting the surplus off is rare.
                per_line = self._line_bytes.get(path, BYTES_PER_RECORD)
                want = min(MAX_CHUNK, max_records * per_line * 9 // 10)
                chunk = min(end - pos, max(MIN_CHUNK, want))
                data = f.read(chunk)
                if data and not data.endswith(b"\n"):
                    data += f.readline()  # finish the last line started inside the range
        except FileNotFoundError as err:
            if "digest" in split:
                raise self._differs(path, f"missing here, {split.get('size')} bytes at submit"
                                    ) from err
            raise self._error(f"cannot read {path}: {err}") from err
        except OSError as err:
            raise self._error(f"cannot read {path}: {err}") from err
        lines = data.count(b"\n") + (not data.endswith(b"\n"))
        if lines:
            self._line_bytes[path] = len(data) // lines + 1
        if lines > max_records:
            rest = data.split(b"\n", max_records)[-1]
            data = data[: len(data) - len(rest)]
        new = pos + len(data)
        return data, pos, new, new >= end

    def line_number(self, path: str, position: int) -> int:
        """1-based number of the line containing byte ``position`` (for messages)."""
        with open(path, "rb") as f:
            return f.read(position).count(b"\n") + 1


class FilesSource(_LineSource):
    """Text lines (UTF-8, without the newline) of the files matching a glob."""

    kind = "files"

    def read(self, split: Split, offset: int | None, max_records: int) -> tuple[list, int, bool]:
        data, start, new, done = self.read_bytes(split, offset, max_records)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            at = start + err.start
            line = self.line_number(split["path"], at)
            raise self._error(
                f"{split['path']}:{line} is not valid UTF-8 ({err.reason} at byte {at});"
                " files() reads UTF-8 text: convert the file (e.g. iconv -t UTF-8)") from err
        if not text:
            return [], new, done
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        return lines, new, done

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "pattern": self.pattern}


class JsonlSource(_LineSource):
    """One JSON value per line of the files matching a glob; blank lines are skipped."""

    kind = "jsonl"

    def read(self, split: Split, offset: int | None, max_records: int) -> tuple[list, int, bool]:
        data, start, new, done = self.read_bytes(split, offset, max_records)
        lines = data.split(b"\n")
        if data.endswith(b"\n") or not data:
            lines.pop()
        records = []
        append, loads = records.append, json.loads
        for i, line in enumerate(lines):
            if line.strip():
                try:
                    append(loads(line))
                except ValueError as err:
                    at = start + sum(len(before) + 1 for before in lines[:i])
                    number = self.line_number(split["path"], at)
                    raise self._error(
                        f"{split['path']}:{number} is not valid JSON ({err}): "
                        f"{safe_repr(line.decode('utf-8', 'replace'), 120)}; jsonl() expects"
                        " one JSON value per line") from err
        return records, new, done

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "pattern": self.pattern}


class GenerateSource(Source):
    """Record i is ``fn(i)``, for i in range(count) (count None: forever)."""

    kind = "generate"
    split_fields = frozenset({"start", "stop", "step"})

    def __init__(self, count: int | None, fn: Callable[[int], Any]):
        super().__init__()
        if count is not None and (type(count) is not int or count < 0):
            raise FlowError(f"sources.generate() needs a count that is an int >= 0, or None"
                            f" for an unbounded source; got {typed(count)}")
        if not callable(fn):
            raise FlowError(f"sources.generate() needs a function making record i from i;"
                            f" got {typed(fn)}")
        self.count, self.fn = count, fn
        self.bounded = count is not None

    def limit(self, count: int) -> Source:
        if self.count is not None and self.count <= count:
            return self
        bounded = copy.copy(self)
        bounded.count, bounded.bounded = count, True
        return bounded

    def splits(self, parallelism: int) -> list[Split]:
        """Contiguous index ranges (bounded) or strides (unbounded).

        Returns:
            ``[{"start": i, "stop": j, "step": 1}, ...]`` (empty ranges left out), or
            ``[{"start": i, "stop": None, "step": parallelism}, ...]``.
        """
        _check_parallelism(parallelism)
        if self.timed:
            if self.count is None:
                return [{"start": 0, "stop": None, "step": 1}]
            return [{"start": a, "stop": min(a + TIMED_SPLIT_RECORDS, self.count), "step": 1}
                    for a in range(0, self.count, TIMED_SPLIT_RECORDS)]
        if self.count is None:
            return [{"start": i, "stop": None, "step": parallelism} for i in range(parallelism)]
        cuts = [self.count * i // parallelism for i in range(parallelism + 1)]
        return [{"start": a, "stop": b, "step": 1} for a, b in pairwise(cuts) if a < b]

    def read(self, split: Split, offset: int | None, max_records: int) -> tuple[list, int, bool]:
        """Records for the split's next indices; the offset counts records read."""
        done_before = offset or 0
        step, stop = split["step"], split["stop"]
        first = split["start"] + done_before * step
        n = max_records if stop is None else max(0, min(max_records, -(-(stop - first) // step)))
        indices = iter(range(first, first + n * step, step))
        fn = self.fn
        try:
            records = list(map(fn, indices))
        except Exception as err:
            index = first + (n - length_hint(indices) - 1) * step
            raise callback_error(self.step or _anonymous(self), fn, index, err,
                                 what="index") from err
        last = first + n * step
        return records, done_before + n, stop is not None and last >= stop

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count}


class IngestSource(Source):
    """Records sent by producers (``gossipflow send``, :class:`daemon.producer.Producer`)
    to a running flow, under the ingest name ``name``: unbounded.

    On the cluster a producer's records go to the partition of its id, whose task applies
    each record once (a per-producer mark commits with the records). In the local runner
    the records come from ``run(..., ingest={name: records})``.
    """

    kind = "ingest"
    bounded = False
    split_fields = frozenset({"ingest"})

    def __init__(self, name: str, producer_ttl: float):
        super().__init__()
        if not (isinstance(name, str) and INGEST_NAME.fullmatch(name)):
            raise FlowError("sources.ingest() needs a name of 1 to 64 letters, digits, '.',"
                            f" '_' or '-', such as 'clicks'; got {typed(name)}")
        if type(producer_ttl) not in (int, float) or not producer_ttl > 0:
            raise FlowError("sources.ingest() needs producer_ttl as seconds > 0;"
                            f" got {typed(producer_ttl)}")
        self.name, self.producer_ttl = name, producer_ttl
        self.records: list | None = None
        """The records of a local run (None on the cluster)."""

    def fed(self, records: list) -> IngestSource:
        """A bounded copy that yields ``records`` (the local runner's input)."""
        bounded = copy.copy(self)
        bounded.records, bounded.bounded = list(records), True
        return bounded

    def limit(self, count: int) -> Source:
        return self.fed((self.records or [])[:count])

    def splits(self, parallelism: int) -> list[Split]:
        """On the cluster one split naming the ingest (producers feed every partition);
        locally, contiguous ranges of the fed records."""
        _check_parallelism(parallelism)
        if self.records is None:
            return [{"ingest": self.name}]
        n = len(self.records)
        if self.timed:
            return [{"ingest": self.name, "start": a, "stop": min(a + TIMED_SPLIT_RECORDS, n)}
                    for a in range(0, n, TIMED_SPLIT_RECORDS)]
        cuts = [n * i // parallelism for i in range(parallelism + 1)]
        return [{"ingest": self.name, "start": a, "stop": b} for a, b in pairwise(cuts) if a < b]

    def read(self, split: Split, offset: int | None, max_records: int) -> tuple[list, int, bool]:
        """Locally: the fed records of the split after ``offset``."""
        if self.records is None or "start" not in split:
            raise self._error("an ingest source is fed by producers on the cluster, or by"
                              " run(..., ingest={name: records}) locally")
        first = split["start"] + (offset or 0)
        last = min(split["stop"], first + max_records)
        return self.records[first:last], last - split["start"], last >= split["stop"]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name}


def ingest(name: str, *, producer_ttl: float = 7 * 86400) -> IngestSource:
    """Records sent to the running flow by producers: ``gossipflow send NAME`` or
    ``daemon.producer.Producer(NAME)``; each is applied exactly once, however often a
    producer retries.

    Args:
        name: the ingest name producers send to (one running flow per name).
        producer_ttl: seconds of silence after which a producer is forgotten (its mark
            dropped): it may then start again from record 1, and a record numbered
            above 1 from it is refused as from an unknown producer.

    Returns:
        An unbounded source (the local runner takes ``run(..., ingest={name: records})``).

    Example: ``flow.source(sources.ingest("clicks")).key_by(...).count()``
    """
    return IngestSource(name, producer_ttl)


def files(pattern: str, *, min_split_bytes: int = MIN_SPLIT_BYTES) -> FilesSource:
    """Lines of text files: UTF-8, without the trailing newline.

    Args:
        pattern: a glob ("corpus/*.txt", "logs/**/*.log"), relative to the flow
            file's directory. Files are read in sorted order; each is cut into
            byte ranges so one big file spreads over partitions.
        min_split_bytes: the smallest range worth its own task (default 1 MiB).

    Returns:
        A source; its splits are ``{"path", "start", "end"}`` byte ranges, with the
        file's ``size`` and ``digest`` when the flow was split.

    Raises:
        FlowError: (when read) no file matches, a file is not UTF-8, or a file is
            not the one the flow was submitted with.

    Example: ``flow.source(sources.files("corpus/*.txt"))``
    """
    return FilesSource(pattern, min_split_bytes)


def jsonl(pattern: str, *, min_split_bytes: int = MIN_SPLIT_BYTES) -> JsonlSource:
    """JSON Lines files: one JSON value per line (blank lines skipped).

    Args:
        pattern: a glob, relative to the flow file's directory; split like ``files``.
        min_split_bytes: the smallest range worth its own task (default 1 MiB).

    Returns:
        A source of the decoded values.

    Raises:
        FlowError: (when read) no file matches, or a line is not valid JSON
            (the message gives the file and line number).

    Example: ``flow.source(sources.jsonl("events/*.jsonl"))``
    """
    return JsonlSource(pattern, min_split_bytes)


def generate(count: int | None, fn: Callable[[int], Any]) -> GenerateSource:
    """Generated records: record i is ``fn(i)`` for i in range(count).

    Args:
        count: how many records; None for an unbounded source (the local
            runner then needs ``run(..., limit=N)``).
        fn: makes record i from i; called again with the same i when a split is
            replayed, so it should be deterministic for exactly-once results.

    Returns:
        A source; its splits are ``{"start", "stop", "step"}`` index ranges.

    Raises:
        FlowError: count is not an int >= 0 or None, or fn is not callable.

    Example:
        >>> generate(3, str).read({"start": 0, "stop": 3, "step": 1}, None, 10)
        (['0', '1', '2'], 3, True)
    """
    return GenerateSource(count, fn)


def _check_parallelism(parallelism: int) -> None:
    if type(parallelism) is not int or parallelism < 1:
        raise FlowError("splits() needs a parallelism that is an int >= 1;"
                        f" got {typed(parallelism)}")


def _identity(info: os.stat_result) -> Identity:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _hash(f: BinaryIO) -> str:
    """xxh3_64 (hex) of the whole file ``f``, whatever its position."""
    digest, fd, position = xxhash.xxh3_64(), f.fileno(), 0
    while chunk := os.pread(fd, HASH_CHUNK, position):
        digest.update(chunk)
        position += len(chunk)
    return digest.hexdigest()


def _anonymous(source: Source) -> StepRef:
    return StepRef(f"sources.{source.kind}()", "source", "?")
