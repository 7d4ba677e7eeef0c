"""h2spec `http2/6.9.1` and `6.9.2`: flow-control windows, on the gateway's sending side (the
client's windows bound the response DATA) and on its receiving side (RFC 9113 §5.2, §6.9)."""

from __future__ import annotations

import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, SettingsFrame, WindowUpdateFrame

from tests.conformance.conftest import Connect, Launch
from tests.conformance.h2client import (
    ErrorCodes,
    RawH2Client,
    SettingCodes,
    request_fields,
)

# The echo upstream's answer to GET / is a few hundred octets: more than any window below.


async def _next_data(client: RawH2Client, stream_id: int) -> DataFrame:
    while True:
        frame = await client.read_frame()
        assert not isinstance(frame, GoAwayFrame), frame
        if isinstance(frame, DataFrame) and frame.stream_id == stream_id:
            return frame


async def test_6_9_1_1_initial_window_of_1_sends_1_octet(client: RawH2Client) -> None:
    """RFC 9113 §6.9.1: the sender must not exceed the receiver's window: with
    SETTINGS_INITIAL_WINDOW_SIZE 1 the response's first DATA frame is 1 octet, and the next
    comes only after a WINDOW_UPDATE (a PING answered in between shows none is sent before)."""
    client.send(SettingsFrame(0, {SettingCodes.INITIAL_WINDOW_SIZE: 1}), client.headers(1))
    first = await _next_data(client, 1)
    assert len(first.data) == 1
    before = await client.expect_alive()
    assert not [f for f in before if isinstance(f, DataFrame)], before
    client.send(WindowUpdateFrame(1, 2))
    second = await _next_data(client, 1)
    assert len(second.data) == 2


async def test_6_9_1_2_connection_window_overflow_is_flow_control_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §6.9.1: a WINDOW_UPDATE taking the connection window above 2^31-1 is a
    connection error FLOW_CONTROL_ERROR."""
    client.send(WindowUpdateFrame(0, 2**31 - 1), WindowUpdateFrame(0, 2**31 - 1))
    await client.expect_connection_error(ErrorCodes.FLOW_CONTROL_ERROR)


async def test_6_9_1_3_stream_window_overflow_is_flow_control_error(
    client: RawH2Client,
) -> None:
    """RFC 9113 §6.9.1: the same on a stream is a stream error FLOW_CONTROL_ERROR."""
    client.send(
        client.headers(1, request_fields("POST"), end_stream=False),
        WindowUpdateFrame(1, 2**31 - 1),
        WindowUpdateFrame(1, 2**31 - 1),
    )
    await client.expect_stream_error(1, ErrorCodes.FLOW_CONTROL_ERROR)


async def test_6_9_2_1_window_size_change_applies_to_open_streams(client: RawH2Client) -> None:
    """RFC 9113 §6.9.2: a new SETTINGS_INITIAL_WINDOW_SIZE adjusts the windows of streams
    already open: from 0 (nothing may be sent) to 1 (one octet)."""
    client.send(SettingsFrame(0, {SettingCodes.INITIAL_WINDOW_SIZE: 0}), client.headers(1))
    before = await client.expect_alive()
    assert not [f for f in before if isinstance(f, DataFrame)], before
    client.send(SettingsFrame(0, {SettingCodes.INITIAL_WINDOW_SIZE: 1}))
    assert len((await _next_data(client, 1)).data) == 1


async def test_6_9_2_2_window_may_become_negative(client: RawH2Client) -> None:
    """RFC 9113 §6.9.2: lowering SETTINGS_INITIAL_WINDOW_SIZE can make a stream's window
    negative; the sender then waits for WINDOW_UPDATEs to bring it above zero. Window 5, five
    octets sent, lowered to 3 (window -2), +3: exactly one more octet."""
    client.send(SettingsFrame(0, {SettingCodes.INITIAL_WINDOW_SIZE: 5}), client.headers(1))
    assert len((await _next_data(client, 1)).data) == 5
    client.send(SettingsFrame(0, {SettingCodes.INITIAL_WINDOW_SIZE: 3}))
    before = await client.expect_alive()
    assert not [f for f in before if isinstance(f, DataFrame)], before
    client.send(WindowUpdateFrame(1, 3))
    assert len((await _next_data(client, 1)).data) == 1


@pytest.mark.parametrize("value", [2**31, 2**32 - 1])
async def test_6_9_2_3_initial_window_above_maximum_is_flow_control_error(
    client: RawH2Client, value: int
) -> None:
    """RFC 9113 §6.5.2, §6.9.2: SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1 is a connection
    error FLOW_CONTROL_ERROR."""
    client.send(SettingsFrame(0, {SettingCodes.INITIAL_WINDOW_SIZE: value}))
    await client.expect_connection_error(ErrorCodes.FLOW_CONTROL_ERROR)


async def test_6_9_data_beyond_the_gateways_window_is_flow_control_error(
    launch: Launch, connect: Connect
) -> None:
    """RFC 9113 §6.9.1: the client must not send more than the window the gateway granted
    (SETTINGS_INITIAL_WINDOW_SIZE, 1 KiB here): a DATA frame one octet larger is a
    FLOW_CONTROL_ERROR (a stream or a connection error)."""
    gateway = await launch(initial_window_size=1024)
    client = await connect(port=gateway.addresses[0][1])
    assert client.server_settings[SettingCodes.INITIAL_WINDOW_SIZE] == 1024
    client.send(
        client.headers(1, request_fields("POST"), end_stream=False),
        DataFrame(1, b"x" * 1025, flags=["END_STREAM"]),
    )
    await client.expect_stream_error(1, ErrorCodes.FLOW_CONTROL_ERROR)
