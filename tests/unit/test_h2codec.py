"""The HTTP/2 framing layer against h2 as a client, in memory (no sockets: pure framing)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame

from gateway.config.model import Http2Config
from gateway.downstream import h2codec, h2fields

REQUEST = [(":method", "GET"), (":path", "/x"), (":scheme", "http"), (":authority", "a")]


def _pair(
    settings: Http2Config | None = None, client_settings: dict[int, int] | None = None
) -> tuple[h2codec.H2Codec, h2.connection.H2Connection]:
    codec = h2codec.H2Codec(settings or Http2Config())
    codec.start(1 << 20)
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    client.initiate_connection()
    if client_settings:
        client.update_settings(client_settings)
    codec.receive(client.data_to_send())
    client.receive_data(codec.outgoing())
    codec.receive(client.data_to_send())
    return codec, client


def _response(codec: h2codec.H2Codec, stream_id: int, index: int) -> None:
    fields = [
        (b":status", b"200"),
        (b"content-type", b"application/json"),
        (b"x-request-id", b"%032x" % index),
        (b"content-length", b"2"),
    ]
    codec.send_headers(stream_id, fields, end=False)
    codec.send_data(stream_id, b"{}", end=True)


@pytest.mark.parametrize("table_size", [None, 0, 256, 65536])
def test_responses_decode_whatever_table_size_the_client_allows(table_size: int | None) -> None:
    settings = None if table_size is None else {int(SettingCodes.HEADER_TABLE_SIZE): table_size}
    codec, client = _pair(client_settings=settings)
    seen: list[tuple[int, str]] = []
    for index in range(50):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, REQUEST, end_stream=True)
        events = codec.receive(client.data_to_send())
        assert isinstance(events[0], h2codec.RequestHeaders)
        assert events[0].headers[:2] == [(b":method", b"GET"), (b":path", b"/x")]
        _response(codec, stream_id, index)
        for event in client.receive_data(codec.outgoing()):
            if isinstance(event, h2.events.ResponseReceived):
                fields = {str(name): str(value) for name, value in event.headers or []}
                seen.append((event.stream_id, fields["x-request-id"]))
    assert seen == [(1 + 2 * i, f"{i:032x}") for i in range(50)]
    # The encoder indexes nothing: the client's decoding table stays empty.
    assert len(client.decoder.header_table.dynamic_entries) == 0


def test_a_frame_above_max_frame_size_is_refused_from_its_header() -> None:
    codec, _ = _pair()
    # Only the 9-byte header of a 1 MiB DATA frame: h2 alone would wait for the megabyte.
    header = (1 << 20).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big")
    with pytest.raises(h2codec.H2ConnectionError) as raised:
        codec.receive(header)
    assert raised.value.code == h2codec.FRAME_SIZE_ERROR
    assert b"\x07" in codec.outgoing()  # a GOAWAY frame is queued


def test_a_header_block_growing_past_the_limit_is_refused_before_it_ends() -> None:
    codec, _ = _pair(Http2Config(max_header_list_size=4096))
    start = HeadersFrame(1)
    start.data = b"\x00" * 1000  # never decoded: the block never ends
    codec.receive(start.serialize())
    more = ContinuationFrame(1)
    more.data = b"\x00" * 1000
    for _ in range(2):
        codec.receive(more.serialize())  # 3,000 bytes: still under the limit
    with pytest.raises(h2codec.H2ConnectionError) as raised:
        codec.receive(more.serialize() * 2)
    assert raised.value.code == h2codec.ENHANCE_YOUR_CALM


def test_a_graceful_goaway_leaves_open_streams_answerable() -> None:
    codec, client = _pair()
    client.send_headers(1, REQUEST, end_stream=True)
    codec.receive(client.data_to_send())
    codec.goaway(h2codec.NO_ERROR)
    _response(codec, 1, 7)
    data = codec.outgoing()
    # The GOAWAY (type 7, last stream 1, NO_ERROR) and then the response's frames: h2 itself
    # would refuse to send them once it had sent a GOAWAY.
    assert b"\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00" in data
    assert data.count(b"\x01\x04\x00\x00\x00\x01") + data.count(b"\x01\x05\x00\x00\x00\x01") == 1


BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a")]


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        (BASE, None),
        ([*BASE, (b"accept", b"*/*"), (b"te", b"trailers"), (b"host", b"a")], None),
        ([*BASE, (b"content-length", b"12"), (b"content-length", b"12")], None),
        ([(b":method", b"CONNECT"), (b":authority", b"a:443")], None),
        (BASE[1:], "missing :method"),
        ([BASE[0], BASE[1], BASE[3]], "missing :scheme or :path"),
        ([BASE[0], BASE[1], (b":path", b""), BASE[3]], "missing :scheme or :path"),
        (BASE[:3], "missing :authority and Host"),
        ([*BASE[:3], (b"host", b"a")], None),
        ([*BASE, (b"host", b"b")], ":authority and Host differ"),
        ([*BASE, (b"host", b"a"), (b"host", b"a")], "more than one Host"),
        ([*BASE, (b":path", b"/x")], "pseudo-header b':path' repeated"),
        ([BASE[0], (b"x", b"1"), *BASE[1:]], "pseudo-header b':scheme' after a regular field"),
        ([*BASE, (b":status", b"200")], "pseudo-header b':status' not allowed in a request"),
        (
            [*BASE, (b":protocol", b"websocket")],
            "pseudo-header b':protocol' not allowed in a request",
        ),
        ([*BASE, (b"Accept", b"x")], "invalid field name b'Accept'"),
        ([*BASE, (b"a b", b"x")], "invalid field name b'a b'"),
        ([*BASE, (b"x:y", b"x")], "invalid field name b'x:y'"),
        ([*BASE, (b"", b"x")], "invalid field name b''"),
        ([*BASE, (b"x", b"a\x00b")], "invalid value in b'x'"),
        ([*BASE, (b"x", b"a\rb")], "invalid value in b'x'"),
        ([*BASE, (b"x", b" a")], "invalid value in b'x'"),
        ([*BASE, (b"x", b"a\t")], "invalid value in b'x'"),
        ([*BASE, (b"connection", b"close")], "connection-specific field b'connection'"),
        (
            [*BASE, (b"transfer-encoding", b"chunked")],
            "connection-specific field b'transfer-encoding'",
        ),
        ([*BASE, (b"upgrade", b"h2c")], "connection-specific field b'upgrade'"),
        ([*BASE, (b"te", b"gzip")], "TE other than trailers"),
        ([*BASE, (b"content-length", b"+5")], "invalid Content-Length"),
        ([*BASE, (b"content-length", b"1"), (b"content-length", b"2")], "invalid Content-Length"),
        (
            [(b":method", b"CONNECT"), (b":path", b"/"), (b":authority", b"a")],
            "CONNECT with :scheme or :path",
        ),
    ],
)
def test_request_problems(headers: list[tuple[bytes, bytes]], problem: str | None) -> None:
    assert h2fields.request_problem(headers) == problem


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ([(b"x-checksum", b"abc")], None),
        ([(b":path", b"/")], "invalid trailer field name b':path'"),
        ([(b"X", b"1")], "invalid trailer field name b'X'"),
        ([(b"x", b"1\n")], "invalid value in trailer b'x'"),
    ],
)
def test_trailer_problems(headers: list[tuple[bytes, bytes]], problem: str | None) -> None:
    assert h2fields.trailer_problem(headers) == problem
