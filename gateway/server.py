"""The request handler: edge checks, routing, the route's chain, the response, logs, metrics.

Errors become HTTP in exactly one place, here (DESIGN.md §1). Client connections are
`gateway.downstream.connection.ClientConnection`s; `GatewayServer` makes one per accepted socket
and keeps track of them for the gauges and for draining.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import cast

from gateway import headers as header_rules
from gateway.config.model import ListenerConfig
from gateway.downstream.at_hand import body_at_hand
from gateway.downstream.body import RequestBody
from gateway.downstream.connection import (
    ClientConnection,
    ClientGone,
    ConnectionLimits,
    ConnectionRegistry,
    ListenerSettings,
    PendingRequest,
    ServedConnection,
)
from gateway.downstream.http2 import H2InterimRelay, H2Stream, Http2Connection
from gateway.downstream.writer import (
    LAST_CHUNK,
    chunk,
    error_response,
    interim_head,
    response_head,
)
from gateway.edge import RequestHead, build_request, request_id_of
from gateway.errors import (
    ConnectionCapacity,
    GatewayError,
    RedirectToHttps,
    RouteNotFound,
    UpstreamAborted,
)
from gateway.messages import Headers, ProxyRequest, ProxyResponse
from gateway.observability.access_log import AccessLog
from gateway.observability.logging import get_logger
from gateway.observability.metrics import UNMATCHED
from gateway.observability.request_metrics import RequestMetrics
from gateway.runtime import Runtime
from gateway.websocket.handshake import is_websocket_upgrade
from gateway.websocket.stage import Tunnel

log = get_logger("gateway.server")


class Dispatcher:
    """Answers each request of a client connection."""

    def __init__(self, runtime: Runtime, metrics: RequestMetrics) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.draining = False
        self.inflight = 0

    def swap(self, runtime: Runtime) -> Runtime:
        """Serve new requests from ``runtime``; in-flight ones finish on the old one."""
        old, self.runtime = self.runtime, runtime
        return old

    async def __call__(self, conn: ClientConnection | H2Stream, pending: PendingRequest) -> None:
        """Answer ``pending``: an HTTP/1.1 request (``conn`` its connection) or an HTTP/2
        stream (``conn`` the stream); only writing the response differs."""
        runtime = self.runtime
        started = perf_counter()
        http1 = isinstance(conn, ClientConnection)
        if isinstance(conn, ClientConnection):
            conn.requests_served += 1
        listener = conn.listener
        head = pending.head
        route_name = UNMATCHED
        proxy_request: ProxyRequest | None = None
        proxy_response: ProxyResponse | None = None
        status = 500
        bytes_out = 0
        self.inflight += 1
        try:
            try:
                if pending.error is not None:
                    raise pending.error
                proxy_request = build_request(
                    head, runtime.edge, pending.body, pending.content_length, listener.scheme
                )
                if listener.redirect_port is not None:
                    raise _redirect(proxy_request, listener.redirect_port)
                route = runtime.router.match(
                    proxy_request.host,
                    proxy_request.path,
                    proxy_request.method,
                    proxy_request.headers,
                )
                if route is None:
                    raise RouteNotFound("no route matches this request")
                route_name = route.name
                if isinstance(conn, ClientConnection):
                    proxy_request.send_informational = InterimRelay(
                        conn, proxy_request, runtime.via_response
                    )
                else:
                    proxy_request.send_informational = H2InterimRelay(
                        conn, proxy_request, runtime.via_response
                    )
                handler = runtime.handlers[route.name]
                if pending.upgrade:
                    upgrade = runtime.upgrade_handlers.get(route.name)
                    offered = head.notes.upgrade
                    if upgrade is not None and offered and is_websocket_upgrade(offered):
                        handler = upgrade
                proxy_response = await handler(proxy_request)
            except GatewayError as error:
                if proxy_request is not None:
                    request_id = proxy_request.request_id
                else:
                    request_id = request_id_of(head)
                status, bytes_out = self._send_error(conn, pending, error, request_id)
            except Exception as error:  # the boundary: a bug must not kill the connection task
                log.exception("unhandled error", error=repr(error))
                status, bytes_out = self._send_error(
                    conn, pending, GatewayError("internal error"), header_rules.new_request_id()
                )
            else:
                status = proxy_response.status
                tunnel = proxy_response.tunnel
                if not isinstance(conn, ClientConnection):
                    bytes_out = await conn.relay(proxy_response, head.method == "HEAD")
                elif isinstance(tunnel, Tunnel):
                    bytes_out = await self._tunnel(conn, proxy_response, tunnel)
                else:
                    bytes_out = await self._relay(conn, pending, proxy_response)
        finally:
            self.inflight -= 1
        duration = perf_counter() - started
        self.metrics.request_done(
            route_name, head.method, status, duration, "http1" if http1 else "http2"
        )
        if proxy_request is not None and proxy_request.cache is not None:
            self.metrics.cache_result(route_name, proxy_request.cache)
        if runtime.access_log is not None:
            self._log(
                runtime.access_log,
                "http1" if http1 else "http2",
                head,
                pending.body,
                proxy_request=proxy_request,
                proxy_response=proxy_response,
                route=route_name,
                status=status,
                bytes_out=bytes_out,
                duration=duration,
            )

    def _send_error(
        self,
        conn: ClientConnection | H2Stream,
        pending: PendingRequest,
        error: GatewayError,
        request_id: str,
    ) -> tuple[int, int]:
        """Answer with ``error`` unless the response already started; return (status, bytes)."""
        if not isinstance(conn, ClientConnection):
            head_only = pending.head.method == "HEAD"
            return error.status, conn.send_error(error, request_id, head_only)
        if conn.response_started:
            conn.abort()
            return error.status, 0
        if error.close_connection:
            pending.keep_alive = False
        close = not conn.keep_alive_after(pending)
        head_only = pending.head.method == "HEAD"
        data = error_response(error, request_id, close=close, head_only=head_only)
        try:
            conn.write(data)
        except Exception:
            return error.status, 0
        return error.status, 0 if head_only else len(data) - data.index(b"\r\n\r\n") - 4

    async def _tunnel(self, conn: ClientConnection, response: ProxyResponse, tunnel: Tunnel) -> int:
        """Write the 101, switch the connection to the relay, and wait for the relay's end;
        the payload bytes relayed to the client."""
        head = response_head(
            101,
            response.reason,
            response.headers,
            content_length=None,
            chunked=False,
            close=False,
            keep_alive_10=False,
        )
        transport = conn.transport
        try:
            conn.write(head)
        except ClientGone:
            tunnel.abandon()
            return 0
        relay, hooks = tunnel.open(cast(asyncio.Transport, transport))
        conn.enter_tunnel(hooks)
        await relay.done
        return relay.client.sent_bytes

    async def _relay(
        self, conn: ClientConnection, pending: PendingRequest, upstream: ProxyResponse
    ) -> int:
        """Write the upstream's response to the client; return the body bytes sent."""
        head = pending.head
        body = upstream.body
        length = upstream.content_length
        http_11 = head.version == (1, 1)
        # What of the body is already at hand leaves with the head, in one send.
        try:
            first, more, length = await body_at_hand(body, length)
        except (UpstreamAborted, GatewayError):
            # The status is already logged as the upstream's: abort as once the head is out.
            self._abort(conn, upstream)
            if upstream.release is not None:
                await upstream.release()
            return 0
        chunked = body is not None and length is None and http_11
        if body is not None and length is None and not http_11:
            # RFC 9112 §6.3: a body of unknown length to an HTTP/1.0 client (no chunked
            # framing there) ends when the connection does.
            pending.keep_alive = False
        keep_alive = conn.keep_alive_after(pending)
        data = response_head(
            upstream.status,
            upstream.reason,
            upstream.headers,
            content_length=length,
            chunked=chunked,
            close=not keep_alive,
            keep_alive_10=keep_alive and not http_11,
        )
        sent = 0
        # The connection goes back to the pool on every way out, but not from a `finally`:
        # compiled by mypyc, a `finally` that awaits raises the first exception that ever left
        # it again on every later exit (a client gone mid-response once, then every response
        # after it: unlogged, uncounted, its traceback growing; the soak found it, and
        # tests/unit/test_build.py keeps such blocks out of the compiled modules).
        try:
            if body is None:
                conn.write(data)
            else:
                parts = [data]
                if first:
                    parts.extend(chunk(first) if chunked else (first,))
                if chunked and not more:
                    parts.append(LAST_CHUNK)
                conn.writelines(parts)
                sent = len(first)
                if more:
                    async for part in body:
                        if chunked:
                            conn.writelines(chunk(part))
                        else:
                            conn.write(part)
                        sent += len(part)
                        if conn.write_paused:
                            await conn.drain()
                    if chunked:
                        conn.write(LAST_CHUNK)
        except (UpstreamAborted, GatewayError):
            self._abort(conn, upstream)
        except BaseException:
            if upstream.release is not None:
                await upstream.release()
            raise
        if upstream.release is not None:
            await upstream.release()
        return sent

    def _abort(self, conn: ClientConnection, upstream: ProxyResponse) -> None:
        """The upstream's body failed: the status line is out (or logged as sent), so a second
        response is impossible, and a clean end would tell the client a truncated body is
        complete. Abort the connection instead."""
        if upstream.upstream is not None:
            self.metrics.upstream_failed(upstream.upstream, "aborted")
        conn.abort()

    def _log(
        self,
        access_log: AccessLog,
        protocol: str,
        head: RequestHead,
        body: RequestBody | None,
        *,
        proxy_request: ProxyRequest | None,
        proxy_response: ProxyResponse | None,
        route: str,
        status: int,
        bytes_out: int,
        duration: float,
    ) -> None:
        if proxy_request is not None:
            request_id = proxy_request.request_id
            client_ip = proxy_request.client_ip
            path = proxy_request.path
            trace_id: str | None = proxy_request.trace_id
            rate_limit = proxy_request.rate_limit
            cache = proxy_request.cache
            compression = proxy_request.compression
        else:
            request_id = "-"
            client_ip = head.peer_ip
            path = head.raw_target.split(b"?", 1)[0].decode("latin-1")
            trace_id = None
            rate_limit = None
            cache = None
            compression = None
        bytes_in = body.received if body is not None else 0
        access_log.record(
            request_id=request_id,
            client_ip=client_ip,
            method=head.method,
            path=path,
            route=route,
            upstream=proxy_response.upstream if proxy_response else None,
            status=status,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            duration=duration,
            upstream_seconds=proxy_response.upstream_seconds if proxy_response else None,
            trace_id=trace_id,
            rate_limit=rate_limit,
            cache=cache,
            compression=compression,
            protocol=protocol,
        )


