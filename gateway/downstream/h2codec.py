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

Where h2 answers otherwise than RFC 9113 requires, this layer corrects it (each case is in
tests/conformance, named after its h2spec section):

* a header block HPACK cannot decode is a connection error COMPRESSION_ERROR (§4.3), where h2
  says PROTOCOL_ERROR;
* a stream h2 resets for the client's stream error (§5.4.2) is reported like a reset from the
  client, so that its handler stops instead of writing to a closed stream;
* a GOAWAY, the client's or a graceful one of the gateway's, lets the streams already open
  complete (§6.8): h2 would stop sending at once;
* a send window below zero (§6.9.2) is a window to wait on, not a closed stream;
* a request whose Content-Length differs from its DATA is malformed (§8.1.1) also when
  HEADERS or trailers end it, which h2 does not check;
* a SETTINGS ACK with a payload is FRAME_SIZE_ERROR (§6.5), and the reserved bit of a
  WINDOW_UPDATE's increment is ignored (§6.9), where hyperframe has PROTOCOL_ERROR for both;
* a stream beyond SETTINGS_MAX_CONCURRENT_STREAMS is refused alone (§5.1.2), where h2 would
  end the connection.

HPACK is not hpack's: h2 is handed the compiled `hpack_encoder.ResponseEncoder` and
`hpack_decoder.RequestDecoder` (hpack, pure Python, was a fifth of the CPU per request). jh2's
Rust decoder was tried and fails three h2spec hpack cases (a size update at the end of a block,
Huffman padding that is not EOS, a truncated literal).

Some of these reach into h2 4.x's internals (its FrameBuffer and H2Connection subclassed, its
`_receive_frame` repeated without the frame formatting it does for a discarding logger);
pyproject.toml keeps h2 below 5, and tests/conformance fails if an upgrade changes them.
"""

from __future__ import annotations

import contextlib
from typing import Final

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.events import Event as H2Event
from h2.exceptions import (
    FrameDataMissingError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
)
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes
from hpack import OversizedHeaderListError
from hyperframe.frame import Frame, GoAwayFrame, RstStreamFrame

from gateway.config.model import Http2Config
from gateway.downstream.h2fields import request_problem, trailer_problem
from gateway.downstream.hpack_decoder import HeaderListTooLarge, HpackDecodingError, RequestDecoder
from gateway.downstream.hpack_encoder import ResponseEncoder

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
_NO_STREAM_LIMIT: Final = 2**31 - 1
# RFC 9113 §6.5, §6.9: frame types and the flag the frame buffer checks.
_SETTINGS: Final = 0x4
_WINDOW_UPDATE: Final = 0x8
_ACK: Final = 0x1


class _CompressionError(ProtocolError):
    """A header block that cannot be decoded."""

    # RFC 9113 §4.3: a connection error of type COMPRESSION_ERROR (h2 says PROTOCOL_ERROR).
    error_code = ErrorCodes.COMPRESSION_ERROR


class _Decoder:
    """The compiled request decoder (`hpack_decoder`) as h2 calls hpack's: its errors become
    h2's COMPRESSION_ERROR (h2 passes a ProtocolError through and ends the connection with
    its code), a header list above the limit hpack's OversizedHeaderListError (h2 answers
    that HPACK bomb with ENHANCE_YOUR_CALM)."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = RequestDecoder()

    # h2 sets both from the local SETTINGS (HEADER_TABLE_SIZE, MAX_HEADER_LIST_SIZE).
    @property
    def max_header_list_size(self) -> int:
        return self._decoder.max_header_list_size

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        self._decoder.max_header_list_size = value

    @property
    def max_allowed_table_size(self) -> int:
        return self._decoder.max_allowed_table_size

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, value: int) -> None:
        self._decoder.max_allowed_table_size = value

    def decode(self, data: bytes, raw: bool = False) -> list[tuple[bytes, bytes]]:
        try:
            return self._decoder.decode(data)
        except HeaderListTooLarge as error:
            raise OversizedHeaderListError(str(error)) from None
        except HpackDecodingError as error:
            raise _CompressionError(f"header block cannot be decoded: {error}") from None


class _FrameBuffer(FrameBuffer):
    """h2's frame buffer, with two frame rules that hyperframe gets wrong applied first."""

    def __next__(self) -> Frame:
        data = self._data
        if len(data) >= _FRAME_HEADER and data[:3] != b"\x00\x00\x00":
            kind = data[3]
            if kind == _SETTINGS and data[4] & _ACK:
                # RFC 9113 §6.5: a SETTINGS ACK with a payload is a connection error
                # FRAME_SIZE_ERROR (hyperframe calls it invalid data: PROTOCOL_ERROR).
                raise FrameDataMissingError("SETTINGS ACK with a payload")
            if kind == _WINDOW_UPDATE and len(data) > _FRAME_HEADER:
                # RFC 9113 §6.9: the increment's reserved bit is ignored on receipt;
                # hyperframe counts it and refuses the increment as above 2^31-1.
                data[_FRAME_HEADER] &= 0x7F
        return super().__next__()


