"""Sinks: where a flow's results go.

- ``table()``: the latest value per key of a keyed stream, queryable
  (``gossipflow query``; ``Result.table()`` in the local runner).
- ``files(dir)``: JSON-lines files per partition: ``dir/part-00003.jsonl`` in the
  local runner; on the daemon, segments ``dir/part-00003-0000000001.jsonl``, each
  written whole once the commits that made it are on every replica (see
  :meth:`FilesSink.segment_file`).
- ``publish()``: a live stream for ``gossipflow tail`` and ZeroMQ SUB
  clients (``Result.published`` in the local runner).
- ``log()``: a durable delivery log: records stored per partition under offsets
  0, 1, 2, ..., replicated with the commits that made them, read from saved offsets
  (``gossipflow tail --from``, :class:`daemon.consumer.Consumer`; locally
  ``Result.published_records[name]``).

A sink receives, per partition task and commit, the list of records the
stage put in its outbox for it (``outputs[sink_name]``). Paths are relative
to the flow's ``base_dir``; the plan binds each sink to its step and an
absolute directory.

Example:
    >>> s = files("out")
    >>> s.encode([("a", 1), {"b": [2]}])
    b'["a", 1]\\n{"b": [2]}\\n'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nodes.endpoint import Endpoint
from nodes.errors import FlowError, safe_repr, typed
from nodes.codec import json_default


class Sink(Endpoint):
    """Base class of sinks."""

    kind = "sink"
    family = "sinks"
    needs_keyed = False


class TableSink(Sink):
    """Latest value per key. Needs a keyed stream: records are (key, value)."""

    kind = "table"
    needs_keyed = True


class FilesSink(Sink):
    """One JSON-lines file per partition in a directory."""

    kind = "files"

    def __init__(self, directory: str | os.PathLike):
        super().__init__()
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise FlowError("sinks.files() needs a directory such as 'out';"
                            f" got {typed(directory)}")
        self.directory = str(directory)

    @property
    def path(self) -> Path:
        """The directory, absolute (resolved against the flow's base_dir)."""
        return (self.base_dir or Path.cwd()) / os.path.expanduser(self.directory)

    def file_for(self, partition: int) -> Path:
        """The file partition ``partition`` writes: ``<dir>/part-00003.jsonl``."""
        return self.path / f"part-{partition:05d}.jsonl"

    def segment_file(self, partition: int, first: int) -> Path:
        """The daemon's segment of ``partition`` that starts at its sink sequence
        ``first``: ``<dir>/part-00003-0000000001.jsonl`` (names sort in record order
        within a partition; a segment's name and bytes are the same whichever member
        writes it)."""
        return self.path / f"part-{partition:05d}-{first:010d}.jsonl"

    def encode(self, records: list) -> bytes:
        """JSON lines for ``records`` (tuples become arrays, datetimes ISO 8601 strings).

        Raises:
            FlowError: a record is not JSON-serialisable (names the step and the record).
        """
        dumps = json.dumps
        try:
            text = "".join([dumps(r, ensure_ascii=False, default=json_default) + "\n"
                            for r in records])
        except (TypeError, ValueError) as err:
            bad = next((r for r in records if not _jsonable(r)), None)
            raise self._error(
                f"record {safe_repr(bad)} cannot be written as JSON ({err}); map records to"
                " dicts, lists, str, numbers, bool or None before sinks.files()") from err
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: fall back to \u escapes, still valid JSON
            return "".join([dumps(r, default=json_default) + "\n" for r in records]
                           ).encode("ascii")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "directory": str(self.path)}


class PublishSink(Sink):
    """A live stream of records."""

    kind = "publish"


class LogSink(Sink):
    """A durable log per partition, the oldest records dropped past ``records`` per
    partition or ``bytes`` (msgpack) per partition."""

    kind = "log"

    def __init__(self, records: int | None, size: int | None):
        super().__init__()
        for label, value in (("records", records), ("bytes", size)):
            if value is not None and (type(value) is not int or value < 1):
                raise FlowError(f"sinks.log() needs {label} as an int >= 1, or None;"
                                f" got {typed(value)}")
        self.records, self.size = records, size

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "records": self.records, "bytes": self.size}


def table() -> TableSink:
    """Keep the latest value per key; queryable.

    Returns:
        A sink for a keyed stream (after key_by or a keyed operator).

    Example: ``words.key_by(lambda w: w).count().sink(sinks.table())``
    """
    return TableSink()


def files(directory: str | os.PathLike) -> FilesSink:
    """Write one JSON-lines file per partition into ``directory``.

    Args:
        directory: relative to the flow file's directory (created if missing).

    Returns:
        A sink; records must be JSON-serialisable (tuples are written as arrays).

    Example: ``stream.sink(sinks.files("out/clean"))``
    """
    return FilesSink(directory)


def publish() -> PublishSink:
    """Publish records as a live stream (``gossipflow tail FLOW``).

    Returns:
        A sink; in the local runner the records are collected in ``Result.published``.

    Example: ``alerts.sink(sinks.publish())``
    """
    return PublishSink()


def log(*, records: int | None = 1_000_000, bytes: int | None = None) -> LogSink:  # noqa: A002
    """Keep records in a durable log per partition that consumers read from offsets.

    A record is in the log (and readable) only once the commit that made it is on every
    replica; offsets are never reused, so a consumer that saved its offsets resumes
    exactly after what it saw, also after any daemon was killed.

    Args:
        records: keep at most this many records per partition (None: no limit).
        bytes: keep at most this many bytes of records per partition (None: no limit).

    Returns:
        A sink; ``gossipflow tail FLOW --from start --follow`` prints it live.

    Example: ``totals.sink(sinks.log(records=100_000))``
    """
    return LogSink(records, bytes)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, default=json_default)
    except (TypeError, ValueError):
        return False
    return True
