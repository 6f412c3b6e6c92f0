"""The LMDB store under every partition task: one commit = one write transaction.

A :class:`Commit` is the write-set of one partition-task commit: changed state,
source offsets, upstream high-water marks, outbox puts and acks. ``apply`` writes
it in one LMDB transaction, so a crash leaves all of it or none; it is plain
msgpack (``to_bytes``), so replication ships the same object to replicas.

Key layout: every key of a task starts with ``flow UTF-8 | 0x00 | stage u32 BE |
partition u32 BE``, which sorts like the TaskId tuple and is prefix-free, so a
task's data is one contiguous range in each named database (snapshot and drop
are range scans)::

    state      prefix + user key             -> value
    offsets    prefix + split id             -> offset bytes
    marks      prefix + origin id            -> u64 BE highest sequence applied
    outbox     prefix + dest + 0x00 + u64 BE -> payload
    sequences  prefix + dest                 -> u64 BE next outbox sequence
    taskmeta   prefix                        -> u64 BE last number, epoch, promise
    accepted   prefix                        -> msgpack [epoch, [member, ...]]
    meta       UTF-8 key                     -> daemon-wide record

``accepted`` is this member's vote on who owns the task (:mod:`daemon.ownership`):
the replica set a new primary established at an epoch. It is not part of the task's
data: snapshots do not carry it and restores leave it.

Threading: one Store per path (an flock refuses a second, in any process);
writes are serialised by a lock; reads may come from any thread. LMDB allows
``set_mapsize`` only while the process has no live transaction, so reads pass a
gate that map growth closes and drains first, and no read keeps a transaction
across a yield to its caller (``iter_state`` reads by pages, ``snapshot`` eagerly).

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, Store(d, sync=False) as store:
    ...     t = TaskId("wordcount", 1, 0)
    ...     store.apply(Commit(t, epoch=1, number=1, state_puts={b"cat": b"2"}))
    ...     store.get_state(t, b"cat"), store.task_meta(t)
    True
    (b'2', TaskMeta(last=1, epoch=1, promised=0))
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple, Self, TypeVar

import lmdb
import msgpack

from .errors import (
    CommitGapError,
    ConfigError,
    DecodeError,
    InvalidCommitError,
    StaleCommitError,
    StaleEpochError,
    StoreError,
    StoreFullError,
)

log = logging.getLogger("gossipflow.store")
T = TypeVar("T")
FORMAT = 2  # of the files, snapshots and Commit bytes; bump on incompatible change
_FORMAT_KEY = b"\x00format"  # in meta (put_meta keys cannot start with NUL)
_TASK_DBS = ("state", "offsets", "marks", "outbox", "sequences", "taskmeta")
_U64, _META, _IDS = struct.Struct(">Q"), struct.Struct(">QQQ"), struct.Struct(">II")
_SNAPSHOT, _CHUNK_BYTES, _PAGE = "gossipflow.snapshot", 1 << 20, 1024


class TaskId(NamedTuple):
    """A partition task: stage ``stage`` of flow ``flow``, partition ``partition``."""

    flow: str
    stage: int
    partition: int


class Accepted(NamedTuple):
    """The replica set (primary first) accepted for a task at ``epoch``; (0, ()) if none."""

    epoch: int
    members: tuple[str, ...]


class TaskMeta(NamedTuple):
    """A task's commit log position; all 0 for an unknown task."""

    last: int  # number of the last applied commit
    epoch: int  # epoch of that commit
    promised: int  # highest epoch promised with set_promise


def task_prefix(task: TaskId) -> bytes:
    """Returns the key prefix of ``task`` (see the module docstring).

    Raises:
        ValueError: the flow name holds NUL, or stage/partition is not in 0..2**32-1.
    """
    flow = task.flow.encode()
    if b"\x00" in flow:
        raise ValueError(f"flow name {task.flow!r} holds a NUL character; rename the flow")
    try:
        return flow + b"\x00" + _IDS.pack(task.stage, task.partition)
    except struct.error as err:
        raise ValueError(f"task {task}: stage and partition must be in 0..2**32-1") from err


