"""The `gateway` command: run, validate, demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.config.loader import load_config
from gateway.config.model import GatewayConfig
from gateway.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="HTTP edge gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve a config file")
    run.add_argument("--config", required=True, help="path to the YAML config")
    validate = commands.add_parser("validate", help="check a config file and exit")
    validate.add_argument("--config", required=True, help="path to the YAML config")
    demo = commands.add_parser(
        "demo", help="serve a bundled demo upstream behind the gateway on built-in defaults"
    )
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    demo.add_argument(
        "--upstream-port", type=int, default=8081, help="demo upstream port (default 8081)"
    )
    demo.add_argument("--admin-port", type=int, default=9901, help="admin port (default 9901)")
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
        config = _load(args.config)
        if config is None:
            return 1
        print(f"{args.config}: ok ({len(config.upstreams)} upstreams, {len(config.routes)} routes)")
        return 0
    if args.command == "run":
        config = _load(args.config)
        if config is None:
            return 1
        return _run(config)
    if args.command == "demo":
        return _demo(args.port, args.upstream_port, args.admin_port)
    return 2


def _run(config: GatewayConfig) -> int:
    from gateway.app import StartupError, run
    from gateway.observability.access_log import configure_logging

    configure_logging(config.logging)
    try:
        return run(config)
    except StartupError as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 1


def _demo(port: int, upstream_port: int, admin_port: int) -> int:
    import uvloop

    from gateway.app import serve
    from gateway.demo import demo_config, start_demo_upstream
    from gateway.observability.access_log import configure_logging

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

    return uvloop.run(main())
