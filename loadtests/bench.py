"""The gateway against nginx and HAProxy as reverse proxies, scenario by scenario, in one run.

    .venv/bin/python loadtests/bench.py [--rounds 3] [--duration 10] [--scenarios small,64k]
        [--targets nginx,gateway] [--idle 10000] [--no-scaling] [--scaling-threads 2]
        [--json out.json] [--png out.png]

Three proxies, one worker (or thread) each, access logs off, keep-alive to the upstreams, all on
loopback, each configured by this script in a temporary directory:

- nginx: `worker_processes 1`, upstream `keepalive 64`, `keepalive_requests` = the gateway's
  `max_requests_per_connection` (1000);
- HAProxy: `nbthread 1`, http mode, `http-reuse always`, no logging (it has no per-connection
  request limit, so its client connections stay open);
- the gateway: `workers: 1`, metrics on, access log off.

Upstreams: nginx answering `return 200` with 114 bytes of JSON, and an aiohttp app
(`loadtests/upstream_app.py`) for the body scenarios. Scenarios (`--scenarios`, all by default):

- `small`: GET / (114 bytes) with `wrk -t1 -c50`;
- `64k`: GET /bytes/65536 with `wrk -t1 -c50`;
- `post16k`: POST /echo with a 16 KiB body (a wrk Lua script), `wrk -t1 -c50`;
- `c1000`: GET / with 1,000 concurrent keep-alive connections (`wrk -t1 -c1000`).

Each scenario runs `--rounds` rounds after a short warm-up; every round runs every target, in an
order rotated by one per round so that drift on this shared machine hits all alike. The table
per scenario gives the median requests/s, the median p50 and p99 latency, the errors summed over
the rounds (non-2xx responses, connect errors, and timeouts: wrk's default of 2 s a request;
read and write errors are in the JSON), the ratio to nginx, and the CPU time per request of each
proxy's serving process (utime + stime from /proc of the gateway's worker, nginx's worker and
HAProxy, over all rounds, divided by the requests wrk counted), in µs.

Idle memory (`--idle N`, 10,000 by default, 0 skips it), measured first, on fresh processes:
this process opens N keep-alive connections to each proxy, one request each, waits 2 s, and
reports the serving process's RSS growth per connection (and how many connections the proxy
closed meanwhile, which should be 0; the gateway's keep-alive timeout is set to 300 s). The fd
limit is raised to the hard limit (inherited by the proxies); HAProxy refuses to start unless
twice its maxconn fits it, so with a hard limit of 20,000 it gets 9,900 connections.

Features (`--features`, on by default), on fresh processes: the small GET against gateways that
differ in one feature each (`loadtests/features.py`: rate limiting in memory and in a Redis it
starts), with each one's ratio to the gateway without features.

Cache (`--cache`, on by default), on fresh processes: hits of the small GET's body from nginx's
`proxy_cache` and from the gateway's memory and Redis cache stores (`loadtests/cache_bench.py`),
with each one's ratio to nginx.

Compression (`--compression`, on by default), on fresh processes: 32 KiB of JSON compressed
with gzip 6 by nginx (`gzip on`) and by the gateway, each with and without its cache, asked for
gzip and for identity (`loadtests/compression_bench.py`): the gateway's ratio to nginx, and
compressed cache hits against identity hits.

Resilience (`--resilience`, on by default), on fresh processes: the small GET with one of two
targets dead (a port nothing listens on), nginx, HAProxy and the gateway with their usual
settings (`loadtests/resilience_bench.py`), each with its ratio to itself with the live target
alone and the gateway's to nginx's.

HTTP/2 (`--http2`, on by default), on fresh processes (`loadtests/http2_bench.py`): the small
GET over HTTP/2 against the gateway's HTTP/1.1 path with the same client, h2load (`--h1`
against `-m1` and `-m10` streams per connection), cleartext (h2c with prior knowledge) and over
TLS (ALPN, a certificate made at run time), plus wrk on HTTP/1.1 as elsewhere; then HTTP/1.1
(wrk) on gateways without and with idle HTTP/2 listeners, in alternation, each one's median
over the one without (the target: at most 3% loss). `--duration` seconds per run; about 2.5
minutes at 10 s. A failed or errored request fails the section: its error is printed and kept
in the JSON, the other sections run, and the script exits with status 1.

Scaling (`--scaling`, on by default; `--no-scaling` skips it), last, on fresh processes: the
`small` scenario against nginx with `worker_processes 1` and `2` and against the gateway with
`workers: 1` and `2` (those of `--targets` that are nginx or the gateway), all four in every round,
rotated as above. Every one of these runs uses `wrk -t2 -c50` (`--scaling-threads`): the same wrk
on both sides of a ratio, so that more wrk threads cannot pass for a worker's gain, and two so
that one wrk thread does not cap the two-worker side. With 2 workers each has its own listening
socket on the port (SO_REUSEPORT: the gateway's supervisor starts two worker processes; nginx gets
`reuseport`), so the kernel spreads the connections alike on both sides; the run waits until both
sockets listen, and the CPU per request sums the workers' processes (not the supervisor or the
master). The table gives requests/s, p99, errors and CPU per request for each, the ratio of 2
workers to 1 per proxy, and the gateway's ratio over nginx's. wrk and the upstream nginx compete
for this machine's 2 cores with the proxy, so 2.0 is out of reach: nginx's ratio is the ceiling
here, and the gateway's relative to it (1.0: as well as nginx) is the figure that says whether
`workers: auto` scales.

`--gateway-build PATH` runs the gateway from an installed tree instead of the source checkout:
`make bench` passes `build/compiled`, the mypyc build of setup.py that the Docker image ships,
and the output says which build the gateway's worker actually loaded.

Before measuring, every target answers each scenario's request once and the answer is checked
(body, size, echoed size), so that a wrong route cannot pass for a fast one.

`--json PATH` writes every run and summary (the scaling section under `scaling`); `--png PATH`
draws requests/s per scenario and target (needs matplotlib: `pip install -e '.[bench]'`; the
scaling section is not drawn).

Needs `nginx`, `wrk`, `haproxy`, `redis-server`, and `h2load` and `nghttp` for the HTTP/2
section (Debian packages, the last two in `nghttp2-client`; installed with apt-get when missing
and run as root), and trustme (the dev extra) for its certificate. Ratios within one run matter,
not absolute numbers (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import cache_bench
import compression_bench
import http2_bench
import resilience_bench
from features import add_ratios, print_features, start_feature_gateways
from targets import (
    BODY,
    JSON_PATH,
    WrkResult,
    cpu_seconds,
    ensure_tools,
    free_port,
    gateway_argv,
    gateway_conf,
    haproxy_argv,
    haproxy_conf,
    haproxy_maxconn,
    hard_fd_limit,
    loaded_build,
    nginx_argv,
    nginx_proxy_conf,
    nginx_upstream_conf,
    raise_fd_limit,
    rss_bytes,
    run_wrk,
    start,
    stop,
    upstream_app_argv,
    wait_for_listeners,
    wait_for_port,
    worker_children,
)

POST_SCRIPT = """\
wrk.method = "POST"
wrk.body = string.rep("x", 16384)
wrk.headers["Content-Type"] = "application/octet-stream"
"""


@dataclass(frozen=True)
class Scenario:
    title: str
    path: str
    connections: int
    post: bool = False


SCENARIOS = {
    "small": Scenario("small GET (114 B)", "/", 50),
    "64k": Scenario("64 KiB responses", "/bytes/65536", 50),
    "post16k": Scenario("16 KiB POST bodies", "/echo", 50, post=True),
    "c1000": Scenario("small GET, 1,000 keep-alive connections", "/", 1000),
}
TARGETS = ("nginx", "haproxy", "gateway")


@dataclass
class Target:
    name: str
    port: int
    # The processes that serve the requests (nginx's workers, not its master; the gateway's
    # workers, not its supervisor), for CPU and RSS.
    pids: tuple[int, ...]

    def cpu(self) -> float:
        """The CPU seconds used so far by all the serving processes together."""
        return sum(cpu_seconds(pid) for pid in self.pids)

    def rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids)


def check_answers(targets: list[Target], *, small_only: bool = False) -> None:
    """Each scenario's request through each target reaches the right upstream, whole
    (``small_only``: only the small GET, for proxies in front of the small upstream alone)."""
    body = b"x" * 16384
    for target in targets:
        base = f"http://127.0.0.1:{target.port}"
        checks = (
            (Request(f"{base}/"), lambda data: data == BODY.encode()),
            (Request(f"{base}/bytes/65536"), lambda data: len(data) == 65536),
            (
                Request(f"{base}/echo", data=body, method="POST"),
                lambda data: json.loads(data) == {"received": len(body)},
            ),
        )
        for request, valid in checks[:1] if small_only else checks:
            with urlopen(request, timeout=10) as response:
                data = response.read()
            if not valid(data):
                sys.exit(f"{target.name}: wrong answer to {request.full_url}: {data[:200]!r}")


def summarise(runs: list[WrkResult], cpu: float) -> dict[str, float]:
    requests = sum(run.requests for run in runs)
    return {
        "rps": statistics.median(run.requests_per_s for run in runs),
        "p50_ms": statistics.median(run.p50_ms for run in runs),
        "p99_ms": statistics.median(run.p99_ms for run in runs),
        "errors": sum(run.errors for run in runs),
        "requests": requests,
        "cpu_us_per_request": cpu / requests * 1e6 if requests else 0.0,
    }


def run_scenario(
    scenario: Scenario,
    targets: list[Target],
    *,
    rounds: int,
    duration: int,
    script: Path | None,
    threads: int = 1,
) -> dict[str, Any]:
    def once(target: Target, seconds: int) -> tuple[WrkResult, float]:
        before = target.cpu()
        result = run_wrk(
            f"http://127.0.0.1:{target.port}{scenario.path}",
            seconds,
            scenario.connections,
            script=script,
            threads=threads,
        )
        return result, target.cpu() - before

    for target in targets:  # warm-up: connection pools, caches, the JIT-less interpreter's dicts
        once(target, 1)
    runs: dict[str, list[WrkResult]] = {target.name: [] for target in targets}
    cpu: dict[str, float] = dict.fromkeys(runs, 0.0)
    for index in range(rounds):
        shift = index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            result, used = once(target, duration)
            runs[target.name].append(result)
            cpu[target.name] += used
    return {
        name: {"summary": summarise(results, cpu[name]), "runs": [r.as_dict() for r in results]}
        for name, results in runs.items()
    }


def print_table(name: str, scenario: Scenario, results: dict[str, Any], args: Any) -> None:
    print(
        f"\n{name}: {scenario.title}: {'POST' if scenario.post else 'GET'} {scenario.path}, "
        f"wrk -t1 -c{scenario.connections} -d{args.duration}s, {args.rounds} rotating rounds"
    )
    columns = (
        ("req/s (median)", 15),
        ("p50 ms", 8),
        ("p99 ms", 8),
        ("errors", 7),
        ("vs nginx", 9),
        ("CPU us/req", 11),
    )
    print(f"{'target':8} " + " ".join(f"{title:>{width}}" for title, width in columns))
    nginx_rps = results["nginx"]["summary"]["rps"] if "nginx" in results else None
    for target, data in results.items():
        s = data["summary"]
        ratio = f"{s['rps'] / nginx_rps:9.3f}" if nginx_rps else f"{'-':>9}"
        print(
            f"{target:8} {s['rps']:15.0f} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} "
            f"{s['errors']:7d} {ratio} {s['cpu_us_per_request']:11.1f}"
        )


# Scaling: the small GET against 1 and 2 workers of nginx and of the gateway.

SCALING_TARGETS = ("nginx", "gateway")
SCALING_WORKERS = (1, 2)
SCALING_SCENARIO = "small"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``; None when either is missing or the denominator is not > 0."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def scaling_ratios(rps: Mapping[str, Mapping[int, float]]) -> dict[str, Any]:
    """Each target's median requests/s with 2 workers over 1, and the gateway's ratio over nginx's.

    ``rps`` maps target -> workers -> median requests/s. nginx's ratio is what this machine
    allows (wrk and the upstream share its cores), so the gateway's is judged against it. A
    ratio is None when a side was not run or its denominator is 0: a 1-worker run that served
    nothing must not make the 2-worker one look infinitely better.
    """
    ratios = {target: ratio(by.get(2), by.get(1)) for target, by in rps.items()}
    return {
        "ratio_2w_1w": ratios,
        "gateway_vs_nginx": ratio(ratios.get("gateway"), ratios.get("nginx")),
    }


def scaling_label(name: str, workers: int) -> str:
    return f"{name}-{workers}w"


def scaling_argv(
    name: str, workers: int, workdir: Path, ports: tuple[int, int, int], build: Path | None
) -> list[str]:
    """``ports`` is (small upstream, body upstream, listen), as in :func:`target_argv`."""
    label = scaling_label(name, workers)
    if name == "nginx":
        return nginx_argv(workdir, nginx_proxy_conf(workdir, ports, name=label, workers=workers))
    return gateway_argv(gateway_conf(workdir, label, ports, workers=workers), build)


def start_scaling_targets(
    names: list[str],
    workdir: Path,
    upstreams: tuple[int, int],
    processes: list[subprocess.Popen[bytes]],
    build: Path | None,
) -> list[Target]:
    """Start every target with 1 and 2 workers (appended to ``processes``); once all serve."""
    launched: list[tuple[str, int, int, subprocess.Popen[bytes]]] = []
    for name in names:
        for workers in SCALING_WORKERS:
            label = scaling_label(name, workers)
            port = free_port()
            argv = scaling_argv(name, workers, workdir, (*upstreams, port), build)
            process = start(argv, workdir / f"{label}.log")
            processes.append(process)
            launched.append((label, workers, port, process))
    targets: list[Target] = []
    for label, workers, port, process in launched:
        wait_for_port(port, log=workdir / f"{label}.log")
        # The port answers once the first worker listens: measuring then would time one worker
        # where two were meant.
        wait_for_listeners(port, workers)
        targets.append(Target(label, port, worker_children(process.pid, workers)))
    return targets


def run_scaling(
    names: list[str], workdir: Path, upstreams: tuple[int, int], args: argparse.Namespace
) -> dict[str, Any]:
    """The small GET against ``names`` with 1 and 2 workers each, in rotating rounds.

    Fresh processes, stopped at the end: both sides of a ratio start in the same state, and
    they do not sit in memory during the other scenarios.
    """
    processes: list[subprocess.Popen[bytes]] = []
    try:
        targets = start_scaling_targets(names, workdir, upstreams, processes, args.gateway_build)
        check_answers(targets)
        outcome = run_scenario(
            SCENARIOS[SCALING_SCENARIO],
            targets,
            rounds=args.rounds,
            duration=args.duration,
            script=None,
            threads=args.scaling_threads,
        )
    finally:
        stop(processes)
    by_target = {
        name: {workers: outcome[scaling_label(name, workers)] for workers in SCALING_WORKERS}
        for name in names
    }
    rps = {
        name: {workers: data["summary"]["rps"] for workers, data in by_workers.items()}
        for name, by_workers in by_target.items()
    }
    settings = {
        "scenario": SCALING_SCENARIO,
        "wrk_threads": args.scaling_threads,
        "connections": SCENARIOS[SCALING_SCENARIO].connections,
        "workers": list(SCALING_WORKERS),
    }
    return {"settings": settings, "targets": by_target, **scaling_ratios(rps)}


def run_features(
    workdir: Path, upstreams: tuple[int, int], args: argparse.Namespace
) -> dict[str, Any]:
    """The small GET against one fresh gateway per feature variant (loadtests/features.py)."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        started = start_feature_gateways(workdir, upstreams, args.gateway_build, processes)
        targets = [Target(label, port, pids) for label, port, pids in started]
        check_answers(targets)
        outcome = run_scenario(
            SCENARIOS["small"], targets, rounds=args.rounds, duration=args.duration, script=None
        )
    finally:
        stop(processes)
    return add_ratios(outcome)


