"""One client connection: an ``asyncio.Protocol`` driving llhttp (httptools) for HTTP/1.1.

Requests on a connection are answered one at a time, in order (RFC 9112 §9.3.2): heads that a
client pipelines are parsed as they arrive and wait in a short queue, with reading paused when
the queue is full. Each request's body streams through a bounded buffer (`RequestBody`).

Edge rules enforced here (HARDENING.md §A, §F), each answered with the JSON error body:

* request line longer than ``max_line``: 414; a header field longer than ``max_line``, more
  than ``max_headers`` fields or a head above ``max_header_bytes``: 431;
* anything llhttp refuses (bad framing, CL with TE, obs-fold, bare LF, invalid tokens): 400,
  and the connection closes, since its framing can no longer be trusted;
* a header-read deadline from accept, and from the first byte of every later request, until
  the head is complete: 408 and close (slowloris);
* a keep-alive idle timeout between requests, and a cap on requests per connection;
* a request body that gets no byte for ``body_progress`` (slow POST): its reader fails with
  408, which is answered with Connection: close;
* a response the client leaves unread, the send buffer full and not shrinking for ``send``
  (slow reader): the connection is aborted, which releases the upstream side too;
* a Transfer-Encoding other than ``chunked`` alone: 501 and close (RFC 9112 §6.1);
* trailer fields are never merged into the header section (RFC 9110 §6.5.1): they are
  dropped, and framing or routing fields among them (Content-Length, Transfer-Encoding, Host)
  are a 400; a body's chunk framing, extensions and trailers may exceed its content by
  ``max_header_bytes`` at most (400 beyond);
* CONNECT: 400, the gateway is not a forward proxy;
* the parsed-but-unanswered pipelined requests are bounded (`_feed`).

One timer per connection serves every deadline: it is re-armed lazily only when a later
deadline moved, so back-to-back keep-alive requests create no timer objects, and a body's
progress costs a clock read per received chunk, never a timer.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final, Protocol, cast

import httptools

from gateway.config.model import ServerConfig
from gateway.downstream.body import RequestBody
from gateway.downstream.writer import error_response
from gateway.edge import FieldNotes, RequestHead
from gateway.errors import (
    BadRequest,
    ClientClosedRequest,
    GatewayError,
    HeadersTooLarge,
    RequestTimeout,
    UnsupportedTransferCoding,
    UriTooLong,
)
from gateway.headers import new_request_id
from gateway.messages import Headers, ProxyResponse

# Parsed heads waiting behind the request being answered; reading pauses beyond this.
MAX_PIPELINED: Final = 16
# After an error answer that leaves a request body unread, keep reading (and discarding) for
# this long before closing, so that closing does not reset the connection under the answer
# while the client is still sending (nginx's lingering close does the same).
LINGER_SECONDS: Final = 2.0

# Bytes parsed in one go while request heads are being read (`ClientConnection._feed`).
FEED_SLICE: Final = 8 * 1024
# A connection refused by a connection cap waits at most this long for its first head before
# it is answered (503) anyway: refusing must cost little.
REFUSAL_WAIT: Final = 1.0

_VERSIONS: Final = {"1.1": (1, 1), "1.0": (1, 0)}
# RFC 9110 §6.5.1: a trailer must not carry framing or routing fields. Seen in a request's
# trailer section they are an attempt to reframe or reroute it: 400.
_TRAILER_FORBIDDEN: Final = frozenset({b"content-length", b"transfer-encoding", b"host"})


class ClientGone(Exception):
    """The client's connection closed; nothing more can be written to it."""


def _body_cut_short() -> ClientClosedRequest:
    return ClientClosedRequest("client closed the connection before sending the whole body")


class PendingRequest:
    """A request head off the wire, with its body stream, waiting for or being handled."""

    __slots__ = ("body", "content_length", "error", "head", "keep_alive", "upgrade")

    def __init__(
        self,
        head: RequestHead,
        *,
        keep_alive: bool,
        content_length: int | None,
        body: RequestBody | None,
        error: GatewayError | None = None,
        upgrade: bool = False,
    ) -> None:
        self.head = head
        # The client asked to switch protocols (Upgrade named by Connection, RFC 9110 §7.8).
        self.upgrade = upgrade
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.body = body
        # A request the parser refused: answered with this error, then the connection closes.
        self.error = error

    @property
    def body_complete(self) -> bool:
        body = self.body
        return body is None or body.complete


