"""Replication of partition-task commits: the primary's log and the replica's side.

A primary applies each commit to its own store, then ships the same bytes
(:meth:`~daemon.store.Commit.to_bytes`) to the other members of the
partition's replica set. :class:`ReplicaLog` keeps, per task, the commits not
yet acknowledged by every replica and what was sent to whom; a commit is
*durable* once every replica has acknowledged it, and only then may its
outputs leave (DESIGN.md, "The partition task", step 4). Commits are
pipelined: the task goes on committing while earlier commits travel.

:class:`ReplicaServer` answers the requests a primary (or a member taking
over) makes of the members' stores: ``probe``, ``promise``, ``commits``,
``snapshot_part``, ``restore_part`` (:mod:`daemon.transfer`), ``accept`` and
``votes``. Every answer carries the task's position so the asker can tell a
gap (resend from there), a refusal (a newer epoch exists: step down) and
success apart.

Epochs are unique per proposer: the round in the high bits, a 32-bit hash of
the member's name in the low bits, so two members taking over in the same
round do not share an epoch (a store accepts commits of its promised epoch).
Two member names with one hash would break that: the odds are about n^2 / 2^33
for n members (1 in 10^7 for 30), accepted here rather than a name registry.

Why nothing is counted twice (whatever the views):

- A task's outputs and its input acknowledgements leave only when its
  commit is on every member of its replica set. A member taking over first
  makes a majority of the flow's voters promise its new epoch, one of them
  from the last durable replica set (:mod:`daemon.ownership`); each then
  refuses commits of lower epochs, so an old primary cut off but alive can
  make no further commit durable and releases nothing more.
- The new primary continues from the most advanced copy answered (highest
  epoch of last commit, then number): it holds every durable commit, so
  every released output and acknowledged input is accounted for. What it
  redoes (inputs past a non-durable commit) was never released and is
  resent under the same outbox sequences, which receivers deduplicate.
- Before it releases anything, the new primary brings every replica to its
  own position (a snapshot where they differ), seals that with one commit of
  its own epoch on all of them, and has a majority of voters accept its
  replica set: from then on all copies share one history, and a commit
  (number, epoch) names the same write-set on every member that has it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

import xxhash

from .errors import NotVotingError, StaleCommitError
from .store import Commit, Store, TaskId, TaskMeta
from .transfer import parts_of

ROUND_SHIFT = 32
"""Epoch = round << ROUND_SHIFT | hash of the proposer's name (low bits)."""
WINDOW = 16
"""Commits in flight to one replica for one task."""


STAGED_FOR = 60.0
"""Seconds a transfer's chunks are kept after its last request (a sender that gave up)."""


def _expire(transfers: dict[str, Any]) -> None:
    """Forget transfers not touched for STAGED_FOR seconds (the last item is when)."""
    now = time.monotonic()
    for xfer in [x for x, entry in transfers.items() if now - entry[-1] > STAGED_FOR]:
        del transfers[xfer]


def epoch_after(seen: int, member: str) -> int:
    """The epoch of ``member``'s next takeover, above every epoch in ``seen``.

    >>> e = epoch_after(0, "a"); e >> ROUND_SHIFT, epoch_after(e, "b") > e
    (1, True)
    """
    proposer = xxhash.xxh32_intdigest(member.encode())
    return (((seen >> ROUND_SHIFT) + 1) << ROUND_SHIFT) | proposer


def position(meta: TaskMeta | Iterable[int]) -> tuple[int, int]:
    """How far a copy of a task is: (epoch of its last commit, number); higher is newer."""
    last, epoch, _ = meta
    return epoch, last


