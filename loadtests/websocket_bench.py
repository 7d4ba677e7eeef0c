"""WebSocket relaying against nginx: 1 KiB messages per second, and memory per idle relay.

    .venv/bin/python loadtests/websocket_bench.py [--rounds 3] [--duration 10]
        [--connections 50] [--window 16] [--idle 10000] [--gateway-build build/compiled]

Both proxies relay to the same upstream, one worker each for the throughput part: nginx with
`proxy_http_version 1.1` and the Upgrade/Connection fields passed on (it relays the bytes of
the tunnel as they come, without parsing frames), the gateway with `websocket` on its route (it
parses every frame on both hops, re-masks what it sends the upstream, and checks the limits).

The upstream and the client are built to cost next to nothing per message, so that the proxy is
what is measured: the client keeps `--window` masked 1 KiB binary messages in flight on each of
`--connections` connections, prebuilt, and counts the echoes by their size; the upstream answers
every client frame with a prebuilt 1 KiB frame, also counting by size. They run as separate
processes (`upstream` and `client` subcommands of this script).

Messages per second are echoes counted by the client (each is two relayed messages, one each
way), the median of `--rounds` rounds per proxy in rotating order, with the ratio to nginx and
the CPU time of the proxy's serving process per echo.

Idle memory (`--idle N`, 0 skips it): fresh proxies with 2 workers each (a process here may hold
20,000 descriptors and a relay needs two), N WebSockets opened through each by the `hold`
subcommand (a separate process) and left idle; the serving processes' RSS growth divided by N.
The issue's target is at most 96 KiB per relay.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, cast

from targets import (
    _nginx_preamble,
    _nginx_temp_paths,
    _nginx_user,
    cpu_seconds,
    ensure_tools,
    free_port,
    gateway_argv,
    hard_fd_limit,
    loaded_build,
    nginx_argv,
    raise_fd_limit,
    rss_bytes,
    start,
    stop,
    wait_for_listeners,
    wait_for_port,
    worker_children,
)

PAYLOAD = 1024
# A client frame: FIN+binary, mask bit + 126, 2-byte length, 4-byte mask, payload.
CLIENT_FRAME = bytes((0x82, 0x80 | 126)) + PAYLOAD.to_bytes(2, "big") + b"mask" + bytes(PAYLOAD)
# A server frame: FIN+binary, 126, 2-byte length, payload.
SERVER_FRAME = bytes((0x82, 126)) + PAYLOAD.to_bytes(2, "big") + bytes(PAYLOAD)
KEY = base64.b64encode(b"0123456789abcdef")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TARGETS = ("nginx", "gateway")


def handshake(port: int) -> bytes:
    return (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n"
        % (port, KEY)
    )


# --- the upstream: answers each client frame with one server frame ----------------------------


class FrameCounter(asyncio.Protocol):
    """A handshake head, then frames of one known size, counted, never parsed."""

    frame_size = 0

    def __init__(self) -> None:
        self.head = b""
        self.upgraded = False
        self.pending = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0 or not self.on_head(self.head[:end]):
                return
            data = self.head[end + 4 :]
            self.upgraded = True
        self.pending += len(data)
        count, self.pending = divmod(self.pending, self.frame_size)
        if count:
            self.on_frames(count)

    def on_head(self, head: bytes) -> bool:
        """The peer's handshake head; whether frames follow."""
        raise NotImplementedError

    def on_frames(self, count: int) -> None:
        raise NotImplementedError


class Echo(FrameCounter):
    """The upstream: answers each client frame with one server frame."""

    frame_size = len(CLIENT_FRAME)

    def on_head(self, head: bytes) -> bool:
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        cast(asyncio.Transport, self.transport).write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        return True

    def on_frames(self, count: int) -> None:
        cast(asyncio.Transport, self.transport).write(SERVER_FRAME * count)


async def serve_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


# --- the client: a window of frames in flight per connection ----------------------------------


class Client(FrameCounter):
    """Keeps ``window`` frames in flight, sending one more for each echo."""

    frame_size = len(SERVER_FRAME)

    def __init__(self, window: int, ready: asyncio.Future[None], port: int) -> None:
        super().__init__()
        self.window = window
        self.ready = ready
        self.port = port
        self.received = 0
        self.running = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        cast(asyncio.Transport, self.transport).write(handshake(self.port))

    def on_head(self, head: bytes) -> bool:
        if not head.startswith(b"HTTP/1.1 101"):
            self.ready.set_exception(RuntimeError(head[:200].decode("latin-1")))
            return False
        if not self.ready.done():
            self.ready.set_result(None)
        if self.window:
            cast(asyncio.Transport, self.transport).write(CLIENT_FRAME * self.window)
        return True

    def on_frames(self, count: int) -> None:
        self.received += count
        if self.running:
            cast(asyncio.Transport, self.transport).write(CLIENT_FRAME * count)


