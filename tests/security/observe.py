"""What the security suites read of an in-process gateway: its counters, and its state polled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import REGISTRY


def counted(name: str, label: str, value: str) -> float:
    """A counter's current value in this process's registry (0 before its first increment)."""
    return REGISTRY.get_sample_value(name, {label: value}) or 0.0


def timeouts(kind: str) -> float:
    return counted("gateway_client_timeouts_total", "kind", kind)


async def wait_for(condition: Callable[[], object], what: str, seconds: float = 5.0) -> None:
    """Poll ``condition()`` until true; fail naming ``what`` after ``seconds``.

    Polling, not an event: the conditions are the gateway's own counters and state, which have
    none.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
