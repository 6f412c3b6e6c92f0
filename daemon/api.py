"""Client-facing requests: every daemon answers them from its own view.

A request is ``{"op": NAME, "args": {...}}``; the answer is API_REPLY
``{"result": ...}`` or ERROR ``{"error": "..."}``. A request can never crash
the daemon: an unknown op or bad arguments get an ERROR that says what is served.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from .errors import ConfigError, GossipflowError
from .flows import pick_table
from .placement import place
from .runtime import flow_id
from .transport import faults as fault_injection
from .wire import MessageType

log = logging.getLogger("gossipflow.api")

Respond = Callable[[MessageType, dict[str, Any]], None]

if TYPE_CHECKING:
    from .node import Node


def members(node: "Node", args: dict[str, Any]) -> list[dict[str, Any]]:
    """Every member this daemon knows (tombstones included), sorted by name."""
    return [m.to_dict() for m in sorted(node.membership.members.values(), key=lambda m: m.name)]


def ring(node: "Node", args: dict[str, Any], respond: Respond) -> None:
    """Partition -> replica set (primary first), from the live members in this daemon's
    view; and per running flow, per partition, who runs it or takes it over, at which
    epoch, with which replicas (gathered from every live member)."""
    live = sorted(m.name for m in node.membership.live_members())
    placement = place(live, node.config.partitions, node.config.replicas)

    def done(flows: dict[str, Any], error: str | None) -> None:
        respond(MessageType.API_REPLY, {"result": {
            "partitions": node.config.partitions, "replicas": node.config.replicas,
            "members": live, "placement": placement, "flows": flows,
            "incomplete": error or ""}})

    node.flows.partitions(done)


def local_partitions(node: "Node", args: dict[str, Any]) -> dict[str, Any]:
    """Partitions this member runs or takes over, per flow version (asked by ``ring``)."""
    return node.flows.runtime.partitions


def status(node: "Node", args: dict[str, Any]) -> dict[str, Any]:
    """This daemon: name, address, incarnation, local health and protocol counters."""
    m = node.membership
    return {"name": node.name, "address": node.transport.address,
            "incarnation": m.me.incarnation, "awareness": m.awareness, "joined": m.joined,
            "uptime": round(time.time() - node.started_at, 3),
            "stats": dict(m.stats + node.transport.stats)}


def submit(node: "Node", args: dict[str, Any], respond: Respond) -> None:
    """Register a flow (checked by the client first, its sources split here) and spread
    it to every member."""
    for name in ("name", "text", "path", "base_dir"):
        _arg(args, name, str)

    def done(result: dict[str, Any], error: str | None) -> None:
        if error:
            respond(MessageType.ERROR, {"error": error})
        else:
            respond(MessageType.API_REPLY, {"result": result})

    node.flows.submit(args, done)


def flows(node: "Node", args: dict[str, Any]) -> list[dict[str, Any]]:
    """Every flow in the registry, without its text, sorted by name."""
    registry = node.flows.registry
    return [registry.flows[name].summary() for name in sorted(registry.flows)]


def flow(node: "Node", args: dict[str, Any]) -> dict[str, Any]:
    """One flow's record (not its text: polled often) and this member's view of its
    progress."""
    record = node.flows.registry.get(_arg(args, "name", str))
    total, done = node.flows.progress.get(flow_id(record), (0, set()))
    return {**record.summary(), "tasks": total, "tasks_done": len(done),
            "local": node.flows.runtime.status().get(flow_id(record), {})}


def cancel(node: "Node", args: dict[str, Any]) -> dict[str, Any]:
    """Mark a flow cancelled everywhere."""
    return node.flows.set_status(_arg(args, "name", str), "cancelled").summary()


def forget(node: "Node", args: dict[str, Any]) -> dict[str, Any]:
    """Remove a stopped member for good: it votes in no flow again."""
    return {"forgotten": node.flows.forget(_arg(args, "name", str))}


def rows(node: "Node", args: dict[str, Any], respond: Respond) -> None:
    """Table rows this member holds for a flow version (asked by other members' queries)."""
    _arg(args, "flow", str)
    node.flows.runtime.rows(args, lambda result: respond(MessageType.API_REPLY,
                                                        {"result": result}))


def usage(node: "Node", args: dict[str, Any], respond: Respond) -> None:
    """What this member's store holds, per flow: tasks with data and their bytes."""
    node.flows.runtime.usage(lambda result: respond(MessageType.API_REPLY, {"result": result}))


def local_progress(node: "Node", args: dict[str, Any]) -> dict[str, Any]:
    """This member's per-stage figures for a flow version (asked by other members)."""
    return node.flows.runtime.status().get(_arg(args, "flow", str), {})


def progress(node: "Node", args: dict[str, Any], respond: Respond) -> None:
    """A flow's record with per-stage figures summed over every member holding it."""
    record = node.flows.registry.get(_arg(args, "name", str))

    def done(stages: dict, error: str | None) -> None:
        total, finished = node.flows.progress.get(flow_id(record), (0, set()))

        def with_partitions(flows: dict, also: str | None) -> None:
            respond(MessageType.API_REPLY, {"result": {
                **record.summary(), "tasks": total, "tasks_done": len(finished),
                "stages": stages, "partitions": flows.get(flow_id(record), {}),
                "incomplete": error or also or ""}})

        node.flows.partitions(with_partitions)

    node.flows.progress_of(args, done)


def published(node: "Node", args: dict[str, Any]) -> dict[str, Any]:
    """This member's published records of a flow version after a cursor."""
    _arg(args, "flow", str)
    _arg(args, "cursor", int)
    return node.flows.published(args)


def tail(node: "Node", args: dict[str, Any], respond: Respond) -> None:
    """Published records of a flow from every member, after the client's cursors."""
    _arg(args, "name", str)

    def done(result: dict[str, Any], error: str | None) -> None:
        respond(MessageType.API_REPLY, {"result": {**result, "incomplete": error or ""}})

    node.flows.tail(args, done)


def query(node: "Node", args: dict[str, Any], respond: Respond) -> None:
    """A flow's table (or one key of it), gathered from every member holding a part."""
    _arg(args, "name", str)

    def done(tables: dict[str, list], error: str | None) -> None:
        if error:
            respond(MessageType.ERROR, {"error": error})
            return
        try:
            respond(MessageType.API_REPLY, {"packed": pick_table(tables, args.get("sink"))})
        except GossipflowError as err:
            respond(MessageType.ERROR, {"error": str(err)})

    node.flows.query(args, done)


def read_log(node: "Node", args: dict[str, Any], respond: Respond) -> None:
    """Records of a flow's log sink from given offsets (:meth:`FlowService.log`)."""
    _arg(args, "name", str)

    def done(result: Any, error: str | None) -> None:
        if result is None:
            respond(MessageType.ERROR, {"error": error})
        else:
            respond(MessageType.API_REPLY, {"result": {**result, "incomplete": error}})

    node.flows.log(args, done)


def log_local(node: "Node", args: dict[str, Any], respond: Respond) -> None:
    """This member's part of a log read (asked by another member's ``log``)."""
    _arg(args, "flow", str)
    node.flows.runtime.log(args, lambda result: respond(MessageType.API_REPLY,
                                                        {"result": result}))


def send(node: "Node", args: dict[str, Any], respond: Respond) -> None:
    """A producer's batch for an ingest (:mod:`daemon.ingest`), answered once durable."""
    def done(result: Any, error: str | None) -> None:
        if error:
            respond(MessageType.ERROR, {"error": error})
        else:
            respond(MessageType.API_REPLY, {"result": result})

    node.ingest.send(args, done)


def faults(node: "Node", args: dict[str, Any]) -> dict[str, Any]:
    """Tests only: cut this daemon off from peers (``{"block": ["host:port", ...]}``,
    ``{"block": "all"}``, ``{"block": []}`` heals); the blocked set now.

    Served only by a daemon started with GOSSIPFLOW_FAULT_INJECTION=1 (see
    :mod:`daemon.transport.faults`), so no client can partition a production
    daemon. Client requests still get through while peers are blocked.
    """
    switch = getattr(node.transport, "faults", None)
    if switch is None:
        raise ConfigError(f"fault injection is off on {node.name}: the faults request is for "
                          f"tests; start the daemon with {fault_injection.ENV_VAR}=1 to use it")
    if "block" in args:
        switch.block(args["block"])
        blocked = switch.describe()["block"]
        log.warning("event=faults member=%s block=%s", node.name,
                    blocked if isinstance(blocked, str) else ",".join(blocked) or "-")
    return {**switch.describe(), "dropped": node.transport.stats["dropped_FaultInjected"]}


def _arg(args: dict[str, Any], name: str, kind: type) -> Any:
    value = args.get(name)
    if not isinstance(value, kind):
        raise ValueError(f"argument {name!r} must be a {kind.__name__}")
    return value


OPS: dict[str, Callable[["Node", dict[str, Any]], Any]] = {
    "members": members, "local_partitions": local_partitions, "status": status,
    "flows": flows, "flow": flow, "cancel": cancel, "forget": forget,
    "local_progress": local_progress, "published": published, "faults": faults,
}
DEFERRED_OPS: dict[str, Callable[["Node", dict[str, Any], Respond], None]] = {
    "query": query, "progress": progress, "tail": tail, "rows": rows, "ring": ring,
    "usage": usage, "submit": submit, "send": send, "log": read_log,
    "log_local": log_local}


def handle(node: "Node", op: str, args: dict[str, Any], respond: Respond) -> None:
    """Run one request and ``respond(kind, body)`` once, now or later; errors become an
    ERROR reply, never an exception."""
    try:
        if op in DEFERRED_OPS:
            DEFERRED_OPS[op](node, args, respond)
        elif op in OPS:
            respond(MessageType.API_REPLY, {"result": OPS[op](node, args)})
        else:
            served = ", ".join(sorted([*OPS, *DEFERRED_OPS]))
            respond(MessageType.ERROR,
                    {"error": f"unknown request {op!r}; this daemon serves: {served}"})
    except (GossipflowError, ValueError) as err:
        respond(MessageType.ERROR, {"error": str(err)})
    except Exception as err:  # a bug in one request must not take the daemon down
        respond(MessageType.ERROR, {"error": f"{op} failed: {type(err).__name__}: {err}"})
