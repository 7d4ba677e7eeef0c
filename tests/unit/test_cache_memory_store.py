"""What only the memory store promises: a byte budget, least recently used out first."""

from __future__ import annotations

from gateway.cache.memory import MemoryStore
from tests.contract.test_cache_stores import entry


async def test_bytes_stay_within_the_budget_and_the_least_recently_used_go_first() -> None:
    one = entry(b"/0", body=b"x" * 1000).size
    store = MemoryStore(max_bytes=one * 3, max_object_size=10_000)
    for index in range(3):
        assert await store.put(entry(b"/%d" % index, body=b"x" * 1000), 60)
    # A hit on /0 makes /1 the least recently used.
    assert store.lookup(entry(b"/0").key)
    assert await store.put(entry(b"/3", body=b"x" * 1000), 60)
    assert store.bytes <= store.max_bytes
    assert store.entries == 3
    assert store.lookup(entry(b"/1").key) == []
    assert [bool(store.lookup(entry(b"/%d" % i).key)) for i in (0, 2, 3)] == [True] * 3


async def test_accounting_returns_to_zero() -> None:
    store = MemoryStore(max_bytes=1 << 20, max_object_size=1 << 16)
    vary = (b"accept-encoding",)
    await store.put(entry(b"/a", vary=vary, secondary=b"+1", tags=(b"t",)), 60)
    await store.put(entry(b"/a", vary=vary, secondary=b"+2", tags=(b"t",)), 60)
    await store.put(entry(b"/a", vary=vary, secondary=b"+1"), 60)
    await store.put(entry(b"/b", tags=(b"t",)), 60)
    await store.purge_tag(b"t")
    await store.delete(entry(b"/a").key)
    assert (store.bytes, store.entries) == (0, 0)


async def test_an_entry_larger_than_the_whole_budget_is_refused() -> None:
    store = MemoryStore(max_bytes=500, max_object_size=10_000)
    assert not await store.put(entry(body=b"x" * 1000), 60)
    assert (store.bytes, store.entries) == (0, 0)