def run_cache(
    workdir: Path, upstreams: tuple[int, int], args: argparse.Namespace
) -> dict[str, Any]:
    """Cache hits: nginx proxy_cache and the gateway's stores (loadtests/cache_bench.py)."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        started = cache_bench.start_cache_targets(workdir, upstreams, args.gateway_build, processes)
        targets = [Target(label, port, pids) for label, port, pids in started]
        scenario = Scenario(cache_bench.TITLE, cache_bench.PATH, 50)
        outcome = run_scenario(
            scenario, targets, rounds=args.rounds, duration=args.duration, script=None
        )
    finally:
        stop(processes)
    return cache_bench.add_ratios(outcome)


def run_resilience(
    workdir: Path, upstreams: tuple[int, int], args: argparse.Namespace
) -> dict[str, Any]:
    """One of two targets dead, each proxy against itself healthy (resilience_bench.py)."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        started = resilience_bench.start_resilience_targets(
            workdir, upstreams, args.gateway_build, processes
        )
        targets = [Target(label, port, pids) for label, port, pids in started]
        check_answers(targets, small_only=True)
        outcome = run_scenario(
            SCENARIOS["small"], targets, rounds=args.rounds, duration=args.duration, script=None
        )
    finally:
        stop(processes)
    return resilience_bench.add_ratios(outcome)


