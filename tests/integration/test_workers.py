"""`gateway run` with several workers: SO_REUSEPORT, restarts, metrics over every process, drain.

Real processes on real loopback sockets. Waits are bounded polls for a state to be reached,
never assertions about how long something took.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import textwrap
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.supervisor import _backoff
from tests.harness import (
    LOCAL,
    GatewayProcess,
    children,
    eventually,
    log_events,
    serve_app,
    start_gateway_process,
)

# --- Helpers shared with test_reload.py ---------------------------------------------------------


def write_config(
    path: Path,
    upstreams: Mapping[str, Sequence[int]],
    routes: Sequence[tuple[str, str, str]],
    *,
    workers: int | str = 2,
    drain: str = "10s",
    extra: str = "",
) -> Path:
    """A config on ephemeral loopback ports; ``routes`` are (name, upstream, path prefix)."""
    lines = [
        "server:",
        '  listen: "127.0.0.1:0"',
        f"  workers: {workers}",
        f"  timeouts: {{ drain: {drain} }}",
        "admin:",
        '  listen: "127.0.0.1:0"',
        "logging:",
        "  access_log: false",
        "upstreams:",
    ]
    for name, ports in upstreams.items():
        targets = ", ".join(f'"http://{LOCAL}:{port}"' for port in ports)
        lines += [f"  {name}:", f"    targets: [{targets}]"]
    lines.append("routes:")
    for name, upstream, prefix in routes:
        lines += [
            f"  - name: {name}",
            f"    upstream: {upstream}",
            f"    match: {{ path_prefix: {prefix} }}",
        ]
    path.write_text("\n".join(lines) + "\n" + textwrap.dedent(extra))
    return path


def start_supervisor(config_path: Path, log_path: Path, *args: str) -> GatewayProcess:
    return start_gateway_process(config_path, log_path, *args)


async def stop_supervisor(gateway: GatewayProcess) -> int:
    """SIGTERM; the exit code (the process is killed if it outlives a generous bound)."""
    if gateway.process.poll() is None:
        gateway.terminate()
    try:
        return await asyncio.to_thread(gateway.process.wait, 30)
    finally:
        if gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait()


@contextlib.asynccontextmanager
async def supervised(
    config_path: Path, log_path: Path, *args: str
) -> AsyncIterator[GatewayProcess]:
    gateway = start_supervisor(config_path, log_path, *args)
    try:
        yield gateway
    finally:
        code = await stop_supervisor(gateway)
    assert code == 0, await asyncio.to_thread(log_path.read_text, errors="replace")


def gone(pid: int) -> bool:
    """The process exited and was reaped by its parent.

    A zombie is not enough: the thread group leader turns into one while its other threads may
    still be exiting, holding the process's sockets open.
    """
    return not Path(f"/proc/{pid}").exists()


async def scrape(
    client: aiohttp.ClientSession, admin_port: int
) -> list[tuple[str, dict[str, str], float]]:
    async with client.get(f"http://{LOCAL}:{admin_port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


async def metric(client: aiohttp.ClientSession, admin_port: int, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(
        value
        for sample, sample_labels, value in await scrape(client, admin_port)
        if sample == name and labels.items() <= sample_labels.items()
    )


async def readiness(
    client: aiohttp.ClientSession, admin_port: int
) -> tuple[int, dict[str, object]]:
    async with client.get(f"http://{LOCAL}:{admin_port}/readyz") as response:
        body = await response.json()
        assert isinstance(body, dict)
        return response.status, body


def up_pids(body: dict[str, object]) -> list[int]:
    workers = body["workers"]
    assert isinstance(workers, list)
    return sorted(int(worker["pid"]) for worker in workers if worker["state"] == "up")


def text_app(text: str) -> web.Application:
    async def answer(_: web.Request) -> web.Response:
        return web.Response(text=text)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@pytest.fixture
async def upstream_port() -> AsyncIterator[int]:
    async with serve_app(text_app("ok")) as port:
        yield port


# --- Tests --------------------------------------------------------------------------------------


def _established_inodes(port: int) -> set[int]:
    """Socket inodes of established TCP connections whose local port is ``port``."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                columns = line.split()
                local_port = int(columns[1].rsplit(":", 1)[1], 16)
                if local_port == port and columns[3] == "01":  # 01: ESTABLISHED
                    inodes.add(int(columns[9]))
    return inodes


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


