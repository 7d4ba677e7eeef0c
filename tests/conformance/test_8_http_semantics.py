"""h2spec `http2/8.1`: HTTP request framing and header rules (RFC 9113 §8.1-§8.3).

A malformed request (RFC 9113 §8.1.1) is a stream error PROTOCOL_ERROR; h2spec also passes a
connection error PROTOCOL_ERROR, and so do these cases (h2 ends the connection for all of
them).
"""

from __future__ import annotations

import json

import pytest
from hyperframe.frame import DataFrame

from tests.conformance.h2client import (
    ErrorCodes,
    Fields,
    RawH2Client,
    request_fields,
)

PROTOCOL_ERROR = ErrorCodes.PROTOCOL_ERROR

_GET = request_fields()
_POST = request_fields("POST")


def _without(name: str) -> list[tuple[str, str]]:
    return [(key, value) for key, value in _GET if key != name]


# Header lists that make a request malformed (hpack-encoded as given: no normalisation).
_MALFORMED: list[object] = [
    # 8.1.2 HTTP Header Fields
    pytest.param([*_GET, ("X-Upper", "a")], id="8_1_2_1-uppercase_field_name"),
    # 8.1.2.1 Pseudo-Header Fields
    pytest.param([*_GET, (":foo", "bar")], id="8_1_2_1_1-unknown_pseudo_header"),
    pytest.param([*_GET, (":status", "200")], id="8_1_2_1_2-response_pseudo_header"),
    pytest.param([_GET[0], ("x-a", "1"), *_GET[1:]], id="8_1_2_1_4-pseudo_after_regular"),
    # 8.1.2.2 Connection-Specific Header Fields
    pytest.param([*_GET, ("connection", "keep-alive")], id="8_1_2_2_1-connection"),
    pytest.param([*_GET, ("keep-alive", "timeout=5")], id="8_1_2_2_1-keep_alive"),
    pytest.param([*_GET, ("proxy-connection", "close")], id="8_1_2_2_1-proxy_connection"),
    pytest.param([*_GET, ("transfer-encoding", "chunked")], id="8_1_2_2_1-transfer_encoding"),
    pytest.param([*_GET, ("upgrade", "websocket")], id="8_1_2_2_1-upgrade"),
    pytest.param([*_GET, ("te", "gzip")], id="8_1_2_2_2-te_other_than_trailers"),
    # 8.1.2.3 Request Pseudo-Header Fields
    pytest.param([(k, "" if k == ":path" else v) for k, v in _GET], id="8_1_2_3_1-empty_path"),
    pytest.param(_without(":method"), id="8_1_2_3_2-no_method"),
    pytest.param(_without(":scheme"), id="8_1_2_3_3-no_scheme"),
    pytest.param(_without(":path"), id="8_1_2_3_4-no_path"),
    pytest.param([*_GET, (":method", "GET")], id="8_1_2_3_5-duplicated_method"),
    pytest.param([*_GET, (":scheme", "http")], id="8_1_2_3_6-duplicated_scheme"),
    pytest.param([*_GET, (":path", "/")], id="8_1_2_3_7-duplicated_path"),
    # RFC 9113 §8.2.1: field names and values (CR, LF and NUL never; no leading or trailing
    # whitespace in a value). A gateway forwarding these to HTTP/1.1 would let the client
    # split the upstream request.
    pytest.param([*_GET, ("x-split", "a\r\nx-injected: 1")], id="8_2_1-crlf_in_value"),
    pytest.param([*_GET, ("x-nul", "a\x00b")], id="8_2_1-nul_in_value"),
    pytest.param([*_GET, ("x-bad name", "a")], id="8_2_1-space_in_name"),
    pytest.param([*_GET, ("x-colon:name", "a")], id="8_2_1-colon_in_name"),
    pytest.param([*_GET, ("x-padded", " a ")], id="8_2_1-whitespace_around_value"),
    # RFC 9113 §8.3.1: a Host that names another entity than :authority.
    pytest.param([*_GET, ("host", "other.test")], id="8_1_2_3-host_differs_from_authority"),
]


@pytest.mark.parametrize("fields", _MALFORMED)
async def test_8_1_malformed_request_is_protocol_error(client: RawH2Client, fields: Fields) -> None:
    """RFC 9113 §8.2, §8.3: the request is malformed: a stream error PROTOCOL_ERROR (or a
    connection error), and no response."""
    client.send(client.headers(1, fields))
    await client.expect_stream_error(1, PROTOCOL_ERROR)


