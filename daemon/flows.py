"""The flow service of a daemon: registry, runtime, progress and queries, on the event loop.

It owns the member's copy of the flow registry (and spreads changes), feeds
the runtime process (:mod:`daemon.worker`) what it must run and what arrives
for it, turns the runtime's requests into network traffic, merges everyone's
task progress (a grow-only set per flow version: the flow is ``completed``
once every task of every stage is done somewhere) and answers queries by
asking every member that holds partitions of the flow.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Callable

from .errors import DecodeError, ForgetError, GossipflowError, RequestRefusedError, WireError
from .files import write_atomically
from .placement import place, ranges
from .registry import FlowRecord, Registry
from .runtime import flow_id
from .wire import MessageType, Status
from .worker import WorkerProcess

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("gossipflow.flows")

DATA_TIMEOUT = 15.0
"""Seconds to wait for the marks of a shuffle message (the receiver answers after
committing every batch in it) before sending those batches again."""
REPLICATE_TIMEOUT = 3.0
RESTORE_SECONDS_PER_CHUNK = 0.1
"""Extra seconds the last chunk of a snapshot gets per chunk: its answer comes after the
member restored all of them (about 20 ms per 1 MiB chunk here; 5x for a busy member)."""


def replicate_timeout(kind: str, args: Any) -> float:
    """Seconds a replication request waits for its answer: REPLICATE_TIMEOUT, and for the
    chunk that completes a snapshot (``restore_part``) the time to restore it too."""
    if kind == "restore_part" and isinstance(args, dict) \
            and args.get("index") == args.get("count", 0) - 1:
        return REPLICATE_TIMEOUT + RESTORE_SECONDS_PER_CHUNK * args["count"]
    return REPLICATE_TIMEOUT
"""Seconds to wait for the answer to a replication request (commits, promise, snapshot)."""
VIEW_EVERY = 0.2
FIRST_VIEW_WAIT = 2.0
"""Push-pull intervals a member with a new store and no seeds waits for a peer's registry
before its first view."""
"""Seconds between checks that the runtime has the current view of the cluster."""


class FlowService:
    """Everything about flows that a daemon does, wired to its node."""

    def __init__(self, node: "Node") -> None:
        self.node = node
        self.runtime = WorkerProcess(node.name, node.config.partitions, node.config.replicas,
                                     node.data_dir / "store", logging.getLogger().level,
                                     self._from_worker)
        self.progress: dict[str, tuple[int, set[int]]] = {}
        self.registry = Registry(node.name, on_change=self._changed)
        self._flows_file = node.data_dir / "flows.json"
        self._forgotten_file = node.data_dir / "forgotten.json"
        self.forgotten: set[str] = set()
        """Members removed for good (``gossipflow forget``): they vote in no flow again.
        Grow-only, spread by push-pull and kept in the data dir."""
        self._load()
        self._new_store = not (node.data_dir / "store" / "data.mdb").exists()
        self._exchanged = False
        """Whether a peer's registry reached us in a push-pull (see :meth:`view_changed`)."""
        node.membership.add_state_exchange("fl", self.registry.to_wire, self._merge_registry)
        node.membership.add_state_exchange("pg", self._progress_out, self.merge_progress)
        node.membership.add_state_exchange("fg", lambda: sorted(self.forgotten),
                                           self.merge_forgotten)
        self._view: tuple | None = None

    def start(self) -> None:
        self._started = self.node.loop.clock.now()
        self.runtime.start(self.node.loop, self.node.worker_died)
        self._check_view()

    def _merge_registry(self, items: list) -> None:
        self._exchanged = True
        self.registry.merge_wire(items)

    def _check_view(self) -> None:
        self.view_changed()
        self.node.loop.clock.call_later(VIEW_EVERY, self._check_view)

    def view_changed(self) -> None:
        """Give the runtime the members alive and the members forgotten, once joined.

        A member whose store is new takes the flows it knows at its first view as those
        whose votes it lost (:mod:`daemon.recovery`): without seeds it is joined at
        once, knowing no flow yet, so its first view waits for a peer's registry (the
        others reach it within their push-pull or reconnect interval), or for
        FIRST_VIEW_WAIT push-pull intervals if none comes (a cluster of one)."""
        membership = self.node.membership
        if not membership.joined:
            return
        if self._new_store and not self._exchanged and self._view is None and \
                self.node.loop.clock.now() - self._started < \
                FIRST_VIEW_WAIT * self.node.config.push_pull_interval:
            return
        view = (sorted(m.name for m in membership.live_members()), sorted(self.forgotten))
        if view != self._view:
            self._view = view
            self.runtime.post("view", *view)

    def stop(self) -> None:
        self.runtime.stop()

    # ------------------------------------------------------------------ registry

    def submit(self, args: dict[str, Any], reply: Callable[[Any, str | None], None]) -> None:
        """Register a flow and spread it: ``reply({"flow": summary, "created": bool},
        error)``. Its sources are split here, once, by the runtime process (user code,
        and a hash of every input file); the splits travel with the record.

        Raises:
            FlowExistsError: another text runs under that name and replace is not set.
        """
        name, text, replace = args["name"], args["text"], bool(args.get("replace"))
        current = self.registry.running_already(name, text, replace)
        if current is not None:
            reply({"flow": current.summary(), "created": False}, None)
            return

        def planned(answer: dict[str, Any]) -> None:
            if "error" in answer:
                reply(None, f"{answer['error']} (while {self.node.name} split the flow's "
                      "sources); nothing was submitted")
                return
            live = [m.name for m in self.node.membership.live_members()]
            try:
                record, created = self.registry.submit(name, text, args["path"],
                                                       args["base_dir"], live, replace,
                                                       answer["splits"])
            except GossipflowError as err:
                reply(None, str(err))
                return
            if created:
                self.spread(fl=[record.to_wire()])
            reply({"flow": record.summary(), "created": created}, None)

        self.runtime.plan(text, args["path"], planned)

    def set_status(self, name: str, status: str, error: str = "") -> FlowRecord:
        record = self.registry.set_status(name, status, error)
        self.spread(fl=[record.to_wire()])
        return record

    def _changed(self, record: FlowRecord) -> None:
        self._save()
        self.runtime.post("flow", record)

    def spread(self, **fields: list) -> None:
        """Push registry records (fl) or progress (pg) to every live member now."""
        data = self.node.codec.encode(MessageType.FLOW_UPDATE, fields)
        for member in self.node.membership.live_members():
            if member.name != self.node.name:
                self.node.transport.request(member.address, data,
                                            self.node.config.request_timeout, lambda r: None)

    def handle_update(self, body: dict[str, Any]) -> None:
        """A FLOW_UPDATE from a peer. Raises WireError on bad records."""
        if "fl" in body:
            self.registry.merge_wire(body["fl"])
        if "pg" in body:
            self.merge_progress(body["pg"])
        if "fg" in body:
            self.merge_forgotten(body["fg"])

    # ------------------------------------------------------------------ forgotten members

    def forget(self, name: str) -> list[str]:
        """Remove member ``name`` for good: it votes in no flow from now on, so the
        others can carry on without it. Returns every member forgotten.

        Raises:
            ForgetError: ``name`` is alive (stop it first) or is this member.
        """
        if name == self.node.name:
            raise ForgetError(f"{name} is the member you asked: ask another member to "
                              f"forget it, once it is stopped for good")
        alive = {m.name for m in self.node.membership.live_members()}
        if name in alive:
            raise ForgetError(f"{name} is alive; stop it for good first (a forgotten member "
                              "must never come back with its data dir), then forget it")
        self.merge_forgotten([name])
        self.spread(fg=[name])
        return sorted(self.forgotten)

    def merge_forgotten(self, names: list) -> None:
        """Take members forgotten elsewhere. Raises WireError on names that are not str."""
        if not all(isinstance(n, str) and n for n in names):
            raise WireError("forgotten members must be names")
        new = set(names) - self.forgotten
        if new:
            self.forgotten |= new
            write_atomically(self._forgotten_file, json.dumps(sorted(self.forgotten)))
            log.warning("event=members_forgotten member=%s forgotten=%s%s", self.node.name,
                        ",".join(sorted(new)),
                        " (this member: it takes part in no flow)" if self.node.name in new
                        else "")
            self.view_changed()

    def _load(self) -> None:
        if self._forgotten_file.exists():
            try:
                self.forgotten = set(json.loads(self._forgotten_file.read_text()))
            except (ValueError, TypeError) as err:
                raise DecodeError(f"{self._forgotten_file} is damaged ({err}); move it away: "
                                  f"the cluster will send it again") from err
        if self._flows_file.exists():
            try:
                self.registry.merge_wire(json.loads(self._flows_file.read_text()))
            except (ValueError, WireError) as err:
                raise DecodeError(f"{self._flows_file} is damaged ({err}); move it away: the "
                                  f"cluster will send this member its flows again") from err

    def _save(self) -> None:
        write_atomically(self._flows_file, json.dumps(self.registry.to_wire()))

    # ------------------------------------------------------------------ progress

    def _progress_out(self) -> list:
        return [[fid, total, sorted(done)] for fid, (total, done) in self.progress.items()]

    def merge_progress(self, items: list) -> None:
        """Union peers' done tasks into ours; complete flows whose tasks are all done."""
        for item in items:
            if not (isinstance(item, (list, tuple)) and len(item) == 3
                    and isinstance(item[0], str) and isinstance(item[1], int)
                    and isinstance(item[2], (list, tuple))
                    and all(isinstance(i, int) for i in item[2])):
                raise DecodeError("progress entries are [flow id, task count, [task index]]")
            fid, total, done = item
            _, known = self.progress.setdefault(fid, (total, set()))
            if known.issuperset(done):
                continue
            known.update(done)
            name = fid.rpartition("@")[0]
            record = self.registry.flows.get(name)
            if (len(known) >= total and record is not None and flow_id(record) == fid
                    and record.status == "running"):
                log.info("event=flow_completed member=%s flow=%s", self.node.name, fid)
                self.set_status(name, "completed")

    # ------------------------------------------------------------------ the runtime process

    def _from_worker(self, message: tuple) -> None:
        kind = message[0]
        if kind == "send":
            _, send_id, member, entries = message
            self.send_data(member, entries,
                            lambda marks: self.runtime.post("marks", send_id, marks))
        elif kind == "call":
            _, call_id, member, call, args = message
            self._replicate(member, call, args,
                            lambda answer: self.runtime.post("called", call_id, answer))
        elif kind == "failed":
            self._fail(FlowRecord.from_wire(message[1]), message[2])
        elif kind == "progress":
            _, fid, total, done = message
            self.merge_progress([[fid, total, done]])
            self.spread(pg=[[fid, total, done]])

    def send_data(self, member: str, entries: list[list],
                   on_marks: Callable[[list | None], None]) -> None:
        target = self.node.membership.members.get(member)
        if target is None or target.status not in (Status.ALIVE, Status.SUSPECT):
            on_marks(None)
            return
        data = self.node.codec.encode(MessageType.DATA, {"b": entries})

        def on_reply(reply: bytes | None) -> None:
            marks = None
            if reply is not None:
                try:
                    kind, body = self.node.codec.decode(reply)
                    if kind == MessageType.API_REPLY and isinstance(body.get("result"), list):
                        marks = body["result"]
                except WireError:
                    pass
            on_marks(marks)

        self.node.transport.request(target.address, data, DATA_TIMEOUT, on_reply)

    def _replicate(self, member: str, kind: str, args: Any,
                   on_answer: Callable[[Any], None]) -> None:
        target = self.node.membership.members.get(member)
        if target is None or target.status not in (Status.ALIVE, Status.SUSPECT):
            on_answer(None)
            return
        data = self.node.codec.encode(MessageType.REPLICATE, {"k": kind, "a": args})

        def on_reply(reply: bytes | None) -> None:
            answer = None
            if reply is not None:
                try:
                    kind, body = self.node.codec.decode(reply)
                    if kind == MessageType.API_REPLY:
                        answer = body.get("result")
                except WireError:
                    pass
            on_answer(answer)

        self.node.transport.request(target.address, data, replicate_timeout(kind, args), on_reply)

    def handle_replicate(self, body: dict[str, Any], reply: Callable[[bytes], None]) -> None:
        """A peer's replication request, answered by our runtime against our store."""
        codec = self.node.codec
        self.runtime.serve(body["k"], body["a"], lambda answer: reply(
            codec.encode(MessageType.API_REPLY, {"result": answer})))

    def handle_data(self, body: dict[str, Any], reply: Callable[[bytes], None]) -> None:
        """Shuffled batches for our tasks; the reply (our mark for each) comes after their
        commits. Raises DecodeError for a malformed entry."""
        entries = body["b"]
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 6 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and isinstance(entry[2], int)
                    and isinstance(entry[3], str) and isinstance(entry[4], int)
                    and isinstance(entry[5], bytes)):
                raise DecodeError("DATA entries are [flow, stage, partition, origin, seq, data]")
        codec = self.node.codec
        self.runtime.data(entries, lambda marks: reply(
            codec.encode(MessageType.API_REPLY, {"result": marks})))

    def _fail(self, record: FlowRecord, error: str) -> None:
        """The runtime failed a flow: failed everywhere, with the error and this member."""
        current = self.registry.flows.get(record.name)
        if current is not None and current.run == record.run and current.status == "running":
            self.set_status(record.name, "failed", f"member {self.node.name}: {error}")

    # ------------------------------------------------------------------ queries

    def query(self, args: dict[str, Any], reply: Callable[[Any, str | None], None]) -> None:
        """Gather the table of flow ``name`` (or one ``key``) from every live member, the
        newest copy of each task. Complete when, for every partition, a member of its
        replica set answered (each holds every durable commit), even if others did not,
        and some member that answered holds commits of it (with R=1, a dead member's
        partitions are placed on a live member that has nothing of them)."""
        record = self.registry.get(args["name"])
        request = {"flow": flow_id(record), "key": args.get("key")}
        live = sorted(m.name for m in self.node.membership.live_members())
        placement = place(live, self.node.config.partitions, self.node.config.replicas)
        answered: set[str] = set()
        held: set[int] = set()  # partitions some member that answered holds commits of

        def merge(answers: dict[str, Any]) -> dict[str, list]:
            answered.update(answers)
            held.update(int(task.rpartition("/")[2]) for copies in answers.values()
                        for task, copy in copies.items() if copy[1])  # not a bare promise
            newest: dict[str, list] = {}  # task -> [epoch, last, rows] of its newest copy
            for copies in answers.values():
                for task, copy in copies.items():
                    if task not in newest or copy[:2] > newest[task][:2]:
                        newest[task] = copy
            tables: dict[str, list[bytes]] = {}  # sink -> packed rows, one array a task
            for _, _, rows in newest.values():
                for sink, packed in rows.items():
                    tables.setdefault(sink, []).append(packed)
            return tables

        def done(tables: dict[str, list], error: str | None) -> None:
            if any(answered.isdisjoint(s) for s in placement):
                reply(tables, error)
                return
            lost = [p for p in range(len(placement)) if p not in held]
            reply(tables, f"no member that answered holds partitions {ranges(lost)} of flow "
                  f"{record.name} (their copies are on members that are down, or not made "
                  "yet): try again when they are back" if lost else None)

        self.gather(f"flow {record.name}", "rows", lambda member: request, self.runtime.rows,
                    merge, done)

    def progress_of(self, args: dict[str, Any],
                    reply: Callable[[Any, str | None], None]) -> None:
        """Per stage, summed over every member: records in/out, tasks done, unacknowledged."""
        record = self.registry.get(args["name"])
        fid = flow_id(record)

        def local(request: dict[str, Any], done: Callable[[Any], None]) -> None:
            done(self.runtime.status().get(request["flow"], {}))

        def merge(answers: dict[str, Any]) -> dict[str, dict[str, int]]:
            stages: dict[str, dict[str, int]] = {}
            for per_stage in answers.values():
                for stage, figures in per_stage.items():
                    total = stages.setdefault(stage, {})
                    for name, value in figures.items():
                        total[name] = min(total.get(name, value), value) \
                            if name == "watermark" else total.get(name, 0) + value
            return stages

        self.gather(f"flow {record.name}", "local_progress", lambda member: {"flow": fid},
                    local, merge, reply)

    def tail(self, args: dict[str, Any], reply: Callable[[Any, str | None], None]) -> None:
        """What publish sinks of flow ``name`` published after each member's cursor."""
        record = self.registry.get(args["name"])
        cursors = args.get("cursors") or {}
        if not isinstance(cursors, dict):
            raise ValueError("cursors must map member names to numbers")

        def local(request: dict[str, Any], done: Callable[[Any], None]) -> None:
            done(self.published(request))

        def merge(answers: dict[str, Any]) -> dict[str, Any]:
            return {"records": [r for a in answers.values() for r in a["records"]],
                    "cursors": {m: a["cursor"] for m, a in answers.items()}}

        fid = flow_id(record)
        self.gather(f"flow {record.name}", "published",
                    lambda member: {"flow": fid, "cursor": cursors.get(member, 0)},
                    local, merge, reply)

    def log(self, args: dict[str, Any], reply: Callable[[Any, str | None], None]) -> None:
        """Records of flow ``name``'s log sink from offsets ``from`` ({"partition": offset},
        0 for a partition not named; or ``end``: none, only where each ends), gathered
        from the primaries: ``{"sink", "parts": {"p": [first, bound, packed records]}}``."""
        record = self.registry.get(args["name"])
        starts = args.get("from") or {}
        if not isinstance(starts, dict) or not all(
                isinstance(k, str) and type(v) is int and v >= 0 for k, v in starts.items()):
            raise ValueError("from must map partitions to offsets >= 0")
        request = {"flow": flow_id(record), "sink": args.get("sink"), "from": starts,
                   "end": bool(args.get("end"))}

        def merge(answers: dict[str, Any]) -> dict[str, Any]:
            errors = [a["error"] for a in answers.values() if "error" in a]
            if errors:
                return {"error": errors[0]}
            parts: dict[str, list] = {}
            for answer in answers.values():  # a partition moving may answer twice
                for p, part in answer.get("parts", {}).items():
                    if p not in parts or part[1] > parts[p][1]:
                        parts[p] = part
            sink = next((a.get("sink") for a in answers.values() if a.get("sink")), None)
            return {"sink": sink, "parts": parts}

        def done(result: dict[str, Any], error: str | None) -> None:
            if "error" in result:
                reply(None, result["error"])
            else:
                reply(result, error)

        self.gather(f"flow {record.name}", "log_local", lambda member: request,
                    self.runtime.log, merge, done)

    def partitions(self, reply: Callable[[Any, str | None], None]) -> None:
        """Per flow version, per partition, the members running or taking it over, with
        epoch, replicas, state and commits not yet on every replica."""
        def local(request: dict[str, Any], done: Callable[[Any], None]) -> None:
            done(self.runtime.partitions)

        def merge(answers: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
            flows: dict[str, dict[str, dict[str, Any]]] = {}
            for member, per_flow in sorted(answers.items()):
                for fid, parts in per_flow.items():
                    for p, state in parts.items():
                        flows.setdefault(fid, {}).setdefault(str(p), {})[member] = state
            return flows

        self.gather("the partitions", "local_partitions", lambda member: {}, local, merge, reply)

    def published(self, request: dict[str, Any]) -> dict[str, Any]:
        """This member's records of a flow version published after ``request["cursor"]``."""
        records, cursor = self.runtime.published.since(request["flow"], int(request["cursor"]))
        return {"records": records, "cursor": cursor}

    def gather(self, what: str, op: str,
               request_for: Callable[[str], dict[str, Any]],
               local: Callable[[dict[str, Any], Callable[[Any], None]], None],
               merge: Callable[[dict[str, Any]], Any],
               reply: Callable[[Any, str | None], None]) -> None:
        """Ask every live member for ``op`` about ``record`` with ``request_for(member)``
        (ourselves through ``local(request, done)``) and ``reply(merge(answers), error)``;
        the error names members that did not answer."""
        owners = sorted(m.name for m in self.node.membership.live_members())
        answers: dict[str, Any] = {}
        missing: list[str] = []

        def add(member: str, answer: Any) -> None:
            if answer is None:
                missing.append(member)
            else:
                answers[member] = answer
            if len(answers) + len(missing) == len(owners):
                reply(merge(answers), f"no answer from {', '.join(sorted(missing))}, which "
                      f"may hold part of {what}: try again when they are back"
                      if missing else None)

        for member in owners:
            request = request_for(member)
            if member == self.node.name:
                local(request, lambda answer, member=member: add(member, answer))
            else:
                self._ask(member, op, request, add)

    def _ask(self, member: str, op: str, request: dict, add: Callable[[str, Any], None]) -> None:
        target = self.node.membership.members.get(member)
        if target is None or target.status not in (Status.ALIVE, Status.SUSPECT):
            add(member, None)
            return
        data = self.node.codec.encode(MessageType.API_REQUEST, {"op": op, "args": request})

        def on_reply(answer: bytes | None) -> None:
            try:
                kind, body = self.node.codec.decode(answer) if answer else (None, {})
            except WireError:
                kind = None
            result = body.get("result") if kind == MessageType.API_REPLY else None
            add(member, result if isinstance(result, dict) else None)

        self.node.transport.request(target.address, data, self.node.config.request_timeout,
                                    on_reply)


def pick_table(rows: dict[str, list], sink: str | None) -> list:
    """The rows of one table sink: the named one, or the only one there is.

    Raises:
        RequestRefusedError: no such sink, or several and none named.
    """
    if sink is not None:
        if sink not in rows:
            raise RequestRefusedError(f"no rows from a table sink named {sink!r} "
                                      f"(tables with rows: {', '.join(sorted(rows)) or 'none'})")
        return rows[sink]
    if len(rows) > 1:
        raise RequestRefusedError(f"the flow has several tables ({', '.join(sorted(rows))}): "
                                  f"pass --sink NAME")
    return next(iter(rows.values()), [])

