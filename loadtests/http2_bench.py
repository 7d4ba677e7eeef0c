"""The HTTP/2 section of the harness: HTTP/2 to clients against the gateway's HTTP/1.1 path, and
what enabling HTTP/2 costs HTTP/1.1.

    .venv/bin/python loadtests/http2_bench.py --gateway-build build/compiled [--duration 10]
        [--connections 50] [--rounds 2] [--quick] [--json out.json]

`bench.py` runs it as its `--http2` section (on by default, with its `--duration`); alone, this
script starts the same upstream, nginx answering `return 200` with the 114-byte JSON. Every
gateway here has one worker and every request is the small GET (/), in three parts:

1. Cleartext, on one gateway with three listeners: plain HTTP/1.1, h2c with prior knowledge
   (`http2: {h2c: true}`) and TLS (below). On the plain one `wrk -t1 -cC` (the client of every
   other section) and `h2load --h1 -cC`; on the h2c one `h2load -cC -m1` and `-m10` (-m: the
   streams each connection keeps in flight). The HTTP/2 rows' ratio (`vs h1`) is to
   `h2load --h1`, the same client on both sides: wrk and h2load do not cost the same per
   request, and they share the 2 cores with the gateway.
2. TLS, on the same gateway: `h2load --h1` over https (ALPN http/1.1) as the baseline of
   `h2load -m1` and `-m10` (ALPN h2). The certificate is made at run time by trustme in the
   temporary directory (nothing is committed).
3. HTTP/1.1 with HTTP/2 enabled: `wrk -t1 -cC` on the plain listener of fresh gateways that
   differ only in their listeners: `h1-only` (`server.listen`, a config written before HTTP/2),
   `h2-idle` (the same listener plus an h2c one and a TLS one, idle) and `h2c-sniffing` (the
   plain listener itself with `h2c: true`: each connection's first bytes go through the
   preface sniffer). They run in turn, A B C A B C for `--rounds` 2 (bench.py runs 2 whatever
   its own `--rounds`, to keep the section under 3 minutes), and the table gives each one's
   median and its ratio to `h1-only`'s. The target is a loss of at most 3%: a ratio of
   0.97 or more.

Each measurement follows a 1 s warm-up run of the same client on the same listener, and lasts
`--duration` seconds (10). The rows give requests/s, the mean request time (h2load has no
percentiles) or wrk's p50 and p99, and the CPU time (utime + stime) of the gateway's worker
per request over the run. A request h2load counts as failed, errored or timed out, a status
other than 2xx, a wrk error, or an application protocol other than the one asked for fails the
section (`Http2BenchError`); before measuring, each listener answers the GET once through
urllib or nghttp and the body is checked.

The h2 listeners of parts 1 and 2 allow a million streams per connection: at the default, 1000
(as HTTP/1.1's `max_requests_per_connection`), the gateway sends GOAWAY and refuses the
streams the client had sent past it (REFUSED_STREAM, which browsers retry), and h2load counts
those as errored instead of retrying them. An HTTP/1.1 client sees `Connection: close` before
its next request and loses nothing, so that side keeps the default.

The gateway of parts 1 and 2 keeps up to 256 idle connections to the upstream (the default
`pool.max_connections`) where the harness's other gateways keep 64: `-m10` holds 500 requests
in flight, and with 64 the pool closed and reopened upstream connections as the in-flight
count swung around them (`pool._connect` 9% of the worker's CPU), so that row measured the
pool's sizing rather than HTTP/2 (0.23-0.26x of HTTP/1.1 against 0.37x with 256; HTTP/1.1 at
-c50 never holds more than 50 and is the same either way).

`--quick`: a smoke run, 2 s per measurement. Needs nginx, wrk, h2load and nghttp (Debian
`nghttp2-client`; installed with apt-get when missing and run as root) and trustme (the dev
extra).
"""

from __future__ import annotations

import argparse
import json
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final
from urllib.request import urlopen

from targets import (
    BODY,
    cpu_seconds,
    ensure_tools,
    free_port,
    gateway_argv,
    gateway_conf,
    loaded_build,
    nginx_argv,
    nginx_upstream_conf,
    run_wrk,
    start,
    stop,
    wait_for_port,
    worker_children,
)

