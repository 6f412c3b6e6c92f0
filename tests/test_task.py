"""The partition task alone (no network): dedupe by high-water mark, commits, restarts."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from daemon.store import Commit, Store, TaskId
from daemon.task import (
    BATCHES_PER_COMMIT,
    SOURCE_BATCHES_PER_COMMIT,
    SOURCE_STEP_TIME,
    FlowContext,
    Inbound,
    PartitionTask,
    decode_batch,
    decode_entry,
    pack,
    table_key,
    unpack,
)
from nodes import FlowError, load_flow
from nodes.eventtime import IDLE
from nodes.plan import plan

FLOW = """
from nodes import Flow, sources, sinks
flow = Flow("wc")
(flow.source(sources.generate(40, lambda i: f"a b w{i % 4}"))
     .flat_map(str.split).key_by(lambda w: w).count().sink(sinks.table()))
"""
P = 4


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "store", sync=False) as s:
        yield s


def context(store: Store, sent: list, tmp_path: Path) -> FlowContext:
    the_plan = plan(load_flow(FLOW, str(tmp_path / "wc.py")))
    ctx = FlowContext("wc@1", the_plan, P, store,
                      lambda task, dest, seq, payload:
                      sent.append((task, dest, seq, payload)) or True,
                      batch_size=7)
    ctx.plan_splits()
    return ctx


def batch(origin: str, seq: int, records: list, replies: list, eos: bool = False) -> Inbound:
    return Inbound(origin, seq, eos, records, lambda mark: replies.append((origin, seq, mark)))


def test_receiver_applies_each_sequence_once_and_waits_for_gaps(store, tmp_path):
    ctx = context(store, [], tmp_path)
    task = PartitionTask(ctx, ctx.plan.stages[1], 0)
    replies: list = []
    for b in [batch("0/1", 1, [("a", 2)], replies), batch("0/1", 1, [("a", 2)], replies),
              batch("0/1", 3, [("a", 5)], replies)]:
        task.receive(b, 0.0)
    task.step()
    assert task.state == {"a": 2}  # the duplicate and the gap were not applied
    assert replies == [("0/1", 1, 1), ("0/1", 1, 1), ("0/1", 3, 1)]  # the gap learns mark 1
    replies.clear()
    task.receive(batch("0/1", 2, [("a", 1)], replies), 0.0)
    task.receive(batch("0/1", 3, [("a", 5)], replies), 0.0)
    task.step()
    assert task.state == {"a": 8} and replies == [("0/1", 2, 2), ("0/1", 3, 3)]
    assert store.marks(task.id) == {"0/1": 3}

    again = PartitionTask(ctx, ctx.plan.stages[1], 0)  # a restart: all from the store
    assert again.state == {"a": 8} and again.marks == {"0/1": 3}
    replies.clear()
    again.receive(batch("0/1", 3, [("a", 5)], replies), 0.0)
    again.step()
    assert again.state == {"a": 8} and replies == [("0/1", 3, 3)]


def test_source_resumes_at_its_committed_offset_and_resends_its_outbox(store, tmp_path):
    sent: list = []
    ctx = context(store, sent, tmp_path)
    mine = [p for p in range(P) if p in ctx.senders(0)]
    task = PartitionTask(ctx, ctx.plan.stages[0], mine[0])
    task.step()  # reads up to batch_size * SOURCE_BATCHES_PER_COMMIT records: its whole split
    assert task.input_done and task.offsets["eos"]
    outbox = store.outbox(task.id)
    # one batch per destination: the split's words and end of stream travel together
    assert sorted(dest for dest, _, _ in outbox) == sorted(f"1/{q}" for q in range(P))
    words: Counter = Counter()
    for dest, seq, payload in outbox:
        eos, records = decode_batch(payload)
        assert eos
        words.update(dict(records))
    lines = [f"a b w{i % 4}" for i in range(40)][:10]  # split 0 holds records 0..9
    assert words == Counter(w for line in lines for w in line.split())
    assert sorted((d, s) for _, d, s, _ in sent) == sorted((d, s) for d, s, _ in outbox)

    sent.clear()
    restarted = PartitionTask(ctx, ctx.plan.stages[0], mine[0])  # after a crash
    assert restarted.wake_at(0.0) is None  # nothing left to read
    restarted.pump()  # resends the same sequences, receivers drop what they have
    assert sorted((d, s) for _, d, s, _ in sent) == sorted((d, s) for d, s, _ in outbox)
    for dest, seq, _ in outbox:
        restarted.on_ack(dest, seq)
    restarted.step()
    assert store.outbox(restarted.id) == [] and restarted.done
    assert store.next_sequences(restarted.id) == {d: s + 1 for d, s, _ in outbox}


def test_end_of_stream_comes_after_the_last_data(store, tmp_path):
    sent: list = []
    ctx = context(store, sent, tmp_path)
    task = PartitionTask(ctx, ctx.plan.stages[1], 2)
    replies: list = []
    origins = sorted(task.upstream)
    for origin in origins:
        task.receive(batch(origin, 1, [("w2", 1)], replies, eos=True), 0.0)
    task.step()
    assert task.input_done and task.done
    # count().sink(table()): the table rows are the state, written once
    assert task.table_is_state == "table"
    assert store.get_state(task.id, table_key("table", "w2")) == pack(len(origins))
    assert store.get_state(task.id, b"s" + pack("w2")) is None
    assert sent == []  # the last stage sends nothing downstream, only to its table



def test_a_source_stops_reading_while_its_receivers_lag(store, tmp_path, monkeypatch):
    """Backpressure: unacknowledged outputs stop a source; acknowledgements resume it."""
    import daemon.task

    MAX_PENDING_BYTES = 30_000  # noqa: N806 - the module's limit, made small for the test
    monkeypatch.setattr(daemon.task, "MAX_PENDING_BYTES", MAX_PENDING_BYTES)

    sent: list = []
    text = FLOW.replace('generate(40, lambda i: f"a b w{i % 4}")',
                        'generate(400000, lambda i: f"w{i} x{i}")')
    assert text != FLOW
    the_plan = plan(load_flow(text, str(tmp_path / "wc.py")))
    ctx = FlowContext("wc@1", the_plan, 64, store,
                      lambda task, dest, seq, payload: sent.append((dest, seq)) or True,
                      batch_size=100)
    ctx.plan_splits()
    task = PartitionTask(ctx, the_plan.stages[0], 0)
    before = 0
    while task.wake_at(0.0) is not None:
        before = task.pending_bytes
        task.step()
    pending = sum(len(p) for queue in task.pending.values() for _, p in queue)
    assert pending == task.pending_bytes
    assert before < MAX_PENDING_BYTES <= pending  # it read while below the limit, then stopped
    assert not task.input_done  # it stopped early: the split is far from read
    read = task.records_in
    for dest, seq in list(sent):
        task.on_ack(dest, seq)
    assert task.wake_at(0.0) == 0.0
    task.step()  # deletes the acknowledged entries ...
    task.step()  # ... and reads on
    assert task.records_in > read


def test_a_source_step_stops_reading_after_its_time(store, tmp_path):
    """Slow user functions make smaller commits, not a step that blocks the runtime."""
    ticks = iter(range(1000))
    text = FLOW.replace("generate(40,", "generate(4000,")
    the_plan = plan(load_flow(text, str(tmp_path / "wc.py")))
    ctx = FlowContext("wc@1", the_plan, 1, store, lambda *sent: True, batch_size=10,
                      clock=lambda: next(ticks) * SOURCE_STEP_TIME / 2.5)
    ctx.plan_splits()
    task = PartitionTask(ctx, the_plan.stages[0], 0)
    task.step()  # the clock says 0 (start), 0.4 and 0.8 of the step's time (read), 1.2: stop
    assert task.records_in == 20 and not task.input_done
    task.step()
    assert task.records_in == 40


def test_a_source_step_reads_less_when_its_output_is_not_combined(store, tmp_path):
    """A count's output holds one pair per key, however much is read; a fold's grows with
    every record: then a step stops at BATCHES_PER_COMMIT batches of output."""
    folding = FLOW.replace("generate(40,", "generate(100000,").replace(
        ".count()", ".fold(0, lambda n, w: n + 1)")
    counted = FLOW.replace("generate(40,", "generate(100000,")
    read = {}
    for name, text in (("fold", folding), ("count", counted)):
        the_plan = plan(load_flow(text, str(tmp_path / f"{name}.py")))
        ctx = FlowContext(f"{name}@1", the_plan, 1, store, lambda *sent: True, batch_size=10,
                          clock=lambda: 0.0)  # no time limit
        ctx.plan_splits()
        task = PartitionTask(ctx, the_plan.stages[0], 0)
        task.step()
        read[name] = task.records_in
    # the fold's output, 3 words per record, reaches 10 * BATCHES_PER_COMMIT = 500 records
    # after 17 batches of 10; the count's holds 6 keys when the step has read its
    # 10 * SOURCE_BATCHES_PER_COMMIT records (a read counts one more than its records)
    assert (BATCHES_PER_COMMIT, SOURCE_BATCHES_PER_COMMIT) == (50, 200)
    assert read == {"fold": 170, "count": 10 * math.ceil(2000 / 11)}


def test_an_outbox_with_a_hole_breaks_the_task_loudly_instead_of_crashing(store, tmp_path):
    """An outbox whose sequences skip one never happens in one history (the runtime
    crashed on it in a loop when two histories of a partition existed): the task sends
    what it can elsewhere, and says why it is broken so the runtime fails the flow."""
    sent: list = []
    ctx = context(store, sent, tmp_path)
    task_id = TaskId(ctx.flow_id, 1, 0)
    store.apply(Commit(task_id, 1, 1, outbox_puts=[("2/0", 1, pack([False, []])),
                                                   ("2/0", 2, pack([False, []])),
                                                   ("2/0", 4, pack([False, []])),
                                                   ("2/1", 1, pack([False, []]))]))
    task = PartitionTask(ctx, ctx.plan.stages[1], 0)
    task.pump()
    assert "lacks sequences between 1 and 4" in task.broken
    assert [(dest, seq) for _, dest, seq, _ in sent] == [("2/1", 1)]


def test_a_fenced_task_runs_but_releases_nothing_until_open_and_its_seal_is_durable(
        store, tmp_path):
    """A takeover activates its tasks behind their seal, fenced: they process and commit
    (the seal first on the way to the replicas) but send no outbox entry and answer no
    input until the takeover completes (open) and the seal is on every replica."""
    sent: list = []
    ctx = context(store, sent, tmp_path)
    source = PartitionTask(ctx, ctx.plan.stages[0], next(iter(ctx.senders(0))))
    source.step()  # an old primary's life: its outbox stays in the store
    outbox = [(dest, seq) for dest, seq, _ in store.outbox(source.id)]
    assert outbox and sorted((d, s) for _, d, s, _ in sent) == sorted(outbox)
    tasks = [source.id, TaskId(ctx.flow_id, 1, 0)]
    for task_id in tasks:  # the takeover's seals, applied here at its epoch
        store.apply(Commit(task_id, 7, store.task_meta(task_id).last + 1))
    sent.clear()
    resumed = PartitionTask(ctx, ctx.plan.stages[0], source.partition, 7, ("b",), fenced=True)
    keyed = PartitionTask(ctx, ctx.plan.stages[1], 0, 7, ("b",), fenced=True)
    seal = store.task_meta(keyed.id).last
    replies: list = []
    keyed.receive(batch(sorted(keyed.upstream)[0], 1, [("a", 3)], replies), 0.0)
    keyed.step()
    resumed.pump()
    assert keyed.state == {"a": 3} and keyed.number == seal + 1  # it ran and committed
    assert [n for n, _ in keyed.log.take("b")] == [seal, seal + 1]  # the seal goes first
    assert replies == [] and sent == []  # nothing left: not durable, not open
    keyed.on_replicated("b", seal + 1)
    resumed.on_replicated("b", store.task_meta(resumed.id).last)
    assert replies == [] and sent == [] and not keyed.done  # durable, but still fenced
    keyed.open()
    resumed.open()
    assert replies == [(min(keyed.upstream), 1, 1)]
    assert sorted((d, s) for _, d, s, _ in sent) == sorted(outbox)  # sent again, once open


def test_an_open_task_waits_for_its_seal_on_every_replica(store, tmp_path):
    sent: list = []
    ctx = context(store, sent, tmp_path)
    keyed = PartitionTask(ctx, ctx.plan.stages[1], 0)
    store.apply(Commit(keyed.id, 5, 1))
    keyed = PartitionTask(ctx, ctx.plan.stages[1], 0, 5, ("b", "c"), fenced=True)
    replies: list = []
    keyed.receive(batch(sorted(keyed.upstream)[0], 1, [("a", 1)], replies), 0.0)
    keyed.step()
    keyed.open()
    assert replies == []
    keyed.on_replicated("b", 2)
    keyed.on_replicated("c", 1)  # the seal alone: the commit answering the input is not
    assert replies == []
    keyed.on_replicated("c", 2)
    assert replies == [(min(keyed.upstream), 1, 1)]


TIMED = """
from datetime import timedelta as td
from nodes import Flow, sources, sinks, windows
flow = Flow("t")
(flow.source(sources.generate(30, lambda i: {"ts": 100 + i - 10 * (i == 20), "k": "a"}))
     .event_time(lambda r: r["ts"], max_delay=td(seconds=5))
     .key_by(lambda r: r["k"]).window(windows.tumbling(td(seconds=10))).count()
     .sink(sinks.table()))
