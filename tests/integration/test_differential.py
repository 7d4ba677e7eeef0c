"""Differential test: the same raw requests sent straight to an upstream and through the gateway.

Every request in the corpus is written byte for byte on a raw socket, once to a recording upstream
(`tests.recording_upstream`) and once to a gateway with one route to that upstream. Then:

Upstream side (what the origin saw): method, request target byte for byte, de-framed body and
the header list in order must be equal once both sides drop only what RFC 9110 §7.6 lets an
intermediary change:

- hop-by-hop fields (§7.6.1): Connection and every field it names, Keep-Alive,
  Proxy-Connection and any other ``Proxy-*``, TE, Trailer, Transfer-Encoding, Upgrade;
- framing: Content-Length and chunked may differ (RFC 9112 §6), so the de-framed bodies are
  compared instead; but a request that arrived with a Content-Length still carries the same
  Content-Length and is not re-chunked;
- the gateway's own additions: X-Forwarded-For/-Proto/-Host, Via (§7.6.3) and X-Request-ID.

Field values are compared without leading and trailing whitespace: OWS around a field value is
not part of it (RFC 9110 §5.5) and parsers differ in whether they trim the trailing part (llhttp
keeps it). Names are compared byte for byte, case included: RFC 9110 §5.1 makes names
case-insensitive, but the gateway documents that it keeps "order, case and bytes"
(`gateway.headers.upstream_request_headers`). The version the upstream sees through the
gateway is always 1.1 (the gateway speaks HTTP/1.1 to its upstreams; §6.2).

Client side (what the client got): status, reason phrase, de-framed body (none for HEAD, 204 and
304) and the header list in order must be equal once both sides drop hop-by-hop fields, framing,
Date (a recipient must add Date when it forwards a response that has none, §6.6.1, so its value
is the gateway's clock) and the gateway's Via and X-Request-ID. Duplicate Set-Cookie fields stay
separate and in order (RFC 9110 §5.3, RFC 6265 §3). The reason phrase is compared exactly too:
RFC 9112 §4 allows an intermediary to replace it, but the gateway relays the upstream's phrase
on purpose (`ProxyResponse.reason`), and losing it is a regression worth seeing. Also checked on
the client side: a HEAD answer keeps the upstream's Content-Length (RFC 9110 §9.3.2), an
HTTP/1.0 client never gets Transfer-Encoding (RFC 9112 §6.1), a body without a length is ended
by closing the connection (RFC 9112 §6.3 rule 8, §9.3) and no bytes follow a response.

Plus: through the gateway the upstream records exactly as many requests as it does directly (a
request the upstream itself refuses is refused at the edge too, never forwarded; the only
requests the gateway refuses on its own are dot-segment paths, an edge policy in
`gateway.edge`), and the whole corpus replayed over one client connection keeps that connection
open wherever HTTP allows and reuses a few pooled upstream connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

import httptools
import pytest
import pytest_asyncio

from gateway.app import start
from tests.harness import LOCAL, gateway_config, upstream_to
from tests.recording_upstream import BIG_BODY, RecordedRequest, RecordingUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Guards against a hang, not a timing assertion: every exchange here is local and immediate.
READ_TIMEOUT = 10.0

Fields = tuple[tuple[bytes, bytes], ...]

# RFC 9110 §7.6.1 (and Proxy-* fields, §11.7): meaningful for one connection only.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
# Fields the gateway adds to every forwarded request (RFC 9110 §7.6.3, the de facto
# X-Forwarded-* and request-id conventions, and W3C trace context: the gateway is a hop of the
# trace, so traceparent carries its own span id).
GATEWAY_REQUEST_FIELDS = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"via",
        b"x-request-id",
        b"traceparent",
    }
)
GATEWAY_RESPONSE_FIELDS = frozenset({b"via", b"x-request-id", b"date"})

HOST = b"Host: diff.test"


def raw(request_line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    return request_line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def chunked(*chunks: bytes) -> bytes:
    """Chunked framing with a chunk extension on every chunk (RFC 9112 §7.1.1)."""
    out = b"".join(
        b"%x;n=%d;flag\r\n%s\r\n" % (len(chunk), index, chunk) for index, chunk in enumerate(chunks)
    )
    return out + b"0\r\n\r\n"


GZIP_REQUEST = gzip.compress(b'{"key": "value"}\n' * 100, mtime=0)
ONE_MIB = b"0123456789abcdef" * 65536
JSON_QUERY = b'{"q": "x"}'
PROPFIND = b"<propfind xmlns='DAV:'/>"


@dataclass(frozen=True)
class Case:
    id: str
    request: bytes
    # Both the upstream and the gateway must refuse it with 400 (RFC 9112 §3: an invalid
    # request-line SHOULD get 400); nothing reaches the upstream's application.
    invalid: bool = False
    # Valid HTTP the gateway refuses by policy with 400 and forwards nothing (the reason).
    edge_refuses: str | None = None

    @property
    def refused_by_gateway(self) -> bool:
        return self.invalid or self.edge_refuses is not None

    @property
    def method(self) -> bytes:
        return self.request.split(b" ", 1)[0]

    @property
    def http10(self) -> bool:
        return self.request.split(b"\r\n", 1)[0].endswith(b"HTTP/1.0")

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        head = self.request.split(b"\r\n\r\n", 1)[0]
        return [
            (name, value.strip(b" \t"))
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        ]

    @property
    def client_connection_closes(self) -> bool | None:
        """Whether the gateway must close the client connection after answering (None: may).

        It must after ``Connection: close`` and after HTTP/1.0 without keep-alive (RFC 9112
        §9.3, §9.6), and after a rejected request (the edge closes after a 400, HARDENING.md
        §A). HTTP/1.0 keep-alive is the server's choice.
        """
        options = tokens_of(self.fields, b"connection")
        if self.refused_by_gateway or b"close" in options:
            return True
        if self.http10:
            return None if b"keep-alive" in options else True
        return False

    @property
    def upstream_closes(self) -> bool:
        """Whether the upstream closes its connection after answering this case's request."""
        line = self.request.split(b"\r\n", 1)[0]
        return b" /r/close" in line or b" /r/eof" in line


