"""The upstream request head, built as one bytes object from raw fields."""

from __future__ import annotations

from typing import Final

from gateway.messages import Headers

# Methods whose bytes are looked up instead of encoded per request.
METHOD_BYTES: Final = {
    m: m.encode("ascii")
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")
}
# RFC 9110 §9.2.2: safe to repeat after a failure that may have reached the server.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# RFC 9110 §8.6: methods that define a meaning for content get "Content-Length: 0" when
# sent without a body, so the upstream never waits for one.
CONTENT_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})

END_OF_HEAD: Final = b"\r\n"
ZERO_LENGTH: Final = b"Content-Length: 0\r\n\r\n"
CHUNKED: Final = b"Transfer-Encoding: chunked\r\n\r\n"


def method_bytes(method: str) -> bytes:
    known = METHOD_BYTES.get(method)
    return known if known is not None else method.encode("ascii")


def framing_fields(method: str, has_body: bool, content_length: int | None) -> bytes:
    """The framing fields and the blank line that end the head (RFC 9112 §6.1, §6.2)."""
    if has_body:
        if content_length is None:
            return CHUNKED
        return b"Content-Length: %d\r\n\r\n" % content_length
    if content_length is not None or method in CONTENT_METHODS:
        return ZERO_LENGTH
    return END_OF_HEAD


def build_head(
    method: bytes, target: bytes, host: bytes, headers: Headers, framing: bytes
) -> tuple[bytes, bool]:
    """``METHOD target HTTP/1.1``, Host, the caller's fields, framing; and whether the
    caller asked to close (``Connection: close``, RFC 9112 §9.6)."""
    parts = [method, b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    close = False
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
        if (
            len(name) == 10
            and name.lower() == b"connection"
            and value.lower().find(b"close") >= 0  # not "in": see UpstreamConnection.on_header
        ):
            close = True
    parts.append(framing)
    return b"".join(parts), close
