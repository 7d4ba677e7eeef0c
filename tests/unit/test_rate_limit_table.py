"""The shared key table (gateway.ratelimit.table): shared by processes, bounded, never looser."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.model import Rate
from gateway.ratelimit.gcra import decide
from gateway.ratelimit.policy import TokenBucket
from gateway.ratelimit.table import SLOTS, SharedTable, buckets_for

HOURLY = TokenBucket(Rate(1, 3600, "1/hour"), burst=100)


def allow(table: SharedTable, key: bytes, now: float, policy: TokenBucket = HOURLY) -> bool:
    return table.apply(key, now, policy).allowed


def test_two_mappings_of_one_file_share_the_counts(tmp_path: Path) -> None:
    first = SharedTable(tmp_path / "t", max_keys=100)
    second = SharedTable(tmp_path / "t", max_keys=100)
    decisions = [allow(first if i % 2 else second, b"client", 10.0) for i in range(150)]
    assert decisions.count(True) == 100
    assert decisions[:100] == [True] * 100
    first.close()
    second.close()


def _hammer(path: str, count: int) -> int:
    table = SharedTable(Path(path), max_keys=100)
    return sum(allow(table, b"client", 10.0) for _ in range(count))


def test_processes_racing_for_one_key_get_exactly_the_burst(tmp_path: Path) -> None:
    # The byte-range lock is what makes this exact: without it both processes read the same
    # TAT and both write theirs, and more than the burst gets through.
    SharedTable(tmp_path / "t", max_keys=100).close()
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        allowed = pool.starmap(_hammer, [(str(tmp_path / "t"), 400)] * 3)
    assert sum(allowed) == 100


def test_a_different_layout_is_refused(tmp_path: Path) -> None:
    SharedTable(tmp_path / "t", max_keys=100).close()
    with pytest.raises(ValueError, match="different table layout"):
        SharedTable(tmp_path / "t", max_keys=5000)


def test_expired_entries_make_room_without_raising_the_floor(tmp_path: Path) -> None:
    policy = TokenBucket(Rate(1, 1, "1/second"), burst=2)
    table = SharedTable(tmp_path / "t", max_keys=SLOTS - 1)  # one bucket
    assert table.buckets == 1
    for client in range(SLOTS - 1):
        assert allow(table, b"old-%d" % client, 0.0, policy)
    # Two seconds later every old bucket is full again: new clients reuse their slots and
    # start with a full bucket of their own.
    for client in range(SLOTS - 1):
        key = b"new-%d" % client
        assert [allow(table, key, 2.0, policy) for _ in range(3)] == [True, True, False]
    assert table.live_keys(2.0, policy) == SLOTS - 1


def test_an_evicted_client_is_not_handed_a_fresh_bucket(tmp_path: Path) -> None:
    policy = TokenBucket(Rate(1, 60, "1/minute"), burst=3)
    table = SharedTable(tmp_path / "t", max_keys=SLOTS - 1)
    # The first client empties its bucket; then more clients than the bucket has slots.
    assert [allow(table, b"first", 0.0, policy) for _ in range(4)] == [True] * 3 + [False]
    for client in range(3 * SLOTS):
        allow(table, b"other-%d" % client, 1.0, policy)
    # Its entry is gone, but its state lives on in the floor: still refused.
    assert not allow(table, b"first", 2.0, policy)


operations = st.lists(
    st.tuples(st.integers(min_value=0, max_value=30), st.floats(min_value=0, max_value=0.5)),
    min_size=1,
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(operations, st.integers(min_value=1, max_value=4), st.sampled_from([0.05, 0.2, 1.0]))
def test_a_full_table_is_never_looser_than_an_unbounded_one(
    tmp_path_factory: object, ops: list[tuple[int, float]], burst: int, interval: float
) -> None:
    directory = Path(str(tmp_path_factory.mktemp("table")))  # type: ignore[attr-defined]
    policy = TokenBucket(Rate(1, 1, "1/second"), burst=burst)
    policy.interval = interval
    table = SharedTable(directory / "t", max_keys=SLOTS - 1)  # 31 keys into 7 slots
    reference: dict[int, float] = {}
    now = 0.0
    for client, gap in ops:
        now += gap
        exact, new_tat = decide(reference.get(client), now, interval, burst)
        if new_tat is not None:
            reference[client] = new_tat
        bounded = allow(table, b"%d" % client, now, policy)
        # Eviction may make the table stricter than the truth, never more permissive.
        assert exact.allowed or not bounded
    table.close()


def test_table_size_follows_max_keys() -> None:
    assert buckets_for(1) == 1
    assert buckets_for(SLOTS - 1) == 1
    assert buckets_for(SLOTS) == 2
    assert buckets_for(65536) * (SLOTS - 1) >= 65536
