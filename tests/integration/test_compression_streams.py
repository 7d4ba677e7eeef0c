"""Compression of streams: Server-Sent Events arrive as produced, and a large body streams
through a real `gateway run` with its memory flat."""

from __future__ import annotations

import asyncio
import textwrap
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.app import RunningGateway, start
from gateway.config.model import CompressionConfig, RouteConfig
from tests.harness import LOCAL, gateway_config, serve_app, start_gateway_process, upstream_to

MIB = 1024 * 1024


async def test_the_first_event_arrives_before_the_stream_ends(
    gateways: list[RunningGateway],
) -> None:
    first_seen = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        # The second event only once the client decoded the first: a stage that waited for
        # a compression block to fill would never let it.
        await asyncio.wait_for(first_seen.wait(), 5)
        await response.write(b"data: second\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/events", events)
    async with serve_app(app) as port:
        route = RouteConfig(
            name="sse", upstream="origin", compression=CompressionConfig(min_size=0)
        )
        gateway = await start(gateway_config([upstream_to("origin", port)], [route]))
        gateways.append(gateway)
        url = f"http://{LOCAL}:{gateway.address[1]}/events"
        decoder = zlib.decompressobj(16 + 15)
        received = b""
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.get(url, headers={"Accept-Encoding": "gzip"}) as response,
        ):
            assert response.headers["Content-Encoding"] == "gzip"
            async for chunk in response.content.iter_any():
                received += decoder.decompress(chunk)
                if received == b"data: first\n\n":
                    first_seen.set()
        assert received + decoder.flush() == b"data: first\n\ndata: second\n\n"
        assert first_seen.is_set()


@pytest.fixture
async def json_stream() -> AsyncIterator[int]:
    """An upstream answering /big/N with N MiB of JSON-like text, 64 KiB at a time."""

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["mib"])
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = size * MIB
        await response.prepare(request)
        block = (b'{"id": 12345, "name": "a compressible record"},' * 2000)[: 64 * 1024]
        for _ in range(size * 16):
            await response.write(block)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/big/{mib}", big)
    async with serve_app(app) as port:
        yield port


@pytest.mark.slow
async def test_ten_mib_compressed_keeps_gateway_memory_flat(
    tmp_path: Path, json_stream: int
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            server: {{listen: "127.0.0.1:0"}}
            admin: {{listen: "127.0.0.1:0"}}
            logging: {{access_log: false}}
            upstreams:
              app: {{targets: ["http://127.0.0.1:{json_stream}"]}}
            routes:
              - {{name: all, upstream: app, compression: {{algorithms: [gzip]}}}}
            """
        )
    )
    gateway = start_gateway_process(config, tmp_path / "gateway.log")
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as client:

            async def download(mib: int) -> tuple[int, int]:
                decoder = zlib.decompressobj(16 + 15)
                wire = plain = 0
                async with client.get(
                    f"http://{LOCAL}:{gateway.port}/big/{mib}",
                    headers={"Accept-Encoding": "gzip"},
                ) as response:
                    assert response.headers["Content-Encoding"] == "gzip"
                    async for chunk in response.content.iter_any():
                        wire += len(chunk)
                        plain += len(decoder.decompress(chunk))
                return wire, plain + len(decoder.flush())

            await download(1)  # warm: the pool, the encoder code, the first allocations
            before = gateway.peak_rss_bytes()
            wire, plain = await download(10)
            growth = gateway.peak_rss_bytes() - before
        assert plain == 10 * MIB
        assert wire < plain / 10
        # Holding the body would take 10 MiB and more; streaming takes a chunk or two.
        assert growth < 6 * MIB, f"peak RSS grew {growth / MIB:.1f} MiB"
    finally:
        gateway.terminate()
        assert await asyncio.to_thread(gateway.process.wait, 15) == 0
