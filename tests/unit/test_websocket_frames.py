"""RFC 6455 framing (gateway.websocket.frames): tables of frames and their verdicts, and
property tests that any split of any message sequence parses back to the same messages."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.websocket.frames import (
    CLOSE_INVALID_DATA,
    CLOSE_NO_STATUS,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    ProtocolError,
    _mask_with_ints,
    apply_mask,
    close_payload,
    encode_frame,
    parse_close,
)

KEY = b"\x01\x02\x03\x04"


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """A frame built by hand (so that invalid ones can be built too)."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((first, mask_bit | size))
    elif size < 65536:
        head = bytes((first, mask_bit | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + size.to_bytes(8, "big")
    if masked:
        return head + KEY + apply_mask(payload, KEY)
    return head + payload


def parse(data: bytes, *, masked: bool = True, limit: int = 1 << 20, compression: bool = False):  # type: ignore[no-untyped-def]
    parser = FrameParser(masked=masked, max_message_size=limit, compression=compression)
    return [(m.opcode, m.payload, m.compressed) for m in parser.feed(data)]


VALID = [
    ("text", frame(OP_TEXT, b"hello"), [(OP_TEXT, b"hello", False)]),
    ("binary", frame(OP_BINARY, b"\x00\xff"), [(OP_BINARY, b"\x00\xff", False)]),
    ("empty", frame(OP_TEXT, b""), [(OP_TEXT, b"", False)]),
    ("126 bytes", frame(OP_BINARY, b"a" * 126), [(OP_BINARY, b"a" * 126, False)]),
    ("64 KiB", frame(OP_BINARY, b"b" * 65536), [(OP_BINARY, b"b" * 65536, False)]),
    (
        "fragments",
        frame(OP_TEXT, b"he", fin=False) + frame(OP_CONTINUATION, b"llo"),
        [(OP_TEXT, b"hello", False)],
    ),
    (
        "ping between fragments",
        frame(OP_BINARY, b"a", fin=False) + frame(OP_PING, b"p") + frame(OP_CONTINUATION, b"b"),
        [(OP_PING, b"p", False), (OP_BINARY, b"ab", False)],
    ),
    ("pong", frame(OP_PONG, b"x" * 125), [(OP_PONG, b"x" * 125, False)]),
    ("close", frame(OP_CLOSE, b"\x03\xe8bye"), [(OP_CLOSE, b"\x03\xe8bye", False)]),
    (
        "nothing after close",
        frame(OP_CLOSE, b"") + frame(OP_TEXT, b"late"),
        [(OP_CLOSE, b"", False)],
    ),
]


@pytest.mark.parametrize(("name", "data", "expected"), VALID, ids=[v[0] for v in VALID])
def test_valid_frames(name: str, data: bytes, expected: list[tuple[int, bytes, bool]]) -> None:
    assert parse(data) == expected


INVALID = [
    ("unmasked from a client", frame(OP_TEXT, b"x", masked=False), CLOSE_PROTOCOL_ERROR),
    ("RSV2", frame(OP_TEXT, b"x", rsv=0x20), CLOSE_PROTOCOL_ERROR),
    ("RSV1 without deflate", frame(OP_TEXT, b"x", rsv=0x40), CLOSE_PROTOCOL_ERROR),
    ("reserved opcode 3", frame(3, b"x"), CLOSE_PROTOCOL_ERROR),
    ("reserved opcode 11", frame(11, b""), CLOSE_PROTOCOL_ERROR),
    ("lone continuation", frame(OP_CONTINUATION, b"x"), CLOSE_PROTOCOL_ERROR),
    (
        "new message inside a fragmented one",
        frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"),
        CLOSE_PROTOCOL_ERROR,
    ),
    ("fragmented ping", frame(OP_PING, b"x", fin=False), CLOSE_PROTOCOL_ERROR),
    ("126-byte ping", frame(OP_PING, b"x" * 126), CLOSE_PROTOCOL_ERROR),
    ("over the limit", frame(OP_BINARY, b"x" * 101), CLOSE_TOO_BIG),
    (
        "fragments over the limit",
        frame(OP_BINARY, b"x" * 60, fin=False) + frame(OP_CONTINUATION, b"x" * 41),
        CLOSE_TOO_BIG,
    ),
]


@pytest.mark.parametrize(("name", "data", "code"), INVALID, ids=[v[0] for v in INVALID])
def test_invalid_frames(name: str, data: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse(data, limit=100)
    assert caught.value.code == code


def test_a_huge_announced_length_fails_on_the_header_alone() -> None:
    """HARDENING.md §E: 1009 without waiting for, or allocating, the payload."""
    parser = FrameParser(masked=True, max_message_size=1 << 20)
    header = bytes((0x82, 0x80 | 127)) + (1 << 40).to_bytes(8, "big") + KEY
    with pytest.raises(ProtocolError) as caught:
        parser.feed(header)
    assert caught.value.code == CLOSE_TOO_BIG


def test_a_64_bit_length_with_the_top_bit_is_refused() -> None:
    parser = FrameParser(masked=True, max_message_size=1 << 20)
    with pytest.raises(ProtocolError) as caught:
        parser.feed(bytes((0x82, 0x80 | 127)) + (1 << 63).to_bytes(8, "big"))
    assert caught.value.code == CLOSE_PROTOCOL_ERROR


def test_a_server_frame_must_not_be_masked() -> None:
    with pytest.raises(ProtocolError):
        parse(frame(OP_TEXT, b"x", masked=True), masked=False)
    assert parse(frame(OP_TEXT, b"x", masked=False), masked=False) == [(OP_TEXT, b"x", False)]


def test_rsv1_marks_a_compressed_message_when_negotiated() -> None:
    data = frame(OP_BINARY, b"a", fin=False, rsv=0x40) + frame(OP_CONTINUATION, b"b")
    assert parse(data, compression=True) == [(OP_BINARY, b"ab", True)]
    with pytest.raises(ProtocolError):
        parse(frame(OP_CONTINUATION, b"b", rsv=0x40), compression=True)


def test_the_parser_holds_only_the_incomplete_frame() -> None:
    parser = FrameParser(masked=True, max_message_size=1 << 20)
    data = frame(OP_BINARY, b"x" * 1000) + frame(OP_BINARY, b"y" * 1000)
    assert len(parser.feed(data[:1500])) == 1
    assert parser.buffered == 1500 - (4 + 4 + 1000)  # head, extended length, mask, payload
    assert [m.payload for m in parser.feed(data[1500:])] == [b"y" * 1000]
    assert parser.buffered == 0


CLOSES = [
    (b"", (CLOSE_NO_STATUS, "")),
    (b"\x03\xe8", (1000, "")),
    (b"\x0f\xa0bye", (4000, "bye")),
    (b"\x03\xe9\xc3\xa9", (1001, "é")),
]


@pytest.mark.parametrize(("payload", "expected"), CLOSES)
def test_close_payloads(payload: bytes, expected: tuple[int, str]) -> None:
    assert parse_close(payload) == expected


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", CLOSE_PROTOCOL_ERROR),
        (b"\x03\xed", CLOSE_PROTOCOL_ERROR),  # 1005 is never sent
        (b"\x03\xee", CLOSE_PROTOCOL_ERROR),  # 1006 neither
        (b"\x03\xec", CLOSE_PROTOCOL_ERROR),  # 1004 is reserved
        (b"\x00\x00", CLOSE_PROTOCOL_ERROR),
        (b"\x13\x88", CLOSE_PROTOCOL_ERROR),  # 5000
        (b"\x03\xe8\xff", CLOSE_INVALID_DATA),
    ],
)
def test_invalid_close_payloads(payload: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_close(payload)
    assert caught.value.code == code


def test_close_payload_fits_a_control_frame() -> None:
    payload = close_payload(1001, "é" * 100)
    assert len(payload) <= 125
    assert parse_close(payload)[0] == 1001
    assert close_payload(CLOSE_NO_STATUS) == b""


messages = st.lists(
    st.tuples(st.sampled_from((OP_TEXT, OP_BINARY, OP_PING)), st.binary(max_size=300)),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.integers(min_value=1, max_value=400), max_size=20), st.booleans())
def test_any_split_of_any_stream_parses_back(
    sent: list[tuple[int, bytes]], cuts: list[int], client: bool
) -> None:
    """Encoded by encode_frame (masked as a client sends, or not as a server does) and fed in
    arbitrary pieces, the stream parses back to the same messages."""
    sent = [(op, payload[:125] if op == OP_PING else payload) for op, payload in sent]
    stream = b"".join(
        encode_frame(op, payload, mask_key=os.urandom(4) if client else None)
        for op, payload in sent
    )
    parser = FrameParser(masked=client, max_message_size=1 << 20)
    received = []
    offset = 0
    for cut in [*cuts, len(stream)]:
        received += parser.feed(stream[offset : offset + cut])
        offset += cut
    received += parser.feed(stream[offset:])
    assert [(m.opcode, m.payload) for m in received] == sent


@given(st.binary(max_size=2000), st.binary(min_size=4, max_size=4))
def test_masking_is_its_own_inverse(data: bytes, key: bytes) -> None:
    masked = apply_mask(data, key)
    assert len(masked) == len(data)
    assert apply_mask(masked, key) == data
    if data:
        assert masked[0] == data[0] ^ key[0]


@given(st.binary(max_size=3000), st.binary(min_size=4, max_size=4))
def test_the_fallback_masking_matches(data: bytes, key: bytes) -> None:
    fallback = bytearray(data)
    _mask_with_ints(key, fallback)
    assert bytes(fallback) == apply_mask(data, key)
