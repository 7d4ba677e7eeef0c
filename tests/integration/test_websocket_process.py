"""WebSocket relays through `gateway run` (a supervisor and its worker), as operators run it:
a flood towards a client that does not read, and SIGTERM."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web

from tests.harness import LOCAL, GatewayProcess, serve_app, start_gateway_process

MIB = 1 << 20
MESSAGE = 64 * 1024
FLOOD = 300 * MIB


class Flooder:
    """An upstream that sends FLOOD bytes in MESSAGE-sized messages once asked."""

    def __init__(self) -> None:
        self.sent = 0
        self.close_codes: list[int | None] = []
        self.closed = asyncio.Event()

    async def ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * MIB)
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT and message.data == "flood":
                payload = bytes(MESSAGE)
                while self.sent < FLOOD:
                    await ws.send_bytes(payload)
                    self.sent += MESSAGE
            elif message.type == WSMsgType.TEXT:
                await ws.send_str(message.data)
        self.close_codes.append(ws.close_code)
        self.closed.set()
        return ws


@pytest.fixture
async def flooder() -> AsyncIterator[tuple[Flooder, int]]:
    upstream = Flooder()
    app = web.Application()
    app.router.add_get("/ws", upstream.ws)
    async with serve_app(app) as port:
        yield upstream, port


def start_relaying_gateway(
    tmp_path: Path, port: int, workers: int = 1, websocket: str = "enabled: true"
) -> GatewayProcess:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            server: {{listen: "127.0.0.1:0", workers: {workers}, timeouts: {{drain: 10s}}}}
            admin: {{listen: "127.0.0.1:0"}}
            logging: {{access_log: false}}
            upstreams:
              app: {{targets: ["http://127.0.0.1:{port}"]}}
            routes:
              - {{name: live, upstream: app, websocket: {{{websocket}}}}}
            """
        )
    )
    return start_gateway_process(config, tmp_path / "gateway.log")


async def stalled(upstream: Flooder, quiet: float = 0.5, patience: float = 30.0) -> None:
    """Wait until the upstream's sending has stopped moving (TCP backpressure reached it)."""
    deadline = time.monotonic() + patience
    last = -1
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        if upstream.sent == last:
            return
        last = upstream.sent
    raise AssertionError("the upstream never stalled")


@pytest.mark.slow
async def test_a_flood_towards_a_client_that_does_not_read_keeps_memory_flat(
    tmp_path: Path, flooder: tuple[Flooder, int]
) -> None:
    upstream, port = flooder
    gateway = start_relaying_gateway(tmp_path, port)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://{LOCAL}:{gateway.port}/ws") as ws,
        ):
            await ws.send_str("warm")
            assert await ws.receive_str(timeout=5) == "warm"
            before = gateway.peak_rss_bytes()
            await ws.send_str("flood")
            # The client reads nothing: the upstream must stall long before 300 MiB.
            await stalled(upstream)
            assert upstream.sent < FLOOD / 4
            held = gateway.peak_rss_bytes() - before
            # Now it reads: everything arrives, and the flood completes.
            received = 0
            while received < FLOOD:
                message = await ws.receive(timeout=30)
                assert message.type == WSMsgType.BINARY, message
                received += len(message.data)
            assert received == FLOOD
            assert upstream.sent == FLOOD
            growth = gateway.peak_rss_bytes() - before
        assert held < 64 * MIB, f"peak RSS grew {held / MIB:.1f} MiB while stalled"
        assert growth < 64 * MIB, f"peak RSS grew {growth / MIB:.1f} MiB over the flood"
    finally:
        gateway.terminate()
        assert await asyncio.to_thread(gateway.process.wait, 30) == 0


async def test_sigterm_closes_both_sides_with_1001(
    tmp_path: Path, flooder: tuple[Flooder, int]
) -> None:
    upstream, port = flooder
    gateway = start_relaying_gateway(tmp_path, port)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://{LOCAL}:{gateway.port}/ws") as ws,
        ):
            await ws.send_str("hello")
            assert await ws.receive_str(timeout=5) == "hello"
            started = time.monotonic()
            gateway.terminate()
            message = await ws.receive(timeout=10)
            assert (message.type, message.data) == (WSMsgType.CLOSE, WSCloseCode.GOING_AWAY)
            await asyncio.wait_for(upstream.closed.wait(), 10)
            assert upstream.close_codes == [WSCloseCode.GOING_AWAY]
        assert await asyncio.to_thread(gateway.process.wait, 15) == 0
        # Well within the drain time (10 s): the relays closed, nothing waited for them.
        assert time.monotonic() - started < 10
    finally:
        if gateway.process.poll() is None:
            gateway.process.kill()


async def test_a_client_cap_holds_across_workers(
    tmp_path: Path, flooder: tuple[Flooder, int]
) -> None:
    """Two workers share the port; a client's connections land on either. Its one allowed
    WebSocket counts on both: every further attempt is refused, whichever worker takes it."""
    _, port = flooder
    gateway = start_relaying_gateway(tmp_path, port, workers=2, websocket="max_per_client: 1")
    target = f"http://{LOCAL}:{gateway.port}/ws"
    try:
        async with aiohttp.ClientSession() as session:
            first = await session.ws_connect(target)
            for _ in range(12):  # new connections: the kernel spreads them over both workers
                connector = aiohttp.TCPConnector(force_close=True)
                async with aiohttp.ClientSession(connector=connector) as fresh:
                    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                        await fresh.ws_connect(target)
                    assert refused.value.status == 429
            await first.close()
            # The slot is back, on whichever worker the next one lands.
            for _ in range(50):
                try:
                    second = await session.ws_connect(target)
                    break
                except aiohttp.WSServerHandshakeError:
                    await asyncio.sleep(0.1)
            await second.send_str("hello")
            assert await second.receive_str(timeout=5) == "hello"
            await second.close()
    finally:
        gateway.terminate()
        assert await asyncio.to_thread(gateway.process.wait, 30) == 0
