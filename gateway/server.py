"""The aiohttp adapter: low-level server protocol, error boundary and response writer.

aiohttp's low-level `web.Server` is used instead of `web.Application` (DESIGN.md §2: cheaper,
and the gateway routes on its own compiled table). This module is the only place that knows
aiohttp's request and response objects and the only place errors become HTTP (DESIGN.md §1).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from time import perf_counter
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from multidict import CIMultiDict

from gateway import headers as header_rules
from gateway.edge import RequestBody, RequestHead, build_request, request_id_from
from gateway.errors import (
    BadRequest,
    GatewayError,
    GatewayTimeout,
    HeadersTooLarge,
    RouteNotFound,
    UpstreamAborted,
    UriTooLong,
)
from gateway.messages import Headers, ProxyRequest, ProxyResponse
from gateway.observability.access_log import AccessLog
from gateway.observability.metrics import UNMATCHED, RequestMetrics
from gateway.runtime import Runtime
from gateway.upstream.response import ResponseBody

_JSON = "application/json"


def error_body(code: str, message: str, request_id: str) -> bytes:
    return json.dumps(
        {"error": code, "message": message, "request_id": request_id}, separators=(",", ":")
    ).encode()


class ErrorResponse(web.Response):
    """The gateway's own error answer: JSON body, HTTP/1.1 status line, no `Server` banner.

    aiohttp echoes the request's version in the status line, which for a rejected
    `GET / HTTP/2.0` would claim HTTP/2.0; RFC 9112 §2.3 has a server answer with the highest
    version it conforms to (1.1), and a parse error may not even have a version.
    """

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self._headers.popall(hdrs.SERVER, None)

    async def _write_headers(self) -> None:
        writer = self._payload_writer
        assert writer is not None
        await writer.write_headers(f"HTTP/1.1 {self._status} {self._reason}", self._headers)

    async def write_eof(self, data: bytes = b"") -> None:
        request = self._req  # write_eof forgets the request
        await super().write_eof(data)
        if self._keep_alive is False and request is not None:
            # Half-close once the answer is out, as nginx's lingering close does: the client sees
            # the end at once, while aiohttp keeps reading and discarding an unread body for a
            # bounded time so that closing does not reset the connection under the response.
            transport = request.transport
            if transport is not None and transport.can_write_eof():
                transport.write_eof()


def error_response(error: GatewayError, request_id: str, *, close: bool = False) -> web.Response:
    fields = {"X-Request-ID": request_id}
    if close or error.close_connection:
        # Said explicitly: aiohttp only adds `Connection: close` for HTTP/1.1 requests.
        fields["Connection"] = "close"
    response = ErrorResponse(
        status=error.status,
        body=error_body(error.code, error.message, request_id),
        content_type=_JSON,
        headers=fields,
    )
    if close or error.close_connection:
        response.force_close()
    return response


def _parse_error(exc: BaseException | None, message: str | None) -> GatewayError:
    """Map aiohttp's parser errors to the status the client should see."""
    text = message or (str(exc) if exc else "malformed request")
    if isinstance(exc, LineTooLong):
        start = exc.args[0] if exc.args else b""
        # The C parser raises the same error for the request target and for a header field and
        # passes the start of what overflowed. An origin-form target starts with "/": that is
        # 414 (RFC 9112 §3); anything else is a header field, 431 (RFC 6585 §5).
        if isinstance(start, bytes | bytearray) and start.startswith(b"/"):
            return UriTooLong(text)
        return HeadersTooLarge(text)
    if isinstance(exc, BadHttpMessage) and "Too many headers" in text:
        return HeadersTooLarge(text)
    return BadRequest(text)


class ForwardedResponse(web.StreamResponse):
    """A StreamResponse that relays the upstream's fields without inventing any.

    aiohttp adds `Content-Type: application/octet-stream` and its own `Server` to responses that
    lack them; a proxy must not change what the origin said (RFC 9110 §7.6 only allows the
    intermediary's own fields such as Via), so those defaults are removed again.

    The head is held back until the first body write or the end of the response, so that a head
    and a body already at hand leave in one send instead of two (`_relay` flushes the head at
    once when the body is not at hand yet, so streaming responses are not delayed).
    """

    _send_headers_immediately = False

    async def _prepare_headers(self) -> None:
        fields = self._headers
        had_type = hdrs.CONTENT_TYPE in fields
        had_server = hdrs.SERVER in fields
        await super()._prepare_headers()
        if not had_type:
            fields.popall(hdrs.CONTENT_TYPE, None)
        if not had_server:
            fields.popall(hdrs.SERVER, None)


