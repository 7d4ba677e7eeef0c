"""A stored response, and its explicit serialisation for stores outside the process.

The Redis store keeps entries as bytes in this format, never pickle: a value is parsed field by
field with every length checked, and anything that does not parse (another version, garbage,
a truncated value) is None, which the cache treats as a miss (HARDENING.md §C).

Layout, little-endian: ``GWC1``, a fixed part (`_FIXED`), then the variable parts in order:
key, reason, each header field (u16 name length, u32 value length, name, value), each Vary
name (u16 length, bytes), the secondary key, each tag (u16 length, bytes), the body.
"""

from __future__ import annotations

import math
import struct
from typing import Final

from gateway.cache.policy import Freshness
from gateway.messages import Headers

MAGIC: Final = b"GWC1"
# status, flags (1: no-cache, 2: no-stale, 4: shared with credentials), lifetime, initial age,
# response time,
# stale-while-revalidate, stale-if-error; key, reason, header, vary, secondary, tag and body
# sizes.
_FIXED: Final = struct.Struct("<HBdddddIHIHIHI")
_NAME: Final = struct.Struct("<H")
_FIELD: Final = struct.Struct("<HI")
# Bookkeeping per entry on top of its bytes, for the memory store's budget.
OVERHEAD: Final = 256


class CacheEntry:
    """One stored response: what is sent on a hit, and what decides whether it may be."""

    __slots__ = (
        "body",
        "coding",
        "freshness",
        "headers",
        "key",
        "reason",
        "secondary",
        "shared",
        "size",
        "status",
        "tags",
        "vary",
    )

    def __init__(
        self,
        *,
        key: bytes,
        status: int,
        reason: bytes,
        headers: Headers,
        body: bytes,
        freshness: Freshness,
        vary: tuple[bytes, ...] = (),
        secondary: bytes = b"",
        tags: tuple[bytes, ...] = (),
        shared: bool = False,
    ) -> None:
        # The primary cache key: method, scheme, host, port and target (`gateway.cache.keys`).
        self.key = key
        self.status = status
        self.reason = reason
        # The stored fields: end-to-end, without Age, X-Request-ID and the fields a qualified
        # private or no-cache names (they are added or recomputed on each hit).
        self.headers = headers
        self.body = body
        self.freshness = freshness
        # The selecting fields of Vary, and the storing request's normalised values of them.
        self.vary = vary
        self.secondary = secondary
        # Purge tags from the upstream's tag header.
        self.tags = tags
        # The response allows answering requests with Authorization or Cookie (public,
        # s-maxage or must-revalidate: RFC 9111 §3.5).
        self.shared = shared
        # Its content coding (lower-case), None for identity: only clients that accept it
        # may get it.
        self.coding: str | None = None
        for name, value in headers:
            if name.lower() == b"content-encoding":
                coding = value.strip().lower().decode("latin-1")
                self.coding = None if coding in ("", "identity") else coding
        self.size = (
            len(body)
            + len(key)
            + sum(len(name) + len(value) + 16 for name, value in headers)
            + len(secondary)
            + OVERHEAD
        )

    def but(
        self,
        *,
        headers: Headers | None = None,
        body: bytes | None = None,
        freshness: Freshness | None = None,
        shared: bool | None = None,
    ) -> CacheEntry:
        """A copy of this entry with the given parts replaced."""
        return CacheEntry(
            key=self.key,
            status=self.status,
            reason=self.reason,
            headers=self.headers if headers is None else headers,
            body=self.body if body is None else body,
            freshness=self.freshness if freshness is None else freshness,
            vary=self.vary,
            secondary=self.secondary,
            tags=self.tags,
            shared=self.shared if shared is None else shared,
        )

    def header(self, name: bytes) -> bytes | None:
        """The first value of the stored field ``name`` (lower-case)."""
        for field_name, value in self.headers:
            if field_name.lower() == name:
                return value
        return None

    def to_bytes(self) -> bytes:
        freshness = self.freshness
        flags = (
            (1 if freshness.no_cache else 0)
            | (2 if freshness.no_stale else 0)
            | (4 if self.shared else 0)
        )
        parts = [
            MAGIC,
            _FIXED.pack(
                self.status,
                flags,
                freshness.lifetime,
                freshness.initial_age,
                freshness.response_time,
                freshness.stale_while_revalidate,
                freshness.stale_if_error,
                len(self.key),
                len(self.reason),
                len(self.headers),
                len(self.vary),
                len(self.secondary),
                len(self.tags),
                len(self.body),
            ),
            self.key,
            self.reason,
        ]
        for name, value in self.headers:
            parts.append(_FIELD.pack(len(name), len(value)))
            parts.append(name)
            parts.append(value)
        for item in self.vary:
            parts.append(_NAME.pack(len(item)))
            parts.append(item)
        parts.append(self.secondary)
        for tag in self.tags:
            parts.append(_NAME.pack(len(tag)))
            parts.append(tag)
        parts.append(self.body)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> CacheEntry | None:
        """The entry ``data`` holds, or None when it is not exactly one well-formed entry."""
        try:
            return _parse(memoryview(data))
        except (struct.error, ValueError):
            return None


def _parse(data: memoryview) -> CacheEntry | None:
    if bytes(data[:4]) != MAGIC:
        return None
    (
        status,
        flags,
        lifetime,
        initial_age,
        response_time,
        swr,
        sie,
        key_size,
        reason_size,
        header_count,
        vary_count,
        secondary_size,
        tag_count,
        body_size,
    ) = _FIXED.unpack_from(data, 4)
    if not 100 <= status <= 999 or flags > 7:
        return None
    for number in (lifetime, initial_age, response_time, swr, sie):
        if math.isnan(number) or number < 0:
            return None
    reader = _Reader(data, 4 + _FIXED.size)
    key = reader.take(key_size)
    reason = reader.take(reason_size)
    headers: Headers = []
    for _ in range(header_count):
        name_size, value_size = reader.unpack(_FIELD)
        headers.append((reader.take(name_size), reader.take(value_size)))
    vary = tuple(reader.take(reader.unpack(_NAME)[0]) for _ in range(vary_count))
    secondary = reader.take(secondary_size)
    tags = tuple(reader.take(reader.unpack(_NAME)[0]) for _ in range(tag_count))
    body = reader.take(body_size)
    if reader.position != len(data):
        return None
    freshness = Freshness(
        lifetime=lifetime,
        initial_age=initial_age,
        response_time=response_time,
        no_cache=bool(flags & 1),
        no_stale=bool(flags & 2),
        stale_while_revalidate=swr,
        stale_if_error=sie,
    )
    return CacheEntry(
        key=key,
        status=status,
        reason=reason,
        headers=headers,
        body=body,
        freshness=freshness,
        vary=vary,
        secondary=secondary,
        tags=tags,
        shared=bool(flags & 4),
    )


class _Reader:
    __slots__ = ("data", "position")

    def __init__(self, data: memoryview, position: int) -> None:
        self.data = data
        self.position = position

    def take(self, size: int) -> bytes:
        end = self.position + size
        if end > len(self.data):
            raise ValueError("truncated")
        chunk = bytes(self.data[self.position : end])
        self.position = end
        return chunk

    def unpack(self, shape: struct.Struct) -> tuple[int, ...]:
        values = shape.unpack_from(self.data, self.position)
        self.position += shape.size
        return values
