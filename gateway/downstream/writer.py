"""Response heads written from bytes: status line, fields, framing and connection handling.

The gateway already holds the upstream's fields as raw bytes, so it serialises them once here
instead of decoding them into a str multidict and encoding them again (docs/performance.md).
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Final

from gateway.errors import GatewayError
from gateway.messages import Headers

_REASONS: Final = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_CRLF: Final = b"\r\n"
_CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
_CLOSE: Final = b"Connection: close\r\n"
_KEEP_ALIVE: Final = b"Connection: keep-alive\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


class DateField:
    """The ``Date`` field line (RFC 9110 §6.6.1), formatted at most once a second."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._line = b"Date: " + formatdate(second, usegmt=True).encode("ascii") + _CRLF
        return self._line


DATE = DateField()


def status_line(status: int, reason: bytes = b"") -> bytes:
    """``HTTP/1.1 status reason``: 1.1 whatever the request said (RFC 9112 §2.3, a server answers
    with the highest version it conforms to), the standard phrase when ``reason`` is empty."""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason or reason_phrase(status))


def _add_fields(parts: list[bytes], fields: Headers) -> bool:
    """Append one ``name: value`` line per field; whether a ``Date`` was among them."""
    append = parts.append
    has_date = False
    for name, value in fields:
        if len(name) == 4 and name.lower() == b"date":
            has_date = True
        append(name + b": " + value + _CRLF)
    return has_date


def interim_head(status: int, reason: bytes, fields: Headers) -> bytes:
    """An interim (1xx) response head: status line and fields, nothing about framing."""
    parts = [status_line(status, reason)]
    _add_fields(parts, fields)
    parts.append(_CRLF)
    return b"".join(parts)


def response_head(
    status: int,
    reason: bytes,
    fields: Headers,
    *,
    content_length: int | None,
    chunked: bool,
    close: bool,
    keep_alive_10: bool,
) -> bytes:
    """Serialise a final response head for an HTTP/1.1 or 1.0 client.

    ``fields`` are the end-to-end fields to send, already filtered (no framing or hop-by-hop
    fields among them). Framing comes from the arguments: ``Content-Length`` when the length is
    known, else ``Transfer-Encoding: chunked`` when ``chunked``, else nothing (a body that ends
    with the connection, RFC 9112 §6.3 rule 8). ``close`` says ``Connection: close``;
    ``keep_alive_10`` says ``Connection: keep-alive``, which an HTTP/1.0 client needs to hear
    (RFC 9112 §9.3). A ``Date`` is added when the fields have none: RFC 9110 §6.6.1 has a
    recipient with a clock append one to a response it forwards without.
    """
    parts = [status_line(status, reason)]
    append = parts.append
    if not _add_fields(parts, fields):
        append(DATE.line())
    if content_length is not None:
        append(b"Content-Length: %d\r\n" % content_length)
    elif chunked:
        append(_CHUNKED)
    if close:
        append(_CLOSE)
    elif keep_alive_10:
        append(_KEEP_ALIVE)
    append(_CRLF)
    return b"".join(parts)


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """One chunk of a chunked body (RFC 9112 §7.1): size in hex, CRLF, data, CRLF."""
    return (b"%x\r\n" % len(data), data, _CRLF)


def error_body(code: str, message: str, request_id: str) -> bytes:
    return json.dumps(
        {"error": code, "message": message, "request_id": request_id}, separators=(",", ":")
    ).encode()


def error_response(error: GatewayError, request_id: str, *, close: bool, head_only: bool) -> bytes:
    """The gateway's own error answer: a small JSON body naming the error and the request id.

    A refused request may not even have a version: `status_line` says HTTP/1.1 regardless. A
    response to HEAD carries the head only (RFC 9110 §9.3.2).
    """
    body = error_body(error.code, error.message, request_id)
    parts = [
        status_line(error.status),
        b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body),
        b"X-Request-ID: " + request_id.encode("ascii") + _CRLF,
        DATE.line(),
    ]
    if error.fields:
        _add_fields(parts, error.fields)
    parts.append(_CLOSE if close else b"")
    parts.append(_CRLF)
    head = b"".join(parts)
    return head if head_only else head + body