def run_compression(
    workdir: Path, upstreams: tuple[int, int], args: argparse.Namespace
) -> dict[str, Any]:
    """gzip against nginx's, and compressed cache hits (loadtests/compression_bench.py)."""
    processes: list[subprocess.Popen[bytes]] = []
    script = workdir / "gzip.lua"
    script.write_text(compression_bench.GZIP_SCRIPT)
    try:
        started = compression_bench.start_compression_targets(
            workdir, upstreams, args.gateway_build, processes
        )
        gzip_bytes = {
            label: compression_bench.check_answers(label, port, compression_bench.TARGETS[label])
            for label, port, _ in started
        }
        targets = [Target(label, port, pids) for label, port, pids in started]
        scenario = Scenario(compression_bench.TITLE, JSON_PATH, 50)
        outcome = {
            coding: run_scenario(
                scenario,
                targets,
                rounds=args.rounds,
                duration=args.duration,
                script=script if coding == "gzip" else None,
            )
            for coding in compression_bench.CODINGS
        }
    finally:
        stop(processes)
    return {"gzip_bytes": gzip_bytes, "runs": compression_bench.add_ratios(outcome)}


def _optional(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.3f}"


def print_scaling(results: dict[str, Any], args: argparse.Namespace) -> None:
    scenario = SCENARIOS[SCALING_SCENARIO]
    print(
        f"\nscaling: {scenario.title}: GET {scenario.path}, "
        f"wrk -t{args.scaling_threads} -c{scenario.connections} -d{args.duration}s "
        f"for 1 and 2 workers alike, {args.rounds} rotating rounds"
    )
    print(
        f"{'target':8} {'workers':>7} {'req/s (median)':>15} {'p99 ms':>8} {'errors':>7} "
        f"{'CPU us/req':>11} {'2w/1w':>7}"
    )
    for name, by_workers in results["targets"].items():
        for workers, data in by_workers.items():
            s = data["summary"]
            # The ratio goes on the 2-worker line, the one it is about.
            scaled = results["ratio_2w_1w"][name] if workers == 2 else None
            shown = _optional(scaled, 7) if workers == 2 else f"{'':7}"
            print(
                f"{name:8} {workers:7d} {s['rps']:15.0f} {s['p99_ms']:8.2f} {s['errors']:7d} "
                f"{s['cpu_us_per_request']:11.1f} {shown}"
            )
    relative = results["gateway_vs_nginx"]
    if relative is not None:
        print(
            f"gateway 2w/1w relative to nginx 2w/1w: {relative:.3f} "
            "(1.0: the gateway gains from a second worker what nginx gains on this machine)"
        )


