"""Fixtures shared by the integration tests: an echoing upstream and in-process gateways."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.app import RunningGateway
from tests.harness import echo_app, serve_app
from tests.integration.cache_origin import Origin, serve_origin


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """An upstream answering with what it received (tests.harness.echo_app)."""
    async with serve_app(echo_app()) as port:
        yield port


@pytest.fixture
async def gateways() -> AsyncIterator[list[RunningGateway]]:
    """Gateways a test starts in this process; drained when the test ends."""
    started: list[RunningGateway] = []
    yield started
    for gateway in started:
        await gateway.drain(1.0)


@pytest.fixture
async def origin() -> AsyncIterator[tuple[Origin, int]]:
    """A recording upstream (tests.integration.cache_origin) and its port."""
    async for served in serve_origin():
        yield served
