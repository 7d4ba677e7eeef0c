"""Composition root: build the runtime from a config, serve it, reload it, drain on SIGTERM.

`start` serves one config in this process. `gateway run` puts one such process per worker under
`gateway.supervisor`; the demo and the in-process tests call `start`/`serve` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from aiohttp import http_parser, web

from gateway.admin import start_admin
from gateway.cache.backends import CacheStores
from gateway.cache.census import redis_cache_url, run_census
from gateway.cache.purge import parse_purge, purge
from gateway.config.model import GatewayConfig, ListenAddress
from gateway.downstream.accept import ListenerEntry
from gateway.downstream.listener import Listener
from gateway.observability import metrics
from gateway.observability.logging import get_logger
from gateway.observability.request_metrics import DisabledRequestMetrics, RequestMetrics
from gateway.ratelimit.backends import RateLimitBackends
from gateway.runtime import Runtime
from gateway.server import Dispatcher, GatewayServer
from gateway.upstream.pool import UpstreamPool
from gateway.websocket.caps import WebSocketCaps

log = get_logger("gateway")

# How often request metrics are published and the state gauges (connections, in-flight, pool
# sizes, event-loop tasks) sampled.
_SAMPLE_INTERVAL = 1.0


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
    """A started gateway: its bound addresses and the means to reload and stop it."""

    dispatcher: Dispatcher
    server: GatewayServer
    # The first listener (the only one unless server.listeners names more) and all of them.
    listener: Listener
    admin: web.AppRunner | None
    address: tuple[str, int]
    admin_address: tuple[str, int] | None
    sampler: asyncio.Task[None] | None
    # Shared rate-limit tables and Redis clients, kept across reloads.
    rate_limits: RateLimitBackends = field(default_factory=RateLimitBackends)
    # The cache stores, kept across reloads.
    caches: CacheStores = field(default_factory=CacheStores)
    # Open WebSocket relays, counted against the caps; kept across reloads.
    websockets: WebSocketCaps = field(default_factory=WebSocketCaps)
    # Counts the Redis cache store for its gauges (the process with the admin listener only).
    census: asyncio.Task[None] | None = None
    listeners: list[Listener] = field(default_factory=list)
    # What each listener makes of its connections (TLS contexts, PROXY headers, h2c).
    entries: list[ListenerEntry] = field(default_factory=list)
    # The bound address of each listener, in config order.
    addresses: list[tuple[str, int]] = field(default_factory=list)
    draining: bool = False
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _retiring: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def config(self) -> GatewayConfig:
        return self.dispatcher.runtime.config

    def reload(self, config: GatewayConfig) -> None:
        """Serve ``config`` from now on; requests in flight finish on the config they began with.

        Routes, pools and chains change together (one reference swap). Pools the new config does
        not carry over close their idle connections now and busy ones when their response ends.
        Listener and admin addresses are not changed by a reload.
        """
        old = self.dispatcher.runtime
        # Certificates are read first: a file that cannot be loaded fails the reload before
        # anything changed.
        contexts = [
            entry.prepare(config.server.listeners[entry.index])
            if entry.index < len(config.server.listeners)
            else entry.tls
            for entry in self.entries
        ]
        new = Runtime.build(
            config,
            self.dispatcher.metrics,
            self.rate_limits,
            previous=old,
            caches=self.caches,
            websockets=self.websockets,
        )
        self.dispatcher.swap(new)
        for entry, tls in zip(self.entries, contexts, strict=True):
            entry.tls = tls
        # HTTP/2 clients get GOAWAY and reconnect to the new settings and certificates;
        # their open streams finish first.
        self.server.goaway_http2()
        retired = old.pools_to_retire(new)
        if retired:
            task = asyncio.get_running_loop().create_task(_close_pools(retired))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def ready(self) -> tuple[bool, dict[str, object]]:
        return not self.draining, {"draining": self.draining}

    def flush_metrics(self) -> None:
        self.dispatcher.metrics.flush()

    async def purge_cache(self, body: dict[str, object]) -> int:
        return await purge(self.caches.all(), parse_purge(body))

    def config_view(self) -> dict[str, object]:
        from gateway.config.describe import config_hash, redacted_view

        config = self.config
        return {
            "hash": config_hash(config),
            **redacted_view(config),
            # This worker's view of its targets (each worker checks and ejects on its own).
            "upstream_state": {
                name: pool.describe_targets()
                for name, pool in self.dispatcher.runtime.pools.items()
            },
        }

    async def drain(self, grace: float) -> None:
        """Stop accepting, finish in-flight requests within ``grace`` seconds, close the rest."""
        self.draining = True
        self.dispatcher.draining = True
        for listener in self.listeners:
            listener.close()
        # Idle keep-alive connections close at once; busy ones after their response.
        await self.server.shutdown(grace)
        for task in (self.sampler, self.census):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # What the last second observed, so that no request goes uncounted.
        self.dispatcher.metrics.flush()
        await self.dispatcher.runtime.close()
        for task in list(self._retiring):
            await task
        await self.rate_limits.close()
        await self.caches.close()
        self.websockets.close()
        if self.admin is not None:
            await self.admin.cleanup()
        self.stopped.set()


async def _close_pools(pools: list[UpstreamPool]) -> None:
    for pool in pools:
        await pool.close()


def _bind(address: ListenAddress, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            # Workers each bind the same port; the kernel spreads new connections over them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address.host, address.port))
    except OSError as error:
        sock.close()
        problem = f"server.listen: cannot listen on {address}: {error.strerror}"
        raise StartupError(problem) from error
    sock.setblocking(False)
    return sock


async def _publish_metrics(request_metrics: RequestMetrics, sampler: metrics.GaugeSampler) -> None:
    while True:
        request_metrics.flush()
        sampler.sample()
        await asyncio.sleep(_SAMPLE_INTERVAL)


async def start(
    config: GatewayConfig, *, reuse_port: bool = False, admin: bool = True
) -> RunningGateway:
    """Bind the public listener (and, unless ``admin`` is False, the admin one) and serve."""
    require_c_parser()
    loop = asyncio.get_running_loop()
    if config.admin.metrics:
        request_metrics = RequestMetrics()
        metrics.mark_build_info()
    else:
        request_metrics = DisabledRequestMetrics()
    rate_limits = RateLimitBackends()
    caches = CacheStores()
    websockets = WebSocketCaps()
    runtime = Runtime.build(
        config, request_metrics, rate_limits, caches=caches, websockets=websockets
    )
    dispatcher = Dispatcher(runtime, request_metrics)
    server = GatewayServer(dispatcher)
    sockets: list[socket.socket] = []
    try:
        for listener_config in config.server.listeners:
            sockets.append(_bind(listener_config.listen, reuse_port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    addresses = [cast(tuple[str, int], sock.getsockname()[:2]) for sock in sockets]
    server.ports = [address[1] for address in addresses]
    try:
        entries = [ListenerEntry(server, index) for index in range(len(sockets))]
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        for sock in sockets:
            sock.close()
        raise StartupError(f"server.listeners: cannot load a certificate: {error}") from error
    listeners = [
        Listener(loop, sock, server, acceptor=entry, backlog=1024)
        for sock, entry in zip(sockets, entries, strict=True)
    ]
    listener = listeners[0]
    bound = addresses[0]
    sampler = metrics.GaugeSampler(
        inflight=lambda: dispatcher.inflight,
        connections=lambda: len(server.connections),
        pools=lambda: (
            (name, pool.open_connections, pool.idle_connections)
            for name, pool in dispatcher.runtime.pools.items()
        ),
        memory_cache=caches.memory_size,
        websockets=websockets.by_route,
        targets=lambda: (
            (name, str(target), healthy)
            for name, pool in dispatcher.runtime.pools.items()
            for target, healthy in pool.target_states()
        ),
        tasks=lambda: len(asyncio.all_tasks(loop)),
    )
    gateway = RunningGateway(
        dispatcher=dispatcher,
        server=server,
        listener=listener,
        listeners=listeners,
        entries=entries,
        addresses=addresses,
        admin=None,
        address=(bound[0], bound[1]),
        admin_address=None,
        rate_limits=rate_limits,
        caches=caches,
        websockets=websockets,
        sampler=(
            loop.create_task(_publish_metrics(request_metrics, sampler))
            if config.admin.metrics
            else None
        ),
    )
    if admin:
        if config.admin.metrics:
            # The Redis store's size is counted by the process serving the admin listener.
            gateway.census = loop.create_task(run_census(lambda: redis_cache_url(gateway.config)))
        try:
            gateway.admin, gateway.admin_address = await start_admin(config.admin, gateway)
        except OSError as error:
            await gateway.drain(0)
            raise StartupError(
                f"admin.listen: cannot listen on {config.admin.listen}: {error.strerror}"
            ) from error
    log.info(
        # "listening" is the event operators (and tests) wait for; a supervised worker without
        # its own admin listener reports itself differently and the supervisor says "listening".
        "listening" if admin else "worker_listening",
        address=f"{bound[0]}:{bound[1]}",
        admin=(
            f"{gateway.admin_address[0]}:{gateway.admin_address[1]}"
            if gateway.admin_address
            else None
        ),
        routes=len(config.routes),
        upstreams=len(config.upstreams),
    )
    return gateway


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