async def test_two_workers_share_the_port_and_metrics_add_up(
    tmp_path: Path, upstream_port: int
) -> None:
    config = write_config(
        tmp_path / "gateway.yaml", {"app": [upstream_port]}, [("all", "app", "/")], workers=2
    )
    async with supervised(config, tmp_path / "gateway.log") as gateway:
        workers = children(gateway.process.pid)
        assert len(workers) == 2
        async with aiohttp.ClientSession() as admin:
            status, body = await readiness(admin, gateway.admin_port)
            assert status == 200
            assert up_pids(body) == workers

            # Hold 24 connections open: SO_REUSEPORT spreads them over both workers.
            held = [await asyncio.open_connection(LOCAL, gateway.port) for _ in range(24)]
            try:
                for _, writer in held:
                    writer.write(b"GET /held HTTP/1.1\r\nHost: test\r\n\r\n")
                for reader, _ in held:
                    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                    assert await reader.readexactly(2) == b"ok"
                established = _established_inodes(gateway.port)
                per_worker = {pid: len(_socket_inodes(pid) & established) for pid in workers}
                assert sum(per_worker.values()) == 24
                assert all(count > 0 for count in per_worker.values()), per_worker
            finally:
                for _, writer in held:
                    writer.close()

            # 76 more on fresh connections: 100 in all, counted once each across the workers.
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as client:

                async def get(index: int) -> int:
                    async with client.get(f"http://{LOCAL}:{gateway.port}/n/{index}") as r:
                        await r.read()
                        return r.status

                statuses = await asyncio.gather(*(get(index) for index in range(76)))
            assert statuses == [200] * 76

            async def counted() -> bool:
                total = await metric(admin, gateway.admin_port, "gateway_requests_total")
                return total >= 100

            await eventually(counted, "gateway_requests_total to reach 100")
            assert await metric(admin, gateway.admin_port, "gateway_requests_total") == 100
            assert (
                await metric(
                    admin,
                    gateway.admin_port,
                    "gateway_requests_total",
                    route="all",
                    status_class="2xx",
                )
                == 100
            )
            assert await metric(admin, gateway.admin_port, "gateway_worker_restarts_total") == 0


@dataclass
class Outcome:
    started: float
    ok: bool
    detail: str = ""


@dataclass
class Load:
    """Clients sending GETs back to back, each on a new connection, until stopped."""

    url: str
    clients: int
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                async with session.get(self.url) as response:
                    body = await response.read()
                    ok = response.status == 200 and body == b"ok"
                    detail = f"{response.status} {body[:60]!r}"
            except (aiohttp.ClientError, TimeoutError) as error:
                ok, detail = False, repr(error)
            self.outcomes.append(Outcome(started, ok, detail))

    def completed_after(self, moment: float) -> int:
        return sum(1 for outcome in self.outcomes if outcome.started > moment)