def _redirect(request: ProxyRequest, port: int) -> RedirectToHttps:
    """308 to the same URL on https (a cleartext listener with redirect_to_https)."""
    if not request.host:
        return RedirectToHttps("this listener serves only redirects to https; send a Host")
    host = f"[{request.host}]" if ":" in request.host else request.host
    authority = host if port == 443 else f"{host}:{port}"
    location = b"https://" + authority.encode("ascii", "replace") + request.target
    return RedirectToHttps("this resource is served over https", fields=[(b"Location", location)])


class InterimRelay:
    """Relays an upstream interim response to the client (RFC 9110 §15.2).

    Never to an HTTP/1.0 client (§15.2: a server must not send 1xx to one), and 100 only when the
    client itself asked for it with Expect: 100-continue (§10.1.1). It holds what it needs, not
    the request: the request holds it, and a reference back would make a cycle per request
    that only the garbage collector could free.
    """

    __slots__ = ("_conn", "_expect_continue", "_http_11", "_request_id", "_via")

    def __init__(self, conn: ClientConnection, request: ProxyRequest, via: bytes) -> None:
        self._conn = conn
        self._http_11 = request.version == (1, 1)
        self._expect_continue = request.expect_continue
        self._request_id = request.request_id.encode()
        self._via = via

    async def __call__(self, status: int, reason: bytes, fields: Headers) -> None:
        if not self._http_11:
            return
        if status == 100:
            if self._expect_continue:
                self._conn.send_interim(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        kept = header_rules.downstream_response_headers(
            fields, request_id=self._request_id, via=self._via
        )
        self._conn.send_interim(interim_head(status, reason, kept))


# What the connection caps made of a connection (`ClientConnection.admission`).
_ABORTED = 0  # refused and dropped at once (or not yet seen by connection_opened)
_ADMITTED = 1
_REFUSING = 2  # refused, being answered 503

# Refused connections being answered at once, per worker. Answering costs a connection's
# memory and descriptor for up to a second (`REFUSAL_WAIT`), so beyond this many a refused
# connection is dropped without an answer: a flood past the caps costs next to nothing.
MAX_REFUSING = 256


class GatewayServer(ConnectionRegistry):
    """Makes a `ClientConnection` per accepted socket and tracks the open ones.

    The limits come from the runtime being served when the connection is accepted, so a reload
    applies new limits and timeouts to new connections while established ones keep theirs.

    It enforces the connection caps (HARDENING.md §F): at most `max_connections` admitted
    connections in this worker and, when set, `max_connections_per_ip` from one address. A
    connection beyond a cap gets 503 (`connection_capacity`) and is closed, or is dropped at
    once while MAX_REFUSING others are being refused. Open connections are counted per IP
    whatever the config says, so a reload that sets the per-IP cap sees the connections already
    open; an address has an entry only while it has connections open, so the table holds at
    most `max_connections` entries.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.connections: set[ServedConnection] = set()
        # The port each listener is bound to (set by `gateway.app.start`): redirect_to_https
        # points at the first TLS listener's.
        self.ports: list[int] = []
        self._listeners: tuple[object, list[ListenerSettings]] | None = None
        self._limits: tuple[object, ConnectionLimits] | None = None
        self._loop = asyncio.get_running_loop()
        # Admitted connections, in all and per client IP.
        self.admitted = 0
        self.per_ip: dict[str, int] = {}
        self.refusing = 0
        self.max_refusing = MAX_REFUSING

    def __call__(self) -> ClientConnection:
        return self.http1(0)

    def limits(self) -> ConnectionLimits:
        server = self.dispatcher.runtime.config.server
        cached = self._limits
        if cached is None or cached[0] is not server:
            cached = self._limits = (server, ConnectionLimits(server))
        return cached[1]

    def listener_config(self, index: int) -> ListenerConfig:
        """Listener ``index`` of the config being served (a reload keeps the list's shape)."""
        listeners = self.dispatcher.runtime.config.server.listeners
        return listeners[index] if index < len(listeners) else listeners[0]

    def listener_settings(self, index: int) -> ListenerSettings:
        server = self.dispatcher.runtime.config.server
        cached = self._listeners
        if cached is None or cached[0] is not server:
            cached = self._listeners = (server, self._settings_of(server.listeners))
        settings = cached[1]
        return settings[index] if index < len(settings) else settings[0]

    def _settings_of(self, listeners: tuple[ListenerConfig, ...]) -> list[ListenerSettings]:
        redirect_port: int | None = None
        for index, listener in enumerate(listeners):
            if listener.tls is not None:
                redirect_port = self.ports[index] if index < len(self.ports) else None
                if redirect_port is None:
                    redirect_port = listener.listen.port
                break
        return [
            ListenerSettings(
                "https" if listener.tls is not None else "http",
                redirect_port if listener.redirect_to_https else None,
            )
            for listener in listeners
        ]

    def http1(self, index: int) -> ClientConnection:
        """An HTTP/1.1 connection for listener ``index``."""
        conn = ClientConnection(self, self.dispatcher, self.limits(), self._loop)
        conn.listener = self.listener_settings(index)
        return conn

    def http2(self, index: int) -> Http2Connection:
        """An HTTP/2 connection for listener ``index``."""
        return Http2Connection(
            self,
            self.dispatcher,
            self.limits(),
            self.listener_config(index).http2,
            self.listener_settings(index),
            self._loop,
        )

    def goaway_http2(self) -> None:
        """GOAWAY to every HTTP/2 connection (a reload): their clients reconnect to the new
        config; streams already open finish."""
        for conn in list(self.connections):
            if isinstance(conn, Http2Connection):
                conn.begin_drain()

    def upstream_aborted(self, upstream: ProxyResponse) -> None:
        if upstream.upstream is not None:
            self.dispatcher.metrics.upstream_failed(upstream.upstream, "aborted")

    def http2_goaway(self, code: int) -> None:
        self.dispatcher.metrics.http2_goaway(code)

    def connection_opened(self, conn: ServedConnection) -> None:
        self.connections.add(conn)
        limits = conn.limits
        ip = conn.peer_ip
        from_ip = self.per_ip.get(ip, 0)
        per_ip = limits.max_connections_per_ip
        if self.admitted < limits.max_connections and (per_ip is None or from_ip < per_ip):
            conn.admission = _ADMITTED
            self.admitted += 1
            self.per_ip[ip] = from_ip + 1
            return
        if self.admitted >= limits.max_connections:
            reason = "max_connections"
            message = f"the gateway holds {limits.max_connections} connections, its cap"
        else:
            reason = "max_connections_per_ip"
            message = f"this address holds {per_ip} connections, its cap"
        self.dispatcher.metrics.connection_refused(reason)
        if self.refusing >= self.max_refusing:
            conn.admission = _ABORTED
            conn.abort()
            return
        conn.admission = _REFUSING
        self.refusing += 1
        conn.refuse(ConnectionCapacity(message))

    def connection_closed(self, conn: ServedConnection) -> None:
        self.connections.discard(conn)
        admission = conn.admission
        if admission == _ADMITTED:
            self.admitted -= 1
            ip = conn.peer_ip
            left = self.per_ip[ip] - 1
            if left:
                self.per_ip[ip] = left
            else:
                del self.per_ip[ip]
        elif admission == _REFUSING:
            self.refusing -= 1
        conn.admission = _ABORTED

    def client_timed_out(self, kind: str) -> None:
        self.dispatcher.metrics.client_timed_out(kind)

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now, busy ones after their response, the rest at ``grace``."""
        for conn in list(self.connections):
            conn.begin_drain()
        waiting = [conn.closed_waiter for conn in self.connections]
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=grace)
            if late:
                for conn in list(self.connections):
                    conn.abort()
                await asyncio.wait(late, timeout=1.0)