class ConnectionLimits:
    """The edge limits of one connection, taken from the config served when it was accepted."""

    __slots__ = (
        "body_progress",
        "header_read",
        "keepalive",
        "max_body",
        "max_connections",
        "max_connections_per_ip",
        "max_header_bytes",
        "max_headers",
        "max_line",
        "max_requests",
        "send",
    )

    def __init__(self, server: ServerConfig) -> None:
        limits = server.limits
        timeouts = server.timeouts
        self.header_read = timeouts.header_read
        self.keepalive = timeouts.keepalive
        self.body_progress = timeouts.body_progress
        self.send = timeouts.send
        self.max_connections = limits.max_connections
        self.max_connections_per_ip = limits.max_connections_per_ip
        self.max_body = limits.max_body
        self.max_header_bytes = limits.max_header_bytes
        self.max_headers = limits.max_headers
        self.max_line = limits.max_line
        self.max_requests = limits.max_requests_per_connection


class ListenerSettings:
    """What a connection needs to know about the listener that accepted it."""

    __slots__ = ("redirect_port", "scheme")

    def __init__(self, scheme: str = "http", redirect_port: int | None = None) -> None:
        # "https" on a TLS listener: X-Forwarded-Proto and the cache key say so.
        self.scheme = scheme
        # redirect_to_https: every request is answered 308 to https on this port.
        self.redirect_port = redirect_port


PLAIN_LISTENER: Final = ListenerSettings()


# What the server runs for each request: it writes the response through the connection.
RequestHandler = Callable[["ClientConnection", PendingRequest], Coroutine[Any, Any, None]]


class TunnelHooks:
    """Where a connection's bytes and events go once it switched protocols (a WebSocket)."""

    def received(self, data: bytes) -> None: ...

    def writable(self, writable: bool) -> None: ...

    def lost(self) -> None: ...

    def shutdown(self) -> None: ...


class ServedConnection(Protocol):
    """A client connection as its server tracks it: HTTP/1.1 (`ClientConnection`) or HTTP/2
    (`gateway.downstream.http2.Http2Connection`)."""

    peer_ip: str
    admission: int
    limits: ConnectionLimits
    closed_waiter: asyncio.Future[None]

    def refuse(self, error: GatewayError) -> None: ...

    def abort(self) -> None: ...

    def begin_drain(self) -> None: ...


class ConnectionRegistry:
    """What a connection tells its server (GatewayServer implements it)."""

    def connection_opened(self, conn: ServedConnection) -> None: ...

    def connection_closed(self, conn: ServedConnection) -> None: ...

    def client_timed_out(self, kind: str) -> None:
        """A client missed a deadline: ``header_read``, ``body_progress`` or ``send``."""

    def upstream_aborted(self, upstream: ProxyResponse) -> None:
        """An upstream response broke off after its head was relayed."""

    def http2_goaway(self, code: int) -> None:
        """An HTTP/2 connection ended with GOAWAY ``code`` because of the client."""


