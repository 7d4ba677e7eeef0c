"""One worker process under `gateway.supervisor`: `gateway worker` (internal, not for operators).

The supervisor validates the config and starts each worker with a snapshot of it; the worker
serves it on the public port with SO_REUSEPORT (other workers bind the same port) and no admin
listener (the supervisor serves that, for all workers).

The protocol with the supervisor:

- argv: ``--snapshot PATH`` (a validated `GatewayConfig` written by `write_snapshot`),
  ``--port P[,P...]`` (the public ports, one per listener, resolved by the supervisor when
  the config says 0) and
  ``--status-fd FD`` (the write end of a pipe the supervisor reads).
- Status: one JSON object per line on FD: ``{"event": "ready", "pid": N}`` once listening,
  ``{"event": "failed", "error": TEXT}`` when it cannot start, ``{"event": "reloaded",
  "hash": H, "snapshot": PATH}`` and ``{"event": "reload_failed", "error": TEXT, "snapshot":
  PATH}`` after each reload command.
- Commands: one per line on stdin: ``reload PATH`` serves the snapshot at PATH from now on
  (routes, pools and chains swap at once; in-flight requests finish on the old ones);
  ``purge ID JSON`` purges this worker's cache stores (`gateway.cache.purge`) and answers
  ``{"event": "purged", "id": ID, "removed": N}`` or ``{"event": "purge_failed", "id": ID,
  "error": TEXT}``. EOF on stdin means the supervisor is gone: drain and exit.
- Signals: SIGTERM drains within ``server.timeouts.drain`` and exits 0. SIGINT and SIGHUP are
  ignored: a Ctrl-C or a terminal hangup reaches the whole process group, and the supervisor
  owns both (it drains the workers, or reloads them through stdin).

Snapshots are pickled config objects rather than YAML: the worker then runs exactly what the
supervisor validated (relative `tls.ca_file` paths already resolved against the config file's
directory, `${ENV}` already substituted). They live in the supervisor's private (0700)
temporary directory, so reading them trusts nothing the supervisor's user did not write.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.model import GatewayConfig, with_listen_ports

if TYPE_CHECKING:
    from gateway.app import RunningGateway


class SnapshotError(Exception):
    """A snapshot file that does not hold a config."""


def write_snapshot(config: GatewayConfig, path: Path) -> None:
    """Write ``config`` to ``path`` atomically (a worker never reads half a snapshot)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL))
    partial.replace(path)


def read_snapshot(path: str | os.PathLike[str]) -> GatewayConfig:
    try:
        config = pickle.loads(Path(path).read_bytes())  # the supervisor's own private file
    except OSError as error:
        raise SnapshotError(f"cannot read the config snapshot {path}: {error.strerror}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
        raise SnapshotError(f"not a config snapshot: {path}: {error}") from None
    if not isinstance(config, GatewayConfig):
        raise SnapshotError(f"not a config snapshot: {path}")
    return config


def with_ports(config: GatewayConfig, ports: list[int]) -> GatewayConfig:
    """``config`` listening on ``ports`` (the supervisor's resolved public ports, in order)."""
    return replace(config, server=with_listen_ports(config.server, ports))


class StatusChannel:
    """The pipe to the supervisor: one JSON object per line, each line one atomic write."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, event: str, **fields: object) -> bool:
        line = json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n"
        try:
            os.write(self._fd, line.encode())
        except OSError:
            return False  # the supervisor is gone; stdin's EOF tells the worker to stop
        return True


def main(snapshot: str, ports: list[int], status_fd: int) -> int:
    """Serve the snapshot until SIGTERM or the supervisor's exit; the process's exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    status = StatusChannel(status_fd)
    try:
        config = with_ports(read_snapshot(snapshot), ports)
    except SnapshotError as error:
        return _failed(status, str(error))

    import uvloop

    from gateway.app import StartupError
    from gateway.observability.logging import configure_logging, flush_logging

    configure_logging(config.logging)
    try:
        return uvloop.run(_serve(config, ports, status))
    except StartupError as error:
        return _failed(status, str(error))
    finally:
        flush_logging()


def _failed(status: StatusChannel, error: str) -> int:
    if not status.send("failed", error=error):
        print(f"gateway worker: {error}", file=sys.stderr)
    return 1


async def _serve(config: GatewayConfig, ports: list[int], status: StatusChannel) -> int:
    from gateway.app import start
    from gateway.observability.logging import get_logger

    log = get_logger("worker")
    _check_fd_limit(config, log)
    gateway = await start(config, reuse_port=True, admin=False)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    commands = loop.create_task(_read_commands(gateway, ports, status, stop, log))
    status.send("ready", pid=os.getpid())
    await stop.wait()
    commands.cancel()
    drain = gateway.config.server.timeouts.drain
    log.info("worker_draining", pid=os.getpid(), timeout_s=drain)
    await gateway.drain(drain)
    log.info("worker_stopped", pid=os.getpid())
    return 0


def _check_fd_limit(config: GatewayConfig, log: Any) -> None:
    """Raise the descriptor limit as far as allowed, and say so when the connection cap
    cannot be reached under it (HARDENING.md §F: the global cap is on by default)."""
    from gateway.downstream.listener import fd_budget_problem, raise_fd_limit

    limit = raise_fd_limit()
    pools = sum(upstream.pool.max_connections for upstream in config.upstreams)
    problem = fd_budget_problem(limit, config.server.limits.max_connections, pools)
    if problem is not None:
        log.warning("fd_limit_low", pid=os.getpid(), limit=limit, problem=problem)


async def _read_commands(
    gateway: RunningGateway,
    ports: list[int],
    status: StatusChannel,
    stop: asyncio.Event,
    log: Any,
) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    stdin = os.fdopen(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    purges: set[asyncio.Task[None]] = set()
    try:
        while line := await reader.readline():
            command, _, argument = line.decode("utf-8", "replace").strip().partition(" ")
            if command == "reload" and argument:
                _reload(gateway, argument, ports, status, log)
            elif command == "purge" and argument:
                purges.add(loop.create_task(_purge(gateway, argument, status)))
                purges = {task for task in purges if not task.done()}
            else:
                log.warning("worker_unknown_command", command=command)
        log.info("supervisor_gone", pid=os.getpid())
        stop.set()
    finally:
        transport.close()


async def _purge(gateway: RunningGateway, argument: str, status: StatusChannel) -> None:
    purge_id, _, body = argument.partition(" ")
    try:
        removed = await gateway.purge_cache(json.loads(body))
    except Exception as error:  # reported to the supervisor, which answers the admin client
        status.send("purge_failed", id=purge_id, error=f"{type(error).__name__}: {error}")
        return
    status.send("purged", id=purge_id, removed=removed)


def _reload(
    gateway: RunningGateway, snapshot: str, ports: list[int], status: StatusChannel, log: Any
) -> None:
    from gateway.config.describe import config_hash

    try:
        config = read_snapshot(snapshot)
        digest = config_hash(config)
        gateway.reload(with_ports(config, ports))
    except Exception as error:  # any failure keeps the old config serving, and is reported
        log.error("worker_reload_failed", pid=os.getpid(), snapshot=snapshot, error=str(error))
        status.send("reload_failed", error=f"{type(error).__name__}: {error}", snapshot=snapshot)
        return
    status.send("reloaded", hash=digest, snapshot=snapshot)
