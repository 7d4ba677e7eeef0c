"""h2spec `http2/6.1`-`6.10` (flow control in test_6_9_flow_control.py): each frame type's
rules on stream identifiers, lengths, flags and padding (RFC 9113 §6)."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.conformance.conftest import Connect, Launch
from tests.conformance.h2client import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PRIORITY,
    PUSH_PROMISE,
    READ_DEADLINE,
    RST_STREAM,
    SETTINGS,
    STATIC_AUTHORITY,
    STATIC_METHOD_POST,
    STATIC_PATH_ROOT,
    STATIC_SCHEME_HTTP,
    WINDOW_UPDATE,
    ErrorCodes,
    RawH2Client,
    SettingCodes,
    indexed,
    literal,
    raw_frame,
    request_fields,
    settings_payload,
)

PROTOCOL_ERROR = ErrorCodes.PROTOCOL_ERROR
FRAME_SIZE_ERROR = ErrorCodes.FRAME_SIZE_ERROR
FLOW_CONTROL_ERROR = ErrorCodes.FLOW_CONTROL_ERROR


# ----------------------------------------------------- frames that end the connection

# Frames that are connection errors wherever they arrive after the handshake (h2spec checks
# each with VerifyConnectionError); built by hand where hyperframe refuses to build them.
_CONNECTION_ERRORS = [
    # 6.1 DATA
    pytest.param(raw_frame(DATA, 0, 0, b"test"), PROTOCOL_ERROR, id="6_1_1-data_on_stream_0"),
    # 6.2 HEADERS
    pytest.param(
        raw_frame(HEADERS, END_STREAM | END_HEADERS, 0, b"\x82\x86\x84"),
        PROTOCOL_ERROR,
        id="6_2_3-headers_on_stream_0",
    ),
    # 6.3 PRIORITY
    pytest.param(
        raw_frame(PRIORITY, 0, 0, b"\x00\x00\x00\x01\x0f"),
        PROTOCOL_ERROR,
        id="6_3_1-priority_on_stream_0",
    ),
    # 6.4 RST_STREAM
    pytest.param(
        raw_frame(RST_STREAM, 0, 0, b"\x00\x00\x00\x08"),
        PROTOCOL_ERROR,
        id="6_4_1-rst_stream_on_stream_0",
    ),
    pytest.param(
        raw_frame(RST_STREAM, 0, 1, b"\x00\x00\x00\x08"),
        PROTOCOL_ERROR,
        id="6_4_2-rst_stream_on_idle_stream",
    ),
    # 6.5 SETTINGS
    pytest.param(
        raw_frame(SETTINGS, ACK, 0, settings_payload([(SettingCodes.ENABLE_PUSH, 0)])),
        FRAME_SIZE_ERROR,
        id="6_5_1-settings_ack_with_payload",
    ),
    pytest.param(
        raw_frame(SETTINGS, 0, 1, settings_payload([(SettingCodes.ENABLE_PUSH, 0)])),
        PROTOCOL_ERROR,
        id="6_5_2-settings_on_stream_1",
    ),
    pytest.param(
        raw_frame(SETTINGS, 0, 0, b"\x00\x02\x00\x00\x00"),
        FRAME_SIZE_ERROR,
        id="6_5_3-settings_length_not_multiple_of_6",
    ),
    # 6.5.2 Defined SETTINGS Parameters
    pytest.param(
        raw_frame(SETTINGS, 0, 0, settings_payload([(SettingCodes.ENABLE_PUSH, 2)])),
        PROTOCOL_ERROR,
        id="6_5_2_1-enable_push_2",
    ),
    pytest.param(
        raw_frame(SETTINGS, 0, 0, settings_payload([(SettingCodes.INITIAL_WINDOW_SIZE, 2**31)])),
        FLOW_CONTROL_ERROR,
        id="6_5_2_2-initial_window_size_2_31",
    ),
    pytest.param(
        raw_frame(SETTINGS, 0, 0, settings_payload([(SettingCodes.MAX_FRAME_SIZE, 2**14 - 1)])),
        PROTOCOL_ERROR,
        id="6_5_2_3-max_frame_size_below_2_14",
    ),
    pytest.param(
        raw_frame(SETTINGS, 0, 0, settings_payload([(SettingCodes.MAX_FRAME_SIZE, 2**24)])),
        PROTOCOL_ERROR,
        id="6_5_2_4-max_frame_size_above_2_24_minus_1",
    ),
    pytest.param(
        raw_frame(SETTINGS, 0, 0, settings_payload([(SettingCodes.ENABLE_CONNECT_PROTOCOL, 2)])),
        PROTOCOL_ERROR,
        id="6_5_2-enable_connect_protocol_2",
    ),
    # 6.6 PUSH_PROMISE: a client cannot push (h2spec 8.2/1).
    pytest.param(
        raw_frame(PUSH_PROMISE, END_HEADERS, 1, b"\x00\x00\x00\x02\x82\x86\x84"),
        PROTOCOL_ERROR,
        id="6_6-push_promise_from_client",
    ),
    # 6.7 PING
    pytest.param(raw_frame(PING, 0, 1, b"h2spec!!"), PROTOCOL_ERROR, id="6_7_3-ping_on_stream_1"),
    pytest.param(raw_frame(PING, 0, 0, b"h2spec"), FRAME_SIZE_ERROR, id="6_7_4-ping_of_6_octets"),
    # 6.8 GOAWAY
    pytest.param(
        raw_frame(GOAWAY, 0, 1, b"\x00\x00\x00\x00\x00\x00\x00\x00"),
        PROTOCOL_ERROR,
        id="6_8_1-goaway_on_stream_1",
    ),
    # 6.9 WINDOW_UPDATE
    pytest.param(
        raw_frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"),
        PROTOCOL_ERROR,
        id="6_9_1-window_update_0_on_connection",
    ),
    pytest.param(
        raw_frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x01\x00"),
        FRAME_SIZE_ERROR,
        id="6_9_3-window_update_of_5_octets",
    ),
    # 6.10 CONTINUATION
    pytest.param(
        raw_frame(CONTINUATION, END_HEADERS, 0, b"\x82"),
        PROTOCOL_ERROR,
        id="6_10_3-continuation_on_stream_0",
    ),
]


@pytest.mark.parametrize(("frame", "code"), _CONNECTION_ERRORS)
async def test_6_frame_is_connection_error(
    client: RawH2Client, frame: bytes, code: ErrorCodes
) -> None:
    """RFC 9113 §6.1-§6.10: each of these frames must end the connection with GOAWAY and the
    error code the section names."""
    client.send(frame)
    await client.expect_connection_error(code)


# --------------------------------------------------------------------- 6.1 DATA


async def test_6_1_2_data_on_half_closed_remote_stream_is_stream_closed(
    client: RawH2Client,
) -> None:
    """RFC 9113 §6.1: DATA on a stream not "open" or "half-closed (local)": STREAM_CLOSED."""
    client.send(client.headers(1, request_fields("POST")), DataFrame(1, b"late"))
    await client.expect_stream_error(1, ErrorCodes.STREAM_CLOSED)


async def test_6_1_3_data_with_invalid_pad_length_is_protocol_error(client: RawH2Client) -> None:
    """RFC 9113 §6.1: padding as long as the payload or longer is PROTOCOL_ERROR (pad length
    6 in a 5-octet payload)."""
    client.send(
        client.headers(1, request_fields("POST"), end_stream=False),
        raw_frame(DATA, PADDED | END_STREAM, 1, b"\x06test"),
    )
    await client.expect_connection_error(PROTOCOL_ERROR)


# ------------------------------------------------------------------ 6.2 HEADERS


async def test_6_2_1_headers_block_then_priority_on_other_stream_is_protocol_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §6.2: a HEADERS without END_HEADERS must be followed by CONTINUATION for the
    same stream; a PRIORITY (for another stream) is a connection error PROTOCOL_ERROR."""
    block = client.encode(request_fields())
    client.send(
        HeadersFrame(1, block, flags=["END_STREAM"]),
        PriorityFrame(3, depends_on=0, stream_weight=15),
    )
    await client.expect_connection_error(PROTOCOL_ERROR)


