"""The shared key table (gateway.ratelimit.table): shared by processes, bounded, never looser."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.model import Rate
from gateway.ratelimit.policy import FixedWindow, MovingWindow, SlidingWindow, TokenBucket
from gateway.ratelimit.table import SLOTS, Policy, SharedTable, State, buckets_for, table_bytes

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


def _token_bucket(limit: int) -> Policy:
    policy = TokenBucket(Rate(1, 1, "1/second"), burst=limit)
    policy.interval = 0.2
    return policy


POLICIES: dict[str, Callable[[int], Policy]] = {
    "token_bucket": _token_bucket,
    "fixed_window": lambda limit: FixedWindow(Rate(limit, 1, f"{limit}/second")),
    "sliding_window": lambda limit: SlidingWindow(Rate(limit, 1, f"{limit}/second")),
    "moving_window": lambda limit: MovingWindow(Rate(limit, 1, f"{limit}/second")),
}


@pytest.mark.parametrize("strategy", POLICIES)
@settings(max_examples=150, deadline=None)
@given(ops=operations, limit=st.integers(min_value=1, max_value=4))
def test_a_full_table_never_allows_a_client_more_than_an_unbounded_one(
    tmp_path_factory: pytest.TempPathFactory,
    strategy: str,
    ops: list[tuple[int, float]],
    limit: int,
) -> None:
    # 31 clients share the 7 slots of one bucket, so entries are evicted all the time and
    # clients come back to the floor. Counted from the start, each client is allowed no
    # more requests than an unbounded table (a dict) allows it. A single request may be
    # decided the other way: a floor that refused one leaves that client a little more
    # room for the next than its own state would have.
    policy = POLICIES[strategy](limit)
    table = SharedTable(tmp_path_factory.mktemp("table") / "t", SLOTS - 1, policy.width)
    reference: dict[int, State] = {}
    exact_allowed = [0] * 31
    bounded_allowed = [0] * 31
    now = 0.0
    for client, gap in ops:
        now += gap
        state = reference.get(client)
        if state is not None and policy.expired(state, now):
            state = None
        exact, new_state = policy.step(state, now)
        if new_state is not None:
            reference[client] = new_state
        exact_allowed[client] += exact.allowed
        bounded_allowed[client] += table.apply(b"%d" % client, now, policy).allowed
        assert bounded_allowed[client] <= exact_allowed[client]
    table.close()


def test_table_size_follows_max_keys() -> None:
    assert buckets_for(1) == 1
    assert buckets_for(SLOTS - 1) == 1
    assert buckets_for(SLOTS) == 2
    assert buckets_for(65536) * (SLOTS - 1) >= 65536


def test_wide_states_make_wide_slots(tmp_path: Path) -> None:
    # A moving window of 100 keeps 100 timestamps per key, and the file grows to match.
    policy = MovingWindow(Rate(100, 60, "100/minute"))
    table = SharedTable(tmp_path / "t", max_keys=70, width=policy.width)
    assert table.path.stat().st_size == table_bytes(70, policy.width)
    assert table_bytes(70, policy.width) == 64 + 10 * SLOTS * 8 * (1 + 102)
    verdicts = [table.apply(b"a", 1.0 + i / 1000, policy) for i in range(101)]
    assert [v.allowed for v in verdicts] == [True] * 100 + [False]
    table.close()
    with pytest.raises(ValueError, match="different table layout"):
        SharedTable(tmp_path / "t", max_keys=70, width=2)
