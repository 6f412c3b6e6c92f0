"""One daemon: event loop, transport, membership and the client API, wired together.

``gossipflow start`` builds a :class:`Node` and calls :meth:`Node.run`. The
node keeps what must survive a restart in its data dir (``member.json``: its
name and last incarnation, so a restarted member comes back with a higher
incarnation than any state the cluster holds about its earlier life).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import time
from pathlib import Path
from typing import Any

from . import api
from .config import Config
from .errors import ConfigError, WireError
from .loop import EventLoop
from .membership import Member, Membership
from .files import write_atomically
from .flows import FlowService
from .ingest import IngestService
from .transport.udpzmq import UdpZmqTransport
from .wire import MAX_INCARNATION, Codec, MessageType, Status

log = logging.getLogger("gossipflow.node")

EXIT_REFUSED = 3


class Node:
    """A gossipflow daemon bound to ``bind`` with its state in ``data_dir``."""

    def __init__(self, name: str, bind: str, data_dir: str | Path, config: Config,
                 seeds: list[str] | None = None, secret: bytes | None = None) -> None:
        self.name = name
        self.config = config
        self.seeds = seeds or []
        self.started_at = time.time()
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        incarnation = self._load_incarnation() + 1
        self._save_incarnation(incarnation)
        self.loop = EventLoop()
        self.codec = Codec(secret)
        self.transport = UdpZmqTransport(self.loop, bind)
        self.membership = Membership(
            name, config, self.loop.clock, self.transport, self.codec,
            incarnation=incarnation, rng=random.Random(),
            on_incarnation=self._save_incarnation, on_refused=self._refused,
            on_change=self._member_changed)
        self.flows = FlowService(self)
        self.ingest = IngestService(self)
        self.exit_code = 0
        self._stopping = False

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (graceful leave) or a refused join; the exit code."""
        self.transport.start(self.membership.handle_packet, self.handle_request)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.loop.call_soon_threadsafe(self.shutdown))
        log.info("event=started member=%s address=%s incarnation=%d partitions=%d replicas=%d "
                 "seeds=%s", self.name, self.transport.address, self.membership.me.incarnation,
                 self.config.partitions, self.config.replicas, ",".join(self.seeds) or "-")
        if not self.codec.secured:
            log.warning("event=insecure member=%s detail=%r", self.name,
                        "no --secret-file: anyone who reaches this port can join the cluster")
        self.membership.start(self.seeds)
        self.flows.start()
        try:
            self.loop.run_forever()
        finally:
            self.membership.stop()
            self.flows.stop()
            self.loop.close()
            log.info("event=stopped member=%s exit_code=%d", self.name, self.exit_code)
        return self.exit_code

    def shutdown(self) -> None:
        """Leave gracefully: announce ``left``, spread it for a moment, stop. Twice: stop now."""
        if self._stopping:
            self.loop.stop()
            return
        self._stopping = True
        log.info("event=leaving member=%s", self.name)
        self.loop.clock.call_later(self.config.leave_timeout, self.loop.stop)
        self.membership.leave()

    def worker_died(self) -> None:
        """The runtime process ended under us: stop (a supervisor restarts the daemon)."""
        self.exit_code = 1
        self.loop.stop()

    def _member_changed(self, member: Member) -> None:
        if member.status in (Status.DEAD, Status.LEFT):
            # Requests in flight to it will get no answer: fail them now, not at their timeout.
            self.transport.cancel(member.address)
        self.flows.view_changed()

    def _refused(self, reason: str) -> None:
        log.error("event=exit member=%s reason=%r", self.name, reason)
        self.exit_code = EXIT_REFUSED
        self.loop.stop()

    # ------------------------------------------------------------------ requests

    def handle_request(self, data: bytes, reply) -> None:
        """Every request/response exchange: push-pull between members, client API calls."""
        try:
            kind, body = self.codec.decode(data)
        except WireError as err:
            self.membership._drop("request", err)
            reply(self.codec.encode(MessageType.ERROR, {"error": f"bad request: {err}"}))
            return
        if kind == MessageType.PUSH_PULL:
            reply(self.codec.encode(*self.membership.handle_push_pull(body)))
        elif kind == MessageType.API_REQUEST:
            api.handle(self, body["op"], body["args"],
                       lambda kind, body: reply(self.codec.encode(kind, body)))
        elif kind == MessageType.DATA:
            try:
                self.flows.handle_data(body, reply)
            except WireError as err:
                self.membership._drop("request", err)
                reply(self.codec.encode(MessageType.ERROR, {"error": f"bad request: {err}"}))
        elif kind == MessageType.REPLICATE:
            self.flows.handle_replicate(body, reply)
        elif kind == MessageType.FLOW_UPDATE:
            try:
                self.flows.handle_update(body)
            except WireError as err:
                self.membership._drop("request", err)
                reply(self.codec.encode(MessageType.ERROR, {"error": f"bad request: {err}"}))
                return
            reply(self.codec.encode(MessageType.API_REPLY, {"result": None}))
        else:
            reply(self.codec.encode(MessageType.ERROR, {"error": f"{kind.name} is not a request"}))

    # ------------------------------------------------------------------ data dir

    def _member_file(self) -> Path:
        return self.data_dir / "member.json"

    def _load_incarnation(self) -> int:
        path = self._member_file()
        if not path.exists():
            return -1
        try:
            saved: dict[str, Any] = json.loads(path.read_text())
            owner, incarnation = saved["name"], int(saved["incarnation"])
            if not 0 <= incarnation < MAX_INCARNATION:
                raise ValueError(f"incarnation {incarnation} out of range")
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path} is damaged ({err}); move it away to start afresh") from err
        if owner != self.name:
            raise ConfigError(f"data dir {self.data_dir} belongs to member {owner!r}, "
                              f"not {self.name!r}: use another --data-dir or --name {owner}")
        return incarnation

    def _save_incarnation(self, incarnation: int) -> None:
        write_atomically(self._member_file(),
                         json.dumps({"name": self.name, "incarnation": incarnation}))