async def test_6_2_2_headers_instead_of_continuation_is_protocol_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §6.2, §6.10: a second HEADERS on the same stream where CONTINUATION was due
    is a connection error PROTOCOL_ERROR."""
    block = client.encode(request_fields())
    client.send(
        HeadersFrame(1, block[:4], flags=["END_STREAM"]),
        HeadersFrame(1, block[4:], flags=["END_HEADERS"]),
    )
    await client.expect_connection_error(PROTOCOL_ERROR)


async def test_6_2_4_headers_with_invalid_pad_length_is_protocol_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §6.2: padding that leaves no room for the block is PROTOCOL_ERROR."""
    block = client.encode(request_fields())
    payload = bytes([len(block) + 1]) + block
    client.send(raw_frame(HEADERS, PADDED | END_STREAM | END_HEADERS, 1, payload))
    await client.expect_connection_error(PROTOCOL_ERROR)


# ----------------------------------------------------------------- 6.3 PRIORITY


async def test_6_3_2_priority_of_wrong_length_is_frame_size_error(client: RawH2Client) -> None:
    """RFC 9113 §6.3: a PRIORITY frame other than 5 octets is a stream error
    FRAME_SIZE_ERROR (a connection error passes too)."""
    client.send(raw_frame(PRIORITY, 0, 1, b"\x00\x00\x00\x01"))
    await client.expect_stream_error(1, FRAME_SIZE_ERROR)