async def test_8_1_1_second_headers_without_end_stream_is_protocol_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §8.1: a HEADERS after the request's header section that is not trailers
    (no END_STREAM) is malformed: PROTOCOL_ERROR."""
    client.send(
        client.headers(1, _POST, end_stream=False),
        DataFrame(1, b"body"),
        client.headers(1, [("x-more", "1")], end_stream=False),
    )
    await client.expect_stream_error(1, PROTOCOL_ERROR)


async def test_8_1_2_1_3_pseudo_header_in_trailers_is_protocol_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §8.1: trailers must not carry pseudo-header fields."""
    client.send(
        client.headers(1, _POST, end_stream=False),
        DataFrame(1, b"body"),
        client.headers(1, [(":method", "POST")]),
    )
    await client.expect_stream_error(1, PROTOCOL_ERROR)


@pytest.mark.parametrize(
    ("declared", "frames"),
    [
        pytest.param("1", [b"test"], id="8_1_2_6_1-one_data_frame"),
        pytest.param("1", [b"te", b"st"], id="8_1_2_6_2-several_data_frames"),
        pytest.param("10", [b"test"], id="8_1_2_6-fewer_octets_than_declared"),
    ],
)
async def test_8_1_2_6_content_length_mismatch_is_protocol_error(
    client: RawH2Client, declared: str, frames: list[bytes]
) -> None:
    """RFC 9113 §8.1.1: a content-length that does not equal the DATA payload length is
    malformed: PROTOCOL_ERROR."""
    fields = request_fields("POST", extra=[("content-length", declared)])
    data = [DataFrame(1, chunk) for chunk in frames]
    data[-1].flags.add("END_STREAM")
    client.send(client.headers(1, fields, end_stream=False), *data)
    await client.expect_stream_error(1, PROTOCOL_ERROR)


async def test_8_1_2_6_content_length_with_end_stream_on_headers_is_protocol_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §8.1.1: content-length 4 on a request that HEADERS ended (no DATA) is
    malformed; forwarded, it would reach the upstream as a request with no body."""
    client.send(client.headers(1, request_fields("POST", extra=[("content-length", "4")])))
    await client.expect_stream_error(1, PROTOCOL_ERROR)
    client.send(client.headers(3))
    assert (await client.response(3)).status == 200


async def test_8_1_2_6_content_length_with_trailers_is_checked(client: RawH2Client) -> None:
    """RFC 9113 §8.1.1: the same when trailers end the request: 10 declared, 4 sent."""
    client.send(
        client.headers(
            1, request_fields("POST", extra=[("content-length", "10")]), end_stream=False
        ),
        DataFrame(1, b"abcd"),
        client.headers(1, [("x-trailer", "1")]),
    )
    await client.expect_stream_error(1, PROTOCOL_ERROR)


@pytest.mark.parametrize(
    ("declared", "frames"),
    [
        pytest.param("0", [], id="zero_no_data"),
        pytest.param("4", [b"ab", b"cd"], id="equal_with_trailers"),
    ],
)
async def test_8_1_2_6_matching_content_length_is_forwarded(
    client: RawH2Client, declared: str, frames: list[bytes]
) -> None:
    """RFC 9113 §8.1.1: a content-length equal to the DATA sent (none, or with trailers)."""
    fields = request_fields("POST", extra=[("content-length", declared)])
    if frames:
        client.send(
            client.headers(1, fields, end_stream=False),
            *(DataFrame(1, chunk) for chunk in frames),
            client.headers(1, [("x-trailer", "1")]),
        )
    else:
        client.send(client.headers(1, fields))
    response = await client.response(1)
    assert response.status == 200
    assert json.loads(response.body)["body"] == "".join(c.decode() for c in frames)


@pytest.mark.parametrize(
    ("extra", "name", "upstream_sees"),
    [
        # TE is hop-by-hop: the gateway ends it (RFC 9110 §10.1.4).
        pytest.param([("te", "trailers")], "te", [], id="8_1_2_2-te_trailers"),
        pytest.param(
            [("cookie", "a=1"), ("cookie", "b=2")],
            "cookie",
            ["a=1; b=2"],
            id="8_1_2_5-split_cookies",
        ),
        pytest.param(
            [("host", "example.test")],
            "host",
            ["example.test"],
            id="8_1_2_3-host_equal_to_authority",
        ),
    ],
)
async def test_8_1_2_valid_fields_are_forwarded(
    client: RawH2Client, extra: Fields, name: str, upstream_sees: list[str]
) -> None:
    """RFC 9113 §8.2.2 (TE: trailers is allowed), §8.2.3 (cookie crumbs are joined with
    "; " for HTTP/1.1), §8.3.1 (Host may accompany an equal :authority): a 200, and the
    upstream's request carries the field as HTTP/1.1 has it."""
    client.send(client.headers(1, request_fields(extra=extra)))
    response = await client.response(1)
    assert response.status == 200
    received = json.loads(response.body)["headers"]
    assert [value for key, value in received if key.lower() == name] == upstream_sees
