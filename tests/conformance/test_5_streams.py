"""h2spec `http2/5.1`-`5.5`: stream states, identifiers, concurrency, priority, error handling
and extensions (RFC 9113 §5)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PriorityFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from tests.conformance.conftest import Connect, Launch
from tests.conformance.h2client import (
    CONTINUATION,
    END_HEADERS,
    PING,
    ErrorCodes,
    RawH2Client,
    SettingCodes,
    raw_frame,
    request_fields,
)

# A frame for stream 1 sent where it breaks the rules under test.
FrameFor = Callable[[RawH2Client], bytes | Frame]


def _data(client: RawH2Client) -> bytes | Frame:
    return DataFrame(1, b"test")


def _headers(client: RawH2Client) -> bytes | Frame:
    return client.headers(1)


def _continuation(client: RawH2Client) -> bytes | Frame:
    # Encoded separately: the block must not touch the connection's HPACK context.
    return raw_frame(CONTINUATION, END_HEADERS, 1, b"\x82")


# ------------------------------------------------------------------ 5.1 Stream States


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(DataFrame(1, b"test"), id="5_1_1-data"),
        pytest.param(RstStreamFrame(1, ErrorCodes.CANCEL), id="5_1_2-rst_stream"),
        pytest.param(WindowUpdateFrame(1, 100), id="5_1_3-window_update"),
        pytest.param(ContinuationFrame(1, b"\x82", flags=["END_HEADERS"]), id="5_1_4-continuation"),
    ],
)
async def test_5_1_idle_stream_frames_are_protocol_error(client: RawH2Client, frame: Frame) -> None:
    """RFC 9113 §5.1 (idle): only HEADERS and PRIORITY may be received on an idle stream;
    anything else is a connection error PROTOCOL_ERROR."""
    client.send(frame)
    await client.expect_connection_error(ErrorCodes.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    ("frame_for", "codes"),
    [
        pytest.param(_data, (ErrorCodes.STREAM_CLOSED,), id="5_1_5-data"),
        pytest.param(_headers, (ErrorCodes.STREAM_CLOSED,), id="5_1_6-headers"),
        # A CONTINUATION without its HEADERS is also out of sequence (RFC 9113 §6.10).
        pytest.param(
            _continuation,
            (ErrorCodes.STREAM_CLOSED, ErrorCodes.PROTOCOL_ERROR),
            id="5_1_7-continuation",
        ),
    ],
)
async def test_5_1_half_closed_remote_frames_are_stream_closed(
    client: RawH2Client, frame_for: FrameFor, codes: tuple[ErrorCodes, ...]
) -> None:
    """RFC 9113 §5.1 (half-closed (remote)): after the client's END_STREAM, a frame other
    than WINDOW_UPDATE, PRIORITY or RST_STREAM is a stream error STREAM_CLOSED."""
    client.send(client.headers(1, request_fields("POST")), frame_for(client))
    await client.expect_stream_error(1, *codes)


@pytest.mark.parametrize(
    ("frame_for", "codes"),
    [
        pytest.param(_data, (ErrorCodes.STREAM_CLOSED,), id="5_1_8-data"),
        pytest.param(_headers, (ErrorCodes.STREAM_CLOSED,), id="5_1_9-headers"),
        pytest.param(
            _continuation,
            (ErrorCodes.STREAM_CLOSED, ErrorCodes.PROTOCOL_ERROR),
            id="5_1_10-continuation",
        ),
    ],
)
async def test_5_1_closed_by_rst_stream_frames_are_stream_closed(
    client: RawH2Client, frame_for: FrameFor, codes: tuple[ErrorCodes, ...]
) -> None:
    """RFC 9113 §5.1 (closed): a frame on a stream the client reset is STREAM_CLOSED."""
    client.send(
        client.headers(1, request_fields("POST"), end_stream=False),
        RstStreamFrame(1, ErrorCodes.CANCEL),
        frame_for(client),
    )
    await client.expect_stream_error(1, *codes)


@pytest.mark.parametrize(
    ("frame_for", "codes"),
    [
        pytest.param(_data, (ErrorCodes.STREAM_CLOSED,), id="5_1_11-data"),
        pytest.param(_headers, (ErrorCodes.STREAM_CLOSED,), id="5_1_12-headers"),
        pytest.param(
            _continuation,
            (ErrorCodes.STREAM_CLOSED, ErrorCodes.PROTOCOL_ERROR),
            id="5_1_13-continuation",
        ),
    ],
)
async def test_5_1_closed_by_end_stream_frames_are_stream_closed(
    client: RawH2Client, frame_for: FrameFor, codes: tuple[ErrorCodes, ...]
) -> None:
    """RFC 9113 §5.1 (closed): once both sides sent END_STREAM, a frame on the stream is
    STREAM_CLOSED."""
    client.send(client.headers(1))
    assert (await client.response(1)).status == 200
    client.send(frame_for(client))
    await client.expect_stream_error(1, *codes)


# -------------------------------------------------------------- 5.1.1 Stream Identifiers


async def test_5_1_1_1_even_stream_id_is_protocol_error(client: RawH2Client) -> None:
    """RFC 9113 §5.1.1: client-initiated streams are odd; an even one is PROTOCOL_ERROR."""
    client.send(client.headers(2))
    await client.expect_connection_error(ErrorCodes.PROTOCOL_ERROR)


async def test_5_1_1_2_smaller_stream_id_is_protocol_error(client: RawH2Client) -> None:
    """RFC 9113 §5.1.1: a new stream's identifier must exceed every one opened before."""
    client.send(client.headers(5))
    assert (await client.response(5)).status == 200
    client.send(client.headers(3))
    await client.expect_connection_error(ErrorCodes.PROTOCOL_ERROR)


