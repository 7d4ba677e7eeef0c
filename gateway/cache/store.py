"""The interface every cache store implements (memory, Redis), and the one contract suite
(`tests/contract/test_cache_stores.py`) runs against each.

A store keeps, per primary key, up to `MAX_VARIANTS` entries (the responses for different
values of their Vary fields); storing an entry replaces the one with the same Vary names and
secondary key. Stores are bounded (bytes for memory, TTLs for Redis) and never raise for a
lookup: a store that cannot answer is a miss, and the cache passes requests through.
"""

from __future__ import annotations

from typing import Final, Protocol

from gateway.cache.entry import CacheEntry

# Variants kept per primary key (HARDENING.md §C: a Vary on a header a client controls
# must not let one URL fill the cache). The oldest goes first.
MAX_VARIANTS: Final = 8


class CacheStore(Protocol):
    name: str

    async def variants(self, key: bytes) -> list[CacheEntry]:
        """The entries stored for ``key``, newest first; [] when none (or on a failure)."""
        ...

    async def put(self, entry: CacheEntry, ttl: float) -> bool:
        """Store ``entry`` for ``ttl`` seconds at most; False when it was not stored."""
        ...

    async def delete(self, key: bytes) -> int:
        """Remove every variant of ``key``; how many were removed."""
        ...

    async def purge_prefix(self, path_prefix: bytes) -> int:
        """Remove the entries whose target starts with ``path_prefix`` (any host)."""
        ...

    async def purge_tag(self, tag: bytes) -> int:
        """Remove the entries tagged ``tag``."""
        ...

    async def close(self) -> None: ...


def same_variant(a: CacheEntry, b: CacheEntry) -> bool:
    return a.vary == b.vary and a.secondary == b.secondary
