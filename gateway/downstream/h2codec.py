"""The HTTP/2 framing layer: the only module that imports python-hyper/h2.

`gateway.downstream.http2` drives connections through this small interface (bytes in, the
gateway's own events out, frames queued for sending), so a faster drop-in with h2's API (jh2)
can replace the library here alone.

Besides h2's own checks (RFC 9113 framing, stream states, HPACK, header rules), this layer
bounds what h2 would buffer before it checks (HARDENING.md; RFC 9113 §10.5):

* a frame whose declared length exceeds SETTINGS_MAX_FRAME_SIZE is refused from its 9-byte
  header (h2 checks it only once the whole frame arrived, up to 16 MiB later): GOAWAY
  FRAME_SIZE_ERROR;
* a header block still arriving (HEADERS and CONTINUATION frames, the CONTINUATION flood of
  2024) may not grow beyond SETTINGS_MAX_HEADER_LIST_SIZE encoded bytes, and decoded (the HPACK
  bomb) beyond the same: GOAWAY ENHANCE_YOUR_CALM.
"""

from __future__ import annotations

import contextlib
from typing import Final

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from gateway.config.model import Http2Config

# RFC 9113 §7 error codes, by name (the http2 module needs no h2 import for them).
NO_ERROR: Final = int(ErrorCodes.NO_ERROR)
PROTOCOL_ERROR: Final = int(ErrorCodes.PROTOCOL_ERROR)
INTERNAL_ERROR: Final = int(ErrorCodes.INTERNAL_ERROR)
FLOW_CONTROL_ERROR: Final = int(ErrorCodes.FLOW_CONTROL_ERROR)
REFUSED_STREAM: Final = int(ErrorCodes.REFUSED_STREAM)
CANCEL: Final = int(ErrorCodes.CANCEL)
ENHANCE_YOUR_CALM: Final = int(ErrorCodes.ENHANCE_YOUR_CALM)
FRAME_SIZE_ERROR: Final = int(ErrorCodes.FRAME_SIZE_ERROR)

# The 24 octets every HTTP/2 client connection starts with (RFC 9113 §3.4).
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_FRAME_HEADER: Final = 9
# h2's own cap on open inbound streams, once it is the connection's to enforce (`H2Codec.start`).
_UNLIMITED_STREAMS: Final = 2**31 - 1


class H2ConnectionError(Exception):
    """The connection broke a rule; a GOAWAY with ``code`` is queued, the connection must end."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# The events handed to the connection. Plain classes: a few per request.
class Event:
    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class RequestHeaders(Event):
    """A request's header block: pseudo-header fields first, names lower-case bytes."""

    __slots__ = ("ended", "headers")

    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        super().__init__(stream_id)
        self.headers = headers
        self.ended = ended


class BodyData(Event):
    """Request body bytes; ``flow_length`` (padding included) is what flow control counted."""

    __slots__ = ("data", "flow_length")

    def __init__(self, stream_id: int, data: bytes, flow_length: int) -> None:
        super().__init__(stream_id)
        self.data = data
        self.flow_length = flow_length


class StreamEnd(Event):
    """The client's side of the stream ended (END_STREAM, after the body or its trailers)."""

    __slots__ = ()


class Reset(Event):
    """The client reset the stream (RST_STREAM)."""

    __slots__ = ("code",)

    def __init__(self, stream_id: int, code: int) -> None:
        super().__init__(stream_id)
        self.code = code


class WindowOpened(Event):
    """More may be sent: on ``stream_id``, or on every stream when it is 0 (a connection
    WINDOW_UPDATE or a new SETTINGS_INITIAL_WINDOW_SIZE)."""

    __slots__ = ()


