"""The PROXY protocol parser (gateway.downstream.proxy_protocol): tables of v1 lines and v2
headers with their verdicts, and properties over an encoder written here: what it builds parses
back with the exact length, every proper prefix waits, and any bytes at all get one of the three
answers, consistently as more arrive."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.downstream.proxy_protocol import (
    MAX_V1_LENGTH,
    MAX_V2_LENGTH,
    ProxyHeader,
    ProxyHeaderError,
    parse_proxy_header,
)

# Built here from the spec's text (§2.2), not imported, so that a typo in one shows in the other.
SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
LOCAL, PROXY = 0x0, 0x1
UNSPEC, TCP4, UDP4, TCP6, UDP6, UNIX_STREAM, UNIX_DGRAM = 0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32
UNKNOWN_V1 = ProxyHeader(1, None, None, None, None)
UNKNOWN_V2 = ProxyHeader(2, None, None, None, None)
MAX_BLOCK = MAX_V2_LENGTH - 16
# A TLS ClientHello's first bytes and an HTTP request line: what follows a header.
CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


def v2(
    command: int, family: int, block: bytes, *, version: int = 2, length: int | None = None
) -> bytes:
    """A v2 header built by hand; ``length`` overrides the length field (to build bad ones)."""
    size = len(block) if length is None else length
    return SIGNATURE + bytes(((version << 4) | command, family)) + size.to_bytes(2, "big") + block


def inet(source: str, dest: str, source_port: int, dest_port: int) -> bytes:
    """The address block of TCP over IPv4 or IPv6 (§2.2: addresses, then ports)."""
    return (
        ipaddress.ip_address(source).packed
        + ipaddress.ip_address(dest).packed
        + source_port.to_bytes(2, "big")
        + dest_port.to_bytes(2, "big")
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes((kind,)) + len(value).to_bytes(2, "big") + value


def parse(data: bytes) -> tuple[ProxyHeader, int] | None:
    return parse_proxy_header(data)


FULL_V6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
TCP4_BLOCK = inet("192.0.2.1", "198.51.100.2", 56324, 443)

VALID = [
    # v1 (§2.1)
    pytest.param(
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ProxyHeader(1, "192.168.0.1", 56324, "192.168.0.11", 443),
        id="v1-tcp4-spec-example",
    ),
    pytest.param(
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        ProxyHeader(1, "255.255.255.255", 65535, "255.255.255.255", 65535),
        id="v1-tcp4-longest",
    ),
    pytest.param(
        b"PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n",
        ProxyHeader(1, "0.0.0.0", 0, "10.0.0.1", 0),
        id="v1-tcp4-zeros",
    ),
    pytest.param(
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
        ProxyHeader(1, "2001:db8::1", 1, "2001:db8::2", 65535),
        id="v1-tcp6",
    ),
    pytest.param(
        f"PROXY TCP6 {FULL_V6} {FULL_V6} 65535 65535\r\n".encode(),
        ProxyHeader(1, FULL_V6, 65535, FULL_V6, 65535),
        id="v1-tcp6-longest-104",
    ),
    pytest.param(
        b"PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:0001 :: 8080 80\r\n",
        ProxyHeader(1, "2001:db8::1", 8080, "::", 80),
        id="v1-tcp6-uncompressed-upper-case-canonical",
    ),
    pytest.param(
        b"PROXY TCP6 ::ffff:203.0.113.7 ::ffff:cb00:7108 40000 443\r\n",
        ProxyHeader(1, "203.0.113.7", 40000, "203.0.113.8", 443),
        id="v1-tcp6-ipv4-mapped-as-ipv4",
    ),
    pytest.param(b"PROXY UNKNOWN\r\n", UNKNOWN_V1, id="v1-unknown-short"),
    pytest.param(
        f"PROXY UNKNOWN {FULL_V6} {FULL_V6} 65535 65535\r\n".encode(),
        UNKNOWN_V1,
        id="v1-unknown-worst-case-107",
    ),
    pytest.param(
        b"PROXY UNKNOWN anything  at\tall \x00\xff \r\n", UNKNOWN_V1, id="v1-unknown-rest-ignored"
    ),
    pytest.param(b"PROXY UNKNOWN \r\n", UNKNOWN_V1, id="v1-unknown-empty-rest"),
    # v2 (§2.2)
    pytest.param(
        v2(PROXY, TCP4, TCP4_BLOCK),
        ProxyHeader(2, "192.0.2.1", 56324, "198.51.100.2", 443),
        id="v2-tcp4",
    ),
    pytest.param(
        v2(PROXY, TCP6, inet("2001:db8::1", "2001:db8::ff", 1, 65535)),
        ProxyHeader(2, "2001:db8::1", 1, "2001:db8::ff", 65535),
        id="v2-tcp6",
    ),
    pytest.param(
        v2(PROXY, TCP6, inet("::ffff:198.51.100.9", "2001:db8::ff", 5000, 443)),
        ProxyHeader(2, "198.51.100.9", 5000, "2001:db8::ff", 443),
        id="v2-tcp6-ipv4-mapped-as-ipv4",
    ),
    pytest.param(
        v2(
            PROXY,
            TCP4,
            TCP4_BLOCK
            + tlv(0xEA, b"\x01vpce-08d2bf15fEXAMPLE")  # AWS: the VPC endpoint id
            + tlv(0x01, b"h2")  # PP2_TYPE_ALPN
            + tlv(0x04, b""),  # PP2_TYPE_NOOP, empty
        ),
        ProxyHeader(2, "192.0.2.1", 56324, "198.51.100.2", 443),
        id="v2-tcp4-tlvs-skipped",
    ),
    pytest.param(
        v2(PROXY, TCP4, TCP4_BLOCK + tlv(0x04, bytes(MAX_BLOCK - 12 - 3))),
        ProxyHeader(2, "192.0.2.1", 56324, "198.51.100.2", 443),
        id="v2-at-the-length-cap",
    ),
    pytest.param(v2(LOCAL, UNSPEC, b""), UNKNOWN_V2, id="v2-local"),
    pytest.param(v2(LOCAL, TCP4, TCP4_BLOCK), UNKNOWN_V2, id="v2-local-addresses-ignored"),
    pytest.param(v2(LOCAL, UDP6, b"\x01\x02"), UNKNOWN_V2, id="v2-local-family-ignored"),
    pytest.param(v2(LOCAL, 0xFF, b"\xff" * 3), UNKNOWN_V2, id="v2-local-bad-family-ignored"),
    pytest.param(v2(PROXY, UNSPEC, b""), UNKNOWN_V2, id="v2-proxy-unspec"),
    pytest.param(
        v2(PROXY, UNSPEC, b"\x01\x02\x03\x04\x05"), UNKNOWN_V2, id="v2-proxy-unspec-block-ignored"
    ),
    pytest.param(v2(PROXY, UNIX_STREAM, bytes(216)), UNKNOWN_V2, id="v2-unix-stream"),
    pytest.param(
        v2(PROXY, UNIX_DGRAM, bytes(216) + tlv(0x05, b"id")), UNKNOWN_V2, id="v2-unix-dgram-tlv"
    ),
]


@pytest.mark.parametrize(("header", "expected"), VALID)
@pytest.mark.parametrize("rest", [b"", REQUEST, CLIENT_HELLO])
def test_valid_headers(header: bytes, expected: ProxyHeader, rest: bytes) -> None:
    assert parse(header + rest) == (expected, len(header))
    for size in range(len(header)):
        assert parse(header[:size]) is None, size


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_any_bytes_like(kind: type[bytearray] | type[memoryview]) -> None:
    line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
    expected = ProxyHeader(1, "192.0.2.1", 56324, "198.51.100.2", 443)
    assert parse_proxy_header(kind(line + REQUEST)) == (expected, len(line))
    header = v2(PROXY, TCP4, TCP4_BLOCK)
    expected = ProxyHeader(2, "192.0.2.1", 56324, "198.51.100.2", 443)
    assert parse_proxy_header(kind(header + CLIENT_HELLO)) == (expected, len(header))
    assert parse_proxy_header(kind(header[:-1])) is None
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(kind(REQUEST))


INVALID = [
    # Neither signature.
    pytest.param(REQUEST, "not a PROXY", id="http-request"),
    pytest.param(CLIENT_HELLO, "not a PROXY", id="tls-client-hello"),
    pytest.param(b"G", "not a PROXY", id="first-byte-of-http"),
    pytest.param(b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY", id="v1-lower-case"),
    pytest.param(b"PROXI", "not a PROXY", id="v1-signature-typo"),
    pytest.param(b"PROXY\tTCP4 ", "not a PROXY", id="v1-tab-after-proxy"),
    pytest.param(b"PROXY\r\n", "not a PROXY", id="v1-nothing-after-proxy"),
    pytest.param(b"\r\nGET / HTTP/1.1", "not a PROXY", id="v2-signature-then-http"),
    pytest.param(b"\r\n\r\n\x01", "not a PROXY", id="v2-signature-byte-5"),
    pytest.param(SIGNATURE[:-1] + b"\r", "not a PROXY", id="v2-signature-last-byte"),
    # v1 keyword and spacing (§2.1: "exactly one space").
    pytest.param(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6", id="v1-tcp5"),
    pytest.param(b"PROXY UDP4 ", "TCP4, TCP6", id="v1-udp4-early"),
    pytest.param(b"PROXY TCP4\r\n", "TCP4, TCP6", id="v1-tcp4-no-fields"),
    pytest.param(b"PROXY UNKNOWNX\r\n", "TCP4, TCP6", id="v1-unknown-glued"),
    pytest.param(b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6", id="v1-double-space-1"),
    pytest.param(b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "5 fields", id="v1-double-space-2"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "5 fields", id="v1-trailing-space"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "5 fields", id="v1-four-fields"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "5 fields", id="v1-six-fields"),
    # v1 line ends (§2.1: "must not tolerate a single CR or LF").
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF", id="v1-bare-lf"),
    pytest.param(b"PROXY UNKNOWN 1\n", "bare LF", id="v1-unknown-bare-lf"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "bare CR", id="v1-bare-cr"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "bare CR", id="v1-cr-cr-lf"),
    pytest.param(b"PROXY UNKNOWN a\rb\r\n", "bare CR", id="v1-unknown-stray-cr"),
    pytest.param(b"PROXY UNKNOWN " + b"a" * 92, "no CRLF", id="v1-no-crlf-at-106"),
    pytest.param(b"PROXY UNKNOWN " + b"a" * 92 + b"\r\n", "no CRLF", id="v1-108-byte-line"),
    pytest.param(b"PROXY UNKNOWN " + b"a" * 200 + b"\r\n", "no CRLF", id="v1-long-line"),
    # v1 addresses: the family the keyword says, canonical forms.
    pytest.param(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "IPv4", id="v1-tcp4-ipv6-source"),
    pytest.param(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "IPv4", id="v1-tcp4-ipv6-dest"),
    pytest.param(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "IPv6", id="v1-tcp6-ipv4-source"),
    pytest.param(b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n", "IPv6", id="v1-tcp6-ipv4-dest"),
    pytest.param(b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "IPv4", id="v1-octet-heading-zero"),
    pytest.param(b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "IPv4", id="v1-octet-256"),
    pytest.param(b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "IPv4", id="v1-three-octets"),
    pytest.param(b"PROXY TCP4 1.2.3.4. 5.6.7.8 1 2\r\n", "IPv4", id="v1-trailing-dot"),
    pytest.param(b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "IPv6", id="v1-two-double-colons"),
    pytest.param(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "scope", id="v1-ipv6-scope"),
    pytest.param(b"PROXY TCP6 12345::1 ::1 1 2\r\n", "IPv6", id="v1-ipv6-five-digit-group"),
    pytest.param("PROXY TCP4 \u0661.2.3.4 5.6.7.8 1 2\r\n".encode(), "ASCII", id="v1-arabic-digit"),
    # v1 ports (§2.1: "[0..65535]", "Heading zeroes are not permitted").
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 0443 1\r\n", "heading zeroes", id="v1-port-zero"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", "heading zeroes", id="v1-port-00"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n", "65535", id="v1-port-65536"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 100000 1\r\n", "heading", id="v1-port-6-digits"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 1\r\n", "heading zeroes", id="v1-port-plus"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 1\r\n", "heading zeroes", id="v1-port-minus"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 0x50 1\r\n", "heading zeroes", id="v1-port-hex"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1_0 1\r\n", "heading zeroes", id="v1-port-1_0"),
    # v2 version and command (§2.2).
    pytest.param(v2(PROXY, TCP4, TCP4_BLOCK, version=1), "version", id="v2-version-1"),
    pytest.param(v2(PROXY, TCP4, TCP4_BLOCK, version=3), "version", id="v2-version-3"),
    pytest.param(SIGNATURE + b"\x11", "version", id="v2-version-early"),
    pytest.param(v2(0x2, TCP4, TCP4_BLOCK), "command", id="v2-command-2"),
    pytest.param(SIGNATURE + b"\x2f", "command", id="v2-command-15-early"),
    # v2 family and protocol.
    pytest.param(v2(PROXY, UDP4, TCP4_BLOCK), "UDP", id="v2-udp4"),
    pytest.param(SIGNATURE + b"\x21\x22", "UDP", id="v2-udp6-early"),
    pytest.param(SIGNATURE + b"\x21\x41", "unassigned", id="v2-family-4"),
    pytest.param(SIGNATURE + b"\x21\x13", "unassigned", id="v2-protocol-3"),
    pytest.param(SIGNATURE + b"\x21\x10", "unassigned", id="v2-inet-unspec-protocol"),
    pytest.param(SIGNATURE + b"\x21\x01", "unassigned", id="v2-unspec-stream"),
    # v2 length.
    pytest.param(v2(PROXY, TCP4, TCP4_BLOCK[:11]), "shorter", id="v2-tcp4-length-11"),
    pytest.param(v2(PROXY, TCP6, bytes(35)), "shorter", id="v2-tcp6-length-35"),
    pytest.param(v2(PROXY, UNIX_STREAM, bytes(215)), "shorter", id="v2-unix-length-215"),
    pytest.param(v2(PROXY, TCP4, b"", length=0), "shorter", id="v2-tcp4-length-0"),
    pytest.param(v2(PROXY, TCP4, b"", length=MAX_BLOCK + 1), "longer", id="v2-over-cap-early"),
    pytest.param(v2(LOCAL, UNSPEC, b"", length=0xFFFF), "longer", id="v2-local-over-cap"),
    # v2 TLVs (each: type, 2-byte length, value inside the block).
    pytest.param(v2(PROXY, TCP4, TCP4_BLOCK + b"\x04"), "cut short", id="v2-tlv-1-byte"),
    pytest.param(v2(PROXY, TCP4, TCP4_BLOCK + b"\x04\x00"), "cut short", id="v2-tlv-2-bytes"),
    pytest.param(v2(PROXY, TCP4, TCP4_BLOCK + b"\x04\x00\x02a"), "past", id="v2-tlv-overrun"),
    pytest.param(
        v2(PROXY, TCP6, inet("::1", "::2", 1, 2) + tlv(1, b"h2") + b"\x05\xff\xff"),
        "past",
        id="v2-second-tlv-overrun",
    ),
    pytest.param(
        v2(PROXY, UNIX_STREAM, bytes(216) + b"\x20\x00"), "cut short", id="v2-unix-tlv-cut"
    ),
]


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_invalid_headers(data: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError, match=message):
        parse(data)
    # An error is final: no bytes that follow can make a header of it.
    with pytest.raises(ProxyHeaderError, match=message):
        parse(data + b"\r\n" + REQUEST + bytes(MAX_V2_LENGTH))


INCOMPLETE = [
    pytest.param(b"", id="nothing"),
    pytest.param(b"P", id="v1-p"),
    pytest.param(b"PROX", id="v1-prox"),
    pytest.param(b"PROXY ", id="v1-signature"),
    pytest.param(b"PROXY T", id="v1-keyword-start"),
    pytest.param(b"PROXY UNKNOWN", id="v1-unknown-without-crlf"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", id="v1-without-crlf"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", id="v1-cr-without-lf"),
    # Not valid once the CRLF comes, but §2.1 decodes the addresses only then.
    pytest.param(b"PROXY TCP4 999.2.3.4", id="v1-addresses-wait-for-crlf"),
    pytest.param(b"PROXY UNKNOWN " + b"a" * 91, id="v1-105-bytes"),
    pytest.param(b"PROXY UNKNOWN " + b"a" * 91 + b"\r", id="v1-106-bytes-cr-last"),
    pytest.param(b"\r", id="v2-cr"),
    pytest.param(b"\r\n\r\n\x00", id="v2-signature-start"),
    pytest.param(SIGNATURE, id="v2-signature"),
    pytest.param(SIGNATURE + b"\x21", id="v2-version-command"),
    pytest.param(SIGNATURE + b"\x21\x11\x00", id="v2-half-length"),
    pytest.param(v2(PROXY, TCP4, TCP4_BLOCK)[:-1], id="v2-block-short-1"),
    pytest.param(v2(PROXY, TCP4, b"", length=MAX_BLOCK), id="v2-at-cap-waits"),
]


@pytest.mark.parametrize("data", INCOMPLETE)
def test_incomplete_headers(data: bytes) -> None:
    assert parse(data) is None


def test_the_caps() -> None:
    # §2.1's worst case; and the v2 cap leaves room for AF_UNIX addresses and large TLVs.
    assert MAX_V1_LENGTH == 107
    assert 16 + 216 + 1024 <= MAX_V2_LENGTH <= 16 + 0xFFFF


# The encoder: random headers and the ProxyHeader each should parse to.


def expected_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


ports = st.integers(min_value=0, max_value=65535)
# ip_addresses() is typed as either family whatever ``v``: re-made from the packed bytes.
ipv4s = st.ip_addresses(v=4).map(lambda a: ipaddress.IPv4Address(a.packed))
# Mapped addresses are rare among random IPv6 ones; half of these are.
ipv6s = st.one_of(
    st.ip_addresses(v=6).map(lambda a: ipaddress.IPv6Address(a.packed)),
    ipv4s.map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}")),
)
tlvs = st.lists(
    st.builds(tlv, st.integers(min_value=0, max_value=255), st.binary(max_size=40)), max_size=6
).map(b"".join)


@st.composite
def v1_addresses(
    draw: st.DrawFn, kind: str
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str]:
    """An address for a v1 line of ``kind`` and one of the ways to write it."""
    if kind == "TCP4":
        address = draw(ipv4s)
        return address, str(address)
    address6 = draw(ipv6s)
    forms = [str(address6), address6.exploded, str(address6).upper()]
    if address6.ipv4_mapped is not None:
        forms.append(f"::ffff:{address6.ipv4_mapped}")
    return address6, draw(st.sampled_from(forms))


@st.composite
def v1_headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    kind = draw(st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]))
    if kind == "UNKNOWN":
        # "PROXY UNKNOWN" (13) + " " + rest + CRLF within 107 bytes.
        rest = draw(st.none() | st.binary(max_size=91).filter(lambda b: b"\r" not in b))
        if rest is None:
            return b"PROXY UNKNOWN\r\n", UNKNOWN_V1
        return b"PROXY UNKNOWN " + rest.replace(b"\n", b"") + b"\r\n", UNKNOWN_V1
    source_port, dest_port = draw(ports), draw(ports)
    (source, source_text), (dest, dest_text) = draw(v1_addresses(kind)), draw(v1_addresses(kind))
    line = f"PROXY {kind} {source_text} {dest_text} {source_port} {dest_port}\r\n".encode()
    header = ProxyHeader(1, expected_ip(source), source_port, expected_ip(dest), dest_port)
    return line, header


@st.composite
def v2_headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    kind = draw(st.sampled_from(["TCP4", "TCP6", "LOCAL", "UNSPEC", "UNIX"]))
    if kind == "LOCAL":
        family = draw(st.integers(min_value=0, max_value=255))
        return v2(LOCAL, family, draw(st.binary(max_size=64))), UNKNOWN_V2
    if kind == "UNSPEC":
        return v2(PROXY, UNSPEC, draw(st.binary(max_size=64))), UNKNOWN_V2
    if kind == "UNIX":
        family = draw(st.sampled_from([UNIX_STREAM, UNIX_DGRAM]))
        paths = draw(st.binary(min_size=216, max_size=216))
        return v2(PROXY, family, paths + draw(tlvs)), UNKNOWN_V2
    source_port, dest_port = draw(ports), draw(ports)
    source, dest = (draw(ipv4s), draw(ipv4s)) if kind == "TCP4" else (draw(ipv6s), draw(ipv6s))
    block = inet(str(source), str(dest), source_port, dest_port) + draw(tlvs)
    header = ProxyHeader(2, expected_ip(source), source_port, expected_ip(dest), dest_port)
    return v2(PROXY, TCP4 if kind == "TCP4" else TCP6, block), header


headers = st.one_of(v1_headers(), v2_headers())


@given(headers, st.binary(max_size=64))
def test_encoded_headers_parse_back_with_their_exact_length(
    encoded: tuple[bytes, ProxyHeader], rest: bytes
) -> None:
    data, header = encoded
    assert parse(data + rest) == (header, len(data))


@given(headers)
def test_every_proper_prefix_waits(encoded: tuple[bytes, ProxyHeader]) -> None:
    data, _ = encoded
    for size in range(len(data)):
        assert parse(data[:size]) is None, size


@st.composite
def mutated_headers(draw: st.DrawFn) -> bytes:
    """A valid header and some bytes after it, with one byte changed (in the header or after
    it), then maybe cut short."""
    header, _ = draw(headers)
    data = header + draw(st.binary(max_size=8))
    index = draw(st.integers(min_value=0, max_value=len(data) - 1))
    byte = bytes((draw(st.integers(min_value=0, max_value=255)),))
    data = data[:index] + byte + data[index + 1 :]
    return data[: draw(st.integers(min_value=0, max_value=len(data)))]


arbitrary = st.one_of(
    st.binary(max_size=200),
    st.builds(
        bytes.__add__,
        st.sampled_from([b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", SIGNATURE]),
        st.binary(max_size=200),
    ),
    mutated_headers(),
)


@settings(max_examples=300)
@given(arbitrary)
def test_arbitrary_bytes_get_one_of_three_answers_and_keep_it(data: bytes) -> None:
    """Fed one more byte at a time, as a slow client would: None only below the bound of what
    the bytes could still be; then a header that more bytes do not change, or an error that they
    do not take back. Nothing but ProxyHeaderError is ever raised (pytest fails on any other)."""
    settled: tuple[ProxyHeader, int] | None = None
    failed = False
    for size in range(len(data) + 1):
        prefix = data[:size]
        try:
            result = parse(prefix)
        except ProxyHeaderError:
            assert settled is None, "a header was taken back"
            failed = True
            continue
        assert not failed, "an error was taken back"
        if result is None:
            assert settled is None
            if prefix[:1] == b"P":
                assert size < MAX_V1_LENGTH
            elif size >= 16:
                assert size < 16 + int.from_bytes(prefix[14:16], "big") <= MAX_V2_LENGTH
            continue
        header, consumed = result
        assert 0 < consumed <= size
        assert consumed <= (MAX_V1_LENGTH if header.version == 1 else MAX_V2_LENGTH)
        if settled is None:
            assert consumed == size  # a header is recognised at its last byte, not later
            settled = result
        assert result == settled
