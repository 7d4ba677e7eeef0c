"""h2spec `generic`: what a conforming server must accept and answer normally.

Every case here sends valid frames and expects the ordinary outcome: a 200 from the HTTP/1.1
upstream (which echoes the request it received, so the body shows what the gateway made of
the frames), or an acknowledgement, or the connection still answering a PING.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.conformance.conftest import Connect
from tests.conformance.h2client import (
    GET_BLOCK,
    STATIC_AUTHORITY,
    STATIC_METHOD_GET,
    STATIC_PATH_ROOT,
    STATIC_SCHEME_HTTP,
    STATIC_USER_AGENT,
    ErrorCodes,
    RawH2Client,
    Response,
    SettingCodes,
    indexed,
    literal,
    request_fields,
    table_size_update,
)


def echoed(response: Response) -> dict[str, Any]:
    """What the echoing upstream received (tests.harness.echo_app)."""
    assert response.status == 200, response
    payload: dict[str, Any] = json.loads(response.body)
    return payload


def upstream_field(response: Response, name: str) -> list[str]:
    return [value for key, value in echoed(response)["headers"] if key.lower() == name]


# ------------------------------------------------------------------ 1. Starting HTTP/2


async def test_generic_1_1_preface_is_answered_with_settings(connect: Connect) -> None:
    """RFC 9113 §3.4: the server's preface is a SETTINGS frame, its first frame."""
    client = await connect(handshake=False)
    client.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", SettingsFrame(0))
    first = await client.read_frame()
    assert isinstance(first, SettingsFrame)
    assert "ACK" not in first.flags


# -------------------------------------------------------- 2. Streams and Multiplexing


async def test_generic_2_1_priority_on_idle_stream_then_request(client: RawH2Client) -> None:
    """RFC 9113 §5.1: PRIORITY may be sent on an idle stream; the stream opens later."""
    client.send(PriorityFrame(1, depends_on=0, stream_weight=15), client.headers(1))
    assert (await client.response(1)).status == 200


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(WindowUpdateFrame(1, 1), id="2_2-window_update"),
        pytest.param(PriorityFrame(1, depends_on=0, stream_weight=15), id="2_3-priority"),
    ],
)
async def test_generic_2_x_frame_on_half_closed_remote_stream(
    client: RawH2Client, frame: WindowUpdateFrame | PriorityFrame
) -> None:
    """RFC 9113 §5.1: half-closed (remote) still receives WINDOW_UPDATE and PRIORITY."""
    client.send(client.headers(1), frame)
    assert (await client.response(1)).status == 200


async def test_generic_2_4_rst_stream_on_half_closed_remote_stream(client: RawH2Client) -> None:
    """RFC 9113 §5.1: RST_STREAM closes a half-closed (remote) stream; the connection lives
    and serves the next stream."""
    client.send(client.headers(1), RstStreamFrame(1, ErrorCodes.CANCEL))
    await client.expect_alive()
    client.send(client.headers(3))
    assert (await client.response(3)).status == 200


async def test_generic_2_5_priority_on_closed_stream(client: RawH2Client) -> None:
    """RFC 9113 §5.1: PRIORITY can be sent in any state, closed included."""
    client.send(client.headers(1))
    assert (await client.response(1)).status == 200
    client.send(PriorityFrame(1, depends_on=0, stream_weight=15))
    await client.expect_alive()


# ---------------------------------------------------------------- 3. Frame Definitions


@pytest.mark.parametrize(
    ("frames", "body"),
    [
        pytest.param([DataFrame(1, b"test", flags=["END_STREAM"])], "test", id="3_1_1-one"),
        pytest.param(
            [DataFrame(1, b"te"), DataFrame(1, b"st"), DataFrame(1, b"", flags=["END_STREAM"])],
            "test",
            id="3_1_2-several",
        ),
        pytest.param(
            [DataFrame(1, b"test", pad_length=8, flags=["PADDED", "END_STREAM"])],
            "test",
            id="3_1_3-padded",
        ),
    ],
)
async def test_generic_3_1_data_frames(
    client: RawH2Client, frames: list[DataFrame], body: str
) -> None:
    """RFC 9113 §6.1: DATA carries the request body; padding is not part of it."""
    fields = request_fields("POST", extra=[("content-type", "text/plain")])
    client.send(client.headers(1, fields, end_stream=False), *frames)
    assert echoed(await client.response(1))["body"] == body


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="3_2_1-plain"),
        pytest.param({"pad_length": 16, "flags": ["PADDED"]}, id="3_2_2-padded"),
        pytest.param(
            {"depends_on": 0, "stream_weight": 255, "exclusive": True, "flags": ["PRIORITY"]},
            id="3_2_3-priority",
        ),
    ],
)
async def test_generic_3_2_headers_frames(client: RawH2Client, options: dict[str, Any]) -> None:
    """RFC 9113 §6.2: HEADERS with padding or priority fields still carries the request."""
    flags = ["END_STREAM", "END_HEADERS", *options.pop("flags", [])]
    client.send(HeadersFrame(1, client.encode(request_fields()), flags=flags, **options))
    assert (await client.response(1)).status == 200


