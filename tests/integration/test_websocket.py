"""WebSocket relaying end to end (issue 8): a real aiohttp WebSocket upstream, a real gateway,
and real aiohttp WebSocket clients (and a raw socket where a client must misbehave)."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web

from gateway.app import RunningGateway, start
from gateway.config.model import RouteConfig, ServerConfig, ServerLimits, WebSocketConfig
from gateway.websocket.frames import OP_BINARY
from tests.harness import LOCAL, closed_port, gateway_config, serve_app, upstream_to
from tests.integration.test_observability import scrape


class Upstream:
    """A WebSocket upstream: echoes, closes on request, records what it saw."""

    def __init__(self) -> None:
        self.handshakes: list[dict[str, str]] = []
        self.closes: list[tuple[int | None, str]] = []
        self.sockets: list[web.WebSocketResponse] = []
        self.closed = asyncio.Event()

    async def ws(self, request: web.Request) -> web.StreamResponse:
        self.handshakes.append(dict(request.headers))
        ws = web.WebSocketResponse(protocols=("chat", "v2.chat"), max_msg_size=64 << 20)
        await ws.prepare(request)
        self.sockets.append(ws)
        if request.query.get("greet"):
            await ws.send_str("welcome")  # right after the 101, before any client message
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                if message.data.startswith("flood:"):
                    # Send N 16 KiB messages, whether or not anyone reads them.
                    for _ in range(int(message.data[6:])):
                        await ws.send_bytes(bytes(16384))
                    continue
                if message.data.startswith("close:"):
                    _, code, reason = message.data.split(":", 2)
                    await ws.close(code=int(code), message=reason.encode())
                    break
                await ws.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        self.closes.append((ws.close_code, ""))
        self.closed.set()
        return ws

    async def plain(self, request: web.Request) -> web.Response:
        return web.json_response({"plain": True, "upgrade": request.headers.get("Upgrade")})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self.ws)
        app.router.add_get("/refuse", self.plain)
        return app


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, int]]:
    recorder = Upstream()
    async with serve_app(recorder.app()) as port:
        yield recorder, port


async def relay_gateway(
    gateways: list[RunningGateway],
    port: int,
    server: ServerConfig | None = None,
    name: str = "live",
    **options: object,
) -> RunningGateway:
    config = WebSocketConfig(**options)  # type: ignore[arg-type]
    route = RouteConfig(name=name, upstream="origin", websocket=config)
    gateway = await start(gateway_config([upstream_to("origin", port)], [route], server))
    gateways.append(gateway)
    return gateway


def url(gateway: RunningGateway, path: str = "/ws") -> str:
    return f"http://{LOCAL}:{gateway.address[1]}{path}"


async def test_text_and_binary_messages_echo_through_the_relay(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = upstream
    gateway = await relay_gateway(gateways, port)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            url(gateway), protocols=("v2.chat", "chat"), headers={"Origin": "https://app.example"}
        ) as ws,
    ):
        assert ws.protocol == "v2.chat"
        await ws.send_str("héllo")
        assert await ws.receive_str(timeout=5) == "héllo"
        payload = os.urandom(100_000)
        await ws.send_bytes(payload)
        assert await ws.receive_bytes(timeout=5) == payload
        await ws.ping(b"are you there")
        await ws.send_str("after ping")
        assert await ws.receive_str(timeout=5) == "after ping"
    handshake = recorder.handshakes[0]
    # The upstream got the gateway's own handshake, with the client's end-to-end fields.
    assert handshake["Origin"] == "https://app.example"
    assert handshake["Sec-WebSocket-Protocol"] == "v2.chat, chat"
    assert "X-Forwarded-For" in handshake
    assert handshake["Via"] == "1.1 gateway"


async def test_close_codes_pass_both_ways(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = upstream
    gateway = await relay_gateway(gateways, port)
    async with aiohttp.ClientSession() as session:
        # The upstream closes: its code and reason reach the client.
        async with session.ws_connect(url(gateway)) as ws:
            await ws.send_str("close:4001:upstream says bye")
            message = await ws.receive(timeout=5)
            assert message.type == WSMsgType.CLOSE
            assert (message.data, message.extra) == (4001, "upstream says bye")
        # The client closes: its code reaches the upstream.
        recorder.closed.clear()
        async with session.ws_connect(url(gateway)) as ws:
            await ws.send_str("ping")
            assert await ws.receive_str(timeout=5) == "ping"
            await ws.close(code=4002, message=b"client says bye")
            # aiohttp's server answers any Close with 1000: that answer is relayed back.
            assert ws.close_code == 1000
        await asyncio.wait_for(recorder.closed.wait(), 5)
        assert recorder.closes[-1][0] == 4002


async def test_an_oversized_message_closes_with_1009(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = upstream
    gateway = await relay_gateway(gateways, port, max_message_size=1000)
    async with aiohttp.ClientSession() as session, session.ws_connect(url(gateway)) as ws:
        await ws.send_bytes(b"x" * 1000)
        assert await ws.receive_bytes(timeout=5) == b"x" * 1000
        await ws.send_bytes(b"x" * 1001)
        message = await ws.receive(timeout=5)
        assert message.type == WSMsgType.CLOSE
        assert message.data == WSCloseCode.MESSAGE_TOO_BIG
    # The upstream was told the client went away.
    await asyncio.wait_for(recorder.closed.wait(), 5)
    assert recorder.closes[-1][0] == WSCloseCode.GOING_AWAY


async def test_a_huge_announced_frame_closes_with_1009_at_once(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    """A raw client announces a 1 TiB frame and sends nothing more: 1009 comes back without
    the gateway waiting for (or allocating) the payload."""
    _, port = upstream
    gateway = await relay_gateway(gateways, port)
    reader, writer = await asyncio.open_connection(LOCAL, gateway.address[1])
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    mask = os.urandom(4)
    writer.write(bytes((0x80 | OP_BINARY, 0x80 | 127)) + (1 << 40).to_bytes(8, "big") + mask)
    frame = await asyncio.wait_for(reader.readexactly(4), 5)
    assert frame[0] == 0x88  # FIN + close
    assert int.from_bytes(frame[2:4], "big") == 1009
    writer.close()


async def test_an_upgrade_answered_200_opens_no_tunnel(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    _, port = upstream
    gateway = await relay_gateway(gateways, port)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(url(gateway, "/refuse"))
        assert caught.value.status == 200
    # And the connection goes on as HTTP: a raw client sees the plain answer, then can send
    # another request on the same connection.
    reader, writer = await asyncio.open_connection(LOCAL, gateway.address[1])
    key = base64.b64encode(os.urandom(16))
    upgrade = (
        b"GET /refuse HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    writer.write(upgrade + b"GET /refuse HTTP/1.1\r\nHost: a\r\n\r\n")
    for expected in (b'"upgrade": "websocket"', b'"upgrade": null'):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        # The upstream saw a WebSocket handshake the first time, a plain GET the second.
        assert expected in body
    writer.close()


async def test_caps_per_route_and_per_client(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    _, port = upstream
    gateway = await relay_gateway(gateways, port, max_connections=2, max_per_client=1)
    async with aiohttp.ClientSession() as session:
        first = await session.ws_connect(url(gateway))
        # Same client IP (loopback): the per-client cap answers 429 before any 101.
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(url(gateway))
        assert caught.value.status == 429
        await first.close()
        # The slot is free again once the relay ended.
        for _ in range(50):
            if gateway.websockets.total == 0:
                break
            await asyncio.sleep(0.05)
        second = await session.ws_connect(url(gateway))
        await second.send_str("still works")
        assert await second.receive_str(timeout=5) == "still works"
        await second.close()


@pytest.mark.parametrize("cap", ["route", "global"])
async def test_the_route_and_global_caps_answer_503(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway], cap: str
) -> None:
    _, port = upstream
    if cap == "route":
        gateway = await relay_gateway(gateways, port, max_connections=1)
    else:
        server = ServerConfig(limits=replace(ServerLimits(), max_websockets=1))
        gateway = await relay_gateway(gateways, port, server=server)
    async with aiohttp.ClientSession() as session:
        first = await session.ws_connect(url(gateway))
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(url(gateway))
        assert caught.value.status == 503
        await first.close()


async def test_a_reload_never_cuts_an_established_relay(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    _, port = upstream
    gateway = await relay_gateway(gateways, port, max_message_size=1000)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url(gateway))
        # The new config drops WebSockets from the route altogether.
        plain = RouteConfig(name="live", upstream="origin")
        gateway.reload(gateway_config([upstream_to("origin", port)], [plain]))
        # The open relay finishes on its old route, its old limits included.
        await ws.send_str("still relayed")
        assert await ws.receive_str(timeout=5) == "still relayed"
        await ws.send_bytes(b"x" * 1001)
        message = await ws.receive(timeout=5)
        assert (message.type, message.data) == (WSMsgType.CLOSE, WSCloseCode.MESSAGE_TOO_BIG)
        # A new upgrade follows the new config: forwarded as a plain request.
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(url(gateway))


async def test_draining_closes_both_sides_with_1001(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = upstream
    gateway = await relay_gateway(gateways, port)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url(gateway))
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "hello"
        drained = asyncio.create_task(gateway.drain(5.0))
        message = await ws.receive(timeout=5)
        assert (message.type, message.data) == (WSMsgType.CLOSE, WSCloseCode.GOING_AWAY)
        await asyncio.wait_for(recorder.closed.wait(), 5)
        assert recorder.closes[-1][0] == WSCloseCode.GOING_AWAY
        await asyncio.wait_for(drained, 10)
        gateways.remove(gateway)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked frame from the gateway (raw client side)."""
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(size)


