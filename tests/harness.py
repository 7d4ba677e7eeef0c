"""Shared test helpers: configs on ephemeral ports, in-process and subprocess gateways, raw sockets.

Everything runs on real sockets on 127.0.0.1; nothing here mocks the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.config.model import (
    AdminConfig,
    GatewayConfig,
    ListenAddress,
    LoggingConfig,
    RouteConfig,
    ServerConfig,
    Target,
    UpstreamConfig,
)

LOCAL = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` from the repository root; its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 15.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` if it never does ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def closed_port() -> int:
    """A loopback port nothing listens on (just released by the OS; connects are refused)."""
    with socket.socket() as sock:
        sock.bind((LOCAL, 0))
        port: int = sock.getsockname()[1]
    return port


def upstream_to(name: str, *ports: int, **options: object) -> UpstreamConfig:
    """An upstream config whose targets are local ports."""
    targets = tuple(Target("http", LOCAL, port) for port in ports)
    return replace(UpstreamConfig(name=name, targets=targets), **options)  # type: ignore[arg-type]


def gateway_config(
    upstreams: Sequence[UpstreamConfig],
    routes: Sequence[RouteConfig] | None = None,
    server: ServerConfig | None = None,
) -> GatewayConfig:
    """A config that listens on ephemeral loopback ports with the access log off."""
    if routes is None:
        routes = [RouteConfig(name="default", upstream=upstreams[0].name)]
    base = server or ServerConfig()
    return GatewayConfig(
        upstreams=tuple(upstreams),
        routes=tuple(routes),
        server=replace(
            base,
            listeners=tuple(
                replace(listener, listen=ListenAddress(LOCAL, 0)) for listener in base.listeners
            ),
        ),
        admin=AdminConfig(listen=ListenAddress(LOCAL, 0)),
        logging=LoggingConfig(access_log=False),
    )


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[int]:
    """Serve an aiohttp app on an ephemeral loopback port; yield the port."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, LOCAL, 0).start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def raw_exchange(
    port: int, data: bytes, *, read_timeout: float = 5.0, until_close: bool = True
) -> bytes:
    """Send raw bytes and return everything the server sends until it closes (or times out)."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    try:
        writer.write(data)
        await writer.drain()
        received = bytearray()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), read_timeout)
            except TimeoutError:
                if until_close:
                    raise
                break
            if not chunk:
                break
            received += chunk
        return bytes(received)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def parse_raw_response(data: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    """Split one raw HTTP/1.1 response (Content-Length framed) into status, fields, body."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return status, fields, body


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def log_events(log_path: Path) -> list[dict[str, object]]:
    """The JSON objects among the lines of a log file."""
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def _peak_rss(pid: int) -> int:
    """The kernel's high-water mark of a process's resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("VmHWM missing from /proc status")


@dataclass
class GatewayProcess:
    """`gateway run` in a child process, as operators run it: a supervisor and its workers."""

    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    # Every listener's port, in config order (``port`` is the first's).
    ports: list[int] = dataclasses.field(default_factory=list)

    def peak_rss_bytes(self) -> int:
        """The largest resident-set high-water mark of the supervisor and its workers."""
        pids = [self.process.pid, *children(self.process.pid)]
        peaks = []
        for pid in pids:
            with contextlib.suppress(FileNotFoundError):
                peaks.append(_peak_rss(pid))
        return max(peaks)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)


def start_gateway_process(
    config_path: Path,
    log_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> GatewayProcess:
    """Start `python -m gateway run --config FILE ARGS...` and wait for its `listening` line.

    Its output goes to ``log_path`` (a pipe nobody reads would fill up and stall the gateway).
    The process is killed if it does not start, whatever goes wrong while waiting.
    """
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config_path), *args],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    log_file.close()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            for event in log_events(log_path):
                if event.get("event") == "listening":
                    port = int(str(event["address"]).rsplit(":", 1)[1])
                    admin_port = int(str(event["admin"]).rsplit(":", 1)[1])
                    addresses = event.get("addresses") or [event["address"]]
                    assert isinstance(addresses, list)
                    ports = [int(str(address).rsplit(":", 1)[1]) for address in addresses]
                    return GatewayProcess(process, port, admin_port, ports)
            time.sleep(0.05)
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.poll() is None:
        process.kill()
    process.wait()
    raise AssertionError("gateway did not start:\n" + log_path.read_text(errors="replace"))


def echo_app(name: str = "echo") -> web.Application:
    """An upstream that answers with what it received, field by field."""

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        payload = {
            "upstream": name,
            "method": request.method,
            "target": request.raw_path,
            "version": f"{request.version.major}.{request.version.minor}",
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "body": body.decode("latin-1"),
        }
        response = web.json_response(payload)
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        response.headers["Connection"] = "X-Secret"
        response.headers["X-Secret"] = "hop"
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers["X-Request-ID"] = "from-upstream"
        return response

    async def no_content(_: web.Request) -> web.Response:
        return web.Response(status=204)

    async def not_modified(_: web.Request) -> web.Response:
        return web.Response(status=304, headers={"ETag": '"v1"'})

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for index in range(3):
            await response.write(f"part{index};".encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/204", no_content)
    app.router.add_route("*", "/304", not_modified)
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("*", "/stream", stream)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def fields_of(payload: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in payload["headers"] if k.lower() == name.lower()]


async def keepalive_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One GET on an open keep-alive connection; the response head (its body is read and dropped).

    Only for Content-Length framed answers, which is what the echo upstream sends.
    """
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return head
