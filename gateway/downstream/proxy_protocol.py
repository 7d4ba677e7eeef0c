"""The PROXY protocol header, versions 1 and 2 (HAProxy's doc/proxy-protocol.txt, as of 2.9):
a pure parser for what a trusted load balancer sends before the client's first byte (issue 10).

Incremental without state: the connection calls `parse_proxy_header` with everything received
so far and gets a header (with the number of bytes to drop), None (send more) or an error. An
error comes as soon as a byte shows that no header can follow, and is never taken back by more
bytes; None is bounded: never past MAX_V1_LENGTH bytes for a v1 line, never past the length a v2
header announces, which is itself checked against MAX_V2_LENGTH before waiting for it.

The spec asks receivers to drop any sequence that does not match exactly (§2.1), so this is
strict where the text is: single spaces, no heading zeroes, CRLF only, the v2 version nibble and
commands, and the family byte's unassigned values.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

# §2.1: "a 108-byte buffer is always enough": the worst case is
# "PROXY UNKNOWN <39-char IPv6> <39-char IPv6> 65535 65535\r\n", 107 bytes with the CRLF.
MAX_V1_LENGTH: Final = 107

# §2.2: the 16-byte fixed part, then as many bytes as its length field says (up to 65535).
# The largest address block is AF_UNIX's 216 bytes; every TLV the spec registers, each at its
# largest, adds about 1.3 KiB (ALPN, AUTHORITY and NETNS 255 each, UNIQUE_ID 128, SSL with its
# CN, cipher and algorithm names), and the cloud ones are a few bytes (AWS 0xEA with a VPC
# endpoint id, Azure 0xEE, GCP 0xE0). A 4 KiB block is about three times all of that at once,
# and keeps what a peer can make the gateway hold before the header's verdict under one request
# line at the default server.limits.max_line (8190).
MAX_V2_BLOCK: Final = 4096
MAX_V2_LENGTH: Final = 16 + MAX_V2_BLOCK

_V1_SIGNATURE: Final = b"PROXY "
# §2.1: what may follow "PROXY "; UNKNOWN is followed by a space (the ignored rest) or CRLF.
_V1_KEYWORDS: Final = (b"TCP4 ", b"TCP6 ", b"UNKNOWN ", b"UNKNOWN\r")
_V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED: Final = 16

# §2.2, the 13th byte: version 2 in the high nibble, the command in the low one.
_V2_LOCAL: Final = 0x0
_V2_PROXY: Final = 0x1
# §2.2, the 14th byte ("in practice, the following protocol bytes are expected"; the others
# are refused): the size of the address block each family and protocol takes. UDP (0x12, 0x22)
# is refused too, although §2.2 would let a receiver fall back to UNSPEC for it: a datagram
# flow's addresses do not describe this TCP connection, and an error shows the misconfigured
# sender where a fallback would quietly log the load balancer's address for every client.
_V2_TCP4: Final = 0x11
_V2_TCP6: Final = 0x21
_V2_ADDRESS_SIZES: Final = {0x00: 0, _V2_TCP4: 12, _V2_TCP6: 36, 0x31: 216, 0x32: 216}
_V2_UDP: Final = frozenset((0x12, 0x22))


class ProxyHeaderError(Exception):
    """The bytes are not a valid PROXY header (the connection is answered 400 and closed)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int  # 1 or 2
    # The original client's address and port; None when the header says LOCAL (v2) or
    # UNKNOWN (v1), or carries an address family the gateway does not use (AF_UNIX, v2 UNSPEC):
    # the connection's own peer address applies then.
    source_ip: str | None
    source_port: int | None
    dest_ip: str | None
    dest_port: int | None


_V1_UNKNOWN: Final = ProxyHeader(1, None, None, None, None)
_V2_UNKNOWN: Final = ProxyHeader(2, None, None, None, None)


