"""What compression does to a response's fields, as pure functions (HARDENING.md §D).

- `media_type` and `compressible`: the allow-list match on Content-Type (``type/*`` and the
  ``type/*+suffix`` structured-syntax form);
- `with_vary`: ``Vary: Accept-Encoding`` merged into what the upstream sent (RFC 9110 §12.5.5:
  every response whose coding depends on the request's Accept-Encoding says so, the
  uncompressed ones too, or a shared cache would hand a gzip body to a client without gzip);
- `weak_etag`: a strong validator made weak (RFC 9110 §8.8.1: a compressed body is not the
  byte-for-byte representation the strong ETag named).
"""

from __future__ import annotations

from typing import Final

from gateway.messages import Headers

# Types whose chunks are flushed as they come: every chunk is a message the client wants now.
STREAMING_TYPES: Final = frozenset({"text/event-stream", "application/x-ndjson"})


def media_type(value: bytes) -> str:
    """The media type of a Content-Type value, without parameters, lower-case."""
    return value.split(b";", 1)[0].strip().decode("latin-1").lower()


def compressible(media: str, patterns: tuple[str, ...]) -> bool:
    if not media or "/" not in media:
        return False
    kind, _, subtype = media.partition("/")
    for pattern in patterns:
        if pattern == media:
            return True
        pattern_kind, _, pattern_subtype = pattern.partition("/")
        if pattern_kind != kind:
            continue
        if pattern_subtype == "*":
            return True
        if pattern_subtype.startswith("*+") and subtype.endswith(pattern_subtype[1:]):
            return True
    return False


def with_vary(headers: Headers) -> Headers:
    """``headers`` with Accept-Encoding among its Vary fields (once; ``*`` left alone)."""
    for name, value in headers:
        if name.lower() == b"vary":
            names = [part.strip().lower() for part in value.split(b",")]
            if b"accept-encoding" in names or b"*" in names:
                return headers
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            merged = value.strip() + b", Accept-Encoding" if value.strip() else b"Accept-Encoding"
            return [*headers[:index], (name, merged), *headers[index + 1 :]]
    return [*headers, (b"Vary", b"Accept-Encoding")]


def weak_etag(value: bytes) -> bytes:
    stripped = value.strip()
    return stripped if stripped.startswith(b"W/") else b"W/" + stripped
