"""Read a flow's log sink (``sinks.log()``) from saved offsets.

Each partition's log holds records under offsets 0, 1, 2, ...; a record is readable
once the commit that made it is on every replica, and an offset is never reused, so a
consumer that saves :attr:`Consumer.offsets` after handling what it got and resumes
from them sees every record exactly once, in order per partition, whichever daemons
were killed in between.

Example:
    consumer = Consumer("totals", nodes=["10.0.0.1:7400"], offsets=saved or "start")
    for partition, offset, record in consumer:
        handle(record)
        saved = consumer.offsets  # resume from here
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from nodes.codec import unpack

from . import client
from .errors import NodeUnreachableError


class Consumer:
    """Reads flow ``flow``'s log sink (``sink``, if it has several).

    Args:
        flow: the flow's name.
        nodes: daemons to ask, "host:port" (the next is tried when one does not answer).
        sink: the log sink's name (needed only if the flow has several).
        offsets: "start" (every record still kept), "end" (only records to come), or
            {partition: next offset} saved from :attr:`offsets`.
        poll_every: seconds between polls while nothing new comes.
    """

    def __init__(self, flow: str, nodes: list[str] | None = None, *, sink: str | None = None,
                 offsets: str | dict[int, int] = "start", poll_every: float = 0.1,
                 timeout: float = 5.0, secret: bytes | None = None) -> None:
        self.flow, self.sink = flow, sink
        self.nodes = list(nodes or ["127.0.0.1:7400"])
        self.poll_every, self.timeout, self.secret = poll_every, timeout, secret
        if offsets not in ("start", "end") and not isinstance(offsets, dict):
            raise ValueError(f"offsets must be 'start', 'end' or a dict; got {offsets!r}")
        self.offsets: dict[int, int] = dict(offsets) if isinstance(offsets, dict) else {}
        """Per partition, the offset of the next record to read (absent: 0)."""
        self._from_end = offsets == "end"
        self.dropped = 0
        """Records retention dropped before this consumer read them."""
        self._node = 0

    def poll(self) -> list[tuple[int, int, Any]]:
        """The records readable now past our offsets, as (partition, offset, record),
        in offset order per partition; advances :attr:`offsets` past them.

        Raises:
            NodeUnreachableError: no daemon answered.
            RequestRefusedError: no such flow, or it has no such log sink.
        """
        args: dict[str, Any] = {"name": self.flow, "sink": self.sink,
                                "from": {str(p): o for p, o in self.offsets.items()},
                                "end": self._from_end}
        result = self._ask(args)
        out: list[tuple[int, int, Any]] = []
        for key, (first, bound, packed) in sorted(result["parts"].items(), key=lambda i: int(i[0])):
            partition = int(key)
            if self._from_end:
                self.offsets[partition] = bound
                continue
            at = self.offsets.get(partition, 0)
            records = unpack(packed, use_list=True)
            if records and first > at:
                self.dropped += first - at
            if first < at:  # an answer older than what we read: skip what we have
                records, first = records[at - first:], at
            out += [(partition, first + i, r) for i, r in enumerate(records)]
            if records:
                self.offsets[partition] = first + len(records)
        self._from_end = False
        return out

    def __iter__(self) -> Iterator[tuple[int, int, Any]]:
        while True:
            batch = self.poll()
            yield from batch
            if not batch:
                time.sleep(self.poll_every)

    def _ask(self, args: dict[str, Any]) -> dict[str, Any]:
        for _ in range(len(self.nodes)):
            try:
                return client.request(self.nodes[self._node], "log", args,
                                      timeout=self.timeout, secret=self.secret)
            except NodeUnreachableError:
                self._node = (self._node + 1) % len(self.nodes)
        raise NodeUnreachableError(f"no answer from {', '.join(self.nodes)}")
