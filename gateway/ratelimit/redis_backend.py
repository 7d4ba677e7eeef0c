"""The Redis backend: one atomic Lua script per decision, on Redis's clock.

Gateways that share a Redis share their counts: instances on several hosts, or the workers of
one. The strategy's script (``gcra.lua``, ``fixed_window.lua``, ``sliding_window.lua``,
``moving_window.lua``) reads and writes the key's state in one step. It is sent by its SHA1
(EVALSHA) and loaded again when Redis answers NOSCRIPT (the first time, after a restart or a
SCRIPT FLUSH). Commands go through the lean pipelined client of
`gateway.redisproto.client`. Keys are ``gw:rl:`` and a BLAKE2b digest of the client key, so header
values and addresses are never stored in clear; each expires when its bucket is full again,
which keeps Redis's memory to the clients active within one refill. Evicting such keys would
hand clients fresh buckets early: give this Redis a ``maxmemory-policy`` of ``noeviction`` or
``volatile-ttl`` (the keys nearest to full go first).

Failing fast: after a failed call the backend is marked down for `RETRY_AFTER` seconds, in
which decisions fail at once instead of each waiting out its budget on a dead server; then one
request probes it again, on a new connection if the old one broke.
"""

from __future__ import annotations

import hashlib
import time
from importlib import resources
from typing import Final

from gateway.config.model import RateLimitConfig
from gateway.observability import metrics
from gateway.observability.logging import get_logger
from gateway.ratelimit.errors import BackendDown
from gateway.ratelimit.gcra import Verdict
from gateway.redisproto.client import RedisClient
from gateway.redisproto.errors import RedisError

log = get_logger("gateway.ratelimit")

# Seconds a failed backend is skipped before a request tries it again.
RETRY_AFTER: Final = 1.0
KEY_PREFIX: Final = b"gw:rl:"


class Script:
    """A Lua script of this package, sent by its SHA1."""

    def __init__(self, name: str) -> None:
        self.source = resources.files("gateway.ratelimit").joinpath(name).read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


GCRA: Final = Script("gcra.lua")
# The window strategies take the same arguments: limit, period in seconds.
WINDOW_SCRIPTS: Final = {
    "fixed_window": Script("fixed_window.lua"),
    "sliding_window": Script("sliding_window.lua"),
    "moving_window": Script("moving_window.lua"),
}


class RedisBackend:
    """One Redis server as this process sees it: client, script, and whether it answers."""

    name = "redis"

    def __init__(self, url: str) -> None:
        self.client = RedisClient(url)
        self._down_until = 0.0
        self._down = False

    async def run(self, script: Script, key: bytes, *args: float | int) -> Verdict:
        """Run ``script`` on the bucket of ``key``; its reply is a verdict."""
        if self._down_until and time.monotonic() < self._down_until:
            raise BackendDown("the rate-limit Redis failed less than a second ago")
        digest = hashlib.blake2b(key, digest_size=16).hexdigest().encode()
        arguments = (1, KEY_PREFIX + digest, *args)
        try:
            reply = await self.client.command("EVALSHA", script.sha, *arguments)
        except RedisError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
            await self.client.command("SCRIPT", "LOAD", script.source)
            reply = await self.client.command("EVALSHA", script.sha, *arguments)
        if not isinstance(reply, list) or len(reply) != 4:
            raise RedisError(f"unexpected reply from the rate-limit script: {reply!r}")
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
        await self.client.close()


class RedisLimiter:
    """One route's policy on a `RedisBackend`: what the rate-limit stage calls."""

    __slots__ = ("_args", "_backend", "_script", "name")

    def __init__(self, backend: RedisBackend, config: RateLimitConfig) -> None:
        self._backend = backend
        self._script: Script
        self._args: tuple[float | int, ...]
        window = WINDOW_SCRIPTS.get(config.strategy)
        if window is not None:
            self._script = window
            self._args = (config.rate.limit, config.rate.period)
        else:
            self._script = GCRA
            # Seconds per token, burst, cost.
            self._args = (config.rate.interval, config.burst, 1)
        self.name = backend.name

    async def decide(self, key: bytes) -> Verdict:
        return await self._backend.run(self._script, key, *self._args)

    def failed(self, error: BaseException) -> None:
        if not isinstance(error, BackendDown):
            self._backend.failed(error)

    def answered(self) -> None:
        self._backend.answered()
