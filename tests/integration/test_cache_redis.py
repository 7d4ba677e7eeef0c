"""The Redis cache store with a real redis-server: shared entries, expiry, garbage, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.app import RunningGateway, start
from gateway.cache.census import RedisCensus
from gateway.cache.redis_store import KEY_PREFIX, RedisStore
from gateway.config.model import CacheConfig, RedisConfig, RouteConfig
from gateway.redisproto.client import RedisClient
from tests.contract.test_cache_stores import entry
from tests.harness import gateway_config, upstream_to
from tests.integration.cache_origin import Origin, fetch, respond
from tests.redis_server import RedisServer, redis_server


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


async def test_entries_expire_with_their_ttl(redis: RedisServer) -> None:
    store = RedisStore(redis.url, 1 << 16)
    stored = entry(b"/ttl")
    assert await store.put(stored, 30)
    client = RedisClient(redis.url)
    ttl = await client.command("PTTL", KEY_PREFIX + stored.key)
    assert isinstance(ttl, int)
    assert 25_000 < ttl <= 30_000
    # A longer-lived variant extends the key; a shorter one never shortens it.
    await store.put(entry(b"/ttl", secondary=b"+x", vary=(b"x",)), 120)
    await store.put(entry(b"/ttl", secondary=b"+y", vary=(b"x",)), 5)
    ttl = await client.command("PTTL", KEY_PREFIX + stored.key)
    assert isinstance(ttl, int)
    assert 115_000 < ttl <= 120_000
    await client.close()
    await store.close()


async def test_garbage_values_are_misses(redis: RedisServer) -> None:
    store = RedisStore(redis.url, 1 << 16)
    stored = entry(b"/g")
    await store.put(stored, 30)
    client = RedisClient(redis.url)
    # Another writer's junk next to a good variant, and a pickle: neither is ever loaded.
    await client.command("HSET", KEY_PREFIX + stored.key, "junk", b"\x80\x04\x95pickle")
    await client.command("HSET", KEY_PREFIX + entry(b"/only-junk").key, "v", b"GWC1garbage")
    assert [e.body for e in await store.variants(stored.key)] == [stored.body]
    assert await store.variants(entry(b"/only-junk").key) == []
    # An entry filed under another key (a copied value) is not served for this one.
    await client.command("HSET", KEY_PREFIX + b"GET http://x:80/elsewhere", "v", stored.to_bytes())
    assert await store.variants(b"GET http://x:80/elsewhere") == []
    await client.close()
    await store.close()


async def test_an_outage_is_a_miss_at_once_then_the_store_comes_back(redis: RedisServer) -> None:
    store = RedisStore(redis.url, 1 << 16)
    stored = entry(b"/o")
    await store.put(stored, 30)
    redis.pause()
    started = time.monotonic()
    assert await store.variants(stored.key) == []  # the budget ran out
    assert await store.variants(stored.key) == []  # skipped without waiting
    assert not await store.put(entry(b"/p"), 30)
    assert time.monotonic() - started < 2.0
    redis.resume()
    await asyncio.sleep(1.1)
    assert [e.body for e in await store.variants(stored.key)] == [stored.body]
    await store.close()


async def _gateway(
    gateways: list[RunningGateway], port: int, url: str, **options: object
) -> RunningGateway:
    cache = CacheConfig(store="redis", **options)  # type: ignore[arg-type]
    route = RouteConfig(name="api", upstream="origin", cache=cache)
    config = replace(gateway_config([upstream_to("origin", port)], [route]), redis=RedisConfig(url))
    gateway = await start(config)
    gateways.append(gateway)
    return gateway


async def test_two_gateways_share_the_redis_store(
    origin: tuple[Origin, int], gateways: list[RunningGateway], redis: RedisServer
) -> None:
    recorder, port = origin
    recorder.answers["/shared"] = respond(b"one copy", Cache_Control="max-age=60")
    first = await _gateway(gateways, port, redis.url)
    second = await _gateway(gateways, port, redis.url)
    # Instances behind one balancer see the same Host, which is part of the key.
    await fetch(first, "/shared", Host="api.example.com")
    reader = RedisStore(redis.url, 1 << 16)
    for _ in range(50):  # the store is written after the response, in the background
        if await reader.variants(b"GET http://api.example.com:80/shared"):
            break
        await asyncio.sleep(0.01)
    await reader.close()
    status, headers, body = await fetch(second, "/shared", Host="api.example.com")
    assert (status, body) == (200, b"one copy")
    assert headers["Cache-Status"].startswith("gateway; hit")
    assert recorder.hits("/shared") == 1


async def test_a_redis_outage_makes_the_cache_a_pass_through(
    origin: tuple[Origin, int], gateways: list[RunningGateway], redis: RedisServer
) -> None:
    recorder, port = origin
    recorder.answers["/p"] = respond(b"fresh", Cache_Control="max-age=60")
    gateway = await _gateway(gateways, port, redis.url)
    redis.stop()
    answers = [await fetch(gateway, "/p") for _ in range(3)]
    assert [(status, body) for status, _, body in answers] == [(200, b"fresh")] * 3
    assert recorder.hits("/p") == 3


async def test_the_census_counts_the_redis_store(redis: RedisServer) -> None:
    store = RedisStore(redis.url, 1 << 16)
    for index in range(30):
        await store.put(entry(b"/census/%d" % index, body=b"z" * 500), 60)
    await store.put(entry(b"/census/0", vary=(b"x",), secondary=b"+other"), 60)
    client = RedisClient(redis.url)
    await client.command("SET", "unrelated", "key")
    census = RedisCensus(client)
    totals = None
    for _ in range(100):
        totals = await census.step()
        if totals is not None:
            break
    assert totals is not None
    entries, size = totals
    assert entries == 31
    assert size > 30 * 500
    await client.close()
    await store.close()


async def test_entries_with_validators_are_kept_to_be_revalidated(
    origin: tuple[Origin, int], gateways: list[RunningGateway], redis: RedisServer
) -> None:
    recorder, port = origin
    recorder.answers["/plain"] = respond(b"a", Cache_Control="max-age=60")
    recorder.answers["/tagged"] = respond(b"b", Cache_Control="max-age=60", ETag='"v1"')
    gateway = await _gateway(gateways, port, redis.url, revalidate_for=600.0)
    client = RedisClient(redis.url)
    ttls = {}
    for path in ("/plain", "/tagged"):
        await fetch(gateway, path, Host="api.example.com")
        key = KEY_PREFIX + b"GET http://api.example.com:80" + path.encode()
        for _ in range(50):  # stored in the background
            ttl = await client.command("PTTL", key)
            if isinstance(ttl, int) and ttl > 0:
                break
            await asyncio.sleep(0.01)
        ttls[path] = ttl
    await client.close()
    # Freshness only, for the one without validators; plus revalidate_for for the other.
    assert isinstance(ttls["/plain"], int)
    assert isinstance(ttls["/tagged"], int)
    assert 55_000 < ttls["/plain"] <= 60_000
    assert 655_000 < ttls["/tagged"] <= 660_000
