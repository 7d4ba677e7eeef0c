"""h2spec `http2/4.1`-`4.3`: frame format, frame size, header compression (RFC 9113 §4)."""

from __future__ import annotations

import json

from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
)

from tests.conformance.h2client import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GET_BLOCK,
    HEADERS,
    PING,
    ErrorCodes,
    RawH2Client,
    SettingCodes,
    literal,
    raw_frame,
    request_fields,
)

_RESERVED_BIT = 0x80000000


# ------------------------------------------------------------------- 4.1 Frame Format


async def test_4_1_1_unknown_frame_type_is_ignored(client: RawH2Client) -> None:
    """RFC 9113 §4.1, §5.5: frames of an unknown type are ignored and discarded."""
    client.send(raw_frame(0xFF, 0x0, 0, b"unknown frame payload"))
    await client.expect_alive()


async def test_4_1_2_undefined_flags_are_ignored(client: RawH2Client) -> None:
    """RFC 9113 §4.1: flags with no meaning for the frame type are ignored: a PING with every
    undefined flag set is an ordinary PING (only ACK, 0x1, means anything)."""
    client.send(raw_frame(PING, 0xFE, 0, b"flagsflg"))
    while not isinstance(frame := await client.read_frame(), PingFrame):
        assert not isinstance(frame, GoAwayFrame), frame
    assert "ACK" in frame.flags
    assert frame.opaque_data == b"flagsflg"


async def test_4_1_3_reserved_bit_of_stream_id_is_ignored(client: RawH2Client) -> None:
    """RFC 9113 §4.1: the reserved bit of the stream identifier is ignored on receipt."""
    block = client.encode(request_fields())
    client.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, _RESERVED_BIT | 1, block))
    assert (await client.response(1)).status == 200


# --------------------------------------------------------------------- 4.2 Frame Size


async def test_4_2_1_data_frame_of_max_frame_size_is_accepted(client: RawH2Client) -> None:
    """RFC 9113 §4.2: a frame of exactly SETTINGS_MAX_FRAME_SIZE (2^14 here) is valid."""
    size = client.server_settings.get(SettingCodes.MAX_FRAME_SIZE, 2**14)
    assert size == 2**14
    client.send(
        client.headers(1, request_fields("POST"), end_stream=False),
        DataFrame(1, b"x" * size, flags=["END_STREAM"]),
    )
    response = await client.response(1)
    assert len(json.loads(response.body)["body"]) == size


async def test_4_2_2_data_frame_above_max_frame_size_is_frame_size_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §4.2: a frame above SETTINGS_MAX_FRAME_SIZE is a FRAME_SIZE_ERROR (a stream
    error, or a connection error: both pass, as in h2spec)."""
    client.send(
        client.headers(1, request_fields("POST"), end_stream=False),
        DataFrame(1, b"x" * (2**14 + 1), flags=["END_STREAM"]),
    )
    await client.expect_stream_error(1, ErrorCodes.FRAME_SIZE_ERROR)


async def test_4_2_3_headers_frame_above_max_frame_size_is_connection_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §4.2: a frame that can alter the connection's state (HEADERS: HPACK) above
    the limit must be a connection error FRAME_SIZE_ERROR."""
    block = GET_BLOCK + literal(b"x-big", b"v" * 2**14)
    client.send(HeadersFrame(1, block, flags=["END_STREAM", "END_HEADERS"]))
    await client.expect_connection_error(ErrorCodes.FRAME_SIZE_ERROR)


# ------------------------------------------------------------ 4.3 Header Compression


async def test_4_3_1_invalid_header_block_is_compression_error(client: RawH2Client) -> None:
    """RFC 9113 §4.3: a header block that cannot be decompressed is a connection error
    COMPRESSION_ERROR (here: a literal whose string length runs past the block's end)."""
    client.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, b"\x00\x85\xf2\xb2\x4a\x87"))
    await client.expect_connection_error(ErrorCodes.COMPRESSION_ERROR)


async def test_4_3_2_priority_inside_header_block_is_protocol_error(client: RawH2Client) -> None:
    """RFC 9113 §4.3: a header block is a contiguous sequence of frames; any other frame in
    between (PRIORITY on the same stream) is a connection error PROTOCOL_ERROR."""
    block = client.encode(request_fields())
    client.send(
        HeadersFrame(1, block[:5], flags=["END_STREAM"]),
        PriorityFrame(1, depends_on=0, stream_weight=15),
        ContinuationFrame(1, block[5:], flags=["END_HEADERS"]),
    )
    await client.expect_connection_error(ErrorCodes.PROTOCOL_ERROR)


async def test_4_3_3_headers_to_another_stream_inside_header_block_is_protocol_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §4.3: HEADERS for stream 3 while stream 1's block is open: PROTOCOL_ERROR."""
    block = client.encode(request_fields())
    client.send(
        HeadersFrame(1, block, flags=["END_STREAM"]),
        HeadersFrame(3, client.encode(request_fields()), flags=["END_STREAM", "END_HEADERS"]),
    )
    await client.expect_connection_error(ErrorCodes.PROTOCOL_ERROR)


async def test_4_3_data_inside_header_block_is_protocol_error(client: RawH2Client) -> None:
    """RFC 9113 §4.3: nor may DATA interleave with a header block."""
    block = client.encode(request_fields("POST"))
    client.send(
        HeadersFrame(1, block),
        raw_frame(DATA, 0, 1, b"body"),
        raw_frame(CONTINUATION, END_HEADERS, 1, b""),
    )
    await client.expect_connection_error(ErrorCodes.PROTOCOL_ERROR)
