"""A raw-frame HTTP/2 client for the conformance suite, in the manner of h2spec.

It writes whatever bytes a case needs (frames built with hyperframe, or by hand with
`raw_frame` when the frame is one hyperframe refuses to build: a wrong length, a reserved bit,
an unknown type) and reads the gateway's frames back one at a time. Header blocks are encoded
with hpack, or given as raw bytes when the block itself is the malformed part.

The verdicts follow h2spec's (`spec.VerifyConnectionError`, `spec.VerifyStreamError`,
`spec.VerifyPingFrameWithAck`), with one strictness added: h2spec also passes a case when the
connection is merely closed, whereas here the error code must be seen in a GOAWAY or
RST_STREAM frame (a bare close cannot be told from a crash).

Reads have a deadline only so that a hung gateway fails the case instead of the run; no case
passes or fails on how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Final, Literal

import hpack
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hpack.hpack import encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.harness import LOCAL

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# A deadline for a gateway that never answers: the case then fails (not a timing assertion).
READ_DEADLINE: Final = 10.0

# Frame type codes (RFC 9113 §6) for frames built by hand.
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# Flags (RFC 9113 §6).
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

Fields = Sequence[tuple[str, str]]


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame, byte for byte (RFC 9113 §4.1): 24-bit length, type, flags, R + stream id.

    ``stream_id`` may carry the reserved bit (0x80000000): the receiver must ignore it.
    """
    header = struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id)
    return header + payload


def request_fields(
    method: str = "GET",
    path: str = "/",
    *,
    authority: str = "example.test",
    scheme: str = "http",
    extra: Fields = (),
) -> list[tuple[str, str]]:
    """A valid request's header list: the four pseudo-header fields first (RFC 9113 §8.3.1)."""
    return [
        (":method", method),
        (":scheme", scheme),
        (":path", path),
        (":authority", authority),
        *extra,
    ]


