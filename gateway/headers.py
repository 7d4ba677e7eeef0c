"""Header rewriting at the edge: hop-by-hop removal, X-Forwarded-*, Via, request ids, client IP.

RFC 9110 §7.6 and HARDENING.md §B. Everything works on raw ``(name, value)`` byte pairs in wire
order (`gateway.messages.Headers`): duplicates (``Set-Cookie``, two ``Cookie`` lines) stay separate
fields in their order and values pass through byte for byte, never decoded.

These run on every request, so the loops are written for CPython: names are lowered once, sets
of lower-case names replace comparisons, and single bytes are tested as ints (``13 in value`` is
several times cheaper than ``b"\\r" in value``).
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Iterable, Sequence

from gateway.config.model import IPNetwork
from gateway.messages import Headers

__all__ = [
    "HOP_BY_HOP",
    "downstream_response_headers",
    "is_trusted_peer",
    "is_valid_request_id",
    "new_request_id",
    "parse_host",
    "resolve_client_ip",
    "strip_hop_by_hop",
    "upstream_request_headers",
    "via_value",
]

# RFC 9110 §7.6.1: Connection and the fields it names are for one connection only. Keep-Alive,
# Proxy-Connection (pre-standard), TE, Transfer-Encoding and Upgrade are listed there as fields
# an intermediary must not forward without Connection naming them, Trailer with them (the
# gateway does not relay trailers). Proxy-Authorization and Proxy-Authenticate (RFC 9110 §11.7)
# belong to the hop that asked for them; an edge gateway is not the client's forward proxy.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

_CONNECTION = b"connection"
_X_FORWARDED_FOR = b"x-forwarded-for"
_X_FORWARDED_PROTO = b"x-forwarded-proto"
_X_FORWARDED_HOST = b"x-forwarded-host"

# Fields the client must not choose: Host is written by the upstream pool (per the upstream's
# host_header), Content-Length by the transport (it frames the body it actually sends), and the
# request id is the gateway's.
_REQUEST_DROP: frozenset[bytes] = HOP_BY_HOP | {b"host", b"content-length", b"x-request-id"}
# From a peer we do not trust, anything claiming to describe earlier hops is a spoof
# (HARDENING.md §B): drop it and describe the connection we actually see.
_FORWARDING: frozenset[bytes] = frozenset(
    {_X_FORWARDED_FOR, _X_FORWARDED_PROTO, _X_FORWARDED_HOST, b"forwarded", b"x-real-ip"}
)
_REQUEST_DROP_UNTRUSTED: frozenset[bytes] = _REQUEST_DROP | _FORWARDING
# From a trusted proxy the X-Forwarded-* values are read and written back once, at the end.
_REQUEST_REWRITE_TRUSTED: frozenset[bytes] = frozenset(
    {_X_FORWARDED_FOR, _X_FORWARDED_PROTO, _X_FORWARDED_HOST}
)
# The server frames the response itself; the upstream's request id is replaced by ours.
_RESPONSE_DROP: frozenset[bytes] = HOP_BY_HOP | {b"content-length", b"x-request-id"}

_OWS = b" \t"


def _connection_options(headers: Headers) -> frozenset[bytes]:
    """Lower-case field names listed in any Connection field (RFC 9110 §7.6.1).

    Connection is a comma list (§5.6.1) that may be split over several lines, with optional
    whitespace around elements and empty elements, and its tokens are case-insensitive.
    """
    names: set[bytes] = set()
    for name, value in headers:
        # Length first: most names are not 10 bytes long and skip the lower().
        if len(name) == 10 and name.lower() == _CONNECTION:
            for element in value.split(b","):
                token = element.strip(_OWS)
                if token:
                    names.add(token.lower())
    return frozenset(names)


def _splits_lines(name: bytes, value: bytes) -> bool:
    """Whether a field holds CR, LF or NUL, which is never written out (RFC 9110 §5.5).

    The C parsers reject most of it already; this guarantees no field the gateway writes can
    split into two lines (HARDENING.md §B).
    """
    return 13 in value or 10 in value or 0 in value or 13 in name or 10 in name or 0 in name


def strip_hop_by_hop(headers: Headers) -> Headers:
    """The end-to-end fields: without HOP_BY_HOP names and every field Connection names."""
    named = _connection_options(headers)
    if named:
        return [
            (name, value)
            for name, value in headers
            if (lname := name.lower()) not in HOP_BY_HOP and lname not in named
        ]
    return [(name, value) for name, value in headers if name.lower() not in HOP_BY_HOP]


# RFC 3986 §3.2.2 reg-name = *( unreserved / pct-encoded / sub-delims ).
_REG_NAME_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;="
_HEX = frozenset(b"0123456789abcdefABCDEF")


def parse_host(value: bytes) -> str | None:
    """The host of a Host field value (RFC 9110 §7.2), lower-cased and without port.

    Accepted: ``uri-host [ ":" port ]`` with uri-host a reg-name (which covers IPv4 literals,
    RFC 3986 §3.2.2) or a bracketed IPv6 literal. Returns None for anything malformed: empty,
    spaces or control characters inside, userinfo (``@``), a port that is empty, not 1-5 digits
    or above 65535, unbalanced brackets, an invalid IPv6 literal, a zone id, or IPvFuture.

    Decisions:

    - Leading and trailing spaces or tabs are not part of a field value (RFC 9110 §5.5) and are
      ignored; any inside are an error.
    - An empty port (``example.com:``) is allowed by the grammar but refused here: nothing
      legitimate sends it, and the edge is strict.
    - One trailing dot is removed (``example.com.`` is the same absolute name, RFC 1034 §3.1),
      so it routes like ``example.com``; ``.`` alone is refused.
    - IPv6 literals keep their brackets (so the result never looks like ``host:port`` and equals
      what ``Target.authority`` writes) and are put in canonical form (RFC 5952), so
      ``[0:0::1]`` and ``[::1]`` route and cache alike.
    - Percent-encoded reg-names are checked (two hex digits) but not decoded.
    """
    value = value.strip(_OWS)
    if not value:
        return None
    if value[0] == 0x5B:  # "[": IP-literal = "[" ( IPv6address / IPvFuture ) "]"
        end = value.find(b"]")
        if end < 0:
            return None
        literal = value[1:end]
        port = value[end + 1 :]
        # ipaddress accepts a "%zone" suffix (RFC 4007), which has no place in a Host field.
        if not literal.isascii() or 37 in literal:
            return None
        try:
            host = f"[{ipaddress.IPv6Address(literal.decode('ascii')).compressed}]"
        except ValueError:
            return None
    else:
        colon = value.find(b":")
        if colon < 0:
            raw, port = value, b""
        else:
            raw, port = value[:colon], value[colon:]
        if not raw or raw.translate(None, _REG_NAME_CHARS):
            return None
        if 37 in raw and not _valid_percent_encoding(raw):  # "%"
            return None
        if raw.endswith(b"."):
            raw = raw[:-1]
            if not raw:
                return None
        host = raw.lower().decode("ascii")
    if port and not _valid_port(port):
        return None
    return host


def _valid_percent_encoding(raw: bytes) -> bool:
    parts = raw.split(b"%")
    return all(len(part) >= 2 and part[0] in _HEX and part[1] in _HEX for part in parts[1:])


def _valid_port(port: bytes) -> bool:
    """``":" port`` with 1-5 ASCII digits and a value that fits in 16 bits."""
    digits = port[1:]
    return (
        port[0] == 0x3A  # ":"
        and 0 < len(digits) <= 5
        and digits.isdigit()  # bytes.isdigit is ASCII-only
        and int(digits) <= 65535
    )


# An address as (IP version, integer value). The stdlib ipaddress module is pure Python and
# costs microseconds per parse; inet_pton is C, strict (no leading zeros, no shorthand IPv4,
# no zone ids) and a tenth of that.
_Address = tuple[int, int]
_MAPPED_PREFIX = 0xFFFF  # ::ffff:0:0/96 (RFC 4291 §2.5.5.2), seen from dual-stack sockets


def _parse_ip(text: str) -> _Address | None:
    """A bare IPv4 or IPv6 address; IPv4-mapped IPv6 (``::ffff:a.b.c.d``) becomes IPv4.

    Dual-stack sockets report IPv4 peers in mapped form; unmapping lets one trusted_proxies
    entry (and one rate-limit key) cover both spellings of the same host.
    """
    # 45 characters is the longest IPv6 text form; anything longer is not an address.
    if len(text) > 45:
        return None
    try:
        if ":" in text:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
            if value >> 32 == _MAPPED_PREFIX:
                return (4, value & 0xFFFFFFFF)
            return (6, value)
        return (4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


def _format_ip(address: _Address) -> str:
    """The canonical text form (RFC 5952 for IPv6, as inet_ntop writes it)."""
    version, value = address
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def _network_ints(trusted: Sequence[IPNetwork]) -> list[tuple[int, int, int]]:
    """``(version, network, netmask)`` integers, IPv4-mapped IPv6 networks as IPv4 ones."""
    networks: list[tuple[int, int, int]] = []
    for network in trusted:
        version = network.version
        base = int(network.network_address)
        mask = int(network.netmask)
        if version == 6 and base >> 32 == _MAPPED_PREFIX and network.prefixlen >= 96:
            version, base, mask = 4, base & 0xFFFFFFFF, mask & 0xFFFFFFFF
        networks.append((version, base, mask))
    return networks


def _in_networks(address: _Address, networks: list[tuple[int, int, int]]) -> bool:
    version, value = address
    for net_version, base, mask in networks:
        if net_version == version and value & mask == base:
            return True
    return False


def is_trusted_peer(peer_ip: str, trusted: Sequence[IPNetwork]) -> bool:
    """Whether the TCP peer is one of the configured trusted proxies (``peer_trusted``)."""
    if not trusted:
        return False
    address = _parse_ip(peer_ip)
    return address is not None and _in_networks(address, _network_ints(trusted))


def _list_elements(values: Iterable[bytes]) -> list[bytes]:
    """A comma list's elements over all its field lines, empty ones ignored (RFC 9110 §5.6.1)."""
    elements: list[bytes] = []
    for value in values:
        for raw in value.split(b","):
            element = raw.strip(_OWS)
            if element:
                elements.append(element)
    return elements


