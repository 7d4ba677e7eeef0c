"""Fixtures of the security suite: a recording upstream and in-process gateways on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest

from gateway.app import RunningGateway, start
from gateway.config.model import (
    RouteConfig,
    ServerConfig,
    ServerLimits,
    ServerTimeouts,
    UpstreamConfig,
)
from tests.harness import gateway_config, upstream_to
from tests.recording_upstream import RecordingUpstream

Launch = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def recording() -> AsyncIterator[RecordingUpstream]:
    """The raw upstream that records every request it completes (tests.recording_upstream)."""
    async with RecordingUpstream() as upstream:
        yield upstream


@pytest.fixture
async def launch() -> AsyncIterator[Launch]:
    """Start a gateway in this process: ``await launch(port, limits=..., timeouts=...)``.

    ``port`` is the upstream of the default route; ``limits`` and ``timeouts`` override
    `ServerLimits` and `ServerTimeouts` fields; ``server`` overrides other `ServerConfig`
    fields; ``upstreams`` and ``routes`` replace the default single route. Drained at the end.
    """
    started: list[RunningGateway] = []

    async def start_one(
        port: int = 0,
        *,
        limits: dict[str, Any] | None = None,
        timeouts: dict[str, Any] | None = None,
        server: dict[str, Any] | None = None,
        upstreams: Sequence[UpstreamConfig] | None = None,
        routes: Sequence[RouteConfig] | None = None,
    ) -> RunningGateway:
        config = ServerConfig(
            limits=replace(ServerLimits(), **(limits or {})),
            timeouts=replace(ServerTimeouts(), **(timeouts or {})),
        )
        config = replace(config, **(server or {}))
        gateway = await start(
            gateway_config(upstreams or [upstream_to("up", port)], routes=routes, server=config)
        )
        started.append(gateway)
        return gateway

    yield start_one
    for gateway in started:
        await gateway.drain(1.0)