@pytest.mark.parametrize(
    ("stream", "depends_on", "weight", "exclusive"),
    [
        pytest.param(1, 0, 0, False, id="3_3_1-weight_1"),
        pytest.param(1, 0, 255, False, id="3_3_2-weight_256"),
        pytest.param(3, 1, 15, False, id="3_3_3-dependency"),
        pytest.param(3, 1, 15, True, id="3_3_4-exclusive"),
    ],
)
async def test_generic_3_3_priority_frames(
    client: RawH2Client, stream: int, depends_on: int, weight: int, exclusive: bool
) -> None:
    """RFC 9113 §5.3.2, §6.3: PRIORITY is parsed and ignored (the scheme is deprecated)."""
    client.send(
        PriorityFrame(stream, depends_on=depends_on, stream_weight=weight, exclusive=exclusive)
    )
    await client.expect_alive()
    client.send(client.headers(5))
    assert (await client.response(5)).status == 200


async def test_generic_3_3_5_priority_on_idle_stream_then_headers(client: RawH2Client) -> None:
    """RFC 9113 §5.1: a PRIORITY frame leaves the stream idle; HEADERS opens it after."""
    client.send(PriorityFrame(3, depends_on=0, stream_weight=15))
    await client.expect_alive()
    client.send(client.headers(3))
    assert (await client.response(3)).status == 200


async def test_generic_3_4_1_rst_stream(client: RawH2Client) -> None:
    """RFC 9113 §6.4: the client may reset an open stream; the connection lives."""
    client.send(client.headers(1, request_fields("POST"), end_stream=False))
    client.send(RstStreamFrame(1, ErrorCodes.CANCEL))
    await client.expect_alive()


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        pytest.param(SettingCodes.HEADER_TABLE_SIZE, 4096, id="3_5_1-header_table_size"),
        pytest.param(SettingCodes.ENABLE_PUSH, 0, id="3_5_2-enable_push"),
        pytest.param(SettingCodes.MAX_CONCURRENT_STREAMS, 100, id="3_5_3-max_concurrent"),
        pytest.param(SettingCodes.INITIAL_WINDOW_SIZE, 100, id="3_5_4-initial_window"),
        pytest.param(SettingCodes.MAX_FRAME_SIZE, 16385, id="3_5_5-max_frame_size"),
        pytest.param(SettingCodes.MAX_HEADER_LIST_SIZE, 2**32 - 1, id="3_5_6-header_list"),
    ],
)
async def test_generic_3_5_settings_parameters_are_acknowledged(
    client: RawH2Client, setting: int, value: int
) -> None:
    """RFC 9113 §6.5.2, §6.5.3: a valid SETTINGS value is applied and acknowledged."""
    client.send(SettingsFrame(0, {setting: value}))
    before = await client.expect_alive()
    acks = [f for f in before if isinstance(f, SettingsFrame) and "ACK" in f.flags]
    assert len(acks) == 1, before


async def test_generic_3_6_1_ping(client: RawH2Client) -> None:
    """RFC 9113 §6.7: a PING is answered with an ACK carrying the same 8 octets."""
    await client.expect_alive(b"h2spec\x00\xff")


async def test_generic_3_7_1_goaway_closes_idle_connection_gracefully(
    client: RawH2Client,
) -> None:
    """RFC 9113 §6.8: after the client's GOAWAY (and no stream open) the server may close;
    it says no error of its own."""
    client.send(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR))
    assert await client.is_closed()
    goaways = [f for f in client.seen if isinstance(f, GoAwayFrame)]
    assert all(f.error_code == ErrorCodes.NO_ERROR for f in goaways), goaways


async def test_generic_3_8_1_window_update(client: RawH2Client) -> None:
    """RFC 9113 §6.9: a connection WINDOW_UPDATE is accepted."""
    client.send(WindowUpdateFrame(0, 1))
    await client.expect_alive()


