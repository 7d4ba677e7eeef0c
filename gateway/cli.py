"""The `gateway` command: run, validate, diff, demo (and the internal `worker`).

Imports of the server stack stay inside the commands: `gateway validate` starts fast, and
`gateway run` must set up prometheus-client's multiprocess directory before anything imports it
(`gateway.supervisor`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.config.loader import load_config
from gateway.config.model import GatewayConfig
from gateway.errors import ConfigError


def _ports(text: str) -> list[int]:
    """The worker's ``--port``: one public port per listener, comma-separated."""
    return [int(part) for part in text.split(",")]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="HTTP edge gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    # `worker` is internal (the supervisor starts it): no help line, not in the usage.
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{run,validate,diff,demo}"
    )
    run = commands.add_parser("run", help="serve a config file with server.workers processes")
    run.add_argument("--config", required=True, help="path to the YAML config")
    run.add_argument(
        "--watch", action="store_true", help="reload when the config file's content changes"
    )
    validate = commands.add_parser(
        "validate", help="check a config file, print the route table it would serve, and exit"
    )
    validate.add_argument("--config", required=True, help="path to the YAML config")
    diff = commands.add_parser(
        "diff", help="print what reloading --config over --against would change"
    )
    diff.add_argument("--config", required=True, help="the new YAML config")
    diff.add_argument("--against", required=True, help="the YAML config serving now")
    demo = commands.add_parser(
        "demo", help="serve a bundled demo upstream behind the gateway on built-in defaults"
    )
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    demo.add_argument(
        "--upstream-port", type=int, default=8081, help="demo upstream port (default 8081)"
    )
    demo.add_argument("--admin-port", type=int, default=9901, help="admin port (default 9901)")
    worker = commands.add_parser("worker")
    worker.add_argument("--snapshot", required=True)
    worker.add_argument("--port", type=_ports, required=True)
    worker.add_argument("--status-fd", type=int, required=True)
    return parser


def _load(path: str) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as error:
        print(f"{path}: invalid configuration", file=sys.stderr)
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.config)
    if args.command == "diff":
        return _diff(args.config, args.against)
    if args.command == "run":
        from gateway.supervisor import run

        return run(args.config, watch=args.watch)
    if args.command == "worker":
        from gateway.worker import main as worker_main

        return worker_main(args.snapshot, args.port, args.status_fd)
    if args.command == "demo":
        return _demo(args.port, args.upstream_port, args.admin_port)
    return 2


def _validate(path: str) -> int:
    from gateway.config.describe import route_table

    config = _load(path)
    if config is None:
        return 1
    print(f"{path}: ok ({len(config.upstreams)} upstreams, {len(config.routes)} routes)")
    for line in route_table(config):
        print(line)
    return 0


def _diff(new_path: str, old_path: str) -> int:
    from gateway.config.describe import diff_configs

    new, old = _load(new_path), _load(old_path)
    if new is None or old is None:
        return 1
    changes = diff_configs(new, old)
    for line in changes:
        print(line)
    if not changes:
        print("no changes")
    return 0


def _demo(port: int, upstream_port: int, admin_port: int) -> int:
    import uvloop

    from gateway.app import serve
    from gateway.demo import demo_config, start_demo_upstream
    from gateway.observability.logging import configure_logging, flush_logging

    config = demo_config(port, upstream_port, admin_port)
    configure_logging(config.logging)

    async def main() -> int:
        upstream = await start_demo_upstream(upstream_port)
        print(
            f"demo: try  curl -i http://127.0.0.1:{port}/echo  "
            f"or  curl http://127.0.0.1:{port}/api/echo/hello  (Ctrl-C stops)",
            file=sys.stderr,
        )
        try:
            return await serve(config)
        finally:
            await upstream.cleanup()

    try:
        return uvloop.run(main())
    finally:
        flush_logging()
