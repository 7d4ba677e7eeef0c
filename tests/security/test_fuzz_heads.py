"""Hypothesis over request heads against a live gateway and a recording upstream (HARDENING.md §A).

Random request lines, field names and values with CR, LF, NUL, tab and vertical tab in them,
Content-Length and Transfer-Encoding combinations, chunked bodies, pipelined pairs. Each example
is sent on a new connection, the client half-closes, and everything the gateway sends is read
until it closes. Then:

- the gateway never crashes: a well-formed request on a new connection is still answered;
- what it sent is a sequence of well-formed HTTP/1.1 responses, nothing else;
- the upstream never sees a request framed differently from what a strict parser (llhttp, with
  no leniency) finds in the client's bytes: the requests it completed are a prefix of the
  requests llhttp parses, with the same method, target and body, and its own strict parser
  never refused anything the gateway sent.

The gateway and the upstream run on their own uvloop in a thread for the whole module, and the
examples talk to them over blocking sockets: one gateway for 200 examples instead of 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httptools
import pytest
import uvloop
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.app import RunningGateway, start
from gateway.config.model import ServerConfig, ServerTimeouts
from tests.harness import LOCAL, gateway_config, upstream_to
from tests.recording_upstream import RecordingUpstream
from tests.security.wire import parse_responses

# --- the strict reading of the client's bytes ---------------------------------------------------


@dataclass
class Message:
    method: bytes
    target: bytes
    body: bytes = b""


@dataclass
class _Oracle:
    messages: list[Message] = field(default_factory=list)
    _target: bytes = b""
    _body: bytes = b""
    parser: httptools.HttpRequestParser | None = None

    def on_message_begin(self) -> None:
        self._target = b""
        self._body = b""

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        assert self.parser is not None
        self.messages.append(Message(bytes(self.parser.get_method()), self._target, self._body))


def strict_messages(data: bytes) -> list[Message]:
    """The complete requests llhttp finds in ``data`` before anything it refuses.

    Like the gateway, it goes on with a fresh parser after an Upgrade request (answered as a
    plain request when no WebSocket route takes it) and stops after CONNECT.
    """
    oracle = _Oracle()
    while data:
        parser = oracle.parser = httptools.HttpRequestParser(oracle)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if oracle.messages and oracle.messages[-1].method == b"CONNECT":
                break
            offset = int(upgrade.args[0]) if upgrade.args else len(data)
            data = data[offset:]
            continue
        except httptools.HttpParserError:
            pass
        break
    return oracle.messages


def origin_form(target: bytes) -> bytes:
    """What the gateway forwards for a target: the origin-form of an absolute-form."""
    lowered = target[:8].lower()
    for prefix in (b"http://", b"https://"):
        if lowered.startswith(prefix):
            rest = target[len(prefix) :]
            cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=-1)
            path = rest[cut:] if cut >= 0 else b""
            return path if path.startswith(b"/") else b"/" + path
    return target


# --- the gateway, in a thread ---------------------------------------------------------------------


@dataclass
class Live:
    loop: asyncio.AbstractEventLoop
    gateway: RunningGateway
    upstream: RecordingUpstream

    @property
    def port(self) -> int:
        return self.gateway.address[1]


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-gateway", daemon=True)
    thread.start()

    async def begin() -> tuple[RunningGateway, RecordingUpstream]:
        upstream = RecordingUpstream()
        await upstream.__aenter__()
        # Short deadlines: a head or body the client never finishes ends fast.
        timeouts = ServerTimeouts(header_read=1.0, keepalive=1.0, body_progress=1.0, send=2.0)
        config = gateway_config(
            [upstream_to("up", upstream.port)], server=ServerConfig(timeouts=timeouts)
        )
        return await start(config), upstream

    gateway, upstream = asyncio.run_coroutine_threadsafe(begin(), loop).result(10)
    try:
        yield Live(loop, gateway, upstream)
    finally:

        async def end() -> None:
            await gateway.drain(1.0)
            await upstream.__aexit__(None, None, None)

        asyncio.run_coroutine_threadsafe(end(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def exchange(port: int, data: bytes) -> tuple[bytes, bool]:
    """Send ``data``, half-close, read until the gateway closes; (received, closed)."""
    with socket.create_connection((LOCAL, port), timeout=5) as sock:
        with contextlib.suppress(ConnectionError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            return bytes(received), False
    return bytes(received), True


# --- what to send ---------------------------------------------------------------------------------

# Bytes that parsers disagree about, put into names, values, targets and chunk lines.
NASTY = (b"\r", b"\n", b"\x00", b"\t", b"\x0b", b" ", b",", b"\r\n", b"\r\n ")
METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"get", b"CONNECT")
TARGETS = (b"/", b"/a?b=c", b"http://a/x", b"/%00", b"//x", b"/r/cl", b"*", b"a")
VERSIONS = (b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.10", b"http/1.1", b"")
NAMES = (b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade", b"X-A")
VALUES = (
    b"a",
    b"chunked",
    b"gzip, chunked",
    b"chunked, chunked",
    b"identity",
    b"0",
    b"3",
    b"+3",
    b"0x3",
    b"3, 3",
    b"99999999999999999999",
    b"close",
    b"keep-alive",
    b"upgrade",
    b"h2c",
)
SEPARATORS = (b": ", b":", b":\t", b" : ", b":\x0b", b"\t: ")
LINE_ENDS = (b"\r\n", b"\n", b"\r", b"\r\r\n")
_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=10).map(str.encode)


def odds(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in ``one_in`` draws. (Not a float below a threshold: Hypothesis
    favours 0.0 and other boundary values, which would make the rare case the usual one.)"""
    return draw(st.sampled_from(range(one_in))) == one_in // 2