# Idle keep-alive connections.

_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.I)


async def _open_idle(
    port: int, count: int, parallel: int = 200
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    gate = asyncio.Semaphore(parallel)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened.append((reader, writer))
            writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = _LENGTH.search(head)
            await reader.readexactly(int(length.group(1)) if length else 0)

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    except BaseException:
        for _, writer in opened:
            writer.close()
        raise
    return opened


async def _idle_memory(target: Target, count: int, settle: float) -> dict[str, float]:
    before = target.rss()
    started = time.monotonic()
    connections = await _open_idle(target.port, count)
    opened_in = time.monotonic() - started
    await asyncio.sleep(settle)
    after = target.rss()
    closed = sum(1 for reader, _ in connections if reader.at_eof())
    for _, writer in connections:
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for _, writer in connections))
    return {
        "connections": count,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_connection": (after - before) / count,
        "closed_by_server": closed,
        "open_seconds": opened_in,
    }


def idle_memory(targets: list[Target], count: int, settle: float = 2.0) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for target in targets:
        # HAProxy cannot take more than its maxconn (bounded by the fd limit) connections.
        wanted = count
        if target.name == "haproxy":
            wanted = min(count, haproxy_maxconn(count + 2000) - 50)
        results[target.name] = asyncio.run(_idle_memory(target, wanted, settle))
        time.sleep(1.0)  # let the proxy reap the closed connections before the next one
    return results


