"""Pure parts of the upstream transport: response framing (RFC 9112 §6.3) and the head."""

from __future__ import annotations

import pytest

from gateway.upstream.framing import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    final_coding_is_chunked,
    response_framing,
)
from gateway.upstream.request import build_head, framing_fields, method_bytes

Case = tuple[bool, int, bool, int | None, bytes | None, bool, bool, tuple[int, bool]]


@pytest.mark.parametrize(
    "case",
    [
        # (is_head, status, http_11, content_length, transfer_encoding, close, keep_alive,
        #  expected)
        # Rule 1: HEAD, 204, 304 never have content, whatever the fields say.
        (True, 200, True, 10, None, False, False, (NO_BODY, True)),
        (True, 200, True, None, None, False, False, (NO_BODY, True)),
        (False, 204, True, None, b"chunked", False, False, (NO_BODY, True)),
        (False, 304, True, 5, None, False, False, (NO_BODY, True)),
        # Rule 4: chunked last means chunked; anything else reads until close.
        (False, 200, True, None, b"chunked", False, False, (CHUNKED, True)),
        (False, 200, True, None, b"gzip, Chunked ", False, False, (CHUNKED, True)),
        (False, 200, True, None, b"chunked, gzip", False, False, (UNTIL_CLOSE, False)),
        (False, 200, True, None, b"gzip", False, False, (UNTIL_CLOSE, False)),
        # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means closing after the message.
        (False, 200, False, None, b"chunked", False, True, (CHUNKED, False)),
        # Rule 6: Content-Length.
        (False, 200, True, 7, None, False, False, (LENGTH, True)),
        (False, 200, True, 0, None, False, False, (NO_BODY, True)),
        # Rule 8: neither field: until close, never reused.
        (False, 200, True, None, None, False, False, (UNTIL_CLOSE, False)),
        # RFC 9112 §9.3: persistence.
        (False, 200, True, 7, None, True, False, (LENGTH, False)),
        (False, 200, False, 7, None, False, False, (LENGTH, False)),
        (False, 200, False, 7, None, False, True, (LENGTH, True)),
        (False, 200, False, 7, None, True, True, (LENGTH, False)),
    ],
)
def test_response_framing(case: Case) -> None:
    is_head, status, http_11, length, te, close, keep, expected = case
    assert (
        response_framing(
            is_head=is_head,
            status=status,
            http_11=http_11,
            content_length=length,
            transfer_encoding=te,
            close=close,
            keep_alive=keep,
        )
        == expected
    )


@pytest.mark.parametrize(
    ("value", "chunked"),
    [(b"chunked", True), (b"CHUNKED", True), (b"gzip,chunked", True), (b"chunked;q=1", False)],
)
def test_final_coding(value: bytes, chunked: bool) -> None:
    assert final_coding_is_chunked(value) is chunked


@pytest.mark.parametrize(
    ("method", "has_body", "length", "expected"),
    [
        ("GET", False, None, b"\r\n"),
        ("POST", False, None, b"Content-Length: 0\r\n\r\n"),
        ("PATCH", False, None, b"Content-Length: 0\r\n\r\n"),
        ("DELETE", False, 0, b"Content-Length: 0\r\n\r\n"),
        ("POST", True, 12, b"Content-Length: 12\r\n\r\n"),
        ("POST", True, None, b"Transfer-Encoding: chunked\r\n\r\n"),
    ],
)
def test_framing_fields(method: str, has_body: bool, length: int | None, expected: bytes) -> None:
    assert framing_fields(method, has_body, length) == expected


def test_head_is_one_bytes_object_in_wire_order() -> None:
    head, close = build_head(b"GET", b"/a?b", b"h.example", [(b"A", b"1"), (b"a", b"2")], b"\r\n")
    assert head == b"GET /a?b HTTP/1.1\r\nHost: h.example\r\nA: 1\r\na: 2\r\n\r\n"
    assert close is False


@pytest.mark.parametrize(
    ("fields", "close"),
    [
        ([(b"Connection", b"close")], True),
        ([(b"connection", b"Upgrade, Close")], True),
        ([(b"Connection", b"keep-alive")], False),
        ([(b"X-Connection", b"close")], False),
    ],
)
def test_head_notices_connection_close(fields: list[tuple[bytes, bytes]], close: bool) -> None:
    assert build_head(b"GET", b"/", b"h", fields, b"\r\n")[1] is close


def test_method_bytes() -> None:
    assert method_bytes("GET") is method_bytes("GET")
    assert method_bytes("PROPFIND") == b"PROPFIND"
