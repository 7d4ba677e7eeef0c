"""Small GET pass-through: the gateway against nginx as a reverse proxy, in one run.

Both proxies run one worker in front of the same upstream (nginx answering a 114-byte JSON with
`return 200`, keep-alive to it on both sides), with access logs off. wrk drives each in turn,
alternating rounds so that drift on this shared machine hits both alike, and the script prints
requests/s, latency and the ratio gateway/nginx (a ratio, not absolute numbers: DESIGN.md §2).

    .venv/bin/python loadtests/compare_nginx.py [--rounds 3] [--duration 10] [--connections 50]

Needs `nginx` and `wrk` (Debian packages; installed with apt-get when missing and run as root).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

# 114 bytes of JSON, as in DESIGN.md §2.
BODY = (
    '{"id":12345,"name":"example","tags":["a","b","c"],"active":true,'
    '"score":98.6,"note":"greetings from the upstream"}'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_tools() -> None:
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: apt-get install -y {' '.join(missing)}")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def nginx_conf(workdir: Path, upstream_port: int, proxy_port: int, max_requests: int) -> Path:
    conf = workdir / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            worker_processes 1;
            daemon off;
            pid {workdir}/nginx.pid;
            error_log {workdir}/error.log warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {workdir}/body;
                proxy_temp_path {workdir}/proxy;
                fastcgi_temp_path {workdir}/fastcgi;
                uwsgi_temp_path {workdir}/uwsgi;
                scgi_temp_path {workdir}/scgi;
                keepalive_requests {max_requests};
                server {{
                    listen 127.0.0.1:{upstream_port} reuseport;
                    keepalive_requests 100000;
                    location / {{ default_type application/json; return 200 '{BODY}'; }}
                }}
                upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
                server {{
                    listen 127.0.0.1:{proxy_port};
                    location / {{
                        proxy_pass http://app;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_set_header Host $host;
                        proxy_set_header X-Forwarded-For $remote_addr;
                    }}
                }}
            }}
            """
        )
    )
    return conf


def gateway_conf(workdir: Path, upstream_port: int, gateway_port: int) -> Path:
    conf = workdir / "gateway.yaml"
    conf.write_text(
        textwrap.dedent(
            f"""\
            server:
              listen: "127.0.0.1:{gateway_port}"
            admin:
              listen: "127.0.0.1:0"
            logging:
              access_log: false
            upstreams:
              app:
                targets: ["http://127.0.0.1:{upstream_port}"]
                pool: {{ max_idle: 64 }}
            routes:
              - name: all
                upstream: app
            """
        )
    )
    return conf


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(port: int, duration: int, connections: int) -> WrkResult:
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _latency_ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _latency_ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: .*?(\d+) timeout"):
        found = re.search(pattern, output)
        if found:
            errors += int(found.group(1))
    return WrkResult(rps, p50, p99, errors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    ensure_tools()
    upstream_port, nginx_port, gateway_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        workdir = Path(tmp)
        nginx_file = nginx_conf(workdir, upstream_port, nginx_port, 1000)
        gateway_file = gateway_conf(workdir, upstream_port, gateway_port)
        nginx = subprocess.Popen(
            ["nginx", "-p", str(workdir), "-c", str(nginx_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(gateway_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for port in (upstream_port, nginx_port, gateway_port):
                wait_for_port(port)
            results: dict[str, list[WrkResult]] = {"nginx": [], "gateway": []}
            # Warm both up (connection pools, caches) before measuring.
            run_wrk(nginx_port, 2, args.connections)
            run_wrk(gateway_port, 2, args.connections)
            for round_number in range(args.rounds):
                order = [("nginx", nginx_port), ("gateway", gateway_port)]
                if round_number % 2:
                    order.reverse()
                for name, port in order:
                    results[name].append(run_wrk(port, args.duration, args.connections))
        finally:
            for process in (gateway, nginx):
                process.send_signal(signal.SIGTERM)
            for process in (gateway, nginx):
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
    summary: dict[str, dict[str, float]] = {}
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} alternating rounds")
    print(f"{'proxy':8} {'req/s (median)':>15} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, runs in results.items():
        rps = statistics.median(r.requests_per_s for r in runs)
        p50 = statistics.median(r.p50_ms for r in runs)
        p99 = statistics.median(r.p99_ms for r in runs)
        errors = sum(r.errors for r in runs)
        summary[name] = {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}
        print(f"{name:8} {rps:15.0f} {p50:8.2f} {p99:8.2f} {errors:7d}")
    ratio = summary["gateway"]["rps"] / summary["nginx"]["rps"]
    print(f"ratio gateway/nginx: {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
