"""Placement: key -> partition -> replica set, computed from a membership view alone.

Pure functions, no I/O: every daemon that sees the same alive members computes
the same replica sets, so no assignment is stored or exchanged.

- ``partition_of(key, P)``: xxh64(key bytes) mod P, P a power of two.
- ``place(members, P, R)``: R distinct members per partition, primary first.
- ``spread(count, sets)``: partitions for units of work, even over primaries.
  A member's preference for partition p is rendezvous (HRW): the score
  xxh64(p as 4 big-endian bytes + UTF-8 name). No member holds more than
  ceil(P*R/N) slots or is primary of more than ceil(P/N) partitions.

The cap is applied the "bounded loads" way, over all pairs at once:

1. (partition, member) pairs are taken in descending score order; a pair is
   kept while its partition lacks replicas and its member is under the cap,
   so a full member loses only its lowest-scoring pairs. (Filling partitions
   one after another would let early ones take capacity later ones prefer.)
2. A partition left short (every member it lacks is full) is completed along
   a shortest augmenting path: a full member joins it and hands one of its
   partitions to a member with room. One exists because N * cap >= P * R.
3. Primaries are picked the same way within each set, capped at ceil(P/N);
   moving the primary role moves no data.

Movement: a join moves the joiner's share P*R/(N+1) plus a reshuffle, because
everybody's cap falls while the joiner takes its favourites at random from the
old members; the reshuffle grows like sqrt(N * P*R/(N+1)). Measured for
N <= 30: mean 1.17x optimum (worst 1.47x) at P=1024, R=3; mean 1.56x at
P=64, R=1 (worst 4.8x: 14 slots for an optimum of 3). See
``scripts/benchmarks/placement.py``.

Example:
    >>> sets = place(["n1", "n2", "n3"], partitions=8, replicas=2)
    >>> [len(s) for s in sets] == [2] * 8
    True
"""

from __future__ import annotations

import math
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import xxhash

MAX_PARTITIONS = 65536
_xxh64 = xxhash.xxh64_intdigest
_PARTITION = struct.Struct(">I")
# The greedy pass sorts only each partition's top R + SHORTLIST members (the
# repair considers everyone): at most P * (R + 32) pairs. Measured: identical
# to the unpruned greedy up to N = 100; 2 of 1024 sets differ at N = 300.
SHORTLIST = 32


def validate_partitions(partitions: int) -> None:
    """Check a partition count.

    Args:
        partitions: the cluster's partition count P.

    Raises:
        ValueError: unless P is an int power of two in 1..65536.
    """
    if (
        type(partitions) is not int
        or not 1 <= partitions <= MAX_PARTITIONS
        or partitions & (partitions - 1)
    ):
        raise ValueError(
            f"partitions must be a power of two in 1..{MAX_PARTITIONS} "
            f"(e.g. 256); got {type(partitions).__name__} {partitions!r}"
        )


def partition_of(key: bytes, partitions: int) -> int:
    """Partition of a record key: xxh64(key) mod P.

    Args:
        key: the key's bytes (encode a str first: ``key.encode()``).
        partitions: P, a power of two in 1..65536.

    Returns:
        An int in 0..P-1.

    Raises:
        TypeError: key is not bytes.
        ValueError: P is not a valid partition count.
    """
    if type(key) is not bytes:
        raise TypeError(
            f"partition_of needs the key as bytes; got {type(key).__name__} {key!r:.60}"
            " - encode it first, e.g. key.encode() or str(key).encode()"
        )
    if type(partitions) is not int or not 0 < partitions <= MAX_PARTITIONS or partitions & (
        partitions - 1
    ):
        validate_partitions(partitions)
    return _xxh64(key) & (partitions - 1)


def place(members: Iterable[str], partitions: int, replicas: int) -> list[list[str]]:
    """Replica set of every partition, primary first.

    Args:
        members: names of the alive members; order and duplicates don't matter.
        partitions: P, a power of two in 1..65536.
        replicas: R >= 1; each set has min(R, N) distinct members.

    Returns:
        A list of P lists; entry p is partition p's replica set. No member
        holds more than ceil(P*R/N) slots nor is primary of more than
        ceil(P/N). With no members every set is empty. Cost: P*N hashes and
        a sort; about 30 ms for P=1024, N=30 and 0.1 s for P=256, N=1000.

    Raises:
        ValueError: bad partitions or replicas.
        TypeError: a member name is not a str.
    """
    validate_partitions(partitions)
    if type(replicas) is not int or replicas < 1:
        raise ValueError(f"replicas must be an int >= 1; got {replicas!r}")
    names = set(members)
    for name in names:
        if type(name) is not str:
            raise TypeError(f"member names must be str; got {type(name).__name__} {name!r}")
    names = sorted(names)
    n = len(names)
    if n == 0:
        return [[] for _ in range(partitions)]
    scores = _scores(names, partitions)
    everyone = range(n)
    if n <= replicas:  # every member holds every partition
        sets = [list(everyone) for _ in range(partitions)]
    else:
        sets = [[] for _ in range(partitions)]
        top = replicas + SHORTLIST

        def shortlist(p: int) -> Iterable[int]:
            if n <= top:
                return everyone
            row = scores[p]
            floor = sorted(row)[-top]
            return [i for i, s in enumerate(row) if s >= floor]

        _assign(sets, replicas, math.ceil(partitions * replicas / n), scores,
                shortlist, lambda p: everyone)
    primary: list[list[int]] = [[] for _ in range(partitions)]
    in_set = sets.__getitem__
    _assign(primary, 1, math.ceil(partitions / n), scores, in_set, in_set)
    out = []
    for p, held in enumerate(sets):
        first = primary[p][0]
        rest = sorted((i for i in held if i != first), key=scores[p].__getitem__, reverse=True)
        out.append([names[first]] + [names[i] for i in rest])
    return out