TITLE = "small GET (114 B)"
TOOLS: Final = ("nginx", "wrk", "h2load", "nghttp")
# See the docstring: h2load does not retry the streams refused after a GOAWAY.
H2_STREAMS_PER_CONNECTION: Final = 1_000_000
# See the docstring: idle upstream connections kept by parts 1 and 2's gateway.
UPSTREAM_IDLE: Final = 256
STREAMS: Final = (1, 10)
WARM_UP: Final = 1
QUICK_DURATION: Final = 2
# The most HTTP/1.1 may lose with HTTP/2 enabled (the issue's target).
LOSS_TARGET: Final = 0.97
LOSS_VARIANTS: Final = ("h1-only", "h2-idle", "h2c-sniffing")


class Http2BenchError(RuntimeError):
    """A measurement of the section went wrong: failed requests, a wrong protocol or answer."""


@dataclass(frozen=True)
class Settings:
    duration: int = 10
    connections: int = 50
    # Rounds of part 3, each running every variant once.
    rounds: int = 2


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path
    # Trusts the CA that signed ``cert``: the TLS checks verify it like a client would.
    client: ssl.SSLContext


# h2load.


@dataclass(frozen=True)
class H2loadResult:
    requests_per_s: float
    # Requests finished within the duration; the ones in flight at its end are not counted.
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    protocol: str
    mean_ms: float


_H2LOAD_UNITS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _find(pattern: str, output: str) -> re.Match[str]:
    found = re.search(pattern, output, re.M)
    if found is None:
        raise Http2BenchError(f"h2load output without {pattern!r}:\n{output[-3000:]}")
    return found


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise Http2BenchError(f"h2load: not a duration: {text!r}")
    return float(match.group(1)) * _H2LOAD_UNITS[match.group(2)]


def parse_h2load(output: str) -> H2loadResult:
    """The figures of h2load's summary (nghttp2 1.52's format)."""
    rps = float(_find(r"^finished in [\d.]+m?s, ([\d.]+) req/s", output).group(1))
    requests = _find(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        output,
    )
    done, succeeded, failed, errored, timeout = (int(value) for value in requests.groups()[2:])
    status_2xx = int(_find(r"^status codes: (\d+) 2xx", output).group(1))
    protocol = _find(r"^Application protocol: (\S+)", output).group(1)
    # min, max, mean, sd: the mean is the third.
    timing = _find(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", output)
    return H2loadResult(
        rps,
        done,
        succeeded,
        failed,
        errored,
        timeout,
        status_2xx,
        protocol,
        _duration_ms(timing.group(3)),
    )


def check_h2load(label: str, result: H2loadResult, protocol: str) -> None:
    """Raise Http2BenchError unless every request of the run succeeded with a 2xx over
    ``protocol`` (what h2load's `Application protocol` line says)."""
    problems = []
    if result.protocol != protocol:
        problems.append(f"application protocol {result.protocol}, not {protocol}")
    if result.done == 0:
        problems.append("no request done")
    if result.failed or result.errored or result.timeout:
        # h2load's failed requests include its errored ones (no answer) and those answered
        # with a status other than 2xx or 3xx.
        problems.append(
            f"{result.failed} of {result.done} requests failed ({result.errored} errored, "
            f"{result.timeout} timed out)"
        )
    elif result.status_2xx != result.done:
        # 3xx: h2load counts them as successes, but this route answers 200.
        problems.append(f"{result.done - result.status_2xx} of {result.done} answers not 2xx")
    if problems:
        raise Http2BenchError(f"{label}: {'; '.join(problems)}")


def h2load_argv(url: str, duration: int, connections: int, streams: int | None) -> list[str]:
    """h2load with one thread for ``duration`` seconds; ``streams`` None: HTTP/1.1 (--h1)."""
    mode = ["--h1"] if streams is None else [f"-m{streams}"]
    return ["h2load", "-t1", f"-c{connections}", "-D", str(duration), *mode, url]


def run_h2load(url: str, duration: int, connections: int, streams: int | None) -> H2loadResult:
    argv = h2load_argv(url, duration, connections, streams)
    finished = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    if finished.returncode != 0:
        raise Http2BenchError(
            f"{' '.join(argv)} exited with {finished.returncode}:\n"
            f"{(finished.stdout + finished.stderr)[-3000:]}"
        )
    return parse_h2load(finished.stdout)


# Measurements.


@dataclass
class Row:
    """One measurement: a client against one listener of one gateway."""

    label: str
    client: str
    rps: float
    requests: int
    errors: int
    cpu_us_per_request: float
    mean_ms: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    # Over the baseline of its table (h2load --h1 for parts 1 and 2, h1-only for part 3).
    ratio: float | None = None


@dataclass(frozen=True)
class Gateway:
    label: str
    # The serving processes: the worker, not the supervisor.
    pids: tuple[int, ...]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)