CORPUS: tuple[Case, ...] = (
    # Methods.
    Case("get", raw(b"GET /r/cl HTTP/1.1", HOST, b"Accept: */*")),
    Case("head-content-length", raw(b"HEAD /r/cl HTTP/1.1", HOST)),
    Case("head-chunked", raw(b"HEAD /r/chunked HTTP/1.1", HOST)),
    Case("head-big", raw(b"HEAD /r/big HTTP/1.1", HOST)),
    Case("head-close-delimited", raw(b"HEAD /r/eof HTTP/1.1", HOST)),
    Case(
        "post-content-length",
        raw(
            b"POST /submit HTTP/1.1",
            HOST,
            b"Content-Type: application/x-www-form-urlencoded",
            b"Content-Length: 7",
            body=b"a=1&b=2",
        ),
    ),
    Case(
        "put-chunked-extensions",
        raw(
            b"PUT /upload HTTP/1.1",
            HOST,
            b"Content-Type: text/plain",
            b"Transfer-Encoding: chunked",
            body=chunked(b"hello", b", ", b"chunked" * 100, b" world"),
        ),
    ),
    Case(
        "patch-content-length-0",
        raw(b"PATCH /item/7 HTTP/1.1", HOST, b"Content-Length: 0"),
    ),
    Case(
        "post-content-length-0",
        raw(b"POST /r/empty HTTP/1.1", HOST, b"Content-Type: text/plain", b"Content-Length: 0"),
    ),
    Case("delete", raw(b"DELETE /item/7 HTTP/1.1", HOST)),
    Case(
        "get-with-body",
        raw(
            b"GET /search HTTP/1.1", HOST, b"Content-Length: %d" % len(JSON_QUERY), body=JSON_QUERY
        ),
    ),
    Case(
        "extension-method",
        raw(
            b"PROPFIND /dav/ HTTP/1.1",
            HOST,
            b"Depth: 1",
            b"Content-Type: application/xml",
            b"Content-Length: %d" % len(PROPFIND),
            body=PROPFIND,
        ),
    ),
    Case("options", raw(b"OPTIONS /r/204 HTTP/1.1", HOST)),
    Case("options-asterisk", raw(b"OPTIONS * HTTP/1.1", HOST)),
    Case(
        "post-1mib",
        raw(
            b"POST /big HTTP/1.1",
            HOST,
            b"Content-Type: application/octet-stream",
            b"Content-Length: %d" % len(ONE_MIB),
            body=ONE_MIB,
        ),
    ),
    Case(
        "post-1mib-chunked",
        raw(
            b"POST /big HTTP/1.1",
            HOST,
            b"Transfer-Encoding: chunked",
            body=chunked(ONE_MIB[:300_000], ONE_MIB[300_000:700_001], ONE_MIB[700_001:]),
        ),
    ),
    Case(
        "post-gzip-content-encoding",
        raw(
            b"POST /gz HTTP/1.1",
            HOST,
            b"Content-Type: application/json",
            b"Content-Encoding: gzip",
            b"Content-Length: %d" % len(GZIP_REQUEST),
            body=GZIP_REQUEST,
        ),
    ),
    # Request targets, which must arrive byte for byte.
    Case("target-encoded-slash", raw(b"GET /a%2Fb HTTP/1.1", HOST)),
    Case("target-encoded-nul", raw(b"GET /x%00y?z=%00 HTTP/1.1", HOST)),
    Case("target-bad-percent", raw(b"GET /x%zz?y=%zz&%2 HTTP/1.1", HOST)),
    Case("target-encoded-utf8", raw(b"GET /caf%C3%A9/%E2%82%AC?q=%C3%A9 HTTP/1.1", HOST)),
    Case("target-raw-utf8", raw(b"GET /caf\xc3\xa9?q=\xe2\x82\xac HTTP/1.1", HOST), invalid=True),
    Case("target-params", raw(b"GET /p;a=1;b=2/q;c?d=;e HTTP/1.1", HOST)),
    Case("target-double-slashes", raw(b"GET //double//slashes// HTTP/1.1", HOST)),
    # gateway/edge.py refuses dot-segments: routing compares the raw path and the upstream would
    # resolve them, so "/public/../admin" could leave its route.
    Case(
        "target-dot-segments",
        raw(b"GET /a/./b/../c HTTP/1.1", HOST),
        edge_refuses="dot-segments",
    ),
    Case(
        "target-encoded-dot-segments",
        raw(b"GET /a/%2e%2E/c HTTP/1.1", HOST),
        edge_refuses="dot-segments",
    ),
    Case("target-bare-query", raw(b"GET /q? HTTP/1.1", HOST)),
    Case("target-long-query", raw(b"GET /q?k=" + b"v" * 4000 + b"&page=2 HTTP/1.1", HOST)),
    # Header fields.
    Case(
        "repeated-fields",
        raw(
            b"GET /dup HTTP/1.1",
            HOST,
            b"X-Dup: one",
            b"Cookie: c=1",
            b"X-Dup: two",
            b"Cookie: d=2",
            b"X-Dup: three, four",
        ),
    ),
    Case(
        "mixed-case-names",
        raw(
            b"GET /case HTTP/1.1",
            HOST,
            b"x-MiXeD-CaSe: v",
            b"ACCEPT: text/html",
            b"accept-language: en",
        ),
    ),
    Case(
        "value-whitespace",
        raw(
            b"GET /ws HTTP/1.1",
            HOST,
            b"X-Spaces:   a  b\t c  \t ",
            b"X-Tab:\tvalue",
            b"X-Empty:",
            b'X-Quoted: "a  b" , c',
        ),
    ),
    Case("accept-encoding-gzip", raw(b"GET /r/gzip HTTP/1.1", HOST, b"Accept-Encoding: gzip")),
    Case("http10", raw(b"GET /r/cl HTTP/1.0", HOST, b"User-Agent: old/1.0")),
    Case("http10-chunked-upstream", raw(b"GET /r/chunked HTTP/1.0", HOST)),
    Case("http10-keep-alive", raw(b"GET /r/cl HTTP/1.0", HOST, b"Connection: keep-alive")),
    Case(
        "http10-keep-alive-chunked-upstream",
        raw(b"GET /r/chunked HTTP/1.0", HOST, b"Connection: keep-alive"),
    ),
    Case(
        "client-hop-by-hop",
        raw(
            b"GET /r/cl HTTP/1.1",
            HOST,
            b"Connection: close, TE, X-Hop",
            b"TE: trailers",
            b"X-Hop: 1",
            b"Keep-Alive: timeout=5",
            b"Proxy-Connection: keep-alive",
            b"X-End-To-End: 1",
        ),
    ),
    # Responses of every shape.
    Case("response-chunked", raw(b"GET /r/chunked HTTP/1.1", HOST)),
    Case("response-empty", raw(b"GET /r/empty HTTP/1.1", HOST)),
    Case("response-204", raw(b"DELETE /r/204 HTTP/1.1", HOST)),
    Case("response-304", raw(b"GET /r/304 HTTP/1.1", HOST, b'If-None-Match: "v1"')),
    Case("response-set-cookies", raw(b"GET /r/cookies HTTP/1.1", HOST)),
    Case("response-reason", raw(b"GET /r/reason HTTP/1.1", HOST)),
    Case("response-1mib", raw(b"GET /r/big HTTP/1.1", HOST)),
    Case("response-spacing", raw(b"GET /r/spacing HTTP/1.1", HOST)),
    Case("response-close", raw(b"GET /r/close HTTP/1.1", HOST)),
    Case("response-close-delimited", raw(b"GET /r/eof HTTP/1.1", HOST)),
    Case("response-hop-by-hop", raw(b"GET /r/hop HTTP/1.1", HOST)),
    Case(
        "response-close-after-body",
        raw(b"POST /r/close HTTP/1.1", HOST, b"Content-Length: 5", body=b"abcde"),
    ),
    Case("after-close", raw(b"GET /r/cl HTTP/1.1", HOST)),
)