def parse_proxy_header(data: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    """Parse a PROXY header at the start of ``data``.

    Returns the header and the number of bytes it took (the rest of ``data`` is the client's
    first bytes of HTTP, or of a TLS ClientHello), None when ``data`` is a proper prefix of a
    header that may still become valid (more bytes needed), and raises ProxyHeaderError when it
    can never become one.
    """
    if not data:
        return None
    # The two signatures differ in their first byte ("P" and CR), so it picks the version;
    # only as much as that version can take is copied (a memoryview has no find()).
    first = data[0]
    if first == _V1_SIGNATURE[0]:
        return _parse_v1(bytes(data[:MAX_V1_LENGTH]))
    if first == _V2_SIGNATURE[0]:
        return _parse_v2(bytes(data[:MAX_V2_LENGTH]))
    raise ProxyHeaderError("not a PROXY protocol header")


def _parse_v1(head: bytes) -> tuple[ProxyHeader, int] | None:
    size = min(len(head), len(_V1_SIGNATURE))
    if head[:size] != _V1_SIGNATURE[:size]:
        raise ProxyHeaderError("not a PROXY protocol header")
    # §2.1 decodes the addresses only once the CRLF is in, but the protocol keyword can be
    # refused at once ("abort the connection as soon as possible").
    rest = head[len(_V1_SIGNATURE) : len(_V1_SIGNATURE) + 8]
    if not any(keyword.startswith(rest[: len(keyword)]) for keyword in _V1_KEYWORDS):
        raise ProxyHeaderError("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN")
    # The line ends at its first CR, which must be followed by LF: §2.1 forbids ending it with
    # a single CR or LF. The CRLF must fit in MAX_V1_LENGTH bytes: the CR is at index 105 or before.
    end = head.find(b"\r", 0, MAX_V1_LENGTH - 1)
    if head.find(b"\n", 0, end if end >= 0 else MAX_V1_LENGTH) >= 0:
        raise ProxyHeaderError("PROXY v1 line ends with a bare LF")
    if end < 0 and len(head) >= MAX_V1_LENGTH - 1:
        raise ProxyHeaderError(f"PROXY v1 line has no CRLF within {MAX_V1_LENGTH} bytes")
    if end < 0 or end + 1 == len(head):
        return None
    if head[end + 1] != 0x0A:
        raise ProxyHeaderError("PROXY v1 line ends with a bare CR")
    return _parse_v1_line(head[len(_V1_SIGNATURE) : end]), end + 2


def _parse_v1_line(line: bytes) -> ProxyHeader:
    # §2.1: for UNKNOWN "the receiver must ignore anything presented before the CRLF".
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        return _V1_UNKNOWN
    # Exactly one space between fields: a doubled, leading or trailing one makes an empty field.
    fields = line.split(b" ")
    if len(fields) != 5:
        raise ProxyHeaderError("PROXY v1 line does not have 5 fields after PROXY")
    protocol, source, dest, source_port, dest_port = fields
    if protocol == b"TCP4":
        version = 4
    elif protocol == b"TCP6":
        version = 6
    else:
        raise ProxyHeaderError("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN")
    return ProxyHeader(
        1,
        _v1_address(source, version),
        _v1_port(source_port),
        _v1_address(dest, version),
        _v1_port(dest_port),
    )


def _v1_address(text: bytes, version: int) -> str:
    """An address in the family the keyword announced (§2.1: "The advertised protocol family
    dictates what format to use"): ipaddress refuses heading zeroes in IPv4 (octal confusion)."""
    try:
        literal = text.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 address is not ASCII") from None
    # ipaddress takes an IPv6 scope ("fe80::1%eth0"), which is not an address on the wire.
    if "%" in literal:
        raise ProxyHeaderError("PROXY v1 address has a scope id")
    try:
        address = ipaddress.IPv4Address(literal) if version == 4 else ipaddress.IPv6Address(literal)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 address is not an IPv{version} address") from None
    return _canonical(address)


def _v1_port(text: bytes) -> int:
    # §2.1: decimal in [0..65535], "Heading zeroes are not permitted"; isdigit() on bytes is
    # ASCII digits only, so no sign, space or other script's digits get through int().
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == 0x30):
        raise ProxyHeaderError("PROXY v1 port is not a decimal without heading zeroes")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError("PROXY v1 port is beyond 65535")
    return port