@dataclass
class Response:
    """A stream's complete response as the client read it."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    data_frames: list[DataFrame] = field(default_factory=list)

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class ConnectionClosed(AssertionError):
    """The gateway closed the connection where the case expected a frame."""


class RawH2Client:
    """One client connection (prior knowledge h2c, RFC 9113 §3.3)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        # The gateway's SETTINGS (RFC 9113 §6.5), as first sent.
        self.server_settings: dict[int, int] = {}
        # Every frame read, in order (for the message of a failed assertion).
        self.seen: list[Frame] = []
        # Frames read but not yet taken by `stream_frame`, and decoded header blocks, by stream.
        self._unread: defaultdict[int, deque[Frame]] = defaultdict(deque)
        self._fields: defaultdict[int, deque[list[tuple[str, str]]]] = defaultdict(deque)
        self._block = bytearray()
        self._ping_counter = 0

    @classmethod
    async def open(cls, port: int, ssl: SSLContext | None = None) -> RawH2Client:
        reader, writer = await asyncio.open_connection(
            LOCAL, port, ssl=ssl, server_hostname="localhost" if ssl else None
        )
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    # ------------------------------------------------------------------------ sending

    def send(self, *parts: Frame | bytes) -> None:
        """Write frames (hyperframe's or raw bytes) in one write, so the gateway reads them
        together and no later part reaches a socket it already closed."""
        self.writer.write(
            b"".join(part if isinstance(part, bytes) else part.serialize() for part in parts)
        )

    async def handshake(self, settings: dict[int, int] | None = None) -> None:
        """Preface and SETTINGS both ways, acknowledged both ways (RFC 9113 §3.4, §6.5.3)."""
        self.send(PREFACE, SettingsFrame(0, settings or {}))
        got_settings = got_ack = False
        while not (got_settings and got_ack):
            frame = await self.read_frame()
            if isinstance(frame, SettingsFrame):
                if "ACK" in frame.flags:
                    got_ack = True
                else:
                    got_settings = True
                    self.server_settings = dict(frame.settings)
                    self.send(SettingsFrame(0, flags=["ACK"]))
            elif isinstance(frame, GoAwayFrame):
                raise AssertionError(f"GOAWAY during the handshake: {frame!r}")

    def encode(self, fields: Fields) -> bytes:
        return self.encoder.encode(list(fields))

    def headers(
        self,
        stream_id: int,
        fields: Fields | None = None,
        *,
        end_stream: bool = True,
        end_headers: bool = True,
        block: bytes | None = None,
    ) -> HeadersFrame:
        """A HEADERS frame carrying ``fields`` (hpack-encoded) or a raw ``block``."""
        flags = []
        if end_stream:
            flags.append("END_STREAM")
        if end_headers:
            flags.append("END_HEADERS")
        data = block if block is not None else self.encode(fields or request_fields())
        return HeadersFrame(stream_id, data, flags=flags)

    # ------------------------------------------------------------------------ reading

    async def read_frame(self) -> Frame:
        """The next frame; ConnectionClosed when the gateway closed the connection."""
        try:
            header = await asyncio.wait_for(self.reader.readexactly(9), READ_DEADLINE)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise ConnectionClosed(self._trail("connection closed")) from None
        frame, length = Frame.parse_frame_header(memoryview(header))
        try:
            body = await asyncio.wait_for(self.reader.readexactly(length), READ_DEADLINE)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise ConnectionClosed(self._trail("connection closed mid-frame")) from None
        frame.parse_body(memoryview(body))
        self.seen.append(frame)
        if isinstance(frame, (HeadersFrame, ContinuationFrame)):
            # Every block is decoded as it arrives, whoever reads the frame: HPACK's dynamic
            # table is the connection's, in the order of the blocks (RFC 7541 §2.2).
            self._block += frame.data
            if "END_HEADERS" in frame.flags:
                decoded = self.decoder.decode(bytes(self._block), raw=True)
                self._block.clear()
                self._fields[frame.stream_id].append(
                    [(name.decode("latin-1"), value.decode("latin-1")) for name, value in decoded]
                )
        if frame.stream_id:
            self._unread[frame.stream_id].append(frame)
        return frame

    async def stream_frame(self, stream_id: int) -> Frame:
        """The next frame of ``stream_id``, including one already read while waiting for
        another stream's."""
        queue = self._unread[stream_id]
        while not queue:
            frame = await self.read_frame()
            if isinstance(frame, GoAwayFrame) and frame.error_code:
                raise AssertionError(self._trail(f"GOAWAY while reading stream {stream_id}"))
        return queue.popleft()

    async def is_closed(self) -> bool:
        """Read until the gateway closes the connection (frames still in flight are skipped);
        False if it kept it open until the read deadline."""
        try:
            while True:
                await self.read_frame()
        except ConnectionClosed:
            return True
        except TimeoutError:
            return False

    def _trail(self, what: str) -> str:
        frames = "\n  ".join(repr(frame) for frame in self.seen[-8:])
        return f"{what}; last frames read:\n  {frames}"

    # ------------------------------------------------------------------------ verdicts

    async def expect_connection_error(self, *codes: ErrorCodes) -> GoAwayFrame:
        """A connection error (RFC 9113 §5.4.1): GOAWAY with one of ``codes``, then close."""
        while True:
            frame = await self.read_frame()
            if isinstance(frame, GoAwayFrame):
                break
        assert frame.error_code in codes, self._trail(
            f"GOAWAY {_name(frame.error_code)}, expected one of {[c.name for c in codes]}"
        )
        await self._closed_after(frame)
        return frame

    async def _closed_after(self, goaway: GoAwayFrame) -> None:
        """After a connection error's GOAWAY: the connection closes, with no second GOAWAY
        for the same error (RFC 9113 §6.8 allows several, the last stream identifier only
        falling, but a repeat says nothing new)."""
        assert await self.is_closed(), "the connection stayed open after GOAWAY"
        same = [
            f for f in self.seen if isinstance(f, GoAwayFrame) and f.error_code == goaway.error_code
        ]
        assert len(same) == 1, self._trail("more than one GOAWAY for one error")

    async def expect_stream_error(self, stream_id: int, *codes: ErrorCodes) -> Frame:
        """A stream error (RFC 9113 §5.4.2): RST_STREAM on ``stream_id`` with one of ``codes``.

        As h2spec's VerifyStreamError, a connection error with one of ``codes`` passes too: an
        endpoint may always treat a stream error as a connection error (RFC 9113 §5.4.1).
        """
        while True:
            frame = await self.read_frame()
            if isinstance(frame, RstStreamFrame) and frame.stream_id == stream_id:
                assert frame.error_code in codes, self._trail(
                    f"RST_STREAM {_name(frame.error_code)}, expected one of "
                    f"{[c.name for c in codes]}"
                )
                return frame
            if isinstance(frame, GoAwayFrame):
                assert frame.error_code in codes, self._trail(
                    f"GOAWAY {_name(frame.error_code)}, expected one of {[c.name for c in codes]}"
                )
                await self._closed_after(frame)
                return frame

    async def expect_alive(self, data: bytes | None = None) -> list[Frame]:
        """The connection still works: a PING is answered with an ACK echoing its data
        (RFC 9113 §6.7). Fails on a GOAWAY, a reset or a close first; the frames read before
        the ACK are returned for further checks."""
        if data is None:
            self._ping_counter += 1
            data = b"alive%03d" % self._ping_counter
        self.send(PingFrame(0, data))
        before: list[Frame] = []
        while True:
            frame = await self.read_frame()
            if isinstance(frame, PingFrame) and "ACK" in frame.flags:
                assert frame.opaque_data == data, self._trail("PING ACK with other data")
                return before
            assert not isinstance(frame, (GoAwayFrame, RstStreamFrame)), self._trail(
                "an error where none was expected"
            )
            before.append(frame)

    async def response(self, stream_id: int, *, window_updates: bool = True) -> Response:
        """Read the complete response on ``stream_id`` (frames of other streams stay queued).

        With ``window_updates`` each DATA frame's length is given back to both windows, so a
        body of any size arrives.
        """
        status = 0
        headers: list[tuple[str, str]] = []
        body = bytearray()
        data_frames: list[DataFrame] = []
        while True:
            frame = await self.stream_frame(stream_id)
            if isinstance(frame, RstStreamFrame):
                raise AssertionError(self._trail("RST_STREAM instead of a response"))
            if isinstance(frame, (HeadersFrame, ContinuationFrame)):
                if "END_HEADERS" in frame.flags:
                    decoded = self._fields[stream_id].popleft()
                    code = int(dict(decoded).get(":status", "0"))
                    if not status and code >= 200:
                        status = code
                        headers = decoded
            elif isinstance(frame, DataFrame):
                data_frames.append(frame)
                body += frame.data
                length = frame.flow_controlled_length
                if window_updates and length:
                    self.send(WindowUpdateFrame(0, length), WindowUpdateFrame(stream_id, length))
            if "END_STREAM" in frame.flags:
                return Response(status, headers, bytes(body), data_frames)