async def test_5_1_1_skipped_ids_are_closed_implicitly(client: RawH2Client) -> None:
    """RFC 9113 §5.1.1: opening stream 7 closes idle streams 1-5 implicitly; a stream id may
    skip values (stream 7 is answered)."""
    client.send(client.headers(7))
    assert (await client.response(7)).status == 200


# ------------------------------------------------------------ 5.1.2 Stream Concurrency


# ------------------------------------------------------------ 5.1.2 Stream Concurrency


async def test_5_1_2_1_streams_beyond_max_concurrent_are_refused(
    launch: Launch, connect: Connect
) -> None:
    """RFC 9113 §5.1.2: a HEADERS that opens more streams than SETTINGS_MAX_CONCURRENT_STREAMS
    is a stream error PROTOCOL_ERROR or REFUSED_STREAM. h2spec would pass a connection error
    too; the gateway refuses that stream alone (REFUSED_STREAM, safe to retry), so the
    streams within the limit are served."""
    gateway = await launch(max_concurrent_streams=2)
    client = await connect(port=gateway.addresses[0][1])
    assert client.server_settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 2
    post = request_fields("POST")
    client.send(
        client.headers(1, post, end_stream=False),
        client.headers(3, post, end_stream=False),
        client.headers(5, post, end_stream=False),
    )
    refused = await client.expect_stream_error(5, ErrorCodes.REFUSED_STREAM)
    assert isinstance(refused, RstStreamFrame)
    client.send(DataFrame(1, b"one", flags=["END_STREAM"]), DataFrame(3, b"", flags=["END_STREAM"]))
    assert (await client.response(1)).status == 200
    assert (await client.response(3)).status == 200


# ------------------------------------------------------------------------- 5.3 Priority


async def test_5_3_1_1_headers_depending_on_itself_is_protocol_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §5.3.1: a stream cannot depend on itself: a stream error PROTOCOL_ERROR
    (RFC 9113 keeps this rule though the priority scheme is deprecated, §5.3.2)."""
    client.send(
        HeadersFrame(
            1,
            client.encode(request_fields()),
            depends_on=1,
            stream_weight=15,
            flags=["END_STREAM", "END_HEADERS", "PRIORITY"],
        )
    )
    await client.expect_stream_error(1, ErrorCodes.PROTOCOL_ERROR)


async def test_5_3_1_2_priority_depending_on_itself_is_protocol_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §5.3.1: the same for a PRIORITY frame."""
    client.send(PriorityFrame(1, depends_on=1, stream_weight=15))
    await client.expect_stream_error(1, ErrorCodes.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    "priority",
    [
        pytest.param(PriorityFrame(3, depends_on=99, stream_weight=200), id="idle_parent"),
        pytest.param(PriorityFrame(3, depends_on=1, exclusive=True), id="closed_parent"),
    ],
)
async def test_5_3_priority_is_ignored_never_an_error(
    client: RawH2Client, priority: PriorityFrame
) -> None:
    """RFC 9113 §5.3.2: priority signals are advisory (and deprecated); one naming a stream
    that is idle or closed changes nothing: the stream is answered."""
    client.send(client.headers(1))
    assert (await client.response(1)).status == 200
    client.send(priority, client.headers(3))
    assert (await client.response(3)).status == 200


