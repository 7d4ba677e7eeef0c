"""Active health checks: ``GET path`` to every target of an upstream each ``interval``.

Each check is a new connection with ``Connection: close`` (the way nginx and HAProxy check):
it tests what a new request needs, connect and TLS included, and never takes a pooled
connection from traffic or leaves one idle. It passes when the status line arrives within
``timeout`` with one of ``expected_status``; only the status line is read. Verdicts go to the
pool's `TargetHealth`, which applies the thresholds.

Every worker checks on its own, like nginx's workers, so each one's view follows its own
checks at once rather than a shared file's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from gateway import __version__
from gateway.config.model import HealthCheckConfig, StatusRanges, Target
from gateway.errors import GatewayError
from gateway.observability.logging import get_logger
from gateway.upstream.health import TargetHealth

log = get_logger("gateway.health")

# The longest status line read: "HTTP/1.1 200 " and a generous reason phrase.
MAX_STATUS_LINE: Final = 1024

# Opens a connection to a target the way the pool does (DNS, TCP, TLS; GatewayError when it fails).
Connect = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def status_passes(status: int, expected: StatusRanges) -> bool:
    return any(low <= status <= high for low, high in expected)


def parse_status_line(line: bytes) -> int | None:
    """The status code of an HTTP/1.x status line (RFC 9112 §4), None if it is not one."""
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        return None
    if rest[3:4] not in (b" ", b"\r", b"\n", b""):
        return None
    return int(code)


def check_request(path: str, host: bytes) -> bytes:
    return (
        b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
        b"User-Agent: gateway-health-check/%s\r\nAccept: */*\r\n\r\n"
    ) % (path.encode("ascii"), host, __version__.encode("ascii"))


class HealthChecker:
    """Runs the checks of one upstream until stopped."""

    __slots__ = ("_config", "_connect", "_health", "_hosts", "_targets", "_task", "_upstream")

    def __init__(
        self,
        upstream: str,
        config: HealthCheckConfig,
        *,
        targets: Sequence[Target],
        hosts: Sequence[bytes],
        health: TargetHealth,
        connect: Connect,
    ) -> None:
        self._upstream = upstream
        self._config = config
        self._targets = targets
        self._hosts = hosts
        self._health = health
        self._connect = connect
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        interval = self._config.interval
        while True:
            await asyncio.gather(*(self._check(index) for index in range(len(self._targets))))
            await asyncio.sleep(interval)

    async def _check(self, index: int) -> None:
        config = self._config
        problem = ""
        try:
            async with asyncio.timeout(config.timeout):
                status = await self._probe(index)
        except TimeoutError:
            problem = f"no status line within {config.timeout:g}s"
        except GatewayError as error:  # the pool's connect failed (refused, DNS, TLS, timeout)
            problem = error.message
        except (OSError, asyncio.IncompleteReadError) as error:
            problem = f"connection failed: {error}"
        else:
            if status is None:
                problem = "not an HTTP/1.x status line"
            elif not status_passes(status, config.expected_status):
                problem = f"status {status}"
        passed = not problem
        changed = self._health.checked(
            index, passed, config.healthy_threshold, config.unhealthy_threshold
        )
        if changed:
            target = str(self._targets[index])
            if passed:
                log.info("upstream_target_healthy", upstream=self._upstream, target=target)
            else:
                log.warning(
                    "upstream_target_unhealthy",
                    upstream=self._upstream,
                    target=target,
                    problem=problem,
                )

    async def _probe(self, index: int) -> int | None:
        reader, writer = await self._connect(index)
        try:
            writer.write(check_request(self._config.path, self._hosts[index]))
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            return None
        finally:
            # Only the status line matters: no lingering for the rest of the answer.
            writer.transport.abort()
        return parse_status_line(line[:MAX_STATUS_LINE])