# ---------------------------------------------------------------- HPACK by hand (RFC 7541)

_HUFFMAN: Final = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)

# RFC 7541 Appendix A: static table entries the blocks below use.
STATIC_AUTHORITY: Final = 1
STATIC_METHOD_GET: Final = 2
STATIC_METHOD_POST: Final = 3
STATIC_PATH_ROOT: Final = 4
STATIC_SCHEME_HTTP: Final = 6
STATIC_USER_AGENT: Final = 58


def hpack_int(value: int, prefix_bits: int, pattern: int = 0) -> bytes:
    """An integer with an N-bit prefix (RFC 7541 §5.1), ``pattern`` in the first octet's
    high bits."""
    encoded = encode_integer(value, prefix_bits)
    encoded[0] |= pattern
    return bytes(encoded)


def hpack_str(value: bytes, *, huffman: bool = False) -> bytes:
    """A string literal (RFC 7541 §5.2), Huffman-coded or not."""
    if huffman:
        coded = _HUFFMAN.encode(value)
        return hpack_int(len(coded), 7, 0x80) + coded
    return hpack_int(len(value), 7) + value


def indexed(index: int) -> bytes:
    """An indexed header field (RFC 7541 §6.1)."""
    return hpack_int(index, 7, 0x80)


LiteralKind = Literal["incremental", "without", "never"]
# RFC 7541 §6.2.1-§6.2.3: the pattern and prefix of each literal representation.
_LITERAL: Final[dict[str, tuple[int, int]]] = {
    "incremental": (0x40, 6),
    "without": (0x00, 4),
    "never": (0x10, 4),
}


def literal(
    name: int | bytes, value: bytes, kind: LiteralKind = "without", *, huffman: bool = False
) -> bytes:
    """A literal header field with an indexed name (``name`` an index) or a new name."""
    pattern, prefix = _LITERAL[kind]
    if isinstance(name, int):
        head = hpack_int(name, prefix, pattern)
    else:
        head = hpack_int(0, prefix, pattern) + hpack_str(name, huffman=huffman)
    return head + hpack_str(value, huffman=huffman)


def table_size_update(size: int) -> bytes:
    """A dynamic table size update (RFC 7541 §6.3)."""
    return hpack_int(size, 5, 0x20)


# GET / on http://example.test, every field from the static table or a literal that leaves the
# dynamic table alone: blocks built from it decode the same on any connection.
GET_BLOCK: Final = (
    indexed(STATIC_METHOD_GET)
    + indexed(STATIC_SCHEME_HTTP)
    + indexed(STATIC_PATH_ROOT)
    + literal(STATIC_AUTHORITY, b"example.test")
)


def settings_payload(pairs: Iterable[tuple[int, int]]) -> bytes:
    """A SETTINGS payload, pairs in order (hyperframe keeps only the last of a repeated one)."""
    return b"".join(struct.pack(">HI", ident, value) for ident, value in pairs)


def _name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


__all__ = [
    "ACK",
    "CONTINUATION",
    "DATA",
    "END_HEADERS",
    "END_STREAM",
    "GET_BLOCK",
    "GOAWAY",
    "HEADERS",
    "PADDED",
    "PING",
    "PREFACE",
    "PRIORITY",
    "PRIORITY_FLAG",
    "PUSH_PROMISE",
    "RST_STREAM",
    "SETTINGS",
    "STATIC_AUTHORITY",
    "STATIC_METHOD_GET",
    "STATIC_METHOD_POST",
    "STATIC_PATH_ROOT",
    "STATIC_SCHEME_HTTP",
    "STATIC_USER_AGENT",
    "WINDOW_UPDATE",
    "ConnectionClosed",
    "ErrorCodes",
    "RawH2Client",
    "Response",
    "SettingCodes",
    "hpack_int",
    "hpack_str",
    "indexed",
    "literal",
    "raw_frame",
    "request_fields",
    "settings_payload",
    "table_size_update",
]
