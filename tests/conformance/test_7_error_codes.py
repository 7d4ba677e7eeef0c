"""h2spec `http2/7`: unknown error codes carry no special meaning (RFC 9113 §7)."""

from __future__ import annotations

from hyperframe.frame import RstStreamFrame

from tests.conformance.h2client import RawH2Client, request_fields

# Not defined by RFC 9113 §7 nor registered.
UNKNOWN_CODE = 0xFF


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
