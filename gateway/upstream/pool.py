"""A per-upstream pool of keep-alive HTTP/1.1 connections (the lean transport, DESIGN.md §2).

Targets are chosen by the upstream's balancer among the healthy ones (`health.TargetHealth`:
active checks, passive ejection, panic mode); each target keeps a LIFO stack of idle
connections (the most recently used socket is the least likely to have been closed by the
peer). At most ``pool.max_connections`` sockets are open per upstream (busy + idle +
connecting), and at most ``pool.max_idle`` idle. A request that finds no slot waits in FIFO
order, up to the connect timeout, then fails with UpstreamBusy (503).

Circuit breaking (``circuit_breaker``): beyond ``max_requests`` requests in flight, or
``max_pending`` waiting for a slot, a request fails at once with UpstreamOverloaded (503)
without the upstream being asked. Retries (a route's ``retries``) happen here too, since only
the pool knows whether a failure came before any response byte and which target it hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import ClassVar, Final, cast

from gateway.config.model import RetryConfig, Target, UpstreamConfig
from gateway.errors import BadGateway, GatewayTimeout, UpstreamBusy, UpstreamOverloaded
from gateway.messages import BodyStream, Headers, InformationalCallback
from gateway.observability import metrics
from gateway.observability.logging import get_logger
from gateway.upstream.balancer import balancer_for
from gateway.upstream.checker import MAX_STATUS_LINE, HealthChecker
from gateway.upstream.connection import UpstreamConnection
from gateway.upstream.health import TargetHealth
from gateway.upstream.replay import ReplayableBody
from gateway.upstream.request import (
    END_OF_HEAD,
    IDEMPOTENT,
    build_head,
    framing_fields,
    method_bytes,
)
from gateway.upstream.resolver import Address, Resolver
from gateway.upstream.response import UpstreamResponse
from gateway.upstream.tls import client_context

# How long an ``Expect: 100-continue`` request holds its body back waiting for 100 (curl
# waits 1 s; RFC 9110 §10.1.1 says not to wait indefinitely).
EXPECT_CONTINUE_TIMEOUT: Final = 1.0

log = get_logger("gateway.upstream")

# Retries in flight are always allowed up to this many, whatever budget_percent says (Envoy's
# min_retry_concurrency): a quiet upstream's one failing request may still be retried.
MIN_RETRY_CONCURRENCY: Final = 3

# A waiter is woken with a connection handed over, or None: "a slot is reserved for you".
_Waiter = tuple["asyncio.Future[UpstreamConnection | None]", bool]


def _ascii_host(host: str) -> bytes:
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        return host.encode("idna")


class UpstreamPool:
    """Sends requests to one upstream over pooled connections."""

    __slots__ = (
        "_balancer",
        "_checker",
        "_closed",
        "_connect_timeout",
        "_expect_timeout",
        "_hosts",
        "_idle",
        "_idle_count",
        "_idle_timeout",
        "_idle_timer",
        "_loop",
        "_max_connections",
        "_max_idle",
        "_max_pending",
        "_max_requests",
        "_open",
        "_random",
        "_resolver",
        "_retrying",
        "_single",
        "_ssl",
        "_targets",
        "_timeouts",
        "_waiters",
        "config",
        "connections_opened",
        "health",
        "inflight",
        "outstanding",
    )

    # The class of the connections this pool opens (tests record them with a subclass).
    connection_class: ClassVar[type[UpstreamConnection]] = UpstreamConnection

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        resolver: Resolver | None = None,
        expect_continue_timeout: float = EXPECT_CONTINUE_TIMEOUT,
    ) -> None:
        if not config.targets:
            raise ValueError(f"upstream {config.name!r} has no targets")
        self.config = config
        self._targets = config.targets
        self._timeouts = config.timeouts
        self._connect_timeout = config.timeouts.connect
        self._max_connections = config.pool.max_connections
        self._max_idle = config.pool.max_idle
        self._idle_timeout = config.pool.idle_timeout
        self._expect_timeout = expect_continue_timeout
        # The Host field per target, computed once; None means the client's (RFC 9110 §7.2).
        hosts: list[bytes | None] = []
        for target in config.targets:
            if config.host_header == "preserve":
                hosts.append(None)
            elif config.host_header == "target":
                hosts.append(_ascii_host(target.authority))
            else:
                hosts.append(_ascii_host(config.host_header))
        self._hosts = tuple(hosts)
        has_https = any(target.scheme == "https" for target in config.targets)
        self._ssl = client_context(config.tls) if has_https else None
        self._resolver = resolver if resolver is not None else Resolver(config.dns_ttl)
        self._idle: tuple[deque[UpstreamConnection], ...] = tuple(deque() for _ in config.targets)
        self._idle_count = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        # Sockets open or being opened (busy + idle + connecting), against max_connections.
        self._open = 0
        self._waiters: deque[_Waiter] = deque()
        self._closed = False
        # Exchanges in progress, per target and in all (least_requests, circuit breaking),
        # and retries in progress (the retry budget).
        self.inflight = [0] * len(config.targets)
        self.outstanding = 0
        self._retrying = 0
        self._max_requests = config.circuit_breaker.max_requests
        self._max_pending = config.circuit_breaker.max_pending
        self.health = TargetHealth(len(config.targets), config.passive_health, time.monotonic)
        self._single = len(config.targets) == 1
        self._balancer = balancer_for(
            config.balance,
            [(str(target), target.weight) for target in config.targets],
            self.inflight,
        )
        self._random = random.Random()
        check = config.health_check
        self._checker = (
            HealthChecker(
                config.name,
                check,
                targets=config.targets,
                hosts=[
                    _ascii_host(target.authority) if host is None else host
                    for host, target in zip(hosts, config.targets, strict=True)
                ],
                health=self.health,
                connect=self._check_connection,
            )
            if check is not None
            else None
        )
        # Bound lazily: the pool may be built before the loop runs.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Real TCP (and TLS) connects made, for tests and metrics.
        self.connections_opened = 0

    @property
    def idle_connections(self) -> int:
        return self._idle_count

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def waiting(self) -> int:
        """Requests queued for a connection slot."""
        return sum(1 for waiter, _ in self._waiters if not waiter.done())

    async def request(  # noqa: PLR0917 - the forwarder's fixed positional contract
        self,
        method: str,
        target: bytes,
        headers: Headers,
        client_authority: bytes,
        body: BodyStream | None,
        content_length: int | None,
        *,
        expect_continue: bool = False,
        on_informational: InformationalCallback | None = None,
        hash_key: bytes = b"",
        retries: RetryConfig | None = None,
    ) -> UpstreamResponse:
        """Send a request and return the final response head with its body stream.

        Raises BadGateway (refused, reset, invalid response), GatewayTimeout (connect or
        first-byte timeout), UpstreamBusy (no slot within the connect timeout),
        UpstreamOverloaded (circuit breaker), or the exception the caller's body iterator
        raised. ``retries`` (a route's) allows further attempts, on other targets when there
        are some; ``hash_key`` is what consistent_hash balances on.
        """
        if self.outstanding >= self._max_requests:
            raise UpstreamOverloaded(
                f"{self._max_requests} requests in flight to upstream {self.config.name!r}"
                " (circuit_breaker.max_requests)"
            )
        if content_length == 0:
            body = None  # nothing to pull; "Content-Length: 0" is sent
        has_body = body is not None
        framing = framing_fields(method, has_body, content_length)
        verb = method_bytes(method)
        expect = expect_continue and has_body
        idempotent = method in IDEMPOTENT
        # RFC 9110 §9.2.2: only idempotent requests may be sent again unless the route opts in.
        policy = retries if retries is not None and (idempotent or retries.non_idempotent) else None
        replay: ReplayableBody | None = None
        if (
            body is not None
            and policy is not None
            and policy.attempts > 1
            and (content_length is None or content_length <= policy.max_replay_body)
        ):
            replay = ReplayableBody(body, policy.max_replay_body)
        tried: list[int] = []
        attempt = 1
        index = self._pick_target(hash_key, tried)
        fresh = False
        # This attempt is a retry, counted in _retrying until it ends.
        retrying = False
        while True:
            sent_body = replay.attempt() if replay is not None else body
            self.outstanding += 1
            # Set once the exchange begins: the connection then owns the counts.
            exchanging: UpstreamConnection | None = None
            stale_retry = False
            try:
                conn = None if fresh else self._take_idle(index)
                if conn is not None:
                    reused = True
                else:
                    conn, reused = await self._acquire(index, fresh=fresh)
                index = conn.target_index
                host = self._hosts[index]
                head, close = build_head(
                    verb, target, client_authority if host is None else host, headers, framing
                )
                # From here on the connection gives both counts back when its exchange ends.
                self.inflight[index] += 1
                exchanging = conn
                response = await conn.exchange(
                    head,
                    sent_body,
                    request_close=close,
                    is_head=method == "HEAD",
                    content_length=content_length,
                    expect_continue=expect,
                    on_informational=on_informational,
                )
            except (BadGateway, GatewayTimeout):
                if exchanging is None:
                    self.outstanding -= 1
                    self._failed(index)
                    condition = "connect_failure"
                elif reused and exchanging.stale and not fresh and idempotent:
                    # RFC 9112 §9.3.1: a keep-alive connection the upstream closed just as we
                    # reused it. Retry once on a new connection to the same target, whatever
                    # the route's retries, when nothing can have been acted on twice: an
                    # idempotent method, no response byte, and a body not taken from the
                    # caller or kept whole. Not the target's fault: no health penalty.
                    if exchanging.body_pulled and not _replayable(replay):
                        raise
                    stale_retry = True
                else:
                    self._failed(index)
                    if not exchanging.stale:
                        raise  # an invalid response or a response timeout: never retried
                    condition = "reset"
                if not stale_retry:
                    pulled = exchanging is not None and exchanging.body_pulled
                    if not self._may_retry(policy, condition, attempt, pulled, replay):
                        raise
            except BaseException:
                if exchanging is None:
                    self.outstanding -= 1
                raise
            else:
                status = response.status
                if status >= 500:
                    self._failed(index)
                else:
                    self.health.succeeded(index)
                if (
                    status < 502
                    or status > 504
                    or not self._may_retry(policy, str(status), attempt, conn.body_pulled, replay)
                ):
                    return response
                # The answer is dropped before the client saw a byte of it.
                await response.release()
            finally:
                if retrying:
                    retrying = False
                    self._retrying -= 1
            if stale_retry:
                metrics.count_upstream_retry(self.config.name, "stale")
                fresh = True
                continue
            attempt += 1
            fresh = False
            tried.append(index)
            index = self._pick_target(hash_key, tried)
            self._retrying += 1
            retrying = True
            try:
                await self._backoff(cast(RetryConfig, policy), attempt - 1)
            except BaseException:
                self._retrying -= 1
                raise

    def _failed(self, index: int) -> None:
        if self.health.failed(index):
            target = str(self._targets[index])
            name = self.config.name
            metrics.count_upstream_ejection(name, target)
            ejection = round(self.health.ejected_for(index), 3)
            log.warning("upstream_target_ejected", upstream=name, target=target, for_s=ejection)

    def _may_retry(
        self,
        policy: RetryConfig | None,
        condition: str,
        attempt: int,
        body_pulled: bool,
        replay: ReplayableBody | None,
    ) -> bool:
        if policy is None or condition not in policy.on or attempt >= policy.attempts:
            return False
        if body_pulled and not _replayable(replay):
            return False
        # The retry budget: retries in flight stay a share of the requests in flight, so a
        # failing upstream never gets its load multiplied by the retries. A refused connect is
        # outside it: that request reached no upstream, so sending it elsewhere adds nothing
        # (and a burst meeting a dead target before its ejection would otherwise see 502s).
        budget = max(MIN_RETRY_CONCURRENCY, self.outstanding * policy.budget_percent // 100)
        if condition != "connect_failure" and self._retrying >= budget:
            return False
        metrics.count_upstream_retry(self.config.name, condition)
        return True

    async def _backoff(self, policy: RetryConfig, retry: int) -> None:
        """Full jitter: a random wait up to the exponential step (AWS architecture blog)."""
        backoff = policy.backoff
        ceiling = min(backoff.base * 2.0 ** min(retry - 1, 32), backoff.max)
        await asyncio.sleep(self._random.uniform(0.0, ceiling))

    def target_states(self) -> list[tuple[Target, bool]]:
        """Each target, and whether it is in service (healthy, not ejected)."""
        health = self.health
        return [(target, health.healthy(i)) for i, target in enumerate(self._targets)]

    def describe_targets(self) -> dict[str, object]:
        """The targets' state for the admin view."""
        health = self.health
        health.usable()  # brings ejections that ended up to date
        targets = [
            {
                "target": str(target),
                "weight": target.weight,
                "healthy": health.healthy(i),
                "checks_pass": health.checked_healthy[i],
                "ejected_for_s": round(health.ejected_for(i), 3),
                "in_flight": self.inflight[i],
            }
            for i, target in enumerate(self._targets)
        ]
        # Panic: every target is out, so every target is used.
        return {"panic": health.panic, "targets": targets}

    def start(self) -> None:
        """Start the active health checks, if any (in a running loop)."""
        if self._checker is not None and not self._closed:
            self._checker.start()

    async def close(self) -> None:
        """Close idle connections now; busy ones close when released (shutdown, reload)."""
        self._closed = True
        if self._checker is not None:
            await self._checker.stop()
        timer = self._idle_timer
        if timer is not None:
            self._idle_timer = None
            timer.cancel()
        idle = [conn for stack in self._idle for conn in stack]
        for conn in idle:
            conn.close()
        if idle:
            # Let the transports finish closing (a TLS close_notify needs a round trip).
            await asyncio.wait(
                [asyncio.ensure_future(conn.wait_closed()) for conn in idle],
                timeout=self._connect_timeout,
            )

    # --------------------------------------------------------------- slot management

    def _pick_target(self, key: bytes, tried: Sequence[int]) -> int:
        """The balancer's choice among the usable targets, other than ``tried`` if possible."""
        if self._single:
            return 0
        usable = self.health.usable()
        if tried:
            others = list(usable)
            for index in tried:
                others[index] = False
            if any(others):
                usable = others
        return self._balancer.pick(usable, key)

    def _take_idle(self, index: int) -> UpstreamConnection | None:
        """An idle connection to ``index`` when nobody is queued for one (no await needed)."""
        if self._waiters:
            return None
        stack = self._idle[index]
        if not stack:
            return None
        conn = stack.pop()
        self._idle_count -= 1
        conn.take()
        return conn

    async def _acquire(self, index: int, *, fresh: bool) -> tuple[UpstreamConnection, bool]:
        """A new connection for ``index``, or one a waiter is handed, and whether it was reused.

        Called when `_take_idle` found nothing; ``fresh`` forbids a handed-over connection.
        """
        if not self._waiters:
            if self._open >= self._max_connections and self._idle_count:
                # Full, but with idle sockets to other targets: trade one for a new one.
                self._evict_oldest_idle()
            if self._open < self._max_connections:
                self._open += 1
                return await self._connect_reserved(index), False
        handed = await self._wait(fresh)
        if handed is not None:
            return handed, True
        return await self._connect_reserved(index), False

    async def _wait(self, fresh: bool) -> UpstreamConnection | None:
        if len(self._waiters) >= self._max_pending:
            raise UpstreamOverloaded(
                f"{self._max_pending} requests waiting for a connection to upstream"
                f" {self.config.name!r} (circuit_breaker.max_pending)"
            )
        loop = self._get_loop()
        waiter: asyncio.Future[UpstreamConnection | None] = loop.create_future()
        entry = (waiter, fresh)
        self._waiters.append(entry)
        timer = loop.call_later(self._connect_timeout, _expire, waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Given a slot or a connection, then cancelled before using it: pass it on.
                handed = waiter.result()
                if handed is None:
                    self._slot_freed()
                else:
                    self.connection_reusable(handed)
            raise
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)  # still queued when it timed out or was cancelled

    async def _connect_reserved(self, index: int) -> UpstreamConnection:
        """Open a connection in a slot already counted in ``_open``."""
        try:
            return await self._connect(index)
        except BaseException:
            self._slot_freed()
            raise

    def _slot_freed(self) -> None:
        self._open -= 1
        waiters = self._waiters
        while waiters:
            waiter, _ = waiters.popleft()
            if not waiter.done():
                self._open += 1
                waiter.set_result(None)
                return

    def _evict_oldest_idle(self) -> None:
        oldest: UpstreamConnection | None = None
        for stack in self._idle:
            if stack and (oldest is None or stack[0].idle_since < oldest.idle_since):
                oldest = stack[0]
        if oldest is not None:
            oldest.close()

    # ---------------------------------------------------- ConnectionOwner (callbacks)

    def connection_reusable(self, conn: UpstreamConnection) -> None:
        """A clean exchange ended: hand the connection to a waiter, or park it."""
        if self._closed:
            conn.close()
            return
        waiters = self._waiters
        while waiters:
            waiter, fresh = waiters[0]
            if waiter.done():
                waiters.popleft()
                continue
            if fresh:
                # The first waiter is a retry that needs a new socket: give it this slot.
                conn.close()
                return
            waiters.popleft()
            conn.take()
            waiter.set_result(conn)
            return
        if self._idle_count >= self._max_idle:
            conn.close()
            return
        loop = self._get_loop()
        conn.park(loop.time())
        self._idle[conn.target_index].append(conn)
        self._idle_count += 1
        if self._idle_timer is None:
            self._idle_timer = loop.call_at(conn.idle_since + self._idle_timeout, self._expire_idle)

    def exchange_ended(self, conn: UpstreamConnection) -> None:
        """An exchange that `request` counted is over (whichever way it ended)."""
        self.outstanding -= 1
        self.inflight[conn.target_index] -= 1

    def connection_gone(self, conn: UpstreamConnection) -> None:
        """The connection closed: drop it from the idle stacks and free its slot."""
        if conn.is_idle:
            # Closed by the peer while idle, timed out, or evicted: out of the pool at once.
            self._idle[conn.target_index].remove(conn)
            self._idle_count -= 1
        self._slot_freed()

    def _expire_idle(self) -> None:
        """Close connections idle for ``pool.idle_timeout`` (kept below upstream keep-alives).

        One timer per pool, set for the oldest idle connection; the bottom of each LIFO
        stack is its oldest, so expiry only ever looks at stack bottoms.
        """
        self._idle_timer = None
        loop = self._get_loop()
        limit = loop.time() - self._idle_timeout
        next_expiry: float | None = None
        for stack in self._idle:
            while stack and stack[0].idle_since <= limit:
                stack[0].close()  # connection_gone removes it from the stack
            if stack:
                expiry = stack[0].idle_since + self._idle_timeout
                if next_expiry is None or expiry < next_expiry:
                    next_expiry = expiry
        if next_expiry is not None:
            self._idle_timer = loop.call_at(next_expiry, self._expire_idle)

    # ----------------------------------------------------------------------- connect

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def _connect(self, index: int) -> UpstreamConnection:
        conn = self.connection_class(
            self, self._get_loop(), self._timeouts, index, expect_timeout=self._expect_timeout
        )
        await self._open_transport(index, conn)
        self.connections_opened += 1
        return conn

    async def open_tunnel(
        self,
        target: bytes,
        headers: Headers,
        client_authority: bytes,
        protocol: asyncio.Protocol,
        hash_key: bytes = b"",
    ) -> bytes:
        """Connect ``protocol`` on a new connection outside the pool (a WebSocket's, which
        never returns to it) to the balancer's target, with the pool's timeouts and TLS; the
        ``GET target`` head to send on it, with ``headers`` and the pool's Host.

        A connect that fails is tried once more on another target when there is one: nothing
        was sent, so the handshake is safe to start elsewhere.
        """
        tried: list[int] = []
        while True:
            index = self._pick_target(hash_key, tried)
            try:
                await self._open_transport(index, protocol)
                break
            except (BadGateway, GatewayTimeout):
                self._failed(index)
                tried.append(index)
                if len(tried) > 1 or self._single:
                    raise
            metrics.count_upstream_retry(self.config.name, "connect_failure")
        host = self._hosts[index]
        head, _ = build_head(
            b"GET", target, client_authority if host is None else host, headers, END_OF_HEAD
        )
        return head

    async def _check_connection(
        self, index: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection for a health check, opened as traffic's are (DNS, TCP, TLS, one
        connect budget); the checker bounds it with its own timeout too."""
        loop = self._get_loop()
        reader = asyncio.StreamReader(limit=MAX_STATUS_LINE, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport = await self._open_transport(index, protocol)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _open_transport(self, index: int, protocol: asyncio.Protocol) -> asyncio.Transport:
        target = self._targets[index]
        loop = self._get_loop()
        try:
            # One budget for DNS, TCP and TLS: a stalled step must not pin the request.
            async with asyncio.timeout(self._connect_timeout):
                addresses = await self._resolver.resolve(target.host, target.port)
                sock = await _open_socket(loop, addresses)
                try:
                    if self._ssl is not None and target.scheme == "https":
                        transport, _ = await loop.create_connection(
                            lambda: protocol,
                            sock=sock,
                            ssl=self._ssl,
                            server_hostname=target.host,
                            ssl_handshake_timeout=self._connect_timeout,
                            ssl_shutdown_timeout=self._connect_timeout,
                        )
                    else:
                        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            raise GatewayTimeout(f"connecting to {target} timed out") from None
        except OSError as exc:
            # Refused, unreachable, reset, DNS failure, TLS handshake or certificate errors.
            raise BadGateway(f"cannot connect to {target}: {exc}") from None
        return transport


def _replayable(replay: ReplayableBody | None) -> bool:
    """Whether a body some attempt already took from the caller can be sent again whole."""
    return replay is not None and replay.replayable and replay.complete


def _expire(waiter: asyncio.Future[UpstreamConnection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamBusy("no upstream connection became free in time"))


async def _open_socket(
    loop: asyncio.AbstractEventLoop, addresses: Sequence[Address]
) -> socket.socket:
    """Connect to the first address that accepts, trying each in order."""
    error: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # Heads and small bodies go out at once (asyncio sets this too; uvloop may not).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error if error is not None else OSError("no address to connect to")
