"""A real redis-server on a free loopback port, started and stopped by the test (Debian package)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung Redis)."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            self.process.wait(10)

    def command(self, *args: str) -> str:
        """One command through redis-cli-free RESP over a socket; the reply's first line."""
        payload = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in args
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(payload)
            return sock.recv(65536).split(b"\r\n", 1)[0].decode()


def start_redis(directory: Path, port: int | None = None) -> RedisServer:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: .ci/system-deps installs it"
    port = port or _free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--maxmemory-policy", "volatile-ttl",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = RedisServer(process, port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if server.command("PING") == "+PONG":
                return server
        time.sleep(0.05)
    server.stop()
    raise AssertionError(f"redis-server did not answer on port {port}")


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = start_redis(directory)
    try:
        yield server
    finally:
        server.stop()