# --- the client side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    reason: bytes
    headers: Fields
    body: bytes
    # Whether the body came with chunked framing.
    chunked: bool
    # Whether the connection may carry another request (RFC 9112 §9.3).
    keep_alive: bool


class _ResponseParser:
    """httptools callbacks for one response."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.reason = bytearray()
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.chunked = False
        self.heads = 0
        self.complete = False

    def on_message_begin(self) -> None:
        self.heads += 1

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((bytes(name), bytes(value)))

    def on_chunk_header(self) -> None:
        self.chunked = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def values_of(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value.strip(b" \t") for key, value in headers if key.lower() == name]


def tokens_of(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    """The elements of a comma-list field over all its lines, lower-cased (RFC 9110 §5.6.1)."""
    return {
        element.strip(b" \t").lower()
        for value in values_of(headers, name)
        for element in value.split(b",")
        if element.strip(b" \t")
    }


async def read_response(reader: asyncio.StreamReader, method: bytes) -> Response:
    """Read exactly one response; HEAD, 1xx, 204 and 304 answers end with their head."""
    state = _ResponseParser()
    parser = state.parser
    status = 0
    bodiless = False
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as error:
                raise AssertionError(f"closed before a response head: {error.partial!r}") from None
            parser.feed_data(head)
            status = int(parser.get_status_code())
            bodiless = method == b"HEAD" or status in (204, 304) or status < 200
            while not bodiless and not state.complete:
                data = await reader.read(65536)
                if not data:
                    framed = values_of(state.headers, b"content-length") or state.chunked
                    assert not framed, "connection closed before the end of a framed body"
                    break  # a close-delimited body (RFC 9112 §6.3, rule 8) ends here
                parser.feed_data(data)
    except TimeoutError:
        raise AssertionError(
            f"response unfinished after {READ_TIMEOUT} s with the connection still open: "
            f"status {status}, fields {state.headers}, {len(state.body)} body bytes"
        ) from None
    assert state.heads == 1, "bytes after the end of the response"
    version = str(parser.get_http_version())
    options = tokens_of(state.headers, b"connection")
    close_delimited = not bodiless and not state.complete
    keep_alive = (
        b"close" not in options
        and (version == "1.1" or b"keep-alive" in options)
        and not close_delimited
    )
    return Response(
        status=status,
        reason=bytes(state.reason),
        headers=tuple(state.headers),
        body=bytes(state.body),
        chunked=state.chunked,
        keep_alive=keep_alive,
    )


class RawClient:
    """One client connection that sends raw requests one after another."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(LOCAL, port)
        return cls(reader, writer)

    async def send(self, case: Case) -> Response:
        self.writer.write(case.request)
        await self.writer.drain()
        return await read_response(self.reader, case.method)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@dataclass(frozen=True)