@pytest.mark.parametrize("pieces", [2, 5], ids=["3_9_1-one", "3_9_2-several"])
async def test_generic_3_9_continuation(client: RawH2Client, pieces: int) -> None:
    """RFC 9113 §6.10: a header block split over HEADERS and CONTINUATION frames is one
    block: every field of it reaches the upstream."""
    block = client.encode(request_fields(extra=[("x-piece", "p" * 40)]))
    size = -(-len(block) // pieces)
    chunks = [block[i : i + size] for i in range(0, len(block), size)]
    assert len(chunks) == pieces
    client.send(
        HeadersFrame(1, chunks[0], flags=["END_STREAM"]),
        *(ContinuationFrame(1, chunk) for chunk in chunks[1:-1]),
        ContinuationFrame(1, chunks[-1], flags=["END_HEADERS"]),
    )
    assert upstream_field(await client.response(1), "x-piece") == ["p" * 40]


# ---------------------------------------------------------- 4. HTTP Message Exchanges


async def test_generic_4_1_get(client: RawH2Client) -> None:
    """RFC 9113 §8.1: a GET is proxied to the HTTP/1.1 upstream and answered with 200."""
    client.send(client.headers(1, request_fields(path="/some/where?x=1")))
    payload = echoed(await client.response(1))
    assert payload["method"] == "GET"
    assert payload["target"] == "/some/where?x=1"
    assert payload["version"] == "1.1"


async def test_generic_4_2_head(client: RawH2Client) -> None:
    """RFC 9110 §9.3.2: HEAD is answered with the head only, END_STREAM on HEADERS."""
    client.send(client.headers(1, request_fields("HEAD")))
    response = await client.response(1)
    assert response.status == 200
    assert response.body == b""
    assert response.data_frames == []


async def test_generic_4_3_post(client: RawH2Client) -> None:
    """RFC 9113 §8.1: a POST's DATA becomes the upstream request's body."""
    client.send(
        client.headers(
            1, request_fields("POST", extra=[("content-length", "5")]), end_stream=False
        ),
        DataFrame(1, b"hello", flags=["END_STREAM"]),
    )
    payload = echoed(await client.response(1))
    assert payload["method"] == "POST"
    assert payload["body"] == "hello"


async def test_generic_4_4_post_with_trailers(client: RawH2Client) -> None:
    """RFC 9113 §8.1: trailers end the request (a HEADERS frame with END_STREAM after DATA)."""
    client.send(
        client.headers(1, request_fields("POST", extra=[("te", "trailers")]), end_stream=False),
        DataFrame(1, b"body"),
        client.headers(1, [("x-checksum", "abc")]),
    )
    assert echoed(await client.response(1))["body"] == "body"


# ----------------------------------------------------------------------------- 5. HPACK

_H = b"x-h2spec"
_UA = ("user-agent", "h2spec")
_XH = ("x-h2spec", "h2spec")


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        pytest.param(GET_BLOCK, None, id="5_1-indexed_static"),
        pytest.param(
            GET_BLOCK + literal(STATIC_USER_AGENT, b"h2spec", "incremental"),
            _UA,
            id="5_2-incremental_indexed_name",
        ),
        pytest.param(
            GET_BLOCK + literal(_H, b"h2spec", "incremental"), _XH, id="5_3-incremental_new"
        ),
        pytest.param(
            GET_BLOCK + literal(STATIC_USER_AGENT, b"h2spec", "without"),
            _UA,
            id="5_4-without_indexing_indexed_name",
        ),
        pytest.param(GET_BLOCK + literal(_H, b"h2spec", "without"), _XH, id="5_5-without_new"),
        pytest.param(
            GET_BLOCK + literal(STATIC_USER_AGENT, b"h2spec", "never"),
            _UA,
            id="5_6-never_indexed_indexed_name",
        ),
        pytest.param(GET_BLOCK + literal(_H, b"h2spec", "never"), _XH, id="5_7-never_new"),
        pytest.param(table_size_update(0) + GET_BLOCK, None, id="5_8-table_size_update"),
        pytest.param(
            indexed(STATIC_METHOD_GET)
            + indexed(STATIC_SCHEME_HTTP)
            + indexed(STATIC_PATH_ROOT)
            + literal(STATIC_AUTHORITY, b"example.test", huffman=True)
            + literal(_H, b"h2spec", "without", huffman=True),
            _XH,
            id="5_9-huffman",
        ),
    ],
)
async def test_generic_5_hpack_representations(
    client: RawH2Client, block: bytes, expected: tuple[str, str] | None
) -> None:
    """RFC 7541 §6: each field representation decodes to the field the upstream receives
    (`user-agent` is static index 58, RFC 7541 Appendix A)."""
    client.send(client.headers(1, block=block))
    response = await client.response(1)
    assert echoed(response)["method"] == "GET"
    assert upstream_field(response, "host") == ["example.test"]
    if expected is not None:
        name, value = expected
        assert upstream_field(response, name) == [value]


async def test_generic_5_hpack_dynamic_table_across_streams(client: RawH2Client) -> None:
    """RFC 7541 §2.3.2: an entry added by one request's block is referenced by the next
    (index 62, the newest dynamic entry)."""
    client.send(client.headers(1, block=GET_BLOCK + literal(_H, b"first", "incremental")))
    assert upstream_field(await client.response(1), "x-h2spec") == ["first"]
    client.send(client.headers(3, block=GET_BLOCK + indexed(62)))
    assert upstream_field(await client.response(3), "x-h2spec") == ["first"]


async def test_generic_ping_ack_is_not_answered(client: RawH2Client) -> None:
    """RFC 9113 §6.7: a PING with ACK set is never answered (else two peers would loop)."""
    client.send(PingFrame(0, b"ackack00", flags=["ACK"]))
    before = await client.expect_alive(b"realping")
    assert not [f for f in before if isinstance(f, PingFrame)], before
