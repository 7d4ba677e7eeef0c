"""GCRA, the token bucket as one timestamp (gateway.ratelimit.gcra): a table and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ratelimit.gcra import Verdict, decide


def run(times: list[float], interval: float, burst: int) -> list[Verdict]:
    """Decide requests at ``times`` against one bucket, storing what `decide` says to store."""
    tat: float | None = None
    verdicts = []
    for now in times:
        verdict, new_tat = decide(tat, now, interval, burst)
        if new_tat is not None:
            tat = new_tat
        verdicts.append(verdict)
    return verdicts


@pytest.mark.parametrize(
    ("times", "interval", "burst", "allowed"),
    [
        # A full bucket lets `burst` requests through at one instant, then refuses.
        ([0.0] * 5, 1.0, 3, [True, True, True, False, False]),
        # One token comes back per interval.
        ([0.0, 0.0, 1.0, 1.0, 2.0], 1.0, 2, [True, True, True, False, True]),
        # A burst of 1 is a strict rate: one request per interval.
        ([0.0, 0.5, 1.0, 1.5, 2.0], 1.0, 1, [True, False, True, False, True]),
        # Requests exactly at the rate are never refused.
        ([0.1 * i for i in range(50)], 0.1, 1, [True] * 50),
        # A long pause refills the bucket to `burst`, never beyond.
        ([0.0, 0.0, 100.0, 100.0, 100.0], 1.0, 2, [True, True, True, True, False]),
    ],
)
def test_decisions(times: list[float], interval: float, burst: int, allowed: list[bool]) -> None:
    assert [v.allowed for v in run(times, interval, burst)] == allowed


def test_what_the_fields_say() -> None:
    # 10 per second (interval 0.1 s), burst 5, three requests at t=0.
    first, second, third = run([0.0, 0.0, 0.0], 0.1, 5)
    assert first == Verdict(allowed=True, remaining=4, retry_after=0.0, reset_after=0.1)
    assert second.remaining == 3
    assert third.remaining == 2
    assert third.reset_after == pytest.approx(0.3)
    # Two more empty the bucket; the next is refused for one interval.
    *_, last_allowed, refused = run([0.0] * 6, 0.1, 5)
    assert (last_allowed.allowed, last_allowed.remaining, last_allowed.retry_after) == (
        True,
        0,
        0.0,
    )
    assert last_allowed.reset_after == pytest.approx(0.5)
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.retry_after == pytest.approx(0.1)
    assert refused.reset_after == pytest.approx(0.5)


def test_a_refused_request_changes_nothing() -> None:
    verdict, new_tat = decide(10.5, 10.0, 0.1, 5)  # 0.5 s ahead = a full burst used
    assert not verdict.allowed
    assert new_tat is None


def test_a_tat_in_the_past_is_a_full_bucket() -> None:
    assert decide(3.0, 10.0, 1.0, 4) == decide(None, 10.0, 1.0, 4)


intervals = st.sampled_from([0.001, 0.01, 0.1, 0.25, 1.0, 3.0])
bursts = st.integers(min_value=1, max_value=50)
gaps = st.lists(st.floats(min_value=0, max_value=2.0, allow_nan=False), min_size=1, max_size=200)


def times_from(gaps: list[float]) -> list[float]:
    times, now = [], 1000.0
    for gap in gaps:
        now += gap
        times.append(now)
    return times


@settings(max_examples=300, deadline=None)
@given(intervals, bursts, gaps)
def test_never_more_than_burst_plus_the_rate_in_any_window(
    interval: float, burst: int, gap_list: list[float]
) -> None:
    times = times_from(gap_list)
    allowed = [t for t, v in zip(times, run(times, interval, burst), strict=True) if v.allowed]
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            # Requests allowed in [start, allowed[j]]: a bucket that was full at `start` can
            # have given out burst tokens plus one per interval since.
            window = allowed[j] - start
            assert j - i + 1 <= burst + math.floor(window / interval + 1e-6)


@settings(max_examples=200, deadline=None)
@given(intervals, bursts, gaps)
def test_a_client_within_the_rate_is_never_refused(
    interval: float, burst: int, gap_list: list[float]
) -> None:
    # Spacing every request at least one interval apart never empties the bucket.
    times = times_from([max(gap, interval) for gap in gap_list])
    assert all(v.allowed for v in run(times, interval, burst))


@settings(max_examples=200, deadline=None)
@given(intervals, bursts, gaps)
def test_it_agrees_with_a_bucket_of_tokens(
    interval: float, burst: int, gap_list: list[float]
) -> None:
    # The textbook token bucket, counting fractional tokens; GCRA must decide the same except
    # within float rounding of a boundary.
    times = times_from(gap_list)
    tokens, last = float(burst), times[0]
    for now, verdict in zip(times, run(times, interval, burst), strict=True):
        tokens = min(float(burst), tokens + (now - last) / interval)
        last = now
        if abs(tokens - 1.0) < 1e-6:
            tokens = 1.0 if verdict.allowed else tokens
        assert verdict.allowed == (tokens >= 1.0)
        if verdict.allowed:
            tokens -= 1.0
            assert verdict.remaining == math.floor(tokens + 1e-6)
        else:
            assert verdict.retry_after == pytest.approx((1.0 - tokens) * interval, abs=1e-6)
