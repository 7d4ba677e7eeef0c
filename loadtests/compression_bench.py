"""The compression section of the harness: gzip against nginx `gzip on`, compressed cache hits.

The small upstream (nginx) serves `/json32k`: 32 KiB of JSON like an API's list endpoint, with
`Cache-Control: max-age=3600`. Four fresh proxies stand in front of it, one worker each, all
compressing with gzip at level 6 (nginx's `gzip_comp_level 6`; the gateway's
`compression: {algorithms: [gzip], levels: {gzip: 6}}`):

- `nginx-gzip` and `gateway-gzip` compress every response (no cache);
- `nginx-cache-gzip` (`proxy_cache` + `gzip on`) stores the identity body and compresses it
  again on every hit: nginx does not cache the variants it compresses;
- `gateway-cache-gzip` (`cache: {store: memory}` + compression) stores the gzip variant it
  made on the miss (keyed on the negotiated coding), so its hits cost no compression.

Each runs twice with `wrk -t1 -c50` in rotating rounds: asking for gzip (a wrk Lua script sets
`Accept-Encoding: gzip`) and asking for nothing (identity). The table gives both, each one's
gzip ratio to nginx's (the issue's "gateway gzip vs nginx gzip at the same level") and the
ratio of gzip to identity per target: for `gateway-cache-gzip` that is compressed hits against
identity hits. Before measuring, every target's answers are checked (the gzip body decodes to
the document, the identity body is the document, the cached targets answer from their cache)
and the size of each one's gzip body is printed, so that the levels are seen to match.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from targets import (
    JSON_PATH,
    JSON_SIZE,
    free_port,
    gateway_argv,
    gateway_conf,
    json_document,
    launch,
    nginx_argv,
    nginx_edge_conf,
)

LEVEL = 6
TITLE = f"32 KiB JSON, gzip {LEVEL}"
GZIP_SCRIPT = 'wrk.headers["Accept-Encoding"] = "gzip"\n'
# Label -> cached?
TARGETS = {
    "nginx-gzip": False,
    "gateway-gzip": False,
    "nginx-cache-gzip": True,
    "gateway-cache-gzip": True,
}
CODINGS = ("gzip", "identity")


def start_compression_targets(
    workdir: Path,
    upstreams: tuple[int, int],
    build: Path | None,
    processes: list[subprocess.Popen[bytes]],
) -> list[tuple[str, int, tuple[int, ...]]]:
    """The four proxies (appended to ``processes``), checked and warmed: (label, port, serving
    pids) each."""
    argvs = {}
    for label, cached in TARGETS.items():
        port = free_port()
        if label.startswith("nginx"):
            conf = nginx_edge_conf(
                workdir, label, upstreams[0], port, cache=cached, gzip_level=LEVEL
            )
            argvs[label] = (port, nginx_argv(workdir, conf))
        else:
            conf = gateway_conf(
                workdir,
                label,
                (*upstreams, port),
                cache="memory" if cached else None,
                gzip_level=LEVEL,
            )
            argvs[label] = (port, gateway_argv(conf, build))
    return launch(workdir, argvs, processes)


def fetch(port: int, accept_encoding: str | None) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{JSON_PATH}")
    if accept_encoding is not None:
        request.add_header("Accept-Encoding", accept_encoding)
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read(), {name.lower(): value for name, value in response.headers.items()}


def check_answers(label: str, port: int, cached: bool) -> int:
    """Each coding's answer is right, and a cached target's third one is a hit; the size of
    the gzip body."""
    document = json_document(JSON_SIZE)
    size = 0
    for accept_encoding in ("gzip", None):
        for _ in range(3):
            body, fields = fetch(port, accept_encoding)
        coding = fields.get("content-encoding", "identity")
        expected = accept_encoding or "identity"
        if coding != expected:
            raise SystemExit(f"{label}: asked for {expected}, got {coding}")
        decoded = gzip.decompress(body) if coding == "gzip" else body
        if decoded != document:
            raise SystemExit(f"{label}: the {coding} body is not the document")
        if coding == "gzip":
            size = len(body)
        status = fields.get("x-cache-status") or fields.get("cache-status", "")
        if cached and not (status == "HIT" or "; hit" in status):
            raise SystemExit(f"{label}: the {coding} answer is not a cache hit: {status!r}")
    return size


def add_ratios(outcome: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per target: ``gzip_vs_identity``; per coding, ``vs_nginx``: each target's requests/s
    over its nginx counterpart's (nginx-gzip for gateway-gzip, nginx-cache-gzip for
    gateway-cache-gzip)."""
    for data in outcome.values():
        for label, result in data.items():
            counterpart = label.replace("gateway-", "nginx-")
            nginx = data[counterpart]["summary"]["rps"]
            result["summary"]["vs_nginx"] = result["summary"]["rps"] / nginx if nginx else None
    gzip_runs, identity_runs = outcome["gzip"], outcome["identity"]
    for label, result in gzip_runs.items():
        identity = identity_runs[label]["summary"]["rps"]
        result["summary"]["gzip_vs_identity"] = (
            result["summary"]["rps"] / identity if identity else None
        )
    return outcome


def print_compression(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\ncompression: {TITLE}: GET {JSON_PATH}, wrk -t1 -c50 -d{args.duration}s, "
        f"{args.rounds} rotating rounds per coding asked for"
    )
    print(
        f"{'target':19} {'gzip bytes':>10} {'gzip req/s':>11} {'vs nginx':>9} {'CPU us/req':>11} "
        f"{'identity req/s':>15} {'vs nginx':>9} {'gzip/identity':>14}"
    )
    gzip_runs, identity_runs = results["runs"]["gzip"], results["runs"]["identity"]
    for label, data in gzip_runs.items():
        compressed, plain = data["summary"], identity_runs[label]["summary"]
        print(
            f"{label:19} {results['gzip_bytes'][label]:10d} {compressed['rps']:11.0f} "
            f"{compressed['vs_nginx']:9.3f} {compressed['cpu_us_per_request']:11.1f} "
            f"{plain['rps']:15.0f} {plain['vs_nginx']:9.3f} "
            f"{compressed['gzip_vs_identity']:14.3f}"
        )
    errors = sum(
        data["summary"]["errors"] for runs in results["runs"].values() for data in runs.values()
    )
    print(f"errors (non-2xx, connect, timeout), all runs: {errors}")
