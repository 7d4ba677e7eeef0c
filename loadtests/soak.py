"""A soak test: one gateway worker under mixed load and faults for a long time, watched for growth.

    .venv/bin/python loadtests/soak.py [--minutes 60] [--sample 10] [--warmup 60]
        [--gateway-build build/compiled] [--no-redis] [--flap-seconds 5] [--json out.json]
        [--max-rss-growth 10] [--max-fd-growth 50] [--max-task-growth 50] [--rss-limit 4096]
        [--faults slowloris,idle,closer,stall,websocket] [--logs DIR]

HARDENING.md §H: "a one-hour soak mixing these faults keeps RSS, file descriptors and task counts
flat". This script starts, each in a temporary directory:

- nginx as the main upstream (`/`, `/cached...` with max-age=3600, `/json32k`: 32 KiB of JSON);
- a fault upstream in this process (aiohttp): `/stall` sleeps past the route's 500 ms response
  timeout on every third request (504s), `/big` answers 1 MiB, `/ws` echoes WebSocket messages;
- a flapping target (a TCP server in this process) that cycles every `--flap-seconds` between
  up (answers 200), closed (refuses connections) and reset (accepts, reads the request, sends
  an RST); it is the second target of an upstream whose first is nginx;
- redis-server (unless `--no-redis`), paused with SIGSTOP while the flapping target is closed,
  backing a second rate-limited route and a Redis-cached route;
- one `gateway run` with `workers: 1` (from `--gateway-build` when given) and routes for each
  of: plain, cached (memory), compressed (gzip), rate limited (memory, 300/s: 429s under load),
  the flapping upstream, the stalling one, WebSocket, and with Redis a Redis-limited and a
  Redis-cached route.

Load, until `--minutes` are up: `wrk -t1 -c20` in 30-second runs with a Lua script cycling
through the routes' paths (the cached paths over 1,000 keys), and fault clients in this
process: slowloris sockets (a header line every 2 s until the 5 s header timeout ends them),
idle keep-alive connections opened, left and dropped (some reset), clients that close in the
middle of a 1 MiB or a compressed response (some with an RST), WebSocket echo sessions (some
dropped without a close frame), and requests to the stalling route.

Every `--sample` seconds: the worker's RSS (VmRSS), its open file descriptors
(/proc/PID/fd), `gateway_event_loop_tasks` and `gateway_connections` from the admin /metrics,
the requests answered by status class, upstream errors, and the fault clients' counts. At the
end a table gives, after `--warmup` seconds, the first and last sample, min, max, and the
growth from the median of the first 10% of the samples to the median of the last 10%. The exit
status is 1 when a growth passes its threshold (RSS in percent, fds and tasks in units): a
soak verdict, not a unit test. `--json` writes every sample. A worker whose RSS passes
`--rss-limit` MiB ends the soak early, as a failure, before a fast leak exhausts the machine.
`--faults` picks the fault clients (to find which one a growth comes from); `--logs` keeps
the gateway's log.

Everything started is stopped at the end, also on Ctrl-C. Needs nginx, wrk and (unless
`--no-redis`) redis-server; `make soak` runs it from the compiled build.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import aiohttp
from aiohttp import web
from features import start_redis
from prometheus_client.parser import text_string_to_metric_families
from targets import (
    JSON_PATH,
    ensure_tools,
    free_port,
    gateway_argv,
    loaded_build,
    nginx_argv,
    nginx_upstream_conf,
    parse_wrk,
    rss_bytes,
    start,
    stop,
    wait_for_port,
    worker_children,
)

# The wrk script: one request per route in turn; the cached paths cycle over 1,000 keys so the
# memory store reaches a steady size instead of holding one entry.
WRK_SCRIPT = textwrap.dedent(
    f"""\
    local counter = 0
    local gzip = {{ ["Accept-Encoding"] = "gzip" }}
    request = function()
      counter = counter + 1
      local turn = counter % 6
      if turn == 0 then return wrk.format("GET", "/") end
      if turn == 1 then return wrk.format("GET", "/cached/" .. (counter % 1000)) end
      if turn == 2 then return wrk.format("GET", "{JSON_PATH}", gzip) end
      if turn == 3 then return wrk.format("GET", "/limited/" .. (counter % 50)) end
      if turn == 4 then return wrk.format("GET", "/flappy/" .. (counter % 50)) end
      if REDIS then
        if counter % 2 == 0 then return wrk.format("GET", "/rlimited/x") end
        return wrk.format("GET", "/rcached/" .. (counter % 1000))
      end
      return wrk.format("GET", "/")
    end
    """
)
WRK_RUN_SECONDS = 30
WRK_CONNECTIONS = 20
BIG = 1024 * 1024
# A stalled upstream answer sleeps this long, past the stall route's response timeout (500 ms).
STALL_SECONDS = 2.0
FLAP_MODES = ("up", "closed", "reset")


def gateway_soak_conf(
    workdir: Path,
    ports: dict[str, int],
    redis_url: str | None,
) -> Path:
    """The gateway's config: one worker, a route per feature and fault (see the docstring)."""
    redis_routes = ""
    if redis_url:
        redis_routes = textwrap.dedent(
            """\
            - name: rlimited
              upstream: small
              match: { path_prefix: /rlimited }
              rate_limit: { rate: 200/second, backend: redis, budget: 50ms }
            - name: rcached
              upstream: small
              match: { path_prefix: /rcached }
              cache: { store: redis }
            """
        )
    conf = workdir / "gateway-soak.yaml"
    conf.write_text(
        textwrap.dedent(
            f"""\
            server:
              listen: "127.0.0.1:{ports["gateway"]}"
              workers: 1
              timeouts: {{ header_read: 5s, keepalive: 10s, body_progress: 5s, send: 10s }}
            admin:
              listen: "127.0.0.1:{ports["admin"]}"
              metrics: true
            logging:
              access_log: false
              level: warning
            """
        )
        + (f'redis:\n  url: "{redis_url}"\n' if redis_url else "")
        + textwrap.dedent(
            f"""\
            cache:
              max_bytes: 64MiB
            upstreams:
              small:
                targets: ["http://127.0.0.1:{ports["nginx"]}"]
              flappy:
                targets: ["http://127.0.0.1:{ports["nginx"]}", "http://127.0.0.1:{ports["flap"]}"]
                health_check: {{ path: /, interval: 1s, timeout: 500ms }}
                passive_health: {{ consecutive_failures: 3, base_ejection: 2s, max_ejection: 10s }}
                timeouts: {{ connect: 1s, response: 2s }}
              app:
                targets: ["http://127.0.0.1:{ports["app"]}"]
                timeouts: {{ response: 500ms }}
            routes:
              - name: plain
                upstream: small
              - name: cached
                upstream: small
                match: {{ path_prefix: /cached }}
                cache: {{ store: memory }}
              - name: compressed
                upstream: small
                match: {{ path_prefix: {JSON_PATH} }}
                compression: {{ algorithms: [gzip] }}
              - name: limited
                upstream: small
                match: {{ path_prefix: /limited }}
                rate_limit: {{ rate: 300/second, backend: memory }}
              - name: flappy
                upstream: flappy
                match: {{ path_prefix: /flappy }}
                strip_prefix: true
              - name: stall
                upstream: app
                match: {{ path_prefix: /stall }}
              - name: big
                upstream: app
                match: {{ path_prefix: /big }}
              - name: ws
                upstream: app
                match: {{ path_prefix: /ws }}
                websocket: {{ idle_timeout: 10s }}
            """
        )
        + textwrap.indent(redis_routes, "  ")
    )
    return conf


