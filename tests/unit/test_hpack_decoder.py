"""The request header block decoder (RFC 7541): the RFC's examples, its error rules, and
hypothesis against hpack's encoder."""

from __future__ import annotations

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given
from hypothesis import strategies as st

from gateway.downstream.hpack_decoder import (
    HeaderListTooLarge,
    HpackDecodingError,
    RequestDecoder,
    huffman_decode,
)
from gateway.downstream.hpack_tables import HUFFMAN_CODE_LENGTHS

_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)

_FIRST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")]
_HOST = (b":authority", b"www.example.com")
# RFC 7541 C.3 (without Huffman) and C.4 (with): three requests on one connection, and the
# dynamic table's size after each.
_REQUESTS = [
    ([*_FIRST, _HOST], 57),
    ([*_FIRST, _HOST, (b"cache-control", b"no-cache")], 110),
    (
        [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", b"/index.html"),
            _HOST,
            (b"custom-key", b"custom-value"),
        ],
        164,
    ),
]
_C3 = [
    "828684410f7777772e6578616d706c652e636f6d",
    "828684be58086e6f2d6361636865",
    "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
]
_C4 = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
]


@pytest.mark.parametrize("blocks", [_C3, _C4], ids=["C.3", "C.4"])
def test_rfc_7541_request_examples(blocks: list[str]) -> None:
    decoder = RequestDecoder()
    for block, (fields, table_size) in zip(blocks, _REQUESTS, strict=True):
        assert decoder.decode(bytes.fromhex(block)) == fields
        entries = decoder._entries
        assert sum(len(name) + len(value) + 32 for name, value in entries) == table_size


def test_the_huffman_code_lengths_are_rfc_7541s() -> None:
    assert list(HUFFMAN_CODE_LENGTHS) == list(REQUEST_CODES_LENGTH)


@given(st.binary(max_size=200))
def test_huffman_strings_decode_to_what_was_encoded(data: bytes) -> None:
    assert huffman_decode(_HUFFMAN.encode(data)) == data


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ("80", "index 0"),
        ("be", "beyond the tables"),  # 62: the dynamic table is empty
        ("ff00", "beyond the tables"),  # 127
        ("8220", "after a field"),  # a size update at the end of the block (§4.2)
        ("3fe21f", "above SETTINGS_HEADER_TABLE_SIZE"),  # 31 + 98 + (31 << 7) = 4097
        ("ff", "truncated integer"),
        ("ff808080808001", "integer too long"),
        ("0f", "truncated"),  # an indexed name (15 + ...) cut short
        ("04", "truncated block"),  # :path literal without its value
        ("0405aaaa", "beyond the block"),
        # Huffman: EOS coded in a string (30 one bits, then padding).
        ("0481fffffffc", "Huffman"),
        ("0482ffffffff", "Huffman"),
        # 'a' (00011) then 11 bits of padding: more than 7.
        ("04821fff", "padding"),
        # 'a' (00011) then padding 000: not EOS's first bits.
        ("048118", "padding"),
    ],
)
def test_malformed_blocks(block: str, problem: str) -> None:
    with pytest.raises(HpackDecodingError, match=problem):
        RequestDecoder().decode(bytes.fromhex(block))


def test_a_size_update_first_shrinks_and_evicts() -> None:
    decoder = RequestDecoder()
    decoder.decode(bytes.fromhex(_C3[0]))
    assert decoder.table_entries == 1
    # §6.3: a size update to 0 at the start empties the table; the index is then unknown.
    with pytest.raises(HpackDecodingError, match="beyond"):
        decoder.decode(bytes.fromhex("20be"))
    assert decoder.table_entries == 0
    assert decoder.header_table_size == 0


def test_an_entry_larger_than_the_table_empties_it() -> None:
    decoder = RequestDecoder(max_allowed_table_size=100)
    decoder.decode(bytes.fromhex(_C3[0]))
    big = hpack.Encoder().encode([(b"x-big", b"v" * 100)])  # added with indexing (0x40)
    assert decoder.decode(big) == [(b"x-big", b"v" * 100)]
    assert decoder.table_entries == 0  # §4.4


def test_the_hpack_bomb_stops_at_the_header_list_limit() -> None:
    # One 4 KiB entry, then references to it: each reference adds 4 KiB to the list.
    encoder = hpack.Encoder()
    first = encoder.encode([(b"x-bomb", b"b" * 4000)])
    decoder = RequestDecoder(max_header_list_size=16 * 1024)
    decoder.decode(first)
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(b"\xbe" * 4096)


_NAMES = st.one_of(
    st.sampled_from([b":path", b"accept", b"cookie", b"user-agent", b"x-custom"]),
    st.binary(min_size=1, max_size=30),
)
_FIELDS = st.lists(st.tuples(_NAMES, st.binary(max_size=120)), max_size=12)


@given(st.lists(_FIELDS, min_size=1, max_size=6), st.booleans(), st.sampled_from([4096, 256, 0]))
def test_blocks_from_hpacks_encoder_decode_as_hpack_decodes_them(
    lists: list[list[tuple[bytes, bytes]]], huffman: bool, table_size: int
) -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = table_size  # a size update opens the first block
    reference = hpack.Decoder()
    decoder = RequestDecoder()
    for fields in lists:
        block = encoder.encode(fields, huffman=huffman)
        expected = [
            (bytes(name), bytes(value)) for name, value in reference.decode(block, raw=True)
        ]
        assert decoder.decode(block) == expected == fields
        assert decoder.table_entries == len(reference.header_table.dynamic_entries)
