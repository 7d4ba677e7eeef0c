"""One contract for both rate-limit backends: the shared memory table and a real redis-server.

A backend decides GCRA for a route's policy: a full bucket of `burst` for a key never seen,
refusals with a retry time once it is empty, tokens back with time, keys independent, and
nothing learned from a refused request. The window strategies, on either backend: `limit`
requests per clock-aligned window (`fixed_window`), per sliding window weighted across two
(`sliding_window`), per the `period` seconds before each request (`moving_window`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.config.model import RateLimitConfig
from gateway.ratelimit.gcra import Verdict
from gateway.ratelimit.memory import Tables
from gateway.ratelimit.rate import parse_rate
from gateway.ratelimit.redis_backend import RedisBackend, RedisLimiter
from tests.redis_server import redis_server

Decide = Callable[[bytes], Awaitable[Verdict]]
# (rate, burst, strategy) -> a limiter on the backend under test.
MakeLimiter = Callable[..., Decide]


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MakeLimiter]:
    if request.param == "memory":
        tables = Tables(tmp_path)

        def memory(rate: str, burst: int = 0, strategy: str = "token_bucket") -> Decide:
            config = RateLimitConfig(
                rate=parse_rate(rate),
                burst=burst,
                strategy=strategy,  # type: ignore[arg-type]
            )
            limiter, _ = tables.limiter(f"route-{rate}-{burst}-{strategy}", config)

            async def decide(key: bytes) -> Verdict:
                return limiter.decide(key)

            return decide

        yield memory
        tables.close()
        return
    with redis_server(tmp_path) as server:
        backend = RedisBackend(server.url)

        def remote(rate: str, burst: int = 0, strategy: str = "token_bucket") -> Decide:
            config = RateLimitConfig(
                rate=parse_rate(rate),
                burst=burst,
                backend="redis",
                strategy=strategy,  # type: ignore[arg-type]
            )
            return RedisLimiter(backend, config).decide

        try:
            yield remote
        finally:
            await backend.close()


async def test_a_new_key_has_a_full_bucket_then_is_refused(make_limiter: MakeLimiter) -> None:
    decide = make_limiter("1/minute", 3)
    verdicts = [await decide(b"a") for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0]
    refused = verdicts[-1]
    # The next token is a minute away (a little less, as time passed since the first).
    assert 55 < refused.retry_after <= 60
    assert 175 < refused.reset_after <= 180


async def test_keys_are_independent(make_limiter: MakeLimiter) -> None:
    decide = make_limiter("1/minute", 1)
    assert (await decide(b"a")).allowed
    assert not (await decide(b"a")).allowed
    assert (await decide(b"b")).allowed


async def test_a_refused_request_takes_nothing(make_limiter: MakeLimiter) -> None:
    decide = make_limiter("1/minute", 2)
    assert (await decide(b"a")).allowed
    assert (await decide(b"a")).allowed
    for _ in range(20):
        assert not (await decide(b"a")).allowed
    # Still one minute for one token: twenty refusals did not push it further away.
    assert (await decide(b"a")).retry_after <= 60


async def test_tokens_come_back_with_time(make_limiter: MakeLimiter) -> None:
    decide = make_limiter("10/second", 2)
    assert [(await decide(b"a")).allowed for _ in range(2)] == [True, True]
    await asyncio.sleep(0.35)  # three intervals: the bucket (2) is full again
    assert [(await decide(b"a")).allowed for _ in range(2)] == [True, True]


async def test_policies_of_different_routes_do_not_mix(make_limiter: MakeLimiter) -> None:
    strict = make_limiter("1/minute", 1)
    loose = make_limiter("1/minute", 5)
    assert (await strict(b"x")).allowed
    assert not (await strict(b"x")).allowed
    # The keys a stage builds start with the route name; here the routes differ by policy.
    assert all([(await loose(b"y")).allowed for _ in range(5)])


async def window_start(decide: Decide, period: float, need: float) -> None:
    """Wait, if need be, until the clock-aligned window has ``need`` seconds ahead: the
    windows of every key turn together, so a probe key's reset time says when this one ends
    (a fixed window resets then; a sliding one a period later)."""
    left = (await decide(b"window-probe")).reset_after % period
    if left < need:
        await asyncio.sleep(left + 0.01)


async def test_a_fixed_window_allows_its_limit_then_refuses_until_it_ends(
    make_limiter: MakeLimiter,
) -> None:
    decide = make_limiter("3/hour", strategy="fixed_window")
    await window_start(decide, 3600, 1)
    verdicts = [await decide(b"a") for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0, 0]
    # Refused until the window ends, which is when it resets.
    assert 0 < verdicts[-1].retry_after <= 3600
    assert verdicts[-1].retry_after == pytest.approx(verdicts[0].reset_after, abs=1)
    assert (await decide(b"b")).allowed


async def test_a_fixed_window_opens_again_when_it_ends(make_limiter: MakeLimiter) -> None:
    decide = make_limiter("2/second", strategy="fixed_window")
    await window_start(decide, 1, 0.6)
    verdicts = [await decide(b"a") for _ in range(3)]
    assert [v.allowed for v in verdicts] == [True, True, False]
    await asyncio.sleep(verdicts[-1].retry_after + 0.01)
    assert [(await decide(b"a")).allowed for _ in range(3)] == [True, True, False]


async def test_a_sliding_window_weighs_the_previous_window(make_limiter: MakeLimiter) -> None:
    decide = make_limiter("4/2 second", strategy="sliding_window")
    await window_start(decide, 2, 1.2)
    verdicts = [await decide(b"a") for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True] * 4 + [False]
    assert [v.remaining for v in verdicts] == [3, 2, 1, 0, 0]
    # The four count in full until their window ends; in the next one they weigh the part
    # of it still within the last two seconds, a little under four at first: room for one
    # more request, not two.
    retry = verdicts[-1].retry_after
    assert 0 < retry <= 2
    await asyncio.sleep(retry + 0.05)
    assert (await decide(b"a")).allowed
    assert not (await decide(b"a")).allowed


async def test_a_moving_window_counts_the_period_before_each_request(
    make_limiter: MakeLimiter,
) -> None:
    decide = make_limiter("3/2 second", strategy="moving_window")
    allowed = []
    for pause in (0.5, 0.5, 0):
        allowed.append(await decide(b"a"))
        await asyncio.sleep(pause)
    assert [(v.allowed, v.remaining) for v in allowed] == [(True, 2), (True, 1), (True, 0)]
    refused = await decide(b"a")
    assert not refused.allowed
    # A slot opens when the first request leaves the window, two seconds after it.
    assert 0.5 < refused.retry_after <= 1.0
    await asyncio.sleep(refused.retry_after + 0.02)
    assert (await decide(b"a")).allowed
    # One slot, not more: the second request is still within the last two seconds.
    again = await decide(b"a")
    assert not again.allowed
    assert 0 < again.retry_after <= 0.5