def resolve_client_ip(
    peer_ip: str, forwarded_for: Sequence[bytes], trusted: Sequence[IPNetwork]
) -> str:
    """The client's address: the TCP peer, or what trusted proxies say in X-Forwarded-For.

    If the peer is not a trusted proxy, the peer is the client (anything it wrote is a claim).
    Otherwise walk the X-Forwarded-For elements (all field lines, in order) from the right, each
    appended by the hop before: skip trusted addresses; the first untrusted one is the client
    (HARDENING.md §B). If every element is trusted, the leftmost is the client. An element that
    is not a bare IP address ends the walk: the last trusted hop walked is the client (the peer
    when it is the first element read). Empty elements are skipped.

    Addresses from X-Forwarded-For are returned in canonical form (as inet_ntop writes them,
    IPv4-mapped IPv6 unmapped) so one client cannot appear under several spellings; the peer is
    returned as given.
    """
    if not trusted or not forwarded_for:
        return peer_ip
    peer = _parse_ip(peer_ip)
    if peer is None:
        return peer_ip
    networks = _network_ints(trusted)
    if not _in_networks(peer, networks):
        return peer_ip
    walked: _Address | None = None  # the last trusted hop walked
    for element in reversed(_list_elements(forwarded_for)):
        # Non-ASCII bytes cannot be an address; latin-1 maps them to text inet_pton refuses.
        address = _parse_ip(element.decode("latin-1"))
        if address is None:
            break
        walked = address
        if not _in_networks(address, networks):
            break
    return peer_ip if walked is None else _format_ip(walked)