def print_idle(results: dict[str, Any]) -> None:
    if not results:
        return
    print("\nidle keep-alive connections (one request each), RSS of the serving process")
    print(
        f"{'target':8} {'connections':>11} {'before MiB':>11} {'after MiB':>10} "
        f"{'bytes/conn':>11} {'closed':>7}"
    )
    for name, r in results.items():
        print(
            f"{name:8} {r['connections']:11d} {r['rss_before'] / 2**20:11.1f} "
            f"{r['rss_after'] / 2**20:10.1f} {r['bytes_per_connection']:11.0f} "
            f"{r['closed_by_server']:7d}"
        )


def draw_png(path: Path, scenarios: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--png: matplotlib is missing (pip install -e '.[bench]'); no chart", file=sys.stderr)
        return False
    names = list(scenarios)
    targets = list(next(iter(scenarios.values())))
    width = 0.8 / len(targets)
    figure, axes = plt.subplots(figsize=(2.2 * len(names) + 2, 4.5))
    for index, target in enumerate(targets):
        values = [scenarios[name][target]["summary"]["rps"] for name in names]
        positions = [n + (index - (len(targets) - 1) / 2) * width for n in range(len(names))]
        axes.bar(positions, values, width, label=target)
    axes.set_xticks(range(len(names)), names)
    axes.set_ylabel("requests/s (median)")
    axes.set_title("one worker each, loopback, wrk -t1")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def target_argv(
    name: str, workdir: Path, ports: tuple[int, int, int], maxconn: int, build: Path | None
) -> list[str]:
    """The command line of target ``name``; ``ports`` is (small upstream, body upstream, listen)."""
    if name == "nginx":
        return nginx_argv(workdir, nginx_proxy_conf(workdir, ports, connections=maxconn))
    if name == "haproxy":
        return haproxy_argv(haproxy_conf(workdir, ports, maxconn=maxconn))
    return gateway_argv(gateway_conf(workdir, "gateway", ports), build)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="More in docs/performance.md.",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per scenario (default 3)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, from {', '.join(TARGETS)} (default: all)",
    )
    parser.add_argument(
        "--idle",
        type=int,
        default=10_000,
        help="idle keep-alive connections for the memory measurement (default 10000; 0 skips)",
    )
    parser.add_argument(
        "--scaling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the small GET against 1 and 2 workers of nginx and the gateway (default on)",
    )
    parser.add_argument(
        "--features",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="price each gateway feature on the small GET against the gateway without it "
        "(loadtests/features.py; default on; needs redis-server)",
    )
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cache hits of the gateway (memory and Redis stores) against nginx proxy_cache hits "
        "(loadtests/cache_bench.py; default on; needs redis-server)",
    )
    parser.add_argument(
        "--compression",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="32 KiB JSON compressed with gzip 6 by the gateway and by nginx, with and without "
        "their caches (loadtests/compression_bench.py; default on)",
    )
    parser.add_argument(
        "--resilience",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the small GET with one of two targets dead, nginx, HAProxy and the gateway each "
        "against itself healthy (loadtests/resilience_bench.py; default on)",
    )
    parser.add_argument(
        "--http2",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the small GET over HTTP/2 (h2c and TLS, h2load -m1 and -m10) against the gateway's "
        "HTTP/1.1 path, and HTTP/1.1 with idle HTTP/2 listeners against without "
        "(loadtests/http2_bench.py; default on; needs h2load and nghttp)",
    )
    parser.add_argument(
        "--scaling-threads",
        type=int,
        default=2,
        help="wrk threads for every scaling run, 1 and 2 workers alike (default 2)",
    )
    parser.add_argument(
        "--gateway-build",
        type=Path,
        help="run the gateway from this installed tree (`make compiled` writes build/compiled, "
        "the mypyc build the Docker image ships); default: the source tree",
    )
    parser.add_argument("--json", type=Path, help="write every run and summary here")
    parser.add_argument("--png", type=Path, help="bar chart of requests/s (needs matplotlib)")
    args = parser.parse_args()
    for option, known in (("scenarios", SCENARIOS), ("targets", TARGETS)):
        chosen = [item for item in getattr(args, option).split(",") if item]
        unknown = [item for item in chosen if item not in known]
        if unknown or not chosen:
            parser.error(f"--{option}: unknown {', '.join(unknown) or '(none given)'}")
        setattr(args, option, chosen)
    if not 0 <= args.idle <= 15_000:
        parser.error("--idle: 0 to 15000")
    # wrk refuses fewer connections than threads.
    if not 1 <= args.scaling_threads <= SCENARIOS[SCALING_SCENARIO].connections:
        parser.error(f"--scaling-threads: 1 to {SCENARIOS[SCALING_SCENARIO].connections}")
    args.scaling_targets = [name for name in SCALING_TARGETS if name in args.targets]
    if args.scaling and not args.scaling_targets:
        print("scaling: skipped, neither nginx nor the gateway is a target", file=sys.stderr)
        args.scaling = False
    return args


