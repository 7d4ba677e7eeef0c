"""`gateway run`: the supervising parent of the worker processes (DESIGN.md §4).

One code path for every worker count: the supervisor validates the config, reserves the public
port, starts ``server.workers`` worker processes (`gateway.worker`) that each accept on that port
with SO_REUSEPORT, and serves the admin listener (/metrics sums every worker's values through
prometheus-client's multiprocess mode). Then it

- restarts a worker that dies: the first time at once, then after 1, 2, 4 ... 30 s while it
  keeps dying; a worker that stayed up 60 s starts the sequence over. Each restart is logged and
  counted in ``gateway_worker_restarts_total``.
- reloads on SIGHUP, and with ``--watch`` when the file's content changes: an invalid file is
  logged with its problems and counted as ``gateway_config_reloads_total{result="error"}``, and
  the old config keeps serving; a valid one is written to a snapshot every worker swaps to, and
  counts as a success once every worker acknowledged it. The listeners' addresses
  (``server.listen`` or ``server.listeners[*].listen``), ``server.workers``,
  ``admin.*`` and ``logging.level`` only change on a restart (`describe.needs_restart`): a
  reload that changes them says so and keeps them.
- drains on SIGTERM or SIGINT: /readyz answers 503 at once, every worker gets SIGTERM and
  finishes its in-flight requests within ``server.timeouts.drain`` (stragglers are killed 5 s
  after that), then the admin listener stops and the process exits 0.

prometheus-client picks its storage (memory, or memory-mapped files shared by processes) when
it is first imported, so `run` sets ``PROMETHEUS_MULTIPROC_DIR`` before anything imports it:
every import of the server stack in this module is deferred for that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gateway.config.loader import load_config
from gateway.config.model import GatewayConfig, ListenAddress
from gateway.errors import ConfigError
from gateway.worker import write_snapshot

if TYPE_CHECKING:
    from aiohttp import web

# The same name as gateway.observability.metrics.MULTIPROC_ENV, which cannot be imported before
# the variable is set (importing it imports prometheus-client).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# gateway.ratelimit.memory.STATE_DIR_ENV, for the same reason.
STATE_DIR_ENV = "GATEWAY_STATE_DIR"

# Restart delays: the first restart at once, then doubling up to the cap.
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
# A worker up this long has recovered: its next death restarts it at once again.
STABLE_AFTER = 60.0
# A worker that has not reported ready by then is killed (and restarted with backoff).
READY_TIMEOUT = 30.0
# Every worker acknowledges a reload within this time, or the reload counts as failed.
RELOAD_TIMEOUT = 30.0
# SIGTERM: workers not gone this long after the drain time are killed.
KILL_AFTER_DRAIN = 5.0
WATCH_INTERVAL = 1.0
# Snapshots kept besides the active one (a starting worker may still be about to read one).
SNAPSHOTS_KEPT = 3
# The longest the admin listener waits for the workers to report a purge.
PURGE_TIMEOUT = 10.0

WorkerState = Literal["starting", "up", "restarting", "stopped"]


class StartupError(Exception):
    """The supervisor refuses to start (the message says why)."""


def run(config_path: str, *, watch: bool = False) -> int:
    """`gateway run --config FILE [--watch]`: supervise the workers; the process's exit code."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("the supervisor must start before anything imports prometheus_client")
    try:
        config = load_config(config_path)
    except ConfigError as error:
        print(f"{config_path}: invalid configuration", file=sys.stderr)
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="gateway-"))
    try:
        metrics_dir = workdir / "metrics"
        metrics_dir.mkdir()
        # Inherited by every worker, whose metric values then land in files this process sums.
        os.environ[MULTIPROC_ENV] = str(metrics_dir)
        # Where the workers map the rate-limit tables they share (gateway.ratelimit.memory).
        state_dir = workdir / "state"
        state_dir.mkdir()
        os.environ[STATE_DIR_ENV] = str(state_dir)

        import uvloop

        from gateway.observability.logging import configure_logging, flush_logging

        configure_logging(config.logging)
        try:
            supervisor = Supervisor(Path(config_path), config, workdir, watch=watch)
            return uvloop.run(supervisor.run())
        except StartupError as error:
            print(f"gateway: {error}", file=sys.stderr)
            return 1
        finally:
            flush_logging()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def resolve_workers(config: GatewayConfig, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """`workers: auto` is one worker per core this process may really use.

    Inside a container os.cpu_count() is the node's core count; the usable share is the CPU set
    this process may run on and, tighter still, the cgroup v2 CPU quota (`cpu.max`, what a
    Kubernetes CPU limit becomes), rounded up.
    """
    workers = config.server.workers
    if workers != "auto":
        return workers
    cores = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cores)