class _H2Connection(H2Connection):
    """h2's connection, except that a GOAWAY from the client leaves it open, and received
    frames are not formatted for a discarding logger."""

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[H2Event]]:
        # RFC 9113 §6.8: a GOAWAY stops new streams; the streams already open complete (the
        # client may still send their bodies, and their responses must still be sent). h2
        # closes its state machine and drops the frames queued, after which neither is
        # possible: only its event is kept.
        event = ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _receive_frame(self, frame: Frame) -> list[H2Event]:
        # h2 4.x's, without its first line: `logger.trace("Received frame: %s", repr(frame))`
        # formats every frame received for a logger that discards it, 2% of the worker's
        # CPU per request. The error handling is h2's own (RFC 9113 §5.4.2, §5.1).
        events: list[H2Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as error:
            # Closed by RST_STREAM: a stream error, answered with RST_STREAM; otherwise a
            # connection error (re-raised).
            if not self._stream_is_closed_by_reset(error.stream_id):
                raise
            reset = RstStreamFrame(error.stream_id)
            reset.error_code = error.error_code
            self._prepare_for_sending([reset])
            events = error._events
        except StreamIDTooLowError as error:
            # A closed stream: closed by RST_STREAM is a stream error (STREAM_CLOSED), by
            # END_STREAM a connection error STREAM_CLOSED, implicitly a PROTOCOL_ERROR.
            if self._stream_is_closed_by_reset(error.stream_id):
                reset = RstStreamFrame(error.stream_id)
                reset.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([reset])
                events = []
            elif self._stream_is_closed_by_end(error.stream_id):
                raise StreamClosedError(error.stream_id) from error
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events


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
    """A request's header block: pseudo-header fields first, names lower-case bytes, and its
    Content-Length (checked: digits, repeated values equal), None without one."""

    __slots__ = ("content_length", "ended", "headers")

    def __init__(
        self,
        stream_id: int,
        headers: list[tuple[bytes, bytes]],
        ended: bool,
        content_length: int | None = None,
    ) -> None:
        super().__init__(stream_id)
        self.headers = headers
        self.ended = ended
        self.content_length = content_length


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
    """The stream was reset: by the client (RST_STREAM), or for its stream error."""

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


class H2Codec:
    """One server-side HTTP/2 connection's state machine and frame buffers."""

    __slots__ = ("_buffer", "_conn", "_ended", "_lengths", "_max_frame", "_max_header_block")

    def __init__(self, settings: Http2Config) -> None:
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            # The gateway's own fields are built valid.
            # The client's fields are checked here instead (`request_problem`), in one pass
            # with C-level scans: h2's checks walk every byte of every field in Python and
            # cost a sixth of its CPU per request, and a malformed request becomes a stream
            # error (RFC 9113 §8.1.1) rather than the connection error h2 makes of it. Split
            # cookies are joined by Http2Connection (§8.2.3).
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = self._conn = _H2Connection(config=config)
        conn.decoder = _Decoder()  # type: ignore[assignment]  # what h2 uses of hpack's
        conn.incoming_buffer = _FrameBuffer(server=True)
        _apply_local_settings(conn, settings)
        # Response header blocks from the static table and literals, compiled
        # (`hpack_encoder`): hpack's encoder is pure Python and searches its dynamic table for
        # every field of every response.
        conn.encoder = ResponseEncoder()  # type: ignore[assignment]  # h2 uses encode() and header_table_size only
        self._max_frame = settings.max_frame_size
        # Streams whose request declared a Content-Length, until their end: [declared, DATA
        # octets received].
        self._lengths: dict[int, list[int]] = {}
        self._max_header_block = settings.max_header_list_size
        self._buffer = conn.incoming_buffer
        # A GOAWAY for a connection error is queued: the connection ends, no other follows.
        self._ended = False

    def start(self, connection_window: int) -> None:
        """Queue the server preface (SETTINGS) and open the connection's receive window to
        ``connection_window`` (RFC 9113 §6.9.2: only a WINDOW_UPDATE changes it)."""
        conn = self._conn
        conn.initiate_connection()
        # RFC 9113 §5.1.2: a stream beyond SETTINGS_MAX_CONCURRENT_STREAMS is a stream error;
        # Http2Connection refuses it (REFUSED_STREAM: the client may retry it). h2 would end
        # the connection and every stream on it (TooManyStreamsError), so its own count is
        # lifted once the limit is advertised.
        local = conn.local_settings
        local[SettingCodes.MAX_CONCURRENT_STREAMS] = _NO_STREAM_LIMIT
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
            if self._conn.state_machine.state is ConnectionState.CLOSED:
                self._ended = True  # h2 queued its GOAWAY
            else:
                # The preface itself was wrong (RFC 9113 §3.4): h2 parsed nothing and queued
                # nothing. The raise below promises a GOAWAY queued.
                self.goaway(code)
            raise H2ConnectionError(code, str(error) or type(error).__name__) from None
        self._check_buffers()
        events: list[Event] = []
        append = events.append
        for event in received:
            kind = type(event)
            if kind is RequestReceived:
                assert isinstance(event, RequestReceived)
                stream_id = event.stream_id
                headers = list(event.headers)
                ended = event.stream_ended is not None
                if request_problem(headers) is not None:
                    append(self._malformed(stream_id))
                    continue
                declared = _content_length(headers)
                if declared is not None:
                    if ended and declared:
                        append(self._malformed(stream_id))
                        continue
                    if not ended:
                        self._lengths[stream_id] = [declared, 0]
                append(RequestHeaders(stream_id, headers, ended, declared))
                if ended:
                    append(StreamEnd(stream_id))
            elif kind is DataReceived:
                assert isinstance(event, DataReceived)
                stream_id = event.stream_id
                data = event.data or b""
                append(BodyData(stream_id, data, event.flow_controlled_length or 0))
                counted = self._lengths.get(stream_id)
                if counted is not None:
                    counted[1] += len(data)
                if event.stream_ended is not None:
                    # h2 compared a Content-Length with the DATA that ended the stream.
                    self._lengths.pop(stream_id, None)
                    append(StreamEnd(stream_id))
            elif kind is StreamEnded:
                # Reported with the HEADERS or DATA event that carried END_STREAM (above)
                # unless it ended the stream on its own (after trailers).
                pass
            elif kind is TrailersReceived:
                # Trailer fields are dropped, never merged into the head (RFC 9110 §6.5.1).
                assert isinstance(event, TrailersReceived)
                stream_id = event.stream_id
                counted = self._lengths.pop(stream_id, None)
                if (counted is not None and counted[0] != counted[1]) or trailer_problem(
                    list(event.headers)
                ) is not None:
                    append(self._malformed(stream_id))
                else:
                    append(StreamEnd(stream_id))
            elif kind is WindowUpdated:
                assert isinstance(event, WindowUpdated)
                append(WindowOpened(event.stream_id))
            elif kind is RemoteSettingsChanged:
                assert isinstance(event, RemoteSettingsChanged)
                changed = event.changed_settings
                if SettingCodes.INITIAL_WINDOW_SIZE in changed:
                    append(WindowOpened(0))
            elif kind is StreamReset:
                # The client's RST_STREAM, or h2's own answering a stream error of the client
                # (RFC 9113 §5.4.2: DATA on a half-closed stream, a window overflow): either
                # way the stream is over, and a response written to it would raise.
                assert isinstance(event, StreamReset)
                self._lengths.pop(event.stream_id, None)
                append(Reset(event.stream_id, int(event.error_code or 0)))
            elif kind is ConnectionTerminated:
                assert isinstance(event, ConnectionTerminated)
                append(GoAway(int(event.error_code or 0)))
        return events

    def _malformed(self, stream_id: int) -> Reset:
        """A malformed request (`request_problem`, or a Content-Length that is not the length
        of its DATA, which h2 checks only when DATA ends the stream): a stream error
        PROTOCOL_ERROR, and not forwarded (RFC 9113 §8.1.1)."""
        self.reset(stream_id, PROTOCOL_ERROR)
        return Reset(stream_id, PROTOCOL_ERROR)

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
        self._lengths.pop(stream_id, None)
        with contextlib.suppress(StreamClosedError, ProtocolError):
            self._conn.reset_stream(stream_id, code)

    def goaway(self, code: int, last_stream_id: int | None = None) -> None:
        """Queue GOAWAY; streams up to ``last_stream_id`` (default: the last one opened) go on.

        Once a connection error's GOAWAY is queued (by h2 or here), no other is."""
        if self._ended:
            return
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
        self._ended = True

    def ack(self, stream_id: int, size: int) -> None:
        """``size`` received bytes of ``stream_id`` were consumed: reopen that much window."""
        if size:
            with contextlib.suppress(StreamClosedError, ProtocolError):
                self._conn.acknowledge_received_data(size, stream_id)

    def window(self, stream_id: int) -> int:
        """Bytes that may be sent on ``stream_id`` now (its window and the connection's);
        -1 once the stream is closed."""
        try:
            window = self._conn.local_flow_control_window(stream_id)
        except (StreamClosedError, ProtocolError):
            return -1
        # RFC 9113 §6.9.2: a smaller SETTINGS_INITIAL_WINDOW_SIZE can leave a window below
        # zero; the stream then waits for WINDOW_UPDATEs like one at zero (not closed).
        return max(window, 0)

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
        data: bytes = self._conn.data_to_send()
        return data


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """A request's Content-Length (`request_problem` checked it: digits only, repeated values
    equal)."""
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return None


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
