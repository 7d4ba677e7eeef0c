"""h2c without prior knowledge: `Upgrade: h2c` (RFC 7540 §3.2) is not honoured, since RFC 9113
§3.1 deprecates it, and a cleartext listener without `http2.h2c` never speaks HTTP/2."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from tests.conformance.conftest import Launch
from tests.conformance.h2client import PREFACE, READ_DEADLINE
from tests.harness import LOCAL, parse_raw_response, raw_exchange

# A client's upgrade request as RFC 7540 §3.2 has it: HTTP2-Settings carries its SETTINGS
# payload (base64url; here SETTINGS_MAX_CONCURRENT_STREAMS 100, SETTINGS_INITIAL_WINDOW_SIZE
# 65535) and is listed in Connection with Upgrade.
_UPGRADE = (
    b"GET /upgrade HTTP/1.1\r\n"
    b"Host: example.test\r\n"
    b"Connection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n"
    b"\r\n"
)


async def _http1_exchange(port: int, request: bytes) -> bytes:
    """One HTTP/1.1 request on a fresh connection; the response (Content-Length framed)."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_DEADLINE)
        _, fields, _ = parse_raw_response(head)
        length = int(fields["content-length"][0])
        body = await asyncio.wait_for(reader.readexactly(length), READ_DEADLINE)
        return head + body
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize("h2c", [True, False], ids=["h2c_listener", "http1_listener"])
async def test_upgrade_h2c_is_answered_over_http1(launch: Launch, h2c: bool) -> None:
    """RFC 9113 §3.1: the "h2c" upgrade token is deprecated; the request is answered over
    HTTP/1.1 (200 from the upstream, no 101), and the upstream never sees Upgrade or
    HTTP2-Settings (hop-by-hop: named in Connection, RFC 9110 §7.6.1)."""
    gateway = await launch(h2c=h2c)
    answer = await _http1_exchange(gateway.addresses[0][1], _UPGRADE)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
    status, _, body = parse_raw_response(answer)
    assert status == 200
    payload = json.loads(body)
    assert payload["target"] == "/upgrade"
    seen = {name.lower() for name, _ in payload["headers"]}
    assert "upgrade" not in seen
    assert "http2-settings" not in seen


async def test_preface_on_listener_without_h2c_is_http1_400(launch: Launch) -> None:
    """A cleartext listener without `http2.h2c` reads the HTTP/2 preface as HTTP/1.1 (method
    PRI, version HTTP/2.0) and refuses it with 400: no SETTINGS, no HTTP/2 at all."""
    gateway = await launch(h2c=False)
    answer = await raw_exchange(gateway.addresses[0][1], PREFACE)
    # An HTTP/2 server's first octets would be a SETTINGS frame's header.
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
    status, fields, _ = parse_raw_response(answer)
    assert status == 400
    assert fields["connection"] == ["close"]
