"""How much the Redis store holds, for `gateway_cache_entries{store="redis"}` and
`gateway_cache_bytes{store="redis"}`.

Redis has no count of one application's keys, so the census walks them: each second one SCAN
step over ``gw:c:*`` (up to `STEP` keys) with HLEN and MEMORY USAGE for each, pipelined on the
lean client; when a pass completes, its totals are published. The work per second is bounded
whatever the cache's size, and the gauges trail the truth by one pass. Only the process that
serves the admin listener runs it (the supervisor under `gateway run`), so the gauges are not
multiplied by the number of workers sharing the one Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from gateway.cache.redis_store import KEY_PREFIX
from gateway.config.model import GatewayConfig
from gateway.observability import metrics
from gateway.redisproto.client import RedisClient

STEP: Final = 500
INTERVAL: Final = 1.0


class RedisCensus:
    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._cursor: bytes = b"0"
        self._entries = 0
        self._bytes = 0

    async def step(self) -> tuple[int, int] | None:
        """One SCAN step; the (entries, bytes) of a pass when this step completed one."""
        reply = await self._client.command(
            "SCAN", self._cursor, "MATCH", KEY_PREFIX + b"*", "COUNT", STEP
        )
        if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[1], list):
            raise ValueError(f"unexpected SCAN reply: {reply!r}")
        cursor, keys = reply
        counts = await asyncio.gather(
            *(self._client.command("HLEN", key) for key in keys),
            *(self._client.command("MEMORY", "USAGE", key, "SAMPLES", "0") for key in keys),
        )
        for value in counts[: len(keys)]:
            self._entries += value if isinstance(value, int) else 0
        for value in counts[len(keys) :]:
            self._bytes += value if isinstance(value, int) else 0
        self._cursor = cursor if isinstance(cursor, bytes) else str(cursor).encode()
        if self._cursor != b"0":
            return None
        totals = (self._entries, self._bytes)
        self._entries = self._bytes = 0
        return totals


def redis_cache_url(config: GatewayConfig) -> str | None:
    """The Redis some route of ``config`` caches in, if any."""
    if config.redis is None:
        return None
    uses = any(route.cache is not None and route.cache.store == "redis" for route in config.routes)
    return config.redis.url if uses else None


async def run_census(url: Callable[[], str | None]) -> None:
    """Publish the Redis store's size while ``url()`` names a Redis some route caches in."""
    census: RedisCensus | None = None
    client: RedisClient | None = None
    current: str | None = None
    try:
        while True:
            wanted = url()
            if wanted != current:
                if client is not None:
                    await client.close()
                client = RedisClient(wanted) if wanted else None
                census = RedisCensus(client) if client else None
                current = wanted
            if census is not None:
                try:
                    totals = await census.step()
                except Exception:  # Redis away: the gauges keep their last pass
                    totals = None
                if totals is not None:
                    metrics.set_cache_size("redis", totals[0], totals[1])
            await asyncio.sleep(INTERVAL)
    finally:
        if client is not None:
            await client.close()
