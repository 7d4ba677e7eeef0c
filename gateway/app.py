"""Composition root: build the runtime from a config, serve it, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import http_parser, web

from gateway.admin import AdminState, start_admin
from gateway.config.model import GatewayConfig, ListenAddress
from gateway.observability.access_log import AccessLog, get_logger
from gateway.runtime import Runtime
from gateway.server import Dispatcher, GatewayServer

log = get_logger("gateway")


class StartupError(Exception):
    """The gateway refuses to start (the message says why)."""


def require_c_parser() -> None:
    """Refuse to run on aiohttp's pure-Python HTTP parser (HARDENING.md).

    Nearly every request-smuggling CVE in aiohttp hit only the Python parser; the C parser
    (llhttp) is also several times faster.
    """
    if os.environ.get("AIOHTTP_NO_EXTENSIONS"):
        raise StartupError("AIOHTTP_NO_EXTENSIONS is set: the gateway needs aiohttp's C parser")
    if http_parser.HttpRequestParser is http_parser.HttpRequestParserPy:
        raise StartupError("aiohttp's C parser (llhttp) is not available in this install")


@dataclass
class RunningGateway:
    """A started gateway: its bound addresses and the means to stop it."""

    dispatcher: Dispatcher
    server: GatewayServer
    listener: asyncio.Server
    admin: web.AppRunner
    admin_state: AdminState
    address: tuple[str, int]
    admin_address: tuple[str, int]
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def drain(self, grace: float) -> None:
        """Stop accepting, finish in-flight requests within ``grace`` seconds, close the rest."""
        self.admin_state.draining = True
        self.dispatcher.draining = True
        self.listener.close()
        # Idle keep-alive connections close at once; busy ones after their response.
        await self.server.shutdown(grace)
        await self.dispatcher.runtime.close()
        await self.admin.cleanup()
        self.stopped.set()


def _bind(address: ListenAddress) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
    except OSError as error:
        sock.close()
        problem = f"server.listen: cannot listen on {address}: {error.strerror}"
        raise StartupError(problem) from error
    sock.setblocking(False)
    return sock


async def start(config: GatewayConfig) -> RunningGateway:
    """Bind the public and admin listeners and start serving ``config``."""
    require_c_parser()
    loop = asyncio.get_running_loop()
    runtime = Runtime.build(config)
    access_log = AccessLog() if config.logging.access_log else None
    dispatcher = Dispatcher(runtime, access_log)
    server = GatewayServer(dispatcher, config.server)
    sock = _bind(config.server.listen)
    listener = await loop.create_server(server, sock=sock, backlog=1024)
    bound = sock.getsockname()
    admin_state = AdminState()
    try:
        admin, admin_address = await start_admin(config.admin, admin_state)
    except OSError as error:
        listener.close()
        await runtime.close()
        raise StartupError(
            f"admin.listen: cannot listen on {config.admin.listen}: {error.strerror}"
        ) from error
    log.info(
        "listening",
        address=f"{bound[0]}:{bound[1]}",
        admin=f"{admin_address[0]}:{admin_address[1]}",
        routes=len(config.routes),
        upstreams=len(config.upstreams),
    )
    return RunningGateway(
        dispatcher=dispatcher,
        server=server,
        listener=listener,
        admin=admin,
        admin_state=admin_state,
        address=(bound[0], bound[1]),
        admin_address=admin_address,
    )


async def serve(
    config: GatewayConfig,
    *,
    on_started: Callable[[RunningGateway], Awaitable[None]] | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then drain within ``server.timeouts.drain`` and return 0."""
    gateway = await start(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if on_started is not None:
        await on_started(gateway)
    await stop.wait()
    log.info("draining", timeout_s=config.server.timeouts.drain)
    await gateway.drain(config.server.timeouts.drain)
    log.info("stopped")
    return 0


def run(config: GatewayConfig) -> int:
    """Run the gateway on uvloop (DESIGN.md §1) in this process."""
    import uvloop

    return uvloop.run(serve(config))