_REQUEST_ID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~:+/=-"


def is_valid_request_id(value: bytes) -> bool:
    """1-128 bytes of ``[A-Za-z0-9._~:+/=-]``: safe to log, echo and forward as is."""
    return 0 < len(value) <= 128 and not value.translate(None, _REQUEST_ID_CHARS)


def new_request_id() -> str:
    """A fresh request id: 128 random bits as 32 lower-case hex characters.

    An id correlates log lines; it is no secret, so the random module's generator serves (seeded
    from the OS, and reseeded in forked children by the module itself): os.urandom costs a
    getrandom syscall per request, 5% of a small request's CPU in a profile under wrk. bytes.hex
    is half the cost of a format spec (``f"{n:032x}"`` goes through str.format).
    """
    return random.getrandbits(128).to_bytes(16, "big").hex()


def via_value(version: tuple[int, int], pseudonym: str) -> bytes:
    """A Via element (RFC 9110 §7.6.3): the protocol version this hop received, then our name.

    ``(1, 1), "gateway"`` gives ``b"1.1 gateway"``; the protocol name is omitted for HTTP.
    HTTP/2 is ``b"2 gateway"`` (its version has no minor part, RFC 9113 §3).
    """
    if version[0] >= 2:
        return f"{version[0]} {pseudonym}".encode()
    return f"{version[0]}.{version[1]} {pseudonym}".encode()


def _last_element(values: list[bytes]) -> bytes | None:
    """The last element of a comma list: the one the nearest (trusted) proxy wrote."""
    elements = _list_elements(values)
    return elements[-1] if elements else None


