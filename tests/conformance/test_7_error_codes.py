"""h2spec `http2/7`: unknown error codes carry no special meaning (RFC 9113 §7)."""

from __future__ import annotations

from hyperframe.frame import DataFrame, GoAwayFrame, RstStreamFrame

from tests.conformance.h2client import RawH2Client, request_fields

# Not defined by RFC 9113 §7 nor registered.
UNKNOWN_CODE = 0xFF


async def test_7_1_goaway_with_unknown_error_code(client: RawH2Client) -> None:
    """RFC 9113 §7: an unknown error code must not trigger special behaviour: the GOAWAY is
    taken as any GOAWAY, so the stream already open still completes."""
    client.send(
        client.headers(1, request_fields("POST"), end_stream=False),
        GoAwayFrame(0, last_stream_id=0, error_code=UNKNOWN_CODE),
        DataFrame(1, b"still here", flags=["END_STREAM"]),
    )
    response = await client.response(1)
    assert response.status == 200
    assert b"still here" in response.body


async def test_7_2_rst_stream_with_unknown_error_code(client: RawH2Client) -> None:
    """RFC 9113 §7: an RST_STREAM with an unknown code resets that stream only; the
    connection and the next stream carry on."""
    client.send(
        client.headers(1, request_fields("POST"), end_stream=False),
        RstStreamFrame(1, UNKNOWN_CODE),
    )
    await client.expect_alive()
    client.send(client.headers(3))
    assert (await client.response(3)).status == 200