class ReplicaLog:
    """The primary's record of one task's commits not yet on every replica.

    Example:
        >>> log = ReplicaLog(["b", "c"], last=4)
        >>> log.add(5, b"five"); log.add(6, b"six"); log.durable
        4
        >>> log.take("b")
        [(5, b'five'), (6, b'six')]
        >>> log.on_reply("b", 6); log.on_reply("c", 5); log.durable
        5
    """

    def __init__(self, replicas: Iterable[str], last: int) -> None:
        self.replicas = tuple(replicas)
        self.acked = {m: last for m in self.replicas}
        self.sent = dict(self.acked)
        self.learners: set[str] = set()
        """Members being copied to before a handover: they get every commit, and their
        acknowledgements do not count towards durability."""
        self.copying: set[str] = set()
        """Learners whose snapshot has not been restored yet: nothing is sent to them."""
        self.commits: deque[tuple[int, bytes]] = deque()
        self.last = last
        self._held_by_all = last
        """The lowest acknowledgement of the replicas (kept: the runtime asks often)."""

    @property
    def durable(self) -> int:
        """The highest commit number every replica holds (all of them, with none)."""
        return self._held_by_all if self.replicas else self.last

    @property
    def backlog(self) -> int:
        """Commits not yet durable."""
        return self.last - self.durable

    @property
    def members(self) -> tuple[str, ...]:
        """Where commits go: the replicas, then the learners."""
        return self.replicas + tuple(sorted(self.learners))

    @property
    def shipping(self) -> bool:
        """Whether commits go anywhere (else :meth:`add` need not be given their bytes)."""
        return bool(self.replicas or self.learners)

    def add(self, number: int, data: bytes) -> None:
        self.last = number
        if self.shipping:
            self.commits.append((number, data))

    def add_learner(self, member: str, last: int) -> None:
        """Copy to ``member``: it is being sent a snapshot holding commits up to ``last``
        (call :meth:`copied` once it is restored there); later commits follow."""
        if member in self.replicas:
            raise ValueError(f"{member} is a replica already")
        self.learners.add(member)
        self.copying.add(member)
        self.acked[member] = self.sent[member] = last

    def copied(self, member: str) -> None:
        """The learner's snapshot is restored: send it the commits that followed."""
        self.copying.discard(member)

    def drop_learner(self, member: str) -> None:
        if member in self.learners:
            self.learners.discard(member)
            self.copying.discard(member)
            del self.acked[member], self.sent[member]
            self._prune()

    def caught_up(self, member: str, lag: int = 0) -> bool:
        """Whether ``member`` holds every commit but the last ``lag``."""
        return member not in self.copying and self.acked.get(member, -1) >= self.last - lag

    def take(self, member: str) -> list[tuple[int, bytes]]:
        """Commits to send ``member`` now (marked sent), within the window."""
        if member in self.copying:
            return []
        sent, acked = self.sent[member], self.acked[member]
        out = [(n, d) for n, d in self.commits if sent < n <= acked + WINDOW]
        if out:
            self.sent[member] = out[-1][0]
        return out

    def on_reply(self, member: str, last: int) -> None:
        """``member`` holds commits up to ``last``: a lower number than sent is a gap
        (lost or refused), so what follows it goes again."""
        if member not in self.acked or member in self.copying:
            return
        self.acked[member] = max(self.acked[member], min(last, self.last))
        if member in self.replicas:
            self._held_by_all = min(self.acked[m] for m in self.replicas)
        if last < self.sent[member]:
            self.sent[member] = max(last, self.acked[member])
        self.sent[member] = max(self.sent[member], self.acked[member])
        self._prune()

    def lost(self, member: str, last: int) -> bool:
        """Whether ``member`` answered a position behind what it acknowledged: it lost
        commits (a wiped store, a power loss) and only a snapshot brings it back."""
        return member in self.acked and member not in self.copying and last < self.acked[member]

    def _prune(self) -> None:
        """Forget commits every replica and learner holds."""
        everywhere = min(self.acked.values(), default=self.last)
        while self.commits and self.commits[0][0] <= everywhere:
            self.commits.popleft()

    def on_lost(self, member: str) -> None:
        """A message to ``member`` went unanswered: send from its last ack again."""
        if member in self.sent:
            self.sent[member] = self.acked[member]

    def wants(self, member: str) -> bool:
        """Whether :meth:`take` would return something for ``member``."""
        if member in self.copying or member not in self.acked:
            return False
        return self.sent[member] < min(self.last, self.acked[member] + WINDOW)


