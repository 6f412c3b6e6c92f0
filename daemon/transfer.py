"""Snapshots moved between members one chunk per request, resumable.

A task's snapshot (:meth:`~daemon.store.Store.snapshot`: about 1 MiB chunks)
can be hundreds of MB: it travels as a series of requests, one chunk each,
so each has a short deadline of its own and a lost one is asked again rather
than the whole copy. :class:`Push` sends our snapshot to a member
(``restore_part``: the member stages the chunks and restores them in one
transaction once all arrived, as ``restore`` does); :class:`Pull` fetches a
member's snapshot (``snapshot_part``: the member reads it once, at the first
chunk asked, and serves the chunks from that one read). Both resume from the
first chunk the other side lacks; a chunk unanswered ``TRIES`` times gives up.
The serving side is :class:`~daemon.replication.ReplicaServer`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from .store import TaskId

log = logging.getLogger("gossipflow.transfer")

TRIES = 4
"""Times in a row a transfer may go without progress (a chunk unanswered, or the other
side lost what it had) before it gives up."""
WINDOW = 32
"""Chunks in flight at once: a transfer's pace must not hang on one round trip each (the
runtime thread that sends the next chunk may be busy in a step for a while)."""

Call = Callable[[str, str, Any, Callable[[Any], None]], None]


PART_BYTES = 1 << 20
"""Bytes of snapshot per request: a snapshot's chunks are grouped into parts of about
this size (a small task's whole snapshot is one part, one request)."""


def transfer_id() -> str:
    """A fresh id naming one transfer on the serving member."""
    return os.urandom(8).hex()


def parts_of(chunks: list[bytes], limit: int = PART_BYTES) -> list[list[bytes]]:
    """``chunks`` in order, grouped into parts of at most ``limit`` bytes (or one chunk).

    >>> [len(p) for p in parts_of([b"a" * 6, b"b" * 6, b"c" * 6, b"d" * 20], limit=13)]
    [2, 1, 1]
    """
    parts: list[list[bytes]] = []
    size = limit
    for chunk in chunks:
        if size + len(chunk) > limit:
            parts.append([])
            size = 0
        parts[-1].append(chunk)
        size += len(chunk)
    return parts


class Push:
    """Send ``chunks`` (a snapshot of ``task``) to ``member`` for a restore at ``epoch``;
    ``on_done`` gets the restore's answer ([last, promised]) or None.

    In rounds: up to WINDOW chunks in flight; the member stages them in order and
    answers the next it wants (answers may come back in any order: only the highest
    counts). Once every request of a round is answered and the copy is not complete,
    the next round sends again from the chunk the member wants."""

    def __init__(self, call: Call, member: str, task: TaskId, epoch: int, chunks: list[bytes],
                 on_done: Callable[[Any], None]) -> None:
        self.call, self.member, self.on_done = call, member, on_done
        self.chunks = parts_of(chunks)
        self.args = {"task": list(task), "epoch": epoch, "xfer": transfer_id(),
                     "count": len(self.chunks)}
        self.acked = self.sent = self.tries = self.round = self.outstanding = 0
        self.progressed = False
        self.done = False

    def start(self) -> None:
        self._fill()

    def _fill(self) -> None:
        while self.sent < min(self.acked + WINDOW, len(self.chunks)):
            index = self.sent
            self.sent += 1
            self.outstanding += 1
            self.call(self.member, "restore_part",
                      {**self.args, "index": index, "chunks": self.chunks[index]},
                      lambda answer, r=self.round: self._answered(r, answer))

    def _answered(self, round_: int, answer: Any) -> None:
        if self.done:
            return
        if answer is not None and not isinstance(answer, dict):
            self._finish(answer)  # the restore's own answer
            return
        wanted = answer.get("next") if isinstance(answer, dict) else None
        if type(wanted) is int and wanted > self.acked and not answer.get("restart"):
            self.acked, self.progressed = min(wanted, len(self.chunks) - 1), True
            self.sent = max(self.sent, self.acked)
        if round_ != self.round:
            return
        if isinstance(answer, dict) and answer.get("restart") and self.acked:
            self.acked = 0  # it lost what it had staged (restarted, or staged too long)
        self.outstanding -= 1
        if self.outstanding == 0:  # the round is over and the copy is not complete
            log.debug("event=transfer_round to=%s task=%s round=%d acked=%d of=%d", self.member,
                     self.args["task"], self.round, self.acked, len(self.chunks))
            self.tries = 0 if self.progressed else self.tries + 1
            if self.tries >= TRIES:
                self._finish(None)
                return
            self.sent, self.round, self.progressed = self.acked, self.round + 1, False
        self._fill()

    def _finish(self, answer: Any) -> None:
        self.done = True
        self.on_done(answer)


class Pull:
    """Fetch ``member``'s snapshot of ``task``; ``on_done`` gets its chunks or None.
    Up to WINDOW chunks are asked for at once (the first alone: it says how many)."""

    def __init__(self, call: Call, member: str, task: TaskId,
                 on_done: Callable[[list[bytes] | None], None]) -> None:
        self.call, self.member, self.on_done = call, member, on_done
        self.args = {"task": list(task), "xfer": transfer_id()}
        self.chunks: dict[int, list[bytes]] = {}
        self.count = 0
        self.asked: set[int] = set()
        self.tries = 0
        self.done = False

    def start(self) -> None:
        self._ask(0)

    def _ask(self, index: int) -> None:
        self.asked.add(index)
        self.call(self.member, "snapshot_part", {**self.args, "index": index},
                  lambda answer: self._answered(index, answer))

    def _answered(self, index: int, answer: Any) -> None:
        if self.done:
            return
        self.asked.discard(index)
        ok = (isinstance(answer, dict) and type(answer.get("count")) is int
              and isinstance(answer.get("chunks"), list)
              and all(isinstance(c, bytes) for c in answer["chunks"])
              and answer["count"] > index and answer["count"] == (self.count or answer["count"]))
        if not ok:
            self.tries += 1
            if self.tries >= TRIES:
                self.done = True
                self.on_done(None)
            else:
                self._ask(index)
            return
        self.tries, self.count = 0, answer["count"]
        self.chunks[index] = answer["chunks"]
        if len(self.chunks) == self.count:
            self.done = True
            self.call(self.member, "snapshot_part", {**self.args, "index": -1}, lambda a: None)
            self.on_done([c for i in range(self.count) for c in self.chunks[i]])
            return
        wanted = [i for i in range(self.count) if i not in self.chunks and i not in self.asked]
        for i in wanted[:max(0, WINDOW - len(self.asked))]:
            self._ask(i)
