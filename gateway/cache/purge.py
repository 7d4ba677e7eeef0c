"""Purges: what `POST /cache/purge` on the admin listener asks for, and carrying it out.

The body is a JSON object with exactly one of ``url`` (an absolute http(s) URL: every variant
stored for it), ``path_prefix`` (every entry whose path starts with it, on any host) or ``tag``
(every entry the upstream tagged with it, `CacheConfig.tag_header`). The answer counts the
entries removed. Under `gateway run` each worker purges its own memory store and the Redis
stores it uses (`gateway.supervisor` relays the purge and sums the counts; a Redis entry is
removed once, by whichever worker gets to it first).
"""

from __future__ import annotations

from typing import Final

from gateway.cache.keys import key_for_url
from gateway.cache.store import CacheStore

KINDS: Final = ("url", "path_prefix", "tag")


class PurgeRequest:
    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value: bytes) -> None:
        self.kind = kind
        # The primary key for a url; the path prefix or tag as bytes otherwise.
        self.value = value


def parse_purge(body: object) -> PurgeRequest:
    """The purge ``body`` asks for; ValueError with a message for the client otherwise."""
    if not isinstance(body, dict):
        raise ValueError('expected a JSON object such as {"url": "https://host/path"}')
    given = [kind for kind in KINDS if kind in body]
    unknown = sorted(str(key) for key in body if key not in KINDS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}: use one of url, path_prefix, tag")
    if len(given) != 1:
        raise ValueError("give exactly one of url, path_prefix, tag")
    kind = given[0]
    value = body[kind]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} must be a non-empty string")
    if kind == "url":
        key = key_for_url(value)
        if key is None:
            raise ValueError("url must be an absolute http:// or https:// URL")
        return PurgeRequest(kind, key)
    if kind == "path_prefix" and not value.startswith("/"):
        raise ValueError("path_prefix must start with '/'")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{kind} must not contain spaces or control characters")
    return PurgeRequest(kind, value.encode("utf-8"))


async def purge(stores: list[CacheStore], request: PurgeRequest) -> int:
    """Carry out ``request`` on every store; how many entries went."""
    removed = 0
    for store in stores:
        if request.kind == "url":
            removed += await store.delete(request.value)
        elif request.kind == "path_prefix":
            removed += await store.purge_prefix(request.value)
        else:
            removed += await store.purge_tag(request.value)
    return removed