class Dispatcher:
    """The request handler: edge checks, routing, the route's chain, the response, logs, metrics."""

    def __init__(self, runtime: Runtime, metrics: RequestMetrics) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.draining = False
        self.inflight = 0

    def swap(self, runtime: Runtime) -> Runtime:
        """Serve new requests from ``runtime``; in-flight ones finish on the old one."""
        old, self.runtime = self.runtime, runtime
        return old

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        runtime = self.runtime
        started = perf_counter()
        protocol = request.protocol
        assert isinstance(protocol, GatewayProtocol)
        protocol.requests_served += 1
        close = self.draining or protocol.requests_served >= protocol.max_requests
        message = request._message
        head = RequestHead(
            method=message.method,
            raw_target=message.path,
            version=(message.version.major, message.version.minor),
            raw_headers=message.raw_headers,
            peer_ip=protocol.peer_ip,
        )
        route_name = UNMATCHED
        proxy_request: ProxyRequest | None = None
        proxy_response: ProxyResponse | None = None
        bytes_out = 0
        self.inflight += 1
        try:
            try:
                proxy_request = build_request(
                    head,
                    runtime.edge,
                    request.content,
                    request.content_length,
                    request.body_exists,
                )
                route = runtime.router.match(
                    proxy_request.host,
                    proxy_request.path,
                    proxy_request.method,
                    proxy_request.headers,
                )
                if route is None:
                    raise RouteNotFound("no route matches this request")
                route_name = route.name
                proxy_request.send_informational = _informational_sender(
                    request, proxy_request, runtime.via_response
                )
                proxy_response = await runtime.handlers[route.name](proxy_request)
            except GatewayError as error:
                if proxy_request is not None:
                    request_id = proxy_request.request_id
                else:
                    request_id = request_id_from(head.raw_headers)
                response: web.StreamResponse = error_response(error, request_id, close=close)
            else:
                # A drain that began while the upstream was answering also closes this
                # connection.
                response, bytes_out = await self._relay(
                    request, proxy_response, close or self.draining
                )
        finally:
            self.inflight -= 1
        duration = perf_counter() - started
        self.metrics.request_done(route_name, head.method, response.status, duration)
        if runtime.access_log is not None:
            self._log(
                runtime.access_log,
                head,
                proxy_request=proxy_request,
                proxy_response=proxy_response,
                route=route_name,
                response=response,
                bytes_out=bytes_out,
                duration=duration,
            )
        return response

    async def _relay(
        self, request: web.BaseRequest, upstream: ProxyResponse, close: bool
    ) -> tuple[web.StreamResponse, int]:
        """Write the upstream's response to the client; return it and the body bytes sent."""
        fields = CIMultiDict(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in upstream.headers
        )
        response = ForwardedResponse(
            status=upstream.status,
            reason=upstream.reason.decode("latin-1") or None,
            headers=fields,
        )
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        elif upstream.body is not None and request.version < (1, 1):
            # RFC 9112 §6.3: without chunked framing (not for 1.0) a body of unknown length ends
            # when the connection does. aiohttp decides that but does not close (3.14), which
            # would leave a keep-alive 1.0 client waiting or read the next answer as body.
            close = True
        if close:
            response.force_close()
        sent = 0
        try:
            writer = await response.prepare(request)
            body = upstream.body
            if body is not None:
                if writer is not None and not (isinstance(body, ResponseBody) and body.ready()):
                    # Nothing to send with the head yet: let the client see the head now.
                    writer.send_headers()
                async for chunk in body:
                    await response.write(chunk)
                    sent += len(chunk)
        except (UpstreamAborted, GatewayError):
            # The status line is out: a second response is impossible, and a clean end would
            # tell the client a truncated body is complete. Abort the connection instead.
            if upstream.upstream is not None:
                self.metrics.upstream_failed(upstream.upstream, "aborted")
            request.protocol.force_close()
        finally:
            if upstream.release is not None:
                await upstream.release()
        return response, sent

    def _log(
        self,
        access_log: AccessLog,
        head: RequestHead,
        *,
        proxy_request: ProxyRequest | None,
        proxy_response: ProxyResponse | None,
        route: str,
        response: web.StreamResponse,
        bytes_out: int,
        duration: float,
    ) -> None:
        if proxy_request is not None:
            request_id = proxy_request.request_id
            client_ip = proxy_request.client_ip
            path = proxy_request.path
            trace_id: str | None = proxy_request.trace_id
            body = proxy_request.body
            bytes_in = body.received if isinstance(body, RequestBody) else 0
        else:
            request_id = response.headers.get("X-Request-ID", "-")
            client_ip = head.peer_ip
            path = head.raw_target.split("?", 1)[0]
            trace_id = None
            bytes_in = 0
        if isinstance(response, ErrorResponse) and response.body is not None:
            bytes_out = len(response.body) if isinstance(response.body, bytes) else 0
        access_log.record(
            request_id=request_id,
            client_ip=client_ip,
            method=head.method,
            path=path,
            route=route,
            upstream=proxy_response.upstream if proxy_response else None,
            status=response.status,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            duration=duration,
            upstream_seconds=proxy_response.upstream_seconds if proxy_response else None,
            trace_id=trace_id,
        )


