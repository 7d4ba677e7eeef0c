"""HTTP/2 on raw sockets for the security suite: frames written byte for byte, frames read back.

An attack needs frames no client library sends (a header block that never ends, a reset right
after every HEADERS, windows of one byte), so the attacking side builds its frames itself
(hyperframe, hpack) and reads the gateway's answer as a summary: GOAWAY codes, resets, statuses
and DATA byte counts per stream, never the payloads, so that the attacker's own memory stays
flat while a test measures the process's resident set. The well-behaved client measured
alongside an attack is python-hyper/h2 as a client (`H2Client`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from hpack import Decoder
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

# RFC 9113 §3.4: what every client connection starts with.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 §7 error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

# RFC 9113 §6.5.2 setting identifiers.
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4

# A guard against a hang while reading, never a timing assertion.
IDLE = 5.0


# --- frames out -------------------------------------------------------------------------------


def settings(values: dict[int, int] | None = None) -> bytes:
    return SettingsFrame(0, settings=values or {}).serialize()


def settings_ack() -> bytes:
    return SettingsFrame(0, flags=["ACK"]).serialize()


def headers(
    stream_id: int, block: bytes, *, end_stream: bool = True, end_headers: bool = True
) -> bytes:
    flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers else [])
    return HeadersFrame(stream_id, data=block, flags=flags).serialize()


def continuation(stream_id: int, block: bytes, *, end_headers: bool = False) -> bytes:
    flags = ["END_HEADERS"] if end_headers else []
    return ContinuationFrame(stream_id, data=block, flags=flags).serialize()


def data(stream_id: int, payload: bytes, *, end_stream: bool = False) -> bytes:
    flags = ["END_STREAM"] if end_stream else []
    return DataFrame(stream_id, data=payload, flags=flags).serialize()


def rst_stream(stream_id: int, code: int = CANCEL) -> bytes:
    return RstStreamFrame(stream_id, error_code=code).serialize()


def ping(payload: bytes = b"\0" * 8) -> bytes:
    return PingFrame(0, opaque_data=payload).serialize()


def window_update(stream_id: int, increment: int) -> bytes:
    return WindowUpdateFrame(stream_id, window_increment=increment).serialize()


def request_fields(
    path: bytes, method: bytes = b"GET", extra: Iterable[tuple[bytes, bytes]] = ()
) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", b"a"),
        (b":path", path),
        *extra,
    ]


def hello(values: dict[int, int] | None = None) -> bytes:
    """The client preface and its SETTINGS (RFC 9113 §3.4), plus the ACK of the server's
    SETTINGS sent ahead: an attacker does not wait for them."""
    return PREFACE + settings(values) + settings_ack()


# --- frames in --------------------------------------------------------------------------------


@dataclass
class Received:
    """What the gateway sent on one connection, frame by frame, summarised."""

    # (error code, last stream id) of each GOAWAY, in order.
    goaways: list[tuple[int, int]] = field(default_factory=list)
    # RST_STREAM error code by stream.
    resets: dict[int, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    # DATA bytes by stream (flow-controlled length, padding included).
    data: dict[int, int] = field(default_factory=dict)
    # Streams the gateway ended (END_STREAM).
    ended: set[int] = field(default_factory=set)
    ping_acks: int = 0
    # The server's SETTINGS (the last frame of them).
    settings: dict[int, int] = field(default_factory=dict)
    # The gateway closed the TCP connection (EOF or reset).
    closed: bool = False

    @property
    def goaway(self) -> tuple[int, int]:
        """The first GOAWAY; fails when there was none."""
        assert self.goaways, f"no GOAWAY: {self}"
        return self.goaways[0]

    def completed(self) -> set[int]:
        """Streams answered in full: a status and END_STREAM, never reset."""
        return {s for s in self.ended if s in self.statuses and s not in self.resets}


class FrameReader(asyncio.Protocol):
    """The attacker's side of a connection: frames parsed as they arrive, kept as a summary.

    A protocol rather than a StreamReader: a write failing once the gateway closed (the flood
    still being sent) must not hide the frames that arrived before, the GOAWAY above all
    (StreamReader raises its connection error before the bytes it holds).
    """

    def __init__(self) -> None:
        self.received = Received()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._decoder = Decoder()
        self._arrived = asyncio.Event()
        self._frames: list[Frame] = []
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, chunk: bytes) -> None:
        buffer = self._buffer
        buffer += chunk
        offset = 0
        while len(buffer) - offset >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buffer)[offset : offset + 9])
            if len(buffer) - offset - 9 < length:
                break
            frame.parse_body(memoryview(bytes(buffer[offset + 9 : offset + 9 + length])))
            offset += 9 + length
            self._note(frame)
            self._frames.append(frame)
        del buffer[:offset]
        if self._frames:
            self._arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.received.closed = True
        self._arrived.set()
        if not self.lost.done():
            self.lost.set_result(None)

    def write(self, payload: bytes) -> None:
        """Send bytes unless the gateway already closed (what an attacker's flood meets)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(payload)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _note(self, frame: Frame) -> None:
        seen = self.received
        stream = frame.stream_id
        if isinstance(frame, GoAwayFrame):
            seen.goaways.append((frame.error_code, frame.last_stream_id))
        elif isinstance(frame, RstStreamFrame):
            seen.resets[stream] = frame.error_code
        elif isinstance(frame, HeadersFrame):
            # The HPACK state needs every block decoded; the gateway's blocks fit one frame.
            assert "END_HEADERS" in frame.flags, "the gateway split a header block"
            for name, value in self._decoder.decode(frame.data, raw=True):
                if name == b":status":
                    status = int(value)
                    if status >= 200:
                        seen.statuses[stream] = status
        elif isinstance(frame, DataFrame):
            seen.data[stream] = seen.data.get(stream, 0) + frame.flow_controlled_length
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                seen.ping_acks += 1
        elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            seen.settings.update(frame.settings)
        if "END_STREAM" in frame.flags and isinstance(frame, (HeadersFrame, DataFrame)):
            seen.ended.add(stream)

    async def frame(self, idle: float = IDLE) -> Frame | None:
        """The next frame, or None once the gateway closed and every frame was taken."""
        while not self._frames:
            if self.received.closed:
                return None
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), idle)
            except TimeoutError:
                raise AssertionError(f"nothing for {idle} s: {self.received}") from None
        return self._frames.pop(0)

    async def until_close(self, idle: float = IDLE) -> Received:
        """Read until the gateway closes; fails if ``idle`` seconds pass without a frame."""
        while await self.frame(idle) is not None:
            pass
        return self.received

    async def until(self, what: type[Frame], idle: float = IDLE) -> Frame:
        """Read until a frame of type ``what``; fails at the end or after ``idle`` seconds."""
        while True:
            frame = await self.frame(idle)
            assert frame is not None, f"closed before a {what.__name__}: {self.received}"
            if isinstance(frame, what):
                return frame


