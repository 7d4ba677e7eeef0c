"""The features section of the harness: what each gateway feature costs a pass-through request.

The small GET (`wrk -t1 -c50`) against fresh gateways that differ in one feature each, in
rotating rounds like every other scenario, with the ratio of each to the gateway with none:

- `off`: no feature (the same config as the main scenarios);
- `ratelimit-memory`: a per-client-IP token bucket on every route, in the host's shared table;
- `ratelimit-redis`: the same bucket in a redis-server started here (Debian package).

The limits never refuse (a million requests a second; wrk's connections are one client), so the
figure is the price of a decision, not of 429s. Later issues add their features here.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path
from typing import Any

from targets import (
    add_ratio,
    free_port,
    gateway_argv,
    gateway_conf,
    launch,
    print_summaries,
    start,
    wait_for_port,
)

# Label -> the rate_limit backend of its gateway (None: no feature).
VARIANTS: dict[str, str | None] = {
    "off": None,
    "ratelimit-memory": "memory",
    "ratelimit-redis": "redis",
}


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing: apt-get install -y redis-server")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(workdir), "--maxmemory-policy", "volatile-ttl"]
    process = start(argv, workdir / "redis.log")
    wait_for_port(port, log=workdir / "redis.log")
    return process, f"redis://127.0.0.1:{port}/0"


def start_feature_gateways(
    workdir: Path,
    upstreams: tuple[int, int],
    build: Path | None,
    processes: list[subprocess.Popen[bytes]],
) -> list[tuple[str, int, tuple[int, ...]]]:
    """Redis and one gateway per variant (appended to ``processes``), once all serve:
    (label, port, worker pids) each."""
    redis, url = start_redis(workdir)
    processes.append(redis)
    argvs = {}
    for label, backend in VARIANTS.items():
        port = free_port()
        conf = gateway_conf(
            workdir,
            f"feature-{label}",
            (*upstreams, port),
            rate_limit=backend,
            redis_url=url if backend == "redis" else None,
        )
        argvs[label] = (port, gateway_argv(conf, build))
    return launch(workdir, argvs, processes)


def add_ratios(outcome: dict[str, Any]) -> dict[str, Any]:
    """Each variant's requests/s over the gateway without features (`vs_off`)."""
    return add_ratio(outcome, "off", "vs_off")


def print_features(results: dict[str, Any], args: argparse.Namespace, title: str) -> None:
    print(
        f"\nfeatures: {title}: GET /, wrk -t1 -c50 -d{args.duration}s, gateway with one feature "
        f"each, {args.rounds} rotating rounds"
    )
    print_summaries(results, label="variant", width=17, ratio="vs_off", ratio_title="vs off")