"""


def test_event_time_rides_on_entries_and_is_kept_with_offsets(store, tmp_path):
    """A source task with event time stores its split's largest ts beside its offset and
    puts its watermark on every entry to the window stage; the window task keeps its
    sender's watermark with its marks and fires exactly the windows it passed."""
    sent: list = []
    the_plan = plan(load_flow(TIMED, str(tmp_path / "t.py")))
    ctx = FlowContext("t@1", the_plan, 2, store, lambda task, dest, seq, payload:
                      sent.append((dest, seq, payload)) or True, batch_size=7)
    ctx.plan_splits()
    (p,) = ctx.senders(0)  # generate's event-time splits are fixed ranges: one here
    source = PartitionTask(ctx, the_plan.stages[0], p)
    source.step()
    split = source.splits[0]
    assert source.offsets[f"t{split}"] == 129_000  # the largest ts read, in ms
    assert store.offsets(source.id)[f"t{split}"] == pack(129_000)
    (dest, seq, payload), = [e for e in sent if decode_entry(e[2])[1]]  # key "a": one dest
    eos, records, watermark = decode_entry(payload)
    assert eos and watermark == 1 << 62  # read to the end: +inf
    assert sorted((r[1], r[3]) for r in records) == [(100_000, 10), (110_000, 11),
                                                      (120_000, 9)]  # combined per window
    window = PartitionTask(ctx, the_plan.stages[1], int(dest.split("/")[1]))
    (origin,) = window.upstream
    window.receive(Inbound(origin, seq, False, records, lambda m: None, watermark=124_000),
                   0.0)
    window.step()  # [100, 110) and [110, 120) end by 124 s; [120, 130) does not
    assert store.offsets(window.id)[f"w:{origin}"] == pack(124_000)
    fired = {unpack(k[len(b"t") + len(b"table") + 1:]): unpack(v).value
             for k, v in store.iter_state(window.id, start=b"t")}
    assert fired == {("a", 100_000): 10, ("a", 110_000): 11}  # ts 110 at i=20: on time
    restarted = PartitionTask(ctx, the_plan.stages[1], window.partition)
    assert restarted.senders_at == {origin: 124_000}