class Exchange:
    response: Response
    # What the upstream recorded while the request was answered.
    seen: tuple[RecordedRequest, ...]


async def exchange(client: RawClient, upstream: RecordingUpstream, case: Case) -> Exchange:
    before = len(upstream.requests)
    response = await client.send(case)
    return Exchange(response, tuple(upstream.requests[before:]))


async def exchange_once(port: int, upstream: RecordingUpstream, case: Case) -> Exchange:
    client = await RawClient.connect(port)
    try:
        return await exchange(client, upstream, case)
    finally:
        await client.close()


# --- the comparisons ------------------------------------------------------------------------


def end_to_end(headers: Sequence[tuple[bytes, bytes]], excluded: frozenset[bytes]) -> Fields:
    """The fields left once hop-by-hop ones, those Connection names and ``excluded`` go.

    Names keep their bytes; values lose surrounding whitespace (RFC 9110 §5.5).
    """
    named = tokens_of(headers, b"connection")
    return tuple(
        (name, value.strip(b" \t"))
        for name, value in headers
        if (lowered := name.lower()) not in HOP_BY_HOP
        and not lowered.startswith(b"proxy-")
        and lowered not in named
        and lowered not in excluded
    )


def assert_same_upstream_view(direct: RecordedRequest, proxied: RecordedRequest) -> None:
    assert proxied.method == direct.method
    assert proxied.target == direct.target
    assert proxied.version == "1.1"
    assert proxied.body == direct.body
    excluded = FRAMING | GATEWAY_REQUEST_FIELDS
    assert end_to_end(proxied.headers, excluded) == end_to_end(direct.headers, excluded)
    declared = values_of(direct.headers, b"content-length")
    if declared and not direct.chunked:
        # The gateway may not change how a length-delimited request is framed.
        assert values_of(proxied.headers, b"content-length") == declared
        assert not proxied.chunked


