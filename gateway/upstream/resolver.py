"""Non-blocking DNS for upstream targets, with a per-name TTL cache.

Resolution runs through ``loop.getaddrinfo`` (a thread-pool call), never on the event loop
itself. Answers are reused for ``ttl`` seconds so a busy pool does not resolve on every new
connection, and re-resolved after that so a target that moves is followed. IP literals never
touch DNS. The clock and the lookup function are injectable so tests can drive expiry
without sleeping.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

# One connectable address: the socket family and the sockaddr to pass to connect().
Address = tuple[socket.AddressFamily, tuple[Any, ...]]
# (host, port) -> addresses in the order they should be tried.
Lookup = Callable[[str, int], Awaitable[Sequence[Address]]]
Clock = Callable[[], float]


async def system_lookup(host: str, port: int) -> Sequence[Address]:
    """Resolve through the system resolver without blocking the loop."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: list[Address] = []
    for family, _kind, _proto, _canonical, sockaddr in infos:
        address: Address = (family, tuple(sockaddr))
        if address not in addresses:
            addresses.append(address)
    return addresses


def literal_address(host: str, port: int) -> Sequence[Address] | None:
    """The address of an IP literal, or None when ``host`` is a name."""
    if "%" in host:
        # Scoped IPv6 literals need the scope id resolved; let getaddrinfo do it.
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 4:
        return ((socket.AF_INET, (host, port)),)
    return ((socket.AF_INET6, (host, port, 0, 0)),)


class Resolver:
    """Caches answers per (host, port) for ``ttl`` seconds; concurrent misses share one lookup."""

    __slots__ = ("_cache", "_clock", "_lookup", "_pending", "_ttl", "lookups")

    def __init__(
        self,
        ttl: float,
        *,
        lookup: Lookup = system_lookup,
        clock: Clock = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._lookup = lookup
        self._clock = clock
        # (host, port) -> (expiry on ``clock``, addresses)
        self._cache: dict[tuple[str, int], tuple[float, Sequence[Address]]] = {}
        self._pending: dict[tuple[str, int], asyncio.Task[Sequence[Address]]] = {}
        # DNS queries actually made (cache misses), for tests and metrics.
        self.lookups = 0

    async def resolve(self, host: str, port: int) -> Sequence[Address]:
        """Addresses for ``host``; raises OSError when the name cannot be resolved."""
        key = (host, port)
        entry = self._cache.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        literal = literal_address(host, port)
        if literal is not None:
            self._cache[key] = (math.inf, literal)
            return literal
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(self._query(key))
            self._pending[key] = task
            task.add_done_callback(self._query_done)
        # shield: a caller that gives up (connect timeout) must not cancel the lookup the
        # other callers wait on.
        return await asyncio.shield(task)

    async def _query(self, key: tuple[str, int]) -> Sequence[Address]:
        self.lookups += 1
        addresses = tuple(await self._lookup(*key))
        if not addresses:
            raise OSError(f"no addresses for {key[0]}")
        self._cache[key] = (self._clock() + self._ttl, addresses)
        return addresses

    def _query_done(self, task: asyncio.Task[Sequence[Address]]) -> None:
        for key, pending in self._pending.items():
            if pending is task:
                del self._pending[key]
                break
        # Retrieve the outcome so a failure nobody waited for is not logged as unhandled.
        if not task.cancelled():
            task.exception()
