"""Small GET pass-through: the gateway against nginx as a reverse proxy, in one run.

Both proxies run one worker in front of the same upstream (nginx answering a 114-byte JSON with
`return 200`, keep-alive to it on both sides), with access logs off. wrk drives each in turn,
rotating rounds so that drift on this shared machine hits all alike, and the script prints
requests/s, latency and the ratio to nginx (a ratio, not absolute numbers: DESIGN.md §2).
`--observability` adds the gateway with access logs on and with metrics off, and prints what
metrics plus access logging cost as a ratio.

    .venv/bin/python loadtests/compare_nginx.py [--rounds 3] [--duration 10] [--observability]

Needs `nginx` and `wrk` (Debian packages; installed with apt-get when missing and run as root).
`loadtests/bench.py` is the full harness (HAProxy too, body and 1,000-connection scenarios, idle
memory, CPU per request); this script stays for the observability comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from targets import (
    MAX_REQUESTS,
    WrkResult,
    ensure_tools,
    free_port,
    gateway_argv,
    gateway_conf,
    nginx_argv,
    nginx_proxy_conf,
    nginx_upstream_conf,
    run_wrk,
    start,
    stop,
    wait_for_port,
)

# Gateway variants: (access log, metrics). "gateway" is the configuration the ratio is
# reported for (metrics on, access log off on both sides); --observability adds the variants
# that price metrics and access logging.
VARIANTS = {
    "gateway": (False, True),
    "gw+logs": (True, True),
    "gw-bare": (False, False),
}


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
        try:
            processes.append(
                start(nginx_argv(workdir, nginx_upstream_conf(workdir, upstream_port)))
            )
            # Only GET / is sent: the body routes point at the same upstream and go unused.
            nginx_file = nginx_proxy_conf(
                workdir, (upstream_port, upstream_port, nginx_port), max_requests=MAX_REQUESTS
            )
            processes.append(start(nginx_argv(workdir, nginx_file)))
            for name in names:
                access_log, metrics = VARIANTS[name]
                config = gateway_conf(
                    workdir,
                    name,
                    (upstream_port, upstream_port, ports[name]),
                    access_log=access_log,
                    metrics=metrics,
                )
                # Access lines go to /dev/null: their cost is formatting and queueing, not a disk.
                processes.append(start(gateway_argv(config)))
            for port in (upstream_port, *ports.values()):
                wait_for_port(port)
            results: dict[str, list[WrkResult]] = {name: [] for name in ports}
            # Warm everything up (connection pools, caches) before measuring.
            for port in ports.values():
                run_wrk(f"http://127.0.0.1:{port}/", 2, args.connections)
            order = list(ports.items())
            for _ in range(args.rounds):
                for name, port in order:
                    results[name].append(
                        run_wrk(f"http://127.0.0.1:{port}/", args.duration, args.connections)
                    )
                # Rotate so that no target always runs first (or right after the same one).
                order = order[1:] + order[:1]
        finally:
            stop(processes)
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
