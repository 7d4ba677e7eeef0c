"""The gateway as operators run it: a child process, its signals, its memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.harness import (
    LOCAL,
    REPO,
    eventually,
    log_events,
    serve_app,
    start_gateway_process,
)
from tests.security.wire import close_writer, read_until_close

MIB = 1024 * 1024


def write_config(
    tmp_path: Path,
    upstream_port: int,
    max_body: str = "10MiB",
    access_log: bool = False,
    drain: str = "10s",
) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            server:
              listen: "127.0.0.1:0"
              timeouts: {{ drain: {drain} }}
              limits: {{ max_body: {max_body} }}
            admin:
              listen: "127.0.0.1:0"
            logging:
              access_log: {"true" if access_log else "false"}
            upstreams:
              app:
                targets: ["http://127.0.0.1:{upstream_port}"]
            routes:
              - name: all
                upstream: app
            """
        )
    )
    return path


async def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(1.0)
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/slow", slow)
    async with serve_app(app) as upstream_port:
        gateway = start_gateway_process(
            write_config(tmp_path, upstream_port), tmp_path / "gateway.log"
        )
        try:
            async with aiohttp.ClientSession() as client:
                pending = asyncio.create_task(client.get(f"http://{LOCAL}:{gateway.port}/slow"))
                await asyncio.wait_for(started.wait(), 10)
                gateway.terminate()
                async with await pending as response:
                    assert response.status == 200
                    assert await response.text() == "finished"
                    assert response.headers["Connection"] == "close"
            code = await asyncio.to_thread(gateway.process.wait, 15)
            assert code == 0
            # After the drain nothing listens any more.
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(LOCAL, gateway.port)
        finally:
            if gateway.process.poll() is None:
                gateway.process.kill()
                gateway.process.wait()


def _events(log_path: Path, name: str) -> list[dict[str, object]]:
    return [event for event in log_events(log_path) if event.get("event") == name]


async def _all_workers_draining(log_path: Path) -> None:
    (listening,) = _events(log_path, "listening")
    workers = int(str(listening["workers"]))
    await eventually(
        lambda: _true(len(_events(log_path, "worker_draining")) == workers),
        "every worker to begin its drain",
    )


async def _true(value: bool) -> bool:
    return value


async def test_a_connection_attempted_during_the_drain_is_not_served(tmp_path: Path) -> None:
    """HARDENING.md §H, stop accepting: while a slow request drains, a new connection is
    refused (or closed without an answer), and its request never reaches the upstream."""
    started = asyncio.Event()
    finish = asyncio.Event()
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path == "/slow":
            started.set()
            await asyncio.wait_for(finish.wait(), 10)
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    async with serve_app(app) as upstream_port:
        log_path = tmp_path / "gateway.log"
        gateway = start_gateway_process(write_config(tmp_path, upstream_port), log_path)
        try:
            async with aiohttp.ClientSession() as client:
                pending = asyncio.create_task(client.get(f"http://{LOCAL}:{gateway.port}/slow"))
                await asyncio.wait_for(started.wait(), 10)
                gateway.terminate()
                await _all_workers_draining(log_path)

                # The slow request is still in flight: the drain has not ended.
                assert not pending.done()
                try:
                    reader, writer = await asyncio.open_connection(LOCAL, gateway.port)
                except ConnectionRefusedError:
                    answer = b""
                else:
                    try:
                        writer.write(b"GET /late HTTP/1.1\r\nHost: a\r\n\r\n")
                        with contextlib.suppress(ConnectionError):
                            await writer.drain()
                        answer, closed, _ = await read_until_close(reader)
                        assert closed
                    finally:
                        await close_writer(writer)
                assert answer == b""

                finish.set()
                async with await pending as response:
                    assert response.status == 200
                    assert await response.text() == "finished"
            assert await asyncio.to_thread(gateway.process.wait, 15) == 0
            assert seen == ["/slow"]
        finally:
            finish.set()
            if gateway.process.poll() is None:
                gateway.process.kill()
                gateway.process.wait()


