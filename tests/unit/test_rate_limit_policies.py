"""The window strategies' arithmetic (gateway.ratelimit.policy), table-driven and by property.

Each policy is a pure step function over a key's state; these tests drive it with explicit
times, the way the shared table and the Redis scripts apply it.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.config.model import Rate
from gateway.ratelimit.gcra import Verdict
from gateway.ratelimit.policy import (
    MAX_SLIDING_LIMIT,
    FixedWindow,
    MovingWindow,
    SlidingWindow,
)
from gateway.ratelimit.table import Policy, State


def run(policy: Policy, times: list[float]) -> list[Verdict]:
    """Decide one key's requests at ``times``, keeping its state as a table would."""
    state: State | None = None
    verdicts = []
    for now in times:
        if state is not None and policy.expired(state, now):
            state = None
        verdict, new_state = policy.step(state, now)
        if new_state is not None:
            state = new_state
        verdicts.append(verdict)
    return verdicts


def allowed(policy: Policy, times: list[float]) -> list[bool]:
    return [verdict.allowed for verdict in run(policy, times)]


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        # Three per ten-second window [0, 10), [10, 20)...
        ([1, 2, 3, 4], [True, True, True, False]),
        # The window turns at 10 whatever time its first request came.
        ([9, 9.5, 9.9, 10, 10.1, 10.2, 10.3], [True] * 6 + [False]),
        # The double burst fixed windows allow at a boundary.
        ([9.9, 9.9, 9.9, 10.0, 10.0, 10.0], [True] * 6),
        ([5, 25, 26, 27, 28], [True, True, True, True, False]),
    ],
)
def test_fixed_window(times: list[float], expected: list[bool]) -> None:
    assert allowed(FixedWindow(Rate(3, 10, "3/10 seconds")), times) == expected


def test_fixed_window_fields() -> None:
    verdicts = run(FixedWindow(Rate(2, 10, "2/10 seconds")), [4, 6, 7])
    assert [(v.remaining, v.retry_after, v.reset_after) for v in verdicts] == [
        (1, 0.0, 6.0),
        (0, 0.0, 4.0),
        (0, 3.0, 3.0),
    ]


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        # Four per ten seconds; within the first window it counts like a fixed one.
        ([1, 2, 3, 4, 5], [True] * 4 + [False]),
        # At 12.5 the previous window's four weigh 4 * 0.75 = 3: one more fits, not two...
        ([1, 2, 3, 4, 12.5, 12.5], [True] * 4 + [True, False]),
        # ...but the weighted count is rounded down, as limits does: at 12.6 it is
        # 4 * 0.74 + 1 = 3.96, which counts as 3, and one more passes; at 12.7, 4.92.
        ([1, 2, 3, 4, 12.5, 12.6, 12.7], [True] * 4 + [True, True, False]),
        # At 17.5 they weigh 1: three more fit at once.
        ([1, 2, 3, 4, 17.5, 17.5, 17.5, 17.5], [True] * 4 + [True] * 3 + [False]),
        # Two windows later they weigh nothing.
        ([1, 2, 3, 4, 20, 20, 20, 20, 20], [True] * 8 + [False]),
        # No double burst at a boundary: just after it the previous window still counts
        # (4 * 0.99 = 3.96, rounded down to 3: room for one).
        ([9.9, 9.9, 9.9, 9.9, 10.1, 10.1], [True] * 4 + [True, False]),
    ],
)
def test_sliding_window(times: list[float], expected: list[bool]) -> None:
    assert allowed(SlidingWindow(Rate(4, 10, "4/10 seconds")), times) == expected


def test_sliding_window_fields() -> None:
    policy = SlidingWindow(Rate(4, 10, "4/10 seconds"))
    verdicts = run(policy, [1, 2, 3, 4, 5, 12.5, 12.6, 12.7])
    assert [v.allowed for v in verdicts] == [True] * 4 + [False, True, True, False]
    assert [v.remaining for v in verdicts] == [3, 2, 1, 0, 0, 0, 0, 0]
    # Refused at 5 with the current window full: allowed again once the four weigh less
    # than the limit, which is as soon as the window turns (10).
    assert verdicts[4].retry_after == pytest.approx(5.0)
    # Refused at 12.7 with four previous and two current: allowed again once
    # 4 * (20 - t) / 10 + 2 < 4, after t = 15.
    assert verdicts[7].retry_after == pytest.approx(15 - 12.7)
    # The current window's requests weigh something until the end of the next one.
    assert verdicts[5].reset_after == pytest.approx(30 - 12.5)


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0, 1, 2, 3], [True, True, True, False]),
        # A slot opens ten seconds after each allowed request, not at a window boundary.
        ([0, 1, 2, 10.5, 10.7, 11.5, 11.7], [True, True, True, True, False, True, False]),
        # A time exactly a period after the oldest is still within it (as in limits).
        ([0, 0, 0, 10, 10.001], [True, True, True, False, True]),
        # Refused requests are not logged: they do not push the next slot further out.
        ([0, 1, 2, 3, 4, 5, 10.1], [True, True, True, False, False, False, True]),
    ],
)
def test_moving_window(times: list[float], expected: list[bool]) -> None:
    assert allowed(MovingWindow(Rate(3, 10, "3/10 seconds")), times) == expected


