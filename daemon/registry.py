"""The cluster-wide flow registry: a small replicated map, last writer wins.

Each flow is one :class:`FlowRecord` (name, version = xxh64 of the text, the
text itself, status, the run: which submission it is; every submission is a
new run, with state and progress of its own; and its sources' splits, made
once at submit so that every member reads the same). Every change takes a
Lamport stamp ``(clock, origin)``:
the clock is one more than any clock this member has seen, ties broken by
the origin member's name, so every member that has seen the same records
holds the same registry whatever order they arrived in. Records travel in
push-pull exchanges (repair) and are pushed to every member on change.

Example:
    >>> a, b = Registry("n1"), Registry("n2")
    >>> record, created = a.submit("wc", "text", "/f/wc.py", "/f", ["n1", "n2"])
    >>> b.merge(record), b.get("wc").version == record.version
    (True, True)
    >>> b.merge(record)
    False
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable

import xxhash

from .errors import DecodeError, FlowExistsError, UnknownFlowError

STATUSES = ("running", "completed", "cancelled", "failed")
FINAL = ("completed", "cancelled", "failed")


def flow_version(text: str) -> str:
    """The version of a flow: xxh64 of its source text, 16 hex digits."""
    return xxhash.xxh64(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class FlowRecord:
    """One flow as the registry knows it."""

    name: str
    version: str
    text: str
    path: str
    """The flow file's path on the submitting machine (for messages)."""
    base_dir: str
    """Directory that relative paths in the flow are resolved against."""
    status: str
    error: str
    clock: int
    origin: str
    submitted: float
    """Wall-clock time of submission (display only; ordering uses the clock)."""
    members: list
    """Names of the members the flow's partitions are placed over (alive at submission)."""
    run: str = ""
    """This submission: the version and the stamp it was submitted with (a text submitted
    again is a new run, with state and progress of its own)."""
    splits: dict = field(default_factory=dict)
    """Per source name, its splits as made at submit (:mod:`nodes.sources`: maps of field
    names to ints >= 0, strings or None; a file's carry its size and digest)."""

    @property
    def stamp(self) -> tuple[int, str]:
        return (self.clock, self.origin)

    def summary(self) -> dict[str, Any]:
        """Everything but the text and the splits."""
        return {k: v for k, v in asdict(self).items() if k not in ("text", "splits")}

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: Any) -> "FlowRecord":
        """Check and build a record from the network.

        Raises:
            DecodeError: missing fields, wrong types, an unknown status or malformed
                splits.
        """
        if not isinstance(data, dict):
            raise DecodeError("a flow record is not a map")
        values = {}
        for f in fields(cls):
            value = data.get(f.name)
            wanted = {"int": int, "float": (int, float), "str": str, "list": list,
                      "dict": dict}[f.type]
            if isinstance(value, bool) or not isinstance(value, wanted):
                raise DecodeError(f"flow record field {f.name!r} is missing or not {f.type}")
            values[f.name] = value
        if not all(isinstance(m, str) for m in values["members"]):
            raise DecodeError("flow record members must be names")
        if values["status"] not in STATUSES:
            raise DecodeError(f"flow record has unknown status {values['status']!r}")
        if not all(isinstance(name, str) and isinstance(splits, list)
                   and all(map(_is_split, splits)) for name, splits in values["splits"].items()):
            raise DecodeError("flow record splits must map source names to lists of splits "
                              "(maps of field names to ints >= 0, strings or nil)")
        return cls(**values)


def _is_split(split: Any) -> bool:
    return isinstance(split, dict) and all(
        isinstance(key, str) and (value is None or isinstance(value, str)
                                  or type(value) is int and value >= 0)
        for key, value in split.items())


