"""The daemon's event loop: timers on a SystemClock plus readable sockets.

One thread runs it; membership, gossip and client requests all happen on
that thread, so a daemon answers probes whatever else its process does.
Other threads hand work to it with :meth:`EventLoop.call_soon_threadsafe`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Any, Callable

import zmq

from .clock import SystemClock

log = logging.getLogger("gossipflow.loop")


class EventLoop:
    """Runs timers and socket readers until :meth:`stop`."""

    def __init__(self) -> None:
        self.clock = SystemClock()
        self._poller = zmq.Poller()
        self._readers: dict[Any, Callable[[], None]] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._pending: deque[tuple[Callable[..., Any], tuple]] = deque()
        self._lock = threading.Lock()
        self._running = False
        self.thread: threading.Thread | None = None

    def add_reader(self, sock: Any, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``sock`` (zmq socket, socket or fd) is readable."""
        key = self._key(sock)
        self._readers[key] = callback
        self._poller.register(key, zmq.POLLIN)

    def remove_reader(self, sock: Any) -> None:
        key = self._key(sock)
        if self._readers.pop(key, None) is not None:
            self._poller.unregister(key)

    @staticmethod
    def _key(sock: Any) -> Any:
        """The poller reports zmq sockets as themselves, anything else as its file descriptor."""
        return sock if isinstance(sock, zmq.Socket) else getattr(sock, "fileno", lambda: sock)()

    def call_soon_threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread, from any thread."""
        with self._lock:
            self._pending.append((fn, args))
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:  # the pipe is full: the loop is waking anyway
            pass

    def run_forever(self) -> None:
        """Run on the calling thread until :meth:`stop`."""
        self.thread = threading.current_thread()
        self._running = True
        while self._running:
            deadline = self.clock.next_deadline()
            timeout_ms = None if deadline is None else max(
                0, int((deadline - self.clock.now()) * 1000) + 1)
            for sock, _ in self._poller.poll(timeout_ms):
                if sock == self._wake_r:
                    self._drain_wakeups()
                elif (callback := self._readers.get(sock)) is not None:
                    self._guard(callback)
            self._run_pending()
            while (timer := self.clock.pop_due(self.clock.now())) is not None:
                self._guard(timer.fn, *timer.args)

    def stop(self) -> None:
        """Ask the loop to return from :meth:`run_forever` (thread-safe)."""
        self.call_soon_threadsafe(setattr, self, "_running", False)

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_pending(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                fn, args = self._pending.popleft()
            self._guard(fn, *args)

    @staticmethod
    def _guard(fn: Callable[..., Any], *args: Any) -> None:
        """A bug in one handler is logged, never kills the loop."""
        try:
            fn(*args)
        except Exception:
            log.exception("event=handler_failed handler=%s", getattr(fn, "__qualname__", fn))
