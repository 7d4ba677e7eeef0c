"""Fixtures of the conformance suite: an h2c gateway in front of an echoing HTTP/1.1 upstream,
and raw-frame clients connected to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from gateway.app import RunningGateway, start
from gateway.config.model import (
    Http2Config,
    ListenAddress,
    ListenerConfig,
    ServerConfig,
    TlsConfig,
)
from tests.conformance.h2client import RawH2Client
from tests.harness import LOCAL, echo_app, gateway_config, serve_app, upstream_to

Launch = Callable[..., Awaitable[RunningGateway]]
Connect = Callable[..., Awaitable[RawH2Client]]


@pytest.fixture(autouse=True)
async def no_unhandled_errors() -> AsyncIterator[None]:
    """Fail a case in which anything reached the loop's exception handler: a stream handler
    that raised (`Http2Connection._serve`) answered nothing, whatever the frames showed."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    yield
    loop.set_exception_handler(previous)
    assert not errors, [
        f"{context.get('message')}: {context.get('exception')!r}" for context in errors
    ]


@pytest.fixture
async def upstream_port() -> AsyncIterator[int]:
    """The HTTP/1.1 upstream of every route: answers with what it received
    (tests.harness.echo_app)."""
    async with serve_app(echo_app()) as port:
        yield port


@pytest.fixture
async def launch(upstream_port: int) -> AsyncIterator[Launch]:
    """Start a gateway with one listener: ``await launch(h2c=..., tls=..., **http2)`` (the
    other keywords override `Http2Config` fields). Drained at the end."""
    started: list[RunningGateway] = []

    async def start_one(
        *, h2c: bool = True, tls: TlsConfig | None = None, **http2: Any
    ) -> RunningGateway:
        listener = ListenerConfig(
            ListenAddress(LOCAL, 0), tls=tls, http2=replace(Http2Config(h2c=h2c), **http2)
        )
        server = ServerConfig(listeners=(listener,))
        gateway = await start(
            gateway_config([upstream_to("up", upstream_port)], server=server), admin=False
        )
        started.append(gateway)
        return gateway

    yield start_one
    for gateway in started:
        await gateway.drain(1.0)


@pytest.fixture
async def h2c_port(launch: Launch) -> int:
    """The port of a gateway whose listener takes HTTP/2 with prior knowledge (h2c)."""
    gateway = await launch()
    return gateway.addresses[0][1]


@pytest.fixture
async def connect(h2c_port: int) -> AsyncIterator[Connect]:
    """Open raw clients to the h2c gateway: ``await connect()`` has done the handshake (preface
    and SETTINGS both ways); ``await connect(handshake=False)`` has only connected;
    ``settings=`` are the client's SETTINGS. Closed at the end."""
    clients: list[RawH2Client] = []

    async def open_one(
        *, handshake: bool = True, settings: dict[int, int] | None = None, port: int = h2c_port
    ) -> RawH2Client:
        client = await RawH2Client.open(port)
        clients.append(client)
        if handshake:
            await client.handshake(settings)
        return client

    yield open_one
    for client in clients:
        await client.close()


@pytest.fixture
async def client(connect: Connect) -> RawH2Client:
    """A connected h2c client past the handshake."""
    return await connect()
