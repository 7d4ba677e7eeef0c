"""h2spec `hpack`: header block decoding errors (RFC 7541), each a connection error
COMPRESSION_ERROR (RFC 9113 §4.3), and what must still decode."""

from __future__ import annotations

import json

from hyperframe.frame import HeadersFrame, SettingsFrame

from tests.conformance.h2client import (
    GET_BLOCK,
    RawH2Client,
    SettingCodes,
    indexed,
    literal,
    table_size_update,
)


async def test_hpack_6_3_table_size_update_within_setting_is_accepted(
    client: RawH2Client,
) -> None:
    """RFC 7541 §6.3: a size update up to SETTINGS_HEADER_TABLE_SIZE (4096) is valid, and
    two updates may open a block (§4.2); entries added after it are used."""
    assert client.server_settings[SettingCodes.HEADER_TABLE_SIZE] == 4096
    block = (
        table_size_update(0)
        + table_size_update(4096)
        + GET_BLOCK
        + literal(b"x-h2spec", b"sized", "incremental")
    )
    client.send(client.headers(1, block=block))
    assert b"sized" in (await client.response(1)).body
    client.send(client.headers(3, block=GET_BLOCK + indexed(62)))
    body = json.loads((await client.response(3)).body)
    assert ["x-h2spec", "sized"] in [[k.lower(), v] for k, v in body["headers"]]


async def test_hpack_header_table_size_setting_from_client_applies_to_responses(
    client: RawH2Client,
) -> None:
    """RFC 7541 §4.2, RFC 9113 §6.5.2: the client's SETTINGS_HEADER_TABLE_SIZE bounds the
    gateway's encoder: after 0 its next block opens with a size update to 0 (§6.3), and no
    later block refers to a dynamic entry (the client's decoder, at 0, keeps none)."""
    client.send(SettingsFrame(0, {SettingCodes.HEADER_TABLE_SIZE: 0}))
    await client.expect_alive()
    client.decoder.max_allowed_table_size = 0
    for stream_id in (1, 3):
        client.send(client.headers(stream_id))
        assert (await client.response(stream_id)).status == 200
    blocks = [f.data for f in client.seen if isinstance(f, HeadersFrame)]
    assert len(blocks) == 2
    assert blocks[0][0] == 0x20  # RFC 7541 §6.3: 001 and a size of 0
    assert client.decoder.header_table_size == 0
