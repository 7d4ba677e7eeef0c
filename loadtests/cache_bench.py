"""The cache section of the harness: cache hits against nginx's `proxy_cache` hits.

The small upstream's `/cached` answers the small GET's body with `Cache-Control:
max-age=3600`. Three fresh proxies cache it: nginx with `proxy_cache` (one worker), the
gateway with `cache: {store: memory}` and with `cache: {store: redis}` (a redis-server started
here), one worker each. After a warm-up request, every request is a hit; `wrk -t1 -c50` on
`/cached` in rotating rounds, with each one's ratio to nginx (issue 6 targets 0.5 or better for
the memory store).
"""

from __future__ import annotations

import argparse
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from features import start_redis
from targets import (
    free_port,
    gateway_argv,
    gateway_conf,
    nginx_argv,
    nginx_edge_conf,
    start,
    wait_for_port,
    worker_children,
)

PATH = "/cached"
TITLE = "cache hits, small GET (114 B)"


def start_cache_targets(
    workdir: Path,
    upstreams: tuple[int, int],
    build: Path | None,
    processes: list[subprocess.Popen[bytes]],
) -> list[tuple[str, int, tuple[int, ...]]]:
    """nginx with proxy_cache and the gateway with each store (appended to ``processes``),
    warmed: (label, port, serving pids) each."""
    redis, url = start_redis(workdir)
    processes.append(redis)
    launched: list[tuple[str, int, subprocess.Popen[bytes], bool]] = []
    port = free_port()
    conf = nginx_edge_conf(workdir, "nginx-cache", upstreams[0], port, cache=True)
    nginx = start(nginx_argv(workdir, conf), workdir / "nginx-cache.log")
    processes.append(nginx)
    launched.append(("nginx-cache", port, nginx, True))
    for store in ("memory", "redis"):
        port = free_port()
        conf = gateway_conf(
            workdir,
            f"cache-{store}",
            (*upstreams, port),
            cache=store,
            redis_url=url if store == "redis" else None,
        )
        process = start(gateway_argv(conf, build), workdir / f"cache-{store}.log")
        processes.append(process)
        launched.append((f"gateway-{store}", port, process, True))
    started = []
    for label, port, process, _ in launched:
        wait_for_port(port, log=workdir / f"{label}.log")
        started.append((label, port, worker_children(process.pid)))
    for label, port, _ in started:
        check_hits(label, port)
    return started


def check_hits(label: str, port: int) -> None:
    """The second request to ``/cached`` is a hit: the section measures hits, nothing else."""
    statuses = []
    for _ in range(3):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{PATH}", timeout=5) as response:
                response.read()
                statuses.append(
                    response.headers.get("X-Cache-Status")
                    or response.headers.get("Cache-Status", "")
                )
        except urllib.error.HTTPError as error:
            raise SystemExit(f"{label}: {PATH} answered {error.code}: {error.read()!r}") from None
    last = statuses[-1]
    if not (last == "HIT" or "; hit" in last):
        raise SystemExit(f"{label}: {PATH} is not served from its cache: {statuses}")


def add_ratios(outcome: dict[str, Any]) -> dict[str, Any]:
    """Each target's requests/s over nginx's (`vs_nginx`)."""
    nginx = outcome["nginx-cache"]["summary"]["rps"]
    for data in outcome.values():
        data["summary"]["vs_nginx"] = data["summary"]["rps"] / nginx if nginx else None
    return outcome


def print_cache(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\ncache: {TITLE}: GET {PATH}, wrk -t1 -c50 -d{args.duration}s, every request a hit, "
        f"{args.rounds} rotating rounds"
    )
    print(
        f"{'target':15} {'req/s (median)':>15} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'vs nginx':>9} {'CPU us/req':>11}"
    )
    for label, data in results.items():
        s = data["summary"]
        print(
            f"{label:15} {s['rps']:15.0f} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['errors']:7d} "
            f"{s['vs_nginx']:9.3f} {s['cpu_us_per_request']:11.1f}"
        )