@pytest.mark.parametrize("payload", [pack([False, [], "soon"]), pack([False, [], 1, 2])])
def test_an_entry_with_a_bad_watermark_is_refused(payload):
    with pytest.raises(FlowError, match="does not decode"):
        decode_entry(payload)


def test_idle_senders_leave_the_minimum_and_all_idle_gives_the_highest(store, tmp_path):
    """A window task's watermark: the lowest of its senders that are not idle; once every
    one is idle, the highest any reached; a sender that reads again counts again. Kept
    with the marks, so a restart knows which are idle."""
    text = TIMED.replace("generate(30, lambda i: {\"ts\": 100 + i - 10 * (i == 20), "
                         "\"k\": \"a\"})", "ingest(\"in\")")
    the_plan = plan(load_flow(text, str(tmp_path / "t.py")))
    ctx = FlowContext("t@1", the_plan, 2, store, lambda *sent: True)
    ctx.plan_splits()
    window = PartitionTask(ctx, the_plan.stages[1], 0)
    a, b = sorted(window.upstream)
    for origin, at in [(a, 50_000), (b, 20_000)]:
        window.receive(Inbound(origin, 1, False, [], lambda m: None, watermark=at), 0.0)
    window.step()
    assert window.senders_watermark() == 20_000
    window.receive(Inbound(b, 2, False, [], lambda m: None, watermark=IDLE), 0.0)
    window.step()
    assert window.senders_watermark() == 50_000  # b idle: a alone counts
    window.receive(Inbound(a, 2, False, [], lambda m: None, watermark=IDLE), 0.0)
    window.step()
    assert window.senders_watermark() == 50_000  # both idle: the highest reached
    restarted = PartitionTask(ctx, the_plan.stages[1], 0)
    assert restarted.idle_senders == {a, b} and restarted.senders_watermark() == 50_000
    restarted.receive(Inbound(b, 3, False, [], lambda m: None, watermark=30_000), 0.0)
    restarted.step()
    assert restarted.senders_watermark() == 30_000  # b reads again: the lowest again


