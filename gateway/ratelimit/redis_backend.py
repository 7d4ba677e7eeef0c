"""The Redis backend: one atomic Lua script per decision, on Redis's clock.

Gateways that share a Redis share their counts: instances on several hosts, or the workers of
one. The script (``gcra.lua``) reads and writes the key's TAT in one step, and redis-py's
script object sends it by SHA and loads it again when Redis answers NOSCRIPT (after a restart
or a SCRIPT FLUSH). Keys are ``gw:rl:`` and a BLAKE2b digest of the client key, so header values
and addresses are never stored in clear; each expires when its bucket is full again, which keeps
Redis's memory to the clients active within one refill. Evicting such keys would hand clients
fresh buckets early: give this Redis a ``maxmemory-policy`` of ``noeviction`` or
``volatile-ttl`` (the keys nearest to full go first).

Failing fast: after a failed call the backend is marked down for `RETRY_AFTER` seconds, in
which decisions fail at once instead of each waiting out its budget on a dead server; then one
request probes it again. redis-py reconnects by itself once the server answers.
"""

from __future__ import annotations

import hashlib
import time
from importlib import resources
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool

from gateway.config.model import RateLimitConfig
from gateway.observability import metrics
from gateway.observability.logging import get_logger
from gateway.ratelimit.gcra import Verdict

log = get_logger("gateway.ratelimit")

# Seconds a failed backend is skipped before a request tries it again.
RETRY_AFTER: Final = 1.0
# Connections to one Redis per worker process; a decision waits for a free one within its
# budget.
MAX_CONNECTIONS: Final = 32
KEY_PREFIX: Final = b"gw:rl:"
SCRIPT: Final = resources.files("gateway.ratelimit").joinpath("gcra.lua").read_text()


class BackendDown(Exception):
    """The backend failed a moment ago; it is not asked again before RETRY_AFTER."""


class RedisBackend:
    """One Redis server as this process sees it: client, script, and whether it answers."""

    name = "redis"

    def __init__(self, url: str) -> None:
        self._pool = BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS)
        self.client = aioredis.Redis(connection_pool=self._pool)
        self._script: Any = self.client.register_script(SCRIPT)
        self._down_until = 0.0
        self._down = False

    async def gcra(self, key: bytes, interval: float, burst: int) -> Verdict:
        if self._down_until and time.monotonic() < self._down_until:
            raise BackendDown("the rate-limit Redis failed less than a second ago")
        digest = hashlib.blake2b(key, digest_size=16).hexdigest().encode()
        reply = await self._script(keys=[KEY_PREFIX + digest], args=[repr(interval), burst, 1])
        allowed, remaining, retry_after, reset_after = reply
        return Verdict(bool(allowed), int(remaining), float(retry_after), float(reset_after))

    def failed(self, error: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER
        if not self._down:
            self._down = True
            metrics.count_ratelimit_failover(self.name)
            log.warning(
                "ratelimit_backend_down",
                backend=self.name,
                error=f"{type(error).__name__}: {error}" if str(error) else type(error).__name__,
                retry_seconds=RETRY_AFTER,
            )

    def answered(self) -> None:
        if self._down:
            self._down = False
            self._down_until = 0.0
            log.info("ratelimit_backend_up", backend=self.name)

    async def close(self) -> None:
        await self.client.aclose()
        # A pool handed to the client is not closed by it.
        await self._pool.disconnect()


class RedisLimiter:
    """One route's policy on a `RedisBackend`: what the rate-limit stage calls."""

    __slots__ = ("_backend", "_burst", "_interval", "name")

    def __init__(self, backend: RedisBackend, config: RateLimitConfig) -> None:
        self._backend = backend
        self._interval = config.rate.interval
        self._burst = config.burst
        self.name = backend.name

    async def decide(self, key: bytes) -> Verdict:
        return await self._backend.gcra(key, self._interval, self._burst)

    def failed(self, error: BaseException) -> None:
        if not isinstance(error, BackendDown):
            self._backend.failed(error)

    def answered(self) -> None:
        self._backend.answered()