# --------------------------------------------------------------- 6.4 RST_STREAM


async def test_6_4_3_rst_stream_of_wrong_length_is_frame_size_error(client: RawH2Client) -> None:
    """RFC 9113 §6.4: an RST_STREAM other than 4 octets is a connection error
    FRAME_SIZE_ERROR."""
    client.send(
        client.headers(1, request_fields("POST"), end_stream=False),
        raw_frame(RST_STREAM, 0, 1, b"\x00\x00\x00\x08\x00"),
    )
    await client.expect_connection_error(FRAME_SIZE_ERROR)


# ----------------------------------------------------------------- 6.5 SETTINGS


async def test_6_5_2_5_unknown_setting_is_ignored(client: RawH2Client) -> None:
    """RFC 9113 §6.5.2: an unknown or unsupported identifier is ignored; the SETTINGS is
    acknowledged."""
    client.send(raw_frame(SETTINGS, 0, 0, settings_payload([(0xFF, 1)])))
    before = await client.expect_alive()
    assert any(isinstance(f, SettingsFrame) and "ACK" in f.flags for f in before), before


async def test_6_5_3_1_last_value_of_a_repeated_setting_applies(client: RawH2Client) -> None:
    """RFC 9113 §6.5.3: values in a SETTINGS frame apply in order, so the last of a repeated
    one wins: SETTINGS_INITIAL_WINDOW_SIZE 100 then 1 lets one octet of body out."""
    pairs = [(SettingCodes.INITIAL_WINDOW_SIZE, 100), (SettingCodes.INITIAL_WINDOW_SIZE, 1)]
    client.send(raw_frame(SETTINGS, 0, 0, settings_payload(pairs)), client.headers(1))
    while not isinstance(frame := await client.read_frame(), DataFrame):
        assert not isinstance(frame, GoAwayFrame), frame
    assert len(frame.data) == 1


async def test_6_5_3_2_settings_are_acknowledged(client: RawH2Client) -> None:
    """RFC 9113 §6.5.3: a SETTINGS without ACK is acknowledged with an empty SETTINGS ACK."""
    client.send(SettingsFrame(0, {SettingCodes.MAX_CONCURRENT_STREAMS: 10}))
    before = await client.expect_alive()
    acks = [f for f in before if isinstance(f, SettingsFrame)]
    assert len(acks) == 1
    assert "ACK" in acks[0].flags
    assert acks[0].body_len == 0


# --------------------------------------------------------------------- 6.7 PING