def test_an_acknowledgement_frees_the_window_at_once_and_the_store_with_a_later_commit(
        store, tmp_path):
    """Acknowledged outbox entries leave the send window when acknowledged; their
    deletion waits DELETES_WAIT for a commit that changes something else, so a commit of
    deletions alone is rare. End of stream deletes at once."""
    from daemon.task import DELETES_WAIT, MAX_MEMBER_PENDING_BYTES, WINDOW

    sent: list = []
    now = [0.0]
    text = FLOW.replace('generate(40, lambda i: f"a b w{i % 4}")',
                        'generate(4000000, lambda i: f"w{i % 3}")')
    the_plan = plan(load_flow(text, str(tmp_path / "wc.py")))
    ctx = FlowContext("wc@1", the_plan, 1, store,
                      lambda task, dest, seq, payload: sent.append((dest, seq)) or True,
                      batch_size=10, clock=lambda: now[0])
    ctx.plan_splits()
    task = PartitionTask(ctx, the_plan.stages[0], 0)
    for _ in range(WINDOW + 2):  # one combined entry to "1/0" per step
        task.step()
    assert sent == [("1/0", seq) for seq in range(1, WINDOW + 1)]  # the window is full
    number, read = task.number, task.records_in

    now[0] = 5.0
    task.on_ack("1/0", WINDOW)
    task.pump()  # as the runtime does for every task every REPORT_EVERY
    assert sent[WINDOW:] == [("1/0", WINDOW + 1), ("1/0", WINDOW + 2)]  # no commit needed
    assert task.number == number and task.pending_count == 2
    assert len(store.outbox(task.id)) == WINDOW + 2  # still stored ...

    ctx.pressure.outbox_bytes = MAX_MEMBER_PENDING_BYTES  # nothing else to do: no reading
    assert task.wake_at(now[0]) == 5.0 + DELETES_WAIT  # ... until the wait is over
    now[0] = 5.0 + DELETES_WAIT
    task.step()
    assert task.number == number + 1 and task.records_in == read
    assert [seq for _, seq, _ in store.outbox(task.id)] == [WINDOW + 1, WINDOW + 2]
    assert task.wake_at(now[0]) is None

    restarted = PartitionTask(ctx, the_plan.stages[0], 0)  # a crash: the store holds
    assert [seq for seq, _ in restarted.pending["1/0"]] == [WINDOW + 1, WINDOW + 2]  # the rest


def test_a_source_stops_reading_while_its_members_outbox_is_full(store, tmp_path):
    """The member-wide limit: whatever its own outbox holds, a source reads nothing while
    all tasks of its member together hold MAX_MEMBER_PENDING_BYTES unacknowledged."""
    from daemon.task import MAX_MEMBER_PENDING_BYTES

    text = FLOW.replace("generate(40,", "generate(400000,")
    the_plan = plan(load_flow(text, str(tmp_path / "wc.py")))
    ctx = FlowContext("wc@1", the_plan, 1, store, lambda *sent: True, batch_size=10)
    ctx.plan_splits()
    task = PartitionTask(ctx, the_plan.stages[0], 0)
    ctx.pressure.outbox_bytes = MAX_MEMBER_PENDING_BYTES
    assert task.pending_bytes == 0 and task.wake_at(0.0) is None
    task.step()
    assert task.records_in == 0
    ctx.pressure.outbox_bytes = MAX_MEMBER_PENDING_BYTES - 1
    assert task.wake_at(0.0) == 0.0
    task.step()
    assert task.records_in > 0
