"""Tests for daemon.placement: partition_of, place, validate_partitions, moved_slots."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from functools import cache

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.placement import moved_slots, partition_of, place, spread, validate_partitions

GRID_P = (64, 256, 1024)
GRID_R = (1, 2, 3)
GRID_N = range(1, 31)


def names(n: int) -> list[str]:
    return [f"node-{i}" for i in range(n)]


@cache
def placed(p: int, r: int, n: int) -> tuple[tuple[str, ...], ...]:
    """place() of node-0..node-(n-1), cached: the grid tests share it."""
    return tuple(tuple(s) for s in place(names(n), p, r))


def loads(placement) -> Counter:
    return Counter(m for s in placement for m in s)


def primaries(placement) -> Counter:
    return Counter(s[0] for s in placement if s)


# --- balance: the exact max/avg floor over the whole grid --------------------------------


@pytest.mark.parametrize("p", GRID_P)
@pytest.mark.parametrize("r", GRID_R)
@pytest.mark.parametrize("n", GRID_N)
def test_max_over_avg_is_exactly_the_floor(p: int, r: int, n: int) -> None:
    placement = placed(p, r, n)
    assert len(placement) == p
    assert all(len(s) == len(set(s)) == min(r, n) for s in placement)
    load = loads(placement)
    if n < r:  # every member holds every partition
        assert all(set(s) == set(names(n)) for s in placement)
        assert load == Counter({m: p for m in names(n)})
    else:
        avg = p * r / n
        assert max(load.values()) == math.ceil(avg)
        assert max(load.values()) / avg == math.ceil(p * r / n) / (p * r / n)
    assert max(primaries(placement).values()) <= math.ceil(p / n)
    assert sum(primaries(placement).values()) == p


def test_no_members_gives_empty_sets() -> None:
    assert place([], 8, 2) == [[] for _ in range(8)]


def test_one_partition_and_large_cluster_with_cap_one() -> None:
    assert place(["a", "b", "c"], 1, 2)[0][0] in {"a", "b", "c"}
    big = place(names(1000), 256, 2)  # cap ceil(512 / 1000) = 1
    assert all(len(set(s)) == 2 for s in big)
    assert max(loads(big).values()) == 1
    assert max(primaries(big).values()) == 1


# --- movement on join and leave ----------------------------------------------------------
#
# The ideal join moves only the joiner's share, P*R/(N+1) slots. Two things
# add to it. The first cannot be designed away; the second was no smaller with
# any variant tried (rounds by replica rank, rank-first order, the LP optimum):
# - The joiner's own load is an integer, up to ceil(P*R/(N+1)). When that share
#   is small and fractional (P=64, R=1, N=30: 2.06, cap 3) some member of the
#   new view holds 3 slots; if it is the one that joined, the join moved 3
#   slots, 1.45x the optimum. So no placement can promise 1.25x for every
#   joiner at such grid points.
# - The cap falls from ceil(PR/N) to ceil(PR/(N+1)) for everybody, while the
#   joiner takes its rendezvous favourites, which are spread at random over the
#   old members (about PR/(N(N+1)) each, give or take its square root). Members
#   it took too little from must still shed, members it took too much from
#   refill, and that reshuffle grows like sqrt(N * P*R/(N+1)).
# So the bound we assert is ceil(opt) + 1.75 * sqrt(N * opt). Measured worst
# case of (moved - ceil(opt)) / sqrt(N * opt): 1.54 for joins and 1.66 for
# leaves (P=64, R=1 between 21 and 22 members, where the cap goes from 4 to 3
# with only 2 slots of slack), over 2160 joins (8 naming schemes) and 2160
# leaves (4 naming schemes, two different leavers). In ratio terms
# (scripts/benchmarks/placement.py prints them): mean 1.17 and worst 1.47 for
# P=1024, R=3; mean 1.56 and worst 4.8 for P=64, R=1.
SPREAD = 1.75


def movement_bound(opt: float, n: int) -> float:
    return math.ceil(opt) + SPREAD * math.sqrt(n * opt)


@pytest.mark.parametrize("p", GRID_P)
@pytest.mark.parametrize("r", GRID_R)
def test_join_moves_close_to_the_joiners_share(p: int, r: int) -> None:
    ratios = []
    for n in GRID_N:
        moved = moved_slots(placed(p, r, n), placed(p, r, n + 1))
        opt = p * r / (n + 1)
        ratios.append(moved / opt)
        assert moved <= movement_bound(opt, n), (n, moved, opt)
        if n < r:  # the joiner is added to every set, nothing else moves
            assert moved == p
    # Averaged over N the reshuffle term shrinks as P*R grows. Measured means
    # with these names: 1.17-1.33 for P*R >= 1024, 1.30-1.60 below.
    assert sum(ratios) / len(ratios) <= (1.35 if p * r >= 1024 else 1.65)


@pytest.mark.parametrize("p", GRID_P)
@pytest.mark.parametrize("r", GRID_R)
def test_leave_moves_close_to_the_leavers_share(p: int, r: int) -> None:
    for n in range(2, 32):
        full = placed(p, r, n)
        for gone in (0, n // 2):
            rest = [m for m in names(n) if m != f"node-{gone}"]
            after = place(rest, p, r)
            moved = moved_slots(full, after)
            opt = p * r / n
            assert moved <= movement_bound(opt, n - 1), (n, gone, moved, opt)
            # every slot the leaver held must be re-homed
            assert moved >= sum(f"node-{gone}" in s for s in full) - (p if n <= r else 0)


# --- properties ----------------------------------------------------------------------------

member_names = st.lists(st.text(min_size=1, max_size=6), min_size=0, max_size=40)
powers = st.integers(min_value=0, max_value=8).map(lambda k: 1 << k)


@settings(max_examples=150, deadline=None)
@given(members=member_names, p=powers, r=st.integers(min_value=1, max_value=4))
def test_sets_are_distinct_full_and_capped(members: list[str], p: int, r: int) -> None:
    placement = place(members, p, r)
    n = len(set(members))
    assert len(placement) == p
    for s in placement:
        assert len(s) == len(set(s)) == min(r, n)
        assert set(s) <= set(members)
    if n:
        cap = p if n <= r else math.ceil(p * r / n)
        assert max(loads(placement).values()) <= cap
        assert max(primaries(placement).values()) <= math.ceil(p / n)


@settings(max_examples=100, deadline=None)
@given(members=member_names, p=powers, r=st.integers(min_value=1, max_value=3),
       seed=st.integers())
def test_same_set_in_any_order_gives_the_same_answer(members, p, r, seed) -> None:
    shuffled = members + members[: len(members) // 2]  # duplicates don't count
    random.Random(seed).shuffle(shuffled)
    assert place(shuffled, p, r) == place(members, p, r)
    assert place(iter(set(members)), p, r) == place(sorted(members), p, r)


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=64), k=st.integers(min_value=0, max_value=16))
def test_partition_of_is_in_range(key: bytes, k: int) -> None:
    assert 0 <= partition_of(key, 1 << k) < 1 << k


@settings(max_examples=50, deadline=None)
@given(key=st.binary(max_size=32))
def test_partition_of_is_consistent_across_partition_counts(key: bytes) -> None:
    # P is a power of two, so xxh64 mod P keeps the low bits: partition p of P
    # splits into p and p + P of 2P.
    assert partition_of(key, 512) % 256 == partition_of(key, 256)


# --- determinism across processes and versions --------------------------------------------

GOLDEN_KEYS = {b"": 153, b"hello": 163, b"user-42": 129}
_PROBE = (
    "import json, sys; from daemon.placement import place, partition_of;"
    "print(json.dumps([place(['node-%d' % i for i in range(7)], 64, 3),"
    " [partition_of(k.encode(), 256) for k in ('', 'hello', 'user-42')]]))"
)


def test_answer_does_not_depend_on_python_hash_seed() -> None:
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run([sys.executable, "-c", _PROBE], env=env, check=True,
                              capture_output=True, text=True, timeout=60)
        outputs.add(done.stdout)
    assert len(outputs) == 1
    sets, keys = json.loads(outputs.pop())
    assert sets == place(names(7), 64, 3)
    assert keys == [partition_of(k, 256) for k in GOLDEN_KEYS]


def test_hash_encoding_is_pinned() -> None:
    """Every daemon must agree: a change here is a wire-protocol change."""
    assert [partition_of(k, 256) for k in GOLDEN_KEYS] == list(GOLDEN_KEYS.values())
    assert place(names(5), 16, 2) == [
        ["node-1", "node-0"], ["node-4", "node-3"], ["node-2", "node-0"], ["node-1", "node-4"],
        ["node-0", "node-2"], ["node-2", "node-3"], ["node-1", "node-4"], ["node-4", "node-3"],
        ["node-1", "node-4"], ["node-0", "node-3"], ["node-3", "node-0"], ["node-0", "node-2"],
        ["node-4", "node-3"], ["node-4", "node-2"], ["node-2", "node-3"], ["node-0", "node-2"],
    ]


@pytest.mark.parametrize("r", [1, 2, 3])
def test_uncapped_choice_is_rendezvous_over_xxh64(r: int) -> None:
    """With one partition the cap never binds: the set is the HRW top r, best first."""
    members = names(9)
    score = {m: xxhash.xxh64_intdigest(b"\0\0\0\0" + m.encode()) for m in members}
    assert place(members, 1, r) == [sorted(members, key=score.__getitem__, reverse=True)[:r]]
    for key in GOLDEN_KEYS:
        assert partition_of(key, 1024) == xxhash.xxh64_intdigest(key) % 1024


# --- moved_slots ---------------------------------------------------------------------------


def test_moved_slots_counts_new_pairs_and_ignores_order() -> None:
    before = [["a", "b"], ["b", "c"], ["c", "a"]]
    assert moved_slots(before, before) == 0
    assert moved_slots(before, [["b", "a"], ["c", "b"], ["a", "c"]]) == 0
    assert moved_slots(before, [["a", "d"], ["b", "c"], ["d", "e"]]) == 3
    assert moved_slots([[], []], [["a"], []]) == 1
    with pytest.raises(ValueError, match="different partition counts: 3 and 2"):
        moved_slots(before, before[:2])


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -4, 3, 100, 65537, 131072, 256.0, "256", True, None])
def test_partitions_must_be_a_power_of_two_in_range(bad) -> None:
    with pytest.raises(ValueError, match=r"power of two in 1\.\.65536"):
        validate_partitions(bad)
    with pytest.raises(ValueError, match=r"power of two in 1\.\.65536"):
        place(["a"], bad, 1)
    with pytest.raises(ValueError, match=r"power of two in 1\.\.65536"):
        partition_of(b"k", bad)


@pytest.mark.parametrize("good", [1, 2, 256, 65536])
def test_valid_partition_counts_pass(good: int) -> None:
    assert validate_partitions(good) is None  # no error ...
    assert [len(s) for s in place(["a", "b"], good, 2)] == [2] * good  # ... and it places


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", None])
def test_replicas_must_be_at_least_one(bad) -> None:
    with pytest.raises(ValueError, match="replicas must be an int >= 1"):
        place(["a", "b"], 8, bad)


@pytest.mark.parametrize("bad", ["user-42", 42, bytearray(b"x"), None])
def test_key_must_be_bytes(bad) -> None:
    with pytest.raises(TypeError, match=f"needs the key as bytes; got {type(bad).__name__}"):
        partition_of(bad, 256)


def test_member_names_must_be_str() -> None:
    with pytest.raises(TypeError, match="member names must be str; got bytes"):
        place(["a", b"b"], 8, 1)


@settings(max_examples=150, deadline=None)
@given(members=member_names, p=powers, r=st.integers(min_value=1, max_value=3),
       count=st.integers(min_value=0, max_value=300))
def test_spread_gives_units_distinct_partitions_evenly_over_primaries(members, p, r, count):
    sets = place(members, p, r)
    units = spread(count, sets)
    assert len(units) == count and all(0 <= q < p for q in units)
    assert len(set(units)) == min(count, p)  # a partition gets a second unit only at the end
    if not members:
        assert units == [i % p for i in range(count)]
        return
    share = Counter(sets[q][0] for q in units)
    owns = Counter(s[0] for s in sets)
    for a in owns:  # fewer units than another member only when out of partitions
        for b in owns:
            if share[a] + 1 < share[b]:
                assert share[a] >= owns[a]
