"""Turn a parsed client request head into a `ProxyRequest`, refusing what the edge must not pass.

llhttp (the parser in `gateway.downstream`) already rejects most framing attacks;
HARDENING.md §A lists what it lets through and the gateway checks here: unsupported versions,
Transfer-Encoding on HTTP/1.0, missing, repeated or malformed Host, and oversize header blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway import headers as header_rules
from gateway.config.model import IPNetwork, ServerConfig
from gateway.errors import BadRequest, PayloadTooLarge
from gateway.messages import BodyStream, Headers, ProxyRequest, header_values
from gateway.tracing import apply_trace_context

# HTTP/2 streams arrive as version (2, 0) heads (`gateway.downstream.http2`).
_SUPPORTED_VERSIONS = frozenset({(1, 0), (1, 1), (2, 0)})
_ABSOLUTE_PREFIXES = ((b"http://", "http"), (b"https://", "https"))


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    """The parts of the server config the per-request edge checks need, precomputed."""

    max_body: int
    trusted_proxies: tuple[IPNetwork, ...]

    @classmethod
    def from_config(cls, server: ServerConfig) -> EdgeSettings:
        return cls(
            max_body=server.limits.max_body,
            trusted_proxies=server.trusted_proxies,
        )


class RequestHead:
    """What the connection read off the wire, before validation.

    A plain class, not a dataclass: one is built per request, and only a hand-written
    __init__ compiles to C under mypyc (see `gateway.messages`).
    """

    __slots__ = ("method", "notes", "peer_ip", "raw_headers", "raw_target", "version")

    def __init__(
        self,
        method: str,
        raw_target: bytes,
        *,
        version: tuple[int, int],
        raw_headers: Headers,
        peer_ip: str,
        notes: FieldNotes,
    ) -> None:
        self.method = method
        self.raw_target = raw_target  # exactly as received
        self.version = version
        self.raw_headers = raw_headers
        self.peer_ip = peer_ip
        # What the edge needs from the fields, noted as they were parsed (`FieldNotes`), so
        # that the list is not walked once per question.
        self.notes = notes

    def __repr__(self) -> str:
        return f"<RequestHead {self.method} {self.raw_target!r}>"


# What `FieldNotes.note` looks for, by lower-case name.
_HOST, _TE, _HOP, _REQUEST_ID, _EXPECT, _TRACEPARENT, _UPGRADE = range(7)
_NOTABLE: dict[bytes, int] = {
    b"host": _HOST,
    b"transfer-encoding": _TE,
    b"x-request-id": _REQUEST_ID,
    b"expect": _EXPECT,
    b"traceparent": _TRACEPARENT,
    **{
        name: _HOP
        for name in header_rules.HOP_BY_HOP
        if name not in (b"transfer-encoding", b"upgrade")
    },
    b"upgrade": _UPGRADE,
}


class FieldNotes:
    """Facts about a request's fields gathered in the one pass that parses them.

    ``note`` is called for each field in order (by the parser's callback, or by `of` for a
    list); the edge then answers its questions (one Host? Transfer-Encoding? a hop-by-hop field
    to strip? the client's X-Request-ID, Expect and traceparent?) without walking the list.
    """

    __slots__ = (
        "expect",
        "has_te",
        "has_traceparent",
        "hop_by_hop",
        "host",
        "hosts",
        "request_id",
        "upgrade",
    )

    def __init__(self) -> None:
        self.host: bytes | None = None
        self.hosts = 0
        self.has_te = False
        # Any hop-by-hop field (Connection among them): strip_hop_by_hop has work to do.
        self.hop_by_hop = False
        self.request_id: bytes | None = None
        self.expect: bytes | None = None
        self.has_traceparent = False
        # The Upgrade field values (RFC 9110 §7.8), for a WebSocket handshake.
        self.upgrade: list[bytes] | None = None

    def note(self, name: bytes, value: bytes) -> None:
        kind = _NOTABLE.get(name.lower())
        if kind is None:
            return
        if kind == _HOST:
            if self.host is None:
                self.host = value
            self.hosts += 1
        elif kind == _HOP:
            self.hop_by_hop = True
        elif kind == _TE:
            self.has_te = self.hop_by_hop = True
        elif kind == _REQUEST_ID:
            if self.request_id is None:
                self.request_id = value
        elif kind == _EXPECT:
            if self.expect is None:
                self.expect = value
        elif kind == _UPGRADE:
            self.hop_by_hop = True
            if self.upgrade is None:
                self.upgrade = [value]
            else:
                self.upgrade.append(value)
        else:
            self.has_traceparent = True

    @classmethod
    def of(cls, headers: Headers) -> FieldNotes:
        notes = cls()
        for name, value in headers:
            notes.note(name, value)
        return notes


def split_target(target: bytes) -> tuple[bytes, str, bytes | None, str | None]:
    """Return (origin-form target, path, authority from absolute-form, its scheme).

    RFC 9112 §3.2.2: a server MUST accept the absolute-form; the gateway routes on its host and
    path and forwards the origin-form. The asterisk-form (`OPTIONS *`, §3.2.4) passes as is.
    """
    if target.startswith(b"/"):
        query_at = target.find(b"?")
        path = (target if query_at < 0 else target[:query_at]).decode("latin-1")
        return target, path, None, None
    if target == b"*":
        return target, "*", None, None
    lowered = target[:8].lower()
    for prefix, scheme in _ABSOLUTE_PREFIXES:
        if lowered.startswith(prefix):
            rest = target[len(prefix) :]
            cut = len(rest)
            for delimiter in (b"/", b"?", b"#"):
                at = rest.find(delimiter)
                if 0 <= at < cut:
                    cut = at
            authority, origin = rest[:cut], rest[cut:]
            if origin.startswith(b"#"):
                origin = b""
            if not origin.startswith(b"/"):
                origin = b"/" + origin
            query_at = origin.find(b"?")
            path = (origin if query_at < 0 else origin[:query_at]).decode("latin-1")
            return origin, path, authority, scheme
    raise BadRequest("request target must be origin-form, absolute-form or '*'")


def check_head(head: RequestHead) -> tuple[bytes, str, bytes, str]:
    """Validate the head; return (target, path, authority, host) or raise a GatewayError."""
    if head.version not in _SUPPORTED_VERSIONS:
        raise BadRequest(f"unsupported HTTP version {head.version[0]}.{head.version[1]}")
    # The header block's size and field count were checked as it was parsed (431).
    notes = head.notes
    # RFC 9112 §6.1: a server that receives Transfer-Encoding in an HTTP/1.0 message must treat
    # the framing as faulty and close the connection after responding.
    if notes.has_te and head.version == (1, 0):
        raise BadRequest("Transfer-Encoding is not allowed in HTTP/1.0")
    # RFC 9112 §3.2: exactly one Host in HTTP/1.1; more than one is always an error.
    if notes.hosts > 1:
        raise BadRequest("more than one Host header field")
    target, path, absolute_authority, _ = split_target(head.raw_target)
    if _has_dot_segment(path):
        raise BadRequest("request path contains dot-segments")
    if absolute_authority is not None:
        # RFC 9112 §3.2.2: the absolute-form's authority replaces the Host field.
        authority = absolute_authority
    elif notes.host is not None:
        authority = notes.host
    elif head.version != (1, 0):
        # RFC 9112 §3.2 for HTTP/1.1; RFC 9113 §8.3.1 has HTTP/2 requests carry :authority
        # (or Host), and an origin server needs one to route.
        raise BadRequest("missing Host header field")
    else:
        authority = b""
    return target, path, authority, _host_of(authority) if authority else ""


# Host values seen recently and their parsed host. A connection, and most clients, send the
# same few values again and again; parsing one costs 1.6 µs, a dict hit 0.05. Bounded: cleared
# when full, so a client cycling through values gains nothing and costs at most a re-parse.
_HOSTS: dict[bytes, str] = {}
_HOSTS_MAX = 512


def _host_of(authority: bytes) -> str:
    host = _HOSTS.get(authority)
    if host is None:
        host = header_rules.parse_host(authority)
        if host is None:
            raise BadRequest("malformed Host")
        if len(_HOSTS) >= _HOSTS_MAX:
            _HOSTS.clear()
        _HOSTS[authority] = host
    return host


def _has_dot_segment(path: str) -> bool:
    """Whether the path has a "." or ".." segment, also percent-encoded (RFC 3986 §5.2.4).

    Routing compares the raw path, and the upstream would resolve the dot-segments: without
    this, "/public/../admin" matches a "/public" route and reaches "/admin" upstream. Clients
    remove dot-segments before sending (RFC 3986 §5.2), so refusing them costs nothing real.
    """
    if "/." not in path and "%2" not in path.lower():
        return False
    segments = path.lower().replace("%2e", ".").split("/")
    return any(segment in (".", "..") for segment in segments)


def build_request(
    head: RequestHead,
    settings: EdgeSettings,
    body: BodyStream | None,
    content_length: int | None,
    scheme: str = "http",
) -> ProxyRequest:
    """Validate ``head`` and assemble the gateway's request (raises a GatewayError).

    ``scheme`` is the listener's: "https" when it terminates TLS."""
    target, path, authority, host = check_head(head)
    if content_length is not None and content_length > settings.max_body:
        raise PayloadTooLarge(f"request body exceeds {settings.max_body} bytes")
    fields = head.raw_headers
    peer_trusted = header_rules.is_trusted_peer(head.peer_ip, settings.trusted_proxies)
    if peer_trusted:
        forwarded_for = header_values(fields, b"x-forwarded-for")
        client_ip = header_rules.resolve_client_ip(
            head.peer_ip, forwarded_for, settings.trusted_proxies
        )
    else:
        client_ip = head.peer_ip
    notes = head.notes
    request_id = request_id_of(head)
    expect = notes.expect
    expect_continue = (
        expect is not None and head.version != (1, 0) and expect.strip().lower() == b"100-continue"
    )
    # The field list is this request's own: without hop-by-hop fields it goes on as it is.
    end_to_end = header_rules.strip_hop_by_hop(fields) if notes.hop_by_hop else fields
    trace = apply_trace_context(end_to_end, present=notes.has_traceparent)
    return ProxyRequest(
        method=head.method,
        target=target,
        path=path,
        host=host,
        authority=authority,
        headers=end_to_end,
        version=head.version,
        body=body,
        content_length=content_length,
        scheme=scheme,
        client_ip=client_ip,
        peer_ip=head.peer_ip,
        peer_trusted=peer_trusted,
        request_id=request_id,
        expect_continue=expect_continue,
        trace_id=trace.trace_id,
    )


def request_id_of(head: RequestHead) -> str:
    """The client's X-Request-ID (its first one) when it is well formed, else a fresh one."""
    value = head.notes.request_id
    if value is not None and header_rules.is_valid_request_id(value):
        return value.decode("ascii")
    return header_rules.new_request_id()
