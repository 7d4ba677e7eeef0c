"""HTTP/2 client connections (RFC 9113): each stream becomes the gateway's own request.

A stream runs the same handler as an HTTP/1.1 request (`gateway.server.Dispatcher`): edge
checks, routing, the route's chain, errors, metrics and the access log; only reading the head
and writing the response differ, and live here (`H2Stream`). The framing is
`gateway.downstream.h2codec` (python-hyper/h2 behind one module). Upstreams stay HTTP/1.1.

Limits and defences (HARDENING.md; each configurable in a listener's ``http2`` block):

* SETTINGS_MAX_CONCURRENT_STREAMS; and the handlers still running for streams the client reset
  count too: a stream beyond them is refused (REFUSED_STREAM), so a client cannot make the
  gateway work on more requests at once by resetting them (CVE-2023-44487, rapid reset); a
  stream reset before its handler began is never forwarded;
* a read is handed to h2 sixteen frames at a time, one pass of the loop each: a flood of small
  frames never holds the loop, and parsing stops once the connection is ended;
* resets the client sends and the ones it provokes (refused streams, streams reset for not
  taking their response) spend one token bucket (``reset_budget``); empty, the connection ends
  with GOAWAY ENHANCE_YOUR_CALM;
* each stream's receive window (``initial_window_size``) reopens only as the route's chain
  consumes the body, so a request body buffers at most one window; the connection's window is
  the sum of the streams', so a slow stream never stalls its siblings;
* a header block must complete within ``server.timeouts.header_read``, the first request
  arrive within it from accept, and a connection with no stream open closes after
  ``server.timeouts.keepalive``;
* ``max_requests_per_connection`` streams, then a graceful GOAWAY naming the last one; the
  streams up to it complete;
* a client that does not read (PING or SETTINGS floods answered into a full send buffer) is
  not read either: reading pauses while the send buffer is above its high-water mark, and
  ``server.timeouts.send`` without progress aborts the connection, as for HTTP/1.1;
* a response waiting for flow-control window (1-byte windows) holds one upstream chunk at a
  time; no window for ``server.timeouts.send`` resets the stream.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, cast

from gateway import headers as header_rules
from gateway.config.model import Http2Config
from gateway.downstream import h2codec
from gateway.downstream.at_hand import body_at_hand
from gateway.downstream.body import RequestBody
from gateway.downstream.connection import (
    ClientGone,
    ConnectionLimits,
    ConnectionRegistry,
    ListenerSettings,
    PendingRequest,
)
from gateway.downstream.writer import DATE, error_body
from gateway.edge import FieldNotes, RequestHead
from gateway.errors import BadRequest, ClientClosedRequest, GatewayError, UpstreamAborted
from gateway.messages import Headers, ProxyRequest, ProxyResponse
from gateway.observability.logging import get_logger

log = get_logger("gateway.http2")

# RFC 9113 §8.2.2: connection-specific fields never appear in HTTP/2 (the upstream's are
# already gone as hop-by-hop; Content-Length is written from the framing).
_DROP_IN_RESPONSE: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_REQUEST_PSEUDO: Final = frozenset({b":method", b":path", b":authority", b":scheme"})
# Streams answered per connection write: at most this many bytes leave per DATA frame (the
# client's SETTINGS_MAX_FRAME_SIZE may be smaller).
_DATA_CHUNK: Final = 16 * 1024
# Frames of a read handed to h2 in one pass of the loop (`Http2Connection.data_received`); as
# many as HTTP/1.1 queues pipelined heads (MAX_PIPELINED).
_FEED_FRAMES: Final = 16
# Stream workers a connection keeps waiting for its next stream (`Http2Connection._work`).
_IDLE_WORKERS: Final = 16

StreamHandler = Callable[["H2Stream", PendingRequest], Coroutine[Any, Any, None]]


class _StreamBodyControl:
    """What a stream's RequestBody tells its connection: bytes consumed reopen the window."""

    __slots__ = ("_conn", "_stream_id")

    def __init__(self, conn: Http2Connection, stream_id: int) -> None:
        self._conn = conn
        self._stream_id = stream_id

    def body_backlog(self, paused: bool) -> None:
        # The stream's window bounds its buffer: nothing to pause.
        return None

    def body_consumed(self, size: int) -> None:
        self._conn.consumed(self._stream_id, size)