class Registry:
    """This member's copy of the flow registry.

    Args:
        member: our member name (the origin of changes made here).
        on_change: called with each record that changed (new, replaced, restated).
    """

    def __init__(self, member: str,
                 on_change: Callable[[FlowRecord], None] | None = None) -> None:
        self.member = member
        self.flows: dict[str, FlowRecord] = {}
        self._clock = 0
        self._on_change = on_change or (lambda record: None)

    def get(self, name: str) -> FlowRecord:
        """The record of flow ``name``.

        Raises:
            UnknownFlowError: no such flow.
        """
        record = self.flows.get(name)
        if record is None:
            known = ", ".join(sorted(self.flows)) or "none"
            raise UnknownFlowError(f"no flow named {name!r} (flows: {known})")
        return record

    def merge(self, record: FlowRecord) -> bool:
        """Take ``record`` if it is newer than ours; True if it changed anything."""
        self._clock = max(self._clock, record.clock)
        current = self.flows.get(record.name)
        if current is not None and current.stamp >= record.stamp:
            return False
        self.flows[record.name] = record
        self._on_change(record)
        return True

    def merge_wire(self, items: Iterable[Any]) -> list[FlowRecord]:
        """Merge records from the network; the ones that changed. Bad records raise DecodeError."""
        records = [FlowRecord.from_wire(item) for item in items]
        return [record for record in records if self.merge(record)]

    def to_wire(self) -> list[dict[str, Any]]:
        return [record.to_wire() for record in self.flows.values()]

    def running_already(self, name: str, text: str, replace: bool = False) -> FlowRecord | None:
        """The record that a submission of ``text`` as ``name`` leaves as it is (the same
        text runs), or None: the submission makes a new run.

        Raises:
            FlowExistsError: another text is registered under that name and ``replace``
                is False.
        """
        version = flow_version(text)
        current = self.flows.get(name)
        if current is not None and current.version == version and current.status == "running":
            return current
        if current is not None and current.version != version and not replace:
            raise FlowExistsError(
                f"flow {name!r} exists with another text (version {current.version}, "
                f"{current.status}); submit with --replace to run the new text instead")
        return None

    def submit(self, name: str, text: str, path: str, base_dir: str, members: list[str],
               replace: bool = False, splits: dict | None = None) -> tuple[FlowRecord, bool]:
        """Register a flow placed over ``members``, its sources cut into ``splits``;
        ``(record, created)``. The same text while it runs is a no-op; once it stopped,
        it runs again as a new run.

        Raises:
            FlowExistsError: another text runs under that name and ``replace`` is False.
        """
        current = self.running_already(name, text, replace)
        if current is not None:
            return current, False
        for ingest in ingests_of(splits or {}):
            taken = self.ingest(ingest)
            if taken is not None and taken[0].name != name:
                raise FlowExistsError(f"ingest {ingest!r} is taken by running flow "
                                      f"{taken[0].name!r}: one running flow per ingest name")
        version = flow_version(text)
        record = self._stamp(FlowRecord(name, version, text, path, base_dir, "running", "",
                                        0, "", time.time(), sorted(members),
                                        splits=splits or {}))
        origin = xxhash.xxh32_hexdigest(self.member.encode())
        record = FlowRecord(**{**asdict(record), "run": f"{version}.{record.clock}.{origin}"})
        self.merge(record)
        return record, True

    def ingest(self, ingest: str) -> tuple[FlowRecord, int] | None:
        """The running flow taking ingest ``ingest`` and the stage its producers feed."""
        for record in self.flows.values():
            if record.status == "running" and ingest in ingests_of(record.splits):
                return record, ingests_of(record.splits)[ingest]
        return None

    def ingests(self) -> list[str]:
        """The ingest names running flows take."""
        return sorted(i for r in self.flows.values() if r.status == "running"
                      for i in ingests_of(r.splits))

    def set_status(self, name: str, status: str, error: str = "") -> FlowRecord:
        """Restate flow ``name`` (e.g. cancelled, completed, failed with ``error``).

        Raises:
            UnknownFlowError: no such flow.
            ValueError: unknown status.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        current = self.get(name)
        record = self._stamp(FlowRecord(**{**asdict(current), "status": status, "error": error}))
        self.merge(record)
        return record

    def _stamp(self, record: FlowRecord) -> FlowRecord:
        self._clock += 1
        return FlowRecord(**{**asdict(record), "clock": self._clock, "origin": self.member})


def ingests_of(splits: dict[str, list]) -> dict[str, int]:
    """Ingest name -> stage, of a record's splits (an ingest source has one split naming
    its ingest and its stage)."""
    return {split["ingest"]: split["stage"] for source in splits.values() for split in source
            if isinstance(split.get("ingest"), str) and type(split.get("stage")) is int}
