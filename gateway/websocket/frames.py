"""WebSocket framing (RFC 6455 §5): an incremental parser that yields whole messages, and the
encoder. Pure: bytes in, messages and bytes out, no I/O.

The parser enforces the limits before it keeps anything: a frame header announcing more than
what is left of ``max_message_size`` fails with 1009 at once, without waiting for (or
allocating) the payload, and a frame is held only until it is complete. A message is the
concatenation of its frames; control frames may arrive between them (§5.4) and come out at once.
"""

from __future__ import annotations

from typing import Final

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
DATA_OPCODES: Final = frozenset((OP_TEXT, OP_BINARY))
CONTROL_OPCODES: Final = frozenset((OP_CLOSE, OP_PING, OP_PONG))

# Close codes (§7.4.1).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_NO_STATUS: Final = 1005  # never sent: "the Close frame had no code"
CLOSE_ABNORMAL: Final = 1006  # never sent: "the connection dropped without a Close frame"
CLOSE_INVALID_DATA: Final = 1007
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013

# §5.5: control frames carry at most 125 bytes and are never fragmented.
MAX_CONTROL_PAYLOAD: Final = 125
_RSV1: Final = 0x40
_RSV2_RSV3: Final = 0x30


class ProtocolError(Exception):
    """The peer broke RFC 6455 (or a limit): close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Message:
    """A whole data message, or one control frame."""

    __slots__ = ("compressed", "opcode", "payload")

    def __init__(self, opcode: int, payload: bytes, compressed: bool = False) -> None:
        self.opcode = opcode
        self.payload = payload
        # RSV1 on the first frame: permessage-deflate (RFC 7692 §6).
        self.compressed = compressed

    def __repr__(self) -> str:
        return f"Message({self.opcode}, {len(self.payload)} bytes, compressed={self.compressed})"


def close_code_allowed(code: int) -> bool:
    """Whether a Close frame may carry ``code`` (§7.4.1, §7.4.2; 1012-1014 from the IANA
    registry; 3000-4999 for libraries and applications)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


