"""Tests for daemon.store: commits, numbering, epochs, snapshots, map growth, full disk, crashes."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.errors import (
    CommitGapError,
    DecodeError,
    InvalidCommitError,
    StaleCommitError,
    StaleEpochError,
    StoreError,
    StoreFullError,
)
from daemon.store import FORMAT, Commit, Store, TaskId, TaskMeta

T = TaskId("wordcount", 1, 3)
OTHER = TaskId("wordcount", 1, 4)


@dataclass
class Model:
    """What commits 1..last must have produced, computed with plain dicts."""

    state: dict[bytes, bytes] = field(default_factory=dict)
    offsets: dict[str, bytes] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)
    outbox: dict[tuple[str, int], bytes] = field(default_factory=dict)
    nexts: dict[str, int] = field(default_factory=dict)
    last: int = 0
    epoch: int = 0

    def apply(self, c: Commit) -> None:
        for k in c.state_deletes:
            self.state.pop(k, None)
        self.state.update(c.state_puts)
        self.offsets.update(c.offsets)
        self.marks.update(c.marks)
        for d, s in c.outbox_deletes:
            self.outbox.pop((d, s), None)
        for d, s, payload in c.outbox_puts:
            self.outbox[(d, s)] = payload
            self.nexts[d] = s + 1
        self.last, self.epoch = c.number, c.epoch

    def check(self, store: Store, task: TaskId = T, promised: int = 0) -> None:
        assert store.task_meta(task) == TaskMeta(self.last, self.epoch, promised)
        assert store.load_state(task) == self.state
        assert store.offsets(task) == self.offsets
        assert store.marks(task) == self.marks
        assert store.outbox(task) == [(d, s, p) for (d, s), p in sorted(self.outbox.items())]
        assert store.next_sequences(task) == self.nexts


def make_commit(n: int, task: TaskId = T, keys: int = 300, size: int = 200) -> Commit:
    """Commit n of a deterministic history: overwrites, deletes, outbox puts and acks."""
    rng = random.Random(n)
    return Commit(
        task, epoch=1 + n // 50, number=n,
        state_puts={b"k%04d" % rng.randrange(2000): b"%d:" % n + rng.randbytes(size)
                    for _ in range(keys)},
        state_deletes=[b"k%04d" % rng.randrange(2000) for _ in range(keys // 10)],
        offsets={f"split-{n % 3}": b"offset-%d" % n},
        marks={f"upstream-{n % 4}": n * 10},
        outbox_puts=[(f"dest-{n % 2}", n, b"out-%d" % n), ("all", n, b"x" * (n % 7))],
        outbox_deletes=[(f"dest-{(n - 3) % 2}", n - 3), ("all", n - 2)] if n > 3 else [])


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "db", sync=False) as s:
        yield s


def test_every_field_round_trips(store: Store) -> None:
    c = Commit(T, epoch=3, number=1, state_puts={b"a": b"1", b"b": b"", b"": b"empty key"},
               offsets={"file-0": b"\x00\x01", "file-1": b"99"}, marks={"wordcount/0/2": 41},
               outbox_puts=[("sink", 1, b"p1"), ("agg/2/0", 5, b"p5"), ("sink", 2, b"p2")])
    assert store.apply(c) is True
    assert store.task_meta(T) == TaskMeta(last=1, epoch=3, promised=0)
    assert store.load_state(T) == {b"a": b"1", b"b": b"", b"": b"empty key"}
    assert store.get_state(T, b"a") == b"1"
    assert store.get_state(T, b"zz") is None
    assert store.get_state(OTHER, b"a") is None
    assert list(store.iter_state(T)) == [(b"", b"empty key"), (b"a", b"1"), (b"b", b"")]
    assert list(store.iter_state(T, start=b"a", limit=1)) == [(b"a", b"1")]
    assert store.offsets(T) == {"file-0": b"\x00\x01", "file-1": b"99"}
    assert store.marks(T) == {"wordcount/0/2": 41}
    assert store.outbox(T) == [("agg/2/0", 5, b"p5"), ("sink", 1, b"p1"), ("sink", 2, b"p2")]
    assert store.outbox(T, "sink") == [("sink", 1, b"p1"), ("sink", 2, b"p2")]
    assert store.outbox(T, "sin") == []
    assert store.next_sequences(T) == {"agg/2/0": 6, "sink": 3}
    assert store.tasks() == [T]
    assert Commit.from_bytes(c.to_bytes()) == c
    c2 = Commit(T, epoch=3, number=2, state_puts={b"a": b"2"}, state_deletes=[b"b", b"nope"],
                offsets={"file-0": b"\x02"}, marks={"wordcount/0/2": 50, "x": 1},
                outbox_deletes=[("sink", 1), ("sink", 99)])
    assert store.apply(c2) is True
    assert store.load_state(T) == {b"a": b"2", b"": b"empty key"}
    assert store.offsets(T) == {"file-0": b"\x02", "file-1": b"99"}
    assert store.marks(T) == {"wordcount/0/2": 50, "x": 1}
    assert store.outbox(T) == [("agg/2/0", 5, b"p5"), ("sink", 2, b"p2")]


def test_outbox_acks_keep_next_sequences(store: Store) -> None:
    store.apply(Commit(T, 1, 1, outbox_puts=[("d", 1, b"a"), ("d", 2, b"b")]))
    store.apply(Commit(T, 1, 2, outbox_deletes=[("d", 1), ("d", 2)]))
    assert store.outbox(T) == []
    assert store.next_sequences(T) == {"d": 3}
    with pytest.raises(InvalidCommitError, match="sequence 2 to 'd' is below the next sequence 3"):
        store.apply(Commit(T, 1, 3, state_puts={b"k": b"v"}, outbox_puts=[("d", 2, b"again")]))
    assert store.task_meta(T).last == 2 and store.load_state(T) == {}  # nothing written
    assert store.apply(Commit(T, 1, 3, outbox_puts=[("d", 3, b"c")])) is True
    assert store.outbox(T) == [("d", 3, b"c")]


def test_commit_numbering(store: Store) -> None:
    assert store.apply(Commit(T, 1, 1, state_puts={b"k": b"1"})) is True
    assert store.apply(Commit(T, 1, 1, state_puts={b"k": b"dup"})) is False
    assert store.get_state(T, b"k") == b"1"
    with pytest.raises(CommitGapError, match="commit 3 does not follow the last applied commit 1"):
        store.apply(Commit(T, 1, 3, state_puts={b"k": b"3"}))
    assert isinstance(CommitGapError("x"), StaleCommitError)
    with pytest.raises(CommitGapError):
        store.apply(Commit(OTHER, 1, 2))  # numbering is per task
    assert store.apply(Commit(OTHER, 7, 1, state_puts={b"k": b"other"})) is True
    assert store.apply(Commit(T, 1, 2, state_puts={b"k": b"2"})) is True
    assert store.task_meta(T) == TaskMeta(2, 1, 0)
    assert store.task_meta(OTHER) == TaskMeta(1, 7, 0)
    assert store.get_state(T, b"k") == b"2" and store.get_state(OTHER, b"k") == b"other"
    assert store.task_meta(TaskId("unknown", 0, 0)) == TaskMeta(0, 0, 0)


def test_epochs_and_promises(store: Store) -> None:
    assert store.set_promise(T, 4) is True
    assert store.task_meta(T) == TaskMeta(0, 0, 4)
    with pytest.raises(StaleEpochError, match="epoch 3, below epoch 4"):
        store.apply(Commit(T, 3, 1, state_puts={b"k": b"old primary"}))
    assert store.load_state(T) == {}
    assert store.apply(Commit(T, 4, 1)) is True
    assert store.apply(Commit(T, 6, 2)) is True
    assert store.task_meta(T) == TaskMeta(2, 6, 4)
    assert store.set_promise(T, 5) is False  # epoch 6 already committed
    assert store.set_promise(T, 6) is True
    assert store.set_promise(T, 9) is True
    with pytest.raises(StaleEpochError):
        store.apply(Commit(T, 6, 3))
    with pytest.raises(StaleEpochError):
        store.apply(Commit(T, 6, 2))  # even a duplicate: the sender must learn it is deposed
    assert store.task_meta(T) == TaskMeta(2, 6, 9)
    assert store.tasks() == [T]


def test_meta_ids_and_decoding(store: Store) -> None:
    assert store.get_meta("flows") is None
    store.put_meta("flows", b"v1")
    store.put_meta("flows", b"v2")
    assert store.get_meta("flows") == b"v2"
    with pytest.raises(ValueError):
        store.put_meta("\x00format", b"x")
    with pytest.raises(ValueError, match="NUL"):
        store.apply(Commit(TaskId("a\x00b", 0, 0), 1, 1))
    with pytest.raises(InvalidCommitError, match="NUL"):
        store.apply(Commit(T, 1, 1, offsets={"a\x00": b""}))
    with pytest.raises(InvalidCommitError, match="longer than 511"):
        store.apply(Commit(T, 1, 1, state_puts={b"k" * 600: b""}))
    with pytest.raises(InvalidCommitError):
        store.apply(Commit(T, 1, 1, marks={"m": -1}))
    assert store.task_meta(T) == TaskMeta(0, 0, 0) and store.tasks() == []
    for bad in (b"\xc1", b"\x93\x01\x02\x03", Commit(T, 1, 1).to_bytes()[:-1],
                Commit(T, 1, 1, state_puts={b"k": "str"}).to_bytes()):  # type: ignore[dict-item]
        with pytest.raises(DecodeError):
            Commit.from_bytes(bad)
    ids = [TaskId("b", 0, 0), TaskId("a", 2, 0), TaskId("ab", 0, 0), TaskId("a", 1, 1),
           TaskId("a", 1, 0), TaskId("a", 10, 0)]
    for t in ids:
        store.apply(Commit(t, 1, 1, state_puts={b"x": t.flow.encode()}))
    assert store.tasks() == sorted(ids)
    assert [store.get_state(t, b"x") for t in ids] == [t.flow.encode() for t in ids]


def test_iter_state_pages(store: Store) -> None:
    state = {b"%05d" % i: b"v%d" % i for i in range(2500)}
    store.apply(Commit(T, 1, 1, state_puts=state))
    store.apply(Commit(OTHER, 1, 1, state_puts={b"0": b"other"}))
    assert list(store.iter_state(T)) == sorted(state.items())
    assert list(store.iter_state(T, start=b"00999", limit=1500)) == sorted(state.items())[999:2499]
    assert list(store.iter_state(T, start=b"02499x")) == []
    assert list(store.iter_state(T, limit=0)) == []


def test_snapshot_restore_and_drop(tmp_path: Path) -> None:
    with Store(tmp_path / "a", sync=False) as a, Store(tmp_path / "b", sync=False) as b:
        model = Model()
        for n in range(1, 41):
            c = make_commit(n, keys=500, size=4000)  # about 40 MB: several chunks
            a.apply(c)
            model.apply(c)
        a.set_promise(T, 3)
        a.apply(make_commit(1, OTHER))
        b.apply(make_commit(1, OTHER, keys=5))  # b's other task differs from a's
        b.apply(Commit(T, 9, 1, state_puts={b"stale": b"1"}, marks={"gone": 1}))
        chunks = list(a.snapshot(T))
        assert len(chunks) > 5
        with pytest.raises(StoreError, match="incomplete"):
            b.restore(T, chunks[:-1])
        with pytest.raises(StoreError, match=f"not a format-{FORMAT} snapshot of task"):
            b.restore(OTHER, chunks)
        assert b.load_state(T) == {b"stale": b"1"}
        b.restore(T, iter(chunks))
        model.check(b, promised=3)
        assert b.load_state(OTHER) == make_commit(1, OTHER, keys=5).state_puts
        assert b.tasks() == [T, OTHER]
        a.drop_task(T)
        assert a.tasks() == [OTHER]
        Model().check(a)
        assert a.load_state(OTHER) == make_commit(1, OTHER).state_puts
        assert a.outbox(OTHER) == [("all", 1, b"x"), ("dest-1", 1, b"out-1")]
        b.drop_task(OTHER)
        model.check(b, promised=3)
        a.restore(T, b.snapshot(T))
        model.check(a, promised=3)


def test_map_grows_on_demand(tmp_path: Path) -> None:
    with Store(tmp_path / "db", map_size=1 << 20, sync=False) as store:
        expected: dict[bytes, bytes] = {}
        for n in range(1, 41):  # 40 commits of 1000 x 512 bytes: 20 MiB
            puts = {b"%02d-%04d" % (n, i): bytes([n]) * 512 for i in range(1000)}
            assert store.apply(Commit(T, 1, n, state_puts=puts)) is True
            expected.update(puts)
        assert store.map_size >= 32 << 20
        assert store.load_state(T) == expected
    with Store(tmp_path / "db", map_size=1 << 20, sync=False) as store:
        assert store.map_size >= 20 << 20 and store.task_meta(T).last == 40
        assert len(store.load_state(T)) == 40_000


def test_map_growth_waits_for_readers_in_other_threads(tmp_path: Path) -> None:
    with Store(tmp_path / "db", map_size=1 << 20, sync=False) as store:
        fixed = {b"%04d" % i: b"v" * 100 for i in range(300)}
        store.apply(Commit(OTHER, 1, 1, state_puts=fixed))
        stop, failures, reads = threading.Event(), [], [0]

        def reader() -> None:
            try:
                while not stop.is_set():
                    assert store.get_state(OTHER, b"0007") == b"v" * 100
                    assert dict(store.iter_state(OTHER)) == fixed
                    assert store.task_meta(OTHER).last == 1
                    reads[0] += 1
            except (AssertionError, StoreError) as err:  # reported in the main thread
                failures.append(err)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        for n in range(1, 31):
            store.apply(Commit(T, 1, n, state_puts={b"%02d%04d" % (n, i): b"x" * 512
                                                    for i in range(1000)}))
        stop.set()
        for t in threads:
            t.join()
        assert failures == [] and reads[0] > 0 and store.map_size >= 16 << 20
        assert len(store.load_state(T)) == 30_000


def test_map_full_at_max_map_size(tmp_path: Path) -> None:
    model, n = Model(), 0
    with Store(tmp_path / "db", map_size=1 << 20, max_map_size=1 << 20, sync=False) as store:
        with pytest.raises(StoreFullError, match=r"map is full at max_map_size=1048576 .*intact"):
            for n in range(1, 100):
                c = make_commit(n, keys=300, size=500)
                store.apply(c)
                model.apply(c)
        model.check(store)
        assert store.get_meta("x") is None
    with Store(tmp_path / "db", map_size=1 << 20, sync=False) as store:
        assert store.apply(make_commit(n, keys=300, size=500)) is True


@pytest.fixture
def tmpfs(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       check=False, capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a 2 MiB tmpfs to fill (needs root): {r.stderr.strip()}")
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(mnt)], check=True))
    return mnt


def test_full_disk_aborts_and_recovers(tmpfs: Path) -> None:
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * (512 << 10))
    model, n = Model(), 0
    with Store(tmpfs / "db", map_size=16 << 20, sync=True) as store:
        with pytest.raises(StoreFullError, match=f"{tmpfs / 'db'}: disk full .*intact. Free"):
            for n in range(1, 100):
                c = make_commit(n, keys=300, size=300)
                store.apply(c)
                model.apply(c)
        assert n > 2
        model.check(store)
        filler.unlink()
        c = make_commit(n, keys=300, size=300)
        assert store.apply(c) is True
        model.apply(c)
        model.check(store)
    with Store(tmpfs / "db", sync=True) as store:
        model.check(store)


def test_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("hello")
    with pytest.raises(StoreError, match=f"{tmp_path / 'file'}: cannot use as a store directory"):
        Store(tmp_path / "file")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "data.mdb").write_bytes(os.urandom(20000))
    with pytest.raises(StoreError, match=f"{tmp_path / 'garbage'}: not a usable gossipflow store"):
        Store(tmp_path / "garbage")
    env = lmdb.open(str(tmp_path / "foreign"), max_dbs=2)
    env.open_db(b"things")
    env.close()
    with pytest.raises(StoreError, match=f"{tmp_path / 'foreign'}: not a usable gossipflow"):
        Store(tmp_path / "foreign")
    with Store(tmp_path / "ours", sync=False), pytest.raises(StoreError, match="already open"):
        Store(tmp_path / "ours")
    with Store(tmp_path / "ours", sync=False) as again:  # released on close
        assert again.tasks() == []


def _crash_child(path: str, ready: multiprocessing.synchronize.Event) -> None:
    store = Store(path, sync=True)
    n = store.task_meta(T).last
    ready.set()
    while True:
        n += 1
        store.apply(make_commit(n))


def test_sigkill_leaves_whole_commits(tmp_path: Path) -> None:
    ctx, rng = multiprocessing.get_context("fork"), random.Random(7)
    model, lasts = Model(), []
    for _ in range(8):
        ready = ctx.Event()
        child = ctx.Process(target=_crash_child, args=(str(tmp_path / "db"), ready))
        child.start()
        try:
            assert ready.wait(10)
            threading.Event().wait(rng.uniform(0.01, 0.15))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.join()
        assert child.exitcode == -signal.SIGKILL
        with Store(tmp_path / "db", sync=True) as store:
            last = store.task_meta(T).last
            while model.last < last:
                model.apply(make_commit(model.last + 1))
            model.check(store)
        lasts.append(last)
    assert lasts == sorted(lasts) and lasts[-1] > 8


KEYS = [b"", b"a", b"ab", b"b", b"\xff"]


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_commits_match_a_dict_model(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as d, Store(d, map_size=1 << 16, sync=False) as store:
        models = {T: Model(), OTHER: Model()}
        for _ in range(data.draw(st.integers(1, 12))):
            task = data.draw(st.sampled_from([T, OTHER]))
            m = models[task]
            kind = data.draw(st.sampled_from(["commit"] * 4 + ["duplicate", "gap"]))
            if kind == "duplicate" and m.last:
                assert store.apply(Commit(task, m.epoch, m.last, state_puts={b"a": b"x"})) is False
            elif kind == "gap":
                with pytest.raises(CommitGapError):
                    store.apply(Commit(task, m.epoch, m.last + 2))
            else:
                dests = data.draw(st.lists(st.sampled_from(["d1", "d2"]), max_size=3))
                puts, nexts = [], dict(m.nexts)
                for dest in dests:
                    seq = nexts.get(dest, 0) + data.draw(st.integers(0, 2))
                    puts.append((dest, seq, data.draw(st.binary(max_size=4))))
                    nexts[dest] = seq + 1
                pending = sorted(m.outbox)
                c = Commit(
                    task, m.epoch + data.draw(st.integers(0, 1)), m.last + 1,
                    state_puts=data.draw(st.dictionaries(st.sampled_from(KEYS),
                                                         st.binary(max_size=600))),
                    state_deletes=data.draw(st.lists(st.sampled_from(KEYS), max_size=3)),
                    offsets=data.draw(st.dictionaries(st.sampled_from(["s0", "s1"]),
                                                      st.binary(max_size=8))),
                    marks=data.draw(st.dictionaries(st.sampled_from(["u0", "u1"]),
                                                    st.integers(0, 2**64 - 1))),
                    outbox_puts=puts,
                    outbox_deletes=data.draw(st.lists(st.sampled_from(pending), max_size=3))
                    if pending else [])
                assert Commit.from_bytes(c.to_bytes()) == c
                assert store.apply(c) is True
                m.apply(c)
            for t, model in models.items():
                model.check(store, t)
        snap = {t: list(store.snapshot(t)) for t in models}
        store.drop_task(T)
        Model().check(store, T)
        models[OTHER].check(store, OTHER)
        store.restore(T, snap[T])
        for t, model in models.items():
            model.check(store, t)