def assert_same_client_view(case: Case, direct: Response, proxied: Response) -> None:
    assert proxied.status == direct.status
    if case.invalid:
        return  # the gateway's 400 carries its own JSON error body
    assert proxied.reason == direct.reason
    assert proxied.body == direct.body
    excluded = FRAMING | GATEWAY_RESPONSE_FIELDS
    assert end_to_end(proxied.headers, excluded) == end_to_end(direct.headers, excluded)
    # RFC 9110 §6.6.1: a recipient with a clock adds Date to a response it forwards without one.
    assert len(values_of(proxied.headers, b"date")) == 1
    if case.method == b"HEAD":
        # RFC 9110 §9.3.2 and §8.6: a HEAD answer carries the length a GET would have had.
        assert values_of(proxied.headers, b"content-length") == values_of(
            direct.headers, b"content-length"
        )
    if case.http10:
        # RFC 9112 §6.1: never Transfer-Encoding to an HTTP/1.0 client.
        assert not values_of(proxied.headers, b"transfer-encoding")
        assert not proxied.chunked


def assert_same_exchange(case: Case, direct: Exchange, proxied: Exchange) -> None:
    if case.edge_refuses is not None:
        assert proxied.response.status == 400
        assert proxied.seen == ()
        return
    # The gateway never forwards what the upstream would not have taken directly, and never
    # forwards anything twice.
    assert len(proxied.seen) == len(direct.seen), [r.target for r in proxied.seen]
    for direct_request, proxied_request in zip(direct.seen, proxied.seen, strict=True):
        assert_same_upstream_view(direct_request, proxied_request)
    assert_same_client_view(case, direct.response, proxied.response)