class H2Stream:
    """One request stream: what the dispatcher answers, as a ClientConnection for HTTP/1.1."""

    __slots__ = (
        "_window_waiter",
        "closed",
        "conn",
        "reset",
        "response_started",
        "stream_id",
        "unacked",
    )

    def __init__(self, conn: Http2Connection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.response_started = False
        # The stream ended from the gateway's side (response complete or reset).
        self.closed = False
        # The client reset it, or the connection is gone: writes raise ClientGone.
        self.reset = False
        # Body bytes received and not yet consumed by the chain (flow-control window held).
        self.unacked = 0
        self._window_waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ for the dispatcher

    @property
    def listener(self) -> ListenerSettings:
        return self.conn.listener

    def abort(self) -> None:
        """The response failed after its head: reset the stream (a second response is
        impossible, and a clean end would say a truncated body is complete)."""
        if not self.closed:
            self.closed = True
            self.conn.reset_stream(self.stream_id, h2codec.INTERNAL_ERROR)

    def send_error(self, error: GatewayError, request_id: str, head_only: bool) -> int:
        """Answer with the gateway's JSON error; the body bytes sent."""
        if self.response_started:
            self.abort()
            return 0
        body = error_body(error.code, error.message, request_id)
        fields: Headers = [
            (b":status", b"%d" % error.status),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"x-request-id", request_id.encode("ascii")),
            _date(),
        ]
        for name, value in error.fields:
            fields.append((name.lower(), value))
        try:
            self._send_head(fields, end=head_only)
            if not head_only:
                self.conn.send_data(self.stream_id, body, end=True)
        except ClientGone:
            return 0
        self._finish()
        return 0 if head_only else len(body)

    def send_interim(self, status: int, fields: Headers) -> None:
        """An interim (1xx) response (RFC 9113 §8.1: a HEADERS frame without END_STREAM)."""
        if self.reset or self.closed or self.response_started:
            return
        head: Headers = [(b":status", b"%d" % status)]
        head.extend((name.lower(), value) for name, value in fields)
        self.conn.send_headers(self.stream_id, head, end=False)

    async def relay(self, upstream: ProxyResponse, head_only: bool) -> int:
        """Send the upstream's response on this stream; the body bytes sent."""
        body = upstream.body
        try:
            first, more, length = await body_at_hand(body, upstream.content_length)
        except (UpstreamAborted, GatewayError):
            self.conn.upstream_aborted(upstream)
            self.abort()
            if upstream.release is not None:
                await upstream.release()
            return 0
        fields: Headers = [(b":status", b"%d" % upstream.status)]
        append = fields.append
        has_date = False
        for name, value in upstream.headers:
            lname = name.lower()
            if lname in _DROP_IN_RESPONSE:
                continue
            if lname == b"date":
                has_date = True
            append((lname, value))
        if not has_date:
            append(_date())
        if length is not None:
            append((b"content-length", b"%d" % length))
        sent = 0
        # Not a `finally` that awaits: see Dispatcher._relay (mypyc).
        try:
            if body is None or head_only:
                self._send_head(fields, end=True)
            else:
                self._send_head(fields, end=not more and not first)
                if first:
                    await self._send_body(first, end=not more)
                    sent = len(first)
                if more:
                    async for part in body:
                        await self._send_body(part, end=False)
                        sent += len(part)
                    self._end()
            self._finish()
        except (UpstreamAborted, GatewayError):
            self.conn.upstream_aborted(upstream)
            self.abort()
        except BaseException:
            if upstream.release is not None:
                await upstream.release()
            raise
        if upstream.release is not None:
            await upstream.release()
        return sent

    # ---------------------------------------------------------------------------- writing

    def _send_head(self, fields: Headers, end: bool) -> None:
        if self.reset or self.closed:
            raise ClientGone()
        self.response_started = True
        self.conn.send_headers(self.stream_id, fields, end=end)

    async def _send_body(self, data: bytes, end: bool) -> None:
        conn = self.conn
        view = memoryview(data)
        offset = 0
        size = len(data)
        while offset < size:
            if self.reset or self.closed:
                raise ClientGone()
            window = conn.window(self.stream_id)
            if window < 0:
                raise ClientGone()
            if window == 0:
                await self._wait_for_window()
                continue
            take = min(window, size - offset, conn.max_send_frame)
            last = end and offset + take == size
            conn.send_data(self.stream_id, view[offset : offset + take], end=last)
            offset += take
            if conn.write_paused:
                await conn.drain()
        if end and size == 0:
            self._end()

    def _end(self) -> None:
        if self.reset or self.closed:
            raise ClientGone()
        self.conn.end_stream(self.stream_id)

    async def _wait_for_window(self) -> None:
        """Wait for a WINDOW_UPDATE; a client that grants none for ``send`` seconds loses the
        stream (and the reset counts against its budget)."""
        waiter = self._window_waiter = self.conn.loop.create_future()
        try:
            await asyncio.wait_for(waiter, self.conn.limits.send)
        except TimeoutError:
            self.conn.client_timed_out("send")
            self.conn.provoked_reset(self.stream_id, h2codec.CANCEL)
            raise ClientGone() from None
        finally:
            self._window_waiter = None

    def window_opened(self) -> None:
        waiter = self._window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def gone(self) -> None:
        """The client reset the stream or the connection closed."""
        self.reset = True
        waiter = self._window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ClientGone())

    def _finish(self) -> None:
        self.closed = True


