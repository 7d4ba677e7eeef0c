"""The memory store: a byte-bounded LRU of this process's entries.

Per worker process, like nginx's workers sharing nothing but unlike its shared zone: a worker
fills its own cache, so a host with N workers keeps up to N copies and N times ``max_bytes``
(the Redis store is the shared one). Bounded by the entries' bytes (``max_bytes``: bodies,
fields and bookkeeping) and by `MAX_VARIANTS` per key; entries over ``max_object_size`` are
refused. Eviction is least recently used by key: a hit moves the key to the back.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.cache.entry import CacheEntry
from gateway.cache.keys import target_of
from gateway.cache.store import MAX_VARIANTS, same_variant


class MemoryStore:
    name = "memory"

    def __init__(self, max_bytes: int, max_object_size: int | None = None) -> None:
        self.max_bytes = max_bytes
        # Each route's stage applies its own; this one bounds what any route may store.
        self.max_object_size = max_bytes if max_object_size is None else max_object_size
        self.bytes = 0
        self.entries = 0
        # key -> variants, newest first; least recently used key first.
        self._keys: OrderedDict[bytes, list[CacheEntry]] = OrderedDict()
        # tag -> keys with an entry carrying it.
        self._tags: dict[bytes, set[bytes]] = {}

    async def variants(self, key: bytes) -> list[CacheEntry]:
        return self.lookup(key)

    def lookup(self, key: bytes) -> list[CacheEntry]:
        """`variants` without the coroutine: the stage calls this on its hot path."""
        found = self._keys.get(key)
        if found is None:
            return []
        self._keys.move_to_end(key)
        return found

    async def put(self, entry: CacheEntry, ttl: float) -> bool:
        # The TTL does not bound memory here; LRU does. Expired entries are replaced or
        # evicted like any other, and the stage never serves one it may not.
        if len(entry.body) > self.max_object_size or entry.size > self.max_bytes:
            return False
        variants = self._keys.get(entry.key)
        if variants is None:
            variants = self._keys[entry.key] = []
        else:
            self._keys.move_to_end(entry.key)
            for old in [v for v in variants if same_variant(v, entry)]:
                self._forget(entry.key, variants, old)
            while len(variants) >= MAX_VARIANTS:
                self._forget(entry.key, variants, variants[-1])
        variants.insert(0, entry)
        self.bytes += entry.size
        self.entries += 1
        for tag in entry.tags:
            self._tags.setdefault(tag, set()).add(entry.key)
        while self.bytes > self.max_bytes:
            self._drop_key(next(iter(self._keys)))
        return True

    def _forget(self, key: bytes, variants: list[CacheEntry], entry: CacheEntry) -> None:
        variants.remove(entry)
        self.bytes -= entry.size
        self.entries -= 1
        for tag in entry.tags:
            if not any(tag in other.tags for other in variants):
                keys = self._tags.get(tag)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._tags[tag]

    def _drop_key(self, key: bytes) -> int:
        variants = self._keys.get(key)
        if variants is None:
            return 0
        count = len(variants)
        for entry in list(variants):
            self._forget(key, variants, entry)
        del self._keys[key]
        return count

    def resize(self, max_bytes: int) -> None:
        """A new budget (a reload changed `cache.max_bytes`): evict down to it."""
        self.max_bytes = max_bytes
        while self.bytes > self.max_bytes and self._keys:
            self._drop_key(next(iter(self._keys)))

    async def delete(self, key: bytes) -> int:
        return self._drop_key(key)

    async def purge_prefix(self, path_prefix: bytes) -> int:
        doomed = [key for key in self._keys if target_of(key).startswith(path_prefix)]
        return sum(self._drop_key(key) for key in doomed)

    async def purge_tag(self, tag: bytes) -> int:
        keys = list(self._tags.get(tag, ()))
        removed = 0
        for key in keys:
            variants = self._keys.get(key, [])
            for entry in [v for v in variants if tag in v.tags]:
                self._forget(key, variants, entry)
                removed += 1
            if not variants:
                self._keys.pop(key, None)
        return removed

    async def close(self) -> None:
        self._keys.clear()
        self._tags.clear()
        self.bytes = self.entries = 0
