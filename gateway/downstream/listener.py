"""The public listening socket, accepting connections in batches.

libuv (under uvloop) accepts one connection per pass of the event loop since 1.45
(libuv/libuv#3696). A loaded gateway's pass over a thousand busy connections takes a good part
of a second, so a burst of new connections waited in the kernel's accept queue for many
seconds: under `wrk -c1000` a tenth of the clients timed out while every request the gateway
had read was answered within 221 ms. Here each time the socket is readable up to ACCEPT_BATCH
connections are taken, bounded so that a connection storm cannot hold the loop either.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
from collections.abc import Callable
from typing import Final, Protocol

from gateway.observability.logging import get_logger

log = get_logger("gateway.listener")

ACCEPT_BATCH: Final = 128
# Out of file descriptors (or kernel memory): pause accepting this long instead of spinning on
# a socket that stays readable.
ACCEPT_PAUSE: Final = 0.1
_RESOURCE_ERRORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


# Descriptors a worker needs besides client and upstream connections: listeners, the status
# pipe, log files, the event loop's own, Redis clients.
FD_RESERVE: Final = 64


def raise_fd_limit() -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit; the soft limit after.

    Each client connection holds a descriptor, so `server.limits.max_connections` means
    nothing above the limit: accept() would fail with EMFILE first (handled below by pausing).
    Many systems start processes with a soft limit of 1024 and a far higher hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def fd_budget_problem(limit: int, max_connections: int, upstream_connections: int) -> str | None:
    """Why ``limit`` descriptors cannot hold the configured connections, or None when they can."""
    needed = max_connections + upstream_connections + FD_RESERVE
    if limit >= needed:
        return None
    return (
        f"the file-descriptor limit {limit} is below the {needed} that"
        f" server.limits.max_connections ({max_connections}) and the upstream pools"
        f" ({upstream_connections}) may need: accepting pauses when it runs out"
    )


class Acceptor(Protocol):
    """What a listener does with a connection it accepted (`gateway.downstream.accept`)."""

    def accepted(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket
    ) -> asyncio.Task[object]: ...


class Listener:
    """Accepts on ``sock`` and hands each connection over: to uvloop with a protocol from
    ``factory``, or, when ``acceptor`` is given, to it (TLS, PROXY headers, h2c)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        *,
        acceptor: Acceptor | None = None,
        backlog: int = 1024,
        batch: int = ACCEPT_BATCH,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._acceptor = acceptor
        self._batch = batch
        self._pending: set[asyncio.Task[object]] = set()
        self._closed = False
        self._paused = False
        # Accept calls that found connections, and connections taken: for tests and debugging.
        self.wakeups = 0
        self.accepted = 0
        sock.setblocking(False)
        sock.listen(backlog)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        self.wakeups += 1
        for _ in range(self._batch):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued; take the next one
            except OSError as error:
                if error.errno in _RESOURCE_ERRORS:
                    log.error("accept_paused", error=error.strerror, pause_s=ACCEPT_PAUSE)
                    self._pause()
                    return
                raise
            self.accepted += 1
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            acceptor = self._acceptor
            task: asyncio.Task[object]
            if acceptor is not None:
                task = acceptor.accepted(self._loop, conn)
            else:
                task = self._loop.create_task(
                    self._loop.connect_accepted_socket(self._factory, sock=conn)
                )
            self._pending.add(task)
            task.add_done_callback(self._handed_over)

    def _handed_over(self, task: asyncio.Task[object]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The client reset before the transport was set up: nothing to answer.
            log.debug("accept_failed", error=repr(task.exception()))

    def _pause(self) -> None:
        if not self._paused and not self._closed:
            self._paused = True
            self._loop.remove_reader(self._sock.fileno())
            self._loop.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        self._paused = False
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close the listening socket (established connections stay)."""
        if self._closed:
            return
        self._closed = True
        if not self._paused:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