class ReplicaServer:
    """A member's store answering replication requests (thread-safe, as the store is)."""

    def __init__(self, store: Store, running: Callable[[TaskId], bool] = lambda task: False,
                 votes: Callable[[str], bool] = lambda flow: True) -> None:
        self.store = store
        self.running = running
        """Whether a task runs on this member (its primary here): for ``probe``."""
        self.votes = votes
        """Whether this member's promises and accepts count for a flow: not while it
        recovers the votes its lost store held (:mod:`daemon.recovery`)."""
        self._lock = threading.Lock()
        self._staged: dict[str, tuple[TaskId, list[bytes], float]] = {}
        """Chunks of snapshots being pushed to us, per transfer: task, chunks, last seen."""
        self._serving: dict[str, tuple[list[bytes], float]] = {}
        """Snapshots being pulled from us, per transfer: chunks, last asked (index -1 or
        STAGED_FOR seconds without a request ends it)."""

    def handle(self, kind: str, args: Any) -> Any:
        """Dispatch one request. Raises StoreError (e.g. full), ValueError (malformed) and
        NotVotingError (a promise, accept or votes request while we recover ours)."""
        if kind in ("promise", "accept", "votes"):
            for flow in {str(t[0]) for t in args["tasks"]}:
                if not self.votes(flow):
                    raise NotVotingError(f"this member lost its votes for flow {flow} with "
                                         "its store and has not recovered them yet")
        if kind == "votes":
            return self.votes_of([TaskId(*t) for t in args["tasks"]])
        if kind == "promise":
            return self.promise([TaskId(*t) for t in args["tasks"]], int(args["epoch"]))
        if kind == "probe":
            return self.probe([TaskId(*t) for t in args["tasks"]])
        if kind == "commits":
            return self.commits(args)
        if kind == "snapshot_part":
            return self.snapshot_part(TaskId(*args["task"]), str(args["xfer"]),
                                      int(args["index"]))
        if kind == "restore_part":
            return self.restore_part(TaskId(*args["task"]), int(args["epoch"]),
                                     str(args["xfer"]), int(args["index"]), int(args["count"]),
                                     list(args["chunks"]))
        if kind == "restore":
            return self.restore(TaskId(*args["task"]), int(args["epoch"]), args["chunks"])
        if kind == "accept":
            tasks, sets = [TaskId(*t) for t in args["tasks"]], args["sets"]
            if len(sets) != len(tasks):
                raise ValueError("accept needs one replica set per task")
            return self.accept(tasks, int(args["epoch"]), [[str(m) for m in s] for s in sets])
        raise ValueError(f"unknown replication request {kind!r}")

    def promise(self, tasks: list[TaskId], epoch: int) -> list[list]:
        """Promise ``epoch`` for each task; answer each task's [last, epoch, promised,
        accepted epoch, accepted members] (a promise above ``epoch`` means refused)."""
        out = []
        for task in tasks:
            self.store.set_promise(task, epoch)
            accepted = self.store.accepted(task)
            out.append([*self.store.task_meta(task), accepted.epoch, list(accepted.members)])
        return out

    def votes_of(self, tasks: list[TaskId]) -> list[list]:
        """Per task [highest epoch promised or seen, accepted epoch, accepted members]."""
        out = []
        for task in tasks:
            meta, accepted = self.store.task_meta(task), self.store.accepted(task)
            out.append([max(meta.epoch, meta.promised), accepted.epoch, list(accepted.members)])
        return out

    def accept(self, tasks: list[TaskId], epoch: int, sets: list[list[str]]) -> list[int]:
        """Accept ``sets[i]`` as the replica set of ``tasks[i]`` at ``epoch``; answer per
        task the highest epoch promised here (``epoch`` itself means accepted)."""
        return [self.store.accept(task, epoch, members) for task, members in zip(tasks, sets)]

    def probe(self, tasks: list[TaskId]) -> list[list[int]]:
        """Per task [last, epoch, promised, 1 if it runs here else 0]; promises nothing."""
        return [[*self.store.task_meta(task), int(self.running(task))] for task in tasks]

    def commits(self, entries: list) -> list[list[int]]:
        """Apply [[flow, stage, partition, bytes], ...] in order, in one transaction;
        answer [last, promised] per entry. A commit after a gap or from a stale epoch is
        skipped, and the answer tells its primary where we are and what we promised."""
        commits = []
        for flow, stage, partition, data in entries:
            commit = Commit.from_bytes(data)
            if commit.task != (flow, stage, partition):
                raise ValueError(f"commit of {commit.task} sent as {(flow, stage, partition)}")
            commits.append(commit)
        self.store.apply_many(commits)
        metas = {c.task: self.store.task_meta(c.task) for c in commits}
        return [[metas[c.task].last, max(metas[c.task].epoch, metas[c.task].promised)]
                for c in commits]

    def snapshot_part(self, task: TaskId, xfer: str, index: int) -> dict[str, Any]:
        """Part ``index`` (:func:`~daemon.transfer.parts_of`) of our snapshot of ``task``,
        read once per transfer (at part 0); index -1: the transfer is over."""
        with self._lock:
            _expire(self._serving)
            if index < 0:  # the asker has every chunk
                self._serving.pop(xfer, None)
                return {}
            chunks = self._serving.get(xfer, ([], 0.0))[0]
            if not chunks:
                if index:  # never mix chunks of two reads: the asker starts over
                    raise ValueError(f"transfer {xfer} of {task} is unknown or over")
                chunks = parts_of(list(self.store.snapshot(task)))
            if index >= len(chunks):
                raise ValueError(f"snapshot of {task} has {len(chunks)} parts, not {index + 1}")
            self._serving[xfer] = (chunks, time.monotonic())
        return {"count": len(chunks), "chunks": chunks[index]}

    def restore_part(self, task: TaskId, epoch: int, xfer: str, index: int, count: int,
                     chunk: list[bytes]) -> dict[str, int] | list[int]:
        """Stage part ``index`` of ``count`` (a list of snapshot chunks); with the last,
        restore them all as :meth:`restore` does and answer as it does. Else answer
        {"next": part wanted}."""
        with self._lock:
            _expire(self._staged)
            staged = self._staged.get(xfer)
            if staged is None or staged[0] != task:
                if index:  # we lost the first chunks (expired, restarted), or 0 is late
                    return {"next": 0, "restart": True}
                staged = (task, [], 0.0)
            chunks = staged[1]
            if index == len(chunks):
                chunks.append(chunk)
            if len(chunks) < count:
                self._staged[xfer] = (task, chunks, time.monotonic())
                return {"next": len(chunks)}
            self._staged.pop(xfer, None)
        return self.restore(task, epoch, [c for part in chunks for c in part])

    def restore(self, task: TaskId, epoch: int, chunks: list[bytes]) -> list[int]:
        """Replace our copy of ``task`` with the primary's; answer [last, promised]."""
        try:
            self.store.restore(task, chunks, epoch=epoch)
        except StaleCommitError:
            pass
        meta = self.store.task_meta(task)
        return [meta.last, max(meta.epoch, meta.promised)]

