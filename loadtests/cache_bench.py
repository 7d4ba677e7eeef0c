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
    add_ratio,
    free_port,
    gateway_argv,
    gateway_conf,
    launch,
    nginx_argv,
    nginx_edge_conf,
    print_summaries,
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
    port = free_port()
    conf = nginx_edge_conf(workdir, "nginx-cache", upstreams[0], port, cache=True)
    argvs = {"nginx-cache": (port, nginx_argv(workdir, conf))}
    for store in ("memory", "redis"):
        port = free_port()
        conf = gateway_conf(
            workdir,
            f"cache-{store}",
            (*upstreams, port),
            cache=store,
            redis_url=url if store == "redis" else None,
        )
        argvs[f"gateway-{store}"] = (port, gateway_argv(conf, build))
    started = launch(workdir, argvs, processes)
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
    return add_ratio(outcome, "nginx-cache", "vs_nginx")


def print_cache(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\ncache: {TITLE}: GET {PATH}, wrk -t1 -c50 -d{args.duration}s, every request a hit, "
        f"{args.rounds} rotating rounds"
    )
    print_summaries(results, label="target", width=15, ratio="vs_nginx", ratio_title="vs nginx")