async def open_h2(port: int, values: dict[int, int] | None = None) -> FrameReader:
    """A raw HTTP/2 connection (prior knowledge, RFC 9113 §3.3) with its preface sent."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(FrameReader, LOCAL, port)
    protocol.write(hello(values))
    return protocol


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


# --- a well-behaved client ---------------------------------------------------------------------


@dataclass
class H2Response:
    status: int = 0
    body: bytearray = field(default_factory=bytearray)
    reset: int | None = None


class H2Client:
    """A plain HTTP/2 client on python-hyper/h2: concurrent streams on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self._responses: dict[int, H2Response] = {}
        self._done: dict[int, asyncio.Future[H2Response]] = {}
        self._window = asyncio.Event()
        self.goaway: tuple[int, int] | None = None
        self.conn.initiate_connection()
        self._flush()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, port: int) -> H2Client:
        reader, writer = await asyncio.open_connection(LOCAL, port)
        return cls(reader, writer)

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self._writer.write(out)

    async def _read(self) -> None:
        try:
            while chunk := await self._reader.read(65536):
                for event in self.conn.receive_data(chunk):
                    self._event(event)
                self._flush()
        except ConnectionError:
            pass
        finally:
            for future in self._done.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))

    def _event(self, event: object) -> None:
        if isinstance(event, ResponseReceived) and event.stream_id is not None:
            for name, value in event.headers or []:
                if name == b":status":
                    self._responses[event.stream_id].status = int(value)
        elif isinstance(event, DataReceived) and event.stream_id is not None:
            self._responses[event.stream_id].body += event.data or b""
            # Read at once: the window reopens as a real client's would.
            self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        elif isinstance(event, StreamEnded) and event.stream_id is not None:
            self._finish(event.stream_id)
        elif isinstance(event, StreamReset) and event.stream_id is not None:
            self._responses[event.stream_id].reset = int(event.error_code or 0)
            self._finish(event.stream_id)
        elif isinstance(event, WindowUpdated):
            self._window.set()
        elif isinstance(event, ConnectionTerminated):
            self.goaway = (int(event.error_code or 0), int(event.last_stream_id or 0))

    def _finish(self, stream_id: int) -> None:
        future = self._done.get(stream_id)
        if future is not None and not future.done():
            future.set_result(self._responses[stream_id])

    def start(self, path: bytes, method: bytes = b"GET", *, end: bool = True) -> int:
        """Send a request's HEADERS; its stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        self._responses[stream_id] = H2Response()
        self._done[stream_id] = asyncio.get_running_loop().create_future()
        self.conn.send_headers(stream_id, request_fields(path, method), end_stream=end)
        self._flush()
        return stream_id

    def send(self, stream_id: int, payload: bytes, *, end: bool = False) -> None:
        """Send body bytes that fit the stream's window (in frames of the size allowed)."""
        conn = self.conn
        assert conn.local_flow_control_window(stream_id) >= len(payload)
        size = conn.max_outbound_frame_size
        for offset in range(0, len(payload), size):
            last = end and offset + size >= len(payload)
            conn.send_data(stream_id, payload[offset : offset + size], end_stream=last)
        if end and not payload:
            conn.end_stream(stream_id)
        self._flush()

    def done(self, stream_id: int) -> bool:
        """Whether the stream was answered in full or reset."""
        return self._done[stream_id].done()

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id)
        self._flush()

    async def window_opened(self, within: float) -> bool:
        """Wait for a WINDOW_UPDATE; whether one came ``within`` seconds."""
        self._window.clear()
        try:
            await asyncio.wait_for(self._window.wait(), within)
        except TimeoutError:
            return False
        return True

    async def response(self, stream_id: int, within: float = IDLE) -> H2Response:
        return await asyncio.wait_for(asyncio.shield(self._done[stream_id]), within)

    async def get(self, path: bytes = b"/") -> H2Response:
        return await self.response(self.start(path))

    async def close(self) -> None:
        for future in self._done.values():
            future.cancel()  # streams left unanswered: nobody waits for them any more
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await close_writer(self._writer)