async def open_clients(
    port: int, count: int, window: int
) -> list[tuple[asyncio.Transport, Client]]:
    loop = asyncio.get_running_loop()
    opened = []
    for start_at in range(0, count, 200):  # in batches: the listen backlogs stay short
        batch = []
        for _ in range(min(200, count - start_at)):
            ready: asyncio.Future[None] = loop.create_future()
            transport, protocol = await loop.create_connection(
                lambda ready=ready: Client(window, ready, port),  # type: ignore[misc]
                "127.0.0.1",
                port,
            )
            batch.append((transport, protocol))
        await asyncio.wait_for(asyncio.gather(*(p.ready for _, p in batch)), 60)
        opened += batch
    return opened


async def run_client(port: int, connections: int, window: int, duration: float) -> None:
    clients = await open_clients(port, connections, window)
    await asyncio.sleep(0.5)  # past the first windows
    before = sum(p.received for _, p in clients)
    started = time.monotonic()
    await asyncio.sleep(duration)
    after = sum(p.received for _, p in clients)
    elapsed = time.monotonic() - started
    for transport, protocol in clients:
        protocol.running = False
        transport.abort()
    print(json.dumps({"messages": after - before, "seconds": elapsed}))


async def hold(port: int, count: int) -> None:
    clients = await open_clients(port, count, 0)
    print(json.dumps({"open": len(clients)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# --- the proxies ----------------------------------------------------------------------------


def nginx_websocket_conf(workdir: Path, upstream: int, listen: int, workers: int) -> Path:
    name = f"nginx-ws-{workers}w"
    conf = workdir / f"{name}.conf"
    conf.write_text(
        _nginx_user()
        + _nginx_preamble(workdir, name, 12000, workers)
        + "http {\n    access_log off;\n"
        + _nginx_temp_paths(workdir, name)
        + textwrap.dedent(
            f"""
                upstream ws {{ server 127.0.0.1:{upstream}; }}
                server {{
                    listen 127.0.0.1:{listen} backlog=4096 reuseport;
                    location / {{
                        proxy_pass http://ws;
                        proxy_http_version 1.1;
                        proxy_set_header Upgrade $http_upgrade;
                        proxy_set_header Connection "upgrade";
                        proxy_read_timeout 3600s;
                        proxy_send_timeout 3600s;
                    }}
                }}
            }}
            """
        )
    )
    return conf


def gateway_websocket_conf(workdir: Path, upstream: int, listen: int, workers: int) -> Path:
    conf = workdir / f"gateway-ws-{workers}w.yaml"
    conf.write_text(
        textwrap.dedent(
            f"""\
            server:
              listen: "127.0.0.1:{listen}"
              workers: {workers}
              limits: {{max_websockets: 20000}}
            admin: {{listen: "127.0.0.1:0"}}
            logging: {{access_log: false}}
            upstreams:
              ws: {{targets: ["http://127.0.0.1:{upstream}"]}}
            routes:
              - name: ws
                upstream: ws
                websocket: {{max_connections: 20000, idle_timeout: 1h}}
            """
        )
    )
    return conf


def start_proxies(
    workdir: Path, upstream: int, workers: int, build: Path | None, processes: list[Any]
) -> dict[str, tuple[int, tuple[int, ...]]]:
    """nginx and the gateway with ``workers`` workers each: name -> (port, serving pids)."""
    started = {}
    for name in TARGETS:
        port = free_port()
        if name == "nginx":
            argv = nginx_argv(workdir, nginx_websocket_conf(workdir, upstream, port, workers))
        else:
            argv = gateway_argv(gateway_websocket_conf(workdir, upstream, port, workers), build)
        log = workdir / f"{name}-{workers}w.log"
        process = start(argv, log)
        processes.append(process)
        wait_for_port(port, log=log)
        wait_for_listeners(port, workers)
        started[name] = (port, worker_children(process.pid, workers))
    return started


def client(port: int, args: argparse.Namespace, seconds: float) -> dict[str, float]:
    argv = [sys.executable, __file__, "client", "--port", str(port)]
    argv += ["--connections", str(args.connections), "--window", str(args.window)]
    argv += ["--duration", str(seconds)]
    output = subprocess.run(
        argv, capture_output=True, text=True, check=True, timeout=seconds + 120
    ).stdout
    result: dict[str, float] = json.loads(output)
    return result


def throughput(
    proxies: dict[str, tuple[int, tuple[int, ...]]], args: argparse.Namespace
) -> dict[str, Any]:
    for port, _ in proxies.values():
        client(port, args, 1)  # warm-up
    runs: dict[str, list[float]] = {name: [] for name in proxies}
    cpu = dict.fromkeys(proxies, 0.0)
    messages = dict.fromkeys(proxies, 0)
    names = list(proxies)
    for index in range(args.rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            port, pids = proxies[name]
            before = sum(cpu_seconds(pid) for pid in pids)
            result = client(port, args, args.duration)
            cpu[name] += sum(cpu_seconds(pid) for pid in pids) - before
            messages[name] += int(result["messages"])
            runs[name].append(result["messages"] / result["seconds"])
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        summary[name] = {
            "echoes_per_s": statistics.median(runs[name]),
            "runs": runs[name],
            # CPU is measured over the whole client run (0.5 s more than counted).
            "cpu_us_per_echo": cpu[name] / messages[name] * 1e6 if messages[name] else 0.0,
        }
    nginx = summary["nginx"]["echoes_per_s"]
    for data in summary.values():
        data["vs_nginx"] = data["echoes_per_s"] / nginx if nginx else None
    return summary


def idle_memory(
    proxies: dict[str, tuple[int, tuple[int, ...]]], count: int
) -> dict[str, dict[str, float]]:
    results = {}
    for name, (port, pids) in proxies.items():
        before = sum(rss_bytes(pid) for pid in pids)
        holder = subprocess.Popen(
            [sys.executable, __file__, "hold", "--port", str(port), "--count", str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        assert holder.stdin is not None
        opened = json.loads(holder.stdout.readline())["open"]
        time.sleep(2)
        after = sum(rss_bytes(pid) for pid in pids)
        holder.stdin.close()
        holder.wait(timeout=60)
        results[name] = {
            "relays": opened,
            "rss_growth_mib": (after - before) / (1 << 20),
            "kib_per_relay": (after - before) / opened / 1024,
        }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    upstream = sub.add_parser("upstream")
    upstream.add_argument("--port", type=int, required=True)
    load = sub.add_parser("client")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--connections", type=int, default=50)
    load.add_argument("--window", type=int, default=16)
    load.add_argument("--duration", type=float, default=10)
    holder = sub.add_parser("hold")
    holder.add_argument("--port", type=int, required=True)
    holder.add_argument("--count", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--gateway-build", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    raise_fd_limit(hard_fd_limit())
    import uvloop

    if args.command == "upstream":
        uvloop.run(serve_upstream(args.port))
        return 0
    if args.command == "client":
        uvloop.run(run_client(args.port, args.connections, args.window, args.duration))
        return 0
    if args.command == "hold":
        uvloop.run(hold(args.port, args.count))
        return 0
    ensure_tools(("nginx",))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gw-ws-bench-") as tmp:
        workdir = Path(tmp)
        processes: list[Any] = []
        try:
            port = free_port()
            processes.append(
                start(
                    [sys.executable, __file__, "upstream", "--port", str(port)],
                    workdir / "upstream.log",
                )
            )
            wait_for_port(port, log=workdir / "upstream.log")
            proxies = start_proxies(workdir, port, 1, args.gateway_build, processes)
            build = loaded_build(proxies["gateway"][1][0])
            print(f"gateway build: {build}", flush=True)
            results["throughput"] = throughput(proxies, args)
            print(
                f"\nwebsocket: 1 KiB binary messages echoed, {args.connections} connections x "
                f"{args.window} in flight, {args.duration:g}s x {args.rounds} rotating rounds"
            )
            print(
                f"{'target':8} {'echoes/s':>10} {'messages/s':>11} {'vs nginx':>9} "
                f"{'CPU us/echo':>12}"
            )
            for name, data in results["throughput"].items():
                print(
                    f"{name:8} {data['echoes_per_s']:10.0f} {2 * data['echoes_per_s']:11.0f} "
                    f"{data['vs_nginx']:9.3f} {data['cpu_us_per_echo']:12.1f}"
                )
            stop(processes[1:])
            del processes[1:]
            if args.idle:
                proxies = start_proxies(workdir, port, 2, args.gateway_build, processes)
                results["idle"] = idle_memory(proxies, args.idle)
                print(f"\nidle: {args.idle} WebSockets open through each proxy (2 workers), 2 s")
                print(f"{'target':8} {'relays':>7} {'RSS growth MiB':>15} {'KiB/relay':>10}")
                for name, data in results["idle"].items():
                    print(
                        f"{name:8} {data['relays']:7d} {data['rss_growth_mib']:15.1f} "
                        f"{data['kib_per_relay']:10.1f}"
                    )
        finally:
            stop(processes)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
