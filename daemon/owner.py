"""Who runs each partition of a flow here: the ownership state machine.

An :class:`Owner` holds, for one flow on one member, each partition's
:class:`Part` and decides when this member takes it over
(:mod:`daemon.takeover`), waits while another member hands it over, hands it
over itself (:mod:`daemon.handover`) or steps down. It is fed the member's
views (:meth:`Owner.view`), the passing of time (:meth:`Owner.tick`) and what
its running partitions meet (:meth:`Owner.stale`, :meth:`Owner.lost_copy`,
:meth:`Owner.step_down`); it acts only through its :class:`Host`. It applies
:mod:`daemon.ownership`'s rules and knows nothing of threads, task steps or
real time (its clock is passed in), so simulation tests drive it directly on
the in-memory network (``tests/test_owner.py``).

A partition's states; *mine* means the view holds a majority of the flow's
voters and names this member first of the partition's replica set::

    idle --mine, retry due--> taking over --sealed--> active (fenced) --accepted--> active
    taking over, active (fenced) --failed--> idle (retried RETRY_TAKEOVER later, above
        the epoch met)
    taking over --another member runs it--> awaiting copy --HANDOVER_POLL--> taking over
    active --its set adds members--> handing over --copied, or timed out--> idle
    active --not mine and nobody to copy to, a replica gone, stale, lost copy--> idle
    taking over, awaiting copy --not mine any more (or another set)--> idle
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .handover import Handover
from .ownership import quorate, voters
from .placement import place
from .replication import epoch_after
from .store import Store, TaskId
from .takeover import Takeover
from .task import PartitionTask

log = logging.getLogger("gossipflow.owner")

RETRY_TAKEOVER = 0.3
"""Seconds before a failed takeover of a partition is tried again."""
HANDOVER_POLL = 0.1
"""Seconds between asking whether the member handing a partition to us has stepped down."""
WAIT_FOR_HANDOVER = 120.0
"""Seconds we wait for a member still running a partition of ours to hand it over (it
gives up copying sooner, see handover.TIMEOUT: 20 s plus 1 s per 4 MiB of snapshot);
then we take it over regardless. The partition runs meanwhile, on that member."""

Call = Callable[[str, str, Any, Callable[[Any], None]], None]


class View(NamedTuple):
    """What a member sees of the cluster, and placement over it."""

    members: list[str]
    """Members alive (or suspect), this one included, forgotten ones not; sorted."""
    forgotten: frozenset[str]
    """Members removed for good (``gossipflow forget``): they vote in no flow."""
    sets: list[list[str]]
    """Per partition, its replica set over ``members`` (primary first)."""

    @classmethod
    def of(cls, me: str, alive: Iterable[str], forgotten: Iterable[str], partitions: int,
           replicas: int) -> View:
        """``me``'s view when it sees ``alive`` and knows ``forgotten``.

        >>> View.of("a", ["c", "b"], ["c"], 2, 2)
        View(members=['a', 'b'], forgotten=frozenset({'c'}), sets=[['a', 'b'], ['b', 'a']])
        """
        gone = frozenset(forgotten)
        members = sorted((set(alive) | {me}) - gone)
        return cls(members, gone, place(members, partitions, replicas))


@dataclass
class Host:
    """What an :class:`Owner` asks of the member it decides for (on the owner's thread)."""

    activate: Callable[[int, int, tuple[str, ...]], list[PartitionTask]]
    """activate(partition, epoch, replicas): run the partition's tasks as its primary at
    ``epoch``, committing to ``replicas``; returns them (one per stage)."""
    deactivate: Callable[[int], None]
    """deactivate(partition): stop running its tasks here; their data stays."""
    call: Call
    """call(member, kind, args, on_reply): a replication request (ourselves included);
    on_reply gets the answer or None, later, on the owner's thread."""
    soon: Callable[[Callable[[], None]], None]
    """soon(fn): call fn after what is being handled now."""
    shipped: Callable[[PartitionTask], None]
    """shipped(task): the task has commits to send (a handover's copy landed, or it
    started fenced behind its seal)."""
    open: Callable[[int], None]
    """open(partition): its takeover is complete; its tasks may release what they made."""


class Active(NamedTuple):
    """A partition running here."""

    epoch: int
    replicas: tuple[str, ...]
    tasks: list[PartitionTask]


@dataclass(eq=False)
class Part:
    """One partition of the flow as this member holds it (the states of the module
    docstring)."""

    active: Active | None = None
    handover: Handover | None = None
    """Running here and being copied to the members its new replica set adds."""
    takeover: Takeover | None = None
    """The round taking it over."""
    opening: Takeover | None = None
    """The round that activated it, fenced, and has yet to complete (then: open)."""
    started: float = 0.0
    """When that round began."""
    deferred: float | None = None
    """Since when another member runs it while it is ours (handing it over to us)."""
    retry_at: float = 0.0
    """No takeover before this time."""
    seen: int = 0
    """The highest epoch a failed takeover met."""
    was: str | None = None
    """Who ran it last as far as we know: us, if we ran it when the view changed, else
    the last other member a view of ours named its primary (None: unknown). While that
    other member is alive it may still run the partition, so a takeover asks first."""


class Owner:
    """Flow ``flow``'s partitions on member ``me``: which to take over, run, hand over.

    ``tasks_of(p)`` names partition p's tasks; ``submitted`` are the members the flow
    was submitted to; ``view`` is the member's view, if it has one yet (until then
    the owner runs nothing).
    """

    def __init__(self, me: str, flow: str, partitions: int,
                 tasks_of: Callable[[int], list[TaskId]], submitted: Iterable[str],
                 store: Store, host: Host, clock: Callable[[], float],
                 view: View | None = None) -> None:
        self.me, self.flow, self.tasks_of = me, flow, tasks_of
        self.submitted = frozenset(submitted)
        self.store, self.host, self.clock = store, host, clock
        self.current = view
        self.parts = [Part() for _ in range(partitions)]
        self.stopped = False

    # ------------------------------------------------------------------ what the host asks

    @property
    def voters(self) -> frozenset[str]:
        """The flow's voters: the members it was submitted to, less those forgotten."""
        return voters(self.submitted, self.current.forgotten if self.current else ())

    def quorate(self) -> bool:
        """Whether our view holds a majority of the flow's voters and keeps us (before
        the first view we see ourselves alone)."""
        view = self.current or View([self.me], frozenset(), [])
        return self.me not in view.forgotten and quorate(view.members, self.voters)

    def busy(self, p: int) -> bool:
        """Whether partition ``p`` runs or is being taken over here."""
        part = self.parts[p]
        return part.active is not None or part.takeover is not None

    def states(self) -> dict[str, dict[str, Any]]:
        """Per partition this member runs, hands over, takes over or waits for: epoch,
        replicas, state ("active", "handing over" with "to" and "copying", "taking
        over" or "awaiting copy") and commits not yet on every replica. Read-only, so
        another thread may ask (the answer is then approximate)."""
        out: dict[str, dict[str, Any]] = {}
        for p, part in enumerate(self.parts):
            active, handover, takeover = part.active, part.handover, part.takeover
            if active is not None:
                out[str(p)] = {"epoch": active.epoch, "replicas": list(active.replicas),
                               "state": "active", "unreplicated": max(
                                   [0, *(task.log.backlog for task in active.tasks)])}
                if handover is not None:
                    out[str(p)].update(state="handing over", to=list(handover.learners),
                                       copying=not handover.draining)
            elif takeover is not None:
                waiting = part.deferred is not None and not takeover.promising  # probing
                out[str(p)] = {"epoch": takeover.epoch, "replicas": list(takeover.sets[p][1:]),
                               "state": "awaiting copy" if waiting else "taking over",
                               "unreplicated": 0}
            elif part.deferred is not None and self.current is not None:
                out[str(p)] = {"epoch": 0, "replicas": list(self.current.sets[p][1:]),
                               "state": "awaiting copy", "unreplicated": 0}
        return out

    # ------------------------------------------------------------------ what feeds it

    def view(self, view: View) -> None:
        """The member's view changed: start, keep, hand over or stop each partition."""
        if self.current is not None:
            for part, old in zip(self.parts, self.current.sets):
                if part.active is not None:
                    part.was = self.me
                elif old[0] != self.me:
                    part.was = old[0]
        self.current = view
        self._place()

    def tick(self) -> None:
        """Time passed: retry takeovers that are due, move handovers on."""
        self._place()

    def stale(self, p: int) -> None:
        """A task of ``p`` met a newer epoch (a replica or our store promised it)."""
        self.step_down(p, "stale", RETRY_TAKEOVER)

    def lost_copy(self, task: PartitionTask, member: str, last: int) -> None:
        """Replica ``member`` answered ``last``, behind what it acknowledged (a wiped
        store, a power loss): only a snapshot brings it back, and the takeover that
        follows our step-down sends one."""
        log.warning("event=replica_lost_data member=%s task=%s replica=%s last=%d "
                    "acknowledged=%d", self.me, task.id, member, last, task.log.acked[member])
        self.step_down(task.id.partition, "replica lost data")

    def step_down(self, p: int, why: str, retry_in: float = 0.0) -> None:
        """Stop running ``p`` here; take it over again no sooner than ``retry_in``."""
        part = self.parts[p]
        if part.handover is not None:
            part.handover.cancel()
            part.handover = None
        part.active = part.opening = None
        self.host.deactivate(p)
        part.retry_at = self.clock() + retry_in
        log.info("event=step_down member=%s flow=%s partition=%d reason=%s",
                 self.me, self.flow, p, why)

    def stop(self) -> None:
        """The flow stopped here: a round that ends later activates nothing."""
        self.stopped = True

    # ------------------------------------------------------------------ decisions

    def _place(self) -> None:
        view = self.current
        if view is None:
            return  # we know too little of the cluster to run anything
        now = self.clock()
        quorate = self.quorate()
        starting = []
        for p, part in enumerate(self.parts):
            rset = view.sets[p]
            mine = quorate and rset[0] == self.me
            if part.active is not None:
                self._keep(p, part, quorate, rset, now)
            takeover = part.takeover
            if takeover is not None and (not mine or takeover.sets[p] != rset):
                takeover.drop(p)
                part.takeover = None
            if not mine:
                part.deferred = None
            elif part.active is None and part.takeover is None and now >= part.retry_at:
                starting.append(p)
        if starting:
            self._take_over(starting, now)

    def _keep(self, p: int, part: Part, quorate: bool, rset: list[str], now: float) -> None:
        """A partition running here whose replica set may have changed: keep it, hand it
        over to the members the new set adds, or stop now."""
        assert part.active is not None and self.current is not None
        replicas = part.active.replicas
        learners = tuple(m for m in rset if m != self.me and m not in replicas)
        handover = part.handover
        if handover is not None and (not quorate or handover.learners != learners):
            handover.cancel()
            part.handover = handover = None
        if not quorate or (list(rset) != [self.me, *replicas] and (
                not learners or not set(replicas) <= set(self.current.members))):
            # members only left (the others' copies are current), or a replica is gone (no
            # commit can be durable until a takeover names the new replica set)
            self.step_down(p, "view")
        elif learners and handover is None:
            part.handover = handover = Handover(
                p, learners, part.active.tasks, self.store, self.host.call, now,
                on_shipped=self.host.shipped, on_stale=lambda task: self.stale(p))
            log.info("event=handover_start member=%s flow=%s partition=%d to=%s",
                     self.me, self.flow, p, ",".join(learners))
            handover.start()
        elif handover is not None:
            state = handover.check(now)
            if state in ("done", "timeout"):
                log.info("event=handover_%s member=%s flow=%s partition=%d to=%s copies=%d "
                         "took=%.3f", state, self.me, self.flow, p, ",".join(learners),
                         handover.copies, now - handover.started)
                self.step_down(p, "handed over")

    def _take_over(self, partitions: list[int], now: float) -> None:
        assert self.current is not None
        tasks = {p: self.tasks_of(p) for p in partitions}
        seen = max(max(self.parts[p].seen, *(max(m.epoch, m.promised) for m in map(
            self.store.task_meta, tasks[p]))) for p in partitions)
        epoch = epoch_after(seen, self.me)
        waiting = frozenset(p for p in partitions if self._may_run_elsewhere(p) and (
            self.parts[p].deferred is None or now - self.parts[p].deferred < WAIT_FOR_HANDOVER))
        takeover = Takeover(
            self.me, self.store, self.host.call, epoch, tasks,
            {p: self.current.sets[p] for p in partitions}, list(self.current.members),
            self.voters, on_running=lambda p: self._took_over(takeover, p),
            on_ready=lambda p: self._opened(takeover, p),
            on_failed=lambda p, seen: self._failed(takeover, p, seen),
            defer_to_running=waiting, on_deferred=lambda p: self._deferred(takeover, p),
            soon=self.host.soon)
        for p in partitions:
            self.parts[p].takeover, self.parts[p].started = takeover, now
        log.info("event=takeover_start member=%s flow=%s partitions=%d epoch=%d",
                 self.me, self.flow, len(partitions), epoch)
        takeover.start()

    def _may_run_elsewhere(self, p: int) -> bool:
        """Whether another live member may still run ``p`` (then a takeover asks it
        first, so a join or a return hands it over without a pause): unknown, or its
        last other primary is in our view. A primary that died runs nothing: skipping
        the question saves a round trip of every failover."""
        was = self.parts[p].was
        return was is None or (was != self.me and self.current is not None
                               and was in self.current.members)

    def _deferred(self, takeover: Takeover, p: int) -> None:
        """Another member still runs ``p``: it copies it here, then steps down."""
        part = self.parts[p]
        if part.takeover is takeover:
            part.takeover = None
            now = self.clock()
            if part.deferred is None:
                part.deferred = now
                log.info("event=takeover_deferred member=%s flow=%s partition=%d",
                         self.me, self.flow, p)
            part.retry_at = now + HANDOVER_POLL

    def _took_over(self, takeover: Takeover, p: int) -> None:
        part = self.parts[p]
        if part.takeover is not takeover or self.stopped:
            return
        part.takeover = part.deferred = None
        part.opening = takeover
        replicas = tuple(takeover.sets[p][1:])
        part.active = Active(takeover.epoch, replicas,
                             self.host.activate(p, takeover.epoch, replicas))
        for task in part.active.tasks:
            self.host.shipped(task)  # the seal goes with its first commits
        log.info("event=partition_active member=%s flow=%s partition=%d epoch=%d replicas=%s "
                 "took=%.3f", self.me, self.flow, p, takeover.epoch, ",".join(replicas) or "-",
                 self.clock() - part.started)

    def _opened(self, takeover: Takeover, p: int) -> None:
        part = self.parts[p]
        if part.opening is takeover and part.active is not None and not self.stopped:
            part.opening = None
            self.host.open(p)

    def _failed(self, takeover: Takeover, p: int, seen: int) -> None:
        part = self.parts[p]
        if part.takeover is takeover:
            part.takeover = None
            part.seen = max(part.seen, seen)
            part.retry_at = self.clock() + RETRY_TAKEOVER
        elif part.opening is takeover:  # it ran fenced, released nothing: stop it
            part.seen = max(part.seen, seen)
            self.step_down(p, "takeover failed", RETRY_TAKEOVER)