class GoAway(Event):
    """The client ended the connection (GOAWAY)."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        super().__init__(0)
        self.code = code


class Ping(Event):
    """A PING, already answered; counted by the connection against floods."""

    __slots__ = ()


class H2Codec:
    """One server-side HTTP/2 connection's state machine and frame buffers."""

    __slots__ = ("_buffer", "_conn", "_max_frame", "_max_header_block")

    def __init__(self, settings: Http2Config) -> None:
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            # The client's fields are checked (pseudo-headers, connection-specific fields,
            # upper-case names: RFC 9113 §8.2, §8.3); the gateway's own are built valid.
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = self._conn = H2Connection(config=config)
        _apply_local_settings(conn, settings)
        self._max_frame = settings.max_frame_size
        self._max_header_block = settings.max_header_list_size
        self._buffer = conn.incoming_buffer

    def start(self, connection_window: int) -> None:
        """Queue the server preface (SETTINGS) and open the connection's receive window to
        ``connection_window`` (RFC 9113 §6.9.2: only a WINDOW_UPDATE changes it)."""
        conn = self._conn
        conn.initiate_connection()
        # RFC 9113 §5.1.2: a stream beyond SETTINGS_MAX_CONCURRENT_STREAMS is a stream error,
        # REFUSED_STREAM for a client to retry; h2 makes it a connection error (PROTOCOL_ERROR)
        # that ends every stream the client has open. The advertised limit (queued above) is
        # the connection's to enforce: `Http2Connection._request` refuses such a stream and
        # counts the refusal against the reset budget. h2's own check is lifted.
        local = conn.local_settings
        local[SettingCodes.MAX_CONCURRENT_STREAMS] = _UNLIMITED_STREAMS
        local.acknowledge()
        increment = connection_window - conn.inbound_flow_control_window
        if increment > 0:
            conn.increment_flow_control_window(increment)

    # --------------------------------------------------------------------------- input

    def receive(self, data: bytes) -> list[Event]:
        """Parse ``data``; the events it carried. Raises H2ConnectionError (GOAWAY queued)."""
        try:
            received = self._conn.receive_data(data)
        except ProtocolError as error:
            code = int(getattr(error, "error_code", PROTOCOL_ERROR))
            raise H2ConnectionError(code, str(error) or type(error).__name__) from None
        self._check_buffers()
        events: list[Event] = []
        append = events.append
        for event in received:
            kind = type(event)
            if kind is RequestReceived:
                assert isinstance(event, RequestReceived)
                ended = event.stream_ended is not None
                append(RequestHeaders(event.stream_id, list(event.headers), ended))
                if ended:
                    append(StreamEnd(event.stream_id))
            elif kind is DataReceived:
                assert isinstance(event, DataReceived)
                append(
                    BodyData(event.stream_id, event.data or b"", event.flow_controlled_length or 0)
                )
                if event.stream_ended is not None:
                    append(StreamEnd(event.stream_id))
            elif kind is StreamEnded:
                # Reported with the HEADERS or DATA event that carried END_STREAM (above)
                # unless it ended the stream on its own (after trailers).
                pass
            elif kind is TrailersReceived:
                # Trailer fields are dropped, never merged into the head (RFC 9110 §6.5.1).
                assert isinstance(event, TrailersReceived)
                append(StreamEnd(event.stream_id))
            elif kind is WindowUpdated:
                assert isinstance(event, WindowUpdated)
                append(WindowOpened(event.stream_id))
            elif kind is RemoteSettingsChanged:
                assert isinstance(event, RemoteSettingsChanged)
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    append(WindowOpened(0))
            elif kind is StreamReset:
                assert isinstance(event, StreamReset)
                if event.remote_reset:
                    append(Reset(event.stream_id, int(event.error_code or 0)))
            elif kind is PingReceived:
                append(Ping(0))
            elif kind is ConnectionTerminated:
                assert isinstance(event, ConnectionTerminated)
                append(GoAway(int(event.error_code or 0)))
        return events

    def frames_end(self, data: bytes | memoryview, count: int) -> int:
        """Where in ``data`` the first ``count`` frames end (the one h2 holds the start of
        counts), or ``len(data)``: how much to hand to `receive` for that many frames."""
        buffer = self._buffer
        held = buffer._data  # the start of a frame, or nothing
        # The first frame starts after what is left of the preface, or where h2's part began.
        position = buffer._preamble_len - len(held)
        size = len(data)
        for _ in range(count):
            if position + _FRAME_HEADER > size:
                return size
            if position >= 0:
                length = bytes(data[position : position + 3])
            else:
                length = (bytes(held) + bytes(data[:_FRAME_HEADER]))[:3]
            position += _FRAME_HEADER + int.from_bytes(length, "big")
        return min(max(position, 0), size)

    def _check_buffers(self) -> None:
        """Refuse what h2 would otherwise keep buffering (see the module's docstring)."""
        buffer = self._buffer
        pending = buffer._data
        if len(pending) >= _FRAME_HEADER:
            length = int.from_bytes(pending[:3], "big")
            if length > self._max_frame:
                self._fail(
                    FRAME_SIZE_ERROR, f"frame of {length} bytes above SETTINGS_MAX_FRAME_SIZE"
                )
        block = buffer._headers_buffer
        if block:
            size = sum(len(frame.data) for frame in block)
            if size > self._max_header_block:
                self._fail(ENHANCE_YOUR_CALM, f"header block above {self._max_header_block} bytes")

    def _fail(self, code: int, message: str) -> None:
        self.goaway(code)
        raise H2ConnectionError(code, message)

    # -------------------------------------------------------------------------- output

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        self._conn.send_headers(stream_id, headers, end_stream=end)

    def send_data(self, stream_id: int, data: bytes | memoryview, end: bool) -> None:
        self._conn.send_data(stream_id, data, end_stream=end)

    def end_stream(self, stream_id: int) -> None:
        self._conn.end_stream(stream_id)

    def reset(self, stream_id: int, code: int) -> None:
        """RST_STREAM ``stream_id`` unless it is closed already."""
        with contextlib.suppress(StreamClosedError, ProtocolError):
            self._conn.reset_stream(stream_id, code)

    def goaway(self, code: int, last_stream_id: int | None = None) -> None:
        """Queue GOAWAY; streams up to ``last_stream_id`` (default: the last one opened) go on."""
        conn = self._conn
        if code == NO_ERROR:
            # A graceful GOAWAY (RFC 9113 §6.8): the streams up to last_stream_id complete, in
            # both directions. h2's close_connection would move its state machine to CLOSED,
            # where every later frame is a ProtocolError: the responses still due, and the
            # client's WINDOW_UPDATE, DATA or PING (python-hyper/h2#1181). The frame is queued
            # without it; h2 goes on serving the streams, and the connection refuses new ones.
            if last_stream_id is None:
                last_stream_id = conn.highest_inbound_stream_id
            frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code)
            conn._prepare_for_sending([frame])
            return
        with contextlib.suppress(ProtocolError):  # already closed
            conn.close_connection(code, last_stream_id=last_stream_id)

    def ack(self, stream_id: int, size: int) -> None:
        """``size`` received bytes of ``stream_id`` were consumed: reopen that much window."""
        if size:
            with contextlib.suppress(StreamClosedError, ProtocolError):
                self._conn.acknowledge_received_data(size, stream_id)

    def window(self, stream_id: int) -> int:
        """Bytes that may be sent on ``stream_id`` now (its window and the connection's)."""
        try:
            return self._conn.local_flow_control_window(stream_id)
        except (StreamClosedError, ProtocolError):
            return -1

    @property
    def max_send_frame(self) -> int:
        return self._conn.max_outbound_frame_size

    @property
    def in_header_block(self) -> bool:
        """Whether a header block has begun and still waits for its END_HEADERS."""
        return bool(self._buffer._headers_buffer)

    @property
    def last_stream_id(self) -> int:
        return self._conn.highest_inbound_stream_id

    def outgoing(self) -> bytes:
        return self._conn.data_to_send()


def _apply_local_settings(conn: H2Connection, settings: Http2Config) -> None:
    local = conn.local_settings
    local.update(
        {
            SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
            SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
            SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_window_size,
            SettingCodes.ENABLE_PUSH: 0,
        }
    )
    # Until the client acknowledges the SETTINGS (RFC 9113 §6.5.3) h2 applies the RFC's
    # defaults; the limits that bound memory apply from the first frame instead.
    local.acknowledge()
    conn.max_inbound_frame_size = settings.max_frame_size
    conn.decoder.max_header_list_size = settings.max_header_list_size