def measure_h2load(
    gateway: Gateway,
    label: str,
    url: str,
    *,
    protocol: str,
    streams: int | None,
    settings: Settings,
) -> Row:
    """A warm-up run, then the measured one; raises Http2BenchError if a request failed."""
    # A separate run, not h2load's --warm-up-time: the worker's CPU time can only be read
    # around a whole run, and it must cover the requests counted and no others.
    warm_up = run_h2load(url, WARM_UP, settings.connections, streams)
    check_h2load(f"{label} (warm-up)", warm_up, protocol)
    before = gateway.cpu()
    result = run_h2load(url, settings.duration, settings.connections, streams)
    used = gateway.cpu() - before
    check_h2load(label, result, protocol)
    client = "h2load --h1" if streams is None else f"h2load -m{streams}"
    return Row(
        label,
        client,
        result.requests_per_s,
        result.done,
        result.failed + result.errored + result.timeout,
        used / result.done * 1e6,
        mean_ms=result.mean_ms,
    )


def measure_wrk(gateway: Gateway, label: str, url: str, settings: Settings) -> Row:
    """One wrk run (no warm-up: the caller's); raises Http2BenchError on any error."""
    before = gateway.cpu()
    result = run_wrk(url, settings.duration, settings.connections)
    used = gateway.cpu() - before
    if result.errors or not result.requests:
        raise Http2BenchError(
            f"{label}: {result.errors} errors in {result.requests} requests "
            f"(socket errors {result.socket_errors})"
        )
    return Row(
        label,
        f"wrk -t1 -c{settings.connections}",
        result.requests_per_s,
        result.requests,
        result.errors,
        used / result.requests * 1e6,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
    )


def set_ratios(rows: list[Row], baseline: Row) -> None:
    for row in rows:
        row.ratio = row.rps / baseline.rps if baseline.rps > 0 else None


# Gateways.


def make_certificate(workdir: Path) -> Certificate:
    """A CA and a certificate for 127.0.0.1 signed by it, made now, in ``workdir`` (deleted
    with it: no key material outlives the run)."""
    try:
        import trustme
    except ImportError:
        sys.exit("http2: trustme is missing: pip install -e '.[dev]'")
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    cert, key = workdir / "http2-server.crt", workdir / "http2-server.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return Certificate(cert, key, client)


def listener(
    port: int,
    *,
    h2c: bool = False,
    tls: Certificate | None = None,
    streams_per_connection: int | None = None,
) -> str:
    """One item of `server.listeners`, as a YAML flow mapping."""
    http2 = []
    if h2c:
        http2.append("h2c: true")
    if streams_per_connection is not None:
        http2.append(f"max_requests_per_connection: {streams_per_connection}")
    items = [f'listen: "127.0.0.1:{port}"']
    if http2:
        items.append(f"http2: {{{', '.join(http2)}}}")
    if tls is not None:
        # JSON strings are YAML flow scalars, whatever the temporary directory's name.
        items.append(f"tls: {{cert: {json.dumps(str(tls.cert))}, key: {json.dumps(str(tls.key))}}}")
    return "{" + ", ".join(items) + "}"


