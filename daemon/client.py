"""A blocking client for the daemon's API, used by the CLI and by tests.

Example:
    >>> request("127.0.0.1:1", "members", timeout=0.2)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    NodeUnreachableError: no answer from 127.0.0.1:1 ...
"""

from __future__ import annotations

import os
from typing import Any

import zmq

from nodes.codec import unpack

from .errors import NodeUnreachableError, RequestRefusedError, WireError
from .transport.base import parse_address
from .wire import Codec, MessageType


def request(node: str, op: str, args: dict[str, Any] | None = None, timeout: float = 3.0,
            secret: bytes | None = None) -> Any:
    """Send one API request to the daemon at ``node`` ("host:port") and return its result.

    Raises:
        NodeUnreachableError: no answer within ``timeout`` seconds.
        RequestRefusedError: the daemon answered with an error.
        ConfigError: ``node`` is not host:port.
    """
    host, port = parse_address(node)
    codec = Codec(secret)
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://{host}:{port}")
        request_id = os.urandom(8)
        sock.send_multipart([request_id, codec.encode(MessageType.API_REQUEST,
                                                      {"op": op, "args": args or {}})])
        if not sock.poll(int(timeout * 1000)):
            raise NodeUnreachableError(
                f"no answer from {node} within {timeout:g} s: is a gossipflow daemon running "
                f"there? (start one with `gossipflow start`, or pick another with --node)")
        frames = sock.recv_multipart()
    finally:
        sock.close()
    try:
        kind, body = codec.decode(frames[-1])
    except WireError as err:
        raise RequestRefusedError(f"{node} sent an answer we cannot read ({err}); "
                                  f"check --secret-file matches the cluster's") from err
    if kind == MessageType.ERROR:
        raise RequestRefusedError(f"{node}: {body['error']}")
    if "packed" in body:  # a list sent as msgpack arrays, unpacked only here
        return [item for array in body["packed"] for item in unpack(array, use_list=True)]
    return body.get("result")