async def test_6_7_1_ping_is_acknowledged_with_its_data(client: RawH2Client) -> None:
    """RFC 9113 §6.7: the ACK carries the PING's 8 octets unchanged."""
    await client.expect_alive(bytes(range(8)))


async def test_6_7_2_ping_ack_is_not_acknowledged(client: RawH2Client) -> None:
    """RFC 9113 §6.7: a PING with ACK must not be answered."""
    client.send(PingFrame(0, b"unsolici", flags=["ACK"]))
    before = await client.expect_alive(b"solicitd")
    assert not [f for f in before if isinstance(f, PingFrame)], before


# --------------------------------------------------------------------- 6.8 GOAWAY


async def test_6_8_goaway_lets_open_streams_finish(client: RawH2Client) -> None:
    """RFC 9113 §6.8: GOAWAY stops new streams; a stream already open completes (the body
    sent after the client's GOAWAY still reaches the upstream)."""
    client.send(
        client.headers(1, request_fields("POST"), end_stream=False),
        GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR),
        DataFrame(1, b"after goaway", flags=["END_STREAM"]),
    )
    response = await client.response(1)
    assert response.status == 200
    assert b"after goaway" in response.body


async def test_6_8_graceful_goaway_after_max_requests_lets_the_stream_finish(
    launch: Launch, connect: Connect
) -> None:
    """RFC 9113 §6.8: the gateway's own graceful GOAWAY (NO_ERROR, here after
    max_requests_per_connection streams) names the last stream it will answer, answers it,
    and refuses later streams (REFUSED_STREAM: safe to retry elsewhere)."""
    gateway = await launch(max_requests_per_connection=1)
    client = await connect(port=gateway.addresses[0][1])
    client.send(client.headers(1, request_fields("POST"), end_stream=False))
    while not isinstance(frame := await client.read_frame(), GoAwayFrame):
        pass
    assert frame.error_code == ErrorCodes.NO_ERROR
    assert frame.last_stream_id == 1
    client.send(client.headers(3))
    refused = await client.expect_stream_error(3, ErrorCodes.REFUSED_STREAM)
    assert isinstance(refused, RstStreamFrame)
    client.send(DataFrame(1, b"body", flags=["END_STREAM"]))
    response = await client.response(1)
    assert response.status == 200
    assert b'"body": "body"' in response.body


async def test_6_8_drain_lets_the_open_stream_finish(launch: Launch, connect: Connect) -> None:
    """RFC 9113 §6.8: a gateway shutting down sends GOAWAY NO_ERROR and still completes the
    stream in flight before it closes the connection."""
    gateway = await launch()
    client = await connect(port=gateway.addresses[0][1])
    client.send(client.headers(1, request_fields("POST"), end_stream=False))
    await client.expect_alive()
    drained = asyncio.ensure_future(gateway.drain(READ_DEADLINE))
    while not isinstance(frame := await client.read_frame(), GoAwayFrame):
        pass
    assert frame.error_code == ErrorCodes.NO_ERROR
    assert frame.last_stream_id == 1
    client.send(DataFrame(1, b"late body", flags=["END_STREAM"]))
    response = await client.response(1)
    assert response.status == 200
    assert b"late body" in response.body
    assert await client.is_closed()
    await drained


# --------------------------------------------------------------- 6.9 WINDOW_UPDATE


async def test_6_9_2_window_update_0_on_stream_is_protocol_error(client: RawH2Client) -> None:
    """RFC 9113 §6.9: an increment of 0 on a stream is a stream error PROTOCOL_ERROR."""
    client.send(
        client.headers(1, request_fields("POST"), end_stream=False),
        raw_frame(WINDOW_UPDATE, 0, 1, b"\x00\x00\x00\x00"),
    )
    await client.expect_stream_error(1, PROTOCOL_ERROR)


async def test_6_9_window_update_reserved_bit_is_ignored(client: RawH2Client) -> None:
    """RFC 9113 §6.9: the increment's reserved bit is ignored (an increment of 1 here)."""
    client.send(raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x80000001)))
    await client.expect_alive()


