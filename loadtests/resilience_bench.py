"""The resilience section of the harness: the small GET while one of two targets is dead.

Each proxy's upstream gets a second target on a port nothing listens on, with what each
proxy does by default or with its usual production settings:

- nginx: `max_fails=1 fail_timeout=10s` and `proxy_next_upstream error timeout` (its
  defaults): a refused connect is retried on the live server, and the dead one is skipped
  for 10 s after each failure;
- HAProxy: `check inter 1s` on both servers, `retries 2` and `option redispatch`;
- the gateway: its defaults (passive health: 5 failures in a row eject for 10 s, doubling;
  retries of idempotent requests on connect failures and resets, on another target).

Each also runs with the live target alone, so each `-dead` row has its ratio to its own
proxy's healthy figure (`vs healthy`: what the dead target costs), and the gateway's row its
ratio to nginx's (`vs nginx`). Errors must stay 0: every request is answered by the live
target. `wrk -t1 -c50`, one worker each, in rotating rounds.
"""

from __future__ import annotations

import argparse
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from targets import (
    free_port,
    gateway_argv,
    gateway_conf,
    haproxy_argv,
    haproxy_maxconn,
    haproxy_preamble,
    launch,
    nginx_argv,
    nginx_edge_conf,
    print_summaries,
)

TITLE = "small GET (114 B), one of two targets dead"
# Label -> (proxy, whether its upstream has the dead target).
TARGETS: dict[str, tuple[str, bool]] = {
    "nginx": ("nginx", False),
    "nginx-dead": ("nginx", True),
    "haproxy": ("haproxy", False),
    "haproxy-dead": ("haproxy", True),
    "gateway": ("gateway", False),
    "gateway-dead": ("gateway", True),
}


def haproxy_small_conf(
    workdir: Path, name: str, small_port: int, listen_port: int, dead_port: int | None
) -> Path:
    """HAProxy in front of the small upstream alone, with checks, retries and redispatch."""
    maxconn = haproxy_maxconn(4096)
    dead = f"\n    server s2 127.0.0.1:{dead_port} check inter 1s" if dead_port else ""
    conf = workdir / f"{name}.cfg"
    conf.write_text(
        haproxy_preamble(workdir, name, maxconn, "retries 2\noption redispatch\n")
        + textwrap.dedent(
            f"""\
            frontend edge
                bind 127.0.0.1:{listen_port}
                maxconn {maxconn}
                default_backend small
            backend small
                server s1 127.0.0.1:{small_port} check inter 1s"""
        )
        + dead
        + "\n"
    )
    return conf


def start_resilience_targets(
    workdir: Path,
    upstreams: tuple[int, int],
    build: Path | None,
    processes: list[subprocess.Popen[bytes]],
) -> list[tuple[str, int, tuple[int, ...]]]:
    """Every proxy with and without a dead target (appended to ``processes``), once all
    serve: (label, port, serving pids) each."""
    small_port = upstreams[0]
    argvs: dict[str, tuple[int, list[str]]] = {}
    for label, (proxy, with_dead) in TARGETS.items():
        port = free_port()
        # A port bound a moment ago and released: refused until something else takes it.
        dead = free_port() if with_dead else None
        name = f"resilience-{label}"
        if proxy == "nginx":
            conf = nginx_edge_conf(workdir, name, small_port, port, dead_port=dead)
            argv = nginx_argv(workdir, conf)
        elif proxy == "haproxy":
            conf = haproxy_small_conf(workdir, name, small_port, port, dead)
            argv = haproxy_argv(conf)
        else:
            conf = gateway_conf(workdir, name, (*upstreams, port), dead_port=dead)
            argv = gateway_argv(conf, build)
        argvs[label] = (port, argv)
    haproxies = frozenset(label for label, (proxy, _) in TARGETS.items() if proxy == "haproxy")
    return launch(workdir, argvs, processes, serve_themselves=haproxies)


def add_ratios(outcome: dict[str, Any]) -> dict[str, Any]:
    """`vs_healthy`: each row over its proxy's row without the dead target; `vs_nginx`: each
    row over nginx's row of the same kind."""
    for label, (proxy, with_dead) in TARGETS.items():
        summary = outcome[label]["summary"]
        healthy = outcome[proxy]["summary"]["rps"]
        nginx = outcome["nginx-dead" if with_dead else "nginx"]["summary"]["rps"]
        summary["vs_healthy"] = summary["rps"] / healthy if healthy else None
        summary["vs_nginx"] = summary["rps"] / nginx if nginx else None
    return outcome


def print_resilience(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\nresilience: {TITLE}: GET /, wrk -t1 -c50 -d{args.duration}s, one worker each,"
        f" {args.rounds} rotating rounds"
    )
    print_summaries(results, label="target", width=13, ratio="vs_healthy", ratio_title="vs healthy")
    for label in ("gateway", "gateway-dead"):
        print(f"{label}: {results[label]['summary']['vs_nginx']:.3f}x nginx's")
