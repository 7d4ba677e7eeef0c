"""The balancers (gateway.upstream.balancer): each one's distribution, and the consistent
hash's stability when targets come and go."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.upstream.balancer import ConsistentHash, LeastRequests, WeightedRoundRobin


def test_smooth_weighted_round_robin_spreads_the_heavy_target() -> None:
    # nginx's example (ngx_http_upstream_round_robin.c): weights 5, 1, 1.
    balancer = WeightedRoundRobin([5, 1, 1])
    picks = [balancer.pick([True] * 3) for _ in range(7)]
    assert picks == [0, 0, 1, 0, 2, 0, 0]


@given(st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=6))
def test_round_robin_gives_each_its_weight_per_cycle(weights: list[int]) -> None:
    balancer = WeightedRoundRobin(weights)
    counts = Counter(balancer.pick([True] * len(weights)) for _ in range(sum(weights) * 3))
    assert [counts[index] for index in range(len(weights))] == [w * 3 for w in weights]


def test_round_robin_skips_what_is_not_usable() -> None:
    balancer = WeightedRoundRobin([1, 1, 1])
    usable = [True, False, True]
    assert Counter(balancer.pick(usable) for _ in range(100)) == {0: 50, 2: 50}
    with pytest.raises(ValueError, match="no usable target"):
        balancer.pick([False] * 3)


def test_least_requests_avoids_the_loaded_target() -> None:
    inflight = [9, 0, 0]
    balancer = LeastRequests([1, 1, 1], inflight, random.Random(1))
    counts = Counter(balancer.pick([True] * 3) for _ in range(3000))
    # Target 0 wins only against itself, which two distinct choices never are.
    assert counts[0] == 0
    assert abs(counts[1] - counts[2]) < 300


def test_least_requests_spreads_evenly_when_equal() -> None:
    balancer = LeastRequests([1, 1, 1, 1], [0, 0, 0, 0], random.Random(2))
    counts = Counter(balancer.pick([True] * 4) for _ in range(8000))
    assert all(1600 < counts[index] < 2400 for index in range(4))


def test_least_requests_weighs_its_counts() -> None:
    # 4 in flight on a weight-4 target is as loaded as 1 on a weight-1 target.
    balancer = LeastRequests([4, 1], [3, 1], random.Random(3))
    assert balancer.pick([True, True]) == 0
    assert balancer.pick([False, True]) == 1


def test_least_requests_tracks_the_pools_counts_as_they_change() -> None:
    inflight = [0, 5]
    balancer = LeastRequests([1, 1], inflight, random.Random(4))
    assert balancer.pick([True, True]) == 0
    inflight[0] = 10
    assert balancer.pick([True, True]) == 1


NAMES = [f"http://10.0.0.{n}:8080" for n in range(1, 6)]
KEYS = [f"198.51.100.{n % 250}.{n}".encode() for n in range(5000)]


def test_consistent_hash_spreads_by_weight() -> None:
    balancer = ConsistentHash(NAMES[:3], [1, 1, 2])
    counts = Counter(balancer.pick([True] * 3, key) for key in KEYS)
    shares = [counts[index] / len(KEYS) for index in range(3)]
    assert shares == pytest.approx([0.25, 0.25, 0.5], abs=0.06)


def test_consistent_hash_is_stable_for_a_key() -> None:
    balancer = ConsistentHash(NAMES, [1] * 5)
    again = ConsistentHash(NAMES, [1] * 5)
    assert [balancer.pick([True] * 5, key) for key in KEYS[:200]] == [
        again.pick([True] * 5, key) for key in KEYS[:200]
    ]


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=4))
def test_a_target_leaving_moves_only_its_own_keys(gone: int) -> None:
    """Removed from the config (a new ring without it) or out of service (not usable): either
    way, keys that were on the other targets stay where they were."""
    before = ConsistentHash(NAMES, [1] * 5)
    owners = {key: NAMES[before.pick([True] * 5, key)] for key in KEYS}
    remaining = [name for index, name in enumerate(NAMES) if index != gone]
    after = ConsistentHash(remaining, [1] * 4)
    usable = [index != gone for index in range(5)]
    for key, owner in owners.items():
        moved_ring = remaining[after.pick([True] * 4, key)]
        moved_health = NAMES[before.pick(usable, key)]
        if owner != NAMES[gone]:
            assert moved_ring == owner
            assert moved_health == owner
        else:
            assert moved_ring != owner
            assert moved_health != owner


def test_a_target_joining_takes_a_fair_share_and_only_from_others() -> None:
    before = ConsistentHash(NAMES[:4], [1] * 4)
    after = ConsistentHash(NAMES, [1] * 5)
    moved = 0
    for key in KEYS:
        old = NAMES[before.pick([True] * 4, key)]
        new = NAMES[after.pick([True] * 5, key)]
        if old != new:
            assert new == NAMES[4]  # keys only move to the newcomer
            moved += 1
    assert moved / len(KEYS) == pytest.approx(0.2, abs=0.06)


def test_a_recovered_target_gets_its_keys_back() -> None:
    balancer = ConsistentHash(NAMES, [1] * 5)
    key = KEYS[0]
    owner = balancer.pick([True] * 5, key)
    usable = [index != owner for index in range(5)]
    assert balancer.pick(usable, key) != owner
    assert balancer.pick([True] * 5, key) == owner
    with pytest.raises(ValueError, match="no usable target"):
        balancer.pick([False] * 5, key)
