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

import os
from collections.abc import Callable
from typing import Any

from .store import TaskId

TRIES = 4
"""Times one chunk is asked for before the transfer gives up."""

Call = Callable[[str, str, Any, Callable[[Any], None]], None]


def transfer_id() -> str:
    """A fresh id naming one transfer on the serving member."""
    return os.urandom(8).hex()


class Push:
    """Send ``chunks`` (a snapshot of ``task``) to ``member`` for a restore at ``epoch``;
    ``on_done`` gets the restore's answer ([last, promised]) or None."""

    def __init__(self, call: Call, member: str, task: TaskId, epoch: int, chunks: list[bytes],
                 on_done: Callable[[Any], None]) -> None:
        self.call, self.member, self.on_done = call, member, on_done
        self.args = {"task": list(task), "epoch": epoch, "xfer": transfer_id(),
                     "count": len(chunks)}
        self.chunks, self.tries = chunks, 0

    def start(self) -> None:
        self._send(0)

    def _send(self, index: int) -> None:
        self.call(self.member, "restore_part",
                  {**self.args, "index": index, "chunk": self.chunks[index]},
                  lambda answer: self._answered(index, answer))

    def _answered(self, index: int, answer: Any) -> None:
        if isinstance(answer, dict):
            wanted = answer.get("next")
            if type(wanted) is int and 0 <= wanted < len(self.chunks):
                self.tries = 0 if wanted > index else self.tries + 1
                if self.tries < TRIES:
                    self._send(wanted)
                    return
            self.on_done(None)
        elif answer is None and self.tries + 1 < TRIES:
            self.tries += 1
            self._send(index)  # the member says where to go on from
        else:
            self.on_done(answer)


class Pull:
    """Fetch ``member``'s snapshot of ``task``; ``on_done`` gets its chunks or None."""

    def __init__(self, call: Call, member: str, task: TaskId,
                 on_done: Callable[[list[bytes] | None], None]) -> None:
        self.call, self.member, self.on_done = call, member, on_done
        self.args = {"task": list(task), "xfer": transfer_id()}
        self.chunks: list[bytes] = []
        self.tries = 0

    def start(self) -> None:
        self._ask()

    def _ask(self) -> None:
        self.call(self.member, "snapshot_part", {**self.args, "index": len(self.chunks)},
                  self._answered)

    def _answered(self, answer: Any) -> None:
        ok = (isinstance(answer, dict) and type(answer.get("count")) is int
              and isinstance(answer.get("chunk"), bytes) and answer["count"] > len(self.chunks))
        if not ok:
            self.tries += 1
            if self.tries >= TRIES:
                self.on_done(None)
            else:
                self._ask()
            return
        self.tries = 0
        self.chunks.append(answer["chunk"])
        if len(self.chunks) == answer["count"]:
            self.on_done(self.chunks)
        else:
            self._ask()