async def test_6_9_window_update_reserved_bit_on_a_stream_is_ignored(
    client: RawH2Client,
) -> None:
    """RFC 9113 §6.9: the same on a stream: with SETTINGS_INITIAL_WINDOW_SIZE 0 nothing is
    sent until the WINDOW_UPDATE, whose increment (1, reserved bit set) lets one octet out."""
    client.send(SettingsFrame(0, {SettingCodes.INITIAL_WINDOW_SIZE: 0}), client.headers(1))
    await client.expect_alive()
    client.send(raw_frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0x80000001)))
    while not isinstance(frame := await client.read_frame(), DataFrame):
        assert not isinstance(frame, (GoAwayFrame, RstStreamFrame)), frame
    assert len(frame.data) == 1


async def test_6_5_settings_ack_then_next_frame_in_one_read(client: RawH2Client) -> None:
    """RFC 9113 §6.5.3: an empty SETTINGS ACK (for no outstanding SETTINGS, ignored) read
    together with the next frame is not mistaken for one with a payload."""
    client.send(SettingsFrame(0, flags=["ACK"]), PingFrame(0, b"together"))
    while not isinstance(frame := await client.read_frame(), PingFrame):
        assert not isinstance(frame, GoAwayFrame), frame
    assert frame.opaque_data == b"together"


# ------------------------------------------------------------ 6.10 CONTINUATION


async def test_6_10_1_field_per_continuation_frame(client: RawH2Client) -> None:
    """RFC 9113 §6.10: any number of CONTINUATION frames may follow HEADERS; here each
    field's representation comes in a frame of its own."""
    fields = request_fields(extra=[("x-a", "1"), ("x-b", "2")])
    parts = [client.encode([field]) for field in fields]
    frames: list[Frame] = [HeadersFrame(1, parts[0], flags=["END_STREAM"])]
    frames += [ContinuationFrame(1, part) for part in parts[1:-1]]
    frames.append(ContinuationFrame(1, parts[-1], flags=["END_HEADERS"]))
    client.send(*frames)
    assert b'"x-b", "2"' in (await client.response(1)).body


# POST / as static-table entries and a literal: the same octets on any connection.
_POST = (
    indexed(STATIC_METHOD_POST)
    + indexed(STATIC_SCHEME_HTTP)
    + indexed(STATIC_PATH_ROOT)
    + literal(STATIC_AUTHORITY, b"example.test")
)


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(
            [raw_frame(HEADERS, 0, 1, _POST), raw_frame(DATA, END_STREAM, 1, b"x")],
            id="6_10_2-block_followed_by_data",
        ),
        pytest.param(
            [raw_frame(HEADERS, END_HEADERS, 1, _POST), raw_frame(CONTINUATION, END_HEADERS, 1)],
            id="6_10_4-after_end_headers",
        ),
        pytest.param(
            [
                raw_frame(HEADERS, 0, 1, _POST[:2]),
                raw_frame(CONTINUATION, END_HEADERS, 1, _POST[2:]),
                raw_frame(CONTINUATION, END_HEADERS, 1),
            ],
            id="6_10_5-after_continuation_with_end_headers",
        ),
        pytest.param(
            [
                raw_frame(HEADERS, END_HEADERS, 1, _POST),
                raw_frame(DATA, 0, 1, b"body"),
                raw_frame(CONTINUATION, END_HEADERS, 1),
            ],
            id="6_10_6-after_data",
        ),
        pytest.param(
            [
                raw_frame(HEADERS, END_STREAM, 1, _POST[:2]),
                raw_frame(CONTINUATION, END_HEADERS, 3, _POST[2:]),
            ],
            id="6_10-for_another_stream",
        ),
    ],
)
async def test_6_10_continuation_out_of_sequence_is_protocol_error(
    client: RawH2Client, frames: list[bytes]
) -> None:
    """RFC 9113 §6.10: CONTINUATION must follow a HEADERS, PUSH_PROMISE or CONTINUATION
    without END_HEADERS on the same stream, and such a frame must be followed by
    CONTINUATION; anything else is a connection error PROTOCOL_ERROR."""
    client.send(*frames)
    await client.expect_connection_error(PROTOCOL_ERROR)