def main() -> int:
    args = parse_args()
    http2_tools = ("h2load", "nghttp") if args.http2 and "gateway" in args.targets else ()
    ensure_tools(("nginx", "wrk", "haproxy", "redis-server", *http2_tools))
    # Children inherit the limit: the proxies hold the idle connections and wrk -c1000 its own.
    fds = raise_fd_limit(hard_fd_limit())
    if fds < args.idle + 2000:
        sys.exit(f"RLIMIT_NOFILE is {fds}: too low for --idle {args.idle}")
    maxconn = args.idle + 2000
    small_port, body_port = free_port(), free_port()
    ports = {name: free_port() for name in args.targets}
    processes: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {
        "settings": {
            "rounds": args.rounds,
            "duration": args.duration,
            "scenarios": {name: vars(SCENARIOS[name]) for name in args.scenarios},
        },
        "scenarios": {},
        "idle": {},
        "features": {},
        "cache": {},
        "compression": {},
        "resilience": {},
        "http2": {},
        "scaling": {},
    }
    # Sections that failed (their error is in the JSON too): the run exits with status 1.
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        workdir = Path(tmp)
        script = workdir / "post16k.lua"
        script.write_text(POST_SCRIPT)
        try:
            processes.append(
                start(
                    nginx_argv(workdir, nginx_upstream_conf(workdir, small_port)),
                    workdir / "nginx-upstream.log",
                )
            )
            processes.append(start(upstream_app_argv(body_port), workdir / "upstream_app.log"))
            launched: list[tuple[str, subprocess.Popen[bytes], bool]] = []
            for name in args.targets:
                argv = target_argv(
                    name, workdir, (small_port, body_port, ports[name]), maxconn, args.gateway_build
                )
                process = start(argv, workdir / f"{name}.log")
                processes.append(process)
                # nginx and the gateway serve from a child process; HAProxy -db from itself.
                launched.append((name, process, name != "haproxy"))
            logs = {small_port: "nginx-upstream", body_port: "upstream_app"}
            logs |= {port: name for name, port in ports.items()}
            for port, log in logs.items():
                wait_for_port(port, log=workdir / f"{log}.log")
            targets = [
                Target(name, ports[name], worker_children(p.pid) if worker else (p.pid,))
                for name, p, worker in launched
            ]
            check_answers(targets)
            gateway_pids = [
                pid for target in targets if target.name == "gateway" for pid in target.pids
            ]
            if gateway_pids:
                results["settings"]["gateway_build"] = build = loaded_build(gateway_pids[0])
                print(f"gateway build: {build}", flush=True)
            # Idle memory first, on fresh processes: after the load scenarios (c1000 above all)
            # a Python worker would reuse freed heap and look cheaper than it is.
            if args.idle:
                results["idle"] = idle_memory(targets, args.idle)
                print_idle(results["idle"])
                sys.stdout.flush()
            for name in args.scenarios:
                scenario = SCENARIOS[name]
                outcome = run_scenario(
                    scenario,
                    targets,
                    rounds=args.rounds,
                    duration=args.duration,
                    script=script if scenario.post else None,
                )
                results["scenarios"][name] = outcome
                print_table(name, scenario, outcome, args)
                sys.stdout.flush()
            if args.features and "gateway" in args.targets:
                results["features"] = run_features(workdir, (small_port, body_port), args)
                print_features(results["features"], args, SCENARIOS["small"].title)
                sys.stdout.flush()
            if args.cache and "gateway" in args.targets:
                results["cache"] = run_cache(workdir, (small_port, body_port), args)
                cache_bench.print_cache(results["cache"], args)
                sys.stdout.flush()
            if args.compression and "gateway" in args.targets:
                results["compression"] = run_compression(workdir, (small_port, body_port), args)
                compression_bench.print_compression(results["compression"], args)
                sys.stdout.flush()
            if args.resilience and "gateway" in args.targets:
                results["resilience"] = run_resilience(workdir, (small_port, body_port), args)
                resilience_bench.print_resilience(results["resilience"], args)
                sys.stdout.flush()
            if args.http2 and "gateway" in args.targets:
                try:
                    results["http2"] = http2_bench.run_section(
                        workdir,
                        (small_port, body_port),
                        args.gateway_build,
                        http2_bench.Settings(duration=args.duration),
                    )
                except http2_bench.Http2BenchError as error:
                    # Loud, but the sections after it still run.
                    print(f"\nhttp2: FAILED: {error}", file=sys.stderr, flush=True)
                    results["http2"] = {"error": str(error)}
                    failed.append("http2")
                else:
                    http2_bench.print_section(results["http2"])
                sys.stdout.flush()
            if args.scaling:
                upstreams = (small_port, body_port)
                results["scaling"] = run_scaling(args.scaling_targets, workdir, upstreams, args)
                print_scaling(results["scaling"], args)
                sys.stdout.flush()
        finally:
            stop(processes)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.png and draw_png(args.png, results["scenarios"]):
        print(f"chart: {args.png}")
    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