def _id(name: str) -> bytes:
    if "\x00" in name:
        raise InvalidCommitError(f"id {name!r} holds a NUL character; ids are NUL-free")
    return name.encode()


def _all(values: Iterable[Any], kind: type) -> bool:
    return set(map(type, values)) <= {kind}  # C-speed type check of a whole batch


@dataclass(slots=True)
class Commit:
    """The write-set of one partition-task commit; msgpack-serialisable.

    Deletes are applied before puts (a key in both ends up put). Outbox sequences
    must not be below ``Store.next_sequences`` for their destination.
    """

    task: TaskId
    epoch: int
    number: int  # 1, 2, 3... per task: the position in the task's commit log
    state_puts: dict[bytes, bytes] = field(default_factory=dict)
    state_deletes: list[bytes] = field(default_factory=list)
    offsets: dict[str, bytes] = field(default_factory=dict)  # source split -> offset
    marks: dict[str, int] = field(default_factory=dict)  # origin task -> highest sequence
    outbox_puts: list[tuple[str, int, bytes]] = field(default_factory=list)
    outbox_deletes: list[tuple[str, int]] = field(default_factory=list)  # acknowledged

    def to_bytes(self) -> bytes:
        """Returns the commit as msgpack bytes, read back by :meth:`from_bytes`."""
        return msgpack.packb([FORMAT, tuple(self.task), self.epoch, self.number,
                              self.state_puts, self.state_deletes, self.offsets, self.marks,
                              self.outbox_puts, self.outbox_deletes], use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> Commit:
        """Decodes and type-checks bytes from :meth:`to_bytes` (possibly from the network).

        Raises:
            DecodeError: not msgpack, another format, or a field of the wrong type.
        """
        try:
            fmt, task, epoch, number, sp, sd, off, marks, op, od = msgpack.unpackb(data)
            c = cls(TaskId(*task), epoch, number, sp, sd, off, marks,
                    [tuple(e) for e in op], [tuple(e) for e in od])
            ok = (fmt == FORMAT and list(map(type, task)) == [str, int, int]
                  and _all((epoch, number), int) and _all(sp, bytes)
                  and _all(sp.values(), bytes) and _all(sd, bytes) and _all(off, str)
                  and _all(off.values(), bytes) and _all(marks, str)
                  and _all(marks.values(), int)
                  and all(list(map(type, e)) == [str, int, bytes] for e in c.outbox_puts)
                  and all(list(map(type, e)) == [str, int] for e in c.outbox_deletes))
        except (ValueError, TypeError, AttributeError) as err:
            raise DecodeError(f"not a commit: {err}") from err
        if not ok:
            raise DecodeError(f"not a commit of format {FORMAT}: a field has the wrong type")
        return c


class _Gate:
    """Reads run together; map growth and aborts run alone, with no read in flight."""

    def __init__(self) -> None:
        self._cond, self._readers, self._shut = threading.Condition(), 0, False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._shut)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._shut)
            self._shut = True
            self._cond.wait_for(lambda: not self._readers)
        try:
            yield
        finally:
            with self._cond:
                self._shut = False
                self._cond.notify_all()