def _parse_v2(head: bytes) -> tuple[ProxyHeader, int] | None:
    size = min(len(head), len(_V2_SIGNATURE))
    if head[:size] != _V2_SIGNATURE[:size]:
        raise ProxyHeaderError("not a PROXY protocol header")
    if len(head) <= len(_V2_SIGNATURE):
        return None
    # §2.2: "it must always be sent as \x2 and the receiver must only accept this value", and
    # "Receivers must drop connections presenting unexpected values" of the command.
    version_command = head[12]
    if version_command >> 4 != 2:
        raise ProxyHeaderError("PROXY v2 header has a version other than 2")
    command = version_command & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError("PROXY v2 command is neither LOCAL nor PROXY")
    # LOCAL: "discard the protocol block including the family which is ignored" (§2.2).
    address_size = 0
    if command == _V2_PROXY and len(head) > 13:
        family = head[13]
        if family in _V2_UDP:
            raise ProxyHeaderError("PROXY v2 header is for UDP")
        if family not in _V2_ADDRESS_SIZES:
            raise ProxyHeaderError("PROXY v2 address family or protocol is unassigned")
        address_size = _V2_ADDRESS_SIZES[family]
    if len(head) < _V2_FIXED:
        return None
    # Both checks before waiting: a length that can never do is refused at once.
    length = int.from_bytes(head[14:16], "big")
    if length > MAX_V2_BLOCK:
        raise ProxyHeaderError(f"PROXY v2 header is longer than {MAX_V2_LENGTH} bytes")
    if length < address_size:
        raise ProxyHeaderError("PROXY v2 length is shorter than its addresses")
    total = _V2_FIXED + length
    if len(head) < total:
        return None
    if command == _V2_LOCAL:
        return _V2_UNKNOWN, total
    family = head[13]
    if family == 0x00:
        # UNSPEC: "The receiver should ignore address information", and has no address size
        # to find TLVs after, so the whole block is skipped.
        return _V2_UNKNOWN, total
    _check_tlvs(head, _V2_FIXED + address_size, total)
    if family == _V2_TCP4:
        header = ProxyHeader(
            2,
            str(ipaddress.IPv4Address(head[16:20])),
            int.from_bytes(head[24:26], "big"),
            str(ipaddress.IPv4Address(head[20:24])),
            int.from_bytes(head[26:28], "big"),
        )
    elif family == _V2_TCP6:
        header = ProxyHeader(
            2,
            _canonical(ipaddress.IPv6Address(head[16:32])),
            int.from_bytes(head[48:50], "big"),
            _canonical(ipaddress.IPv6Address(head[32:48])),
            int.from_bytes(head[50:52], "big"),
        )
    else:
        # AF_UNIX: a path says nothing the per-IP limits or the logs could use.
        header = _V2_UNKNOWN
    return header, total


def _check_tlvs(head: bytes, start: int, end: int) -> None:
    """§2.2: the bytes after the addresses are TLVs (a type byte, a 2-byte big-endian length,
    the value). None is used yet, but each must fit in the block. PP2_TYPE_CRC32C is not
    verified: §2.2.3 requires it only of receivers that support the checksum."""
    position = start
    while position < end:
        if end - position < 3:
            raise ProxyHeaderError("PROXY v2 TLV is cut short")
        position += 3 + int.from_bytes(head[position + 1 : position + 3], "big")
        if position > end:
            raise ProxyHeaderError("PROXY v2 TLV runs past the header")


def _canonical(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    # An IPv4-mapped IPv6 address (::ffff:a.b.c.d, RFC 4291 §2.5.5.2) is the IPv4 client as a
    # dual-stack proxy saw it: one client, one string, for per-IP limits and the logs.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
