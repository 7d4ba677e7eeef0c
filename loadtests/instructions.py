"""Instructions per proxied request, counted by callgrind: a repeatable measure of the hot path.

    .venv/bin/python loadtests/instructions.py [--build build/compiled] [--requests 2000]

Wall-clock figures on a shared machine drift by tens of percent; an instruction count does
not. This starts the nginx upstream of the harness, runs the gateway in one process under
`valgrind --tool=callgrind` (user space only: Python, uvloop, httptools, libc; no kernel) and
sends it keep-alive GETs from a separate process, three fields each as curl sends them, over 10
connections. It does so twice, with a few hundred requests and with that many more, so that
start-up and shutdown cancel out, and prints the difference divided by the extra requests.
Needs valgrind and nginx (Debian packages). `--build` serves from an installed tree such as
`make compiled`'s instead of the source checkout. About a minute per run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from targets import (
    build_environment,
    ensure_tools,
    free_port,
    gateway_conf,
    nginx_argv,
    nginx_upstream_conf,
    start,
    stop,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
CONNECTIONS = 10
WARM_UP = 200
BASE = 500

# Runs inside valgrind: the gateway in this process until SIGTERM, its port written to a file.
SERVE = """
import asyncio, signal, sys
import uvloop
from gateway.app import start
from gateway.config.loader import load_config

async def main() -> None:
    gateway = await start(load_config(sys.argv[1]), admin=False)
    with open(sys.argv[2], "w") as out:
        out.write(str(gateway.address[1]))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await gateway.drain(1)

uvloop.run(main())
"""


async def _client(port: int, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
    finally:
        writer.close()


async def send(port: int, total: int) -> None:
    """``total`` GETs over CONNECTIONS keep-alive connections."""
    await asyncio.gather(*(_client(port, total // CONNECTIONS) for _ in range(CONNECTIONS)))


def count_instructions(config: Path, workdir: Path, build: Path | None, requests: int) -> int:
    """Callgrind's program total for a gateway that served WARM_UP + ``requests`` requests."""
    port_file = workdir / f"port-{requests}"
    out = workdir / f"callgrind-{requests}.out"
    serve = workdir / "serve.py"
    serve.write_text(SERVE)
    env = dict(os.environ)
    if build is not None:
        env |= build_environment(build)
    gateway = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(serve),
            str(config),
            str(port_file),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text()):
            if gateway.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the gateway did not start under valgrind")
            time.sleep(0.2)
        port = int(port_file.read_text())
        asyncio.run(send(port, WARM_UP))
        asyncio.run(send(port, requests))
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait()
    report = subprocess.run(
        ["callgrind_annotate", str(out)], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", report)
    if found is None:
        raise SystemExit("no program total in callgrind's report")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build", type=Path, help="serve from this installed tree")
    parser.add_argument(
        "--requests", type=int, default=2000, help="extra requests of the second run (2000)"
    )
    args = parser.parse_args()
    ensure_tools(("nginx", "valgrind"))
    with tempfile.TemporaryDirectory(prefix="gw-instructions-") as tmp:
        workdir = Path(tmp)
        upstream_port = free_port()
        nginx = start(nginx_argv(workdir, nginx_upstream_conf(workdir, upstream_port)))
        try:
            config = gateway_conf(workdir, "gateway", (upstream_port, free_port(), 0))
            base = count_instructions(config, workdir, args.build, BASE)
            more = count_instructions(config, workdir, args.build, BASE + args.requests)
        finally:
            stop([nginx])
    per_request = (more - base) / args.requests
    print(f"instructions per proxied GET: {per_request:,.0f} ({args.build or 'source'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
