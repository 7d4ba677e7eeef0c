"""Pieces shared by the load-test scripts: tools, configs, processes, wrk and /proc readings.

Everything listens on 127.0.0.1 with a free port. The upstreams:

- nginx answering `return 200` with 114 bytes of JSON (the small GET, DESIGN.md §2);
- `upstream_app.py`, an aiohttp app serving `/bytes/N` (N bytes) and `/echo` (reads a POST body
  and answers its size as JSON), for the body scenarios.

The proxies in front of them route `/bytes/` and `/echo` to the app and everything else to nginx.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# 114 bytes of JSON, as in DESIGN.md §2.
BODY = (
    '{"id":12345,"name":"example","tags":["a","b","c"],"active":true,'
    '"score":98.6,"note":"greetings from the upstream"}'
)
HERE = Path(__file__).resolve().parent
# The compressible response (issue 7): a list endpoint's JSON, 32 KiB.
JSON_PATH = "/json32k"
JSON_SIZE = 32 * 1024
# Client connections are closed after this many requests on every side that has the setting.
MAX_REQUESTS = 1000


def json_document(size: int) -> bytes:
    """Valid JSON of exactly ``size`` bytes: records like an API's list endpoint, as compressible
    as such a response (varied ids, names, e-mails, scores), padded with trailing spaces."""
    records: list[dict[str, Any]] = []
    data = b'{"items":[]}'
    for index in range(size):
        records.append(
            {
                "id": 100000 + index,
                "name": f"user {index}",
                "email": f"user{index}@example.com",
                "active": index % 3 != 0,
                "score": (index * 7919) % 1000 / 10,
                "tags": ["alpha", "beta", "gamma"][: index % 3 + 1],
            }
        )
        candidate = json.dumps({"items": records}, separators=(",", ":")).encode()
        if len(candidate) > size:
            break
        data = candidate
    return data + b" " * (size - len(data))


def _nginx_user() -> str:
    """Started as root, nginx's workers run as nobody, who cannot enter the private (0700)
    workdir where the files they serve or cache live: run them as the harness's own user."""
    return "user root;\n" if os.geteuid() == 0 else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The Debian package of each tool whose package is not named after it.
PACKAGES = {"h2load": "nghttp2-client", "nghttp": "nghttp2-client"}


def ensure_tools(tools: tuple[str, ...] = ("nginx", "wrk")) -> None:
    """Install the Debian packages of the missing tools."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    packages = list(dict.fromkeys(PACKAGES.get(tool, tool) for tool in missing))
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: apt-get install -y {' '.join(packages)}")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's (and so its children's) RLIMIT_NOFILE soft limit; the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def hard_fd_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


def haproxy_maxconn(wanted: int) -> int:
    """HAProxy refuses to start unless 2 x maxconn (+ a few) fit the fd limit it inherits."""
    return min(wanted, (hard_fd_limit() - 100) // 2)


def wait_for_port(port: int, timeout: float = 15.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    detail = f":\n{log.read_text(errors='replace')[-2000:]}" if log and log.exists() else ""
    raise RuntimeError(f"nothing listens on {port}{detail}")


def listeners(port: int) -> int:
    """How many listening TCP sockets are bound to 127.0.0.1:``port`` (from /proc/net/tcp)."""
    local = f"0100007F:{port:04X}"
    rows = (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
    # The second field is the local address, the fourth the state: 0A is LISTEN.
    return sum(1 for row in rows if row[1] == local and row[3] == "0A")


def wait_for_listeners(port: int, count: int, timeout: float = 15.0) -> None:
    """Wait until ``count`` sockets listen on ``port``: one per worker with SO_REUSEPORT.

    The port answers as soon as the first worker listens; a benchmark started then would
    measure one worker where two were meant.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listeners(port) >= count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{listeners(port)} of {count} sockets listen on {port}")


def _nginx_preamble(workdir: Path, name: str, connections: int, workers: int = 1) -> str:
    return textwrap.dedent(
        f"""\
        worker_processes {workers};
        worker_rlimit_nofile {min(2 * connections + 100, hard_fd_limit())};
        daemon off;
        pid {workdir}/{name}.pid;
        error_log {workdir}/{name}-error.log warn;
        events {{ worker_connections {connections}; }}
        """
    )