class ClientConnection(asyncio.Protocol):
    """An accepted client connection."""

    __slots__ = (
        "_body_deadline",
        "_closed",
        "_content_length",
        "_current",
        "_drain_waiter",
        "_draining",
        "_eof",
        "_field_count",
        "_handler",
        "_head_bytes",
        "_head_deadline",
        "_header_bytes",
        "_headers",
        "_held",
        "_holding",
        "_idle_deadline",
        "_in_head",
        "_lingering",
        "_loop",
        "_non_body",
        "_notes",
        "_parser",
        "_parsing",
        "_paused_for",
        "_queue",
        "_refusal",
        "_registry",
        "_send_backlog",
        "_send_deadline",
        "_stopped",
        "_task",
        "_te",
        "_timer",
        "_tunnel",
        "_unparsed",
        "_url",
        "_wakeup",
        "_write_paused",
        "admission",
        "closed_waiter",
        "limits",
        "listener",
        "peer_ip",
        "requests_served",
        "response_started",
        "transport",
    )

    def __init__(
        self,
        registry: ConnectionRegistry,
        handler: RequestHandler,
        limits: ConnectionLimits,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._registry = registry
        self._handler = handler
        self.limits = limits
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        # Set before connection_made when a PROXY protocol header named the client.
        self.peer_ip = ""
        self.listener = PLAIN_LISTENER
        self._parser = httptools.HttpRequestParser(self)
        # Head being parsed.
        self._in_head = False
        self._url = b""
        self._headers: Headers = []
        self._field_count = 0
        self._header_bytes = 0
        self._head_bytes = 0
        self._content_length: bytes | None = None
        # The Transfer-Encoding values, joined with commas when there are several lines.
        self._te: bytes | None = None
        self._notes = FieldNotes()
        # The message whose body the parser is reading, if any.
        self._parsing: PendingRequest | None = None
        # Parsed requests not yet handled; the one being handled is _current.
        self._queue: deque[PendingRequest] = deque()
        self._current: PendingRequest | None = None
        # The task that answers this connection's requests one after the other (`_serve`),
        # started with the first; held here, since the loop keeps only a weak reference.
        self._task: asyncio.Task[None] | None = None
        # What `_serve` waits on between requests; set when the next one is dispatched.
        self._wakeup: asyncio.Future[None] | None = None
        # Parsing stopped for good (an error, or closing): data is ignored.
        self._stopped = False
        self._closed = False
        # The client half-closed its side: nothing more will arrive.
        self._eof = False
        # Received bytes not parsed yet, held while MAX_PIPELINED heads wait (`_feed`).
        self._unparsed = b""
        self._draining = False
        self._lingering = False
        # Reasons reading is paused: a bit each for the pipeline queue and a body backlog.
        self._paused_for = 0
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head_deadline: float | None = None
        self._idle_deadline: float | None = None
        # The body being received must get a byte by then (restarted by every body byte).
        self._body_deadline: float | None = None
        # While a body is being parsed: the bytes received minus twice the body bytes, that is
        # the framing bytes (chunk sizes, extensions, trailers) minus the body bytes.
        self._non_body = 0
        # While the send buffer is full: when it must have shrunk, and its size then.
        self._send_deadline: float | None = None
        self._send_backlog = 0
        # Set by the server when a connection cap refuses this connection: the answer to its
        # first request.
        self._refusal: GatewayError | None = None
        # What the server's connection caps made of this connection (GatewayServer's).
        self.admission = 0
        self.requests_served = 0
        # After an Upgrade request: the bytes that followed it, held (reading paused) until
        # its answer says whether they are the new protocol's or the next request.
        self._holding = False
        self._held = b""
        # Set once the connection switched protocols: it gets every byte and event.
        self._tunnel: TunnelHooks | None = None
        # Whether any byte of the current request's response was written.
        self.response_started = False
        self.closed_waiter: asyncio.Future[None] = loop.create_future()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self.peer_ip:
            peer = transport.get_extra_info("peername")
            self.peer_ip = str(peer[0]) if isinstance(peer, tuple) else ""
        self._registry.connection_opened(self)
        # The first head's deadline runs from accept: a connection that sends nothing is a
        # slowloris too.
        wait = self.limits.header_read
        if self._refusal is not None:
            wait = min(wait, REFUSAL_WAIT)
        self._head_deadline = self._loop.time() + wait
        self._arm(self._head_deadline)

    def refuse(self, error: GatewayError) -> None:
        """A connection cap refused this connection: its first request (or, when none comes
        within REFUSAL_WAIT, the connection) is answered with ``error``, then it closes.

        Reading the head first lets the answer be a response to it (its request id, no body
        for HEAD), and closing after it does not reset the connection under unread bytes.
        """
        self._refusal = error

    def connection_lost(self, exc: Exception | None) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.lost()
        self._closed = True
        self._stopped = True
        self._unparsed = b""
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
        gone = _body_cut_short()
        parsing = self._parsing
        if parsing is not None and parsing.body is not None:
            parsing.body.fail(gone)
        for pending in self._queue:
            if pending.body is not None:
                pending.body.fail(gone)
        self._queue.clear()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ClientGone())
        wakeup = self._wakeup
        if wakeup is not None:
            # `_serve` waits for a next request that will not come: let it end.
            self._wakeup = None
            wakeup.set_result(None)
        self._registry.connection_closed(self)
        if not self.closed_waiter.done():
            self.closed_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.received(data)
            return
        if self._holding:
            self._held += data  # reading is paused: at most what was already read
            return
        if self._stopped:
            return  # after an error or while lingering: discarded
        if self._unparsed:
            self._unparsed += data  # reading is paused: at most what was already read
            return
        self._feed(data)
        self._dispatch()

    def _feed(self, data: bytes) -> None:
        """Parse ``data``, holding back what follows once MAX_PIPELINED heads are queued.

        llhttp parses a whole buffer in one call and httptools cannot pause it, so a read of
        pipelined requests would become that many parsed requests at once: 64 KiB of small
        GETs is two thousand of them, each costing some 17 times its bytes (520 bytes for a
        30-byte GET, measured with tracemalloc). A large buffer is therefore fed in FEED_SLICE
        pieces while heads are being parsed, and the rest is kept as bytes (`_unparsed`) until
        the queue has room (`_dispatch`). A body is fed whole: its own buffer bounds it.
        """
        size = len(data)
        if size <= FEED_SLICE:
            self._feed_part(data, data)
        else:
            view = memoryview(data)
            offset = 0
            while offset < size:
                if len(self._queue) > MAX_PIPELINED:
                    self._unparsed = bytes(view[offset:])
                    return
                parsing = self._parsing
                if parsing is not None and not parsing.body_complete:
                    end = size
                else:
                    end = min(offset + FEED_SLICE, size)
                if not self._feed_part(view[offset:end], view[offset:]):
                    return
                offset = end
        if self._eof and not self._unparsed:
            self._ended()

    def _feed_part(self, part: bytes | memoryview, rest: bytes | memoryview) -> bool:
        """Parse ``part``, the start of ``rest`` (the unparsed bytes); whether to go on."""
        if self._parsing is not None:
            self._non_body += len(part)  # less twice each body byte (on_body)
        try:
            self._parser.feed_data(part)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(bytes(rest), upgrade)
            return False
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, GatewayError):
                self._parse_failed(cause)
            else:
                self._parse_failed(
                    BadRequest(str(exc)), in_body_message=f"malformed request body: {exc}"
                )
            return False
        if self._in_head:
            self._head_bytes += len(part)
            # httptools holds a field in memory until it ends: bound the head as a whole.
            if self._head_bytes > self.limits.max_header_bytes + 2 * self.limits.max_line:
                self._parse_failed(HeadersTooLarge("request head too large"))
                return False
        elif self._non_body > self.limits.max_header_bytes and self._parsing is not None:
            # Chunk extensions and trailers carry nothing to the reader, and neither llhttp
            # nor max_body bounds them (Node's CVE-2024-22019): a body's framing may exceed
            # its content by a header block's worth at most. Chunks of 6 bytes and more stay
            # within it.
            message = "too much chunk framing or trailer data in the request body"
            self._parse_failed(BadRequest(message), in_body_message=message)
            return False
        return not self._stopped

    def eof_received(self) -> bool | None:
        if self._tunnel is not None:
            return False  # a WebSocket client gone without a Close frame: close, relay sees it
        # The client half-closed: answer what is pending, then close (return False → close
        # when nothing is pending, since nothing more can arrive). Bytes held back unparsed
        # are parsed first (`_feed` ends the input after them).
        self._eof = True
        if not self._unparsed:
            self._ended()
        return self.busy

    def _ended(self) -> None:
        """The client's input ended: no more requests, and a body still arriving never will."""
        self._stopped = True
        parsing = self._parsing
        if parsing is not None and parsing.body is not None:
            parsing.body.fail(_body_cut_short())

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._tunnel is not None:
            self._tunnel.writable(False)
            return
        # The send buffer is full: from now on the client must take bytes at least every
        # `send` seconds (checked by the timer, from the buffer's size).
        self._send_deadline = deadline = self._loop.time() + self.limits.send
        self._send_backlog = cast(asyncio.Transport, self.transport).get_write_buffer_size()
        self._arm(deadline)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._send_deadline = None
        if self._tunnel is not None:
            self._tunnel.writable(True)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ llhttp callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        self._field_count = 0
        self._header_bytes = 0
        self._head_bytes = 0
        self._content_length = None
        self._te = None
        self._non_body = 0
        self._notes = FieldNotes()
        self._idle_deadline = None
        if self._head_deadline is None:
            # A fresh connection keeps the deadline it got at accept.
            self._head_deadline = deadline = self._loop.time() + self.limits.header_read
            self._arm(deadline)

    def on_url(self, url: bytes) -> None:
        # llhttp hands the target over in pieces as it arrives.
        url = self._url = self._url + url if self._url else url
        if len(url) > self.limits.max_line:
            raise UriTooLong(f"request target exceeds {self.limits.max_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.limits
        size = len(name) + len(value)
        if size > limits.max_line:
            raise HeadersTooLarge(f"a header field exceeds {limits.max_line} bytes")
        if not self._in_head:
            # A trailer field (llhttp reports them with the same callback, after the head).
            # RFC 9110 §6.5.1: never merged into the header section; the gateway does not
            # relay trailers, so it is dropped, unless it tries to reframe or reroute.
            if name.lower() in _TRAILER_FORBIDDEN:
                raise BadRequest(f"{name.decode('latin-1')} is not allowed in a trailer")
            return
        self._field_count += 1
        if self._field_count > limits.max_headers:
            raise HeadersTooLarge(f"more than {limits.max_headers} header fields")
        self._header_bytes += size + 4
        if self._header_bytes > limits.max_header_bytes:
            raise HeadersTooLarge(f"header block exceeds {limits.max_header_bytes} bytes")
        self._headers.append((name, value))
        self._notes.note(name, value)
        # Content-Length, found with a length gate so most fields cost one len().
        if len(name) == 14 and name.lower() == b"content-length":
            self._content_length = value
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            te = self._te
            self._te = value if te is None else te + b"," + value

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_deadline = None
        parser = self._parser
        version_text = parser.get_http_version()
        version = _VERSIONS.get(version_text)
        if version is None:
            # HTTP/0.9, 1.2, 2.0 on an HTTP/1.1 connection (HTTP/2 has its own, `http2`).
            raise BadRequest(f"unsupported HTTP version {version_text}")
        if parser.get_method() == b"CONNECT":
            # RFC 9110 §9.3.6: CONNECT asks for a tunnel to the target, the job of a forward
            # proxy, which an edge gateway is not (HARDENING.md §B): refused whatever its
            # target says, before anything is forwarded.
            raise BadRequest("CONNECT is not supported: this is not a forward proxy")
        content_length: int | None = None
        body: RequestBody | None = None
        te = self._te
        if te is not None and te.strip(b" \t").lower() != b"chunked":
            # RFC 9112 §6.3: chunked not last in a request's codings leaves its length unknown:
            # 400 and close (llhttp checks it too, but after this callback). Any other coding
            # before chunked would reach the upstream undecoded as if it were the content: the
            # gateway implements chunked only (§6.1: 501 for the rest).
            codings = te.decode("latin-1")
            if te.rsplit(b",", 1)[-1].strip(b" \t").lower() != b"chunked":
                raise BadRequest(f"chunked is not the final transfer coding in {codings!r}")
            raise UnsupportedTransferCoding(f"unsupported transfer coding {codings!r}")
        if self._content_length is not None:
            # llhttp has checked it is one run of digits (no sign, list or duplicate).
            content_length = int(self._content_length)
            if content_length:
                body = RequestBody(self, self._loop, self.limits.max_body)
        elif self._notes.has_te:
            body = RequestBody(self, self._loop, self.limits.max_body)
        head = RequestHead(
            parser.get_method().decode("ascii"),
            self._url,
            version=version,
            raw_headers=self._headers,
            peer_ip=self.peer_ip,
            notes=self._notes,
        )
        pending = PendingRequest(
            head,
            keep_alive=parser.should_keep_alive(),
            content_length=content_length,
            body=body,
            upgrade=parser.should_upgrade(),
        )
        if self._refusal is not None:
            # Refused by a connection cap: this request gets the refusal, nothing follows it.
            pending.error = self._refusal
            pending.keep_alive = False
            self._stopped = True
        elif body is not None and not _expects_continue(version, self._notes):
            # RFC 9110 §10.1.1: a client that asked for 100-continue waits for it; its body
            # deadline starts with the 100 (`send_interim`) or its first body byte.
            self._body_deadline = deadline = self._loop.time() + self.limits.body_progress
            self._arm(deadline)
        self._parsing = pending
        self._queue.append(pending)
        if len(self._queue) > MAX_PIPELINED:
            self._pause(1)

    def on_body(self, data: bytes) -> None:
        self._non_body -= 2 * len(data)
        parsing = self._parsing
        if parsing is not None and parsing.body is not None:
            # Every body byte restarts the progress deadline; the timer, armed for an earlier
            # one, finds the later one when it fires.
            self._body_deadline = self._loop.time() + self.limits.body_progress
            parsing.body.feed(data)

    def on_message_complete(self) -> None:
        self._body_deadline = None
        parsing = self._parsing
        if parsing is not None:
            self._parsing = None
            if parsing.body is not None:
                parsing.body.end()

    # ---------------------------------------------------------------------- parse errors

    def _parse_failed(self, error: GatewayError, in_body_message: str | None = None) -> None:
        """The byte stream broke: the request being parsed gets the error, then we close.

        In the middle of a body the error goes to that body's reader (with
        ``in_body_message`` when llhttp found it), so the request being forwarded fails with
        400 instead of waiting for bytes that will never come.
        """
        self._stopped = True
        self._in_head = False
        self._head_deadline = None
        self._body_deadline = None
        parsing = self._parsing
        if parsing is not None and parsing.body is not None and not parsing.body.complete:
            # Broken body framing (RFC 9112 §6.3): whoever reads this body answers 400.
            parsing.body.fail(BadRequest(in_body_message) if in_body_message else error)
            return
        self._parsing = None
        head = RequestHead(
            "", b"", version=(1, 1), raw_headers=[], peer_ip=self.peer_ip, notes=FieldNotes()
        )
        refused = PendingRequest(
            head, keep_alive=False, content_length=None, body=None, error=error
        )
        self._queue.append(refused)

    def _upgraded(self, data: bytes, upgrade: httptools.HttpParserUpgrade) -> None:
        """llhttp stopped at an Upgrade request, after its complete message.

        What follows an Upgrade request is held, and reading paused, until the request is
        answered: a route relaying WebSockets switches the connection to the new protocol
        and the held bytes are its first (`enter_tunnel`); any other answer treats the
        request as a plain one (RFC 9110 §7.8 lets a server ignore Upgrade; the field is
        hop-by-hop and not forwarded) and parsing goes on with a fresh parser, from the held
        bytes. (CONNECT never gets here: `on_headers_complete` refuses it.)
        """
        offset = upgrade.args[0] if upgrade.args else len(data)
        self._parser = httptools.HttpRequestParser(self)
        self._holding = True
        self._held = data[offset:]
        self._pause(4)

    def enter_tunnel(self, hooks: TunnelHooks) -> None:
        """Switch protocols: from now on every byte and event of the connection goes to
        ``hooks``, starting with the bytes held since the Upgrade request."""
        self._tunnel = hooks
        self._stopped = True
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
        self._head_deadline = self._idle_deadline = None
        held, self._held = self._held, b""
        self._holding = False
        if self._paused_for:
            self._paused_for = 0
            if self.transport is not None and not self._closed:
                self.transport.resume_reading()
        if held:
            hooks.received(held)

    def _release_held(self) -> bool:
        """The Upgrade request got a plain answer: parse what followed it as HTTP; whether
        that dispatched a next request.

        (A separate result rather than a look at ``_current`` afterwards: mypy, and so mypyc,
        would keep ``_current`` narrowed to the None the caller just set.)"""
        self._holding = False
        held, self._held = self._held, b""
        self._resume(4)
        if held:
            self.data_received(held)
        return self._current is not None

    # ---------------------------------------------------------------------- dispatching

    def _dispatch(self) -> None:
        if self._current is not None or not self._queue or self._closed:
            return
        self._current = self._queue.popleft()
        if self._paused_for & 1 and len(self._queue) <= MAX_PIPELINED:
            unparsed = self._unparsed
            if unparsed and not self._stopped:
                # Room in the queue: parse what was held back (which may hold some again).
                self._unparsed = b""
                self._feed(unparsed)
            if not self._unparsed and len(self._queue) <= MAX_PIPELINED:
                self._resume(1)
        self.response_started = False
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set_result(None)
        elif self._task is None:
            self._task = self._loop.create_task(self._serve())

    async def _serve(self) -> None:
        """Answer the dispatched requests in order, for as long as the connection lives.

        One task per connection rather than one per request: creating and finishing an
        asyncio task (a weak-set entry, kept in Python code on 3.11) cost more than the wait
        for the next request on a future (docs/performance.md).
        """
        while True:
            pending = self._current
            if pending is None:
                if self._closed:
                    self._task = None
                    return
                wakeup = self._wakeup = self._loop.create_future()
                await wakeup
                continue
            try:
                await self._handler(self, pending)
            except ClientGone:
                pass
            except Exception as exc:
                # Reported like an unretrieved task exception would be; the connection goes on
                # to its next request, as it did when each request had its own task.
                self._loop.call_exception_handler(
                    {"message": "request handler failed", "exception": exc, "protocol": self}
                )
            self._finished(pending)

    def _finished(self, pending: PendingRequest) -> None:
        self._current = None
        if self._closed or self._tunnel is not None:
            return
        body = pending.body
        if self._lingering:
            return
        if not self.keep_alive_after(pending):
            if body is not None and not pending.body_complete:
                body.discard()
                self._linger()
            elif self._queue or self._unparsed or self._in_head or self._parsing is not None:
                # Pipelined requests left unanswered (max_requests_per_connection, or after
                # Connection: close): closing with their bytes unread would reset the
                # connection under the responses already sent. The client retries them on a
                # new connection (RFC 9112 §9.3.2).
                self._queue.clear()
                self._unparsed = b""
                self._linger()
            else:
                self.close()
            return
        if self._holding and self._release_held():
            return  # the held bytes held the next request: it is dispatched
        if self._queue:
            self._dispatch()
        elif self._stopped:
            self.close()
        elif self._in_head:
            # A pipelined head still arriving: its deadline may already have passed.
            if self._head_deadline is not None:
                self._arm(self._head_deadline)
        else:
            self._idle_deadline = deadline = self._loop.time() + self.limits.keepalive
            self._arm(deadline)

    def keep_alive_after(self, pending: PendingRequest) -> bool:
        """Whether the connection may carry another request after ``pending``'s response."""
        return (
            pending.keep_alive
            and pending.error is None
            and not self._draining
            and self.requests_served < self.limits.max_requests
            and pending.body_complete
            # end() still marks a body complete after a 413 stopped keeping its bytes.
            and not (pending.body is not None and pending.body.failed)
        )

    # ---------------------------------------------------------------------- flow control

    def body_backlog(self, paused: bool) -> None:
        if paused:
            self._pause(2)
        else:
            self._resume(2)

    def _pause(self, reason: int) -> None:
        if not self._paused_for and self.transport is not None and not self._closed:
            self.transport.pause_reading()
        self._paused_for |= reason

    def _resume(self, reason: int) -> None:
        was = self._paused_for
        self._paused_for = was & ~reason
        if was and not self._paused_for and self.transport is not None and not self._closed:
            self.transport.resume_reading()
            if self._body_deadline is not None:
                # The pause was the gateway's doing: the client's time starts again now.
                self._body_deadline = self._loop.time() + self.limits.body_progress

    # -------------------------------------------------------------------------- writing

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ClientGone()
        self.response_started = True
        cast(asyncio.Transport, self.transport).write(data)

    def writelines(self, parts: Iterable[bytes]) -> None:
        if self._closed:
            raise ClientGone()
        self.response_started = True
        cast(asyncio.Transport, self.transport).writelines(parts)

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    async def drain(self) -> None:
        """Wait until the socket takes more (backpressure from a slow reader)."""
        if self._closed:
            raise ClientGone()
        if not self._write_paused:
            return
        waiter = self._drain_waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None

    def send_interim(self, data: bytes) -> None:
        """Write an interim (1xx) response head; the final response is still to come."""
        if not self._closed:
            cast(asyncio.Transport, self.transport).write(data)
            parsing = self._parsing
            if (
                data.startswith(b"HTTP/1.1 100 ")
                and self._body_deadline is None
                and parsing is not None
                and not parsing.body_complete
            ):
                # The client was told to send its body: from now on it must make progress.
                self._body_deadline = deadline = self._loop.time() + self.limits.body_progress
                self._arm(deadline)

    # ------------------------------------------------------------------------- closing

    def close(self) -> None:
        """Close after what was written is sent."""
        self._stopped = True
        if not self._closed and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (a response failed after its first byte)."""
        self._stopped = True
        if not self._closed and self.transport is not None:
            self.transport.abort()

    def _linger(self) -> None:
        """Half-close after the answer, discard what the client still sends, close later."""
        transport = self.transport
        if transport is None or self._closed:
            return
        self._stopped = True
        self._lingering = True
        if self._paused_for:
            self._paused_for = 0
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._idle_deadline = self._loop.time() + LINGER_SECONDS
        self._head_deadline = self._body_deadline = None
        self._arm(self._idle_deadline)

    def begin_drain(self) -> None:
        """The server is shutting down: close now if idle, else after the current response."""
        self._draining = True
        if self._tunnel is not None:
            self._tunnel.shutdown()  # 1001 to both sides of the relay
            return
        if not self.busy:
            self.close()

    @property
    def busy(self) -> bool:
        """A request is being answered or waits its turn."""
        return self._current is not None or bool(self._queue) or bool(self._unparsed)

    # --------------------------------------------------------------------------- timers

    def _arm(self, deadline: float) -> None:
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        """The earliest deadline may have come: act on every one that did, re-arm for the rest.

        Head and idle deadlines wait while a request is being answered (`_finished` re-arms
        them); the body and send deadlines apply during the answer, that is their point.
        """
        self._timer = None
        if self._closed or self._tunnel is not None:
            return
        now = self._loop.time()
        send = self._send_deadline
        if send is not None and send <= now:
            size = cast(asyncio.Transport, self.transport).get_write_buffer_size()
            if size >= self._send_backlog:
                self._send_timed_out()
                return
            # The client took bytes since the buffer filled: like nginx's send_timeout, the
            # limit is on the gap between two of its reads, not on the whole response.
            self._send_backlog = size
            self._send_deadline = now + self.limits.send
        body = self._body_deadline
        if body is not None and body <= now:
            if self._paused_for or self._lingering:
                # Not reading is the gateway's doing (backpressure, pipelining); while
                # lingering the bytes are discarded and the linger deadline rules.
                self._body_deadline = now + self.limits.body_progress
            else:
                self._body_timed_out()
        wake = math.inf
        if self._send_deadline is not None:
            wake = self._send_deadline
        if self._body_deadline is not None:
            wake = min(wake, self._body_deadline)
        due = math.inf
        if self._head_deadline is not None:
            due = self._head_deadline
        if self._idle_deadline is not None:
            due = min(due, self._idle_deadline)
        if due <= now:
            if self._lingering:
                self.abort()
                return
            if self._current is None:
                if self._head_deadline is not None and self._head_deadline <= due:
                    self._head_deadline = None
                    self._timed_out()
                else:
                    self.close()  # keep-alive idle timeout: a silent close, as every peer does
                return
            # A request is being answered; _finished re-arms what is still due.
        else:
            wake = min(wake, due)
        if wake != math.inf:
            self._timer = self._loop.call_at(wake, self._on_timer)

    def _timed_out(self) -> None:
        """No complete head in time: 408, or a cap's refusal for a refused connection."""
        self._stopped = True
        error = self._refusal
        if error is None:
            error = RequestTimeout("request header not received in time")
            self._registry.client_timed_out("header_read")
        data = error_response(error, new_request_id(), close=True, head_only=False)
        cast(asyncio.Transport, self.transport).write(data)
        self.close()

    def _body_timed_out(self) -> None:
        """The body being received got no byte for `body_progress` (a slow POST).

        Its reader fails with 408 and answers it (closing, since the rest of the body will
        never be read); nothing more is parsed from this connection.
        """
        self._body_deadline = None
        parsing = self._parsing
        if parsing is None or parsing.body is None or parsing.body.complete:
            return
        self._stopped = True
        self._registry.client_timed_out("body_progress")
        parsing.body.fail(RequestTimeout("request body not received in time"))

    def _send_timed_out(self) -> None:
        """The client left the response unread for `send`: drop the connection.

        Aborting wakes the response's writer with ClientGone, which releases (and, mid-body,
        aborts) the upstream connection: a slow reader pins neither side for longer.
        """
        self._send_deadline = None
        self._registry.client_timed_out("send")
        self.abort()


def _expects_continue(version: tuple[int, int], notes: FieldNotes) -> bool:
    """Whether the request asked for 100-continue (RFC 9110 §10.1.1; HTTP/1.1 only)."""
    expect = notes.expect
    return expect is not None and version == (1, 1) and expect.strip().lower() == b"100-continue"
