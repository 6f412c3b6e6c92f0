"""The Transport interface: unreliable packets plus request/response.

Protocol code talks to peers through this small surface only, so the same
code runs over UDP + ZeroMQ (:mod:`.udpzmq`) and over the in-memory network
of simulation tests (:mod:`.memory`).
"""

from __future__ import annotations

from typing import Callable, Protocol

from ..errors import ConfigError
from ..wire import valid_address

PacketHandler = Callable[[str, bytes], None]
"""Called with (sender address, packet bytes) for each packet received."""
ReplyFn = Callable[[bytes], None]
RequestHandler = Callable[[bytes, ReplyFn], None]
"""Called with (request bytes, reply function); reply now or later, once."""
ReplyHandler = Callable[["bytes | None"], None]
"""Called once with the reply, or None when none came in time."""


class Transport(Protocol):
    address: str
    """Our own "host:port" as peers should reach us."""

    def start(self, on_packet: PacketHandler, on_request: RequestHandler) -> None:
        """Begin delivering inbound packets and requests to the handlers."""

    def send_packet(self, to: str, data: bytes) -> None:
        """Send one datagram; it may be lost, duplicated or reordered."""

    def request(self, to: str, data: bytes, timeout: float, on_reply: ReplyHandler) -> None:
        """Send a request; ``on_reply`` gets the answer or None after ``timeout``."""

    def cancel(self, to: str) -> None:
        """Answer every pending request to ``to`` with None now."""

    def close(self) -> None:
        """Stop receiving and release sockets; later sends are dropped."""


def parse_address(text: str) -> tuple[str, int]:
    """Split "host:port" and check the port.

    Raises:
        ConfigError: not host:port, or the port is not in 1..65535.
    """
    if not valid_address(text):
        raise ConfigError(f"address {text!r} is not HOST:PORT (e.g. 127.0.0.1:7400)")
    host, _, port = text.rpartition(":")
    return host, int(port)