# The fault side, in one asyncio loop on a thread of this process.


@dataclass
class FaultCounts:
    """What the fault clients did; read by the sampler thread (ints: no lock needed)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, count: int = 1) -> None:
        self.counts[name] += count


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0) rather than a FIN: a client or server that vanishes."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FlappingTarget:
    """A target that is up, closed or resetting in turn (HARDENING.md §G's first cases)."""

    def __init__(self, port: int, period: float, counts: FaultCounts) -> None:
        self.port = port
        self.period = period
        self.counts = counts
        self.mode = "up"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if self.mode != "up":
                    self.counts.add("flap_resets")
                    _reset(writer)
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nflap")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _open(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    async def run(self, on_mode: Any) -> None:
        await self._open()
        try:
            for turn in range(1, 1 << 62):
                await asyncio.sleep(self.period)
                self.mode = FLAP_MODES[turn % len(FLAP_MODES)]
                self.counts.add(f"flap_{self.mode}")
                if self.mode == "closed":
                    await self._close()
                elif self._server is None:
                    await self._open()
                on_mode(self.mode)
        finally:
            await self._close()


def fault_app(counts: FaultCounts) -> web.Application:
    """The fault upstream: `/stall` (every third request past the response timeout), `/big`,
    `/ws` (echo)."""
    turn = 0
    big = b"x" * BIG

    async def stall(request: web.Request) -> web.Response:
        nonlocal turn
        turn += 1
        if turn % 3 == 0:
            await asyncio.sleep(STALL_SECONDS)
        return web.Response(text="ok")

    async def big_handler(request: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/octet-stream")

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/stall{tail:.*}", stall)
    app.router.add_get("/big{tail:.*}", big_handler)
    app.router.add_get("/ws{tail:.*}", ws_handler)
    return app


async def _request(port: int, path: str, headers: str = "") -> tuple[Any, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: soak\r\n{headers}\r\n".encode())
    await writer.drain()
    return reader, writer


async def slowloris(port: int, counts: FaultCounts) -> None:
    """A request head that never ends: a header line every 2 s until the gateway gives up."""
    while True:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: soak\r\n")
            while True:
                await asyncio.sleep(2.0)
                if reader.at_eof() or writer.is_closing():
                    break
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    # The 408 (or the close) arrives once the header timeout passes.
                    if await asyncio.wait_for(reader.read(4096), 0.01) == b"":
                        break
            counts.add("slowloris_ended")
        except ConnectionError:
            counts.add("slowloris_ended")
        finally:
            writer.close()


async def idle_client(port: int, counts: FaultCounts) -> None:
    """One request, then idle for a while (past the 10 s keep-alive sometimes), then gone."""
    while True:
        try:
            reader, writer = await _request(port, "/")
        except OSError:
            counts.add("idle_connect_errors")
            await asyncio.sleep(1.0)
            continue
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            await asyncio.sleep(random.uniform(1.0, 15.0))
            counts.add("idle_done")
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            counts.add("idle_errors")
        finally:
            if random.random() < 0.5:
                _reset(writer)
            else:
                writer.close()


async def mid_response_closer(port: int, counts: FaultCounts) -> None:
    """Reads the head and a little of a 1 MiB or a compressed response, then closes or resets."""
    while True:
        path, headers = random.choice(
            (("/big", ""), (JSON_PATH, "Accept-Encoding: gzip\r\n"), ("/cached/1", ""))
        )
        try:
            reader, writer = await _request(port, path, headers)
        except OSError:
            counts.add("closer_connect_errors")
            await asyncio.sleep(1.0)
            continue
        try:
            await asyncio.wait_for(reader.read(2048), 5.0)
            counts.add("closed_mid_response")
        except (ConnectionError, TimeoutError):
            counts.add("closer_errors")
        finally:
            if random.random() < 0.5:
                _reset(writer)
            else:
                writer.close()
        await asyncio.sleep(0.2)


async def stall_client(port: int, counts: FaultCounts) -> None:
    """Requests to the stalling upstream: 200s and, a third of them, 504s."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/stall") as response:
                    await response.read()
                    counts.add(f"stall_{response.status}")
            except (aiohttp.ClientError, TimeoutError):
                counts.add("stall_errors")
            await asyncio.sleep(0.1)


async def websocket_client(port: int, counts: FaultCounts) -> None:
    """Echo sessions of 20 messages; one in four is a handshake whose client then vanishes
    (an RST, no close frame)."""
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                if random.random() < 0.25:
                    key = "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n"
                    upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    reader, writer = await _request(
                        port, "/ws", upgrade + "Sec-WebSocket-Version: 13\r\n" + key
                    )
                    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
                    _reset(writer)
                    counts.add("ws_dropped")
                else:
                    async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                        for index in range(20):
                            await ws.send_str(f"message {index}")
                            await asyncio.wait_for(ws.receive(), 5.0)
                        await ws.close()
                        counts.add("ws_sessions")
            except (aiohttp.ClientError, TimeoutError, OSError, asyncio.IncompleteReadError):
                counts.add("ws_errors")
            await asyncio.sleep(0.5)


# Fault client -> (its coroutine function, how many run at once).
FAULT_CLIENTS: dict[str, tuple[Callable[[int, FaultCounts], Coroutine[Any, Any, None]], int]] = {
    "slowloris": (slowloris, 10),
    "idle": (idle_client, 10),
    "closer": (mid_response_closer, 2),
    "stall": (stall_client, 4),
    "websocket": (websocket_client, 2),
}


class FaultRig:
    """The fault upstream, the flapping target and the fault clients on one loop and thread."""

    def __init__(
        self,
        ports: dict[str, int],
        flap_seconds: float,
        redis: subprocess.Popen[bytes] | None,
        faults: frozenset[str] = frozenset(FAULT_CLIENTS),
    ) -> None:
        self.ports = ports
        self.faults = faults
        self.flap_seconds = flap_seconds
        self.redis = redis
        self.counts = FaultCounts()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="faults", daemon=True)

    def start_servers(self) -> None:
        self._thread.start()
        if not self.ready.wait(15) or self.error is not None:
            raise RuntimeError(f"the fault rig did not start: {self.error!r}")

    def start_clients(self) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._start_clients)

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=20)
        self._pause_redis(False)

    def _pause_redis(self, paused: bool) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def _on_mode(self, mode: str) -> None:
        # Redis is paused while the flapping target is closed: §G's "Redis paused (SIGSTOP)".
        self._pause_redis(mode == "closed")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:  # reported to the main thread, which stops everything
            self.error = error
            self.ready.set()

    def _start_clients(self) -> None:
        port = self.ports["gateway"]
        for name, (client, copies) in FAULT_CLIENTS.items():
            if name in self.faults:
                for _ in range(copies):
                    self._tasks.append(self._loop_create(client(port, self.counts)))

    def _loop_create(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coroutine)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        runner = web.AppRunner(fault_app(self.counts), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.ports["app"]).start()
        flap = FlappingTarget(self.ports["flap"], self.flap_seconds, self.counts)
        self._tasks.append(self._loop.create_task(flap.run(self._on_mode)))
        self.ready.set()
        try:
            await self._stopping.wait()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await runner.cleanup()


# wrk, on a thread of its own.


class WrkLoop:
    """wrk runs of WRK_RUN_SECONDS one after another until stopped; their totals summed."""

    def __init__(self, port: int, script: Path) -> None:
        self.port = port
        self.script = script
        self.requests = 0
        self.non2xx_or_errors = 0
        self.socket_errors: Counter[str] = Counter()
        self.runs = 0
        self._stopping = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._main, name="wrk", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
        self._thread.join(timeout=WRK_RUN_SECONDS + 30)

    def _main(self) -> None:
        argv = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{WRK_RUN_SECONDS}s", "--latency"]
        argv += ["-s", str(self.script), f"http://127.0.0.1:{self.port}"]
        while not self._stopping.is_set():
            self._process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            output, _ = self._process.communicate()
            if self._stopping.is_set():
                break
            try:
                result = parse_wrk(output)
            except (RuntimeError, ValueError):
                time.sleep(1.0)  # wrk failed (e.g. no connection): try again shortly
                continue
            self.runs += 1
            self.requests += result.requests
            self.non2xx_or_errors += result.errors
            self.socket_errors.update(result.socket_errors)


# Samples.


def scrape(admin_port: int) -> dict[str, float]:
    """The figures of a sample from the admin /metrics (summed over their labels)."""
    with urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    figures: defaultdict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("gateway_event_loop_tasks", "gateway_connections"):
                figures[sample.name.removeprefix("gateway_")] += sample.value
            elif sample.name == "gateway_requests_total":
                figures[f"requests_{sample.labels['status_class']}"] += sample.value
            elif sample.name == "gateway_upstream_errors_total":
                figures[f"upstream_errors_{sample.labels['kind']}"] += sample.value
            elif sample.name == "gateway_worker_restarts_total":
                figures["worker_restarts"] += sample.value
    return dict(figures)


def take_sample(
    started: float, pid: int, admin_port: int, wrk: WrkLoop, rig: FaultRig
) -> dict[str, Any]:
    return {
        "t": round(time.monotonic() - started, 1),
        "pid": pid,
        "rss": rss_bytes(pid),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        **scrape(admin_port),
        "wrk_requests": wrk.requests,
        "wrk_errors": wrk.non2xx_or_errors,
        "wrk_socket_errors": dict(wrk.socket_errors),
        "faults": dict(rig.counts.counts),
    }


def _median_of(values: list[float]) -> float:
    return float(statistics.median(values))


def summarise(samples: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """First, last, min, max and growth (median of the last 10% minus that of the first 10%)
    of RSS, fds and tasks over the samples taken after ``warmup`` seconds."""
    kept = [sample for sample in samples if sample["t"] >= warmup] or samples
    tenth = max(1, len(kept) // 10)
    summary: dict[str, Any] = {"samples": len(kept), "tenth": tenth}
    for key, source in (("rss", "rss"), ("fds", "fds"), ("tasks", "event_loop_tasks")):
        values = [float(sample.get(source, 0.0)) for sample in kept]
        head, tail = _median_of(values[:tenth]), _median_of(values[-tenth:])
        summary[key] = {
            "first": values[0],
            "last": values[-1],
            "min": min(values),
            "max": max(values),
            "head_median": head,
            "tail_median": tail,
            "growth": tail - head,
            "growth_percent": (tail - head) / head * 100 if head else 0.0,
        }
    return summary


def verdicts(summary: dict[str, Any], args: argparse.Namespace) -> list[str]:
    failures = []
    if summary["rss"]["growth_percent"] > args.max_rss_growth:
        failures.append(f"RSS grew {summary['rss']['growth_percent']:.1f}%")
    if summary["fds"]["growth"] > args.max_fd_growth:
        failures.append(f"fds grew by {summary['fds']['growth']:.0f}")
    if summary["tasks"]["growth"] > args.max_task_growth:
        failures.append(f"tasks grew by {summary['tasks']['growth']:.0f}")
    return failures


def print_table(summary: dict[str, Any], last: dict[str, Any]) -> None:
    print(
        f"\n{summary['samples']} samples after warm-up; growth: median of the last "
        f"{summary['tenth']} minus median of the first {summary['tenth']}"
    )
    print(f"{'':10} {'first':>10} {'last':>10} {'min':>10} {'max':>10} {'growth':>18}")
    for key, title, scale in (("rss", "RSS MiB", 2**20), ("fds", "fds", 1), ("tasks", "tasks", 1)):
        row = summary[key]
        growth = f"{row['growth'] / scale:+.1f} ({row['growth_percent']:+.1f}%)"
        print(
            f"{title:10} {row['first'] / scale:10.1f} {row['last'] / scale:10.1f} "
            f"{row['min'] / scale:10.1f} {row['max'] / scale:10.1f} {growth:>18}"
        )
    answered = {key: int(value) for key, value in last.items() if key.startswith("requests_")}
    errors = {key: int(value) for key, value in last.items() if key.startswith("upstream_errors")}
    print(f"gateway answered: {answered}")
    print(f"upstream errors: {errors}")
    print(
        f"wrk: {last['wrk_requests']} requests, {last['wrk_errors']} non-2xx/connect/timeout, "
        f"socket errors {last['wrk_socket_errors']}"
    )
    print(f"fault clients: {dict(sorted(last['faults'].items()))}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="load duration (60)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples (10)")
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="seconds left out of the verdict (60)"
    )
    parser.add_argument("--flap-seconds", type=float, default=5.0, help="flapping period (5)")
    parser.add_argument(
        "--redis",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start redis-server for the Redis routes, paused now and then (default on)",
    )
    parser.add_argument(
        "--max-rss-growth", type=float, default=10.0, help="RSS growth allowed, percent (10)"
    )
    parser.add_argument("--max-fd-growth", type=float, default=50.0, help="fd growth allowed (50)")
    parser.add_argument(
        "--max-task-growth", type=float, default=50.0, help="task growth allowed (50)"
    )
    parser.add_argument(
        "--rss-limit",
        type=float,
        default=4096.0,
        help="end the soak early, as a failure, when the worker's RSS passes this many MiB (4096)",
    )
    parser.add_argument(
        "--gateway-build", type=Path, help="run the gateway from this installed tree"
    )
    parser.add_argument(
        "--faults",
        default=",".join(FAULT_CLIENTS),
        help=f"fault clients to run, comma-separated, from {', '.join(FAULT_CLIENTS)} (all); "
        "an empty string runs wrk alone",
    )
    parser.add_argument("--json", type=Path, help="write the settings and every sample here")
    parser.add_argument(
        "--logs", type=Path, help="copy the gateway's and the upstreams' logs into this directory"
    )
    args = parser.parse_args()
    args.faults = frozenset(item for item in args.faults.split(",") if item)
    if unknown := args.faults - FAULT_CLIENTS.keys():
        parser.error(f"--faults: unknown {', '.join(sorted(unknown))}")
    if args.minutes <= 0 or args.sample <= 0:
        parser.error("--minutes and --sample must be positive")
    return args


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM ends the soak like Ctrl-C: through the finally blocks that stop everything.
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    ensure_tools(("nginx", "wrk", "redis-server") if args.redis else ("nginx", "wrk"))
    signal.signal(signal.SIGTERM, _interrupt)
    ports = {name: free_port() for name in ("nginx", "app", "flap", "gateway", "admin")}
    processes: list[subprocess.Popen[bytes]] = []
    samples: list[dict[str, Any]] = []
    rig: FaultRig | None = None
    wrk: WrkLoop | None = None
    interrupted = False
    stopped_early: str | None = None
    with tempfile.TemporaryDirectory(prefix="gw-soak-") as tmp:
        workdir = Path(tmp)
        try:
            processes.append(
                start(
                    nginx_argv(workdir, nginx_upstream_conf(workdir, ports["nginx"])),
                    workdir / "nginx-upstream.log",
                )
            )
            redis: subprocess.Popen[bytes] | None = None
            redis_url = None
            if args.redis:
                redis, redis_url = start_redis(workdir)
                processes.append(redis)
            rig = FaultRig(ports, args.flap_seconds, redis, args.faults)
            rig.start_servers()
            conf = gateway_soak_conf(workdir, ports, redis_url)
            gateway = start(gateway_argv(conf, args.gateway_build), workdir / "gateway.log")
            processes.append(gateway)
            wait_for_port(ports["nginx"], log=workdir / "nginx-upstream.log")
            wait_for_port(ports["gateway"], log=workdir / "gateway.log")
            wait_for_port(ports["admin"], log=workdir / "gateway.log")
            (pid,) = worker_children(gateway.pid)
            build = loaded_build(pid)
            print(
                f"gateway worker {pid}, build: {build}, admin http://127.0.0.1:{ports['admin']}",
                flush=True,
            )
            script = workdir / "soak.lua"
            script.write_text(f"REDIS = {'true' if redis_url else 'false'}\n" + WRK_SCRIPT)
            wrk = WrkLoop(ports["gateway"], script)
            wrk.start()
            rig.start_clients()
            started = time.monotonic()
            deadline = started + args.minutes * 60
            print(f"{'t s':>6} {'RSS MiB':>8} {'fds':>5} {'tasks':>6} {'conns':>6} {'2xx':>9}")
            # Samples on a fixed schedule from the start, the last one at the deadline.
            next_sample = started
            while next_sample < deadline:
                next_sample = min(next_sample + args.sample, deadline)
                time.sleep(max(0.0, next_sample - time.monotonic()))
                if rig.error is not None:
                    raise RuntimeError(f"the fault rig failed: {rig.error!r}")
                if gateway.poll() is not None:
                    raise RuntimeError(f"the gateway exited ({gateway.returncode})")
                try:
                    sample = take_sample(started, pid, ports["admin"], wrk, rig)
                except FileNotFoundError:
                    # The worker died and was restarted: follow the new one (counted in
                    # worker_restarts; its fresh heap makes the RSS series meaningless).
                    (pid,) = worker_children(gateway.pid)
                    continue
                samples.append(sample)
                print(
                    f"{sample['t']:6.0f} {sample['rss'] / 2**20:8.1f} {sample['fds']:5d} "
                    f"{sample.get('event_loop_tasks', 0):6.0f} {sample.get('connections', 0):6.0f} "
                    f"{sample.get('requests_2xx', 0):9.0f}",
                    flush=True,
                )
                if sample["rss"] > args.rss_limit * 2**20:
                    # A leak this fast would take the machine down before the hour is up.
                    stopped_early = f"RSS passed --rss-limit {args.rss_limit} MiB"
                    print(f"stopping early: {stopped_early}", flush=True)
                    break
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted: stopping everything", file=sys.stderr)
        finally:
            if wrk is not None:
                wrk.stop()
            if rig is not None:
                rig.stop()
            stop(processes)
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log in workdir.glob("*.log"):
                    shutil.copy(log, args.logs / log.name)
    if not samples:
        print("no samples taken", file=sys.stderr)
        return 1
    summary = summarise(samples, args.warmup)
    failures = verdicts(summary, args)
    if stopped_early:
        failures.append(stopped_early)
    print_table(summary, samples[-1])
    if args.json:
        settings = {key: str(value) for key, value in vars(args).items()}
        args.json.write_text(
            json.dumps(
                {
                    "settings": settings,
                    "summary": summary,
                    "failures": failures,
                    "samples": samples,
                },
                indent=2,
            )
        )
    if failures:
        print(f"FAIL: {'; '.join(failures)}")
        return 1
    if interrupted:
        return 130
    print("PASS: RSS, fds and tasks flat within the thresholds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
