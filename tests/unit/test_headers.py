"""Header rewriting, Host parsing, client IP resolution and request ids (gateway.headers)."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.model import IPNetwork
from gateway.headers import (
    HOP_BY_HOP,
    downstream_response_headers,
    is_trusted_peer,
    is_valid_request_id,
    new_request_id,
    parse_host,
    resolve_client_ip,
    strip_hop_by_hop,
    upstream_request_headers,
    via_value,
)
from gateway.messages import Headers

PEER = "203.0.113.7"
RID = b"0123456789abcdef0123456789abcdef"
VIA = b"1.1 gateway"
GATEWAY_REQUEST_FIELDS = [
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
]


def nets(*cidrs: str) -> list[IPNetwork]:
    return [ipaddress.ip_network(c) for c in cidrs]


def up(
    headers: Headers,
    *,
    trusted: bool = False,
    peer: str = PEER,
    scheme: str = "https",
    authority: bytes = b"api.example.com",
) -> Headers:
    return upstream_request_headers(
        headers,
        peer_trusted=trusted,
        peer_ip=peer,
        scheme=scheme,
        authority=authority,
        request_id=RID,
        via=VIA,
    )


def tail(
    xff: bytes = PEER.encode(),
    proto: bytes = b"https",
    host: bytes = b"api.example.com",
) -> Headers:
    """The fields upstream_request_headers appends, in order."""
    return [
        (b"X-Forwarded-For", xff),
        (b"X-Forwarded-Proto", proto),
        (b"X-Forwarded-Host", host),
        (b"Via", VIA),
        (b"X-Request-ID", RID),
    ]


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


# --- HOP_BY_HOP and strip_hop_by_hop -----------------------------------------------------------


def test_hop_by_hop_set() -> None:
    expected = {
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
    assert set(HOP_BY_HOP) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], []),
        ([(b"Accept", b"*/*")], [(b"Accept", b"*/*")]),
        (
            [
                (b"Connection", b"keep-alive"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Proxy-Connection", b"keep-alive"),
                (b"TE", b"trailers"),
                (b"Trailer", b"X-Checksum"),
                (b"Transfer-Encoding", b"chunked"),
                (b"Upgrade", b"websocket"),
                (b"Proxy-Authorization", b"Basic eA=="),
                (b"Proxy-Authenticate", b"Basic"),
                (b"Accept", b"*/*"),
            ],
            [(b"Accept", b"*/*")],
        ),
        # Mixed case names.
        ([(b"CONNECTION", b"close"), (b"tE", b"x"), (b"A", b"1")], [(b"A", b"1")]),
        # Connection names other fields: comma list, any case, optional whitespace.
        (
            [(b"Connection", b"close, X-Foo"), (b"X-Foo", b"1"), (b"X-Bar", b"2")],
            [(b"X-Bar", b"2")],
        ),
        (
            [
                (b"X-Foo", b"1"),
                (b"x-bar", b"2"),
                (b"connection", b" x-FOO ,\tX-BAR\t, ,"),
                (b"Z", b""),
            ],
            [(b"Z", b"")],
        ),
        # Several Connection lines, and a Connection line after the field it names.
        (
            [(b"X-A", b"1"), (b"Connection", b"x-a"), (b"Connection", b"X-B"), (b"x-b", b"2")],
            [],
        ),
        # Duplicates stay separate and in order.
        (
            [(b"Cookie", b"a=1"), (b"Connection", b"close"), (b"Cookie", b"b=2")],
            [(b"Cookie", b"a=1"), (b"Cookie", b"b=2")],
        ),
        # "close" and "keep-alive" name no field; values pass through untouched.
        ([(b"Connection", b"close"), (b"X", b"  odd  value ")], [(b"X", b"  odd  value ")]),
    ],
)
def test_strip_hop_by_hop(headers: Headers, expected: Headers) -> None:
    assert strip_hop_by_hop(headers) == expected


# --- parse_host ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"example.com", "example.com"),
        (b"Example.COM", "example.com"),
        (b"example.com:8080", "example.com"),
        (b"example.com:80", "example.com"),
        (b"example.com:0", "example.com"),
        (b"example.com:65535", "example.com"),
        (b"example.com:00080", "example.com"),
        (b"example.com.", "example.com"),  # absolute name (RFC 1034 §3.1)
        (b"example.com.:443", "example.com"),
        (b"localhost", "localhost"),
        (b"my_host.internal", "my_host.internal"),  # "_" is unreserved (RFC 3986 §2.3)
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
        (b"ex%41mple.com", "ex%41mple.com"),  # pct-encoded, checked, not decoded
        (b"a-b~c!$&'()*+,;=", "a-b~c!$&'()*+,;="),  # sub-delims
        (b"192.0.2.1", "192.0.2.1"),
        (b"192.0.2.1:8443", "192.0.2.1"),
        (b"[::1]", "[::1]"),
        (b"[::1]:8080", "[::1]"),
        (b"[2001:DB8:0:0::1]", "[2001:db8::1]"),  # canonical (RFC 5952)
        (b"[::ffff:192.0.2.1]", "[::ffff:c000:201]"),
        (b" example.com\t", "example.com"),  # OWS is not part of the value (RFC 9110 §5.5)
        # Malformed.
        (b"", None),
        (b"   ", None),
        (b".", None),
        (b":80", None),
        (b"exa mple.com", None),
        (b"example.com :80", None),
        (b"user@example.com", None),
        (b"user:pw@example.com", None),
        (b"example.com\r\nX-Injected: 1", None),
        (b"example.com\x00", None),
        (b"exa\tmple.com", None),
        (b"example.com\x7f", None),
        ("bücher.example".encode(), None),
        (b"example.com:", None),  # decision: an empty port is refused
        (b"example.com:65536", None),
        (b"example.com:123456", None),
        (b"example.com:-1", None),
        (b"example.com:+80", None),
        (b"example.com:8o", None),
        (b"example.com:80:80", None),
        (b"example.com/path", None),
        (b"example.com?x", None),
        (b"example.com#x", None),
        (b"ex%4mple.com", None),
        (b"ex%zzmple.com", None),
        (b"example.com%", None),
        (b"::1", None),  # IPv6 needs brackets
        (b"[::1", None),
        (b"::1]", None),
        (b"[]", None),
        (b"[::1]]", None),
        (b"[::1]x", None),
        (b"[::1]:", None),
        (b"[::1]:99999", None),
        (b"[[::1]]", None),
        (b"[192.0.2.1]", None),
        (b"[fe80::1%25eth0]", None),  # zone ids (RFC 6874) have no place in Host
        (b"[fe80::1%eth0]", None),
        (b"[v1.fe80::a+en1]", None),  # IPvFuture: refused
        (b"[::g]", None),
        ("[::1\u00e9]".encode(), None),
        (b"a\\b", None),
        (b'a"b', None),
    ],
)
def test_parse_host(value: bytes, expected: str | None) -> None:
    assert parse_host(value) == expected


HOST_CHARS = st.sampled_from(
    list(b"abcxyzABCXYZ0129-._~!$&'()*+,;=%:@[]/?# \t\r\n\x00\x7f\x80\xff")
)


@given(st.lists(HOST_CHARS, max_size=30).map(bytes))
def test_parse_host_never_returns_unsafe_text(value: bytes) -> None:
    host = parse_host(value)
    if host is not None:
        assert host
        assert host == host.lower()
        assert not set(host) & set(" \t\r\n\x00\x7f@/?#")
        assert host.isascii()
        if ":" in host:
            assert host.startswith("[")
            assert host.endswith("]")


@given(
    labels=st.lists(
        st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True), min_size=1, max_size=4
    ),
    port=st.one_of(st.none(), st.integers(0, 65535)),
    upper=st.booleans(),
)
def test_parse_host_round_trip(labels: list[str], port: int | None, upper: bool) -> None:
    host = ".".join(labels)
    raw = (host.upper() if upper else host) + ("" if port is None else f":{port}")
    assert parse_host(raw.encode()) == host


@given(address=st.ip_addresses(v=6), port=st.one_of(st.none(), st.integers(0, 65535)))
def test_parse_host_ipv6(address: ipaddress.IPv6Address, port: int | None) -> None:
    raw = f"[{address.exploded.upper()}]" + ("" if port is None else f":{port}")
    assert parse_host(raw.encode()) == f"[{address.compressed}]"


# --- resolve_client_ip -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        # No trusted proxies, or an untrusted peer: the peer, whatever the client claims.
        ("198.51.100.1", [b"1.2.3.4"], [], "198.51.100.1"),
        ("198.51.100.1", [b"1.2.3.4"], nets("10.0.0.0/8"), "198.51.100.1"),
        ("198.51.100.1", [], nets("10.0.0.0/8"), "198.51.100.1"),
        # Trusted peer, no XFF: the peer.
        ("10.0.0.1", [], nets("10.0.0.0/8"), "10.0.0.1"),
        ("10.0.0.1", [b""], nets("10.0.0.0/8"), "10.0.0.1"),
        # One trusted hop: the rightmost address it appended.
        ("10.0.0.1", [b"1.2.3.4"], nets("10.0.0.0/8"), "1.2.3.4"),
        # A client spoofing XFF in front of a trusted proxy: the rightmost untrusted wins.
        ("10.0.0.1", [b"6.6.6.6, 1.2.3.4"], nets("10.0.0.0/8"), "1.2.3.4"),
        ("10.0.0.1", [b"10.9.9.9, 1.2.3.4"], nets("10.0.0.0/8"), "1.2.3.4"),
        # Several trusted hops are skipped from the right.
        ("10.0.0.1", [b"6.6.6.6, 1.2.3.4, 10.0.0.3, 10.0.0.2"], nets("10.0.0.0/8"), "1.2.3.4"),
        # Several field lines are one list, in order.
        ("10.0.0.1", [b"6.6.6.6", b"1.2.3.4", b"10.0.0.2"], nets("10.0.0.0/8"), "1.2.3.4"),
        ("10.0.0.1", [b"6.6.6.6, 1.2.3.4", b"10.0.0.2"], nets("10.0.0.0/8"), "1.2.3.4"),
        # All trusted: the leftmost.
        ("10.0.0.1", [b"10.0.0.5, 10.0.0.4"], nets("10.0.0.0/8"), "10.0.0.5"),
        # CIDR lists, mixed families.
        (
            "192.168.1.9",
            [b"1.2.3.4, 10.1.1.1"],
            nets("10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32"),
            "1.2.3.4",
        ),
        ("192.168.2.9", [b"1.2.3.4"], nets("10.0.0.0/8", "192.168.1.0/24"), "192.168.2.9"),
        ("10.0.0.1", [b"1.2.3.4"], nets("10.0.0.1/32"), "1.2.3.4"),
        ("10.0.0.2", [b"1.2.3.4"], nets("10.0.0.1/32"), "10.0.0.2"),
        # IPv6 peers and addresses; results in canonical form.
        ("2001:db8::1", [b"2001:DB8:0:0::FFFF"], nets("2001:db8::1/128"), "2001:db8::ffff"),
        ("2001:db8::1", [b"1.2.3.4, 2001:db8::2"], nets("2001:db8::/64"), "1.2.3.4"),
        ("::1", [b"2001:db8::7"], nets("::1/128"), "2001:db8::7"),
        ("2001:db8::1", [b"1.2.3.4"], nets("10.0.0.0/8"), "2001:db8::1"),
        ("10.0.0.1", [b"1.2.3.4"], nets("::/0"), "10.0.0.1"),  # v4 is never in a v6 network
        # IPv4-mapped IPv6 (dual-stack sockets) counts as the IPv4 address.
        ("::ffff:10.0.0.1", [b"1.2.3.4"], nets("10.0.0.0/8"), "1.2.3.4"),
        ("10.0.0.1", [b"::ffff:10.0.0.2, ::ffff:1.2.3.4"], nets("10.0.0.0/8"), "1.2.3.4"),
        ("10.0.0.1", [b"1.2.3.4"], nets("::ffff:10.0.0.0/104"), "1.2.3.4"),
        # Empty elements and whitespace are ignored (RFC 9110 §5.6.1).
        ("10.0.0.1", [b" ,1.2.3.4 ,\t, "], nets("10.0.0.0/8"), "1.2.3.4"),
        # Unparseable entries stop the walk: the last trusted hop walked (or the peer).
        ("10.0.0.1", [b"1.2.3.4, unknown"], nets("10.0.0.0/8"), "10.0.0.1"),
        ("10.0.0.1", [b"1.2.3.4, garbage, 10.0.0.2"], nets("10.0.0.0/8"), "10.0.0.2"),
        ("10.0.0.1", [b"1.2.3.4:5678"], nets("10.0.0.0/8"), "10.0.0.1"),
        ("10.0.0.1", [b"[2001:db8::1]"], nets("10.0.0.0/8"), "10.0.0.1"),
        ("10.0.0.1", [b"fe80::1%eth0"], nets("10.0.0.0/8"), "10.0.0.1"),
        ("10.0.0.1", [b"01.2.3.4"], nets("10.0.0.0/8"), "10.0.0.1"),
        ("10.0.0.1", [b"1.2.3"], nets("10.0.0.0/8"), "10.0.0.1"),
        ("10.0.0.1", [b"1.2.3.4\x00"], nets("10.0.0.0/8"), "10.0.0.1"),
        ("10.0.0.1", ["1.2.3.4\u00e9".encode()], nets("10.0.0.0/8"), "10.0.0.1"),
        ("10.0.0.1", [b"1" * 100], nets("10.0.0.0/8"), "10.0.0.1"),
        # An unparseable peer (a Unix socket) is never trusted.
        ("", [b"1.2.3.4"], nets("0.0.0.0/0"), ""),
    ],
)
def test_resolve_client_ip(
    peer: str, xff: list[bytes], trusted: list[IPNetwork], expected: str
) -> None:
    assert resolve_client_ip(peer, xff, trusted) == expected


@pytest.mark.parametrize(
    ("peer", "trusted", "expected"),
    [
        ("10.0.0.1", nets("10.0.0.0/8"), True),
        ("11.0.0.1", nets("10.0.0.0/8"), False),
        ("10.0.0.1", [], False),
        ("::ffff:10.0.0.1", nets("10.0.0.0/8"), True),
        ("2001:db8::5", nets("10.0.0.0/8", "2001:db8::/120"), True),
        ("2001:db8::1:5", nets("2001:db8::/120"), False),
        ("not-an-ip", nets("0.0.0.0/0", "::/0"), False),
    ],
)
def test_is_trusted_peer(peer: str, trusted: list[IPNetwork], expected: bool) -> None:
    assert is_trusted_peer(peer, trusted) is expected


def _reference_parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def reference_client_ip(peer: str, xff: list[bytes], trusted: list[IPNetwork]) -> str:
    """HARDENING.md §B with the stdlib ipaddress module, spelled out naively."""

    def is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in trusted)

    peer_address = _reference_parse(peer)
    if peer_address is None or not is_trusted(peer_address):
        return peer
    elements = [e.strip(" \t") for v in xff for e in v.decode("latin-1").split(",")]
    walked = None
    for element in reversed([e for e in elements if e]):
        address = _reference_parse(element)
        if address is None:
            break
        walked = address
        if not is_trusted(address):
            break
    return peer if walked is None else str(walked)


TRUSTED_POOL = nets("10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32", "127.0.0.1/32", "::1/128")
IP_TEXT = st.one_of(
    st.sampled_from(["10.1.2.3", "192.168.9.9", "2001:db8::5", "127.0.0.1", "::1"]),
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.sampled_from(["unknown", "", "1.2.3.4:80", "[::1]", "01.2.3.4", "garbage"]),
)


@settings(max_examples=300)
@given(
    peer=IP_TEXT,
    elements=st.lists(IP_TEXT, max_size=6),
    lines=st.integers(1, 3),
    trusted=st.lists(st.sampled_from(TRUSTED_POOL), max_size=4, unique=True),
    spaces=st.sampled_from([",", ", ", " ,\t"]),
)
def test_resolve_client_ip_properties(
    peer: str, elements: list[str], lines: int, trusted: list[IPNetwork], spaces: str
) -> None:
    # Spread the elements over up to `lines` field lines.
    cut = len(elements) // lines or 1
    xff = [spaces.join(elements[i : i + cut]).encode() for i in range(0, len(elements), cut)]
    result = resolve_client_ip(peer, xff, trusted)
    # Either the peer or one of the X-Forwarded-For addresses ...
    candidates = {_reference_parse(e) for e in elements} - {None}
    assert result == peer or _reference_parse(result) in candidates
    # ... and exactly the one the naive model picks.
    expected = reference_client_ip(peer, xff, trusted)
    assert result == expected or _reference_parse(result) == _reference_parse(expected)
    # An untrusted peer is always the client.
    if not is_trusted_peer(peer, trusted):
        assert result == peer


# --- request ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (b"a", True),
        (RID, True),
        (b"A-Za-z0-9._~:+/=", True),
        (b"550e8400-e29b-41d4-a716-446655440000", True),
        (b"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=x", False),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"", False),
        (b"a b", False),
        (b"a\r\nb", False),
        (b"a\x00", False),
        (b"a,b", False),
        (b'"a"', False),
        (b"a%20", False),
        ("é".encode(), False),
    ],
)
def test_is_valid_request_id(value: bytes, valid: bool) -> None:
    assert is_valid_request_id(value) is valid


def test_new_request_id() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for request_id in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)
        assert is_valid_request_id(request_id.encode())


@pytest.mark.parametrize(
    ("version", "name", "expected"),
    [((1, 1), "gateway", b"1.1 gateway"), ((1, 0), "edge", b"1.0 edge")],
)
def test_via_value(version: tuple[int, int], name: str, expected: bytes) -> None:
    assert via_value(version, name) == expected


# --- upstream_request_headers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "trusted", "expected"),
    [
        ([], False, tail()),
        # End-to-end fields keep order, case, bytes and duplicates.
        (
            [
                (b"Accept", b"*/*"),
                (b"Cookie", b"a=1"),
                (b"x-custom", b"1"),
                (b"Cookie", b"b=2"),
                (b"X-Custom", b"  two\tspaced "),
            ],
            False,
            [
                (b"Accept", b"*/*"),
                (b"Cookie", b"a=1"),
                (b"x-custom", b"1"),
                (b"Cookie", b"b=2"),
                (b"X-Custom", b"  two\tspaced "),
                *tail(),
            ],
        ),
        # Hop-by-hop and Connection-named fields go.
        (
            [
                (b"Connection", b"close, X-Foo"),
                (b"X-Foo", b"1"),
                (b"Keep-Alive", b"timeout=5"),
                (b"TE", b"trailers"),
                (b"Transfer-Encoding", b"chunked"),
                (b"Upgrade", b"h2c"),
                (b"Proxy-Authorization", b"Basic eA=="),
                (b"A", b"1"),
            ],
            False,
            [(b"A", b"1"), *tail()],
        ),
        # Host, Content-Length and the client's X-Request-ID go.
        (
            [
                (b"Host", b"api.example.com"),
                (b"Content-Length", b"5"),
                (b"X-Request-ID", b"client-chosen"),
                (b"x-request-id", b"again"),
                (b"A", b"1"),
            ],
            True,
            [(b"A", b"1"), *tail()],
        ),
        # Names with underscores go (they pass for dashes in CGI/WSGI environs).
        (
            [(b"X_Forwarded_For", b"6.6.6.6"), (b"x_custom", b"1"), (b"X-Custom", b"2")],
            True,
            [(b"X-Custom", b"2"), *tail()],
        ),
        # Untrusted peer: spoofed forwarding fields are dropped and replaced.
        (
            [
                (b"X-Forwarded-For", b"6.6.6.6"),
                (b"x-forwarded-proto", b"http"),
                (b"X-FORWARDED-HOST", b"evil.example"),
                (b"Forwarded", b"for=6.6.6.6"),
                (b"X-Real-IP", b"6.6.6.6"),
                (b"A", b"1"),
            ],
            False,
            [(b"A", b"1"), *tail()],
        ),
        # Trusted peer: the chain is extended with the peer, proto and host are kept,
        # Forwarded and X-Real-IP stay where they are.
        (
            [
                (b"X-Forwarded-For", b"1.2.3.4"),
                (b"X-Real-IP", b"1.2.3.4"),
                (b"X-Forwarded-Proto", b"http"),
                (b"Forwarded", b"for=1.2.3.4;proto=http"),
                (b"X-Forwarded-Host", b"www.example.com"),
            ],
            True,
            [
                (b"X-Real-IP", b"1.2.3.4"),
                (b"Forwarded", b"for=1.2.3.4;proto=http"),
                *tail(
                    xff=b"1.2.3.4, " + PEER.encode(),
                    proto=b"http",
                    host=b"www.example.com",
                ),
            ],
        ),
        # Trusted peer, chain over several lines with odd spacing and empty elements.
        (
            [(b"X-Forwarded-For", b"1.1.1.1 ,2.2.2.2"), (b"x-forwarded-for", b" , 3.3.3.3,")],
            True,
            tail(xff=b"1.1.1.1, 2.2.2.2, 3.3.3.3, " + PEER.encode()),
        ),
        # Trusted peer, several proto/host values: the nearest proxy's (the last) one.
        (
            [
                (b"X-Forwarded-Proto", b"https"),
                (b"X-Forwarded-Proto", b"ws, http"),
                (b"X-Forwarded-Host", b"a.example, b.example"),
            ],
            True,
            tail(proto=b"http", host=b"b.example"),
        ),
        # Trusted peer with empty values: ours.
        (
            [(b"X-Forwarded-For", b""), (b"X-Forwarded-Proto", b" "), (b"X-Forwarded-Host", b",")],
            True,
            tail(),
        ),
        # Connection cannot remove what the gateway adds.
        (
            [
                (b"Connection", b"X-Forwarded-For, x-forwarded-proto, X-Forwarded-Host"),
                (b"Connection", b"Via, X-Request-ID"),
                (b"X-Forwarded-For", b"1.2.3.4"),
            ],
            True,
            tail(),
        ),
        # Existing Via lines stay in place; ours is a separate, last line.
        (
            [(b"Via", b"1.0 fred, 1.1 p.example.net"), (b"A", b"1")],
            False,
            [(b"Via", b"1.0 fred, 1.1 p.example.net"), (b"A", b"1"), *tail()],
        ),
        # CR, LF or NUL in a name or value: the field is dropped.
        (
            [
                (b"X-A", b"1\r\nX-Injected: 1"),
                (b"X-B", b"1\n"),
                (b"X-C", b"\x00"),
                (b"X-D\r", b"1"),
                (b"X-E\n", b"1"),
                (b"X\x00F", b"1"),
                (b"X-G", b"ok"),
            ],
            False,
            [(b"X-G", b"ok"), *tail()],
        ),
    ],
)
def test_upstream_request_headers(headers: Headers, trusted: bool, expected: Headers) -> None:
    assert up(headers, trusted=trusted) == expected


@pytest.mark.parametrize(
    ("peer", "scheme", "authority", "expected"),
    [
        (
            "2001:db8::1",
            "http",
            b"[2001:db8::2]:8080",
            tail(b"2001:db8::1", b"http", b"[2001:db8::2]:8080"),
        ),
        ("10.0.0.1", "https", b"Example.com:443", tail(b"10.0.0.1", b"https", b"Example.com:443")),
        # No Host on an HTTP/1.0 request: no X-Forwarded-Host rather than an empty one.
        (
            "10.0.0.1",
            "http",
            b"",
            [f for f in tail(b"10.0.0.1", b"http") if f[0] != b"X-Forwarded-Host"],
        ),
    ],
)
def test_upstream_request_headers_gateway_values(
    peer: str, scheme: str, authority: bytes, expected: Headers
) -> None:
    assert up([], peer=peer, scheme=scheme, authority=authority) == expected


def test_upstream_request_headers_never_writes_unsafe_gateway_values() -> None:
    out = upstream_request_headers(
        [],
        peer_trusted=False,
        peer_ip="10.0.0.1",
        scheme="http",
        authority=b"a\r\nb",
        request_id=b"x\ny",
        via=b"1.1 g\x00",
    )
    assert out == [(b"X-Forwarded-For", b"10.0.0.1"), (b"X-Forwarded-Proto", b"http")]


def test_upstream_request_headers_does_not_mutate_its_input() -> None:
    headers = [(b"Connection", b"x-a"), (b"X-A", b"1"), (b"Host", b"h")]
    before = list(headers)
    up(headers)
    assert headers == before


# --- downstream_response_headers -------------------------------------------------------------


def down(headers: Headers) -> Headers:
    return downstream_response_headers(headers, request_id=RID, via=VIA)


OURS = [(b"Via", VIA), (b"X-Request-ID", RID)]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], OURS),
        # Set-Cookie duplicates are preserved in order, bytes untouched.
        (
            [
                (b"Set-Cookie", b"a=1; Path=/"),
                (b"Content-Type", b"text/html"),
                (b"set-cookie", b"b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT"),
            ],
            [
                (b"Set-Cookie", b"a=1; Path=/"),
                (b"Content-Type", b"text/html"),
                (b"set-cookie", b"b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT"),
                *OURS,
            ],
        ),
        # Hop-by-hop, Connection-named, Content-Length and the upstream's request id go.
        (
            [
                (b"Connection", b"keep-alive, X-Internal"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Transfer-Encoding", b"chunked"),
                (b"Trailer", b"X-Checksum"),
                (b"Upgrade", b"h2c"),
                (b"Proxy-Authenticate", b"Basic"),
                (b"X-Internal", b"secret"),
                (b"Content-Length", b"114"),
                (b"X-Request-ID", b"upstream-id"),
                (b"ETag", b'"abc"'),
            ],
            [(b"ETag", b'"abc"'), *OURS],
        ),
        # Decision: names with underscores are kept in responses.
        ([(b"X_Upstream_Thing", b"1")], [(b"X_Upstream_Thing", b"1"), *OURS]),
        # The upstream's Via stays; ours follows.
        ([(b"Via", b"1.1 origin")], [(b"Via", b"1.1 origin"), *OURS]),
        # Connection cannot remove the gateway's own fields.
        ([(b"Connection", b"Via, X-Request-ID")], OURS),
        # CR, LF or NUL anywhere: dropped.
        (
            [
                (b"Location", b"/x\r\nSet-Cookie: evil=1"),
                (b"X-A\n", b"1"),
                (b"X-B", b"\x00"),
                (b"X-C", b"ok"),
            ],
            [(b"X-C", b"ok"), *OURS],
        ),
    ],
)
def test_downstream_response_headers(headers: Headers, expected: Headers) -> None:
    assert down(headers) == expected


def test_downstream_response_headers_never_writes_unsafe_gateway_values() -> None:
    assert downstream_response_headers([], request_id=b"a\rb", via=b"1.1 g\n") == []


# --- header properties -----------------------------------------------------------------------

NAME_POOL = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"host",
    b"content-length",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
    b"x-real-ip",
    b"via",
    b"cookie",
    b"set-cookie",
    b"accept",
    b"x-custom",
    b"x-foo",
    b"x_forwarded_for",
    b"x-a\r",
    b"x-\nb",
    b"x-\x00c",
]


@st.composite
def header_name(draw: st.DrawFn) -> bytes:
    name = draw(
        st.one_of(
            st.sampled_from(NAME_POOL),
            st.text(alphabet="abcxyz-_", min_size=1, max_size=8).map(str.encode),
        )
    )
    # Random case, one bit per character (field names are case-insensitive, RFC 9110 §5.1).
    mask = draw(st.integers(0, (1 << len(name)) - 1))
    return bytes(c - 32 if mask >> i & 1 and 97 <= c <= 122 else c for i, c in enumerate(name))


@st.composite
def connection_value(draw: st.DrawFn) -> bytes:
    tokens = draw(st.lists(header_name(), max_size=4))
    separators = draw(
        st.lists(
            st.sampled_from([b",", b", ", b" ,", b",\t", b", ,"]),
            min_size=len(tokens),
            max_size=len(tokens),
        )
    )
    return b"".join(t + s for t, s in zip(tokens, separators, strict=True))


FIELD_VALUE = st.one_of(
    st.sampled_from([b"", b"1", b"1.2.3.4", b"close", b"a=1; Path=/", b"1.1 proxy"]),
    st.binary(max_size=12),
)
FIELD = st.one_of(
    st.tuples(header_name(), FIELD_VALUE),
    st.tuples(st.sampled_from([b"Connection", b"connection", b"CONNECTION"]), connection_value()),
)
HEADERS = st.lists(FIELD, max_size=12)


def connection_named(headers: Headers) -> set[bytes]:
    return {
        token.strip(b" \t").lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    } - {b""}


def unsafe(*parts: bytes) -> bool:
    return any(c in part for part in parts for c in (b"\r", b"\n", b"\x00"))


@given(HEADERS)
def test_strip_hop_by_hop_properties(headers: Headers) -> None:
    named = connection_named(headers)
    out = strip_hop_by_hop(headers)
    assert out == [
        (n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named
    ]
    assert strip_hop_by_hop(out) == out  # idempotent


@given(headers=HEADERS, trusted=st.booleans(), peer=st.ip_addresses().map(str))
def test_upstream_request_headers_properties(headers: Headers, trusted: bool, peer: str) -> None:
    out = up(headers, trusted=trusted, peer=peer)
    named = connection_named(headers)
    client_part, gateway_part = out[:-5], out[-5:]

    # The gateway's fields come last, exactly once each, in a fixed order.
    assert [n for n, _ in gateway_part] == [
        b"X-Forwarded-For",
        b"X-Forwarded-Proto",
        b"X-Forwarded-Host",
        b"Via",
        b"X-Request-ID",
    ]
    for name in GATEWAY_REQUEST_FIELDS:
        assert len(values(out, name)) == 1
    assert gateway_part[3] == (b"Via", VIA)
    assert gateway_part[4] == (b"X-Request-ID", RID)
    xff = gateway_part[0][1]
    assert xff.endswith(peer.encode())
    if not trusted:
        assert xff == peer.encode()
        assert gateway_part[1][1] == b"https"
        assert gateway_part[2][1] == b"api.example.com"

    # What is left of the client's fields is its fields minus the dropped ones, in order.
    dropped = HOP_BY_HOP | named | {b"host", b"content-length", b"x-request-id"}
    dropped |= {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
    if not trusted:
        dropped |= {b"forwarded", b"x-real-ip"}
    assert client_part == [
        (n, v)
        for n, v in headers
        if n.lower() not in dropped and b"_" not in n and not unsafe(n, v)
    ]

    # Nothing hop-by-hop, Connection-named (except ours), underscored or unsafe is written.
    for name, value in out:
        assert name.lower() not in HOP_BY_HOP
        assert b"_" not in name
        assert not unsafe(name, value)
    for name, _ in client_part:
        assert name.lower() not in named


@given(headers=HEADERS)
def test_downstream_response_headers_properties(headers: Headers) -> None:
    out = down(headers)
    named = connection_named(headers)
    assert out[-2:] == OURS
    assert len(values(out, b"x-request-id")) == 1
    dropped = HOP_BY_HOP | named | {b"content-length", b"x-request-id"}
    assert out[:-2] == [(n, v) for n, v in headers if n.lower() not in dropped and not unsafe(n, v)]
    for name, value in out:
        assert name.lower() not in HOP_BY_HOP
        assert not unsafe(name, value)


@given(headers=HEADERS, trusted=st.booleans())
def test_upstream_request_headers_end_to_end_skips_nothing_it_should_drop(
    headers: Headers, trusted: bool
) -> None:
    # The gateway passes fields strip_hop_by_hop already cleaned (every ProxyRequest's): the
    # shortcut must give exactly what the full walk gives for them.
    cleaned = strip_hop_by_hop(headers)

    def forward(end_to_end: bool) -> Headers:
        return upstream_request_headers(
            cleaned,
            peer_trusted=trusted,
            peer_ip=PEER,
            scheme="http",
            authority=b"a.test",
            request_id=RID,
            via=VIA,
            end_to_end=end_to_end,
        )

    assert forward(True) == forward(False)
