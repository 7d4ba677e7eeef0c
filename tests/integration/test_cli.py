"""The `gateway` command as a newcomer and an operator use it: validate and demo."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp

from tests.harness import LOCAL, REPO, run_cli


def test_validate_accepts_the_example_config() -> None:
    result = run_cli("validate", "--config", str(REPO / "config" / "gateway.yaml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_validate_names_each_bad_key_and_exits_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            upstreams:
              users: { targets: ["http://127.0.0.1:9000"] }
            routes:
              - name: a
                upstream: users
                match: { path_prefix: /a }
              - name: b
                upstream: users
                match: { path_prefix: /b }
              - name: c
                upstream: usres
                mtach: { path_prefix: /c }
            """
        )
    )
    result = run_cli("validate", "--config", str(config))
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert "routes[2].mtach: unknown key (did you mean 'match'?)" in lines
    assert "routes[2].upstream: unknown upstream 'usres' (did you mean 'users'?)" in lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCAL, 0))
        return int(sock.getsockname()[1])


async def test_demo_serves_through_the_gateway_and_stops_on_sigterm() -> None:
    port, upstream_port, admin_port = free_port(), free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "demo",
        "--port",
        str(port),
        "--upstream-port",
        str(upstream_port),
        "--admin-port",
        str(admin_port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        env={**os.environ},
    )
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(200):
                try:
                    async with client.get(f"http://{LOCAL}:{port}/echo") as response:
                        echoed = await response.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the demo gateway never answered")
            names = {name.lower() for name, _ in echoed["headers"]}
            assert {"x-forwarded-for", "via", "x-request-id"} <= names
            async with client.get(f"http://{LOCAL}:{port}/api/echo/hi") as response:
                assert (await response.json())["target"] == "/echo/hi"
            async with client.get(f"http://{LOCAL}:{port}/stream") as response:
                assert (await response.text()).count("chunk") == 5
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_json_error_body_shape_is_stable() -> None:
    from gateway.downstream.writer import error_body

    assert json.loads(error_body("bad_request", "nope", "rid")) == {
        "error": "bad_request",
        "message": "nope",
        "request_id": "rid",
    }


def test_a_busy_port_is_a_clear_startup_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOCAL, 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "gateway.yaml"
        config.write_text(
            textwrap.dedent(
                f"""\
                server: {{ listen: "127.0.0.1:{port}" }}
                admin: {{ listen: "127.0.0.1:0" }}
                upstreams:
                  app: {{ targets: ["http://127.0.0.1:9"] }}
                routes:
                  - {{ name: all, upstream: app }}
                """
            )
        )
        result = run_cli("run", "--config", str(config))
    assert result.returncode == 1
    assert f"server.listen: cannot listen on 127.0.0.1:{port}" in result.stderr