# --- the stack ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    upstream: RecordingUpstream
    gateway_port: int
    # The corpus sent straight to the upstream, one connection per request.
    direct: dict[str, Exchange]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack() -> AsyncIterator[Stack]:
    async with RecordingUpstream() as upstream:
        direct: dict[str, Exchange] = {}
        for case in CORPUS:
            result = await exchange_once(upstream.port, upstream, case)
            # The oracle itself: one recorded request per valid case, none for an invalid one.
            assert len(result.seen) == (0 if case.invalid else 1), case.id
            assert (result.response.status == 400) == case.invalid, case.id
            direct[case.id] = result
        assert len(upstream.rejected) == sum(case.invalid for case in CORPUS)
        assert direct["post-1mib"].seen[0].body == ONE_MIB
        assert direct["response-1mib"].response.body == BIG_BODY
        gateway = await start(gateway_config([upstream_to("recording", upstream.port)]))
        try:
            yield Stack(upstream, gateway.address[1], direct)
        finally:
            await gateway.drain(1.0)


@pytest.mark.parametrize("case", CORPUS, ids=[case.id for case in CORPUS])
async def test_gateway_matches_direct(stack: Stack, case: Case) -> None:
    rejected = len(stack.upstream.rejected)
    proxied = await exchange_once(stack.gateway_port, stack.upstream, case)
    assert_same_exchange(case, stack.direct[case.id], proxied)
    # A request the upstream refuses is refused at the edge: its bytes never reach the upstream.
    assert len(stack.upstream.rejected) == rejected


async def test_corpus_over_one_client_connection(stack: Stack) -> None:
    """The corpus in order on one client connection, reopened only where the gateway must close.

    Sequential requests, no pipelining. The gateway keeps the client connection across every
    case except those where it must close (`Case.client_connection_closes`), and its pool reuses
    upstream connections: a new one is only needed after the upstream closed the previous one
    (``/r/close``, ``/r/eof``). Reading each response to its exact end on a shared connection
    also proves that no response (HEAD, 204, 304 in particular) carries stray bytes.
    """
    upstream = stack.upstream
    first = len(upstream.requests)
    client: RawClient | None = None
    opened = 0
    try:
        for case in CORPUS:
            if client is None:
                client = await RawClient.connect(stack.gateway_port)
                opened += 1
            proxied = await exchange(client, upstream, case)
            assert_same_exchange(case, stack.direct[case.id], proxied)
            closes = case.client_connection_closes
            if closes is not None:
                assert proxied.response.keep_alive == (not closes), case.id
            if not proxied.response.keep_alive:
                await client.close()
                client = None
    finally:
        if client is not None:
            await client.close()
    may_close = sum(case.client_connection_closes is not False for case in CORPUS[:-1])
    assert opened <= 1 + may_close
    upstream_connections = {request.connection for request in upstream.requests[first:]}
    upstream_closes = sum(case.upstream_closes for case in CORPUS[:-1])
    assert len(upstream_connections) <= 1 + upstream_closes