def start_gateway(
    workdir: Path,
    label: str,
    conf: Path,
    *,
    ports: tuple[int, ...],
    build: Path | None,
    processes: list[subprocess.Popen[bytes]],
) -> Gateway:
    """Start the gateway of ``conf`` (appended to ``processes``); once all ``ports`` listen."""
    log = workdir / f"{label}.log"
    process = start(gateway_argv(conf, build), log)
    processes.append(process)
    for port in ports:
        wait_for_port(port, log=log)
    return Gateway(label, worker_children(process.pid))


def check_http1(label: str, url: str, context: ssl.SSLContext | None = None) -> None:
    with urlopen(url, timeout=10, context=context) as response:
        data = response.read()
    if data != BODY.encode():
        raise Http2BenchError(f"{label}: wrong answer to {url}: {data[:200]!r}")


def check_http2(label: str, url: str) -> None:
    """GET ``url`` over HTTP/2 with nghttp (h2c with prior knowledge for http://, ALPN h2 for
    https://: it fails if the server does not select h2) and check the body."""
    finished = subprocess.run(["nghttp", url], capture_output=True, timeout=30, check=False)
    if finished.returncode != 0 or finished.stdout != BODY.encode():
        raise Http2BenchError(
            f"{label}: nghttp {url} exited with {finished.returncode}: "
            f"{finished.stdout[:200]!r} {finished.stderr[-500:]!r}"
        )


# The three parts.


