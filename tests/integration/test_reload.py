"""Hot reload through the supervisor (SIGHUP, --watch), and the `validate` and `diff` commands.

Real processes on real loopback sockets; waits are bounded polls for a state to be reached.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.harness import LOCAL, children, eventually, log_events, run_cli, serve_app
from tests.integration.test_workers import (
    metric,
    supervised,
    text_app,
    write_config,
)


@dataclass
class Upstreams:
    """Three upstreams answering their own name: the same app twice (a, b), and another (c)."""

    a: int
    b: int
    c: int


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    async with (
        serve_app(text_app("app")) as a,
        serve_app(text_app("app")) as b,
        serve_app(text_app("fresh")) as c,
    ):
        yield Upstreams(a, b, c)


@dataclass
class KeepAliveLoad:
    """Clients sending GETs back to back on keep-alive connections; every answer must be 200."""

    url: str
    clients: int
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            try:
                async with session.get(self.url) as response:
                    body = await response.read()
                    if response.status == 200 and body == b"app":
                        self.ok += 1
                    else:
                        self.failures.append(f"{response.status} {body[:100]!r}")
            except (aiohttp.ClientError, TimeoutError) as error:
                self.failures.append(repr(error))


async def get_text(client: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with client.get(url) as response:
        return response.status, await response.text()


async def test_reloads_under_load_lose_no_request_and_the_new_route_goes_live(
    tmp_path: Path, upstreams: Upstreams
) -> None:
    path = tmp_path / "gateway.yaml"
    write_config(path, {"app": [upstreams.a]}, [("all", "app", "/")], workers=2)
    async with supervised(path, tmp_path / "gateway.log") as gateway:
        base = f"http://{LOCAL}:{gateway.port}"
        load = KeepAliveLoad(f"{base}/item", clients=6)
        traffic = asyncio.create_task(load.run())
        async with aiohttp.ClientSession() as admin:
            try:
                reloads = 6
                for number in range(1, reloads + 1):
                    served = load.ok

                    async def busy(served: int = served) -> bool:
                        return load.ok >= served + 50 or bool(load.failures)

                    await eventually(busy, "requests between two reloads")
                    # Each reload moves the `app` pool to the other upstream server (the old
                    # pool drains and closes) and adds a route; the last one adds `fresh`.
                    routes = [("all", "app", "/")]
                    routes += [(f"r{index}", "app", f"/r{index}") for index in range(number)]
                    pools = {"app": [upstreams.b if number % 2 else upstreams.a]}
                    if number == reloads:
                        routes.append(("fresh", "fresh", "/fresh"))
                        pools["fresh"] = [upstreams.c]
                    write_config(path, pools, routes, workers=2)
                    gateway.process.send_signal(signal.SIGHUP)

                    async def reloaded(number: int = number) -> bool:
                        successes = await metric(
                            admin,
                            gateway.admin_port,
                            "gateway_config_reloads_total",
                            result="success",
                        )
                        return successes >= number

                    await eventually(reloaded, f"reload {number} to be acknowledged")
                served = load.ok

                async def after_last(served: int = served) -> bool:
                    return load.ok >= served + 50 or bool(load.failures)

                await eventually(after_last, "requests after the last reload")
            finally:
                load.stop.set()
                await traffic
            assert load.failures == []
            assert load.ok > 300
            assert await get_text(admin, f"{base}/fresh/x") == (200, "fresh")
            assert (
                await metric(
                    admin, gateway.admin_port, "gateway_config_reloads_total", result="success"
                )
                == 6
            )
            assert (
                await metric(
                    admin, gateway.admin_port, "gateway_config_reloads_total", result="error"
                )
                == 0
            )
            # The admin view shows the config now serving.
            async with admin.get(f"http://{LOCAL}:{gateway.admin_port}/config") as response:
                view = await response.json()
            assert "fresh" in {row["route"] for row in view["route_table"]}
        assert len(children(gateway.process.pid)) == 2


async def test_an_invalid_file_keeps_the_old_config_serving(
    tmp_path: Path, upstreams: Upstreams
) -> None:
    path = tmp_path / "gateway.yaml"
    log_path = tmp_path / "gateway.log"
    write_config(path, {"app": [upstreams.a]}, [("all", "app", "/")], workers=2)
    async with supervised(path, log_path) as gateway, aiohttp.ClientSession() as client:
        config_url = f"http://{LOCAL}:{gateway.admin_port}/config"
        async with client.get(config_url) as response:
            hash_before = (await response.json())["hash"]
        write_config(path, {"app": [upstreams.a]}, [("all", "nope", "/")], workers=2)
        gateway.process.send_signal(signal.SIGHUP)

        async def rejected() -> bool:
            errors = await metric(
                client, gateway.admin_port, "gateway_config_reloads_total", result="error"
            )
            return errors >= 1

        await eventually(rejected, "the reload error to be counted")
        for _ in range(20):
            assert await get_text(client, f"http://{LOCAL}:{gateway.port}/x") == (200, "app")
        async with client.get(config_url) as response:
            assert (await response.json())["hash"] == hash_before
        assert (
            await metric(
                client, gateway.admin_port, "gateway_config_reloads_total", result="success"
            )
            == 0
        )
    failed = [event for event in log_events(log_path) if event["event"] == "config_reload_failed"]
    assert len(failed) == 1
    problems = failed[0]["problems"]
    assert isinstance(problems, list)
    assert any(
        str(problem).startswith("routes[0].upstream: unknown upstream 'nope'")
        for problem in problems
    ), problems


async def test_a_reload_keeps_what_only_a_restart_changes(
    tmp_path: Path, upstreams: Upstreams
) -> None:
    path = tmp_path / "gateway.yaml"
    log_path = tmp_path / "gateway.log"
    write_config(path, {"app": [upstreams.a]}, [("all", "app", "/")], workers=1)
    async with supervised(path, log_path) as gateway, aiohttp.ClientSession() as client:
        write_config(
            path,
            {"app": [upstreams.a], "fresh": [upstreams.c]},
            [("all", "app", "/"), ("fresh", "fresh", "/fresh")],
            workers=3,
        )
        gateway.process.send_signal(signal.SIGHUP)

        async def fresh_live() -> bool:
            return await get_text(client, f"http://{LOCAL}:{gateway.port}/fresh") == (200, "fresh")

        await eventually(fresh_live, "the reloaded route")
        assert len(children(gateway.process.pid)) == 1
    warnings = [event for event in log_events(log_path) if event["event"] == "config_needs_restart"]
    assert [event["keys"] for event in warnings] == [["server.workers"]]


async def test_watch_reloads_when_the_file_changes(tmp_path: Path, upstreams: Upstreams) -> None:
    path = tmp_path / "gateway.yaml"
    write_config(path, {"app": [upstreams.a]}, [("all", "app", "/")], workers=1)
    async with (
        supervised(path, tmp_path / "gateway.log", "--watch") as gateway,
        aiohttp.ClientSession() as client,
    ):
        url = f"http://{LOCAL}:{gateway.port}/fresh"
        assert await get_text(client, url) == (200, "app")
        write_config(
            path,
            {"app": [upstreams.a], "fresh": [upstreams.c]},
            [("all", "app", "/"), ("fresh", "fresh", "/fresh")],
            workers=1,
        )

        async def fresh_live() -> bool:
            return await get_text(client, url) == (200, "fresh")

        await eventually(fresh_live, "the watched change to be served")
        assert (
            await metric(
                client, gateway.admin_port, "gateway_config_reloads_total", result="success"
            )
            == 1
        )


def test_validate_prints_the_route_table(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "gateway.yaml",
        {"users": [9001], "web": [9002]},
        [("users-api", "users", "/api/users"), ("site", "web", "/")],
    )
    result = run_cli("validate", "--config", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: ok (2 upstreams, 2 routes)"
    header = next(line for line in lines if line.startswith("#"))
    assert header.split() == [
        "#",
        "route",
        "host",
        "path",
        "prefix",
        "methods",
        "headers",
        "upstream",
        "strip_prefix",
    ]
    rows = [line.split() for line in lines if line[:1].isdigit()]
    # Precedence order: the longer prefix first.
    assert [row[:4] for row in rows] == [
        ["1", "users-api", "*", "/api/users"],
        ["2", "site", "*", "/"],
    ]
    assert [row[6] for row in rows] == ["users", "web"]
    assert any(line.split()[:2] == ["users", f"http://{LOCAL}:9001"] for line in lines)


def test_diff_prints_a_changed_route_and_upstream(tmp_path: Path) -> None:
    old = write_config(
        tmp_path / "old.yaml",
        {"users": [9001], "web": [9002]},
        [("users-api", "users", "/api/users"), ("site", "web", "/")],
    )
    new = write_config(
        tmp_path / "new.yaml",
        {"users": [9001, 9003], "web": [9002], "search": [9004]},
        [
            ("users-api", "users", "/v2/users"),
            ("site", "web", "/"),
            ("find", "search", "/search"),
        ],
    )
    result = run_cli("diff", "--config", str(new), "--against", str(old))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "~ route users-api: match.path_prefix /api/users -> /v2/users" in lines
    assert f"~ upstream users: targets + http://{LOCAL}:9003" in lines
    assert f"+ upstream search (http://{LOCAL}:9004)" in lines
    assert "+ route find (prefix /search -> upstream search)" in lines

    same = run_cli("diff", "--config", str(old), "--against", str(old))
    assert same.returncode == 0, same.stderr
    assert same.stdout.splitlines() == ["no changes"]

    bad = write_config(tmp_path / "bad.yaml", {"users": [9001]}, [("x", "nope", "/")])
    invalid = run_cli("diff", "--config", str(bad), "--against", str(old))
    assert invalid.returncode != 0
    assert "routes[0].upstream: unknown upstream 'nope'" in invalid.stderr