def parse_close(payload: bytes) -> tuple[int, str]:
    """A Close frame's code and reason; (CLOSE_NO_STATUS, "") when it has none (§5.5.1)."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not close_code_allowed(code):
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"close code {code} is not allowed")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CLOSE_INVALID_DATA, "a close reason that is not UTF-8") from None
    return code, reason


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a Close frame; the reason is cut to fit 125 bytes on a character boundary."""
    if code == CLOSE_NO_STATUS:
        return b""
    data = reason.encode("utf-8")
    if len(data) > MAX_CONTROL_PAYLOAD - 2:
        data = data[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return code.to_bytes(2, "big") + data


def _mask_with_ints(mask: bytes, data: bytearray) -> None:
    """XOR ``data`` in place with ``mask`` repeated, as one big-integer XOR (C speed without
    a native extension): the fallback for `_mask_in_place`."""
    size = len(data)
    if size:
        repeated = (mask * (size // 4 + 1))[:size]
        value = int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")
        data[:] = value.to_bytes(size, "little")


try:
    # aiohttp's Cython masking, 8 bytes a step; not public API, so imported with a fallback.
    from aiohttp._websocket.helpers import websocket_mask as _mask_in_place
except ImportError:  # pragma: no cover - an aiohttp without it
    _mask_in_place = _mask_with_ints


def apply_mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (§5.3); its own inverse."""
    buffer = bytearray(data)
    _mask_in_place(key, buffer)
    return bytes(buffer)


def encode_frame(
    opcode: int, payload: bytes, *, mask_key: bytes | None = None, rsv1: bool = False
) -> bytes:
    """One final frame. A client masks with ``mask_key`` (4 random bytes); a server sends
    ``None`` (§5.1)."""
    first = 0x80 | opcode | (_RSV1 if rsv1 else 0)
    size = len(payload)
    masked = 0x80 if mask_key is not None else 0
    if size < 126:
        head = bytes((first, masked | size))
    elif size < 65536:
        head = bytes((first, masked | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, masked | 127)) + size.to_bytes(8, "big")
    if mask_key is None:
        return head + payload
    body = bytearray(payload)
    _mask_in_place(mask_key, body)
    return b"".join((head, mask_key, body))


class FrameParser:
    """Turns a byte stream from one peer into messages and control frames.

    ``masked``: whether the peer must mask (a client does, a server must not; §5.1).
    ``compression``: whether permessage-deflate was negotiated, so RSV1 may mark a message.
    """

    __slots__ = (
        "_buffer",
        "_compressed",
        "_compression",
        "_fragments",
        "_masked",
        "_max_message_size",
        "_message_opcode",
        "_message_size",
        "closed",
    )

    def __init__(self, *, masked: bool, max_message_size: int, compression: bool = False) -> None:
        self._masked = masked
        self._max_message_size = max_message_size
        self._compression = compression
        self._buffer = bytearray()
        # The data message being assembled: its opcode (0: none), frames and size so far.
        self._message_opcode = 0
        self._compressed = False
        self._fragments: list[bytes] = []
        self._message_size = 0
        # After a Close frame nothing more is parsed (§5.5.1).
        self.closed = False

    @property
    def buffered(self) -> int:
        """Bytes held: the unparsed input and the message assembled so far."""
        return len(self._buffer) + self._message_size

    def feed(self, data: bytes) -> list[Message]:
        """Parse ``data``; the messages and control frames it completed, in order.

        Raises ProtocolError at the first violation; nothing after it is parsed.
        """
        if self.closed:
            return []
        buffer = self._buffer
        buffer += data
        out: list[Message] = []
        offset = 0
        end = len(buffer)
        while end - offset >= 2:
            first = buffer[offset]
            second = buffer[offset + 1]
            opcode = first & 0x0F
            fin = bool(first & 0x80)
            length = second & 0x7F
            header = 2
            if length == 126:
                if end - offset < 4:
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 4], "big")
                header = 4
            elif length == 127:
                if end - offset < 10:
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 10], "big")
                header = 10
                if length >> 63:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a 64-bit length with its top bit")
            is_masked = bool(second & 0x80)
            self._check_header(first, opcode, fin, length, is_masked)
            start = offset + header + (4 if is_masked else 0)
            if end - start < length:
                break  # the frame is not complete: keep it (its size was checked above)
            if is_masked:
                masked = buffer[start : start + length]  # a bytearray copy, unmasked in place
                _mask_in_place(bytes(buffer[offset + header : offset + header + 4]), masked)
                payload = bytes(masked)
            else:
                payload = bytes(buffer[start : start + length])
            offset = start + length
            message = self._frame(opcode, fin, bool(first & _RSV1), payload)
            if message is not None:
                out.append(message)
                if message.opcode == OP_CLOSE:
                    self.closed = True
                    break
        del buffer[:offset]
        if self.closed:
            buffer.clear()
        return out

    def _check_header(self, first: int, opcode: int, fin: bool, length: int, masked: bool) -> None:
        if first & _RSV2_RSV3:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
        if masked != self._masked:
            raise ProtocolError(
                CLOSE_PROTOCOL_ERROR,
                "an unmasked client frame" if self._masked else "a masked server frame",
            )
        if opcode in CONTROL_OPCODES:
            if not fin:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a control frame over 125 bytes")
            if first & _RSV1:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "RSV1 on a control frame")
            return
        if opcode == OP_CONTINUATION:
            if not self._message_opcode:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a continuation frame with no message")
            if first & _RSV1:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "RSV1 on a continuation frame")
        elif opcode in DATA_OPCODES:
            if self._message_opcode:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a new message inside a fragmented one")
            if first & _RSV1 and not self._compression:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "RSV1 without permessage-deflate")
        else:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode}")
        # Checked on the header, before any of the payload is kept (HARDENING.md §E).
        if self._message_size + length > self._max_message_size:
            raise ProtocolError(CLOSE_TOO_BIG, f"message over {self._max_message_size} bytes")

    def _frame(self, opcode: int, fin: bool, rsv1: bool, payload: bytes) -> Message | None:
        if opcode in CONTROL_OPCODES:
            return Message(opcode, payload)
        if opcode != OP_CONTINUATION:
            self._message_opcode = opcode
            self._compressed = rsv1
        if not fin:
            self._fragments.append(payload)
            self._message_size += len(payload)
            return None
        if self._fragments:
            self._fragments.append(payload)
            payload = b"".join(self._fragments)
            self._fragments = []
        message = Message(self._message_opcode, payload, self._compressed)
        self._message_opcode = 0
        self._compressed = False
        self._message_size = 0
        return message