def pick(draw: st.DrawFn, options: tuple[bytes, ...], one_in: int = 5) -> bytes:
    """The first option, else (about once in ``one_in``) any of them: most examples are
    well-formed in most places, so that they get far enough to test something."""
    if not odds(draw, one_in):
        return options[0]
    return draw(st.sampled_from(options))


def sprinkle(draw: st.DrawFn, value: bytes, one_in: int = 10) -> bytes:
    """``value``, or (about once in ``one_in``) with a nasty byte put somewhere in it."""
    if not odds(draw, one_in):
        return value
    at = draw(st.integers(0, len(value)))
    return value[:at] + draw(st.sampled_from(NASTY)) + value[at:]


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    parts = []
    for data in draw(st.lists(st.binary(min_size=1, max_size=12), max_size=3)):
        size = pick(draw, (b"%x" % len(data), b"%X" % (len(data) + 1), b"-1", b" 1", b"0x1"))
        extension = pick(draw, (b"", b";a=b", b";\x00", b";" + b"e" * 40), 3)
        parts.append(sprinkle(draw, size + extension) + b"\r\n" + data + b"\r\n")
    trailer = pick(draw, (b"", b"X-T: 1\r\n", b"Content-Length: 3\r\n", b"Host: b\r\n"), 3)
    return b"".join(parts) + b"0\r\n" + trailer + b"\r\n"


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    end = pick(draw, LINE_ENDS, 10)
    method = pick(draw, METHODS)
    target = sprinkle(draw, pick(draw, TARGETS, 2))
    line = b" ".join(part for part in (method, target, pick(draw, VERSIONS)) if part)
    fields = [] if odds(draw, 5) else [b"Host: a"]
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.one_of(st.sampled_from(NAMES), _TOKEN))
        value = draw(st.binary(max_size=6)) if odds(draw, 4) else draw(st.sampled_from(VALUES))
        fields.append(sprinkle(draw, name) + pick(draw, SEPARATORS) + sprinkle(draw, value))
    kind = draw(st.sampled_from(["none", "length", "chunked", "raw"]))
    body = b""
    if kind == "length":
        body = draw(st.binary(max_size=16))
        fields.append(b"Content-Length: %d" % len(body))
    elif kind == "chunked":
        fields.append(b"Transfer-Encoding: chunked")
        body = draw(chunked_bodies())
    elif kind == "raw":
        body = draw(st.one_of(st.binary(max_size=16), chunked_bodies()))
    order = draw(st.permutations(fields))
    return line + end + b"".join(f + end for f in order) + end + body


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(requests(), min_size=1, max_size=2).map(b"".join))
def test_no_request_head_crashes_the_gateway_or_reaches_the_upstream_reframed(
    live: Live, data: bytes
) -> None:
    upstream = live.upstream
    before = len(upstream.requests)
    rejected = len(upstream.rejected)
    received, closed = exchange(live.port, data)
    assert closed, f"the gateway left the connection open after EOF: {received[:200]!r}"
    responses = parse_responses(received, closed=True)
    forwarded = upstream.requests[before:]
    strict = strict_messages(data)
    # What the examples exercised (pytest --hypothesis-show-statistics).
    event(f"strict parse: {len(strict)} request(s), forwarded: {len(forwarded)}")
    event(f"first answer: {responses[0].status if responses else None}")
    assert len(forwarded) <= len(strict), (data, forwarded)
    for seen, message in zip(forwarded, strict, strict=False):
        assert seen.method == message.method
        assert seen.target == origin_form(message.target)
        assert seen.body == message.body
    assert len(upstream.rejected) == rejected  # never sent the upstream what it refuses
    # Still serving.
    answer, _ = exchange(live.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
