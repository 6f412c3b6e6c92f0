"""One partition task: a stage of a flow for one partition, with exactly-once commits.

The loop of a task (DESIGN.md, "The partition task"):

1. take input: a batch read from its source splits at the committed offsets,
   or the shuffled batches that arrived from upstream tasks, each with
   ``(origin, sequence)``; a batch at or below the origin's high-water mark
   is a duplicate and is dropped, one past it is applied, one further on
   waits for the sender to resend the gap;
2. run the stage's compiled batch function over it;
3. commit, in one LMDB transaction (:class:`~daemon.store.Commit`): changed
   keyed state, table rows, offsets / marks, and every output bound
   downstream appended to the outbox with its own sequence number;
4. replicate the commit (:class:`~daemon.replication.ReplicaLog`); once every
   replica holds it, send its outbox entries, acknowledge its inputs and
   publish; an entry is deleted (in a later commit) once its receiver
   acknowledges it. Commits are pipelined: the task keeps committing while
   earlier commits are on their way to the replicas.

After a crash the task reloads state, offsets, marks and outbox from the
store and resends the outbox with the same sequence numbers; receivers drop
what they already applied. Every record is therefore applied exactly once.

End of stream is an outbox entry like any other: a task that has read all
its splits, or holds end-of-stream from every upstream task, sends it to
every downstream partition (on its last batch to each, or on an empty one)
and is done once those entries are acknowledged.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import msgpack

from nodes.codec import pack, unpack
from nodes.errors import FlowError
from nodes.eventtime import IDLE, MAX_TIME, MIN_TIME, to_ms
from nodes.plan import Plan, Stage, route
from nodes.sinks import FilesSink, LogSink, TableSink
from nodes.sources import IngestSource
from nodes.windows import Windowed

from .files import write_atomically
from .placement import spread
from .replication import ReplicaLog
from .store import Commit, Store, TaskId

log = logging.getLogger("gossipflow.task")

WINDOW = 8
"""Unacknowledged batches in flight per destination (credit-based backpressure)."""
MAX_PENDING_BYTES = 512 << 10
"""A source stops reading while this many bytes of its outbox await acknowledgement..."""
MAX_MEMBER_PENDING_BYTES = 4 << 20
"""... or while all tasks of its member together have this many (see Pressure)."""
BATCHES_PER_COMMIT = 50
"""A commit groups up to this many shuffled batches: fewer, larger commits and shuffle
messages (the outputs of the whole group are combined before they are sent)."""
SOURCE_BATCHES_PER_COMMIT = 200
"""A source task reads up to this many batches per commit (the fewer commits, the fewer
(key, partial) pairs a combined output shuffles), while its output holds fewer records
than BATCHES_PER_COMMIT batches (an output that is not combined grows with the input)..."""
SOURCE_STEP_TIME = 0.5
"""... and for at most this many seconds (slow user functions make smaller commits)."""
MAX_UNREPLICATED = 4
"""A task stops taking input while this many of its commits are not on every replica."""
COMMIT_INTERVAL = 0.05
"""Seconds a shuffled batch may wait for others to share its commit (latency traded for
fewer, larger commits, as Flink's checkpoint interval does)."""
DELETES_WAIT = 1.0
"""Seconds the deletion of acknowledged outbox entries may wait for a commit that makes
other changes (a commit of deletions alone costs as much as any): an entry not deleted
yet is sent again only after a crash, and its receiver drops it."""
STATE, TABLE, LOG = b"s", b"t", b"l"
EOS_SENT = "eos"
PRODUCER = "p:"
"""Origins ``p:<producer id>``: an ingest producer's records, numbered one by one (a
shuffled batch's origin is a task, numbering whole batches)."""
MAX_PRODUCED_RECORDS = 100_000
"""Producers' records an ingest task queues at most; past it, it answers busy."""
UNKNOWN_PRODUCER = -1
"""The "applied" answer to a batch past record 1 of a producer forgotten after its TTL
(a producer never seen is answered mark 0: its batch may have overtaken its first)."""
FORGET_EVERY = 60.0
"""Seconds between an ingest task's checks for producers silent past their TTL."""
INGESTED = "ti"
"""An ingest task's one split: the offsets key of its event time, and its read_at key."""
SEGMENT = "files:"
"""Outbox destinations ``files:<sink name>``: a files sink's lines, written into segment
files once durable (never sent); an entry is ``[closes its segment, JSON-lines bytes]``."""
SEGMENT_BYTES = 1 << 20
SEGMENT_SECONDS = 1.0
"""A segment closes at this size or age (or at end of stream): one file each."""
RETRY_WRITE = 1.0
"""Seconds before writing a segment again after a full disk."""
IDLE_AFTER = 30.0
"""Seconds after which an ingest task that got no records leaves the watermark's minimum
(``event_time(idle_after=...)`` sets it per source; bounded sources never idle unless
asked)."""
WATERMARK_EVERY = 1.0
"""A source task with event time sends a downstream partition that got no records an
entry holding only its watermark at most this often (so its windows fire)."""


_packb = pack


def origin_id(stage: int, partition: int) -> str:
    return f"{stage}/{partition}"


def table_holding_state(stage: Stage, plan: Plan) -> str | None:
    """The table sink right after a count, sum, reduce or fold with nothing between:
    its rows (key, latest value) are exactly that operator's state."""
    if stage.head_kind in ("count", "sum", "reduce", "fold") and not stage.steps \
            and len(stage.outputs) == 1 and isinstance(stage.outputs[0], str) \
            and isinstance(plan.sinks[stage.outputs[0]], TableSink):
        return stage.outputs[0]
    return None


def table_prefix(sink: str) -> bytes:
    """Where the rows of table sink ``sink`` start in a task's state."""
    return TABLE + sink.encode() + b"\x00"


def log_key(sink: str, offset: int) -> bytes:
    """The state key of a log sink's record: LOG, sink name, NUL, u64 BE offset (so the
    records of a log are in offset order)."""
    return LOG + sink.encode() + b"\x00" + offset.to_bytes(8, "big")


def table_key(sink: str, key: Any) -> bytes:
    """The state key of a table row: prefix, sink name, NUL, msgpack of the key."""
    return table_prefix(sink) + pack(key)


@dataclass
class Inbound:
    """A shuffled batch waiting to be applied."""

    origin: str
    seq: int
    eos: bool
    records: list
    reply: Callable[[int], None]
    watermark: int | None = None
    """The sender's event-time watermark after this batch (batches to timed stages)."""


@dataclass
class Pressure:
    """Shared by every task of a member: outbox bytes awaiting acknowledgement, summed
    now and then by the runtime, so many sources together cannot flood a member."""

    outbox_bytes: int = 0


@dataclass
class FlowContext:
    """What every task of one running flow shares."""

    flow_id: str
    plan: Plan
    partitions: int
    store: Store
    send: Callable[[TaskId, str, int, bytes], bool]
    """send(from task, destination "stage/partition", seq, payload): hand to the network;
    False (and not sent) while the way to the destination is full."""
    publish: Callable[[str, str, list], None] = lambda flow, sink, records: None
    """publish(flow id, sink name, records): the live stream, after the commit."""
    splits: dict[str, list] = field(default_factory=dict)
    split_partitions: dict[str, list[int]] = field(default_factory=dict)
    """Per source, the partition whose task reads each split."""
    ingests: dict[str, str] = field(default_factory=dict)
    """Ingest sources: source name -> ingest name."""
    batch_size: int = 1000
    pressure: Pressure = field(default_factory=Pressure)
    clock: Callable[[], float] = time.monotonic

    def plan_splits(self, sets: Sequence[Sequence[str]] | None = None,
                    fixed: dict[str, list] | None = None) -> None:
        """Give every source's splits a partition: spread evenly over the primaries of
        ``sets`` (the placement over the members the flow was submitted to, the same on
        every member), or split i to partition i mod P without. The splits are
        ``fixed`` (the flow record's, made once at submit: every member reads the same
        ones), or made here without.

        Raises:
            FlowError: ``fixed`` lacks a source, or a split lacks a field its source reads.
        """
        sets = sets or [()] * self.partitions
        self.ingests = {name: source.name for name, source in self.plan.sources.items()
                        if isinstance(source, IngestSource)}
        if fixed is None:
            fixed = {name: source.splits(self.partitions)
                     for name, source in self.plan.sources.items()}
        self.splits = {}
        for name, source in self.plan.sources.items():
            splits = fixed.get(name)
            if splits is None or any(not source.split_fields <= s.keys() for s in splits):
                raise FlowError(f"the flow's record has no valid splits for source {name!r}"
                                " (submitted by another gossipflow version?): resubmit it")
            self.splits[name] = splits
        for name in self.ingests:  # producers feed every partition; nothing to read
            self.splits[name] = []
        self.split_partitions = {name: spread(len(splits), sets)
                                 for name, splits in self.splits.items()}
        for stage in self.plan.stages:
            if stage.timed:
                stage.may_idle = any(self.idle_after(self.plan.stages[u]) is not None
                                     for u in stage.inputs)

    def idle_after(self, stage: Stage) -> float | None:
        """Seconds after which a split of source ``stage`` that read nothing leaves the
        watermark's minimum (None: never)."""
        if stage.event_time is None:
            return None
        if stage.event_time.idle_after is not None:
            return stage.event_time.idle_after
        return IDLE_AFTER if stage.source in self.ingests else None

    def senders(self, stage: int) -> range | set[int]:
        """Partitions of ``stage`` that send anything: for a source stage the ones with
        splits, for any other stage all."""
        source = self.plan.stages[stage].source
        if source is None or source in self.ingests:
            return range(self.partitions)
        return set(self.split_partitions[source])


@dataclass
class Segment:
    """A files sink's segments in one task's outbox: the open one being filled, and the
    closed ones not yet written. Segment boundaries are in the commits, so they are the
    same on every copy."""

    opened: float | None = None
    """When the open segment got its first lines (None: no open segment)."""
    size: int = 0
    """Bytes in the open segment."""
    closings: deque[int] = field(default_factory=deque)
    """Sequences of the entries closing segments not written yet, oldest first."""
    written: int = 0
    """The last entry written to a file (its deletion may not be committed yet)."""

    @classmethod
    def of(cls, queue: deque[tuple[int, bytes]], now: float) -> Segment:
        """The segments of the entries a task found in its store."""
        segment = cls()
        for seq, payload in queue:
            closes, data = unpack(payload)
            if closes:
                segment.closings.append(seq)
                segment.opened, segment.size = None, 0
            else:
                segment.opened, segment.size = now, segment.size + len(data)
        return segment

    def writable(self, released: int) -> bool:
        """Whether the oldest closed segment is durable (its last entry released)."""
        return bool(self.closings) and self.closings[0] <= released

    def take(self, queue: deque[tuple[int, bytes]]) -> tuple[int, int, list[bytes]]:
        """(first sequence, last sequence, lines) of the oldest closed segment."""
        last = self.closings.popleft()
        entries = [(seq, payload) for seq, payload in queue if self.written < seq <= last]
        return entries[0][0], last, [unpack(payload)[1] for _, payload in entries]


class PartitionTask:
    """Stage ``stage`` of a flow for partition ``partition``, resumed from the store,
    run as primary in ``epoch`` with its commits replicated to ``replicas``.

    What the store holds when the task starts is on every replica already (the
    takeover made it so): its outbox may be sent at once. Unless ``fenced``: then
    the store's last commit is the takeover's seal, which may not be on every
    replica yet (the task ships it with its own commits) nor its replica set
    accepted; the task runs and commits but releases nothing until :meth:`open`.
    """

    def __init__(self, ctx: FlowContext, stage: Stage, partition: int, epoch: int = 0,
                 replicas: tuple[str, ...] = (), fenced: bool = False) -> None:
        self.ctx, self.stage, self.partition = ctx, stage, partition
        self.id = TaskId(ctx.flow_id, stage.id, partition)
        self.epoch = epoch
        store = ctx.store
        self.number = store.task_meta(self.id).last
        self.fenced = fenced
        """Until :meth:`open`: nothing is released (see the class docstring)."""
        self.log = ReplicaLog(replicas, self.number - fenced)
        if fenced:
            seal = Commit(self.id, epoch, self.number)
            self.log.add(self.number, seal.to_bytes() if self.log.shipping else b"")
        self.offsets = {k: unpack(v) for k, v in store.offsets(self.id).items()}
        self.marks = store.marks(self.id)
        self._state: dict | None = None
        self.table_is_state = table_holding_state(stage, ctx.plan)
        """The table sink whose rows are this task's keyed state, if any: then the state
        is not written twice (count().sink(table()) and the like)."""
        self.next_seq = store.next_sequences(self.id)
        self.pending: dict[str, deque[tuple[int, bytes]]] = {}
        for dest, seq, payload in store.outbox(self.id):
            self.pending.setdefault(dest, deque()).append((seq, payload))
        self.pending_bytes = sum(len(p) for dest, q in self.pending.items()
                                 if not dest.startswith(SEGMENT) for _, p in q)
        self.pending_count = sum(map(len, self.pending.values()))
        self.released: dict[str, int] = {}
        """Per destination, the highest outbox sequence whose commit is durable."""
        started_with = {dest: queue[-1][0] for dest, queue in self.pending.items()}
        self.segments: dict[str, Segment] = {}
        """Per files sink destination, the segment being filled and written."""
        for dest, queue in self.pending.items():
            if dest.startswith(SEGMENT):
                self.segments[dest] = Segment.of(queue, ctx.clock())
        self.write_again_at = 0.0
        """When to try writing segments again after a full disk (0: no need)."""
        self.logs: dict[str, tuple[int, int]] = {
            k[2:]: tuple(unpack(v)) for k, v in store.offsets(self.id).items()
            if k.startswith("l:")}
        """Per log sink, [first offset kept, next offset] as of our last commit..."""
        self.log_durable: dict[str, tuple[int, int]] = {}
        """... and as of our last durable commit: readers see only these records."""
        self._log_sizes: dict[str, deque[int]] = {}
        self._log_bytes: dict[str, int] = {}
        self._log_commits: deque[tuple[int, dict[str, tuple[int, int]]]] = deque()
        self.unsent = set(self.pending)
        """Destinations that may have entries to send now (so pump skips the others)."""
        self.held: deque[tuple[int, dict[str, int], list, list]] = deque()
        """(commit number, its outbox sequences, input replies, publications) waiting
        for that commit to be on every replica."""
        if fenced:  # what we started with is released with the seal
            self.held.append((self.number, started_with, [], []))
            self._log_commits.append((self.number, dict(self.logs)))
        else:
            self.released, self.log_durable = started_with, dict(self.logs)
        self.sent: dict[str, int] = {}  # destination -> highest sequence sent, not yet acked
        self.acked: list[tuple[str, int]] = []  # outbox entries to delete in the next commit
        self.acked_at = 0.0  # when the oldest of them was acknowledged
        self.inbox: deque[Inbound] = deque()
        self.inbox_records = 0
        self.inbox_since = 0.0  # when the oldest queued batch arrived
        self.upstream = {origin_id(u, p) for u in stage.inputs for p in ctx.senders(u)}
        self.waiting = {o for o in self.upstream if not self.offsets.get(f"eos:{o}")}
        """Upstream tasks whose end of stream has not arrived yet."""
        self.records_in = self.records_out = 0
        self.unread = []
        """Indices of this task's source splits not read to the end yet."""
        self.stepped_at = 0.0  # when the runtime last stepped it (it steps the oldest first)
        self.paused = False
        """Handing over: no more commits, so every copy can reach our last one."""
        self.broken = ""
        """Why this task cannot go on (an invariant broke): the runtime fails the flow."""
        self.idle = False
        """A source task without splits: nothing to read, nothing to send, done from the
        start (downstream tasks do not wait for its end of stream)."""
        self.ingesting = stage.source in ctx.ingests
        """An ingest source's task: producers' batches arrive in its inbox, forever."""
        self._forget_at = 0.0
        self.splits: list[int] = []
        """This source task's splits (indices into the source's splits)."""
        if stage.kind == "source" and not self.ingesting:
            owners = ctx.split_partitions[stage.source]
            self.idle = partition not in owners
            self.splits = [i for i, p in enumerate(owners) if p == partition]
            self.unread = [i for i in self.splits if not self.offsets.get(f"d{i}")]
        self.timed_targets = frozenset(t for t in stage.outputs if isinstance(t, int)
                                       and ctx.plan.stages[t].timed)
        """Downstream stages whose entries carry our watermark (windows, joins)."""
        self.watermark_sent: dict[str, tuple[int, float]] = {}
        """Per destination of those stages: the watermark last sent, and when."""
        self.watermark_due: float | None = None
        """When some of them may get our changed watermark (None: all have it)..."""
        self.watermark_noted = MIN_TIME
        """... as of our watermark at the last step."""
        self.idle_after = ctx.idle_after(stage) if stage.kind == "source" else None
        self.read_at = dict.fromkeys(self.splits or [INGESTED], ctx.clock()) \
            if self.idle_after is not None else {}
        """Per split (an ingest task: INGESTED), when it last read records (or we
        started): with ``idle_after``, one that read nothing for so long is idle."""
        self.late_after_idle = {k[5:]: v for k, v in self.offsets.items()
                                if k.startswith("idle:")}
        """Per window or join step, its late records behind windows fired while an input
        was idle (part of ``late``)."""
        self.senders_at = {o: MAX_TIME if self.offsets.get(f"eos:{o}")
                           else self.offsets.get(f"w:{o}", MIN_TIME) for o in self.upstream} \
            if stage.timed else {}
        """A timed task's watermark per upstream sender (stored with the marks)..."""
        self.idle_senders = {o for o in self.senders_at if self.offsets.get(f"i:{o}")}
        """... and those of them idle now."""
        self.late = {k[5:]: v for k, v in self.offsets.items() if k.startswith("late:")}
        """Late records per window or join step, as of our last commit."""

    @property
    def state(self) -> dict | None:
        """The keyed state (None for a stateless stage), read from the store when first
        needed: a done task of a completed flow, kept placed so that its results stay
        replicated, never holds it in memory."""
        if self._state is None and self.stage.head is not None:
            prefix = table_prefix(self.table_is_state) if self.table_is_state else STATE
            self._state = {unpack(k[len(prefix):]): unpack(v)
                           for k, v in self.ctx.store.iter_state(self.id, start=prefix)
                           if k.startswith(prefix)}
        return self._state

    # ------------------------------------------------------------------ progress

    @property
    def input_done(self) -> bool:
        return not self.unread and not self.waiting and not self.ingesting

    @property
    def done(self) -> bool:
        """All input consumed, end-of-stream sent, and every output acknowledged."""
        return self.idle or (bool(self.offsets.get(EOS_SENT)) and not self.pending_count
                             and not self.acked and self.log.durable >= self.number
                             and not self.fenced)

    def wake_at(self, now: float) -> float | None:
        """When this task should step next: ``now`` or earlier for at once, a later time
        to let more input gather into one commit, None when it has nothing to do."""
        if self.paused or self.log.backlog >= MAX_UNREPLICATED:
            return None  # the replicas' answers wake us
        if self.acked and (self.offsets.get(EOS_SENT) or len(self.acked) >= WINDOW * 64):
            return now  # done but for the deletions, or many of them
        later = self._segments_due() if self.segments else None
        if self.acked:
            due = self.acked_at + DELETES_WAIT
            later = due if later is None else min(due, later)
        if self.inbox:  # even when done: late duplicates must be answered
            if self.inbox_records >= self.ctx.batch_size * BATCHES_PER_COMMIT \
                    or self.inbox[-1].eos or self.offsets.get(EOS_SENT) or self.ingesting:
                return now
            due = self.inbox_since + COMMIT_INTERVAL
            return due if later is None else min(due, later)
        if self.idle or self.offsets.get(EOS_SENT):
            return later
        if self.ingesting and self.timed_targets and self.idle_after is not None:
            return self._idle_at(later)
        if self.input_done:
            return now
        if self.may_read():
            return now
        return later

    def _idle_at(self, later: float | None) -> float | None:
        """An ingest task with event time and nothing queued: step when it turns idle (to
        say so downstream), or when its watermark may go to those it skipped."""
        at = self.watermark()
        if at != self.watermark_noted:
            return 0.0  # it turned idle: say so
        due = [t for t in (later, self.watermark_due) if t is not None]
        if at != IDLE:
            due.append(self.read_at[INGESTED] + self.idle_after)
        return min(due, default=None)

    def _segments_due(self) -> float | None:
        """When the files sink's segments need a step: a retry after a full disk, at
        once for a closed one durable but not written, an open one's age limit."""
        if self.write_again_at:
            return self.write_again_at
        times = []
        for dest, segment in self.segments.items():
            if segment.writable(self.released.get(dest, 0)):
                return 0.0
            if segment.opened is not None:
                times.append(segment.opened + SEGMENT_SECONDS)
        return min(times, default=None)

    def may_read(self) -> bool:
        """A source task with input left, not held back by unacknowledged output."""
        return (self.stage.kind == "source" and bool(self.unread)
                and not self.offsets.get(EOS_SENT) and self.pending_bytes < MAX_PENDING_BYTES
                and self.ctx.pressure.outbox_bytes < MAX_MEMBER_PENDING_BYTES)

    def receive(self, batch: Inbound, now: float) -> None:
        """Queue a shuffled batch for the next step; a producer's batch is answered "no
        mark" at once (busy: its producer sends it again a little later) while this
        task holds MAX_PRODUCED_RECORDS of them."""
        if self.ingesting and self.inbox_records >= MAX_PRODUCED_RECORDS:
            batch.reply(None)
            return
        if not self.inbox:
            self.inbox_since = now
        self.inbox.append(batch)
        self.inbox_records += len(batch.records)

    # ------------------------------------------------------------------ one step

    def step(self) -> None:
        """Consume one unit of input (if any), commit, send.

        Raises FlowError from user code, StaleCommitError if a newer primary exists; then
        the task is spent (its memory is past its store): the caller drops it, and the
        inputs it took are answered "no mark", so their senders send them again."""
        replies: list[tuple[Callable[[int], None], int]] = []
        try:
            self._step(replies)
        except Exception:
            for reply, _ in replies:
                reply(None)
            raise

    def abandon(self) -> None:
        """This task stops here (we are no longer primary): answer every input it holds
        "no mark", so its senders send it again, to the new primary."""
        for _, _, replies, _ in self.held:
            for reply, _ in replies:
                reply(None)
        for batch in self.inbox:
            batch.reply(None)
        self.held.clear()
        self.inbox.clear()

    def _step(self, replies: list[tuple[Callable[[int], None], int]]) -> None:
        commit = Commit(self.id, 0, self.number + 1, outbox_deletes=self.acked)
        out = self.stage.outbox()
        if self.ingesting:
            self._forget_producers(commit)
        if self.stage.kind != "source" or self.ingesting:
            self._take_inbox(out, commit, replies)  # after end of stream: late duplicates
        elif self.may_read():
            self._read_source(out, commit)
        self._published: list[tuple[str, list]] = []
        self._count_late(out, commit)
        batches = self._emit(out, commit)
        eos = not self.offsets.get(EOS_SENT) and self.input_done
        self._close_segments(commit, eos)
        if eos:
            self._end_of_stream(commit, batches)
        watermark = self.watermark() if self.timed_targets else None
        if watermark is not None and not eos:
            self._watermark_only(batches, watermark)
        for dest, records in batches.items():
            self._append(commit, dest, eos, records, watermark)
        if watermark is not None:
            self._watermark_due(watermark)
        self.acked = []
        if commit.state_puts or commit.state_deletes or commit.offsets or commit.marks \
                or commit.outbox_puts or commit.outbox_deletes:
            self._commit(commit)
        if replies or self._published or commit.outbox_puts:
            seqs = {dest: seq for dest, seq, _ in commit.outbox_puts}
            self.held.append((self.number, seqs, replies, self._published))
        logs = {k[2:]: self.logs[k[2:]] for k in commit.offsets if k.startswith("l:")}
        if logs:
            self._log_commits.append((self.number, logs))
        self.release()

    def open(self) -> None:
        """The takeover's seal is on every replica and its replica set accepted: release."""
        self.fenced = False
        self.release()

    def release(self) -> None:
        """Let out what durable commits produced (outputs, acknowledgements,
        publications), in commit order, and send (nothing while fenced)."""
        if self.fenced:
            return
        durable = self.log.durable
        while self._log_commits and self._log_commits[0][0] <= durable:
            self.log_durable.update(self._log_commits.popleft()[1])
        while self.held and self.held[0][0] <= durable:
            _, seqs, replies, published = self.held.popleft()
            self.released.update(seqs)
            self.unsent.update(seqs)
            for name, records in published:
                self.ctx.publish(self.id.flow, name, records)
            for reply, mark in replies:
                reply(mark)
        self._write_segments()
        self.pump()

    def on_replicated(self, member: str, last: int) -> None:
        """Replica ``member`` holds our commits up to ``last``."""
        self.log.on_reply(member, last)
        self.release()

    def _commit(self, commit: Commit) -> None:
        commit.epoch = self.epoch
        self.ctx.store.apply(commit)
        self.log.add(commit.number, commit.to_bytes() if self.log.shipping else b"")
        self.number = commit.number
        for dest, seq in commit.outbox_deletes:
            queue = self.pending.get(dest)
            counted = not dest.startswith(SEGMENT)
            while queue and queue[0][0] <= seq:
                self.pending_bytes -= len(queue.popleft()[1]) * counted
                self.pending_count -= 1
            self.unsent.add(dest)  # its window moved on
        for dest, seq, payload in commit.outbox_puts:
            self.pending.setdefault(dest, deque()).append((seq, payload))
            self.pending_bytes += len(payload) * (not dest.startswith(SEGMENT))
            self.pending_count += 1

    def _read_source(self, out: Any, commit: Commit) -> None:
        source = self.ctx.plan.sources[self.stage.source]
        read, clock, size = 0, self.ctx.clock, self.ctx.batch_size
        until = clock() + SOURCE_STEP_TIME
        while self.unread and read < size * SOURCE_BATCHES_PER_COMMIT and clock() < until \
                and out.size() < size * BATCHES_PER_COMMIT:
            i = self.unread[0]
            records, offset, done = source.read(self.ctx.splits[self.stage.source][i],
                                                self.offsets.get(f"o{i}"), self.ctx.batch_size)
            time_state = self.stage.feed(records, None, out, self.offsets.get(f"t{i}"))
            if records and self.idle_after is not None:
                self.read_at[i] = clock()
            read += len(records) + 1
            self.records_in += len(records)
            self.offsets[f"o{i}"], self.offsets[f"d{i}"] = offset, done
            commit.offsets.update({f"o{i}": pack(offset), f"d{i}": pack(done)})
            if time_state is not None:  # event time: the largest ts read, with the offset
                self.offsets[f"t{i}"] = time_state
                commit.offsets[f"t{i}"] = pack(time_state)
            if done:
                self.unread.pop(0)

    def _take_inbox(self, out: Any, commit: Commit,
                    replies: list[tuple[Callable[[int], None], int]]) -> None:
        taken = 0
        while self.inbox and taken < self.ctx.batch_size * BATCHES_PER_COMMIT:
            batch = self.inbox.popleft()
            self.inbox_records -= len(batch.records)
            mark = self.marks.get(batch.origin, 0)
            if batch.origin.startswith(PRODUCER):
                taken += self._take_produced(batch, mark, out, commit, replies)
                continue
            if batch.seq == mark + 1:
                if batch.records:
                    self.stage.feed(batch.records, self.state, out)
                self.records_in += len(batch.records)
                taken += len(batch.records) + 1
                self.marks[batch.origin] = commit.marks[batch.origin] = batch.seq
                if batch.eos:
                    self.waiting.discard(batch.origin)
                    self.offsets[f"eos:{batch.origin}"] = True
                    commit.offsets[f"eos:{batch.origin}"] = pack(True)
                if self.stage.timed:
                    self._sender_at(batch, commit)
            replies.append((batch.reply, self.marks.get(batch.origin, 0)))
        if self.stage.timed and self.senders_at:
            self.stage.advance(self.senders_watermark(), self.state, out)
        if self.table_is_state or not out.touched:
            return  # the table sink writes the changed keys' rows, which are the state
        state, puts = self.state, commit.state_puts
        for key in out.touched:
            if key in state:
                puts[STATE + _packb(key)] = _packb(state[key])
            else:
                commit.state_deletes.append(STATE + _packb(key))

    def _sender_at(self, batch: Inbound, commit: Commit) -> None:
        """A timed task: the watermark ``batch``'s sender reached with it (ended: +inf;
        IDLE: it leaves our minimum until it reads again)."""
        at, origin = MAX_TIME if batch.eos else batch.watermark, batch.origin
        if at == IDLE:
            if origin not in self.idle_senders:
                self.idle_senders.add(origin)
                commit.offsets[f"i:{origin}"] = pack(True)
        elif at is not None:
            if origin in self.idle_senders:
                self.idle_senders.discard(origin)
                commit.offsets[f"i:{origin}"] = pack(False)
            if at > self.senders_at.get(origin, MIN_TIME):
                self.senders_at[origin] = at
                commit.offsets[f"w:{origin}"] = pack(at)

    def senders_watermark(self) -> int:
        """A timed task's watermark: the lowest of its senders' that are not idle; when
        every one is idle, the highest any reached (as Flink's watermark valve does: the
        last to go idle had the say)."""
        active = [at for origin, at in self.senders_at.items()
                  if origin not in self.idle_senders]
        return min(active) if active else max(self.senders_at.values(), default=MIN_TIME)

    def watermark(self) -> int:
        """A source task's event-time watermark: the lowest of its splits' that are not
        idle (+inf without event time, or once every split is read; IDLE when all that
        are left are idle)."""
        if self.ingesting:
            return self.stage.split_watermark(self.offsets.get(INGESTED), False) \
                if not self._idle(INGESTED) else IDLE
        marks = [self.stage.split_watermark(self.offsets.get(f"t{i}"), done)
                 for i in self.splits
                 if (done := bool(self.offsets.get(f"d{i}"))) or not self._idle(i)]
        return min(marks, default=MAX_TIME if not self.unread else IDLE)

    def _idle(self, split: int | str) -> bool:
        return self.idle_after is not None and \
            self.ctx.clock() - self.read_at[split] >= self.idle_after

    def _watermark_only(self, batches: dict[str, list], watermark: int) -> None:
        """Give each partition of a timed stage that gets no records now an empty entry
        carrying our watermark, if it moved and the last went WATERMARK_EVERY ago."""
        now = self.ctx.clock()
        for target in self.timed_targets:
            for q in range(self.ctx.partitions):
                dest = origin_id(target, q)
                sent, when = self.watermark_sent.get(dest, (MIN_TIME, 0.0))
                if dest not in batches and watermark != sent and now - when >= WATERMARK_EVERY:
                    batches[dest] = []

    def _watermark_due(self, watermark: int) -> None:
        """When a partition of a timed stage that has not got ``watermark`` may get it."""
        self.watermark_noted = watermark
        lagging = [when for sent, when in self.watermark_sent.values() if sent != watermark]
        if watermark != MIN_TIME and len(self.watermark_sent) < len(self.timed_targets) \
                * self.ctx.partitions:
            lagging.append(0.0)
        self.watermark_due = min(lagging) + WATERMARK_EVERY if lagging else None

    def _count_late(self, out: Any, commit: Commit) -> None:
        """Count the late records of this step's windows and joins (status shows them)."""
        for step, records in out.late.items():
            self.late[step] = self.late.get(step, 0) + len(records)
            commit.offsets[f"late:{step}"] = pack(self.late[step])
        for step, count in out.late_after_idle.items():
            self.late_after_idle[step] = self.late_after_idle.get(step, 0) + count
            commit.offsets[f"idle:{step}"] = pack(self.late_after_idle[step])

    def _take_produced(self, batch: Inbound, mark: int, out: Any, commit: Commit,
                       replies: list[tuple[Callable[[Any], None], Any]]) -> int:
        """A producer's records numbered ``batch.seq`` on: those past its mark are applied
        (a retry that overlaps what was applied applies only the rest); the answer, once
        the commit is durable, is [mark, records applied]. Returns the work taken."""
        last = batch.seq + len(batch.records) - 1
        fresh = 0
        seen = f"seen:{batch.origin[len(PRODUCER):]}"
        if mark == 0 and batch.seq > 1 and self.offsets.get(seen) == 0:
            replies.append((batch.reply, [0, UNKNOWN_PRODUCER]))  # forgotten after its TTL
            return 1
        self.offsets[seen] = int(time.time())
        commit.offsets[seen] = pack(self.offsets[seen])
        if batch.seq <= mark + 1 <= last:
            records = batch.records[mark + 1 - batch.seq:]
            time_state = self.stage.feed(records, None, out, self.offsets.get(INGESTED))
            if time_state is not None:  # event time: one split, the producers' records
                self.offsets[INGESTED] = time_state
                commit.offsets[INGESTED] = pack(time_state)
                if self.idle_after is not None:
                    self.read_at[INGESTED] = self.ctx.clock()
            fresh = len(records)
            self.records_in += fresh
            self.marks[batch.origin] = commit.marks[batch.origin] = last
        replies.append((batch.reply, [self.marks.get(batch.origin, 0), fresh]))
        return fresh + 1

    def _forget_producers(self, commit: Commit) -> None:
        """Drop the marks of producers silent for the ingest's producer_ttl (checked
        once a minute): they may start again from record 1."""
        now = time.monotonic()
        if now < self._forget_at:
            return
        self._forget_at = now + FORGET_EVERY
        ttl, wall = self.ctx.plan.sources[self.stage.source].producer_ttl, time.time()
        for key, seen in list(self.offsets.items()):
            if key.startswith("seen:") and seen and wall - seen > ttl:
                origin = PRODUCER + key[len("seen:"):]
                self.marks[origin] = commit.marks[origin] = 0
                self.offsets[key] = 0
                commit.offsets[key] = pack(0)
                log.info("event=producer_forgotten task=%s producer=%s silent=%.0f",
                         self.id, key[len("seen:"):], wall - seen)

    def _end_of_stream(self, commit: Commit, batches: dict[str, list]) -> None:
        """Every downstream partition gets end of stream: on the step's last batch to it,
        or on an empty one."""
        for target in self.stage.outputs:
            if isinstance(target, int):
                for q in range(self.ctx.partitions):
                    batches.setdefault(origin_id(target, q), [])
        self.offsets[EOS_SENT] = True
        commit.offsets[EOS_SENT] = pack(True)

    def _emit(self, out: Any, commit: Commit) -> dict[str, list]:
        """Write what goes to sinks; return what goes downstream, per destination."""
        batches: dict[str, list] = {}
        for target, records in out.drain().items():
            self.records_out += len(records)
            if isinstance(target, int):
                for q, part in enumerate(route(records, self.ctx.partitions)):
                    if part:
                        batches[origin_id(target, q)] = part
            else:
                self._sink(target, records, commit)
        return batches

    def _append(self, commit: Commit, dest: str, eos: bool, records: list,
                watermark: int | None = None) -> None:
        """An outbox entry to ``dest``: [end of stream, records], and our watermark if
        ``dest`` is a window or join stage's task."""
        seq = max(self.next_seq.get(dest, 1), 1)
        self.next_seq[dest] = seq + 1
        if watermark is not None and int(dest.partition("/")[0]) in self.timed_targets:
            self.watermark_sent[dest] = (watermark, self.ctx.clock())
            commit.outbox_puts.append((dest, seq, pack([eos, records, watermark])))
        else:
            commit.outbox_puts.append((dest, seq, pack([eos, records])))

    def _sink(self, name: str, records: list, commit: Commit) -> None:
        sink = self.ctx.plan.sinks[name]
        if isinstance(sink, TableSink):
            prefix, puts = table_prefix(name), commit.state_puts
            for key, value in records:
                if type(value) is Windowed:  # one row per key and window
                    key = (key, to_ms(value.start))
                puts[prefix + _packb(key)] = _packb(value)
        elif isinstance(sink, FilesSink):
            self._add_lines(SEGMENT + name, sink.encode(records), commit)
        elif isinstance(sink, LogSink):
            self._append_log(name, sink, records, commit)
        else:  # publish: a live stream, not stored; it goes out after the commit
            self._published.append((name, records))

    def _append_log(self, name: str, sink: LogSink, records: list, commit: Commit) -> None:
        """Append to a log sink under the next offsets; drop the oldest past retention."""
        first, offset = self.logs.get(name, (0, 0))
        sizes = self._sizes_of(name, first, offset) if sink.size else None
        puts = commit.state_puts
        for record in records:
            value = _packb(record)
            puts[log_key(name, offset)] = value
            offset += 1
            if sizes is not None:
                sizes.append(len(value))
                self._log_bytes[name] += len(value)
        keep = first if sink.records is None else max(first, offset - sink.records)
        while sizes is not None and self._log_bytes[name] > sink.size and len(sizes) > 1:
            keep = max(keep, offset - len(sizes) + 1)
            self._log_bytes[name] -= sizes.popleft()
        while sizes is not None and len(sizes) > offset - keep:
            self._log_bytes[name] -= sizes.popleft()
        for dropped in range(first, keep):
            key = log_key(name, dropped)
            if puts.pop(key, None) is None:
                commit.state_deletes.append(key)
        self.logs[name] = (keep, offset)
        commit.offsets[f"l:{name}"] = pack([keep, offset])

    def _sizes_of(self, name: str, first: int, end: int) -> deque[int]:
        """Sizes of a log's kept records (read from the store once)."""
        if name not in self._log_sizes:
            start = log_key(name, first)
            prefix = start[:-8]
            sizes = deque(len(v) for k, v in self.ctx.store.iter_state(self.id, start=start)
                          if k.startswith(prefix) and int.from_bytes(k[-8:], "big") < end)
            self._log_sizes[name], self._log_bytes[name] = sizes, sum(sizes)
        return self._log_sizes[name]

    def _add_lines(self, dest: str, data: bytes, commit: Commit, close: bool = False) -> None:
        """Add a files sink's lines to its open segment, closing it when full or old."""
        segment = self.segments.setdefault(dest, Segment())
        now = self.ctx.clock()
        if segment.opened is None:
            segment.opened, segment.size = now, 0
        segment.size += len(data)
        close = close or segment.size >= SEGMENT_BYTES or now - segment.opened >= SEGMENT_SECONDS
        seq = max(self.next_seq.get(dest, 1), 1)
        self._append(commit, dest, close, data)
        if close:
            segment.opened = None
            segment.closings.append(seq)

    def _close_segments(self, commit: Commit, end: bool) -> None:
        """Close the open segments at end of stream or once old enough."""
        now = self.ctx.clock()
        for dest, segment in self.segments.items():
            if segment.opened is not None and (end or now - segment.opened >= SEGMENT_SECONDS):
                self._add_lines(dest, b"", commit, close=True)

    def _write_segments(self) -> None:
        """Write each closed segment whose commits are durable into its file, whole, then
        let the next commit delete its entries. Whichever primary writes a segment (an
        old one woken from a pause, a new one after a failover) writes the same name and
        bytes, for durable commits are never rewritten."""
        if self.write_again_at:
            if self.ctx.clock() < self.write_again_at:
                return
            self.write_again_at = 0.0
        for dest, segment in self.segments.items():
            while segment.writable(self.released.get(dest, 0)):
                first, closed, data = segment.take(self.pending[dest])
                sink = self.ctx.plan.sinks[dest[len(SEGMENT):]]
                path = sink.segment_file(self.partition, first)
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_atomically(path, data, sync_dir=True)
                except OSError as err:
                    if err.errno in (errno.ENOSPC, errno.EDQUOT):
                        log.error("event=disk_full task=%s file=%s retry_in=%.1f", self.id,
                                  path, RETRY_WRITE)
                        self.write_again_at = self.ctx.clock() + RETRY_WRITE
                    else:
                        self.broken = f"files sink cannot write {path}: {err}"
                    return
                segment.written = closed
                if not self.acked:
                    self.acked_at = self.ctx.clock()
                self.acked.extend((dest, seq) for seq in range(first, closed + 1))

    # ------------------------------------------------------------------ network

    def pump(self) -> None:
        """Send released outbox entries, up to WINDOW unacknowledged per destination.

        A destination's sequences are consecutive and its queue holds them from the
        oldest not yet deleted, so the window is ``first .. first + WINDOW - 1``."""
        for dest in list(self.unsent):
            queue = self.pending.get(dest)
            if not queue or dest.startswith(SEGMENT):
                self.unsent.discard(dest)
                continue
            first = queue[0][0]
            sent = max(self.sent.get(dest, 0), first - 1)
            upto = min(self.released.get(dest, 0), first + WINDOW - 1, queue[-1][0])
            if len(queue) != queue[-1][0] - first + 1:  # a hole: never in one history
                self.broken = (f"outbox to {dest} lacks sequences between {first} and "
                               f"{queue[-1][0]}: its copies do not hold one history")
                log.error("event=outbox_hole task=%s dest=%s first=%d last=%d entries=%d",
                          self.id, dest, first, queue[-1][0], len(queue))
                self.unsent.discard(dest)
                continue
            while sent < upto:
                if not self.ctx.send(self.id, dest, sent + 1, queue[sent + 1 - first][1]):
                    self.sent[dest] = sent
                    return  # the receiving member has enough queued: later
                sent += 1
            self.sent[dest] = sent
            self.unsent.discard(dest)

    def on_ack(self, dest: str, mark: int | None) -> None:
        """The receiver's high-water mark for us (None: no answer, resend later)."""
        queue = self.pending.get(dest)
        if not queue:
            return
        self.unsent.add(dest)  # the window moved, or something must go again
        first, last = queue[0][0], queue[-1][0]
        if mark is None:
            self.sent[dest] = min(self.sent.get(dest, 0), first - 1)
            return
        if first <= mark:  # off the queue now (the window moves at the next pump), out of
            # the store with a later commit
            if not self.acked:
                self.acked_at = self.ctx.clock()
            while queue and queue[0][0] <= mark:
                seq, payload = queue.popleft()
                self.acked.append((dest, seq))
                self.pending_bytes -= len(payload) * (not dest.startswith(SEGMENT))
                self.pending_count -= 1
        if mark < self.sent.get(dest, 0) and last > mark:
            # the receiver lacks something we sent (lost or refused): resend from its mark
            self.sent[dest] = mark

    def status(self) -> dict[str, Any]:
        return {"stage": self.stage.id, "partition": self.partition, "done": self.done,
                "epoch": self.epoch, "durable": self.log.durable, "last": self.number,
                "records_in": self.records_in, "records_out": self.records_out,
                "pending": self.pending_count}


def decode_batch(payload: bytes) -> tuple[bool, list]:
    """(end of stream, records) of an outbox payload.

    Raises:
        FlowError: the payload is not a batch.
    """
    eos, records, _ = decode_entry(payload)
    return eos, records


def decode_entry(payload: bytes) -> tuple[bool, list, int | None]:
    """(end of stream, records, the sender's watermark or None) of an outbox payload.

    Raises:
        FlowError: the payload is not a batch.
    """
    try:
        eos, records, *rest = unpack(payload)
        watermark = rest[0] if rest else None
        if len(rest) > 1 or (watermark is not None and type(watermark) is not int):
            raise ValueError(f"unexpected fields {rest!r}")
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise FlowError(f"received a batch that does not decode: {err}") from err
    return bool(eos), list(records), watermark