def _informational_sender(
    request: web.BaseRequest, proxy_request: ProxyRequest, via: bytes
) -> Callable[[int, bytes, Headers], Any]:
    """Relay an upstream interim response to the client (RFC 9110 §15.2).

    Never to an HTTP/1.0 client (§15.2: a server must not send 1xx to one), and 100 only when the
    client itself asked for it with Expect: 100-continue (§10.1.1).
    """

    async def send(status: int, reason: bytes, fields: Headers) -> None:
        if proxy_request.version != (1, 1):
            return
        if status == 100:
            if proxy_request.expect_continue:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        kept = header_rules.downstream_response_headers(
            fields, request_id=proxy_request.request_id.encode(), via=via
        )
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        lines.extend(name + b": " + value + b"\r\n" for name, value in kept)
        lines.append(b"\r\n")
        await request.writer.write(b"".join(lines))

    return send


class GatewayProtocol(RequestHandler):
    """aiohttp's connection handler plus the edge timers aiohttp lacks (HARDENING.md §F).

    * A header-read deadline from accept, and from the first byte of every later request, until
      the head is complete: slowloris gets 408 and a closed connection.
    * A cap on requests per connection.
    * JSON error bodies for requests the parser rejects.
    """

    def __init__(
        self, manager: web.Server, *, header_read: float, max_requests: int, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self.header_read = header_read
        self.max_requests = max_requests
        self.requests_served = 0
        self.peer_ip = ""
        # The header-read deadline of the head being received, None when no head is pending.
        # One timer per connection checks it lazily (re-armed only when a later head moved the
        # deadline): keep-alive requests then cost no timer each, where call_later per request
        # showed at 1.3% of a worker's profile under wrk.
        self._head_deadline: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if isinstance(peer, tuple) else ""
        super().connection_made(transport)
        self._start_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and self._awaiting_head and self._head_deadline is None:
            self._start_head_deadline()
        pending = len(self._messages)
        super().data_received(data)
        if len(self._messages) > pending:
            # A complete head arrived: its deadline is met.
            self._awaiting_head = False
            self._head_deadline = None
            self._fail_body_on_parse_error()

    def _fail_body_on_parse_error(self) -> None:
        """Hand a framing error in a request body to the handler that is reading that body.

        aiohttp's C parser queues a parse error in the middle of a body as a new message and
        leaves the body stream waiting forever (3.14); the request being forwarded would hang
        until the client gave up. Its reader gets the error instead, which answers 400.
        """
        error = self._messages[-1][0]
        current = self._current_request
        if isinstance(error, _ErrInfo) and current is not None:
            body = current.content
            if not body.is_eof() and body.exception() is None:
                exc = error.exc
                body.set_exception(
                    exc if isinstance(exc, HttpProcessingError) else BadHttpMessage(error.message)
                )

    async def _handle_request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._handle_request(*args, **kwargs)
        finally:
            # The next bytes on this connection start a new head and its deadline; a head that
            # is already parsed (pipelining) has met its deadline.
            self._awaiting_head = not self._messages

    def _start_head_deadline(self) -> None:
        deadline = self._head_deadline = self._loop.time() + self.header_read
        if self._head_timer is None:
            self._head_timer = self._loop.call_at(deadline, self._check_head_deadline)

    def _check_head_deadline(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if deadline is None:
            return  # the head arrived; the next one's first byte starts a new deadline
        if self._loop.time() < deadline:
            # A later head moved the deadline since this timer was set.
            self._head_timer = self._loop.call_at(deadline, self._check_head_deadline)
            return
        if self._request_in_progress or self._messages or self.transport is None:
            return
        request_id = header_rules.new_request_id()
        body = error_body("request_timeout", "request header not received in time", request_id)
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nX-Request-ID: %s\r\nConnection: close\r\n\r\n%s"
            % (len(body), request_id.encode(), body)
        )
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error response")
        if status == 500:
            self.log_exception("unhandled error", exc_info=exc)
            error: GatewayError = GatewayError("internal error")
        elif status == 504:
            error = GatewayTimeout("handler timed out")
        else:
            error = _parse_error(exc, message)
        return error_response(error, header_rules.new_request_id(), close=True)


class GatewayServer(web.Server):
    """Creates a `GatewayProtocol` per accepted connection with the server's edge limits.

    The limits come from the runtime being served when the connection is accepted, so a reload
    applies new limits and timeouts to new connections while established ones keep theirs.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        # HARDENING.md: never decompress what passes through.
        super().__init__(dispatcher, auto_decompress=False, access_log=None)
        self.dispatcher = dispatcher

    def __call__(self) -> RequestHandler:
        config = self.dispatcher.runtime.config.server
        limits = config.limits
        return GatewayProtocol(
            self,
            loop=self._loop,
            header_read=config.timeouts.header_read,
            max_requests=limits.max_requests_per_connection,
            keepalive_timeout=config.timeouts.keepalive,
            max_line_size=limits.max_line,
            max_field_size=limits.max_line,
            max_headers=limits.max_headers,
            **self._kwargs,
        )