def run_protocols(
    workdir: Path,
    upstreams: tuple[int, int],
    build: Path | None,
    settings: Settings,
    certificate: Certificate,
) -> dict[str, Any]:
    """Parts 1 and 2: HTTP/1.1 and HTTP/2, cleartext and TLS, on one gateway."""
    plain, h2c, tls = free_port(), free_port(), free_port()
    conf = gateway_conf(
        workdir,
        "http2",
        (*upstreams, plain),
        max_idle=UPSTREAM_IDLE,
        listeners=(
            listener(h2c, h2c=True, streams_per_connection=H2_STREAMS_PER_CONNECTION),
            listener(tls, tls=certificate, streams_per_connection=H2_STREAMS_PER_CONNECTION),
        ),
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        gateway = start_gateway(
            workdir, "http2", conf, ports=(plain, h2c, tls), build=build, processes=processes
        )
        base, h2c_base, tls_base = (
            f"http://127.0.0.1:{plain}/",
            f"http://127.0.0.1:{h2c}/",
            f"https://127.0.0.1:{tls}/",
        )
        check_http1("h1", base)
        check_http2("h2c", h2c_base)
        check_http1("tls h1", tls_base, certificate.client)
        check_http2("tls h2", tls_base)
        build_loaded = loaded_build(gateway.pids[0])
        run_wrk(base, WARM_UP, settings.connections)
        cleartext = [
            measure_wrk(gateway, "h1 wrk", base, settings),
            measure_h2load(
                gateway, "h1 h2load", base, protocol="http/1.1", streams=None, settings=settings
            ),
        ]
        cleartext += [
            measure_h2load(
                gateway, f"h2c -m{m}", h2c_base, protocol="h2c", streams=m, settings=settings
            )
            for m in STREAMS
        ]
        secure = [
            measure_h2load(
                gateway,
                "tls h1 h2load",
                tls_base,
                protocol="http/1.1",
                streams=None,
                settings=settings,
            )
        ]
        secure += [
            measure_h2load(
                gateway, f"tls h2 -m{m}", tls_base, protocol="h2", streams=m, settings=settings
            )
            for m in STREAMS
        ]
    finally:
        stop(processes)
    set_ratios(cleartext[1:], cleartext[1])
    set_ratios(secure, secure[0])
    return {
        "gateway_build": build_loaded,
        "cleartext": [asdict(row) for row in cleartext],
        "tls": [asdict(row) for row in secure],
        # What TLS costs each protocol, with the same client (h2load) on both sides.
        "tls_vs_cleartext": {
            clear.client: tls_row.rps / clear.rps if clear.rps > 0 else None
            for clear, tls_row in zip(cleartext[1:], secure, strict=True)
        },
    }


def loss_summary(runs: dict[str, list[Row]], baseline: str = "h1-only") -> dict[str, Any]:
    """Per variant: the median requests/s of its runs and its ratio to ``baseline``'s median,
    the median p99, the errors summed and the CPU per request over all its runs."""
    medians = {label: statistics.median(row.rps for row in rows) for label, rows in runs.items()}
    base = medians[baseline]
    summary: dict[str, Any] = {}
    for label, rows in runs.items():
        requests = sum(row.requests for row in rows)
        cpu = sum(row.cpu_us_per_request * row.requests for row in rows)
        summary[label] = {
            "rps": medians[label],
            "runs_rps": [row.rps for row in rows],
            "p99_ms": statistics.median(row.p99_ms or 0.0 for row in rows),
            "errors": sum(row.errors for row in rows),
            "requests": requests,
            "cpu_us_per_request": cpu / requests if requests else 0.0,
            "vs_h1_only": medians[label] / base if base > 0 else None,
        }
    return summary


def run_h1_loss(
    workdir: Path,
    upstreams: tuple[int, int],
    build: Path | None,
    settings: Settings,
    certificate: Certificate,
) -> dict[str, Any]:
    """Part 3: HTTP/1.1 on gateways without and with HTTP/2 listeners, in alternation."""
    processes: list[subprocess.Popen[bytes]] = []
    ports = {label: free_port() for label in LOSS_VARIANTS}
    idle_h2c, idle_tls = free_port(), free_port()
    confs = {
        "h1-only": (gateway_conf(workdir, "h1-only", (*upstreams, ports["h1-only"])), ()),
        "h2-idle": (
            gateway_conf(
                workdir,
                "h2-idle",
                (*upstreams, ports["h2-idle"]),
                listeners=(listener(idle_h2c, h2c=True), listener(idle_tls, tls=certificate)),
            ),
            (idle_h2c, idle_tls),
        ),
        "h2c-sniffing": (
            gateway_conf(workdir, "h2c-sniffing", (*upstreams, ports["h2c-sniffing"]), h2c=True),
            (),
        ),
    }
    try:
        gateways = {
            label: start_gateway(
                workdir,
                label,
                conf,
                ports=(ports[label], *extra),
                build=build,
                processes=processes,
            )
            for label, (conf, extra) in confs.items()
        }
        for label in LOSS_VARIANTS:
            check_http1(label, f"http://127.0.0.1:{ports[label]}/")
        # HTTP/2 is really on where it should be, though idle while measured.
        check_http2("h2-idle h2c", f"http://127.0.0.1:{idle_h2c}/")
        check_http2("h2-idle tls h2", f"https://127.0.0.1:{idle_tls}/")
        check_http2("h2c-sniffing", f"http://127.0.0.1:{ports['h2c-sniffing']}/")
        for label in LOSS_VARIANTS:
            run_wrk(f"http://127.0.0.1:{ports[label]}/", WARM_UP, settings.connections)
        runs: dict[str, list[Row]] = {label: [] for label in LOSS_VARIANTS}
        # Alternation, not one variant's runs in a row: drift on this shared machine then
        # hits every variant alike.
        for _ in range(settings.rounds):
            for label in LOSS_VARIANTS:
                url = f"http://127.0.0.1:{ports[label]}/"
                runs[label].append(measure_wrk(gateways[label], label, url, settings))
    finally:
        stop(processes)
    return {
        "summary": loss_summary(runs),
        "runs": {label: [asdict(row) for row in rows] for label, rows in runs.items()},
    }


def run_section(
    workdir: Path, upstreams: tuple[int, int], build: Path | None, settings: Settings
) -> dict[str, Any]:
    """The whole section, on fresh gateways stopped at the end. ``upstreams`` is (small, body):
    only the small one (nginx's 114-byte JSON) is requested here."""
    certificate = make_certificate(workdir)
    protocols = run_protocols(workdir, upstreams, build, settings, certificate)
    loss = run_h1_loss(workdir, upstreams, build, settings, certificate)
    return {"settings": asdict(settings), **protocols, "h1_loss": loss}


# Output.


def _cell(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def _print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    print(title)
    for row in rows:
        print(
            f"  {row['label']:14} {row['client']:13} {row['rps']:9.0f} "
            f"{_cell(row['mean_ms'], 8, 2)} {_cell(row['p50_ms'], 7, 2)} "
            f"{_cell(row['p99_ms'], 7, 2)} {row['errors']:7d} {_cell(row['ratio'], 7, 3)} "
            f"{row['cpu_us_per_request']:11.1f}"
        )


def print_section(results: dict[str, Any]) -> None:
    settings = results["settings"]
    connections, duration = settings["connections"], settings["duration"]
    print(
        f"\nhttp2: {TITLE}: GET /, one gateway worker, {connections} connections, "
        f"{duration} s per run after a {WARM_UP} s warm-up, gateway build "
        f"{results['gateway_build']}"
    )
    print(
        f"  {'':14} {'client':13} {'req/s':>9} {'mean ms':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'errors':>7} {'vs h1':>7} {'CPU us/req':>11}"
    )
    _print_rows("cleartext (vs h1: over h2load --h1)", results["cleartext"])
    _print_rows("tls (vs h1: over tls h2load --h1)", results["tls"])
    costs = ", ".join(
        f"{client} {_cell(value, 0, 3).strip()}"
        for client, value in results["tls_vs_cleartext"].items()
    )
    print(f"tls over cleartext, same client: {costs}")
    loss = results["h1_loss"]["summary"]
    print(
        f"\nhttp2: HTTP/1.1 with HTTP/2 enabled: wrk -t1 -c{connections} -d{duration}s on the "
        f"plain listener, {settings['rounds']} alternating rounds, medians"
    )
    print(
        f"{'gateway':13} {'req/s (median)':>15} {'p99 ms':>8} {'errors':>7} {'vs h1-only':>10} "
        f"{'CPU us/req':>11}  runs"
    )
    for label, s in loss.items():
        runs = " ".join(f"{rps:.0f}" for rps in s["runs_rps"])
        print(
            f"{label:13} {s['rps']:15.0f} {s['p99_ms']:8.2f} {s['errors']:7d} "
            f"{_cell(s['vs_h1_only'], 10, 3)} {s['cpu_us_per_request']:11.1f}  {runs}"
        )
    if duration < 10:
        # A 2 s run on this shared machine moves by more than the target's 3%.
        print(f"(runs of {duration} s: a smoke run, the verdicts below are noise)")
    for label in LOSS_VARIANTS[1:]:
        ratio = loss[label]["vs_h1_only"]
        if ratio is not None:
            verdict = "within" if ratio >= LOSS_TARGET else "OUTSIDE"
            print(
                f"{label}: {ratio:.3f}x h1-only's HTTP/1.1 req/s, {verdict} the target "
                f"(at most {1 - LOSS_TARGET:.0%} loss)"
            )


# Alone.


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement (10)")
    parser.add_argument("--connections", type=int, default=50, help="clients' connections (50)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating rounds of the HTTP/1.1-loss part (2)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_DURATION} s per measurement (overrides --duration)",
    )
    parser.add_argument(
        "--gateway-build",
        type=Path,
        help="run the gateway from this installed tree (`make compiled` writes build/compiled); "
        "default: the source tree",
    )
    parser.add_argument("--json", type=Path, help="write every run and summary here")
    args = parser.parse_args()
    if args.quick:
        args.duration = QUICK_DURATION
    # h2load -m10 needs at least a connection; wrk refuses fewer connections than threads (1).
    if args.duration < 1 or args.connections < 1 or args.rounds < 1:
        parser.error("--duration, --connections and --rounds: 1 or more")
    return args


def main() -> int:
    args = parse_args()
    ensure_tools(TOOLS)
    settings = Settings(args.duration, args.connections, args.rounds)
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="gw-h2-bench-") as tmp:
        workdir = Path(tmp)
        small_port = free_port()
        try:
            processes.append(
                start(
                    nginx_argv(workdir, nginx_upstream_conf(workdir, small_port)),
                    workdir / "nginx-upstream.log",
                )
            )
            wait_for_port(small_port, log=workdir / "nginx-upstream.log")
            # No body upstream: nothing here requests its routes.
            results = run_section(workdir, (small_port, small_port), args.gateway_build, settings)
        except Http2BenchError as error:
            print(f"\nhttp2: FAILED: {error}", file=sys.stderr)
            return 1
        finally:
            stop(processes)
    print_section(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
