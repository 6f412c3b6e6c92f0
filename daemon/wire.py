"""Messages on the wire: types, the msgpack codec and the BLAKE2b auth tag.

A packet (UDP datagram or ZeroMQ frame) is::

    flag (1 byte) | tag (16 bytes, only if flag == 1) | msgpack [type, body]

``flag`` 0 = untagged (cluster without a secret), 1 = tagged with
BLAKE2b-128 keyed by the cluster secret over the msgpack bytes. A daemon with
a secret drops untagged or wrongly tagged packets; one without drops tagged
packets (it cannot check them). ``body`` is a map whose fields are checked
against :data:`SCHEMAS` before protocol code sees it, so protocol code never
meets a wrong type from the network.

:class:`MessageType` is part of the wire protocol: append only, never reuse
or renumber a value; bump ``config.PROTOCOL_VERSION`` on incompatible change.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import IntEnum
from typing import Any

import msgpack

from nodes import codec as records

from .errors import AuthError, DecodeError

TAG_SIZE = 16
_UNTAGGED, _TAGGED = 0, 1
MAX_INCARNATION = 2**48
"""Incarnations above this are refused at decode: a member refutes by adding one,
and a forged huge value must not push anyone past what msgpack can carry."""
MAX_NAME = 255


class Address(str):
    """Schema marker: a "host:port" string with a port in 1..65535."""


class Incarnation(int):
    """Schema marker: an integer in 0..MAX_INCARNATION."""


class Name(str):
    """Schema marker: a member name, 1..MAX_NAME characters."""


class MessageType(IntEnum):
    """Wire message types. Append only."""

    PING = 1             # direct probe, carries updates
    PING_REQ = 2         # ask a member to probe another for us
    ACK = 3              # answer to PING (also relayed for PING_REQ)
    NACK = 4             # relay could not reach the target in time (Lifeguard)
    GOSSIP = 5           # updates alone
    PUSH_PULL = 6        # request: full member state (also a join)
    PUSH_PULL_REPLY = 7  # response: full member state
    API_REQUEST = 8      # client request: {"op": ..., "args": {...}}
    API_REPLY = 9        # response: {"result": ...}
    ERROR = 10           # response: {"error": "..."}: the request was refused
    FLOW_UPDATE = 11     # request: registry records "fl", task progress "pg", forgotten "fg"
    DATA = 12            # request: shuffled batches for partition tasks; reply: their marks
    REPLICATE = 13       # request: a replication request "k" with args "a"; reply: its answer


class Status(IntEnum):
    """A member's state; also the kind of a membership update. Wire values."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


# Field name -> allowed types; a name ending in "?" is optional.
_UPDATE = {"k": int, "n": Name, "i": Incarnation, "a?": Address, "m?": dict, "f?": Name}
_STATE = {"n": Name, "a": Address, "i": Incarnation, "s": int, "m": dict}
SCHEMAS: dict[MessageType, dict[str, Any]] = {
    MessageType.PING: {"s": int, "t": Name, "f": Name, "a": Address, "u?": list},
    MessageType.PING_REQ: {"s": int, "t": Name, "ta": Address, "f": Name, "a": Address,
                           "u?": list},
    MessageType.ACK: {"s": int, "f": Name, "u?": list},
    MessageType.NACK: {"s": int, "f": Name},
    MessageType.GOSSIP: {"f": Name, "u": list},
    MessageType.PUSH_PULL: {"f": Name, "j": bool, "st": list, "m": dict, "fl?": list,
                           "fg?": list},
    MessageType.PUSH_PULL_REPLY: {"f": Name, "st": list, "fl?": list, "fg?": list},
    MessageType.API_REQUEST: {"op": str, "args": dict},
    MessageType.API_REPLY: {"result?": object},
    MessageType.ERROR: {"error": str},
    MessageType.FLOW_UPDATE: {"fl?": list, "pg?": list, "fg?": list},
    MessageType.DATA: {"b": list},
    MessageType.REPLICATE: {"k": str, "a": object},
}
_LISTS = {"u": _UPDATE, "st": _STATE}


