"""The gateway's own request and response types, shared by every stage of a route's chain.

Header fields are kept as raw ``(name, value)`` byte pairs in wire order, so duplicates such
as ``Set-Cookie`` survive and no per-request str decoding happens (DESIGN.md §2: building the
upstream request from raw bytes lifted the prototype from 16.6k to 23.4k requests/s).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

# Raw header fields in wire order. Names keep the case the peer sent; compare with .lower().
Headers = list[tuple[bytes, bytes]]

# A body is an async iterator of non-empty byte chunks; it ends when the message ends.
BodyStream = AsyncIterator[bytes]

# Called for each interim (1xx) response the upstream sends before its final one.
InformationalCallback = Callable[[int, bytes, Headers], Awaitable[None]]


# Plain classes with __slots__ rather than dataclasses: one of each is built per request, and
# under mypyc a dataclass keeps the interpreted __init__ the dataclasses module generates, while
# a hand-written one compiles to C (docs/performance.md).
class ProxyRequest:
    """A client request after parsing and validation at the edge."""

    __slots__ = (
        "authority",
        "body",
        "cache",
        "client_ip",
        "compression",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "method",
        "path",
        "peer_ip",
        "peer_trusted",
        "rate_limit",
        "request_id",
        "scheme",
        "send_informational",
        "target",
        "trace_id",
        "version",
    )

    def __init__(
        self,
        *,
        method: str,
        target: bytes,
        path: str,
        host: str,
        authority: bytes,
        headers: Headers,
        version: tuple[int, int],
        body: BodyStream | None,
        content_length: int | None,
        scheme: str,
        client_ip: str,
        peer_ip: str,
        peer_trusted: bool,
        request_id: str,
        expect_continue: bool = False,
        send_informational: InformationalCallback | None = None,
        trace_id: str = "",
    ) -> None:
        self.method = method
        # The origin-form request target exactly as received (absolute-form already reduced
        # to origin-form, RFC 9112 §3.2.2): path and query bytes, never re-encoded.
        self.target = target
        # The path part of ``target`` (still percent-encoded), used for routing.
        self.path = path
        # The host the client addressed, lower-cased, without port; "" when absent.
        self.host = host
        # The Host field value as the client sent it (or the authority of an absolute-form
        # target).
        self.authority = authority
        # End-to-end header fields from the client, hop-by-hop fields already removed.
        self.headers = headers
        self.version = version
        # None when the request has no body; otherwise the body chunks.
        self.body = body
        # The declared Content-Length, or None for a chunked body or no body.
        self.content_length = content_length
        self.scheme = scheme
        self.client_ip = client_ip
        self.peer_ip = peer_ip
        # Whether the TCP peer is in server.trusted_proxies (its X-Forwarded-* are believed).
        self.peer_trusted = peer_trusted
        self.request_id = request_id
        self.expect_continue = expect_continue
        # Set by the server adapter: relays an upstream interim response to the client.
        self.send_informational = send_informational
        # The W3C trace id this request carries upstream (generated when the client sent
        # none).
        self.trace_id = trace_id
        # The rate limit's decision (allowed, limited, shadow, error) for the access line;
        # None when the route has no rate limit.
        self.rate_limit: str | None = None
        # The cache's result (hit, miss, stale, revalidated, bypass, coalesced) for the
        # access line; None when the route has no cache.
        self.cache: str | None = None
        # The coding the response was compressed with, for the access line; None when not.
        self.compression: str | None = None

    def __repr__(self) -> str:
        return f"<ProxyRequest {self.method} {self.target!r} id={self.request_id}>"


class ProxyResponse:
    """A response on its way back to the client."""

    __slots__ = (
        "body",
        "content_length",
        "headers",
        "reason",
        "release",
        "status",
        "tunnel",
        "upstream",
        "upstream_seconds",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        *,
        headers: Headers | None = None,
        body: BodyStream | None = None,
        content_length: int | None = None,
        release: Callable[[], Awaitable[None]] | None = None,
        upstream: str | None = None,
        upstream_seconds: float | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers: Headers = [] if headers is None else headers
        # None means no body at all (HEAD, 204, 304); an iterator streams the body.
        self.body = body
        # Known length of ``body``; None streams with chunked framing (or close-delimited for
        # HTTP/1.0).
        self.content_length = content_length
        # Awaited once the response is finished or abandoned (returns the upstream
        # connection).
        self.release = release
        # The upstream that answered and the time to its response head, for logs and metrics.
        self.upstream = upstream
        self.upstream_seconds = upstream_seconds
        # A 101 from a WebSocket route: the `gateway.websocket.stage.Tunnel` the server opens
        # once the 101 is written (typed loosely: messages know nothing of WebSockets).
        self.tunnel: object | None = None

    def __repr__(self) -> str:
        return f"<ProxyResponse {self.status} {self.reason!r}>"


class CompleteBody:
    """A body that is whole in memory (a cache hit): the server writes it with the head in one
    send, as it does an upstream body that already arrived whole."""

    __slots__ = ("_data", "_done")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._done = not data

    def __aiter__(self) -> CompleteBody:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        self._done = True
        return self._data

    def take_complete(self) -> bytes:
        """All that is left of the body (then nothing is)."""
        if self._done:
            return b""
        self._done = True
        return self._data


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    """All values of the field ``name`` (lower-case bytes), in order."""
    return [v for k, v in headers if k.lower() == name]
