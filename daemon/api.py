"""Client-facing requests: every daemon answers them from its own view.

A request is ``{"op": NAME, "args": {...}}``; the answer is API_REPLY
``{"result": ...}`` or ERROR ``{"error": "..."}``. A request can never crash
the daemon: an unknown op or bad arguments get an ERROR that says what is served.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from .errors import GossipflowError
from .placement import place
from .wire import MessageType

if TYPE_CHECKING:
    from .node import Node


def members(node: "Node", args: dict[str, Any]) -> list[dict[str, Any]]:
    """Every member this daemon knows (tombstones included), sorted by name."""
    return [m.to_dict() for m in sorted(node.membership.members.values(), key=lambda m: m.name)]


def ring(node: "Node", args: dict[str, Any]) -> dict[str, Any]:
    """Partition -> replica set (primary first), from the live members in this daemon's view."""
    live = sorted(m.name for m in node.membership.live_members())
    return {"partitions": node.config.partitions, "replicas": node.config.replicas,
            "members": live, "placement": place(live, node.config.partitions,
                                                node.config.replicas)}


def status(node: "Node", args: dict[str, Any]) -> dict[str, Any]:
    """This daemon: name, address, incarnation, local health and protocol counters."""
    m = node.membership
    return {"name": node.name, "address": node.transport.address,
            "incarnation": m.me.incarnation, "awareness": m.awareness, "joined": m.joined,
            "uptime": round(time.time() - node.started_at, 3),
            "stats": dict(m.stats + node.transport.stats)}


def submit(node: "Node", args: dict[str, Any]) -> dict[str, Any]:
    """Register a flow (checked by the client first) and spread it to every member."""
    text = _arg(args, "text", str)
    record, created = node.registry.submit(
        _arg(args, "name", str), text, _arg(args, "path", str), _arg(args, "base_dir", str),
        replace=bool(args.get("replace", False)))
    if created:
        node.spread(record)
    return {"flow": record.summary(), "created": created}


def flows(node: "Node", args: dict[str, Any]) -> list[dict[str, Any]]:
    """Every flow in the registry, without its text, sorted by name."""
    return [node.registry.flows[name].summary() for name in sorted(node.registry.flows)]


def flow(node: "Node", args: dict[str, Any]) -> dict[str, Any]:
    """One flow's record, text included."""
    return node.registry.get(_arg(args, "name", str)).to_wire()


def cancel(node: "Node", args: dict[str, Any]) -> dict[str, Any]:
    """Mark a flow cancelled everywhere."""
    record = node.registry.set_status(_arg(args, "name", str), "cancelled")
    node.spread(record)
    return record.summary()


def _arg(args: dict[str, Any], name: str, kind: type) -> Any:
    value = args.get(name)
    if not isinstance(value, kind):
        raise ValueError(f"argument {name!r} must be a {kind.__name__}")
    return value


OPS: dict[str, Callable[["Node", dict[str, Any]], Any]] = {
    "members": members, "ring": ring, "status": status,
    "submit": submit, "flows": flows, "flow": flow, "cancel": cancel,
}


def handle(node: "Node", op: str, args: dict[str, Any]) -> tuple[MessageType, dict[str, Any]]:
    """Run one request; errors become an ERROR reply, never an exception."""
    handler = OPS.get(op)
    if handler is None:
        return MessageType.ERROR, {
            "error": f"unknown request {op!r}; this daemon serves: {', '.join(sorted(OPS))}"}
    try:
        return MessageType.API_REPLY, {"result": handler(node, args)}
    except (GossipflowError, ValueError) as err:
        return MessageType.ERROR, {"error": str(err)}
    except Exception as err:  # a bug in one request must not take the daemon down
        return MessageType.ERROR, {"error": f"{op} failed: {type(err).__name__}: {err}"}
