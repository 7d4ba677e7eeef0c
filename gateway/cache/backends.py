"""The cache stores of one process, kept across reloads, and the stage of each route."""

from __future__ import annotations

from gateway.cache.memory import MemoryStore
from gateway.cache.redis_store import RedisStore
from gateway.cache.stage import CacheStage
from gateway.cache.store import CacheStore
from gateway.config.model import GatewayConfig, RouteConfig


class CacheStores:
    """One memory store for every route of this process (its budget is `cache.max_bytes`),
    and one Redis store per URL; a reload keeps them and their entries."""

    def __init__(self) -> None:
        self.memory: MemoryStore | None = None
        self.redis: dict[str, RedisStore] = {}

    def stage(self, route: RouteConfig, config: GatewayConfig) -> CacheStage | None:
        cache = route.cache
        if cache is None:
            return None
        store: CacheStore
        if cache.store == "redis":
            assert config.redis is not None  # the loader requires it
            url = config.redis.url
            remote = self.redis.get(url)
            if remote is None:
                remote = self.redis[url] = RedisStore(url, cache.max_object_size)
            remote.allow(cache.max_object_size)
            store = remote
        else:
            budget = config.cache.max_bytes
            if self.memory is None:
                self.memory = MemoryStore(budget)
            else:
                self.memory.resize(budget)
            store = self.memory
        codings = route.compression.algorithms if route.compression is not None else None
        return CacheStage(route.name, cache, store, config.server.via_name.encode("ascii"), codings)

    def memory_size(self) -> tuple[int, int] | None:
        """(entries, bytes) of the memory store, None before a route uses it."""
        if self.memory is None:
            return None
        return self.memory.entries, self.memory.bytes

    def all(self) -> list[CacheStore]:
        stores: list[CacheStore] = list(self.redis.values())
        if self.memory is not None:
            stores.insert(0, self.memory)
        return stores

    async def close(self) -> None:
        for store in self.all():
            await store.close()
        self.redis.clear()
        self.memory = None