async def test_a_killed_worker_is_replaced_while_traffic_continues(
    tmp_path: Path, upstream_port: int
) -> None:
    config = write_config(
        tmp_path / "gateway.yaml", {"app": [upstream_port]}, [("all", "app", "/")], workers=2
    )
    log_path = tmp_path / "gateway.log"
    async with supervised(config, log_path) as gateway, aiohttp.ClientSession() as admin:
        before = children(gateway.process.pid)
        assert len(before) == 2
        load = Load(f"http://{LOCAL}:{gateway.port}/", clients=4)
        traffic = asyncio.create_task(load.run())
        try:

            async def flowing(after: float) -> bool:
                return load.completed_after(after) >= 40

            await eventually(lambda: flowing(0.0), "traffic to flow")
            victim = before[0]
            os.kill(victim, signal.SIGKILL)

            async def dead() -> bool:
                return gone(victim)

            await eventually(dead, "the killed worker to exit")
            dead_at = time.monotonic()

            async def replaced() -> bool:
                status, body = await readiness(admin, gateway.admin_port)
                pids = up_pids(body)
                return status == 200 and len(pids) == 2 and victim not in pids

            await eventually(replaced, "a replacement worker")
            replaced_at = time.monotonic()
            await eventually(lambda: flowing(replaced_at), "traffic after the replacement")
        finally:
            load.stop.set()
            await traffic

        after = children(gateway.process.pid)
        assert len(after) == 2
        assert victim not in after
        assert before[1] in after
        # Only requests in flight on the killed worker may fail: each client has one at a time,
        # and every request started once the worker was gone succeeded.
        failed = [outcome for outcome in load.outcomes if not outcome.ok]
        assert len(failed) <= load.clients, failed
        assert all(outcome.started < dead_at for outcome in failed), failed
        assert load.completed_after(replaced_at) >= 40
        assert await metric(admin, gateway.admin_port, "gateway_worker_restarts_total") == 1

    events = log_events(log_path)
    died = [event for event in events if event.get("event") == "worker_died"]
    assert len(died) == 1
    assert died[0]["pid"] == victim
    assert died[0]["how"] == "SIGKILL"
    restarted = [event for event in events if event.get("event") == "worker_restarted"]
    assert [event["previous"] for event in restarted] == [victim]


async def test_sigterm_drains_a_slow_request_under_two_workers(tmp_path: Path) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(_: web.Request) -> web.Response:
        started.set()
        await release.wait()
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/slow", slow)
    async with serve_app(app) as upstream:
        config = write_config(
            tmp_path / "gateway.yaml", {"app": [upstream]}, [("all", "app", "/")], workers=2
        )
        gateway = start_supervisor(config, tmp_path / "gateway.log")
        try:
            assert len(children(gateway.process.pid)) == 2
            async with aiohttp.ClientSession() as client:
                status, _ = await readiness(client, gateway.admin_port)
                assert status == 200
                pending = asyncio.create_task(client.get(f"http://{LOCAL}:{gateway.port}/slow"))
                await asyncio.wait_for(started.wait(), 10)
                gateway.terminate()

                async def not_ready() -> bool:
                    status, body = await readiness(client, gateway.admin_port)
                    return status == 503 and body["draining"] is True

                # Readiness fails at once, while the request is still in flight.
                await eventually(not_ready, "/readyz to answer 503")
                release.set()
                async with await pending as response:
                    assert response.status == 200
                    assert await response.text() == "finished"
            assert await asyncio.to_thread(gateway.process.wait, 30) == 0
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(LOCAL, gateway.port)
        finally:
            release.set()
            if gateway.process.poll() is None:
                gateway.process.kill()
                gateway.process.wait()


def test_restart_backoff_starts_at_once_then_doubles_to_30s() -> None:
    assert [_backoff(deaths) for deaths in range(1, 9)] == [0, 1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", None),  # no quota: every core this process may run on
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),  # 1.5 cores round up
        ("50000 100000\n", 1),
        (None, None),  # no cgroup v2 file
    ],
)
def test_auto_workers_follow_the_cgroup_cpu_quota(
    tmp_path: Path, cpu_max: str | None, expected: int | None
) -> None:
    from dataclasses import replace as replace_field

    from gateway.config.model import GatewayConfig, RouteConfig, ServerConfig, Target
    from gateway.config.model import UpstreamConfig as Upstream
    from gateway.supervisor import resolve_workers

    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max)
    config = GatewayConfig(
        upstreams=(Upstream("u", (Target("http", "127.0.0.1", 9),)),),
        routes=(RouteConfig("r", "u"),),
    )
    auto = replace_field(config, server=ServerConfig(workers="auto"))
    usable = len(os.sched_getaffinity(0))
    want = usable if expected is None else min(usable, expected)
    assert resolve_workers(auto, cgroup_root=tmp_path) == want
    assert resolve_workers(replace_field(config, server=ServerConfig(workers=3)), tmp_path) == 3