def test_moving_window_fields() -> None:
    verdicts = run(MovingWindow(Rate(3, 10, "3/10 seconds")), [0, 4, 6, 7])
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0]
    assert verdicts[3].retry_after == pytest.approx(3.0)  # the request at 0 leaves at 10
    assert verdicts[3].reset_after == pytest.approx(9.0)  # the one at 6 leaves at 16


def test_moving_window_state_is_a_ring_of_the_last_limit_times() -> None:
    policy = MovingWindow(Rate(3, 10, "3/10 seconds"))
    state: State | None = None
    for now in (0.0, 1.0, 2.0, 11.0, 12.5):
        state = policy.step(state, now)[1]
    assert state is not None
    assert policy.log(state) == [2.0, 11.0, 12.5]
    assert state[0] == 22.5  # nothing within the window after the newest is gone


def test_sliding_window_counts_fit_in_one_float() -> None:
    # At the largest limit the loader accepts, both counts survive the packing.
    policy = SlidingWindow(Rate(MAX_SLIDING_LIMIT, 10, "huge"))
    state = policy._state(0, MAX_SLIDING_LIMIT, MAX_SLIDING_LIMIT)
    assert policy.counts(state, 0) == (MAX_SLIDING_LIMIT, MAX_SLIDING_LIMIT)
    assert policy.counts(state, 1) == (MAX_SLIDING_LIMIT, 0)
    assert policy.counts(state, 2) == (0, 0)


times_strategy = st.lists(st.floats(min_value=0, max_value=60), min_size=1, max_size=200).map(
    sorted
)


@settings(max_examples=200, deadline=None)
@given(times=times_strategy, limit=st.integers(min_value=1, max_value=5))
def test_a_moving_window_never_allows_more_than_limit_in_any_period(
    times: list[float], limit: int
) -> None:
    period = 10.0
    verdicts = run(MovingWindow(Rate(limit, 10, "x")), times)
    passed = [now for now, verdict in zip(times, verdicts, strict=True) if verdict.allowed]
    for index, start in enumerate(passed):
        # Requests in [start, start + period]: a request at the end still sees the first.
        within = [t for t in passed[index:] if t <= start + period]
        assert len(within) <= limit


@settings(max_examples=200, deadline=None)
@given(times=times_strategy, limit=st.integers(min_value=1, max_value=5))
def test_a_moving_window_allows_whenever_the_period_before_has_room(
    times: list[float], limit: int
) -> None:
    period = 10.0
    verdicts = run(MovingWindow(Rate(limit, 10, "x")), times)
    passed: list[float] = []
    for now, verdict in zip(times, verdicts, strict=True):
        recent = [t for t in passed if t >= now - period]  # a period includes its start
        if len(recent) < limit:
            assert verdict.allowed
        if verdict.allowed:
            passed.append(now)


@settings(max_examples=200, deadline=None)
@given(times=times_strategy, limit=st.integers(min_value=1, max_value=5))
def test_window_strategies_never_allow_more_than_limit_per_aligned_window(
    times: list[float], limit: int
) -> None:
    period = 10.0
    for policy in (FixedWindow(Rate(limit, 10, "x")), SlidingWindow(Rate(limit, 10, "x"))):
        verdicts = run(policy, times)
        per_window: dict[int, int] = {}
        for now, verdict in zip(times, verdicts, strict=True):
            if verdict.allowed:
                window = math.floor(now / period)
                per_window[window] = per_window.get(window, 0) + 1
        assert max(per_window.values(), default=0) <= limit


@settings(max_examples=200, deadline=None)
@given(times=times_strategy, limit=st.integers(min_value=1, max_value=5))
def test_a_sliding_window_keeps_its_weighted_count_within_the_limit(
    times: list[float], limit: int
) -> None:
    period = 10.0
    verdicts = run(SlidingWindow(Rate(limit, 10, "x")), times)
    passed = [now for now, verdict in zip(times, verdicts, strict=True) if verdict.allowed]
    for now in passed:
        window = math.floor(now / period)
        current = sum(1 for t in passed if t <= now and math.floor(t / period) == window)
        previous = sum(1 for t in passed if math.floor(t / period) == window - 1)
        weight = ((window + 1) * period - now) / period
        assert math.floor(previous * weight + current) <= limit


@settings(max_examples=200, deadline=None)
@given(times=times_strategy, limit=st.integers(min_value=1, max_value=5))
@example(times=[0.0, 10.0], limit=1)  # refused exactly a period after: retry_after 0
def test_a_refusal_says_when_the_next_request_would_pass(times: list[float], limit: int) -> None:
    # Whatever the strategy: right after retry_after the same key is allowed again.
    for policy in (
        FixedWindow(Rate(limit, 10, "x")),
        SlidingWindow(Rate(limit, 10, "x")),
        MovingWindow(Rate(limit, 10, "x")),
    ):
        state: State | None = None
        for now in times:
            if state is not None and policy.expired(state, now):
                state = None
            verdict, new_state = policy.step(state, now)
            if not verdict.allowed:
                # (0 at a boundary: a window that includes its start ends just after now.)
                assert verdict.retry_after >= 0
                later = now + verdict.retry_after + 1e-6
                probe = None if policy.expired(state, later) else state  # type: ignore[arg-type]
                assert policy.step(probe, later)[0].allowed
            if new_state is not None:
                state = new_state