def spread(count: int, sets: Sequence[Sequence[str]]) -> list[int]:
    """Partitions for ``count`` units of work (a source's splits): distinct while
    there are partitions left, and each member of ``sets`` primary of as many as
    the others, give or take one, until it has no partition left. The members take
    turns in name order, each giving its partitions in order; with no members,
    unit i goes to partition i mod P.

    >>> spread(5, [["a"], ["b"], ["a"], ["a"]])
    [0, 1, 2, 3, 0]
    """
    owned: dict[str, list[int]] = {}
    for p, members in enumerate(sets):
        if members:
            owned.setdefault(members[0], []).append(p)
    if not owned:
        return [i % len(sets) for i in range(count)]
    lists = [owned[name] for name in sorted(owned)]
    turns = [part[k] for k in range(max(map(len, lists))) for part in lists if k < len(part)]
    return [turns[i % len(turns)] for i in range(count)]


def moved_slots(before: Sequence[Sequence[str]], after: Sequence[Sequence[str]]) -> int:
    """Replica slots (partition, member) present in ``after`` but not in ``before``.

    Order inside a set is ignored: a primary change moves no data.

    Raises:
        ValueError: the two placements have different partition counts.
    """
    if len(before) != len(after):
        raise ValueError(
            f"placements have different partition counts: {len(before)} and {len(after)}"
        )
    return sum(len(set(a).difference(b)) for b, a in zip(before, after, strict=True))


def _scores(names: list[str], partitions: int) -> list[list[int]]:
    """HRW score of member i for partition p at [p][i]."""
    encoded = [name.encode("utf-8", "surrogatepass") for name in names]
    return [
        [_xxh64(prefix + e) for e in encoded]
        for prefix in map(_PARTITION.pack, range(partitions))
    ]


def _assign(
    chosen: list[list[int]],
    need: int,
    cap: int,
    scores: list[list[int]],
    shortlist: Callable[[int], Iterable[int]],
    candidates: Callable[[int], Iterable[int]],
) -> None:
    """Fill ``chosen[p]`` with ``need`` of ``candidates(p)``, at most ``cap`` per member.

    Greedy over the (partition, member) pairs of ``shortlist(p)`` in
    descending score order, then augmenting paths for any partition left short.
    """
    n = len(scores[0])
    ibits = max(n - 1, 1).bit_length()
    pbits = max(len(chosen) - 1, 1).bit_length()
    low = pbits + ibits
    keys = [
        (row[i] << low) | (p << ibits) | i
        for p, row in enumerate(scores)
        for i in shortlist(p)
    ]
    keys.sort(reverse=True)
    load = [0] * n
    imask, pmask = (1 << ibits) - 1, (1 << pbits) - 1
    left = need * len(chosen)
    for key in keys:
        i = key & imask
        held = chosen[(key >> ibits) & pmask]
        if len(held) < need and load[i] < cap:
            held.append(i)
            load[i] += 1
            left -= 1
            if not left:
                return
    _repair(chosen, need, cap, load, scores, candidates)


def _repair(chosen, need, cap, load, scores, candidates) -> None:
    """Complete every short partition along shortest augmenting paths.

    A partition lacks a replica only if every candidate it lacks is full. So a
    full candidate m joins it and hands one of its partitions q (its
    lowest-scoring first) to a candidate of q that lacks it, and so on until a
    member with room is reached. Breadth first in score order: deterministic.
    """
    holdings: list[list[int]] = [[] for _ in load]
    for q, held in enumerate(chosen):
        for i in held:
            holdings[i].append(q)
    for i, qs in enumerate(holdings):
        qs.sort(key=lambda q, i=i: scores[q][i])
    ranking: dict[int, list[int]] = {}
    parent: dict[int, tuple[int, int]] = {}  # member -> (partition it joins, member it replaces)
    queue: deque[int] = deque()

    def visit(q: int, via: int) -> int:  # reach q's missing candidates; one with room, or -1
        if q not in ranking:
            ranking[q] = sorted(candidates(q), key=scores[q].__getitem__, reverse=True)
        for m in ranking[q]:
            if m not in parent and m not in chosen[q]:
                parent[m] = (q, via)
                if load[m] < cap:
                    return m
                queue.append(m)
        return -1

    for p, short in enumerate(chosen):
        while len(short) < need:
            parent.clear()
            queue.clear()
            seen = {p}
            end = visit(p, -1)
            while end < 0 and queue:
                via = queue.popleft()
                for q in holdings[via]:
                    if q not in seen:
                        seen.add(q)
                        end = visit(q, via)
                        if end >= 0:
                            break
            if end < 0:
                raise AssertionError(f"no augmenting path for partition {p}: cap {cap} too small")
            load[end] += 1
            m = end
            while m >= 0:  # walk back: on each partition of the path, m takes `replaced`'s slot
                q, replaced = parent[m]
                if replaced >= 0:
                    chosen[q].remove(replaced)
                    holdings[replaced].remove(q)
                chosen[q].append(m)
                holdings[m].append(q)
                m = replaced


def ranges(parts: list[int]) -> str:
    """Partitions as ranges: [1, 2, 3, 7] -> "1-3,7"."""
    out: list[str] = []
    for p in sorted(parts):
        if out and out[-1].split("-")[-1] == str(p - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{p}"
        else:
            out.append(str(p))
    return ",".join(out)