async def test_a_request_outlasting_the_drain_is_cut_at_the_deadline_and_exits_0(
    tmp_path: Path,
) -> None:
    """HARDENING.md §H, exit 0 within the drain time: a request still running when
    ``server.timeouts.drain`` ends is cut there, and the process exits 0 by itself (no
    worker is killed)."""
    drain = 1.0
    started = asyncio.Event()

    async def endless(_: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(60)
        return web.Response(text="never")

    app = web.Application()
    app.router.add_get("/endless", endless)
    async with serve_app(app) as upstream_port:
        log_path = tmp_path / "gateway.log"
        config = write_config(tmp_path, upstream_port, drain=f"{drain}s")
        gateway = start_gateway_process(config, log_path)
        try:
            reader, writer = await asyncio.open_connection(LOCAL, gateway.port)
            try:
                writer.write(b"GET /endless HTTP/1.1\r\nHost: a\r\n\r\n")
                await writer.drain()
                await asyncio.wait_for(started.wait(), 10)
                signalled = time.monotonic()
                gateway.terminate()
                answer, closed, _ = await read_until_close(reader, idle=drain + 10)
                cut = time.monotonic() - signalled
            finally:
                await close_writer(writer)
            code = await asyncio.to_thread(gateway.process.wait, 15)
            exited = time.monotonic() - signalled
        finally:
            if gateway.process.poll() is None:
                gateway.process.kill()
                gateway.process.wait()
    # Cut at the deadline: no answer (none had begun), the connection closed.
    assert closed
    assert answer == b""
    assert drain <= cut < drain + 3.0, cut
    # Out by itself soon after, with 0; the supervisor never had to kill a worker.
    assert code == 0
    assert exited < drain + 3.0, exited
    assert _events(log_path, "worker_killed") == []
    assert len(_events(log_path, "worker_stopped")) >= 1


async def test_admin_health_endpoints_and_access_log(tmp_path: Path) -> None:
    log_path = tmp_path / "gateway.log"
    async with serve_app(web.Application()) as upstream_port:
        gateway = start_gateway_process(
            write_config(tmp_path, upstream_port, access_log=True), log_path
        )
        try:
            async with aiohttp.ClientSession() as client:
                for path, body in (("/healthz", "ok"), ("/readyz", "ready")):
                    async with client.get(f"http://{LOCAL}:{gateway.admin_port}{path}") as r:
                        assert r.status == 200
                        assert (await r.json())["status"] == body
                # The public port does not serve admin endpoints: it routes them upstream.
                async with client.get(
                    f"http://{LOCAL}:{gateway.port}/healthz", headers={"X-Request-ID": "log-me"}
                ) as r:
                    assert r.status == 404
                    assert r.headers.get("Via") == "1.1 gateway"
        finally:
            gateway.terminate()
            assert await asyncio.to_thread(gateway.process.wait, 15) == 0
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if "{" in line]
        access = [line for line in lines if line.get("request_id") == "log-me"]
        assert len(access) == 1
        line = access[0]
        assert set(line) >= {
            "timestamp", "event", "request_id", "client_ip", "method", "path", "route",
            "upstream", "status", "bytes_in", "bytes_out", "duration_ms", "upstream_ms",
            "trace_id", "rate_limit", "protocol",
        }  # fmt: skip
        assert line["event"] == "access"
        assert line["protocol"] == "http1"
        assert line["status"] == 404
        assert line["route"] == "all"
        assert line["upstream"] == "app"
        assert line["path"] == "/healthz"
        assert line["method"] == "GET"
        assert line["client_ip"] == "127.0.0.1"
        assert line["bytes_in"] == 0
        assert line["bytes_out"] > 0
        assert line["duration_ms"] >= line["upstream_ms"] >= 0
        assert len(line["trace_id"]) == 32
        assert line["rate_limit"] is None  # the route has no rate limit


def test_refuses_to_start_without_the_c_parser(tmp_path: Path) -> None:
    config = write_config(tmp_path, 9)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "C parser" in result.stderr


@pytest.fixture
async def bulk_upstream() -> AsyncIterator[int]:
    """Serves /download/N (N MiB of generated bytes) and counts what /upload receives."""
    block = b"\xab" * MIB

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["mib"])
        response = web.StreamResponse()
        response.content_length = size * MIB
        await response.prepare(request)
        for _ in range(size):
            await response.write(block)
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total})

    app = web.Application(client_max_size=0)
    app.router.add_get("/download/{mib}", download)
    app.router.add_post("/upload", upload)
    async with serve_app(app) as port:
        yield port


@pytest.mark.slow
async def test_512_mib_download_and_256_mib_upload_stay_under_150_mb_rss(
    tmp_path: Path, bulk_upstream: int
) -> None:
    config = write_config(tmp_path, bulk_upstream, max_body="300MiB")
    gateway = start_gateway_process(config, tmp_path / "gateway.log")
    try:
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as client:
            received = 0
            async with client.get(f"http://{LOCAL}:{gateway.port}/download/512") as response:
                assert response.status == 200
                async for chunk in response.content.iter_any():
                    received += len(chunk)
            assert received == 512 * MIB

            async def generate() -> AsyncIterator[bytes]:
                block = b"\xcd" * MIB
                for _ in range(256):
                    yield block

            async with client.post(
                f"http://{LOCAL}:{gateway.port}/upload", data=generate()
            ) as response:
                assert response.status == 200
                assert (await response.json())["received"] == 256 * MIB
        peak = gateway.peak_rss_bytes()
        assert peak < 150 * MIB, f"peak RSS {peak / MIB:.1f} MiB"
    finally:
        gateway.terminate()
        assert await asyncio.to_thread(gateway.process.wait, 15) == 0


@pytest.mark.slow
async def test_a_client_that_stops_reading_holds_the_upstream_back(
    tmp_path: Path, bulk_upstream: int
) -> None:
    """Backpressure end to end: a stalled reader must not make the gateway buffer the body."""
    gateway = start_gateway_process(write_config(tmp_path, bulk_upstream), tmp_path / "gw.log")
    try:
        timeout = aiohttp.ClientTimeout(total=300)
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=connector) as client,
            client.get(
                f"http://{LOCAL}:{gateway.port}/download/512", read_bufsize=64 * 1024
            ) as response,
        ):
            received = len(await response.content.readexactly(MIB))
            # Unbuffered, the whole 512 MiB would cross loopback in well under this pause.
            await asyncio.sleep(2)
            stalled_peak = gateway.peak_rss_bytes()
            async for chunk in response.content.iter_any():
                received += len(chunk)
        assert received == 512 * MIB
        assert stalled_peak < 150 * MIB, f"peak RSS {stalled_peak / MIB:.1f} MiB while stalled"
    finally:
        gateway.terminate()
        assert await asyncio.to_thread(gateway.process.wait, 15) == 0
