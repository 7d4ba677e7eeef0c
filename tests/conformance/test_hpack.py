"""h2spec `hpack`: header block decoding errors (RFC 7541), each a connection error
COMPRESSION_ERROR (RFC 9113 §4.3), and what must still decode."""

from __future__ import annotations

import json

import pytest
from hyperframe.frame import HeadersFrame, SettingsFrame

from tests.conformance.h2client import (
    GET_BLOCK,
    ErrorCodes,
    RawH2Client,
    SettingCodes,
    hpack_int,
    indexed,
    literal,
    table_size_update,
)

# 61 static entries (RFC 7541 Appendix A) and an empty dynamic table: 62 is past the end.
_FIRST_INVALID = 62


def _huffman_field(coded: bytes) -> bytes:
    """A literal field `x-test` whose value is ``coded`` as a Huffman string (RFC 7541 §5.2),
    octets given as they are (the cases below are strings no encoder would produce)."""
    return literal(b"x-test", b"")[:-1] + hpack_int(len(coded), 7, 0x80) + coded


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(GET_BLOCK + indexed(_FIRST_INVALID), id="2_3_3_1-indexed_past_the_tables"),
        pytest.param(
            GET_BLOCK + literal(_FIRST_INVALID, b"value", "incremental"),
            id="2_3_3_2-literal_name_index_past_the_tables",
        ),
        pytest.param(GET_BLOCK + table_size_update(0), id="4_2_1-table_size_update_at_end"),
        # RFC 7541 §5.2: "a padding strictly longer than 7 bits": 'a' (00011), then 19 ones.
        pytest.param(
            GET_BLOCK + _huffman_field(b"\x1f\xff\xff"), id="5_2_1-huffman_padding_over_7_bits"
        ),
        # RFC 7541 §5.2: a padding not made of the most significant bits of EOS: 'a', 000.
        pytest.param(
            GET_BLOCK + _huffman_field(b"\x18"), id="5_2_2-huffman_padding_not_eos_prefix"
        ),
        # RFC 7541 §5.2: the EOS symbol (30 ones) inside a string.
        pytest.param(GET_BLOCK + _huffman_field(b"\xff" * 4), id="5_2_3-huffman_eos_symbol"),
        pytest.param(GET_BLOCK + indexed(0), id="6_1_1-index_0"),
        pytest.param(table_size_update(4097) + GET_BLOCK, id="6_3_1-table_size_above_setting"),
        pytest.param(GET_BLOCK + b"\x40", id="4_3_1-truncated_literal"),
    ],
)
async def test_hpack_decoding_error_is_compression_error(client: RawH2Client, block: bytes) -> None:
    """RFC 7541 §2.3.3, §4.2, §5.2, §6.1, §6.3: the block cannot be decoded: the connection
    ends with COMPRESSION_ERROR (RFC 9113 §4.3: the decoding context is lost)."""
    client.send(client.headers(1, block=block))
    await client.expect_connection_error(ErrorCodes.COMPRESSION_ERROR)


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


async def test_hpack_dynamic_table_eviction(client: RawH2Client) -> None:
    """RFC 7541 §4.4: entries beyond the table size are evicted oldest first; after a
    size update to 0 the table is empty, so index 62 is invalid: COMPRESSION_ERROR."""
    client.send(client.headers(1, block=GET_BLOCK + literal(b"x-a", b"1", "incremental")))
    assert (await client.response(1)).status == 200
    client.send(client.headers(3, block=table_size_update(0) + GET_BLOCK + indexed(62)))
    await client.expect_connection_error(ErrorCodes.COMPRESSION_ERROR)


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


async def test_hpack_bomb_is_enhance_your_calm(client: RawH2Client) -> None:
    """RFC 9113 §10.5.1, RFC 7541 §7.3: a small block that decodes to more than
    SETTINGS_MAX_HEADER_LIST_SIZE (one 4000-octet entry referenced 20 times, 80 KB decoded
    from 4 KB) is refused before it is built: ENHANCE_YOUR_CALM, not a decoding error."""
    limit = client.server_settings[SettingCodes.MAX_HEADER_LIST_SIZE]
    assert limit == 64 * 1024
    block = GET_BLOCK + literal(b"x-bomb", b"b" * 4000, "incremental") + indexed(62) * 20
    assert len(block) < client.server_settings[SettingCodes.MAX_FRAME_SIZE]
    client.send(client.headers(1, block=block))
    await client.expect_connection_error(ErrorCodes.ENHANCE_YOUR_CALM)