def keep_restart_only(new: GatewayConfig, old: GatewayConfig) -> GatewayConfig:
    """``new`` with the settings only a restart applies taken from ``old``.

    The listeners' addresses are bound once; a reload applies the rest of a listener's settings
    (certificates above all) when the listeners are the same addresses in the same order, and
    keeps the old listeners whole otherwise.
    """
    old_addresses = [listener.listen for listener in old.server.listeners]
    if [listener.listen for listener in new.server.listeners] == old_addresses:
        listeners = new.server.listeners
    else:
        listeners = old.server.listeners
    server = replace(new.server, listeners=listeners, workers=old.server.workers)
    logging = replace(new.logging, level=old.logging.level)
    return replace(new, server=server, admin=old.admin, logging=logging)


def reserve_ports(addresses: list[ListenAddress]) -> list[socket.socket]:
    """`reserve_port` for each listener, all or none."""
    sockets: list[socket.socket] = []
    try:
        for index, address in enumerate(addresses):
            key = "server.listen" if len(addresses) == 1 else f"server.listeners[{index}].listen"
            sockets.append(reserve_port(address, key))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def reserve_port(address: ListenAddress, key: str = "server.listen") -> socket.socket:
    """Bind (without listening) the public address with SO_REUSEPORT.

    This resolves port 0 to the one port every worker binds, and refuses a port another program
    holds before any worker starts. Connections only ever reach listening sockets, so this one
    takes none; the workers' sockets join its port through SO_REUSEPORT.
    """
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address.host, address.port))
    except OSError as error:
        sock.close()
        raise StartupError(f"{key}: cannot listen on {address}: {error.strerror}") from error
    return sock


def _backoff(quick_deaths: int) -> float:
    """The delay before restarting a worker that died ``quick_deaths`` times in a row."""
    if quick_deaths <= 1:
        return 0.0
    return min(MAX_BACKOFF, FIRST_BACKOFF * (1 << (quick_deaths - 2)))


