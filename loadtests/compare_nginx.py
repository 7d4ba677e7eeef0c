"""Small GET pass-through: the gateway against nginx as a reverse proxy, in one run.

Both proxies run one worker in front of the same upstream (nginx answering a 114-byte JSON with
`return 200`, keep-alive to it on both sides), with access logs off. wrk drives each in turn,
rotating rounds so that drift on this shared machine hits all alike, and the script prints
requests/s, latency and the ratio to nginx (a ratio, not absolute numbers: DESIGN.md §2).
`--observability` adds the gateway with access logs on and with metrics off, and prints what
metrics plus access logging cost as a ratio.

    .venv/bin/python loadtests/compare_nginx.py [--rounds 3] [--duration 10] [--observability]

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


# Gateway variants: (access log, metrics). "gateway" is the configuration the ratio is
# reported for (metrics on, access log off on both sides); --observability adds the variants
# that price metrics and access logging.
VARIANTS = {
    "gateway": (False, True),
    "gw+logs": (True, True),
    "gw-bare": (False, False),
}


def gateway_conf(
    workdir: Path, name: str, ports: tuple[int, int], *, access_log: bool, metrics: bool
) -> Path:
    upstream_port, gateway_port = ports
    conf = workdir / f"{name}.yaml"
    conf.write_text(
        textwrap.dedent(
            f"""\
            server:
              listen: "127.0.0.1:{gateway_port}"
            admin:
              listen: "127.0.0.1:0"
              metrics: {"true" if metrics else "false"}
            logging:
              access_log: {"true" if access_log else "false"}
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
    parser.add_argument(
        "--observability",
        action="store_true",
        help="also run the gateway with access logs on (gw+logs) and with metrics off (gw-bare)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    ensure_tools()
    names = list(VARIANTS) if args.observability else ["gateway"]
    upstream_port, nginx_port = free_port(), free_port()
    ports = {"nginx": nginx_port} | {name: free_port() for name in names}
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        workdir = Path(tmp)
        nginx_file = nginx_conf(workdir, upstream_port, nginx_port, 1000)
        processes.append(
            subprocess.Popen(
                ["nginx", "-p", str(workdir), "-c", str(nginx_file)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        for name in names:
            access_log, metrics = VARIANTS[name]
            config = gateway_conf(
                workdir,
                name,
                (upstream_port, ports[name]),
                access_log=access_log,
                metrics=metrics,
            )
            # Access lines go to /dev/null: their cost is formatting and queueing, not a disk.
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gateway", "run", "--config", str(config)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        try:
            for port in (upstream_port, *ports.values()):
                wait_for_port(port)
            results: dict[str, list[WrkResult]] = {name: [] for name in ports}
            # Warm everything up (connection pools, caches) before measuring.
            for port in ports.values():
                run_wrk(port, 2, args.connections)
            order = list(ports.items())
            for _ in range(args.rounds):
                for name, port in order:
                    results[name].append(run_wrk(port, args.duration, args.connections))
                # Rotate so that no target always runs first (or right after the same one).
                order = order[1:] + order[:1]
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
    summary: dict[str, dict[str, float]] = {}
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} rotating rounds")
    columns = ("req/s (median)", 15), ("p50 ms", 8), ("p99 ms", 8), ("errors", 7), ("vs nginx", 9)
    print(f"{'target':8} " + " ".join(f"{title:>{width}}" for title, width in columns))
    nginx_rps = statistics.median(r.requests_per_s for r in results["nginx"])
    for name, runs in results.items():
        rps = statistics.median(r.requests_per_s for r in runs)
        p50 = statistics.median(r.p50_ms for r in runs)
        p99 = statistics.median(r.p99_ms for r in runs)
        errors = sum(r.errors for r in runs)
        summary[name] = {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}
        print(f"{name:8} {rps:15.0f} {p50:8.2f} {p99:8.2f} {errors:7d} {rps / nginx_rps:9.3f}")
    if args.observability:
        cost = summary["gw+logs"]["rps"] / summary["gw-bare"]["rps"]
        print(f"metrics + access log on / both off: {cost:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
