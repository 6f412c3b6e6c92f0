"""Ingest, the daemon's side: a producer's batch, sent to any daemon, reaches the primary
of the producer's partition and is acknowledged once durable.

A producer has an id and numbers its records 1, 2, 3, ... A request ``{"ingest",
"producer", "first", "records"}`` names the ingest (``sources.ingest(NAME)`` of a
running flow) and the number of its first record. The daemon that gets it forwards it,
as a shuffled batch of origin ``p:<producer>``, to the task of the ingest stage for
partition ``xxh64(producer) mod P`` on that partition's primary (so a producer's
records stay in order); the task applies the records past the producer's mark in one
commit with the new mark (:meth:`daemon.task.PartitionTask._take_produced`) and
answers ``[mark, applied]`` once that commit is on every replica. A member without a
majority of the flow's voters runs no task, so it never acknowledges.

The answer is ``{"acked_upto": mark, "applied": n}`` (every record up to ``mark`` is
durable; ``n`` of this request's were new), or ``{"retry": why}`` when no
acknowledgement could be had now (the partition is moving, the primary is cut off or
busy): the producer sends the same batch again, and nothing counts twice.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

import msgpack
import xxhash

from .errors import RequestRefusedError
from .placement import place
from .runtime import flow_id
from .task import PRODUCER, UNKNOWN_PRODUCER

if TYPE_CHECKING:
    from .node import Node

PRODUCER_ID = re.compile(r"[!-~]{1,200}")
"""A producer id: 1 to 200 printable ASCII characters, no spaces."""
MAX_RECORD_BYTES = 1 << 20
"""A record larger than this (msgpack) is refused."""
MAX_BATCH_RECORDS = 10_000

Reply = Callable[[Any, "str | None"], None]


def producer_partition(producer: str, partitions: int) -> int:
    """The partition whose task applies ``producer``'s records."""
    return xxhash.xxh64_intdigest(producer.encode()) % partitions


def check_request(args: dict[str, Any]) -> tuple[str, str, int, list]:
    """(ingest, producer, first, records) of a send request.

    Raises:
        RequestRefusedError: a field is missing or malformed, or a record is too large.
    """
    ingest, producer = args.get("ingest"), args.get("producer")
    first, records = args.get("first"), args.get("records")
    if not isinstance(ingest, str):
        raise RequestRefusedError("send needs 'ingest', the ingest name")
    if not (isinstance(producer, str) and PRODUCER_ID.fullmatch(producer)):
        raise RequestRefusedError("send needs 'producer', 1 to 200 printable ASCII characters"
                                  f" without spaces; got {producer!r:.80}")
    if type(first) is not int or first < 1:
        raise RequestRefusedError(f"send needs 'first', the number of its first record (>= 1);"
                                  f" got {first!r:.40}")
    if not (isinstance(records, list) and 0 < len(records) <= MAX_BATCH_RECORDS):
        raise RequestRefusedError(f"send needs 'records', a list of 1 to {MAX_BATCH_RECORDS}")
    return ingest, producer, first, records


class IngestService:
    """Routes producers' batches to the primaries of their partitions (event-loop thread)."""

    def __init__(self, node: "Node") -> None:
        self.node = node
        self._placed: tuple[tuple[str, ...], list[str]] = ((), [])

    def _primaries(self) -> list[str]:
        """Each partition's primary in our view (placement is computed once a view)."""
        view = tuple(sorted({m.name for m in self.node.membership.live_members()}
                            - set(self.node.flows.forgotten)))
        if view != self._placed[0]:
            config = self.node.config
            sets = place(list(view), config.partitions, config.replicas)
            self._placed = (view, [s[0] for s in sets])
        return self._placed[1]

    def send(self, args: dict[str, Any], reply: Reply) -> None:
        """Handle a producer's request: ``reply(answer, error)`` as the module says.

        Raises:
            RequestRefusedError: a malformed request, or no running flow takes the ingest.
        """
        ingest, producer, first, records = check_request(args)
        flows = self.node.flows
        found = flows.registry.ingest(ingest)
        if found is None:
            names = ", ".join(flows.registry.ingests()) or "none"
            raise RequestRefusedError(f"no running flow takes ingest {ingest!r} "
                                      f"(ingests of running flows: {names})")
        record, stage = found
        partition = producer_partition(producer, self.node.config.partitions)
        primary = self._primaries()[partition]
        payload = msgpack.packb([False, records], use_bin_type=True)
        if len(payload) > MAX_RECORD_BYTES:  # only then is any record possibly too large
            for i, item in enumerate(records):
                size = len(msgpack.packb(item, use_bin_type=True))
                if size > MAX_RECORD_BYTES:
                    raise RequestRefusedError(
                        f"record {first + i} of producer {producer} is {size} bytes: records"
                        f" are at most {MAX_RECORD_BYTES} bytes (1 MiB)")
        entry = [flow_id(record), stage, partition, PRODUCER + producer, first, payload]

        def answered(marks: list | None) -> None:
            answer = marks[0] if isinstance(marks, list) and len(marks) == 1 else None
            if isinstance(answer, list) and len(answer) == 2 and all(
                    type(a) is int for a in answer):
                if answer[1] == UNKNOWN_PRODUCER:
                    reply(None, f"unknown producer {producer!r} for ingest {ingest!r}: a new "
                          "producer numbers its records from 1 (one silent longer than the "
                          "ingest's producer_ttl is forgotten)")
                else:
                    reply({"acked_upto": answer[0], "applied": answer[1]}, None)
            else:
                reply({"retry": f"{primary}, primary of partition {partition}, did not "
                                "acknowledge (moving, cut off or busy)"}, None)

        if primary == self.node.name:
            flows.runtime.data([entry], answered)
        else:
            flows.send_data(primary, [entry], answered)
