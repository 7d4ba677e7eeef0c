"""The response header block encoder (RFC 7541), against the RFC's examples and hpack's decoder."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.downstream.hpack_encoder import ResponseEncoder
from gateway.downstream.hpack_tables import STATIC_TABLE


@pytest.mark.parametrize(
    ("fields", "block"),
    [
        # RFC 7541 C.2.2: a literal without indexing whose name is in the static table.
        ([(b":path", b"/sample/path")], bytes.fromhex("040c2f73616d706c652f70617468")),
        # C.2.4: an indexed field.
        ([(b":method", b"GET")], b"\x82"),
        ([(b":status", b"200")], b"\x88"),
        ([(b":status", b"500")], b"\x8e"),
        # A status the table lacks: its name indexed (8), the value literal.
        ([(b":status", b"201")], b"\x08\x03201"),
        # A name the table lacks: literal name and value, H bits clear (no Huffman, §5.2).
        ([(b"x-a", b"1")], b"\x00\x03x-a\x011"),
        # An empty value is encoded from the name's index, not as the (name, "") entry.
        ([(b"age", b"")], b"\x0f\x06\x00"),
        # Index 15 and up no longer fit a 4-bit prefix (§5.1): 15 + 0, then 15 + 45 (via = 60).
        ([(b"accept-charset", b"x")], b"\x0f\x00\x01x"),
        ([(b"via", b"2 gateway")], b"\x0f\x2d\x092 gateway"),
        # A 127-byte value: the 7-bit prefix is full, the rest (0) follows.
        ([(b"etag", b"e" * 127)], b"\x0f\x13\x7f\x00" + b"e" * 127),
        ([(b"etag", b"e" * 300)], b"\x0f\x13\x7f\xad\x01" + b"e" * 300),
    ],
)
def test_blocks(fields: list[tuple[bytes, bytes]], block: bytes) -> None:
    assert ResponseEncoder().encode(fields) == block


def test_a_changed_table_size_is_answered_by_one_size_update_to_zero() -> None:
    encoder = ResponseEncoder()
    encoder.header_table_size = 256
    encoder.header_table_size = 0
    encoder.header_table_size = 1024
    # RFC 7541 §4.2: the smallest size since the last block would do; the table is empty
    # and stays empty, so 0 is valid for any of them. Once, in the next block only.
    assert encoder.encode([(b":status", b"200")]) == b"\x20\x88"
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
    assert encoder.header_table_size == 1024


def test_the_static_table_is_rfc_7541s() -> None:
    assert len(STATIC_TABLE) == 61
    assert STATIC_TABLE[0] == (b":authority", b"")
    assert STATIC_TABLE[7] == (b":status", b"200")
    assert STATIC_TABLE[60] == (b"www-authenticate", b"")
    assert STATIC_TABLE == hpack.table.HeaderTable.STATIC_TABLE


_NAMES = st.one_of(
    st.sampled_from([name for name, _ in STATIC_TABLE]),
    st.binary(min_size=1, max_size=40),
)
_VALUES = st.one_of(
    st.sampled_from([value for _, value in STATIC_TABLE]),
    st.binary(max_size=400),
)


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=20), st.booleans())
def test_hpacks_decoder_reads_back_every_block(
    fields: list[tuple[bytes, bytes]], resized: bool
) -> None:
    encoder = ResponseEncoder()
    decoder = hpack.Decoder()
    if resized:
        encoder.header_table_size = 0
        decoder.max_allowed_table_size = 0
    for _ in range(2):
        decoded = decoder.decode(encoder.encode(fields), raw=True)
        assert [(name, value) for name, value in decoded] == fields
    # Nothing was ever indexed.
    assert len(decoder.header_table.dynamic_entries) == 0