# ----------------------------------------------------------------- 5.4 Error Handling


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param(raw_frame(PING, 0, 0, b"short!"), ErrorCodes.FRAME_SIZE_ERROR, id="5_4_1_1"),
        pytest.param(raw_frame(PING, 0, 1, b"stream 1"), ErrorCodes.PROTOCOL_ERROR, id="5_4_1_2"),
    ],
)
async def test_5_4_1_connection_error_sends_goaway_and_closes(
    client: RawH2Client, frame: bytes, code: ErrorCodes
) -> None:
    """RFC 9113 §5.4.1: on a connection error the endpoint sends GOAWAY, naming the last
    stream it processed (none here), and closes the TCP connection. An invalid PING: of 6
    octets (FRAME_SIZE_ERROR), or on a stream (PROTOCOL_ERROR)."""
    client.send(frame)
    goaway = await client.expect_connection_error(code)
    assert goaway.last_stream_id == 0


async def test_5_4_1_goaway_names_the_last_stream_processed(client: RawH2Client) -> None:
    """RFC 9113 §6.8: the GOAWAY of a connection error carries the last stream the server
    processed (stream 3 here), so that the client knows what to retry."""
    client.send(client.headers(1))
    assert (await client.response(1)).status == 200
    client.send(client.headers(3))
    assert (await client.response(3)).status == 200
    client.send(raw_frame(PING, 0, 0, b"short!"))
    goaway = await client.expect_connection_error(ErrorCodes.FRAME_SIZE_ERROR)
    assert goaway.last_stream_id == 3


async def test_5_4_2_stream_error_leaves_the_connection_usable(client: RawH2Client) -> None:
    """RFC 9113 §5.4.2: after a stream error (RST_STREAM), other streams go on. A
    WINDOW_UPDATE overflowing one stream's window is a stream error FLOW_CONTROL_ERROR."""
    client.send(
        client.headers(1, request_fields("POST"), end_stream=False),
        WindowUpdateFrame(1, 2**31 - 1),
    )
    frame = await client.expect_stream_error(1, ErrorCodes.FLOW_CONTROL_ERROR)
    assert isinstance(frame, RstStreamFrame), "a stream error must not end the connection"
    client.send(client.headers(3))
    assert (await client.response(3)).status == 200


# ------------------------------------------------------------------- 5.5 Extending HTTP/2


async def test_5_5_1_unknown_extension_frame_is_ignored(client: RawH2Client) -> None:
    """RFC 9113 §5.5: unknown frame types (here 0x16 on an idle stream) are ignored."""
    client.send(raw_frame(0x16, 0xFF, 1, b"extension"))
    await client.expect_alive()
    client.send(client.headers(1))
    assert (await client.response(1)).status == 200


async def test_5_5_2_unknown_frame_inside_header_block_is_protocol_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §5.5: an unknown frame in the middle of a header block is a connection error
    PROTOCOL_ERROR (extensions may not interrupt a field block, §4.3)."""
    block = client.encode(request_fields())
    client.send(
        HeadersFrame(1, block, flags=["END_STREAM"]),
        raw_frame(0x16, 0, 1, b"extension"),
        ContinuationFrame(1, b"", flags=["END_HEADERS"]),
    )
    await client.expect_connection_error(ErrorCodes.PROTOCOL_ERROR)
    assert not any(isinstance(f, GoAwayFrame) and f.error_code == 0 for f in client.seen)
