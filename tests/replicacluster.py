"""The replication simulation: members on one MemoryNetwork and FakeClock (no sleeps,
no daemons), each a Store in tmp_path, a ReplicaServer and a MemoryTransport
(:class:`ReplicaCluster`), with random valid commit histories and helpers to run
requests and takeover rounds to their end. Used by test_replication, test_handover,
test_owner and test_ownership.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from daemon.clock import FakeClock
from daemon.errors import GossipflowError
from daemon.replication import ReplicaServer
from daemon.store import Commit, Store, TaskId, TaskMeta
from daemon.takeover import Takeover
from daemon.transport.memory import MemoryNetwork

TIMEOUT = 0.2
"""Seconds a replication request waits for its answer."""
FLOW = "wc"
TASK = TaskId(FLOW, 1, 0)


class ReplicaCluster:
    """Members on one MemoryNetwork: each a Store, a ReplicaServer and an endpoint.

    Requests are msgpack ``[kind, args, id]``; the handler answers
    ``msgpack(server.handle(kind, args))``, or msgpack(None) when the server raises.
    ``drop`` and ``duplicate`` are fault rates applied by :meth:`call` to requests
    between members (a member's calls to itself run locally, as in the runtime).
    """

    def __init__(self, tmp_path: Path, names: list[str], seed: int = 0, drop: float = 0.0,
                 duplicate: float = 0.0, latency: tuple[float, float] = (0.0005, 0.002)) -> None:
        self.tmp_path, self.drop, self.duplicate = tmp_path, drop, duplicate
        self.clock = FakeClock()
        self.net = MemoryNetwork(self.clock, seed=seed, latency=latency)
        self.rng = random.Random(seed ^ 0x5EED)
        self.stores: dict[str, Store] = {}
        self.servers: dict[str, ReplicaServer] = {}
        self.endpoints: dict[str, Any] = {}
        self.stats: Counter[str] = Counter()
        self.arrivals: dict[str, list[int]] = {}  # member -> request ids in arrival order
        self._ids = iter(range(1, 1 << 62))
        for name in names:
            self.open_store(name)
            self.start(name)

    def open_store(self, name: str) -> Store:
        self.stores[name] = Store(self.tmp_path / name, map_size=4 << 20, sync=False)
        self.servers[name] = ReplicaServer(self.stores[name])
        return self.stores[name]

    def start(self, name: str) -> None:
        """A new endpoint for ``name`` (first start, or after :meth:`crash`)."""
        endpoint = self.net.transport(name)

        def on_request(data: bytes, reply: Callable[[bytes], None]) -> None:
            kind, args, rid = msgpack.unpackb(data)
            self.arrivals.setdefault(name, []).append(rid)
            try:
                answer = self.servers[name].handle(kind, args)
            except (GossipflowError, ValueError):
                self.stats["refused"] += 1
                answer = None
            reply(msgpack.packb(answer))

        endpoint.start(lambda src, data: None, on_request)
        self.endpoints[name] = endpoint

    def crash(self, name: str) -> None:
        """``name`` dies: unreachable at once, its store closed and opened again (a
        restart's recovery); :meth:`start` brings its endpoint back."""
        self.endpoints[name].close()
        self.stores[name].close()
        self.open_store(name)

    def close(self) -> None:
        for store in self.stores.values():
            store.close()

    def call(self, src: str) -> Callable[[str, str, Any, Callable[[Any], None]], None]:
        """The ``call(member, kind, args, on_reply)`` of member ``src``: on_reply gets
        the decoded answer or None (after TIMEOUT), exactly once, from the clock."""

        def call(member: str, kind: str, args: Any, on_reply: Callable[[Any], None]) -> None:
            if member == src:
                try:
                    answer = self.servers[src].handle(kind, msgpack.unpackb(msgpack.packb(args)))
                except (GossipflowError, ValueError):
                    answer = None
                self.clock.call_later(0, on_reply, answer)
                return
            done = [False]

            def finish(answer: Any) -> None:
                if not done[0]:
                    done[0] = True
                    on_reply(answer)

            def decode(raw: bytes | None) -> None:
                finish(None if raw is None else msgpack.unpackb(raw))

            data = msgpack.packb([kind, args, next(self._ids)])
            self.stats["requests"] += 1
            roll = self.rng.random()
            if roll < self.drop / 2:  # the request never arrives
                self.stats["lost_requests"] += 1
                self.clock.call_later(TIMEOUT, finish, None)
            elif roll < self.drop:  # it arrives and is applied; the reply is lost
                self.stats["lost_replies"] += 1
                self.endpoints[src].request(member, data, TIMEOUT, lambda raw: None)
                self.clock.call_later(TIMEOUT, finish, None)
            else:
                copies = 2 if self.rng.random() < self.duplicate else 1
                self.stats["duplicated"] += copies - 1
                for _ in range(copies):  # the first answer counts, the other is ignored
                    self.endpoints[src].request(member, data, TIMEOUT, decode)

        return call


def content(store: Store, task: TaskId) -> dict[str, Any]:
    """A task's snapshot decoded: {db name: {key: value}}, taskmeta as a TaskMeta."""
    chunks = list(store.snapshot(task))
    out: dict[str, Any] = {}
    for chunk in chunks[1:-1]:
        name, pairs = msgpack.unpackb(chunk)
        out.setdefault(name, {}).update((k, v) for k, v in pairs)
    meta = out.pop("taskmeta", {}).get(b"")
    out["taskmeta"] = TaskMeta(*struct.unpack(">QQQ", meta)) if meta else TaskMeta(0, 0, 0)
    return out


def data_of(snapshot: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int]]:
    """What must match between copies of one history: the data and (last, epoch)
    (the promise is each member's own)."""
    rest = {k: v for k, v in snapshot.items() if k != "taskmeta"}
    return rest, snapshot["taskmeta"][:2]


def sealed(data: tuple[dict[str, Any], tuple[int, int]], epoch: int
           ) -> tuple[dict[str, Any], tuple[int, int]]:
    """``data_of`` a copy after a takeover at ``epoch`` continued from it: the same data
    and one more (empty) commit at that epoch, the seal."""
    return data[0], (data[1][0] + 1, epoch)


class History:
    """Valid random commits for one task: state puts/deletes, offsets, marks, outbox
    puts with increasing sequences and deletes of pending outbox entries."""

    def __init__(self, task: TaskId, rng: random.Random) -> None:
        self.task, self.rng = task, rng
        self.nexts: dict[str, int] = {}
        self.pending: list[tuple[str, int]] = []
        self.marks: dict[str, int] = {}
        self.number = 0

    def next(self, epoch: int) -> Commit:
        r, self.number = self.rng, self.number + 1
        keys = [b"k%02d" % r.randrange(40) for _ in range(r.randrange(6))]
        c = Commit(self.task, epoch, self.number,
                   state_puts={k: r.randbytes(r.randrange(1, 12)) for k in keys},
                   state_deletes=[b"k%02d" % r.randrange(40) for _ in range(r.randrange(3))])
        if r.random() < 0.5:
            c.offsets[f"split{r.randrange(3)}"] = struct.pack(">Q", self.number * 100)
        for origin in r.sample(["0/0", "0/1", "0/2"], r.randrange(3)):
            self.marks[origin] = self.marks.get(origin, 0) + r.randrange(1, 5)
            c.marks[origin] = self.marks[origin]
        for _ in range(r.randrange(4)):
            dest = f"2/{r.randrange(3)}"
            seq = self.nexts.get(dest, 0) + r.randrange(2)
            self.nexts[dest] = seq + 1
            c.outbox_puts.append((dest, seq, r.randbytes(8)))
            self.pending.append((dest, seq))
        for _ in range(min(r.randrange(3), len(self.pending))):
            c.outbox_deletes.append(self.pending.pop(r.randrange(len(self.pending))))
        return c

    def fork(self, rng: random.Random) -> History:
        """A history that goes on from here with other writes (another primary's)."""
        other = History(self.task, rng)
        other.nexts, other.pending = dict(self.nexts), list(self.pending)
        other.marks, other.number = dict(self.marks), self.number
        return other

    def commits(self, count: int, epoch: int) -> list[Commit]:
        return [self.next(epoch) for _ in range(count)]


def entries(batch: list[tuple[int, bytes]], task: TaskId = TASK) -> list[list]:
    """A "commits" request body for one task's commits."""
    return [[task.flow, task.stage, task.partition, data] for _, data in batch]


def ask(cluster: ReplicaCluster, src: str, member: str, kind: str, args: Any) -> Any:
    """One request through the network, run to its answer."""
    got: list[Any] = []
    cluster.call(src)(member, kind, args, got.append)
    cluster.clock.advance(TIMEOUT + 0.01)
    assert len(got) == 1
    return got[0]


def take_over(cluster: ReplicaCluster, me: str, epoch: int, tasks: dict[int, list[TaskId]],
              sets: dict[int, list[str]], members: list[str],
              call: Callable | None = None, voters: frozenset[str] | None = None
              ) -> tuple[list[int], list[tuple[int, int]]]:
    """Run one Takeover round to its end; returns (partitions ready, (partition, seen) failed).
    The flow's voters are ``members`` unless given."""
    ready: list[int] = []
    failed: list[tuple[int, int]] = []
    Takeover(me, cluster.stores[me], call or cluster.call(me), epoch, tasks, sets, members,
             frozenset(members) if voters is None else voters, ready.append,
             lambda p, seen: failed.append((p, seen)),
             soon=lambda fn: cluster.clock.call_later(0, fn)).start()
    cluster.clock.advance(10 * TIMEOUT)
    return ready, failed
