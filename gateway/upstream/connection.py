"""One upstream HTTP/1.1 connection: an ``asyncio.Protocol`` driving llhttp (httptools).

A connection carries one exchange at a time (no pipelining, RFC 9112 §9.3.2). Its life:

    READY (checked out) -> SENDING (head written, waiting for the final head)
        -> BODY (final head received, reading the body) -> DONE (message complete)
        -> IDLE (back in the pool) -> READY ... or closed at any point.

Hot-path rules: header fields stay bytes, framing is decided from a few length-gated name
checks, timers are one per connection (a watchdog re-armed lazily, not one per request), the
response body goes through a bounded deque with pause/resume reading, and the request body
is pulled only as fast as the socket drains.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Final, Protocol, cast

import httptools
from mypy_extensions import mypyc_attr

from gateway.config.model import UpstreamTimeouts
from gateway.errors import BadGateway, GatewayError, GatewayTimeout, UpstreamAborted
from gateway.messages import BodyStream, Headers, InformationalCallback
from gateway.upstream.framing import LENGTH, NO_BODY, UNTIL_CLOSE, response_framing
from gateway.upstream.response import ResponseBody, UpstreamResponse

# Response body flow control: stop reading from the socket above HIGH_WATER buffered bytes
# and resume at LOW_WATER. The buffer can overshoot HIGH_WATER by at most one socket read.
HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024
# An upstream response head (interim responses included) larger than this is refused: llhttp
# itself has no limit and httptools accumulates a field in memory until it ends.
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADER_FIELDS: Final = 256
# Bytes received in the body phase that are not body (chunk framing, extensions, trailers).
# Bounds trailer fields, which httptools would otherwise accumulate without limit.
MAX_NON_BODY_BYTES: Final = 64 * 1024

# Phases (ints: compared on every callback).
_IDLE: Final = 0  # parked in the pool
_READY: Final = 1  # checked out, no request written yet
_SENDING: Final = 2  # request head written; waiting for the final response head
_BODY: Final = 3  # final head received; response body being read
_DONE: Final = 4  # final response complete; waiting to be released

# Expect: 100-continue state (RFC 9110 §10.1.1).
_EXPECT_NONE: Final = 0
_EXPECT_WAITING: Final = 1  # body held back until 100, a final response, or the timer
_EXPECT_TIMED_OUT: Final = 2  # timer fired: relay a synthetic 100 and send the body

_CHUNK_END: Final = b"\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"


class ConnectionOwner(Protocol):
    """What a connection needs from its pool."""

    def connection_reusable(self, conn: UpstreamConnection) -> None:
        """The exchange ended cleanly and the connection may carry another."""

    def connection_gone(self, conn: UpstreamConnection) -> None:
        """The connection closed (or is closing): free its slot. Called exactly once."""

    def exchange_ended(self, conn: UpstreamConnection) -> None:
        """The exchange begun by `exchange` is over, however it ended. Called exactly once
        per exchange, before `connection_reusable` or `connection_gone`."""


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


# Interpreted subclasses allowed: the tests record connections and their flow-control events
# with one (tests/upstream_servers.py), also against the mypyc-compiled build.
@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamConnection(asyncio.Protocol):
    """A pooled keep-alive connection to one target."""

    __slots__ = (
        "_body",
        "_body_task",
        "_body_waiter",
        "_buf",
        "_buffered",
        "_close_token",
        "_content_length",
        "_dead",
        "_drain_since",
        "_drain_waiter",
        "_error",
        "_exchanging",
        "_expect_state",
        "_expect_timeout",
        "_expect_timer",
        "_field_bytes",
        "_framing",
        "_head_bytes",
        "_head_deadline",
        "_head_waiter",
        "_headers",
        "_interim",
        "_is_head",
        "_keep_alive",
        "_keepalive_token",
        "_last_data",
        "_length",
        "_loop",
        "_lost",
        "_lost_waiter",
        "_non_body",
        "_owner",
        "_parser",
        "_parser_dirty",
        "_phase",
        "_read_timeout",
        "_reading_paused",
        "_reason",
        "_request_close",
        "_request_complete",
        "_response_started",
        "_response_timeout",
        "_slot_held",
        "_status",
        "_te",
        "_timer",
        "_transport",
        "_write_paused",
        "body_pulled",
        "exchanges",
        "idle_since",
        "peak_buffered",
        "read_pauses",
        "stale",
        "target_index",
        "write_pauses",
    )

    def __init__(
        self,
        owner: ConnectionOwner,
        loop: asyncio.AbstractEventLoop,
        timeouts: UpstreamTimeouts,
        target_index: int,
        *,
        expect_timeout: float,
    ) -> None:
        self._owner = owner
        self._loop = loop
        self._response_timeout = timeouts.response
        self._read_timeout = timeouts.read
        self._expect_timeout = expect_timeout
        self.target_index = target_index
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._parser_dirty = False
        self._phase = _READY
        # _dead: closing or closed, never reused. _lost: connection_lost has run.
        self._dead = False
        self._lost = False
        self._lost_waiter: asyncio.Future[None] | None = None
        # The owner counts this connection against max_connections until connection_gone.
        self._slot_held = True
        self.idle_since = 0.0
        # Exchanges started on this connection; > 1 means it was reused from the pool.
        self.exchanges = 0
        # An exchange has begun and its end has not been reported to the owner yet.
        self._exchanging = False
        # The failure was a connection loss before any response byte (stale keep-alive).
        self.stale = False
        # Whether any byte of the caller's request body was asked for (no retry after that).
        self.body_pulled = False
        self._timer: asyncio.TimerHandle | None = None
        self._head_deadline = 0.0
        self._last_data = 0.0
        self._drain_since = 0.0
        # Request side.
        self._request_close = False
        self._request_complete = False
        self._body_task: asyncio.Task[None] | None = None
        self._expect_state = _EXPECT_NONE
        self._expect_timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # Response head.
        self._head_waiter: asyncio.Future[None] | None = None
        self._response_started = False
        self._is_head = False
        self._head_bytes = 0
        self._field_bytes = 0
        self._status = 0
        self._reason = b""
        self._headers: Headers = []
        self._content_length: bytes | None = None
        self._length = 0
        self._te: bytes | None = None
        self._close_token = False
        self._keepalive_token = False
        self._interim: list[tuple[int, bytes, Headers]] | None = None
        self._framing = NO_BODY
        self._keep_alive = False
        self._error: BaseException | None = None
        # Response body.
        self._body: ResponseBody | None = None
        self._buf: deque[bytes] = deque()
        self._buffered = 0
        self.peak_buffered = 0
        # Flow-control events, for tests and metrics.
        self.read_pauses = 0
        self.write_pauses = 0
        self._reading_paused = False
        self._body_waiter: asyncio.Future[None] | None = None
        self._non_body = 0

    # ----------------------------------------------------------------- pool-facing API

    @property
    def is_idle(self) -> bool:
        return self._phase == _IDLE

    @property
    def write_buffer_size(self) -> int:
        """Request bytes accepted from the caller but not yet taken by the socket."""
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def park(self, now: float) -> None:
        """Mark as idle in the pool."""
        self._phase = _IDLE
        self.idle_since = now

    def take(self) -> None:
        """Check out of the pool for a new exchange."""
        self._phase = _READY

    def _end_exchange(self) -> None:
        if self._exchanging:
            self._exchanging = False
            self._owner.exchange_ended(self)

    def close(self) -> None:
        """Close gracefully (idle connections: idle timeout, pool close, over max_idle)."""
        if not self._dead:
            self._dead = True
            self._end_exchange()
            self._free_slot()
            if self._transport is not None:
                self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent and unread bytes."""
        if not self._dead:
            self._dead = True
            self._end_exchange()
            self._free_slot()
            if self._transport is not None:
                self._transport.abort()

    async def wait_closed(self) -> None:
        if not self._lost:
            if self._lost_waiter is None:
                self._lost_waiter = self._loop.create_future()
            await self._lost_waiter

    # ---------------------------------------------------------------------- exchange

    async def exchange(
        self,
        head: bytes,
        body: BodyStream | None,
        *,
        request_close: bool,
        is_head: bool,
        content_length: int | None,
        expect_continue: bool,
        on_informational: InformationalCallback | None,
    ) -> UpstreamResponse:
        """Send one request and wait for its final response head."""
        self._begin(is_head, request_close)
        if self._dead:
            # Lost between leaving the pool and now (a handed-over connection): nothing
            # was sent, so this is the stale case.
            self.stale = True
            self._error = BadGateway("upstream closed the connection before responding")
            self._end_exchange()  # close/abort/connection_lost have all run already
        else:
            cast(asyncio.Transport, self._transport).write(head)
            if body is None:
                self._request_sent()
            elif expect_continue:
                # RFC 9110 §10.1.1: hold the body until 100 (or a final response), but do
                # not wait forever for a server that ignores Expect.
                self._expect_state = _EXPECT_WAITING
                self._expect_timer = self._loop.call_later(
                    self._expect_timeout, self._on_expect_timeout
                )
            else:
                self._start_body(body, content_length)
        try:
            while True:
                interim = self._interim
                if interim:
                    self._interim = None
                    for status, reason, fields in interim:
                        if status == 100:
                            if self._expect_state == _EXPECT_NONE:
                                continue  # unsolicited or late 100: nothing to relay
                            self._cancel_expect()
                            if on_informational is not None:
                                await on_informational(100, reason, fields)
                            self._start_body(cast(BodyStream, body), content_length)
                        elif on_informational is not None:
                            await on_informational(status, reason, fields)
                    continue
                if self._phase >= _BODY:
                    break  # errors from here on surface from the response body
                if self._error is not None:
                    raise self._error
                if self._expect_state == _EXPECT_TIMED_OUT:
                    # Like curl: after the wait, tell the client to go on and send the body.
                    self._expect_state = _EXPECT_NONE
                    if on_informational is not None:
                        await on_informational(100, b"Continue", [])
                    self._start_body(cast(BodyStream, body), content_length)
                    continue
                waiter = self._head_waiter = self._loop.create_future()
                try:
                    await waiter
                finally:
                    if self._head_waiter is waiter:
                        self._head_waiter = None
        except BaseException:
            self._cancel_expect()
            task = self._body_task
            if task is not None:
                task.cancel()
            self.abort()
            raise
        # A final response before 100 leaves the body unsent (RFC 9110 §10.1.1): the
        # request is then incomplete, so _finish will not reuse the connection.
        self._cancel_expect()
        return self._response()

    def _begin(self, is_head: bool, request_close: bool) -> None:
        self.exchanges += 1
        self._exchanging = True
        if self._parser_dirty:
            # The last exchange was HEAD: llhttp cannot be told to skip a body, so that
            # parser may still be waiting for one. Start clean.
            self._parser = httptools.HttpResponseParser(self)
        self._parser_dirty = self._is_head = is_head
        self._phase = _SENDING
        self.stale = False
        self._request_close = request_close
        self._request_complete = False
        self.body_pulled = False
        self._response_started = False
        self._head_bytes = 0
        self._field_bytes = 0
        self._reason = b""
        self._headers = []
        self._content_length = None
        self._length = 0
        self._te = None
        self._close_token = False
        self._keepalive_token = False
        self._interim = None
        self._framing = NO_BODY
        self._keep_alive = False
        self._error = None
        self._head_deadline = 0.0
        self.peak_buffered = 0

    def _response(self) -> UpstreamResponse:
        if self._framing == NO_BODY:
            # HEAD, 204, 304 or Content-Length: 0: the exchange is over, the connection
            # goes back now and release() is a no-op. A HEAD or 304 response keeps the
            # Content-Length it announced (RFC 9110 §8.6); a 204 cannot have one.
            content_length = None
            if self._content_length is not None and self._status != 204:
                content_length = self._length
            error = self._error
            self._finish()
            if error is not None:
                raise error  # the caller's request body failed after the head arrived
            return UpstreamResponse(
                self._status,
                self._reason,
                self._headers,
                content_length=content_length,
                body=None,
            )
        body = self._body = ResponseBody(self)
        return UpstreamResponse(
            self._status,
            self._reason,
            self._headers,
            content_length=self._length if self._framing == LENGTH else None,
            body=body,
        )

    # -------------------------------------------------------------------- request body

    def _start_body(self, body: BodyStream, content_length: int | None) -> None:
        self._body_task = self._loop.create_task(self._send_body(body, content_length))

    async def _send_body(self, body: BodyStream, content_length: int | None) -> None:
        me = asyncio.current_task()
        transport = cast(asyncio.Transport, self._transport)
        chunked = content_length is None
        remaining = content_length or 0
        self.body_pulled = True
        try:
            async for chunk in body:
                # Once the exchange has ended (or the connection died) while we waited for
                # the caller, nothing more may be written: the connection may have moved on.
                if self._dead or self._body_task is not me:
                    return
                size = len(chunk)
                if not size:
                    continue  # an empty chunk would end a chunked body early
                if chunked:
                    # RFC 9112 §7.1: chunk-size in hex, CRLF, data, CRLF.
                    transport.writelines((b"%x\r\n" % size, chunk, _CHUNK_END))
                else:
                    remaining -= size
                    if remaining < 0:
                        # Never write past the declared length: the excess would be read
                        # as the next request (request smuggling).
                        raise GatewayError(
                            "request body longer than its Content-Length", close_connection=True
                        )
                    transport.write(chunk)
                    if not remaining:
                        # Complete as framed (RFC 9112 §6.2), whether or not the caller's
                        # iterator has said so yet.
                        self._request_sent()
                if self._write_paused:
                    # Backpressure: pull nothing more until the socket takes what we have.
                    await self._drain()
                if self._dead:
                    return  # the failure is reported on the response side
            if self._dead or self._body_task is not me:
                return
            if chunked:
                transport.write(_LAST_CHUNK)
                self._request_sent()
            elif remaining:
                raise GatewayError(
                    "request body shorter than its Content-Length", close_connection=True
                )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self._body_task is not me:
                return  # the exchange is over; the connection is not ours to close
            # The caller's iterator failed (too large, client gone) or the body was
            # malformed: the upstream saw a partial request, so the connection must go.
            # The same exception surfaces from request() or from the response body.
            if self._error is None:
                self._error = exc
            self.abort()
            _wake(self._head_waiter)
            _wake(self._body_waiter)

    async def _drain(self) -> None:
        self._drain_since = self._loop.time()
        self._arm(self._drain_since + self._read_timeout)
        waiter = self._drain_waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            # A cancelled task from a finished exchange must not clear the next one's.
            if self._drain_waiter is waiter:
                self._drain_waiter = None

    def _request_sent(self) -> None:
        self._request_complete = True
        if self._phase == _SENDING:
            # RFC 9112 §9.5: the response timeout runs from the end of the request.
            self._head_deadline = self._loop.time() + self._response_timeout
            self._arm(self._head_deadline)

    def _on_expect_timeout(self) -> None:
        self._expect_timer = None
        if self._expect_state == _EXPECT_WAITING:
            self._expect_state = _EXPECT_TIMED_OUT
            _wake(self._head_waiter)

    def _cancel_expect(self) -> None:
        self._expect_state = _EXPECT_NONE
        timer = self._expect_timer
        if timer is not None:
            self._expect_timer = None
            timer.cancel()

    # ------------------------------------------------------------------- response body

    def chunk_ready(self) -> bool:
        return bool(self._buf) or self._error is not None or self._phase == _DONE

    async def read_chunk(self, body: ResponseBody) -> bytes:
        while True:
            if body.source is not self:
                raise UpstreamAborted("the upstream response was released before its end")
            buf = self._buf
            if buf:
                chunk = buf.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered <= LOW_WATER:
                    self._resume_reading()
                return chunk
            error = self._error
            if error is not None:
                body.detach(ended=False)
                self._finish()
                raise error
            if self._phase == _DONE:
                body.detach(ended=True)
                self._finish()
                raise StopAsyncIteration
            waiter = self._body_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                if self._body_waiter is waiter:
                    self._body_waiter = None

    def take_complete(self, body: ResponseBody) -> bytes | None:
        """The whole rest of the body when the response is complete and buffered, else None.

        The exchange then ends here, synchronously: a small response that arrived in one read
        goes back to the pool without the coroutine steps (and the StopAsyncIteration) of
        iterating its body.
        """
        if (
            body.source is not self
            or self._phase != _DONE
            or self._error is not None
            or self._body_task is not None
        ):
            return None
        buf = self._buf
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        buf.clear()
        self._buffered = 0
        self._finish()
        return data

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if not self._dead:
            cast(asyncio.Transport, self._transport).resume_reading()
            # The upstream was not to blame while we were not reading: restart the gap.
            self._last_data = self._loop.time()
            self._arm(self._last_data + self._read_timeout)

    async def release(self, body: ResponseBody) -> None:
        if self._body is not body:
            return  # that exchange already ended (body read to its end, or an error)
        task = self._finish()
        if task is not None:
            # Let the cancelled request-body task unwind before the caller moves on.
            await asyncio.wait((task,))

    def _finish(self) -> asyncio.Task[None] | None:
        """End the exchange: back to the pool if clean and persistent, else close."""
        body = self._body
        if body is not None:
            self._body = None
            body.detach(ended=self._phase == _DONE and self._error is None)
        cancelled: asyncio.Task[None] | None = None
        task = self._body_task
        if task is not None:
            self._body_task = None
            if not task.done():
                task.cancel()
                cancelled = task
        self._cancel_expect()
        # RFC 9112 §9.3: reuse only after a complete exchange on a persistent connection.
        # An unsent or partial request body, an abandoned or close-delimited response,
        # Connection: close from either side, an error or junk all end it here.
        reusable = (
            self._phase == _DONE
            and self._request_complete
            and self._keep_alive
            and not self._request_close
            and self._error is None
            and not self._dead
        )
        self._buf.clear()
        self._buffered = 0
        if self._reading_paused:
            self._reading_paused = False
            if not self._dead:
                cast(asyncio.Transport, self._transport).resume_reading()
        self._end_exchange()
        if reusable:
            self._phase = _READY
            self._owner.connection_reusable(self)
        elif self._phase == _DONE and self._request_complete and self._error is None:
            self.close()  # a complete exchange that may not persist: a clean FIN
        else:
            self.abort()
        return cancelled

    # ---------------------------------------------------------------------- watchdog

    def _arm(self, deadline: float) -> None:
        """Make sure the watchdog fires no later than ``deadline``.

        One timer per connection: when it fires it recomputes the current deadline and
        re-arms, so back-to-back exchanges create no timer objects at all.
        """
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_watchdog)

    def _deadline(self) -> float:
        deadline = math.inf
        if self._drain_waiter is not None:
            deadline = self._drain_since + self._read_timeout
        phase = self._phase
        if phase == _SENDING:
            if self._head_deadline:
                deadline = min(deadline, self._head_deadline)
        elif phase == _BODY and not self._reading_paused:
            deadline = min(deadline, self._last_data + self._read_timeout)
        return deadline

    def _on_watchdog(self) -> None:
        self._timer = None
        if self._dead:
            return
        deadline = self._deadline()
        if deadline == math.inf:
            return
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._on_watchdog)
            return
        phase = self._phase
        if phase == _SENDING:
            if self._drain_waiter is not None and not self._head_deadline:
                error: BaseException = GatewayTimeout("upstream stopped reading the request")
            else:
                error = GatewayTimeout("upstream did not send a response in time")
            self._fail(error)
        elif phase == _BODY:
            self._fail(UpstreamAborted("upstream stalled while sending the response body"))
        else:
            # Response complete but the upstream stopped reading the request body.
            self.abort()

    # ----------------------------------------------------------------- failure helpers

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self.abort()
        _wake(self._head_waiter)
        _wake(self._body_waiter)

    def _junk(self) -> None:
        """Bytes where no message may be: never relayed, and the connection is done for."""
        self.abort()

    def _free_slot(self) -> None:
        if self._slot_held:
            self._slot_held = False
            self._owner.connection_gone(self)

    # -------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _BODY:
            self._last_data = self._loop.time()
            self._non_body += len(data)
        elif phase == _SENDING:
            self._response_started = True
            self._head_bytes += len(data)
        else:
            # Nothing is outstanding (idle, or the response is complete): RFC 9112 §9.3.2
            # responses only follow requests, so this is junk.
            self._junk()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._protocol_error("upstream switched protocols without being asked to")
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, GatewayError):
                self._protocol_error(cause.message)
            else:
                self._protocol_error(f"invalid response from upstream: {exc}")
            return
        phase = self._phase
        if phase == _SENDING:
            if self._head_bytes > MAX_HEAD_BYTES:
                self._protocol_error("upstream response head too large")
        elif phase == _BODY and self._non_body > MAX_NON_BODY_BYTES:
            self._protocol_error("too much chunk framing or trailer data from upstream")

    def _protocol_error(self, message: str) -> None:
        phase = self._phase
        if phase == _SENDING:
            self._fail(BadGateway(message))
        elif phase == _BODY:
            self._fail(UpstreamAborted(message))
        else:
            # After a complete message: the message stands, the connection does not.
            self._junk()

    def eof_received(self) -> bool | None:
        # Returning a false value closes the transport; connection_lost decides what the
        # EOF means (end of a close-delimited body, or a truncated message).
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._dead = True
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
        self._end_exchange()
        self._free_slot()
        phase = self._phase
        if phase == _SENDING:
            if self._error is None:
                # RFC 9112 §9.3.1: a reused connection that closes before any response byte
                # is the stale keep-alive race; the pool may retry idempotent requests.
                self.stale = not self._response_started
                self._error = BadGateway("upstream closed the connection before responding")
        elif phase == _BODY and self._error is None:
            if self._framing == UNTIL_CLOSE and exc is None:
                # RFC 9112 §6.3 rule 8: the close ends a close-delimited body.
                self._phase = _DONE
            else:
                self._error = UpstreamAborted("upstream closed the connection mid-body")
        _wake(self._head_waiter)
        _wake(self._body_waiter)
        _wake(self._drain_waiter)
        _wake(self._lost_waiter)

    def pause_writing(self) -> None:
        self._write_paused = True
        self.write_pauses += 1

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._drain_waiter)

    # ------------------------------------------------------------ llhttp callbacks

    def on_message_begin(self) -> None:
        if self._phase == _DONE:
            # A second message after the complete one (or after a HEAD response): junk.
            self._junk()

    def on_status(self, reason: bytes) -> None:
        # llhttp may deliver the reason phrase in pieces across reads.
        self._reason = self._reason + reason if self._reason else reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._phase != _SENDING:
            # Trailer fields (RFC 9112 §7.1.2) after the head was handed out: dropped, as
            # RFC 9110 §6.5.1 allows; the caller's header list must not change under it.
            return
        headers = self._headers
        headers.append((name, value))
        # A head that ends within one read is never seen partial by data_received's check:
        # count field bytes too (across interim responses, so 1xx floods are bounded).
        self._field_bytes += len(name) + len(value)
        if self._field_bytes > MAX_HEAD_BYTES or len(headers) > MAX_HEADER_FIELDS:
            raise BadGateway("upstream response head too large")
        # Length gates keep the common case to one len() per field.
        size = len(name)
        if size == 14:
            if name.lower() == b"content-length":
                self._content_length = value
        elif size == 17:
            if name.lower() == b"transfer-encoding":
                # The last coding of the last line decides the framing, as for llhttp.
                self._te = value
        elif size == 10 and name.lower() == b"connection":
            # find(), not "in": bytes.__contains__ first tries the operand as an int and
            # raises and clears a TypeError inside, ~1,800 instructions a test (callgrind).
            tokens = value.lower()
            if tokens.find(b"close") >= 0:
                self._close_token = True
            if tokens.find(b"keep-alive") >= 0:
                self._keepalive_token = True

    def on_headers_complete(self) -> None:
        if self._phase != _SENDING:
            return
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                # We never send Upgrade on this path (RFC 9110 §15.2.2).
                raise BadGateway("upstream sent 101 Switching Protocols to a plain request")
            # Interim response (RFC 9110 §15.2): queue it for request() to relay in order.
            if self._interim is None:
                self._interim = []
            self._interim.append((status, self._reason, self._headers))
            self._reason = b""
            self._headers = []
            self._content_length = None
            self._te = None
            self._close_token = False
            self._keepalive_token = False
            _wake(self._head_waiter)
            return
        version = parser.get_http_version()
        if version not in {"1.1", "1.0"}:
            raise BadGateway(f"upstream answered with HTTP/{version}")
        if self._te is not None and self._content_length is not None:
            # llhttp refuses this too; RFC 9112 §6.3 rule 3: never relay it.
            raise BadGateway("upstream response has both Content-Length and Transfer-Encoding")
        length = None
        if self._content_length is not None:
            # llhttp has checked it is one run of digits (no sign, list or duplicate).
            length = self._length = int(self._content_length)
        self._status = status
        framing, self._keep_alive = response_framing(
            is_head=self._is_head,
            status=status,
            http_11=version == "1.1",
            content_length=length,
            transfer_encoding=self._te,
            close=self._close_token,
            keep_alive=self._keepalive_token,
        )
        self._framing = framing
        self._head_deadline = 0.0
        if framing == NO_BODY:
            self._phase = _DONE
        else:
            self._phase = _BODY
            self._non_body = 0
            self._last_data = self._loop.time()
            self._arm(self._last_data + self._read_timeout)
        _wake(self._head_waiter)

    def on_body(self, data: bytes) -> None:
        if self._phase != _BODY:
            self._junk()  # bytes after a HEAD response's head (or after the message)
            return
        self._non_body = 0
        self._buf.append(data)
        buffered = self._buffered = self._buffered + len(data)
        self.peak_buffered = max(self.peak_buffered, buffered)
        if buffered > HIGH_WATER and not self._reading_paused and not self._dead:
            self._reading_paused = True
            self.read_pauses += 1
            cast(asyncio.Transport, self._transport).pause_reading()
        _wake(self._body_waiter)

    def on_message_complete(self) -> None:
        if self._phase == _BODY:
            self._phase = _DONE
            _wake(self._body_waiter)
        # Interim responses complete in _SENDING; no-body responses are already _DONE.
