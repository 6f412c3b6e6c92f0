"""Send records into a running flow's ingest, exactly once (Kafka's idempotent producer).

A producer has an id and numbers its records from ``start`` (1 by default). Records go
in batches to any daemon (:mod:`daemon.ingest`), several batches in flight; a batch is
acknowledged only once it is durable on every replica of its partition. A batch answered
"retry" (the partition is moving, its primary is cut off or busy) is sent again a
little later; one not answered in time goes again through the next daemon: the daemons apply
each numbered record once, so a retry never counts twice, nor does running the same
producer (same id, same numbering) again after a crash.

Example:
    with Producer("clicks", nodes=["10.0.0.1:7400"], producer_id="web-1") as producer:
        for event in events:
            producer.send(event)
    # leaving the block flushed: every record is durable (else it raised)
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from .errors import ClientError, NodeUnreachableError, RequestRefusedError, WireError
from .ingest import MAX_RECORD_BYTES
from .transport.base import parse_address
from .wire import Codec, MessageType

RETRY_AFTER = 0.05
"""Seconds before a batch answered "retry", or sent ahead of a gap, goes again."""


@dataclass
class _Batch:
    first: int
    records: list
    sent_at: float = 0.0
    node: int = 0
    due: float = 0.0  # when to send (again)

    @property
    def last(self) -> int:
        return self.first + len(self.records) - 1


class Producer:
    """Sends records to ingest ``ingest`` of a running flow.

    Args:
        ingest: the ingest name (``sources.ingest(NAME)`` in the flow).
        nodes: daemons to send to, "host:port" (any of the cluster; the others are
            tried in turn when one does not answer).
        producer_id: who numbers the records; the same id and numbering after a crash
            sends nothing twice.
        start: the number of the next record (1 for a new producer).
        batch: records per request.
        in_flight: requests awaiting acknowledgement at once.
        linger: seconds a partial batch waits for more records (see :meth:`poll`).
        timeout: seconds a request may go unanswered before it is sent again.
        give_up: seconds without any acknowledgement before flush() raises.
        secret: the cluster secret, if it has one.
    """

    def __init__(self, ingest: str, nodes: list[str] | None = None, *,
                 producer_id: str | None = None, start: int = 1, batch: int = 1000,
                 in_flight: int = 16, timeout: float = 5.0, give_up: float = 30.0,
                 linger: float = 0.05, secret: bytes | None = None) -> None:
        self.ingest = ingest
        self.nodes = list(nodes or ["127.0.0.1:7400"])
        self.producer_id = producer_id or f"{os.uname().nodename}:{os.getpid()}:{ingest}"
        self.next_seq = start
        self.acked_upto = start - 1
        """Every record numbered up to this is durable."""
        self.accepted = 0
        """Records the daemons applied for this producer object (the rest of those
        acknowledged were duplicates of an earlier run's)."""
        self.batch, self.in_flight, self.timeout, self.give_up = batch, in_flight, timeout, give_up
        self._codec = Codec(secret)
        self._context = zmq.Context.instance()
        self._sockets: dict[int, zmq.Socket] = {}
        self._poller = zmq.Poller()
        self._buffer: list = []
        self._buffered_at = 0.0
        self.linger = linger
        self._waiting: deque[_Batch] = deque()  # to send, in order
        self._sent: dict[bytes, _Batch] = {}
        self._progress_at = time.monotonic()

    # ------------------------------------------------------------------ API

    def send(self, record: Any) -> int:
        """Queue ``record``; returns its number. Blocks while ``in_flight`` requests
        await acknowledgement and the buffer is full (backpressure, never a drop).

        Raises:
            ValueError: the record is over 1 MiB, or cannot be sent as msgpack.
        """
        try:
            size = len(msgpack.packb(record, use_bin_type=True))
        except (TypeError, ValueError) as err:
            raise ValueError(f"record {self.next_seq} cannot be sent: {err}") from err
        if size > MAX_RECORD_BYTES:
            raise ValueError(f"record {self.next_seq} is {size} bytes: records are at most "
                             f"{MAX_RECORD_BYTES} bytes (1 MiB)")
        seq = self.next_seq
        self.next_seq += 1
        if not self._buffer:
            self._buffered_at = time.monotonic()
        self._buffer.append(record)
        if len(self._buffer) >= self.batch:
            self._cut()
            while len(self._waiting) + len(self._sent) > self.in_flight:
                self._pump(0.05)
        return seq

    def poll(self) -> None:
        """Send a partial batch older than ``linger`` and take answers, without waiting
        (for a slow stream: call it while no record comes)."""
        if self._buffer and time.monotonic() - self._buffered_at >= self.linger:
            self._cut()
        self._pump(0.0)

    def flush(self) -> int:
        """Wait until every record sent so far is durable; returns the acknowledged mark.

        Raises:
            NodeUnreachableError: no acknowledgement for ``give_up`` seconds.
            RequestRefusedError: a daemon refused the records (no such ingest, a bad
                request): retrying would not help.
        """
        self._cut()
        self._progress_at = time.monotonic()
        while self.acked_upto < self.next_seq - 1:
            self._pump(0.05)
        return self.acked_upto

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        try:
            if kind is None:
                self.flush()
        finally:
            self.close()

    # ------------------------------------------------------------------ inside

    def _cut(self) -> None:
        if self._buffer:
            first = self.next_seq - len(self._buffer)
            self._waiting.append(_Batch(first, self._buffer))
            self._buffer = []

    def _socket(self, node: int) -> zmq.Socket:
        sock = self._sockets.get(node)
        if sock is None:
            host, port = parse_address(self.nodes[node])
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://{host}:{port}")
            self._sockets[node] = sock
            self._poller.register(sock, zmq.POLLIN)
        return sock

    def _pump(self, wait: float) -> None:
        """Send what is due, take answers, resend what timed out."""
        now = time.monotonic()
        if now - self._progress_at > self.give_up:
            raise NodeUnreachableError(
                f"no acknowledgement for {self.give_up:g} s from {', '.join(self.nodes)}; "
                f"records up to {self.acked_upto} are durable")
        for request_id, batch in list(self._sent.items()):
            if now - batch.sent_at > self.timeout:  # unanswered: through the next daemon
                del self._sent[request_id]
                batch.node = (batch.node + 1) % len(self.nodes)
                self._waiting.appendleft(batch)
        while self._waiting and len(self._sent) < self.in_flight \
                and self._waiting[0].due <= now:
            batch = self._waiting.popleft()
            if batch.last <= self.acked_upto:
                continue
            request_id = os.urandom(8)
            body = {"op": "send", "args": {"ingest": self.ingest, "producer": self.producer_id,
                                           "first": batch.first, "records": batch.records}}
            self._socket(batch.node).send_multipart(
                [request_id, self._codec.encode(MessageType.API_REQUEST, body)])
            batch.sent_at = now
            self._sent[request_id] = batch
        for sock, _ in self._poller.poll(int(wait * 1000)):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                batch = self._sent.pop(frames[0], None)
                if batch is not None:
                    self._answered(batch, frames[-1])

    def _answered(self, batch: _Batch, raw: bytes) -> None:
        try:
            kind, body = self._codec.decode(raw)
        except WireError as err:
            raise ClientError(f"{self.nodes[batch.node]} sent an answer we cannot read "
                              f"({err}); check the secret matches the cluster's") from err
        if kind == MessageType.ERROR:
            raise RequestRefusedError(f"{self.nodes[batch.node]}: {body.get('error')}")
        result = body.get("result") or {}
        if "acked_upto" in result:
            self.accepted += result.get("applied", 0)
            if result["acked_upto"] > self.acked_upto:
                self.acked_upto = result["acked_upto"]
                self._progress_at = time.monotonic()
            if result["acked_upto"] >= batch.last:
                return
        # "retry" (the daemon answered: it stays our way in), or the partition lacks our
        # earlier records still: again, a bit later
        batch.due = time.monotonic() + RETRY_AFTER
        self._waiting.appendleft(batch)