async def raw_upgrade(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def test_a_silent_client_is_pinged_then_closed(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = upstream
    gateway = await relay_gateway(gateways, port, idle_timeout=1.0)
    reader, writer = await raw_upgrade(gateway.address[1])
    try:
        # This client never answers: a ping at half the timeout, then 1001.
        opcode, payload = await asyncio.wait_for(read_frame(reader), 3)
        assert opcode == 0x9
        opcode, payload = await asyncio.wait_for(read_frame(reader), 3)
        assert opcode == 0x8
        assert int.from_bytes(payload[:2], "big") == WSCloseCode.GOING_AWAY
        assert payload[2:] == b"idle timeout"
    finally:
        writer.close()
    await asyncio.wait_for(recorder.closed.wait(), 5)


async def test_a_client_that_answers_pings_stays_open(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    _, port = upstream
    gateway = await relay_gateway(gateways, port, idle_timeout=0.6)
    async with aiohttp.ClientSession() as session, session.ws_connect(url(gateway)) as ws:
        # aiohttp answers pings (autoping) while something waits in receive(), as a browser
        # always does; the upstream's handler waits in its loop.
        received = asyncio.create_task(ws.receive(timeout=10))
        await asyncio.sleep(2.0)
        assert not received.done()
        await ws.send_str("still here")
        message = await received
        assert (message.type, message.data) == (WSMsgType.TEXT, "still here")


async def test_a_client_dropping_closes_the_upstream_with_1001(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = upstream
    gateway = await relay_gateway(gateways, port)
    reader, writer = await raw_upgrade(gateway.address[1])
    writer.transport.abort()
    await asyncio.wait_for(recorder.closed.wait(), 5)
    assert recorder.closes[-1][0] == WSCloseCode.GOING_AWAY
    for _ in range(50):
        if gateway.websockets.total == 0:
            break
        await asyncio.sleep(0.05)
    assert gateway.websockets.total == 0
    del reader


async def test_an_upstream_dropping_closes_the_client_with_1011(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = upstream
    gateway = await relay_gateway(gateways, port)
    async with aiohttp.ClientSession() as session, session.ws_connect(url(gateway)) as ws:
        await ws.send_str("hi")
        assert await ws.receive_str(timeout=5) == "hi"
        transport = recorder.sockets[-1]._req.transport  # type: ignore[union-attr]
        assert transport is not None
        transport.abort()
        message = await ws.receive(timeout=5)
        assert (message.type, message.data) == (WSMsgType.CLOSE, WSCloseCode.INTERNAL_ERROR)


async def test_permessage_deflate_on_each_hop(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = upstream
    gateway = await relay_gateway(gateways, port, permessage_deflate=True)
    text = '{"event": "tick", "value": 42}' * 200
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url(gateway), compress=15) as ws,
    ):
        # Negotiated without context takeover with the client...
        extensions = ws._response.headers["Sec-WebSocket-Extensions"]
        assert "permessage-deflate" in extensions
        assert "server_no_context_takeover" in extensions
        for _ in range(3):
            await ws.send_str(text)
            assert await ws.receive_str(timeout=5) == text
    # ...and offered to the upstream on its own hop.
    assert "permessage-deflate" in recorder.handshakes[-1]["Sec-WebSocket-Extensions"]


async def test_a_full_queue_closes_both_sides_with_1013_when_so_configured(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = upstream
    gateway = await relay_gateway(
        gateways, port, queue_messages=4, queue_bytes=65536, on_overflow="close"
    )
    async with aiohttp.ClientSession() as session, session.ws_connect(url(gateway)) as ws:
        # 64 MiB the client does not read: kernel buffers fill, then the queue, then 1013.
        await ws.send_str("flood:4096")
        await asyncio.wait_for(recorder.closed.wait(), 30)
        assert recorder.closes[-1][0] == WSCloseCode.TRY_AGAIN_LATER
        while True:
            message = await ws.receive(timeout=10)
            if message.type != WSMsgType.BINARY:
                break
        assert (message.type, message.data) == (WSMsgType.CLOSE, WSCloseCode.TRY_AGAIN_LATER)


async def test_websocket_metrics_count_relays_messages_and_refusals(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    _, port = upstream
    route = f"ws-{uuid.uuid4().hex[:8]}"
    gateway = await relay_gateway(gateways, port, name=route, max_per_client=1)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url(gateway))
        for text in ("one", "two", "three"):
            await ws.send_str(text)
            assert await ws.receive_str(timeout=5) == text
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(url(gateway))
        gateway.flush_metrics()
        for _ in range(40):  # the gauge is sampled once a second
            samples = await scrape(session, gateway)
            if samples.get(f"gateway_websocket_connections{{route={route}}}") == 1:
                break
            await asyncio.sleep(0.05)
        await ws.close()
    up, down = f"direction=to_upstream,route={route}", f"direction=to_client,route={route}"
    assert samples[f"gateway_websocket_connections{{route={route}}}"] == 1
    assert samples[f"gateway_websocket_messages_total{{{up}}}"] == 3
    assert samples[f"gateway_websocket_messages_total{{{down}}}"] == 3
    assert samples[f"gateway_websocket_bytes_total{{{up}}}"] == len("onetwothree")
    assert samples[f"gateway_websocket_rejected_total{{reason=client_limit,route={route}}}"] == 1


async def test_a_greeting_sent_right_after_the_101_reaches_the_client(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    _, port = upstream
    gateway = await relay_gateway(gateways, port)
    async with aiohttp.ClientSession() as session:
        for _ in range(20):  # whether or not the greeting shares a segment with the 101
            async with session.ws_connect(url(gateway, "/ws?greet=1")) as ws:
                assert await ws.receive_str(timeout=5) == "welcome"


async def test_an_upgrade_meeting_a_dead_target_is_relayed_by_the_live_one(
    upstream: tuple[Upstream, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = upstream
    route = RouteConfig(name="live", upstream="origin", websocket=WebSocketConfig())
    origin = upstream_to("origin", closed_port(), port)
    gateway = await start(gateway_config([origin], [route]))
    gateways.append(gateway)
    async with aiohttp.ClientSession() as session:
        # Round robin: one of the two upgrades meets the dead target first.
        for n in range(2):
            async with session.ws_connect(url(gateway)) as ws:
                await ws.send_str(f"hello {n}")
                assert await ws.receive_str(timeout=5) == f"hello {n}"
    assert len(recorder.handshakes) == 2