def _exit_description(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
        return f"signal {-code}"
    return f"exit code {code}"


@dataclass(eq=False)
class Worker:
    """One worker slot: the process currently filling it and what it reported."""

    slot: int
    process: asyncio.subprocess.Process | None = None
    state: WorkerState = "starting"
    up_since: float | None = None
    ready: asyncio.Future[None] | None = None
    failure: str | None = None
    status_reader: asyncio.Task[None] | None = None
    # Reload acknowledgements awaited from this process, by snapshot path: None when it
    # applied the snapshot, the error text when it did not.
    acks: dict[str, asyncio.Future[str | None]] = field(default_factory=dict)
    # Purges awaited from this process, by id: the count removed, or an error.
    purges: dict[str, asyncio.Future[int]] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """The parent process: workers, admin listener, reloads and the drain."""

    def __init__(
        self, path: Path, config: GatewayConfig, workdir: Path, *, watch: bool = False
    ) -> None:
        from gateway.observability.logging import get_logger

        self._path = path
        self._config = config
        self._workdir = workdir
        self._watch = watch
        self._log: Any = get_logger("supervisor")
        self._workers = [Worker(slot) for slot in range(resolve_workers(config))]
        self._snapshots: list[Path] = []
        self._snapshot_count = 0
        self._ports = [listener.listen.port for listener in config.server.listeners]
        self._started = False
        self._draining = False
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._hash = ""
        self._purge_count = 0

    # --- The admin source -------------------------------------------------------------------

    def ready(self) -> tuple[bool, dict[str, object]]:
        up = sum(1 for worker in self._workers if worker.state == "up")
        # A worker being restarted does not fail readiness while another one serves.
        ready = self._started and not self._draining and up > 0
        workers: list[dict[str, object]] = [
            {"slot": worker.slot, "pid": worker.pid, "state": worker.state}
            for worker in self._workers
        ]
        return ready, {"draining": self._draining, "workers": workers}

    def config_view(self) -> dict[str, object]:
        from gateway.config.describe import redacted_view

        # redacted_view includes the route table, in precedence order.
        return {"hash": self._hash, **redacted_view(self._config)}

    def flush_metrics(self) -> None:
        """The workers publish their own metrics each second; nothing is held here."""

    async def purge_cache(self, body: dict[str, object]) -> int:
        """Relay a purge to every worker and sum what they removed (each has its own memory
        store; a Redis entry is removed by whichever worker reaches it first)."""
        self._purge_count += 1
        purge_id = str(self._purge_count)
        line = f"purge {purge_id} {json.dumps(body, separators=(',', ':'))}\n".encode()
        waiting: list[asyncio.Future[int]] = []
        for worker in self._workers:
            process = worker.process
            if worker.state != "up" or process is None or process.stdin is None:
                continue  # a worker starting now starts with an empty memory store
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            worker.purges[purge_id] = future
            try:
                process.stdin.write(line)
            except (BrokenPipeError, ConnectionResetError):
                worker.purges.pop(purge_id, None)
                continue
            waiting.append(future)
        try:
            async with asyncio.timeout(PURGE_TIMEOUT):
                counts = await asyncio.gather(*waiting)
        finally:
            for worker in self._workers:
                worker.purges.pop(purge_id, None)
        return sum(counts)

    # --- Lifecycle ----------------------------------------------------------------------------

    async def run(self) -> int:
        from gateway.app import StartupError as AppStartupError
        from gateway.app import require_c_parser
        from gateway.config.describe import config_hash
        from gateway.observability import metrics

        assert metrics.MULTIPROC_ENV == MULTIPROC_ENV
        try:
            require_c_parser()
        except AppStartupError as error:
            raise StartupError(str(error)) from error
        if self._config.admin.metrics:
            metrics.mark_build_info()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

        self._hash = config_hash(self._config)
        self._write_snapshot(self._config)
        reservations = reserve_ports([item.listen for item in self._config.server.listeners])
        try:
            self._ports = [sock.getsockname()[1] for sock in reservations]
            admin, admin_address = await self._start_admin()
            if self._config.admin.metrics:
                from gateway.cache.census import redis_cache_url, run_census

                self._background(run_census(lambda: redis_cache_url(self._config)))
            try:
                if await self._start_workers():
                    await self._serve(admin_address)
                await self._shutdown()
            finally:
                await admin.cleanup()
        finally:
            for sock in reservations:
                sock.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._log.info("stopped")
        return 0

    async def _start_admin(self) -> tuple[web.AppRunner, tuple[str, int]]:
        from gateway.admin import start_admin

        try:
            return await start_admin(self._config.admin, self)
        except OSError as error:
            raise StartupError(
                f"admin.listen: cannot listen on {self._config.admin.listen}: {error.strerror}"
            ) from error

    async def _start_workers(self) -> bool:
        """Start every worker; False when a stop signal came first, StartupError on failure."""
        for worker in self._workers:
            await self._spawn(worker)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            for worker in self._workers:
                assert worker.ready is not None
                assert worker.process is not None
                exited = asyncio.ensure_future(worker.process.wait())
                waiters: set[asyncio.Future[Any]] = {worker.ready, exited, stop}
                done, _ = await asyncio.wait(
                    waiters,
                    timeout=READY_TIMEOUT,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                exited.cancel()
                if stop in done:
                    return False
                if worker.ready not in done:
                    await self._kill_all()
                    raise StartupError(self._startup_failure(worker))
        finally:
            stop.cancel()
        self._started = True
        return True

    def _startup_failure(self, worker: Worker) -> str:
        if worker.failure:
            return worker.failure
        if worker.process is not None and worker.process.returncode is not None:
            how = _exit_description(worker.process.returncode)
            return f"worker {worker.slot} stopped before it was ready ({how})"
        return f"worker {worker.slot} was not ready within {READY_TIMEOUT:.0f}s"

    async def _kill_all(self) -> None:
        for worker in self._workers:
            if worker.alive:
                assert worker.process is not None
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
            if worker.status_reader is not None:
                # Read to the end: a worker that failed to start said why just before exiting.
                await worker.status_reader

    async def _serve(self, admin_address: tuple[str, int]) -> None:
        for worker in self._workers:
            self._background(self._supervise(worker))
        self._background(self._reloader())
        if self._watch:
            self._background(self._watch_file())
        addresses = [
            str(replace(listener.listen, port=port))
            for listener, port in zip(self._config.server.listeners, self._ports, strict=True)
        ]
        self._log.info(
            "listening",
            address=addresses[0],
            addresses=addresses,
            admin=f"{admin_address[0]}:{admin_address[1]}",
            workers=len(self._workers),
            pids=[worker.pid for worker in self._workers],
            hash=self._hash,
        )
        await self._stop.wait()

    def _background(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        self._draining = True
        drain = self._config.server.timeouts.drain
        self._log.info(
            "draining", timeout_s=drain, workers=sum(1 for w in self._workers if w.alive)
        )
        deadline = loop.time() + drain + KILL_AFTER_DRAIN
        signalled: set[asyncio.subprocess.Process] = set()
        while live := [w.process for w in self._workers if w.alive and w.process is not None]:
            for process in live:
                if process not in signalled:
                    signalled.add(process)
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
            remaining = deadline - loop.time()
            if remaining <= 0:
                for process in live:
                    self._log.warning("worker_killed", pid=process.pid, after_s=drain)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
                break
            # Woken at least each second: a worker restarted just before the drain joins it.
            waits = [asyncio.ensure_future(process.wait()) for process in live]
            await asyncio.wait(
                waits, timeout=min(remaining, 1.0), return_when=asyncio.FIRST_COMPLETED
            )
            for wait in waits:
                wait.cancel()
        for worker in self._workers:
            if worker.status_reader is not None:
                await worker.status_reader
            worker.state = "stopped"

    # --- Workers --------------------------------------------------------------------------------

    async def _spawn(self, worker: Worker) -> None:
        """Start a process for ``worker`` on the active snapshot."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "worker",
                "--snapshot",
                str(self._snapshots[-1]),
                "--port",
                ",".join(str(port) for port in self._ports),
                "--status-fd",
                str(write_fd),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(write_fd,),
                env=_worker_environment(),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        worker.process = process
        worker.state = "starting"
        worker.up_since = None
        worker.failure = None
        worker.ready = loop.create_future()
        worker.acks = {}
        worker.status_reader = loop.create_task(self._read_status(worker, process, read_fd))

    async def _read_status(
        self, worker: Worker, process: asyncio.subprocess.Process, read_fd: int
    ) -> None:
        """Follow one worker process's status pipe until it closes (the process exited)."""
        import json

        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            while line := await reader.readline():
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict) and worker.process is process:
                    self._on_status(worker, message)
        finally:
            transport.close()

    def _on_status(self, worker: Worker, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "ready":
            worker.state = "up"
            worker.up_since = asyncio.get_running_loop().time()
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_result(None)
            if self._started:
                self._log.info("worker_ready", slot=worker.slot, pid=worker.pid)
        elif event == "failed":
            worker.failure = str(message.get("error"))
        elif event in ("purged", "purge_failed"):
            waiter = worker.purges.pop(str(message.get("id")), None)
            if waiter is not None and not waiter.done():
                if event == "purged":
                    waiter.set_result(int(message.get("removed", 0)))
                else:
                    waiter.set_exception(RuntimeError(str(message.get("error"))))
        elif event in ("reloaded", "reload_failed"):
            ack = worker.acks.pop(str(message.get("snapshot")), None)
            if ack is not None and not ack.done():
                ack.set_result(None if event == "reloaded" else str(message.get("error")))

    async def _supervise(self, worker: Worker) -> None:
        """Keep ``worker``'s slot filled until the drain."""
        from gateway.observability import metrics

        loop = asyncio.get_running_loop()
        quick_deaths = 0
        while True:
            process = worker.process
            assert process is not None
            assert worker.ready is not None
            exited = asyncio.ensure_future(process.wait())
            waiters: set[asyncio.Future[Any]] = {worker.ready, exited}
            done, _ = await asyncio.wait(
                waiters, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                self._log.error("worker_not_ready", slot=worker.slot, pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            code = await exited
            if worker.status_reader is not None:
                await worker.status_reader
            for ack in worker.acks.values():
                if not ack.done():
                    ack.set_result(None)  # its replacement starts on the newest snapshot
            if self._draining:
                return
            up_for = 0.0 if worker.up_since is None else loop.time() - worker.up_since
            quick_deaths = 1 if up_for >= STABLE_AFTER else quick_deaths + 1
            delay = _backoff(quick_deaths)
            worker.state = "restarting"
            metrics.mark_worker_dead(process.pid)
            self._log.error(
                "worker_died",
                slot=worker.slot,
                pid=process.pid,
                how=_exit_description(code),
                error=worker.failure,
                up_s=round(up_for, 3),
                restart_in_s=delay,
            )
            while True:
                if delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    worker.state = "stopped"
                    return
                metrics.WORKER_RESTARTS.inc()
                try:
                    await self._spawn(worker)
                except OSError as error:  # out of processes, memory or descriptors: try later
                    quick_deaths += 1
                    delay = _backoff(quick_deaths)
                    self._log.error(
                        "worker_spawn_failed",
                        slot=worker.slot,
                        error=str(error),
                        restart_in_s=delay,
                    )
                    continue
                break
            self._log.info(
                "worker_restarted", slot=worker.slot, pid=worker.pid, previous=process.pid
            )

    # --- Reloads --------------------------------------------------------------------------------

    def request_reload(self) -> None:
        """Reload the config file soon (SIGHUP); requests that arrive meanwhile coalesce."""
        self._reload_requested.set()

    async def _reloader(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            if self._draining:
                return
            try:
                await self._reload()
            except Exception as error:
                self._log.exception("config_reload_crashed", error=str(error))

    async def _reload(self) -> None:
        from gateway.config.describe import config_hash, diff_configs, restart_only_changes
        from gateway.observability import metrics

        path = str(self._path)
        try:
            loaded = await asyncio.to_thread(load_config, path)
        except ConfigError as error:
            metrics.CONFIG_RELOADS.labels("error").inc()
            self._log.error(
                "config_reload_failed",
                path=path,
                problems=list(error.problems),
                message="the file is invalid; the previous config keeps serving",
            )
            return
        old = self._config
        needs_restart = restart_only_changes(loaded, old)
        if needs_restart:
            self._log.warning(
                "config_needs_restart",
                path=path,
                keys=needs_restart,
                message="these settings change only when the gateway restarts; kept as they are",
            )
        config = keep_restart_only(loaded, old)
        changes = diff_configs(config, old)
        digest = config_hash(config)
        snapshot = self._write_snapshot(config)
        self._config, self._hash = config, digest
        pending: dict[Worker, asyncio.Future[str | None]] = {}
        for worker in self._workers:
            if worker.alive:
                pending[worker] = self._send_reload(worker, snapshot)
        results: dict[Worker, str | None] = {}
        if pending:
            done, _ = await asyncio.wait(pending.values(), timeout=RELOAD_TIMEOUT)
            for worker, ack in pending.items():
                results[worker] = ack.result() if ack in done else "no acknowledgement in time"
        failed = {worker: error for worker, error in results.items() if error is not None}
        if failed:
            metrics.CONFIG_RELOADS.labels("error").inc()
            self._log.error(
                "config_reload_failed",
                path=path,
                hash=digest,
                workers=[
                    {"slot": worker.slot, "pid": worker.pid, "error": error}
                    for worker, error in failed.items()
                ],
                message="restarting those workers on the new config",
            )
            for worker in failed:
                # The config is valid: a fresh process starts on it (and drains the old one).
                if worker.alive and worker.process is not None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.send_signal(signal.SIGTERM)
            return
        metrics.CONFIG_RELOADS.labels("success").inc()
        self._log.info(
            "config_reloaded", path=path, hash=digest, changes=changes, workers=len(results)
        )

    def _send_reload(self, worker: Worker, snapshot: Path) -> asyncio.Future[str | None]:
        ack: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        process = worker.process
        assert process is not None
        if process.stdin is None or process.stdin.is_closing():
            ack.set_result(None)  # exiting; its replacement starts on the new snapshot
            return ack
        worker.acks[str(snapshot)] = ack
        try:
            process.stdin.write(f"reload {snapshot}\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            worker.acks.pop(str(snapshot), None)
            ack.set_result(None)
        return ack

    def _write_snapshot(self, config: GatewayConfig) -> Path:
        self._snapshot_count += 1
        path = self._workdir / f"config-{self._snapshot_count}.snapshot"
        write_snapshot(config, path)
        self._snapshots.append(path)
        while len(self._snapshots) > SNAPSHOTS_KEPT + 1:
            self._snapshots.pop(0).unlink(missing_ok=True)
        return path

    async def _watch_file(self) -> None:
        """Request a reload when the file's content changes (polled: no new dependency)."""
        path = self._path
        seen = _fingerprint(path)
        digest = _digest(path)
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            current = _fingerprint(path)
            if current is None or current == seen:
                continue  # missing for a moment while an editor replaces it, or unchanged
            seen = current
            new_digest = _digest(path)
            if new_digest is None or new_digest == digest:
                continue
            digest = new_digest
            self._log.info("config_file_changed", path=str(path))
            self.request_reload()


def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def _digest(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


def _worker_environment() -> dict[str, str]:
    """This process's environment, with the gateway package importable from anywhere."""
    import gateway

    package_root = str(Path(gateway.__file__).resolve().parent.parent)
    environment = dict(os.environ)
    paths = environment.get("PYTHONPATH", "")
    if package_root not in paths.split(os.pathsep):
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, paths]))
    return environment
