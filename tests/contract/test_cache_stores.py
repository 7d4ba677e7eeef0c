"""One contract for every cache store (gateway.cache.store): memory, and a real redis-server.

A store keeps the variants of a key newest first, replaces a variant with the same Vary names
and secondary key, caps variants per key, refuses objects over its size limit, and purges by
key, by path prefix (any host) and by tag, answering how many entries went.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.cache.entry import CacheEntry
from gateway.cache.memory import MemoryStore
from gateway.cache.policy import Freshness
from gateway.cache.redis_store import RedisStore
from gateway.cache.store import MAX_VARIANTS, CacheStore
from tests.redis_server import redis_server

MakeStore = Callable[..., CacheStore]


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    stores: list[CacheStore] = []
    if request.param == "memory":

        def make(max_bytes: int = 1 << 20, max_object_size: int = 1 << 16) -> CacheStore:
            store = MemoryStore(max_bytes, max_object_size)
            stores.append(store)
            return store

        yield make
    else:
        with redis_server(tmp_path) as server:

            def make(max_bytes: int = 1 << 20, max_object_size: int = 1 << 16) -> CacheStore:
                store = RedisStore(server.url, max_object_size)
                stores.append(store)
                return store

            yield make
            for store in stores:
                await store.close()
            return
    for store in stores:
        await store.close()


# Each entry is younger than the one made before it: stores list variants newest first.
_clock = itertools.count(1)


def entry(
    target: bytes = b"/a",
    *,
    host: bytes = b"api.example.com:80",
    body: bytes = b"body",
    secondary: bytes = b"",
    vary: tuple[bytes, ...] = (),
    tags: tuple[bytes, ...] = (),
) -> CacheEntry:
    return CacheEntry(
        key=b"GET http://" + host + target,
        status=200,
        reason=b"OK",
        headers=[(b"Content-Type", b"text/plain")],
        body=body,
        freshness=Freshness(lifetime=60.0, initial_age=0.0, response_time=float(next(_clock))),
        vary=vary,
        secondary=secondary,
        tags=tags,
    )


async def test_a_stored_entry_comes_back(make_store: MakeStore) -> None:
    store = make_store()
    stored = entry(body=b"hello")
    assert await store.put(stored, 60)
    found = await store.variants(stored.key)
    assert [(e.body, e.headers, e.freshness.lifetime) for e in found] == [
        (b"hello", [(b"Content-Type", b"text/plain")], 60.0)
    ]
    assert await store.variants(b"GET http://api.example.com:80/other") == []


async def test_variants_newest_first_and_replaced_by_their_secondary_key(
    make_store: MakeStore,
) -> None:
    store = make_store()
    vary = (b"accept-encoding",)
    await store.put(entry(body=b"gzip-1", vary=vary, secondary=b"+gzip"), 60)
    await store.put(entry(body=b"br", vary=vary, secondary=b"+br"), 60)
    await store.put(entry(body=b"gzip-2", vary=vary, secondary=b"+gzip"), 60)
    found = await store.variants(entry().key)
    assert [e.body for e in found] == [b"gzip-2", b"br"]


async def test_variants_per_key_are_capped(make_store: MakeStore) -> None:
    store = make_store()
    vary = (b"x-variant",)
    for index in range(MAX_VARIANTS + 5):
        await store.put(entry(body=b"%d" % index, vary=vary, secondary=b"+%d" % index), 60)
    found = await store.variants(entry().key)
    assert len(found) == MAX_VARIANTS
    assert found[0].body == b"%d" % (MAX_VARIANTS + 4)


async def test_objects_over_the_size_limit_are_refused(make_store: MakeStore) -> None:
    store = make_store(max_object_size=100)
    assert not await store.put(entry(body=b"x" * 101), 60)
    assert await store.variants(entry().key) == []
    assert await store.put(entry(body=b"x" * 100), 60)


async def test_delete_removes_every_variant(make_store: MakeStore) -> None:
    store = make_store()
    vary = (b"accept-encoding",)
    await store.put(entry(vary=vary, secondary=b"+gzip"), 60)
    await store.put(entry(vary=vary, secondary=b"+br"), 60)
    await store.put(entry(b"/b"), 60)
    assert await store.delete(entry().key) == 2
    assert await store.variants(entry().key) == []
    assert len(await store.variants(entry(b"/b").key)) == 1
    assert await store.delete(entry().key) == 0


async def test_purge_by_path_prefix_on_every_host(make_store: MakeStore) -> None:
    store = make_store()
    for target in (b"/users/1", b"/users/2?x=1", b"/usersettings", b"/orders/1"):
        await store.put(entry(target), 60)
    await store.put(entry(b"/users/3", host=b"other.example.com:8080"), 60)
    assert await store.purge_prefix(b"/users/") == 3
    assert await store.variants(entry(b"/users/1").key) == []
    assert len(await store.variants(entry(b"/usersettings").key)) == 1
    assert len(await store.variants(entry(b"/orders/1").key)) == 1


async def test_purge_by_tag(make_store: MakeStore) -> None:
    store = make_store()
    await store.put(entry(b"/a", tags=(b"user-7", b"users")), 60)
    await store.put(entry(b"/b", tags=(b"users",)), 60)
    await store.put(entry(b"/c", tags=(b"orders",)), 60)
    assert await store.purge_tag(b"users") == 2
    assert await store.purge_tag(b"users") == 0
    assert await store.purge_tag(b"user-7") == 0
    assert len(await store.variants(entry(b"/c").key)) == 1


async def test_a_replaced_entry_loses_its_old_tags(make_store: MakeStore) -> None:
    store = make_store()
    await store.put(entry(b"/a", tags=(b"old",)), 60)
    await store.put(entry(b"/a", tags=(b"new",)), 60)
    assert await store.purge_tag(b"old") == 0
    assert await store.purge_tag(b"new") == 1