class Codec:
    """Encodes and decodes packets, tagging them when a secret is set.

    Example:
        >>> codec = Codec(b"s3cret")
        >>> codec.decode(codec.encode(MessageType.NACK, {"s": 1, "f": "n1"}))
        (<MessageType.NACK: 4>, {'s': 1, 'f': 'n1'})
    """

    def __init__(self, secret: bytes | None = None) -> None:
        if secret is not None and not 1 <= len(secret) <= 64:
            raise ValueError("the cluster secret must be 1..64 bytes")
        self._secret = secret

    @property
    def secured(self) -> bool:
        return self._secret is not None

    def _tag(self, payload: bytes) -> bytes:
        return hashlib.blake2b(payload, key=self._secret, digest_size=TAG_SIZE).digest()

    def encode(self, kind: MessageType, body: dict[str, Any]) -> bytes:
        payload = msgpack.packb([int(kind), body], use_bin_type=True, datetime=True,
                                default=records.default)  # records: Windowed, datetimes
        if self._secret is None:
            return bytes([_UNTAGGED]) + payload
        return bytes([_TAGGED]) + self._tag(payload) + payload

    def decode(self, data: bytes) -> tuple[MessageType, dict[str, Any]]:
        """Check the tag, unpack and validate.

        Raises:
            AuthError: tag missing, unexpected or wrong.
            DecodeError: anything else wrong with the bytes.
        """
        if not data:
            raise DecodeError("empty packet")
        flag = data[0]
        if flag == _TAGGED:
            if self._secret is None:
                raise AuthError("tagged packet, but this daemon has no cluster secret")
            tag, payload = data[1:1 + TAG_SIZE], data[1 + TAG_SIZE:]
            if not hmac.compare_digest(tag, self._tag(payload)):
                raise AuthError("wrong tag: the sender uses another cluster secret")
        elif flag == _UNTAGGED:
            if self._secret is not None:
                raise AuthError("untagged packet, but this cluster requires a secret")
            payload = data[1:]
        else:
            raise DecodeError(f"unknown packet flag {flag}")
        try:
            message = msgpack.unpackb(payload, raw=False, strict_map_key=True, timestamp=3,
                                      ext_hook=records.ext_hook)
        except Exception as err:  # msgpack raises several unrelated types
            raise DecodeError(f"not msgpack: {err}") from err
        if not (isinstance(message, list) and len(message) == 2 and isinstance(message[0], int)
                and isinstance(message[1], dict)):
            raise DecodeError("packet is not [type, body]")
        try:
            kind = MessageType(message[0])
        except ValueError:
            raise DecodeError(f"unknown message type {message[0]}") from None
        body = message[1]
        _check(body, SCHEMAS[kind], kind.name)
        for field, schema in _LISTS.items():
            for item in body.get(field, ()):
                if not isinstance(item, dict):
                    raise DecodeError(f"{kind.name}.{field} holds a {type(item).__name__}")
                _check(item, schema, f"{kind.name}.{field}")
        return kind, body


def _check(body: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    for spec, kind in schema.items():
        name = spec.rstrip("?")
        if name not in body:
            if spec.endswith("?"):
                continue
            raise DecodeError(f"{where}: missing field {name!r}")
        value = body[name]
        base, valid = _MARKERS.get(kind, (kind, None))
        if base is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise DecodeError(f"{where}: field {name!r} is not an integer")
        if not isinstance(value, base):
            raise DecodeError(f"{where}: field {name!r} is not {base.__name__}")
        if valid is not None and not valid(value):
            raise DecodeError(f"{where}: field {name!r} is not a valid {kind.__name__.lower()}: "
                              f"{value!r:.80}")


def valid_address(text: str) -> bool:
    """True for "host:port" with a non-empty host and a port in 1..65535."""
    host, sep, port = text.rpartition(":")
    return bool(sep and host and len(text) <= 300 and port.isdigit() and 0 < int(port) < 65536)


_MARKERS: dict[type, tuple[type, Any]] = {
    Address: (str, valid_address),
    Incarnation: (int, lambda value: 0 <= value <= MAX_INCARNATION),
    Name: (str, lambda value: 0 < len(value) <= MAX_NAME),
}
