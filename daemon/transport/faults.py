"""A fault-injection switch for the real transport: cut a daemon off from some or all
peers without killing it, so multi-process tests can make network partitions.

Off unless the daemon starts with ``GOSSIPFLOW_FAULT_INJECTION=1`` in its
environment (then :func:`from_env` returns a :class:`FaultFilter`; otherwise
None and the transport pays one ``is None`` test per message). A test drives
it with the client request ``faults`` (see :func:`daemon.api.faults`)::

    request(node, "faults", {"block": ["127.0.0.1:7402"]})   # cut one peer off
    request(node, "faults", {"block": "all"})                # cut every peer off
    request(node, "faults", {"block": []})                   # heal
    request(node, "faults")                                  # just report

Blocking a peer drops, both ways, its UDP datagrams and its ZeroMQ
requests and replies, as a partition would (requests to it time out).
Client requests keep flowing: with the switch on, a transport's outgoing
DEALERs carry the routing id :func:`peer_identity` (its own address), so a
ROUTER tells a peer's request from a client's, whose ZeroMQ-made routing id
starts with a zero byte. Start every daemon of a test cluster with the
variable, or requests from a daemon without it look like a client's.

Example:
    >>> f = FaultFilter()
    >>> f.block(["127.0.0.1:7402"]); f.blocks("127.0.0.1:7402"), f.blocks("127.0.0.1:7401")
    (True, False)
    >>> f.block("all")
    >>> f.blocks_identity(peer_identity("127.0.0.1:7401")), f.blocks_identity(b"\\0abcd")
    (True, False)
    >>> f.block([]); f.describe()
    {'block': []}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..wire import valid_address

ENV_VAR = "GOSSIPFLOW_FAULT_INJECTION"
ALL = "all"


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``environ`` switches fault injection on (``GOSSIPFLOW_FAULT_INJECTION=1``)."""
    return environ.get(ENV_VAR, "") == "1"


def from_env(environ: Mapping[str, str] = os.environ) -> FaultFilter | None:
    """A fresh filter (blocking nothing) if fault injection is on, else None."""
    return FaultFilter() if enabled(environ) else None


def peer_identity(address: str) -> bytes:
    """The ZeroMQ routing id a daemon's DEALERs carry when fault injection is on.

    An address never starts with a zero byte, which ZeroMQ keeps for the ids it
    makes up itself (a client's), and is far below the 255-byte limit.
    """
    return address.encode()


class FaultFilter:
    """Which peer addresses this daemon pretends it cannot reach.

    Attributes:
        all: every peer is blocked (clients are not).
        blocked: the peer addresses blocked when ``all`` is off.
        active: anything is blocked at all (the transport's fast path).
    """

    def __init__(self) -> None:
        self.all = False
        self.blocked: frozenset[str] = frozenset()
        self.active = False

    def block(self, spec: Any) -> None:
        """Replace what is blocked: ``"all"``, or a list of "host:port" ("[]" heals).

        Raises:
            ConfigError: ``spec`` is neither ``"all"`` nor a list of host:port strings.
        """
        if spec == ALL:
            self.all, self.blocked = True, frozenset()
        elif isinstance(spec, (list, tuple)) and all(
                isinstance(a, str) and valid_address(a) for a in spec):
            self.all, self.blocked = False, frozenset(spec)
        else:
            raise ConfigError(f'"block" must be "all" or a list of HOST:PORT peer addresses '
                              f'([] heals), not {spec!r}')
        self.active = self.all or bool(self.blocked)

    def blocks(self, address: str) -> bool:
        """True if traffic to or from the peer at ``address`` is dropped."""
        return self.all or address in self.blocked

    def blocks_identity(self, identity: bytes) -> bool:
        """True if a request from (or reply to) ROUTER routing id ``identity`` is dropped.

        Ids ZeroMQ made up (clients, and peers without fault injection) start
        with a zero byte and always pass.
        """
        if not identity or identity[0] == 0:
            return False
        return self.all or identity.decode(errors="replace") in self.blocked

    def describe(self) -> dict[str, Any]:
        """What is blocked, as the ``faults`` request answers it."""
        return {"block": ALL if self.all else sorted(self.blocked)}
