"""The Redis store: entries shared by every worker and every gateway using one Redis.

Layout: one hash per primary key, ``gw:c:`` + the key in clear (purges by path prefix scan
for them), whose fields are the variants: a digest of the Vary names and secondary key, and
the entry in the explicit format of `gateway.cache.entry` (never pickle; a value that does not
parse is a miss). The hash expires with its longest-lived variant (freshness, stale windows,
and ``revalidate_for`` for entries with validators: the stage decides); at most `MAX_VARIANTS`
per key, a random other one giving way when a new one arrives (Redis keeps no order in a
hash; the memory store evicts the oldest). Tags are sets, ``gw:ct:`` + tag, of primary keys.

Never a 5xx because of Redis: a lookup that fails or takes longer than `BUDGET` is a miss and
a store that fails is skipped; after a failure Redis is left alone for `RETRY_AFTER` seconds
(every request a miss at once instead of waiting out the budget), then one request probes it.
The switch is logged once each way.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Final

from gateway.cache.entry import CacheEntry
from gateway.cache.keys import target_of
from gateway.cache.store import MAX_VARIANTS
from gateway.observability.logging import get_logger
from gateway.redisproto.client import RedisClient
from gateway.redisproto.errors import RedisError

log = get_logger("gateway.cache")

KEY_PREFIX: Final = b"gw:c:"
TAG_PREFIX: Final = b"gw:ct:"
# The longest a lookup or a store may take before it counts as failed.
BUDGET: Final = 0.1
RETRY_AFTER: Final = 1.0
# Headroom over the largest body for an entry's fields and bookkeeping.
_ENTRY_HEADROOM: Final = 1 << 20

# Store one variant: replace it, or make room among at most ARGV[3] variants; keep the hash
# (and each tag set, KEYS[2..]) until the longest-lived entry in it expires.
_PUT: Final = """
local field, value, ttl, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('HEXISTS', KEYS[1], field) == 0 then
  while redis.call('HLEN', KEYS[1]) >= limit do
    redis.call('HDEL', KEYS[1], redis.call('HRANDFIELD', KEYS[1]))
  end
end
redis.call('HSET', KEYS[1], field, value)
for i = 1, #KEYS do
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[5])
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 1
"""
_DELETE: Final = """
local count = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return count
"""


def variant_field(entry: CacheEntry) -> bytes:
    identity = b"\x00".join(entry.vary) + b"\x01" + entry.secondary
    return hashlib.blake2b(identity, digest_size=12).hexdigest().encode("ascii")


class RedisStore:
    name = "redis"

    def __init__(self, url: str, max_object_size: int) -> None:
        self.max_object_size = max_object_size
        self.client = RedisClient(url, max_reply=max_object_size + _ENTRY_HEADROOM)
        self._down_until = 0.0
        self._down = False

    def allow(self, max_object_size: int) -> None:
        """Room for entries up to ``max_object_size`` (a route sharing this store, or a reload,
        asks for more)."""
        if max_object_size > self.max_object_size:
            self.max_object_size = max_object_size
            self.client.raise_max_reply(max_object_size + _ENTRY_HEADROOM)

    # --- the hot path -------------------------------------------------------------------

    async def variants(self, key: bytes) -> list[CacheEntry]:
        if self._skipping():
            return []
        try:
            async with asyncio.timeout(BUDGET):
                reply = await self.client.command("HGETALL", KEY_PREFIX + key)
        except Exception as error:  # errors, a lost connection, the budget: a miss
            self._failed(error)
            return []
        self._answered()
        if not isinstance(reply, list):
            return []
        found = []
        for index in range(1, len(reply), 2):
            value = reply[index]
            entry = CacheEntry.from_bytes(value) if isinstance(value, bytes) else None
            if entry is not None and entry.key == key:
                found.append(entry)
        found.sort(key=lambda entry: entry.freshness.response_time, reverse=True)
        return found

    async def put(self, entry: CacheEntry, ttl: float) -> bool:
        if self._skipping() or ttl <= 0 or len(entry.body) > self.max_object_size:
            return False
        tag_keys = [TAG_PREFIX + tag for tag in entry.tags]
        try:
            async with asyncio.timeout(BUDGET * 5):
                await self.client.command(
                    "EVAL",
                    _PUT,
                    1 + len(tag_keys),
                    KEY_PREFIX + entry.key,
                    *tag_keys,
                    variant_field(entry),
                    entry.to_bytes(),
                    max(1, int(ttl * 1000)),
                    MAX_VARIANTS,
                    entry.key,
                )
        except Exception as error:
            self._failed(error)
            return False
        self._answered()
        return True

    # --- purges (the admin listener; errors go to the caller) ---------------------------

    async def delete(self, key: bytes) -> int:
        reply = await self.client.command("EVAL", _DELETE, 1, KEY_PREFIX + key)
        return reply if isinstance(reply, int) else 0

    async def purge_prefix(self, path_prefix: bytes) -> int:
        removed = 0
        cursor: bytes = b"0"
        while True:
            reply = await self.client.command(
                "SCAN", cursor, "MATCH", KEY_PREFIX + b"*", "COUNT", 1000
            )
            if not isinstance(reply, list) or len(reply) != 2:
                raise RedisError(f"unexpected SCAN reply: {reply!r}")
            cursor, keys = reply
            for redis_key in keys if isinstance(keys, list) else []:
                key = redis_key[len(KEY_PREFIX) :]
                if target_of(key).startswith(path_prefix):
                    removed += await self.delete(key)
            if cursor in (b"0", 0):
                return removed

    async def purge_tag(self, tag: bytes) -> int:
        tag_key = TAG_PREFIX + tag
        members = await self.client.command("SMEMBERS", tag_key)
        removed = 0
        for key in members if isinstance(members, list) else []:
            reply = await self.client.command("HGETALL", KEY_PREFIX + key)
            if not isinstance(reply, list):
                continue
            doomed = []
            for index in range(0, len(reply) - 1, 2):
                value = reply[index + 1]
                entry = CacheEntry.from_bytes(value) if isinstance(value, bytes) else None
                if entry is None or tag in entry.tags:
                    doomed.append(reply[index])
            if doomed:
                count = await self.client.command("HDEL", KEY_PREFIX + key, *doomed)
                removed += count if isinstance(count, int) else 0
        await self.client.command("DEL", tag_key)
        return removed

    async def close(self) -> None:
        await self.client.close()

    # --- failing fast -------------------------------------------------------------------

    def _skipping(self) -> bool:
        return bool(self._down_until) and time.monotonic() < self._down_until

    def _failed(self, error: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER
        if not self._down:
            self._down = True
            log.warning(
                "cache_store_down",
                store=self.name,
                error=f"{type(error).__name__}: {error}" if str(error) else type(error).__name__,
                retry_seconds=RETRY_AFTER,
            )

    def _answered(self) -> None:
        if self._down:
            self._down = False
            self._down_until = 0.0
            log.info("cache_store_up", store=self.name)
