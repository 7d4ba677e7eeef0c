"""Validators: answering clients' conditional requests from stored responses, and refreshing
stored responses with an upstream's 304 (RFC 9110 §13, RFC 9111 §3.2, §4.3).
"""

from __future__ import annotations

from typing import Final

from gateway.cache.dates import parse_http_date
from gateway.messages import Headers

# RFC 9110 §15.4.5: the fields a 304 carries (when the 200 would have), plus what this
# cache adds itself (Age, Cache-Status, X-Request-ID, Via).
NOT_MODIFIED_FIELDS: Final = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"via"}
)
# RFC 9111 §3.2: fields a 304 must not change in the stored response (framing and the
# coding of the stored body), and those this cache computes per use.
_NOT_UPDATED: Final = frozenset(
    {
        b"content-length",
        b"content-encoding",
        b"content-range",
        b"transfer-encoding",
        b"age",
        b"x-request-id",
    }
)


def _values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for k, v in headers if k.lower() == name]


def entity_tags(value: bytes) -> list[bytes]:
    """The entity-tags of an If-None-Match list value, as sent (W/ prefix kept)."""
    tags: list[bytes] = []
    position, end = 0, len(value)
    while position < end:
        while position < end and value[position] in b" \t,":
            position += 1
        if position >= end:
            break
        start = position
        if value.startswith(b"W/", position):
            position += 2
        if position < end and value[position] == ord('"'):
            close = value.find(b'"', position + 1)
            if close < 0:
                break
            position = close + 1
            tags.append(value[start:position])
        elif value[position] == ord("*"):
            position += 1
            tags.append(b"*")
        else:
            # Not an entity-tag: skip to the next element.
            while position < end and value[position] != ord(","):
                position += 1
    return tags


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def weak_match(tags: list[bytes], etag: bytes | None) -> bool:
    """RFC 9110 §13.1.2: If-None-Match uses the weak comparison; ``*`` matches any current
    representation."""
    if etag is None:
        return False
    current = _opaque(etag.strip())
    return any(tag == b"*" or _opaque(tag) == current for tag in tags)


def not_modified(
    request_headers: Headers, etag: bytes | None, last_modified: bytes | None, date: bytes | None
) -> bool:
    """Whether a GET or HEAD with these conditionals gets 304 from a stored 200 with these
    validators (RFC 9110 §13.2.2: If-None-Match first; If-Modified-Since only without it)."""
    none_match = _values(request_headers, b"if-none-match")
    if none_match:
        tags = [tag for value in none_match for tag in entity_tags(value)]
        return weak_match(tags, etag)
    since_values = _values(request_headers, b"if-modified-since")
    if len(since_values) != 1:
        return False
    since = parse_http_date(since_values[0])
    # §13.1.3: compared with Last-Modified, or the Date of the stored response without one.
    reference = last_modified if last_modified is not None else date
    modified = parse_http_date(reference) if reference is not None else None
    return since is not None and modified is not None and modified <= since


def revalidation_fields(etag: bytes | None, last_modified: bytes | None) -> Headers:
    """The conditionals that ask the upstream whether a stored response is still current
    (RFC 9111 §4.3.1): its entity-tag, and its Last-Modified."""
    fields: Headers = []
    if etag is not None:
        fields.append((b"If-None-Match", etag))
    if last_modified is not None:
        fields.append((b"If-Modified-Since", last_modified))
    return fields


def refreshed_fields(stored: Headers, update: Headers) -> Headers:
    """The stored fields updated with a 304's (RFC 9111 §3.2): each field the 304 carries
    replaces every stored line of it, except the ones in `_NOT_UPDATED`."""
    replacing = {name.lower() for name, _ in update} - _NOT_UPDATED
    kept = [(name, value) for name, value in stored if name.lower() not in replacing]
    return kept + [(name, value) for name, value in update if name.lower() in replacing]


def not_modified_fields(stored: Headers) -> Headers:
    """The stored fields a 304 to the client repeats."""
    return [(name, value) for name, value in stored if name.lower() in NOT_MODIFIED_FIELDS]