def _nginx_temp_paths(workdir: Path, name: str) -> str:
    return "\n".join(
        f"    {kind}_temp_path {workdir}/{name}-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def nginx_upstream_conf(workdir: Path, port: int, connections: int = 4096) -> Path:
    """nginx answering every request with `return 200` and BODY (the small-GET upstream), and
    JSON_PATH with a JSON_SIZE document written next to the config (the compression section)."""
    conf = workdir / "nginx-upstream.conf"
    document = workdir / "json32k.json"
    document.write_bytes(json_document(JSON_SIZE))
    conf.write_text(
        _nginx_user()
        + _nginx_preamble(workdir, "nginx-upstream", connections)
        + "http {\n    access_log off;\n"
        + _nginx_temp_paths(workdir, "nginx-upstream")
        + textwrap.dedent(
            f"""
                server {{
                    listen 127.0.0.1:{port} reuseport;
                    keepalive_requests 100000;
                    location / {{ default_type application/json; return 200 '{BODY}'; }}
                    # The same body, cacheable for an hour (the cache section).
                    location /cached {{
                        default_type application/json;
                        add_header Cache-Control "max-age=3600" always;
                        return 200 '{BODY}';
                    }}
                    # Cacheable too: the compression section caches it.
                    location = {JSON_PATH} {{
                        default_type application/json;
                        add_header Cache-Control "max-age=3600" always;
                        alias {document};
                    }}
                }}
            }}
            """
        )
    )
    return conf


def nginx_proxy_conf(
    workdir: Path,
    ports: tuple[int, int, int],
    *,
    max_requests: int = MAX_REQUESTS,
    connections: int = 4096,
    name: str = "nginx-proxy",
    workers: int = 1,
) -> Path:
    """nginx as a reverse proxy: ``workers`` workers, upstream keep-alive, access log off.

    ``ports`` is (small upstream, body upstream, listen); ``name`` names the config, pid, log
    and temporary files, so that several instances can share ``workdir``. With more than one
    worker each gets its own socket (`reuseport`), as the gateway's workers do, so that the
    kernel spreads the connections alike on both sides.
    """
    small_port, body_port, listen_port = ports
    conf = workdir / f"{name}.conf"
    reuseport = " reuseport" if workers > 1 else ""
    proxy = textwrap.indent(
        textwrap.dedent(
            """\
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_buffering on;
            client_max_body_size 10m;
            client_body_buffer_size 64k;
            """
        ),
        " " * 12,
    )
    conf.write_text(
        _nginx_preamble(workdir, name, connections, workers)
        + "http {\n    access_log off;\n"
        + _nginx_temp_paths(workdir, name)
        + textwrap.dedent(
            f"""
                keepalive_requests {max_requests};
                keepalive_timeout 300s;
                upstream small {{ server 127.0.0.1:{small_port}; keepalive 64; }}
                upstream body {{ server 127.0.0.1:{body_port}; keepalive 64; }}
                server {{
                    listen 127.0.0.1:{listen_port} backlog=4096{reuseport};
            """
        )
        + "        location / {\n            proxy_pass http://small;\n"
        + proxy
        + "        }\n"
        + "        location ~ ^/(bytes/|echo) {\n            proxy_pass http://body;\n"
        + proxy
        + "        }\n    }\n}\n"
    )
    return conf


def nginx_edge_conf(
    workdir: Path,
    name: str,
    small_port: int,
    listen_port: int,
    *,
    cache: bool = False,
    gzip_level: int | None = None,
    max_requests: int = MAX_REQUESTS,
    connections: int = 4096,
    dead_port: int | None = None,
) -> Path:
    """nginx in front of the small upstream with one worker and the features of the cache and
    compression sections: ``cache`` puts `proxy_cache` in a zone under ``workdir`` and obeys the
    upstream's Cache-Control; ``gzip_level`` turns `gzip on` at that level for JSON, whoever
    asks (`gzip_proxied any`), with `Vary: Accept-Encoding` as the gateway sends it.
    ``dead_port`` adds a second server to the upstream, with nginx's defaults (`max_fails=1
    fail_timeout=10s`, `proxy_next_upstream error timeout`): the resilience section's."""
    dead = f" server 127.0.0.1:{dead_port};" if dead_port is not None else ""
    features = ""
    if cache:
        features += textwrap.dedent(
            f"""
            proxy_cache_path {workdir}/{name}-store levels=1:2 keys_zone=small:10m
                             max_size=100m inactive=1h use_temp_path=off;
            proxy_cache small;
            add_header X-Cache-Status $upstream_cache_status;
            """
        )
    if gzip_level is not None:
        features += textwrap.dedent(
            f"""
            gzip on;
            gzip_comp_level {gzip_level};
            gzip_types application/json;
            gzip_proxied any;
            gzip_vary on;
            gzip_min_length 1024;
            """
        )
    conf = workdir / f"{name}.conf"
    conf.write_text(
        _nginx_user()
        + _nginx_preamble(workdir, name, connections)
        + "http {\n    access_log off;\n"
        + _nginx_temp_paths(workdir, name)
        + textwrap.indent(features, "    ")
        + textwrap.dedent(
            f"""
                keepalive_requests {max_requests};
                keepalive_timeout 300s;
                upstream small {{ server 127.0.0.1:{small_port};{dead} keepalive 64; }}
                server {{
                    listen 127.0.0.1:{listen_port} backlog=4096;
                    location / {{
                        proxy_pass http://small;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                    }}
                }}
            }}
            """
        )
    )
    return conf


def haproxy_preamble(workdir: Path, name: str, maxconn: int, defaults: str = "") -> str:
    """HAProxy's global and defaults sections: 1 thread, http mode with keep-alive both ways,
    no logging; ``defaults`` adds lines (each ending in a newline) to the defaults."""
    return textwrap.dedent(
        f"""\
            global
                nbthread 1
                maxconn {maxconn}
                pidfile {workdir}/{name}.pid
            defaults
                mode http
                option http-keep-alive
                http-reuse always
                timeout connect 5s
                timeout client 300s
                timeout server 60s
                timeout http-request 10s
                timeout http-keep-alive 300s
            """
    ) + textwrap.indent(defaults, "    ")


def haproxy_conf(workdir: Path, ports: tuple[int, int, int], *, maxconn: int = 4096) -> Path:
    """HAProxy in http mode: 1 thread, keep-alive to the upstreams, no logging.

    ``ports`` is (small upstream, body upstream, listen). HAProxy has no per-client-connection
    request limit like nginx's keepalive_requests: its client connections stay open.
    ``maxconn`` is capped by :func:`haproxy_maxconn`.
    """
    maxconn = haproxy_maxconn(maxconn)
    small_port, body_port, listen_port = ports
    conf = workdir / "haproxy.cfg"
    conf.write_text(
        haproxy_preamble(workdir, "haproxy", maxconn)
        + textwrap.dedent(
            f"""\
            frontend edge
                bind 127.0.0.1:{listen_port}
                maxconn {maxconn}
                option forwardfor
                acl body_path path_beg /bytes/ /echo
                use_backend body if body_path
                default_backend small
            backend small
                server s1 127.0.0.1:{small_port}
            backend body
                server b1 127.0.0.1:{body_port}
            """
        )
    )
    return conf


def gateway_conf(
    workdir: Path,
    name: str,
    ports: tuple[int, int, int],
    *,
    access_log: bool = False,
    metrics: bool = True,
    keepalive: str = "300s",
    workers: int = 1,
    rate_limit: str | None = None,
    redis_url: str | None = None,
    cache: str | None = None,
    gzip_level: int | None = None,
    dead_port: int | None = None,
    h2c: bool = False,
    listeners: tuple[str, ...] = (),
    max_idle: int = 64,
) -> Path:
    """The gateway with ``workers`` workers; ``ports`` is (small upstream, body upstream, listen).

    With more than one, the supervisor starts that many worker processes, each listening on the
    port with SO_REUSEPORT. ``rate_limit`` ("memory" or "redis", which needs ``redis_url``)
    puts a per-client-IP limit on every route that never refuses (a million a second): it
    prices the decision, not the refusals. ``cache`` ("memory" or "redis") caches the small
    route's responses in that store. ``gzip_level`` compresses them with gzip (the only
    coding offered, as nginx has no other) at that level. ``dead_port`` adds a second target
    to the small upstream, with the default passive health and retries. ``h2c`` lets the listen
    port take HTTP/2 with prior knowledge too; ``listeners`` adds listeners after it, each a
    YAML flow mapping (`{listen: "127.0.0.1:N", http2: {h2c: true}}`). With neither the config
    has `server.listen` alone, the form of a config written before HTTP/2 (the http2 section
    compares the two). ``max_idle``: the small upstream's idle connections kept (64, as the
    nginx the harness compares with keeps: `keepalive 64`).
    """
    small_port, body_port, listen_port = ports
    conf = workdir / f"{name}.yaml"
    address = f'"127.0.0.1:{listen_port}"'
    if h2c or listeners:
        first = f"{{listen: {address}, http2: {{h2c: true}}}}" if h2c else f"{{listen: {address}}}"
        listen = "  listeners:\n" + "".join(f"    - {item}\n" for item in (first, *listeners))
    else:
        listen = f"  listen: {address}\n"
    extra = ""
    if rate_limit is not None:
        extra += f"  rate_limit: {{ rate: 1000000/second, backend: {rate_limit}, budget: 1s }}\n"
    redis = f'redis:\n  url: "{redis_url}"\n' if redis_url else ""
    cached = f"cache: {{ store: {cache} }}" if cache else "cache: false"
    compressed = (
        f"compression: {{ algorithms: [gzip], levels: {{ gzip: {gzip_level} }} }}"
        if gzip_level is not None
        else "compression: false"
    )
    conf.write_text(
        textwrap.dedent(
            f"""\
            server:
            {{listen}}  workers: {workers}
              limits:
                max_requests_per_connection: {MAX_REQUESTS}
              timeouts:
                keepalive: {keepalive}
            {{extra}}admin:
              listen: "127.0.0.1:0"
              metrics: {"true" if metrics else "false"}
            logging:
              access_log: {"true" if access_log else "false"}
            {{redis}}upstreams:
              small:
                targets: ["http://127.0.0.1:{small_port}"{{dead}}]
                pool: {{ max_idle: {max_idle} }}
              body:
                targets: ["http://127.0.0.1:{body_port}"]
                pool: {{ max_idle: 64 }}
            routes:
              - name: bytes
                upstream: body
                match: {{ path_prefix: /bytes }}
              - name: echo
                upstream: body
                match: {{ path_prefix: /echo }}
              - name: all
                upstream: small
                {cached}
                {compressed}
            """
        )
        .replace("{listen}", listen)
        .replace("{extra}", extra)
        .replace("{redis}", redis)
        .replace("{dead}", f', "http://127.0.0.1:{dead_port}"' if dead_port is not None else "")
    )
    return conf


def start(argv: list[str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv``; its stderr goes to ``log`` (read by :func:`wait_for_port` on failure)."""
    if log is None:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with log.open("ab") as sink:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=sink)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch(
    workdir: Path,
    argvs: dict[str, tuple[int, list[str]]],
    processes: list[subprocess.Popen[bytes]],
    *,
    serve_themselves: frozenset[str] = frozenset(),
) -> list[tuple[str, int, tuple[int, ...]]]:
    """Start each labelled ``(port, argv)`` (stderr to ``workdir/LABEL.log``; appended to
    ``processes``), then wait until every one listens: (label, port, serving pids) each, the
    serving process being each one's worker (nginx's or the gateway's), or the process itself
    for the labels in ``serve_themselves`` (HAProxy with -db)."""
    launched = []
    for label, (port, argv) in argvs.items():
        process = start(argv, workdir / f"{label}.log")
        processes.append(process)
        launched.append((label, port, process))
    started = []
    for label, port, process in launched:
        wait_for_port(port, log=workdir / f"{label}.log")
        pids = (process.pid,) if label in serve_themselves else worker_children(process.pid)
        started.append((label, port, pids))
    return started


def add_ratio(outcome: dict[str, Any], baseline: str, key: str) -> dict[str, Any]:
    """Each target's median requests/s over ``baseline``'s, as ``summary[key]``."""
    base = outcome[baseline]["summary"]["rps"]
    for data in outcome.values():
        data["summary"][key] = data["summary"]["rps"] / base if base else None
    return outcome


def print_summaries(
    results: dict[str, Any], *, label: str, width: int, ratio: str, ratio_title: str
) -> None:
    """The table of a section: one row per target, its ratio from ``summary[ratio]``."""
    size = max(len(ratio_title), 7)
    print(
        f"{label:{width}} {'req/s (median)':>15} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{ratio_title:>{size}} {'CPU us/req':>11}"
    )
    for name, data in results.items():
        s = data["summary"]
        print(
            f"{name:{width}} {s['rps']:15.0f} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} "
            f"{s['errors']:7d} {s[ratio]:{size}.3f} {s['cpu_us_per_request']:11.1f}"
        )


def upstream_app_argv(port: int) -> list[str]:
    return [sys.executable, str(HERE / "upstream_app.py"), "--port", str(port)]


def build_environment(build: Path) -> dict[str, str]:
    """Variables that make Python import the gateway from ``build`` (e.g. `make compiled`'s).

    PYTHONSAFEPATH keeps the current directory (the source tree) off sys.path, so the build's
    modules are the ones imported.
    """
    return {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(build.resolve())}


def gateway_argv(config: Path, build: Path | None = None) -> list[str]:
    """``gateway run``; from ``build`` (an installed tree) when given."""
    argv = [sys.executable, "-m", "gateway", "run", "--config", str(config)]
    if build is None:
        return argv
    return ["env", *(f"{name}={value}" for name, value in build_environment(build).items()), *argv]


def loaded_build(pid: int) -> str:
    """ "compiled" when process ``pid`` mapped the mypyc-compiled server module, else "source"."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "compiled" if "gateway/server.cpython" in maps else "source"


def nginx_argv(workdir: Path, conf: Path) -> list[str]:
    return ["nginx", "-p", str(workdir), "-c", str(conf)]


def haproxy_argv(conf: Path) -> list[str]:
    return ["haproxy", "-db", "-f", str(conf)]


# /proc readings (Linux).


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def _serving(pid: int) -> bool:
    """Not one of nginx's cache manager and cache loader processes (`proxy_cache`)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"cache manager" not in title and b"cache loader" not in title


def worker_children(pid: int, count: int = 1, timeout: float = 15.0) -> tuple[int, ...]:
    """The ``count`` child processes of ``pid`` that serve requests (the gateway's or nginx's
    workers), once there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [child for child in children(pid) if _serving(child)]
        if len(found) == count:
            return tuple(sorted(found))
        time.sleep(0.05)
    raise RuntimeError(f"process {pid} has children {children(pid)}, not {count}")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# wrk.


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    # Non-2xx/3xx responses, connect errors and timeouts. Read/write errors are kept apart:
    # a server closing a keep-alive connection after its request limit shows up there.
    errors: int
    requests: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def _search(pattern: str, text: str) -> str:
    found = re.search(pattern, text, re.M)
    if found is None:
        raise RuntimeError(f"wrk output without {pattern!r}:\n{text}")
    return found.group(1)


def parse_wrk(output: str) -> WrkResult:
    rps = float(_search(r"Requests/sec:\s+([\d.]+)", output))
    p50 = _latency_ms(_search(r"^\s+50%\s+(\S+)", output))
    p99 = _latency_ms(_search(r"^\s+99%\s+(\S+)", output))
    requests = int(_search(r"^\s*(\d+) requests in", output))
    socket_errors: dict[str, int] = {}
    found = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if found:
        socket_errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, found.groups()), strict=True)
        )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = (int(non2xx.group(1)) if non2xx else 0) + sum(
        socket_errors.get(kind, 0) for kind in ("connect", "timeout")
    )
    return WrkResult(rps, p50, p99, errors, requests, socket_errors)


def run_wrk(
    url: str,
    duration: int,
    connections: int,
    *,
    script: Path | None = None,
    threads: int = 1,
) -> WrkResult:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    output = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, timeout=duration + 60
    ).stdout
    return parse_wrk(output)