def upstream_request_headers(
    headers: Headers,
    *,
    peer_trusted: bool,
    peer_ip: str,
    scheme: str,
    authority: bytes,
    request_id: bytes,
    via: bytes,
    end_to_end: bool = False,
) -> Headers:
    """The fields to send upstream, from the client's raw fields.

    ``end_to_end`` says the fields Connection names are gone already (`strip_hop_by_hop` ran
    at the edge, as for every `ProxyRequest`), which saves a second walk to find them.

    Removed, in the client's fields: hop-by-hop fields and every field Connection names
    (RFC 9110 §7.6.1); names containing ``_`` (HARDENING.md §B: ``X_Forwarded_For`` becomes
    ``HTTP_X_FORWARDED_FOR`` in CGI/WSGI environs, where it would pass for the real one);
    Host (the upstream pool writes it), Content-Length (the transport frames the body), any
    X-Request-ID; and, unless the peer is trusted, X-Forwarded-For/-Proto/-Host, Forwarded and
    X-Real-IP (a client's own claims about earlier hops). Any field with CR, LF or NUL in its
    name or value is dropped too. Everything else keeps its order, case and bytes.

    Then appended, after the removals so that no ``Connection`` list can remove them:

    - ``X-Forwarded-For``: for a trusted peer, the existing chain (its elements over all field
      lines, empty ones dropped, joined with ", ") followed by ``peer_ip``; otherwise just
      ``peer_ip``. It is the TCP peer, the
      hop that connected to us, that each proxy appends, not the resolved client;
    - ``X-Forwarded-Proto``: a trusted peer's value if it sent one (the last list element, the
      one the nearest proxy wrote), otherwise ``scheme``;
    - ``X-Forwarded-Host``: likewise, otherwise ``authority`` (the client's Host as sent);
    - ``Via: via`` as a field of its own after any existing Via lines, which stay in place
      (RFC 9110 §7.6.3: each proxy appends; separate lines and a comma list are equivalent,
      §5.3). Build ``via`` with `via_value` from the request's HTTP version;
    - ``X-Request-ID: request_id``.

    A gateway value that is empty (no Host on an HTTP/1.0 request) or contains CR, LF or NUL is
    left out rather than written.
    """
    named = frozenset() if end_to_end else _connection_options(headers)
    drop = _REQUEST_DROP if peer_trusted else _REQUEST_DROP_UNTRUSTED
    chain: list[bytes] = []
    protos: list[bytes] = []
    hosts: list[bytes] = []
    out: Headers = []
    append = out.append
    for name, value in headers:
        lname = name.lower()
        if (
            lname in drop
            or (named and lname in named)
            or 95 in name  # "_"
            or _splits_lines(name, value)
        ):
            continue
        if peer_trusted and lname in _REQUEST_REWRITE_TRUSTED:
            if lname == _X_FORWARDED_FOR:
                chain.append(value)
            elif lname == _X_FORWARDED_PROTO:
                protos.append(value)
            else:
                hosts.append(value)
            continue
        append((name, value))

    peer = peer_ip.encode()
    forwarded_for = b", ".join([*_list_elements(chain), peer]) if chain else peer
    # The peer address and the scheme cannot hold CR, LF or NUL; every other value is checked.
    proto = _last_element(protos) if protos else None
    if proto is None or _splits_lines(b"", proto):
        proto = scheme.encode()
    host = _last_element(hosts) if hosts else None
    if host is None or _splits_lines(b"", host):
        host = authority
    append((b"X-Forwarded-For", forwarded_for))
    append((b"X-Forwarded-Proto", proto))
    if host and not _splits_lines(b"", host):
        append((b"X-Forwarded-Host", host))
    if via and not _splits_lines(b"", via):
        append((b"Via", via))
    if request_id and not _splits_lines(b"", request_id):
        append((b"X-Request-ID", request_id))
    return out


def downstream_response_headers(headers: Headers, *, request_id: bytes, via: bytes) -> Headers:
    """The fields to send the client, from the upstream's raw response fields.

    Removed: hop-by-hop fields and every field Connection names (RFC 9110 §7.6.1),
    Content-Length (the server frames what it actually sends), the upstream's X-Request-ID, and
    any field with CR, LF or NUL. Names with ``_`` are kept: the underscore risk is a request
    reaching a CGI/WSGI environ, which does not apply to a client reading a response, and they
    come from our own upstreams (nginx likewise only filters them in requests). Everything else,
    ``Set-Cookie`` duplicates included, keeps its order and bytes.

    Appended: ``Via: via`` after any existing Via lines (build it with `via_value` from the
    upstream response's HTTP version) and ``X-Request-ID: request_id``.
    """
    named = _connection_options(headers)
    out: Headers = []
    append = out.append
    for name, value in headers:
        lname = name.lower()
        if (
            lname in _RESPONSE_DROP
            or (named and lname in named)
            # _splits_lines, inlined: this loop runs for every field of every response.
            or 13 in value
            or 10 in value
            or 0 in value
            or 13 in name
            or 10 in name
            or 0 in name
        ):
            continue
        append((name, value))
    if not _splits_lines(b"Via", via):
        append((b"Via", via))
    if not _splits_lines(b"X-Request-ID", request_id):
        append((b"X-Request-ID", request_id))
    return out
