"""The upstream resolver's cache, driven by an injected clock (no sleeping)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import pytest

from gateway.upstream.resolver import Address, Resolver, literal_address, system_lookup


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingLookup:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, host: str, port: int) -> Sequence[Address]:
        self.calls += 1
        return [(socket.AF_INET, (f"10.0.0.{self.calls}", port))]


async def test_answers_are_cached_for_the_ttl_and_re_resolved_after() -> None:
    clock = Clock()
    lookup = CountingLookup()
    resolver = Resolver(30.0, lookup=lookup, clock=clock)
    first = await resolver.resolve("api.internal", 80)
    clock.now += 29.9
    assert await resolver.resolve("api.internal", 80) == first
    assert lookup.calls == 1
    clock.now += 0.1  # exactly the TTL: expired
    second = await resolver.resolve("api.internal", 80)
    assert lookup.calls == 2
    assert second == ((socket.AF_INET, ("10.0.0.2", 80)),)
    assert resolver.lookups == 2


async def test_a_zero_ttl_resolves_every_time() -> None:
    lookup = CountingLookup()
    resolver = Resolver(0.0, lookup=lookup, clock=Clock())
    await resolver.resolve("a.internal", 80)
    await resolver.resolve("a.internal", 80)
    assert lookup.calls == 2


async def test_concurrent_misses_share_one_lookup() -> None:
    release = asyncio.Event()
    calls = 0

    async def lookup(host: str, port: int) -> Sequence[Address]:
        nonlocal calls
        calls += 1
        await release.wait()
        return [(socket.AF_INET, ("10.1.1.1", port))]

    resolver = Resolver(30.0, lookup=lookup, clock=Clock())
    tasks = [asyncio.create_task(resolver.resolve("b.internal", 443)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert all(result == results[0] for result in results)


async def test_a_cancelled_caller_does_not_cancel_the_shared_lookup() -> None:
    release = asyncio.Event()

    async def lookup(host: str, port: int) -> Sequence[Address]:
        await release.wait()
        return [(socket.AF_INET, ("10.2.2.2", port))]

    resolver = Resolver(30.0, lookup=lookup, clock=Clock())
    impatient = asyncio.create_task(resolver.resolve("c.internal", 80))
    patient = asyncio.create_task(resolver.resolve("c.internal", 80))
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()
    assert await patient == ((socket.AF_INET, ("10.2.2.2", 80)),)


async def test_failures_are_raised_and_not_cached() -> None:
    answers: list[Sequence[Address]] = [[], [(socket.AF_INET, ("10.3.3.3", 80))]]

    async def lookup(host: str, port: int) -> Sequence[Address]:
        return answers.pop(0)

    resolver = Resolver(30.0, lookup=lookup, clock=Clock())
    with pytest.raises(OSError, match="no addresses"):
        await resolver.resolve("d.internal", 80)
    assert await resolver.resolve("d.internal", 80) == ((socket.AF_INET, ("10.3.3.3", 80)),)


async def test_ip_literals_never_touch_dns() -> None:
    lookup = CountingLookup()
    resolver = Resolver(30.0, lookup=lookup, clock=Clock())
    assert await resolver.resolve("127.0.0.1", 8080) == ((socket.AF_INET, ("127.0.0.1", 8080)),)
    assert await resolver.resolve("::1", 8080) == ((socket.AF_INET6, ("::1", 8080, 0, 0)),)
    assert lookup.calls == 0


def test_literal_detection() -> None:
    assert literal_address("example.com", 80) is None
    assert literal_address("fe80::1%eth0", 80) is None  # scoped: left to getaddrinfo
    assert literal_address("10.0.0.1", 80) == ((socket.AF_INET, ("10.0.0.1", 80)),)


async def test_system_lookup_resolves_localhost_without_blocking_the_loop() -> None:
    addresses = await system_lookup("localhost", 80)
    assert addresses
    assert all(sockaddr[1] == 80 for _family, sockaddr in addresses)
    assert len(set(addresses)) == len(addresses)