class Store:
    """The LMDB environment of one daemon: partition-task data and daemon-wide records.

    Args:
        path: directory of the environment (created if missing).
        map_size: initial map size in bytes; doubles whenever a write needs more.
        sync: fsync every commit (durable against power loss); False survives
            process crashes only.
        max_map_size: the map never grows past this (address space, not disk).

    Raises:
        ConfigError: map_size not in 1..max_map_size.
        StoreError: path is not a directory, is open elsewhere, or holds foreign data.
    """

    def __init__(self, path: str | Path, map_size: int = 64 << 20, sync: bool = True,
                 max_map_size: int = 1 << 40) -> None:
        if not 0 < map_size <= max_map_size:
            raise ConfigError(f"map_size must be in 1..{max_map_size}, not {map_size}")
        self.path, self._max_map_size, self._closed = Path(path), max_map_size, False
        self._gate, self._wlock = _Gate(), threading.Lock()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(self.path / "gossipflow.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(f"{self.path}: cannot use as a store directory "
                             f"({err.strerror}); pass a directory path") from err
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._open(map_size, sync)
        except BaseException as err:
            os.close(self._lock)
            if isinstance(err, BlockingIOError):
                raise StoreError(f"{self.path}: already open by another Store or process; "
                                 "stop it or give this daemon its own --data-dir") from err
            raise

    def _open(self, map_size: int, sync: bool) -> None:
        env = None
        try:
            env = lmdb.open(str(self.path), map_size=map_size, max_dbs=len(_TASK_DBS) + 2,
                            subdir=True, sync=sync, metasync=sync, writemap=False,
                            max_readers=126)
            fresh = env.stat()["entries"] == 0  # the main db lists the named dbs
            with env.begin(write=True) as txn:
                dbs = [env.open_db(n.encode(), txn=txn, create=fresh)
                       for n in _TASK_DBS + ("accepted", "meta")]
                if fresh:
                    txn.put(_FORMAT_KEY, _U64.pack(FORMAT), db=dbs[-1])
                elif txn.get(_FORMAT_KEY, db=dbs[-1]) != _U64.pack(FORMAT):
                    raise lmdb.IncompatibleError(f"no gossipflow format-{FORMAT} mark")
        except lmdb.Error as err:
            if env is not None:
                env.close()
            raise StoreError(f"{self.path}: not a usable gossipflow store ({err}); "
                             "use an empty directory or one written by gossipflow") from err
        self.created = fresh
        """Whether this open created the store (a first start, or a wiped data dir)."""
        self._env, self._task_dbs, self._accepted, self._meta = env, dbs[:-2], dbs[-2], dbs[-1]
        self._state, self._offsets, self._marks, self._outbox, self._seqs, self._tmeta = dbs[:-2]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the environment and releases the directory; idempotent."""
        with self._wlock, self._gate.exclusive():
            if not self._closed:
                self._closed = True
                self._env.close()
                os.close(self._lock)

    @property
    def map_size(self) -> int:
        """The current map size in bytes."""
        return self._env.info()["map_size"]

    @contextmanager
    def _read(self) -> Iterator[lmdb.Transaction]:
        with self._gate.shared():
            try:
                with self._env.begin(buffers=False) as txn:
                    yield txn
            except lmdb.Error as err:
                raise StoreError(f"{self.path}: read failed: {err}") from err

    def _write(self, fn: Callable[[lmdb.Transaction], T], need: int = 0) -> T:
        """Runs fn in one write transaction; grows the map and retries on MapFullError."""
        with self._wlock:
            while True:
                try:
                    return self._attempt(fn)
                except lmdb.MapFullError:
                    self._grow()
                except (lmdb.BadValsizeError, struct.error, TypeError) as err:
                    raise InvalidCommitError(
                        f"{self.path}: a key is empty or longer than {self._env.max_key_size()}"
                        " bytes with its task prefix, a number is outside 0..2**64-1, or a "
                        f"field has the wrong type ({err})") from err
                except (lmdb.Error, OSError) as err:
                    if self._disk_full(err, need):
                        raise StoreFullError(
                            f"{self.path}: disk full ({err}); the commit was aborted and the "
                            "store is intact. Free space on that file system or move the data "
                            "directory to a larger one, then retry") from err
                    raise StoreError(f"{self.path}: write failed: {err}") from err

    def _attempt(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        txn = self._env.begin(write=True, buffers=False)
        try:
            result = fn(txn)
        except BaseException:
            # py-lmdb 3 makes a write abort wait until no LMDB call is in flight on any
            # thread, which busy readers can put off forever: drain and hold readers first.
            with self._gate.exclusive():
                txn.abort()
            raise
        txn.commit()  # if this fails, LMDB has freed the transaction
        return result

    def _grow(self) -> None:
        size = self._env.info()["map_size"]
        if size >= self._max_map_size:
            raise StoreFullError(
                f"{self.path}: the LMDB map is full at max_map_size={size} bytes; the commit "
                "was aborted and the store is intact. Raise max_map_size or move partitions "
                "to other members")
        new = min(size * 2, self._max_map_size)
        with self._gate.exclusive():  # no transaction of this process is live here
            self._env.set_mapsize(new)
        log.info("event=store_map_grown path=%s from=%d to=%d", self.path, size, new)

    def _disk_full(self, err: Exception, need: int) -> bool:
        if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space" in str(err):
            return True
        # LMDB 0.9 reports a short pwrite, the usual face of a full disk, as EIO.
        if "Input/output error" in str(err) or isinstance(err, lmdb.DiskError):
            st = os.statvfs(self.path)
            return st.f_bavail * st.f_frsize < 2 * need + (1 << 20)
        return False

    @staticmethod
    def _range(txn: lmdb.Transaction, db: Any, prefix: bytes,
               start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Yields (key without prefix, value) from prefix + start while under prefix."""
        cur, n = txn.cursor(db=db), len(prefix)
        if cur.set_range(prefix + start):
            for k, v in cur:
                if not k.startswith(prefix):
                    return
                yield k[n:], v

    def apply(self, commit: Commit) -> bool:
        """Applies one commit atomically and records its number and epoch.

        Returns:
            True if applied; False if a commit of that number was applied before (no-op).

        Raises:
            StaleEpochError: commit.epoch is below the task's promise or last epoch.
            CommitGapError: commit.number is past the task's last number + 1.
            InvalidCommitError: an outbox sequence below next_sequences, NUL in an id, ...
            StoreFullError: the disk (or the map at max_map_size) is full; nothing written.
        """
        return self._write(lambda txn: self._apply(txn, commit), _size(commit))

    def apply_many(self, commits: list[Commit]) -> list[bool | StaleCommitError]:
        """Applies commits in order in one transaction (a replica's batch): each one's
        result as :meth:`apply` would return it, or the StaleCommitError it would raise
        (that commit is skipped, the others stand).

        Raises:
            InvalidCommitError, StoreFullError: as for apply; then nothing is written.
        """
        def write(txn: lmdb.Transaction) -> list[bool | StaleCommitError]:
            results: list[bool | StaleCommitError] = []
            for commit in commits:
                try:
                    results.append(self._apply(txn, commit))
                except StaleCommitError as err:  # raised before that commit wrote anything
                    results.append(err)
            return results

        return self._write(write, sum(map(_size, commits)))

    def _apply(self, txn: lmdb.Transaction, c: Commit) -> bool:
        p = task_prefix(c.task)
        raw = txn.get(p, db=self._tmeta)
        last, epoch, promised = _META.unpack(raw) if raw else (0, 0, 0)
        if c.epoch < max(epoch, promised):
            raise StaleEpochError(f"task {c.task}: commit {c.number} is from epoch {c.epoch}"
                                  f", below epoch {max(epoch, promised)} promised or seen "
                                  "here; a newer primary exists, step down")
        if c.number <= last:
            return False
        if c.number != last + 1:
            raise CommitGapError(f"task {c.task}: commit {c.number} does not follow the "
                                 f"last applied commit {last}; send {last + 1} first")
        for k in c.state_deletes:
            txn.delete(p + k, db=self._state)
        if c.state_puts:
            txn.cursor(db=self._state).putmulti([(p + k, v) for k, v in c.state_puts.items()])
        for split, offset in c.offsets.items():
            txn.put(p + _id(split), offset, db=self._offsets)
        for origin, mark in c.marks.items():
            txn.put(p + _id(origin), _U64.pack(mark), db=self._marks)
        for dest, seq in c.outbox_deletes:
            txn.delete(p + _id(dest) + b"\x00" + _U64.pack(seq), db=self._outbox)
        nexts: dict[str, int] = {}
        for dest, seq, payload in c.outbox_puts:
            if dest not in nexts:
                raw = txn.get(p + _id(dest), db=self._seqs)
                nexts[dest] = _U64.unpack(raw)[0] if raw else 0
            if seq < nexts[dest]:
                raise InvalidCommitError(
                    f"task {c.task}: outbox sequence {seq} to {dest!r} is below the next "
                    f"sequence {nexts[dest]}; take sequences from next_sequences()")
            txn.put(p + _id(dest) + b"\x00" + _U64.pack(seq), payload, db=self._outbox)
            nexts[dest] = seq + 1
        for dest, nxt in nexts.items():
            txn.put(p + _id(dest), _U64.pack(nxt), db=self._seqs)
        txn.put(p, _META.pack(c.number, c.epoch, promised), db=self._tmeta)
        return True

    def set_promise(self, task: TaskId, epoch: int) -> bool:
        """Promises to refuse commits of ``task`` from epochs below ``epoch``.

        Returns:
            True if the promise now stands at ``epoch``; False (unchanged) if a higher
            epoch was promised or committed already.
        """
        p = task_prefix(task)

        def write(txn: lmdb.Transaction) -> bool:
            raw = txn.get(p, db=self._tmeta)
            last, ep, promised = _META.unpack(raw) if raw else (0, 0, 0)
            if epoch < max(ep, promised):
                return False
            txn.put(p, _META.pack(last, ep, epoch), db=self._tmeta)
            return True

        return self._write(write)

    def accept(self, task: TaskId, epoch: int, members: Iterable[str]) -> int:
        """Accepts ``members`` as the task's replica set at ``epoch`` unless a higher epoch
        was promised or committed here; then promises ``epoch`` at least.

        Returns:
            The highest epoch promised or seen here afterwards: ``epoch`` if accepted.
        """
        p, value = task_prefix(task), msgpack.packb([epoch, list(members)])

        def write(txn: lmdb.Transaction) -> int:
            raw = txn.get(p, db=self._tmeta)
            last, ep, promised = _META.unpack(raw) if raw else (0, 0, 0)
            if epoch < max(ep, promised):
                return max(ep, promised)
            if epoch >= self._accepted_in(txn, p).epoch:
                txn.put(p, value, db=self._accepted)
            txn.put(p, _META.pack(last, ep, epoch), db=self._tmeta)
            return epoch

        return self._write(write)

    def recover_vote(self, task: TaskId, accepted: Accepted, promise: int) -> None:
        """Takes the newest accepted set the other voters hold and promises at least
        ``promise``: a member whose store was lost recovering its vote. Neither ever
        goes down."""
        p, value = task_prefix(task), msgpack.packb([accepted.epoch, list(accepted.members)])

        def write(txn: lmdb.Transaction) -> None:
            if accepted.epoch > self._accepted_in(txn, p).epoch:
                txn.put(p, value, db=self._accepted)
            raw = txn.get(p, db=self._tmeta)
            last, ep, promised = _META.unpack(raw) if raw else (0, 0, 0)
            txn.put(p, _META.pack(last, ep, max(promised, promise)), db=self._tmeta)

        self._write(write)

    def accepted(self, task: TaskId) -> Accepted:
        """Returns the replica set this member last accepted for the task, and its epoch."""
        with self._read() as txn:
            return self._accepted_in(txn, task_prefix(task))

    def _accepted_in(self, txn: lmdb.Transaction, prefix: bytes) -> Accepted:
        raw = txn.get(prefix, db=self._accepted)
        if raw is None:
            return Accepted(0, ())
        epoch, members = msgpack.unpackb(raw)
        return Accepted(epoch, tuple(members))

    def task_meta(self, task: TaskId) -> TaskMeta:
        """Returns the task's last commit number, its epoch and the promised epoch."""
        with self._read() as txn:
            raw = txn.get(task_prefix(task), db=self._tmeta)
        return TaskMeta(*_META.unpack(raw)) if raw else TaskMeta(0, 0, 0)

    def load_state(self, task: TaskId) -> dict[bytes, bytes]:
        """Returns the whole keyed state of a task (for a warm start)."""
        with self._read() as txn:
            return dict(self._range(txn, self._state, task_prefix(task)))

    def get_state(self, task: TaskId, key: bytes) -> bytes | None:
        """Returns the value of one state key, or None."""
        with self._read() as txn:
            return txn.get(task_prefix(task) + key, db=self._state)

    def iter_state(self, task: TaskId, start: bytes = b"",
                   limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Yields up to ``limit`` (key, value) pairs in key order, from ``start`` on.

        Reads pages of 1024 in one transaction each: each page is consistent, the scan
        is not (use snapshot for that), and no transaction is held between yields.
        """
        p, left = task_prefix(task), limit
        while left is None or left > 0:
            n = _PAGE if left is None else min(_PAGE, left)
            with self._read() as txn:
                page = list(islice(self._range(txn, self._state, p, start), n))
            yield from page
            if len(page) < n:
                return
            left, start = None if left is None else left - n, page[-1][0] + b"\x00"

    def offsets(self, task: TaskId) -> dict[str, bytes]:
        """Returns the committed offset of each source split of a task."""
        with self._read() as txn:
            return {k.decode(): v for k, v in self._range(txn, self._offsets, task_prefix(task))}

    def marks(self, task: TaskId) -> dict[str, int]:
        """Returns the highest applied sequence of each upstream origin of a task."""
        with self._read() as txn:
            return {k.decode(): _U64.unpack(v)[0]
                    for k, v in self._range(txn, self._marks, task_prefix(task))}

    def outbox(self, task: TaskId, destination: str | None = None) -> list[tuple[str, int, bytes]]:
        """Returns the pending outbox entries (destination, sequence, payload), sorted."""
        sub = b"" if destination is None else _id(destination) + b"\x00"
        with self._read() as txn:
            entries = [(sub + k, v) for k, v in
                       self._range(txn, self._outbox, task_prefix(task) + sub)]
        return [(k[:-9].decode(), _U64.unpack(k[-8:])[0], v) for k, v in entries]

    def next_sequences(self, task: TaskId) -> dict[str, int]:
        """Returns, per destination ever written to, the next outbox sequence to use."""
        with self._read() as txn:
            return {k.decode(): _U64.unpack(v)[0]
                    for k, v in self._range(txn, self._seqs, task_prefix(task))}

    def tasks(self) -> list[TaskId]:
        """Returns every task with a commit or a promise here, in TaskId order."""
        with self._read() as txn:
            keys = [k for k, _ in self._range(txn, self._tmeta, b"")]
        return [TaskId(k[:-9].decode(), *_IDS.unpack(k[-8:])) for k in keys]

    def snapshot(self, task: TaskId) -> Iterator[bytes]:
        """Returns msgpack chunks (about 1 MiB each) of all of a task's data and meta.

        Read eagerly in one transaction, so consistent at one commit; costs the task's
        data size in memory (the runtime holds its state in memory anyway).
        """
        p = task_prefix(task)
        chunks, total = [msgpack.packb([_SNAPSHOT, FORMAT, tuple(task)])], 0
        with self._read() as txn:
            for name, db in zip(_TASK_DBS, self._task_dbs):
                pairs, size = [], 0
                for pair in self._range(txn, db, p):
                    pairs.append(pair)
                    size += len(pair[0]) + len(pair[1])
                    if size >= _CHUNK_BYTES:
                        chunks.append(msgpack.packb([name, pairs]))
                        total, pairs, size = total + len(pairs), [], 0
                if pairs:
                    chunks.append(msgpack.packb([name, pairs]))
                    total += len(pairs)
        return iter(chunks + [msgpack.packb(["end", total])])

    def restore(self, task: TaskId, chunks: Iterable[bytes], epoch: int | None = None) -> None:
        """Replaces all of a task's data with a snapshot of it, in one transaction.

        With ``epoch`` (a primary bringing its replica level): refused if this store
        promised or saw a higher epoch, and afterwards promised ``epoch`` at least.

        Raises:
            StaleEpochError: ``epoch`` is below the task's promise or last epoch here.
            StoreError: the chunks are not a complete snapshot of ``task``; nothing written.
            StoreFullError: as for apply.
        """
        p, parts, count, size = task_prefix(task), [], -1, 0
        dbs = dict(zip(_TASK_DBS, self._task_dbs))
        try:
            it = iter(chunks)
            magic, fmt, tid = msgpack.unpackb(next(it))
            if magic != _SNAPSHOT or fmt != FORMAT or TaskId(*tid) != task:
                raise ValueError(f"header {magic!r} format {fmt} task {tid}")
            for chunk in it:
                size += len(chunk)
                name, body = msgpack.unpackb(chunk)
                if name == "end":
                    count = body
                    break
                parts.append((dbs[name], [(p + k, v) for k, v in body]))
        except (StopIteration, ValueError, TypeError, KeyError) as err:
            raise StoreError(f"{self.path}: not a format-{FORMAT} snapshot of task {task} "
                             f"({err!r}); nothing was written") from err
        if count != sum(len(pairs) for _, pairs in parts):
            raise StoreError(f"{self.path}: snapshot of task {task} is incomplete; "
                             "nothing was written, copy it again")

        def write(txn: lmdb.Transaction) -> None:
            if epoch is not None:
                raw = txn.get(p, db=self._tmeta)
                _, seen, promised = _META.unpack(raw) if raw else (0, 0, 0)
                if epoch < max(seen, promised):
                    raise StaleEpochError(f"task {task}: snapshot from epoch {epoch}, below "
                                          f"epoch {max(seen, promised)} promised or seen here")
            self._drop(txn, p)
            for db, pairs in parts:
                txn.cursor(db=db).putmulti(pairs)
            if epoch is not None:
                raw = txn.get(p, db=self._tmeta)
                last, seen, promised = _META.unpack(raw) if raw else (0, 0, 0)
                txn.put(p, _META.pack(last, seen, max(promised, epoch)), db=self._tmeta)

        self._write(write, size)

    def drop_copy(self, task: TaskId) -> int:
        """Deletes a task's data but keeps this member's vote on it (promise, accepted
        set): a stale copy on a member outside the task's replica set. Returns the bytes
        of keys and values deleted."""
        p = task_prefix(task)

        def write(txn: lmdb.Transaction) -> int:
            raw = txn.get(p, db=self._tmeta)
            _, _, promised = _META.unpack(raw) if raw else (0, 0, 0)
            size = sum(len(k) + len(v) for db in self._task_dbs[:-1]
                       for k, v in self._range(txn, db, p))
            self._drop(txn, p)
            txn.put(p, _META.pack(0, 0, promised), db=self._tmeta)
            return size

        return self._write(write)

    def sizes(self) -> dict[TaskId, int]:
        """Bytes of keys and values each task's data takes here (its meta excluded)."""
        out: dict[TaskId, int] = {}
        with self._read() as txn:
            for db in self._task_dbs[:-1]:
                cur = txn.cursor(db=db)
                for k, v in cur:
                    task = TaskId(k[:k.index(b"\x00")].decode(),
                                  *_IDS.unpack(k[k.index(b"\x00") + 1:k.index(b"\x00") + 9]))
                    out[task] = out.get(task, 0) + len(k) + len(v)
        return out

    def drop_task(self, task: TaskId) -> None:
        """Deletes all data of a task and its accepted replica set, in one transaction."""
        p = task_prefix(task)

        def write(txn: lmdb.Transaction) -> None:
            self._drop(txn, p)
            txn.delete(p, db=self._accepted)

        self._write(write)

    def _drop(self, txn: lmdb.Transaction, prefix: bytes) -> None:
        for db in self._task_dbs:
            cur = txn.cursor(db=db)
            if cur.set_range(prefix):
                while cur.key().startswith(prefix) and cur.delete():
                    pass

    def put_meta(self, key: str, value: bytes) -> None:
        """Stores a small daemon-wide record (e.g. the flow registry) under a non-empty key."""
        k = _meta_key(key)
        self._write(lambda txn: txn.put(k, value, db=self._meta), len(value))

    def get_meta(self, key: str) -> bytes | None:
        """Returns a daemon-wide record, or None."""
        with self._read() as txn:
            return txn.get(_meta_key(key), db=self._meta)


def _size(commit: Commit) -> int:
    """About how many bytes a commit writes (to grow the map ahead of it)."""
    return sum(map(len, commit.state_puts.values())) + 24 * len(commit.state_puts)


def _meta_key(key: str) -> bytes:
    if not key or key.startswith("\x00"):
        raise ValueError(f"meta key {key!r} must be non-empty and not start with NUL")
    return key.encode()