def _date() -> tuple[bytes, bytes]:
    line = DATE.line()  # b"Date: ...\r\n"
    return (b"date", line[6:-2])


class H2InterimRelay:
    """Relays an upstream interim response on a stream (RFC 9110 §15.2; 100 only when the
    client asked for it with Expect: 100-continue)."""

    __slots__ = ("_expect_continue", "_request_id", "_stream", "_via")

    def __init__(self, stream: H2Stream, request: ProxyRequest, via: bytes) -> None:
        self._stream = stream
        self._expect_continue = request.expect_continue
        self._request_id = request.request_id.encode()
        self._via = via

    async def __call__(self, status: int, reason: bytes, fields: Headers) -> None:
        if status == 100:
            if self._expect_continue:
                self._stream.send_interim(100, [])
            return
        kept = header_rules.downstream_response_headers(
            fields, request_id=self._request_id, via=self._via
        )
        self._stream.send_interim(
            status, [(k, v) for k, v in kept if k.lower() not in _DROP_IN_RESPONSE]
        )


class Http2Connection(asyncio.Protocol):
    """An accepted client connection speaking HTTP/2 (after ALPN h2 or the h2c preface)."""

    def __init__(  # noqa: PLR0917 (as ClientConnection's, plus the listener's settings)
        self,
        registry: ConnectionRegistry,
        handler: StreamHandler,
        limits: ConnectionLimits,
        settings: Http2Config,
        listener: ListenerSettings,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._registry = registry
        self._handler = handler
        self.limits = limits
        self.settings = settings
        self.listener = listener
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.admission = 0
        self.requests_served = 0
        self.closed_waiter: asyncio.Future[None] = loop.create_future()
        self._codec = h2codec.H2Codec(settings)
        self._streams: dict[int, H2Stream] = {}
        # Request bodies still arriving, by stream.
        self._bodies: dict[int, RequestBody] = {}
        # Handlers still running, including those of streams the client reset.
        self._running = 0
        # The tasks running stream handlers (referenced here: the loop keeps only weak
        # references to tasks), and the idle ones' waiters for their next stream.
        self._workers: set[asyncio.Task[None]] = set()
        self._idle_workers: list[asyncio.Future[tuple[H2Stream, PendingRequest] | None]] = []
        self._closed = False
        self._goaway_sent = False
        self._draining = False
        self._refusal: GatewayError | None = None
        self._flush_scheduled = False
        self._write_paused = False
        self._read_paused = False
        # Read and not yet handed to h2 (`data_received`).
        self._unparsed: bytes | memoryview = b""
        self._drain_waiters: list[asyncio.Future[None]] = []
        # Reset budget: tokens and when they were last counted.
        self._reset_tokens = float(settings.reset_budget.burst)
        self._reset_at = time.monotonic()
        # Deadlines (loop time) served by one timer, as in ClientConnection.
        self._timer: asyncio.TimerHandle | None = None
        self._first_deadline: float | None = None
        self._block_deadline: float | None = None
        self._idle_deadline: float | None = None
        self._send_deadline: float | None = None
        self._send_backlog = 0

    # --------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self.peer_ip:
            peer = transport.get_extra_info("peername")
            self.peer_ip = str(peer[0]) if isinstance(peer, tuple) else ""
        self._registry.connection_opened(self)
        if self._closed:
            return
        # The connection's window is the streams' together: one slow stream's unread body
        # never holds back the others (RFC 9113 §5.2.2).
        settings = self.settings
        self._codec.start(settings.max_concurrent_streams * settings.initial_window_size)
        self._first_deadline = self.loop.time() + self.limits.header_read
        self._arm(self._first_deadline)
        self._flush()

    def refuse(self, error: GatewayError) -> None:
        """A connection cap refused this connection: GOAWAY at once (HTTP/2 has no way to
        answer a request that was not sent), then close."""
        self._refusal = error
        self._codec.start(65535)
        self._codec.goaway(h2codec.REFUSED_STREAM, 0)
        self._goaway_sent = True
        self._flush()
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
        gone = ClientClosedRequest("client closed the connection before sending the whole body")
        for stream in self._streams.values():
            stream.gone()
        self._streams_failed(gone)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ClientGone())
        self._drain_waiters.clear()
        idle, self._idle_workers = self._idle_workers, []
        for worker in idle:
            if not worker.done():
                worker.set_result(None)
        self._registry.connection_closed(self)
        if not self.closed_waiter.done():
            self.closed_waiter.set_result(None)

    def _streams_failed(self, error: GatewayError) -> None:
        for stream_id in list(self._bodies):
            body = self._bodies.pop(stream_id)
            body.fail(error)

    def data_received(self, data: bytes) -> None:
        # h2 parses a whole read before it returns the first event, and a read holds thousands
        # of small frames: 5000 rapid resets (CVE-2023-44487) in one 256 KiB read kept the loop
        # 0.6 s, most of it past the point where the reset budget had ended the connection; 8
        # KiB of HEADERS, 630 new streams, 60 ms (h2 counts its open streams anew for each).
        # A read is handed to h2 a few frames at a time, one pass of the loop each (reading
        # paused, the rest held), so other connections are served between them and parsing
        # stops with the connection.
        if self._unparsed:
            # Reading is paused: at most what was already read.
            self._unparsed = bytes(self._unparsed) + data
            return
        self._feed(data)

    def _feed(self, data: bytes | memoryview) -> None:
        end = self._codec.frames_end(data, _FEED_FRAMES)
        if end < len(data):
            view = memoryview(data)
            self._unparsed = view[end:]
            data = view[:end]
            self._pause_reading()
            self.loop.call_soon(self._feed_unparsed)
        self._received(bytes(data))

    def _feed_unparsed(self) -> None:
        data, self._unparsed = self._unparsed, b""
        if self._ending:
            return
        self._feed(data)
        if not self._unparsed and not self._write_paused:
            self._resume_reading()

    def _pause_reading(self) -> None:
        transport = self.transport
        if transport is not None and not self._read_paused:
            self._read_paused = True
            transport.pause_reading()

    def _resume_reading(self) -> None:
        transport = self.transport
        if transport is not None and self._read_paused and not self._ending:
            self._read_paused = False
            transport.resume_reading()

    @property
    def _ending(self) -> bool:
        """Closed, or closing (after a connection error): nothing more is read."""
        transport = self.transport
        return self._closed or transport is None or transport.is_closing()

    def _received(self, data: bytes) -> None:
        if self._ending:
            return
        try:
            events = self._codec.receive(data)
        except h2codec.H2ConnectionError as error:
            self._goaway_sent = True  # queued by the codec: one GOAWAY, not two
            self._connection_error(error.code, str(error))
            return
        for event in events:
            if self._ending:
                # A connection error (the reset budget) ended it: the rest of the events,
                # streams opened after the GOAWAY among them, are never acted on.
                return
            kind = type(event)
            if kind is h2codec.BodyData:
                self._body_data(cast(h2codec.BodyData, event))
            elif kind is h2codec.RequestHeaders:
                self._request(cast(h2codec.RequestHeaders, event))
            elif kind is h2codec.StreamEnd:
                body = self._bodies.pop(event.stream_id, None)
                if body is not None:
                    body.end()
            elif kind is h2codec.WindowOpened:
                self._window_opened(event.stream_id)
            elif kind is h2codec.Reset:
                self._client_reset(event.stream_id)
            elif kind is h2codec.GoAway:
                # The client is leaving: no new streams; the open ones are still answered
                # (RFC 9113 §6.8), then the connection closes.
                self._draining = True
                self._goaway_sent = True
        if self._codec.in_header_block:
            if self._block_deadline is None:
                self._block_deadline = deadline = self.loop.time() + self.limits.header_read
                self._arm(deadline)
        else:
            self._block_deadline = None
        self._flush()
        if self._draining and not self._streams and self._running == 0:
            self.close()

    def eof_received(self) -> bool | None:
        return False

    def pause_writing(self) -> None:
        # The client is not reading: stop reading it too, so that what it sends (PINGs,
        # SETTINGS) cannot queue answers without bound; and start the send deadline.
        self._write_paused = True
        self._pause_reading()
        transport = self.transport
        self._send_deadline = deadline = self.loop.time() + self.limits.send
        self._send_backlog = transport.get_write_buffer_size() if transport is not None else 0
        self._arm(deadline)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._send_deadline = None
        if not self._unparsed:
            self._resume_reading()
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------------ streams

    def _request(self, event: h2codec.RequestHeaders) -> None:
        stream_id = event.stream_id
        if self._goaway_sent:
            # Sent before the client saw our GOAWAY: it retries it elsewhere (§6.8).
            self._codec.reset(stream_id, h2codec.REFUSED_STREAM)
            return
        if self._running >= self.settings.max_concurrent_streams:
            # Beyond the concurrency cap (reset streams whose handlers still run count): the
            # client must retry later, and the refusal spends its reset budget.
            self.provoked_reset(stream_id, h2codec.REFUSED_STREAM)
            return
        self.requests_served += 1
        if self.requests_served >= self.settings.max_requests_per_connection:
            # This stream is the last one served (RFC 9113 §6.8), whatever h2 has read past it.
            self._goaway(h2codec.NO_ERROR, stream_id)
        self._idle_deadline = None
        self._first_deadline = None
        stream = H2Stream(self, stream_id)
        self._streams[stream_id] = stream
        try:
            pending = self._pending(stream, event)
        except GatewayError as error:
            pending = PendingRequest(
                _placeholder_head(self.peer_ip),
                keep_alive=True,
                content_length=None,
                body=None,
                error=error,
            )
        self._running += 1
        idle = self._idle_workers
        while idle:
            waiter = idle.pop()
            if not waiter.done():  # not cancelled with its task
                waiter.set_result((stream, pending))
                return
        worker = self.loop.create_task(self._work(stream, pending))
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    def _pending(self, stream: H2Stream, event: h2codec.RequestHeaders) -> PendingRequest:
        """The request head of a stream as the edge expects it (RFC 9113 §8.3: the
        pseudo-header fields become the method, target and Host)."""
        method = b""
        path = b""
        authority: bytes | None = None
        fields: Headers = []
        notes = FieldNotes()
        cookies: list[bytes] = []
        host_seen: bytes | None = None
        for name, value in event.headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            if name == b"cookie":
                # RFC 9113 §8.2.3: split cookie fields are joined for HTTP/1.1.
                cookies.append(value)
                continue
            if name == b"host":
                host_seen = value
            fields.append((name, value))
            notes.note(name, value)
        if cookies:
            joined = b"; ".join(cookies)
            fields.append((b"cookie", joined))
        if method == b"CONNECT":
            raise BadRequest("CONNECT is not supported: the gateway is not a forward proxy")
        if authority is not None and host_seen is None:
            # RFC 9113 §8.3.1: :authority is the Host an HTTP/1.1 upstream needs (with both,
            # the codec checked they are equal).
            fields.insert(0, (b"host", authority))
            notes.note(b"host", authority)
        head = RequestHead(
            method.decode("latin-1"),
            path,
            version=(2, 0),
            raw_headers=fields,
            peer_ip=self.peer_ip,
            notes=notes,
        )
        body: RequestBody | None = None
        if not event.ended:
            control = _StreamBodyControl(self, stream.stream_id)
            body = RequestBody(control, self.loop, self.limits.max_body)
            body.consumer = control
            self._bodies[stream.stream_id] = body
        return PendingRequest(
            head, keep_alive=True, content_length=event.content_length, body=body, upgrade=False
        )

    async def _work(self, stream: H2Stream, pending: PendingRequest) -> None:
        """Serve ``stream``, then the connection's next streams as they come: a task per
        stream cost a twentieth of the worker's CPU per request (creating it, registering it
        in asyncio's task set, freeing it), which one long-lived task per stream in flight
        saves. At most _IDLE_WORKERS wait; all end with the connection."""
        while True:
            await self._serve(stream, pending)
            if self._closed or len(self._idle_workers) >= _IDLE_WORKERS:
                return
            waiter: asyncio.Future[tuple[H2Stream, PendingRequest] | None]
            waiter = self.loop.create_future()
            self._idle_workers.append(waiter)
            job = await waiter
            if job is None:
                return
            stream, pending = job

    async def _serve(self, stream: H2Stream, pending: PendingRequest) -> None:
        try:
            # Reset before its handler began (HEADERS and RST_STREAM in one read, the rapid
            # reset of CVE-2023-44487): nobody waits for an answer, nothing is forwarded.
            if not stream.reset:
                await self._handler(stream, pending)
        except ClientGone:
            pass
        except Exception as exc:
            self.loop.call_exception_handler(
                {"message": "request handler failed", "exception": exc, "protocol": self}
            )
        finally:
            self._stream_done(stream, pending)

    def _stream_done(self, stream: H2Stream, pending: PendingRequest) -> None:
        self._running -= 1
        stream_id = stream.stream_id
        self._streams.pop(stream_id, None)
        body = self._bodies.pop(stream_id, None)
        if not stream.closed and not stream.reset and not self._closed:
            # The handler ended without a complete response (a bug, or the client gone).
            self.reset_stream(stream_id, h2codec.INTERNAL_ERROR)
        elif body is not None and not body.complete and not self._closed:
            # Answered before the body was read (413, an error): RFC 9113 §8.1 has the
            # server reset the stream with NO_ERROR so the client stops sending it.
            body.discard()
            self._codec.reset(stream_id, h2codec.NO_ERROR)
        if stream.unacked and not self._closed:
            # The connection's window: what this stream received and nobody will read.
            self._codec.ack(stream_id, stream.unacked)
            stream.unacked = 0
        self._schedule_flush()
        if self._closed:
            return
        if not self._streams and self._running == 0:
            if self._draining or self._goaway_sent:
                self.close()
            else:
                self._idle_deadline = deadline = self.loop.time() + self.limits.keepalive
                self._arm(deadline)

    def _body_data(self, event: h2codec.BodyData) -> None:
        stream_id = event.stream_id
        data = event.data
        padding = event.flow_length - len(data)
        body = self._bodies.get(stream_id)
        stream = self._streams.get(stream_id)
        if body is None or stream is None or body.failed:
            # Nobody will read it: give the window back at once.
            self._codec.ack(stream_id, event.flow_length)
            return
        if padding:
            self._codec.ack(stream_id, padding)
        if data:
            stream.unacked += len(data)
            body.feed(data)

    def consumed(self, stream_id: int, size: int) -> None:
        """The chain took ``size`` body bytes of ``stream_id``: reopen that much window."""
        stream = self._streams.get(stream_id)
        if stream is None or self._closed:
            return
        size = min(size, stream.unacked)
        stream.unacked -= size
        self._codec.ack(stream_id, size)
        self._schedule_flush()

    def _window_opened(self, stream_id: int) -> None:
        if stream_id == 0:
            for stream in self._streams.values():
                stream.window_opened()
        else:
            one = self._streams.get(stream_id)
            if one is not None:
                one.window_opened()

    def _client_reset(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.gone()
        body = self._bodies.pop(stream_id, None)
        if body is not None:
            body.fail(ClientClosedRequest("client reset the stream"))
        self._spend_reset()

    def provoked_reset(self, stream_id: int, code: int) -> None:
        """Reset a stream because of the client (refused, stalled): it spends the budget."""
        self._codec.reset(stream_id, code)
        self._schedule_flush()
        self._spend_reset()

    def _spend_reset(self) -> None:
        budget = self.settings.reset_budget
        now = time.monotonic()
        tokens = min(
            float(budget.burst), self._reset_tokens + (now - self._reset_at) * budget.per_second
        )
        self._reset_at = now
        if tokens < 1.0:
            self._reset_tokens = tokens
            self._connection_error(h2codec.ENHANCE_YOUR_CALM, "stream reset budget spent")
            return
        self._reset_tokens = tokens - 1.0

    # ------------------------------------------------------------------------- writing

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    @property
    def max_send_frame(self) -> int:
        return min(self._codec.max_send_frame, _DATA_CHUNK)

    async def drain(self) -> None:
        if self._closed:
            raise ClientGone()
        if not self._write_paused:
            return
        waiter = self.loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def window(self, stream_id: int) -> int:
        return self._codec.window(stream_id)

    def send_headers(self, stream_id: int, fields: Headers, *, end: bool) -> None:
        if self._closed:
            raise ClientGone()
        self._codec.send_headers(stream_id, fields, end)
        self._schedule_flush()

    def send_data(self, stream_id: int, data: bytes | memoryview, *, end: bool) -> None:
        if self._closed:
            raise ClientGone()
        self._codec.send_data(stream_id, data, end)
        self._schedule_flush()

    def end_stream(self, stream_id: int) -> None:
        if self._closed:
            raise ClientGone()
        self._codec.end_stream(stream_id)
        self._schedule_flush()

    def reset_stream(self, stream_id: int, code: int) -> None:
        if self._closed:
            return
        self._codec.reset(stream_id, code)
        self._schedule_flush()

    def upstream_aborted(self, upstream: ProxyResponse) -> None:
        self._registry.upstream_aborted(upstream)

    def client_timed_out(self, kind: str) -> None:
        self._registry.client_timed_out(kind)

    def _schedule_flush(self) -> None:
        # Frames of several streams queued in one pass of the loop leave in one write.
        if not self._flush_scheduled and not self._closed:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed or self.transport is None:
            return
        data = self._codec.outgoing()
        if data:
            self.transport.write(data)

    # ------------------------------------------------------------------------- closing

    def _goaway(self, code: int, last_stream_id: int | None = None) -> None:
        if not self._goaway_sent:
            self._goaway_sent = True
            self._codec.goaway(code, last_stream_id)
            self._schedule_flush()

    def _connection_error(self, code: int, message: str) -> None:
        """The client broke a rule: GOAWAY (queued by the codec or here), then close."""
        log.debug("http2_connection_error", code=code, error=message, peer=self.peer_ip)
        self._registry.http2_goaway(code)
        if not self._goaway_sent:
            self._goaway_sent = True
            self._codec.goaway(code)
        self._flush()
        for stream in self._streams.values():
            stream.gone()
        self.close()

    def close(self) -> None:
        transport = self.transport
        if not self._closed and transport is not None:
            self._flush()
            transport.close()

    def abort(self) -> None:
        transport = self.transport
        if not self._closed and transport is not None:
            transport.abort()

    def begin_drain(self) -> None:
        """Shutting down or reloading: GOAWAY now; streams already open finish (within the
        drain time, `GatewayServer.shutdown`)."""
        self._draining = True
        self._goaway(h2codec.NO_ERROR)
        self._flush()
        if not self._streams and self._running == 0:
            self.close()

    @property
    def busy(self) -> bool:
        return bool(self._streams) or self._running > 0

    # -------------------------------------------------------------------------- timers

    def _arm(self, deadline: float) -> None:
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self.loop.time()
        send = self._send_deadline
        if send is not None and send <= now and self.transport is not None:
            size = self.transport.get_write_buffer_size()
            if size >= self._send_backlog:
                self._registry.client_timed_out("send")
                self.abort()
                return
            self._send_backlog = size
            self._send_deadline = now + self.limits.send
        # No request in time from accept: a quiet close (NO_ERROR). A header block begun and
        # not finished in time: PROTOCOL_ERROR. (Compared by value: compiled by mypyc, the
        # deadlines are unboxed floats, and an `is` between them is never true.)
        first = self._first_deadline
        block = self._block_deadline
        late_first = first is not None and first <= now
        if late_first or (block is not None and block <= now):
            self._registry.client_timed_out("header_read")
            self._connection_error(
                h2codec.NO_ERROR if late_first else h2codec.PROTOCOL_ERROR,
                "request header not received in time",
            )
            return
        idle = self._idle_deadline
        if idle is not None and idle <= now and not self._streams and self._running == 0:
            self._goaway(h2codec.NO_ERROR)
            self.close()
            return
        wake = math.inf
        for deadline in (
            self._send_deadline,
            self._first_deadline,
            self._block_deadline,
            self._idle_deadline,
        ):
            if deadline is not None:
                wake = min(wake, deadline)
        if wake != math.inf:
            self._timer = self.loop.call_at(wake, self._on_timer)


def _placeholder_head(peer_ip: str) -> RequestHead:
    """The head logged for a stream whose header block the edge refused."""
    return RequestHead(
        "GET", b"/", version=(2, 0), raw_headers=[], peer_ip=peer_ip, notes=FieldNotes()
    )
