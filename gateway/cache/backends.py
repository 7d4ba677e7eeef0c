"""The cache stores of one process, kept across reloads, and the stage of each route."""

from __future__ import annotations

from gateway.cache.memory import MemoryStore
from gateway.cache.stage import CacheStage
from gateway.config.model import GatewayConfig, RouteConfig


class CacheStores:
    """One memory store for every route of this process (its budget is `cache.max_bytes`);
    a reload keeps its entries."""

    def __init__(self) -> None:
        self.memory: MemoryStore | None = None

    def stage(self, route: RouteConfig, config: GatewayConfig) -> CacheStage | None:
        cache = route.cache
        if cache is None:
            return None
        budget = config.cache.max_bytes
        if self.memory is None:
            self.memory = MemoryStore(budget)
        else:
            self.memory.resize(budget)
        return CacheStage(route.name, cache, self.memory, config.server.via_name.encode("ascii"))

    async def close(self) -> None:
        if self.memory is not None:
            await self.memory.close()
