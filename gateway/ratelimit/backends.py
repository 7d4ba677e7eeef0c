"""The rate-limit backends of one process, kept across reloads, and the stage of each route."""

from __future__ import annotations

from gateway.config.model import GatewayConfig, RouteConfig
from gateway.observability.request_metrics import RequestMetrics
from gateway.ratelimit.memory import Tables
from gateway.ratelimit.redis_backend import RedisBackend, RedisLimiter
from gateway.ratelimit.stage import RateLimitStage


class RateLimitBackends:
    """Shared tables (memory) and Redis clients, one per URL, for every runtime built."""

    def __init__(self, tables: Tables | None = None) -> None:
        self.tables = tables or Tables()
        self._redis: dict[str, RedisBackend] = {}

    def stage(
        self,
        route: RouteConfig,
        config: GatewayConfig,
        metrics: RequestMetrics,
        leases: list[str],
    ) -> RateLimitStage | None:
        """The route's stage, or None; the tables it maps are added to ``leases``, to give
        back with `release` once the runtime holding the stage is gone."""
        limit = route.rate_limit
        if limit is None:
            return None
        # The memory limiter serves the memory backend, and a Redis one's `local` fallback.
        local, lease = self.tables.limiter(route.name, limit)
        leases.append(lease)
        remote = None
        if limit.backend == "redis":
            assert config.redis is not None  # the loader requires it
            url = config.redis.url
            backend = self._redis.get(url)
            if backend is None:
                backend = self._redis[url] = RedisBackend(url)
            remote = RedisLimiter(backend, limit)
        return RateLimitStage(route.name, limit, local, remote, metrics)

    def release(self, leases: list[str]) -> None:
        self.tables.release(leases)

    async def close(self) -> None:
        for backend in self._redis.values():
            await backend.close()
        self._redis.clear()
        self.tables.close()
