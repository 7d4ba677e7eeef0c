"""One contract for both rate-limit backends: the shared memory table and a real redis-server.

A backend decides GCRA for a route's policy: a full bucket of `burst` for a key never seen,
refusals with a retry time once it is empty, tokens back with time, keys independent, and
nothing learned from a refused request.
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
MakeLimiter = Callable[[str, int], Decide]


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MakeLimiter]:
    if request.param == "memory":
        tables = Tables(tmp_path)

        def memory(rate: str, burst: int) -> Decide:
            config = RateLimitConfig(rate=parse_rate(rate), burst=burst)
            limiter, _ = tables.limiter(f"route-{rate}-{burst}", config)

            async def decide(key: bytes) -> Verdict:
                return limiter.decide(key)

            return decide

        yield memory
        tables.close()
        return
    with redis_server(tmp_path) as server:
        backend = RedisBackend(server.url)

        def remote(rate: str, burst: int) -> Decide:
            config = RateLimitConfig(rate=parse_rate(rate), burst=burst, backend="redis")
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
