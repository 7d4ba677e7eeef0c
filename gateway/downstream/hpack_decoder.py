"""The HPACK decoder for request header blocks (RFC 7541), compiled: what h2 calls to decode.

hpack's decoder is pure Python and took 12 µs for a request of seven indexed fields (about a
tenth of the worker's CPU per HTTP/2 request); this one does the same in compiled code. Every
rule a decoder must enforce is here, each a `HpackDecodingError` (the codec makes it the
connection error COMPRESSION_ERROR, RFC 9113 §4.3):

* integers (§5.1) longer than 4 continuation octets (values beyond 2^28), and truncated ones;
* string literals (§5.2) longer than the block; Huffman strings with the EOS symbol, with
  padding longer than 7 bits or not made of EOS's most significant bits (all ones);
* index 0, or an index beyond the static and dynamic tables (§2.3.3);
* a dynamic table size update after a field (§4.2) or above SETTINGS_HEADER_TABLE_SIZE
  (`max_allowed_table_size`, §6.3).

A header list whose decoded size (§4.1's 32 octets per field plus name and value, as
SETTINGS_MAX_HEADER_LIST_SIZE counts it) passes `max_header_list_size` stops decoding at that
field (`HeaderListTooLarge`): the HPACK bomb, a few KiB of indexed references to one large
entry, never grows beyond the limit.
"""

from __future__ import annotations

from typing import Final

from gateway.downstream.hpack_tables import EOS, HUFFMAN_CODE_LENGTHS, STATIC_TABLE

# §4.1: an entry's size is its name and value plus 32 octets.
_ENTRY_OVERHEAD: Final = 32
_STATIC_COUNT: Final = len(STATIC_TABLE)
# §5.1 leaves the limit to the implementation: 4 continuation octets (28 bits) are more than
# any table size, index or string length the gateway accepts.
_MAX_INTEGER_SHIFT: Final = 28
_MAX_CODE_LENGTH: Final = 30


class HpackDecodingError(Exception):
    """The block breaks RFC 7541."""


class HeaderListTooLarge(Exception):
    """The decoded header list passed ``max_header_list_size``."""


def _canonical_code() -> tuple[list[int], list[int], list[int], list[int]]:
    """Appendix B's code as canonical-decoding tables: per code length, the first code, the
    number of codes and the offset of their symbols in the symbols-by-code list."""
    symbols = sorted(range(len(HUFFMAN_CODE_LENGTHS)), key=lambda s: (HUFFMAN_CODE_LENGTHS[s], s))
    count = [0] * (_MAX_CODE_LENGTH + 1)
    for length in HUFFMAN_CODE_LENGTHS:
        count[length] += 1
    first = [0] * (_MAX_CODE_LENGTH + 1)
    offset = [0] * (_MAX_CODE_LENGTH + 1)
    code = 0
    index = 0
    for length in range(1, _MAX_CODE_LENGTH + 1):
        code = (code + count[length - 1]) << 1 if length > 1 else 0
        first[length] = code
        offset[length] = index
        index += count[length]
    return first, count, offset, symbols


_FIRST, _COUNT, _OFFSET, _SYMBOLS = _canonical_code()


def huffman_decode(data: bytes) -> bytes:
    """RFC 7541 §5.2 and Appendix B: the octets a Huffman-coded string stands for."""
    out = bytearray()
    code = 0
    length = 0
    for octet in data:
        bit = 7
        while bit >= 0:
            code = (code << 1) | ((octet >> bit) & 1)
            length += 1
            bit -= 1
            rank = code - _FIRST[length]
            if 0 <= rank < _COUNT[length]:
                symbol = _SYMBOLS[_OFFSET[length] + rank]
                if symbol == EOS:
                    raise HpackDecodingError("Huffman string contains EOS")
                out.append(symbol)
                code = 0
                length = 0
            elif length >= _MAX_CODE_LENGTH:
                raise HpackDecodingError("invalid Huffman code")
    # The padding: fewer than 8 bits, all ones (EOS's first bits).
    if length > 7 or code != (1 << length) - 1:
        raise HpackDecodingError("invalid Huffman padding")
    return bytes(out)


class RequestDecoder:
    """One connection's request decoding context: its dynamic table and limits."""

    __slots__ = ("_entries", "_max_size", "_size", "max_allowed_table_size", "max_header_list_size")

    def __init__(
        self, max_header_list_size: int = 65536, max_allowed_table_size: int = 4096
    ) -> None:
        # §2.3.2: the newest entry last (index 62 is _entries[-1]).
        self._entries: list[tuple[bytes, bytes]] = []
        self._size = 0
        self._max_size = max_allowed_table_size
        # SETTINGS_HEADER_TABLE_SIZE, the most an encoder's size update may ask (§6.3).
        self.max_allowed_table_size = max_allowed_table_size
        self.max_header_list_size = max_header_list_size

    @property
    def header_table_size(self) -> int:
        """The dynamic table's current maximum size (§4.2)."""
        return self._max_size

    @property
    def table_entries(self) -> int:
        return len(self._entries)

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The header list of one complete block, in order; names and values as sent."""
        headers: list[tuple[bytes, bytes]] = []
        size = 0
        position = 0
        end = len(data)
        while position < end:
            first = data[position]
            if first & 0x80:  # §6.1: an indexed field
                index, position = _integer(data, position, 7)
                field = self._field(index)
            elif first & 0x40:  # §6.2.1: a literal, added to the table
                field, position = self._literal(data, position, 6)
                self._add(field)
            elif first & 0x20:  # §6.3: a dynamic table size update
                if headers:
                    raise HpackDecodingError("table size update after a field (§4.2)")
                new_size, position = _integer(data, position, 5)
                if new_size > self.max_allowed_table_size:
                    raise HpackDecodingError("table size update above SETTINGS_HEADER_TABLE_SIZE")
                self._max_size = new_size
                self._evict(0)
                continue
            else:  # §6.2.2 without indexing, §6.2.3 never indexed
                field, position = self._literal(data, position, 4)
            headers.append(field)
            size += len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
            if size > self.max_header_list_size:
                raise HeaderListTooLarge(f"header list above {self.max_header_list_size} octets")
        if self._max_size > self.max_allowed_table_size:
            # The client lowered the setting and the encoder did not follow (§4.2).
            raise HpackDecodingError("table size above SETTINGS_HEADER_TABLE_SIZE")
        return headers

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if index <= 0:
            raise HpackDecodingError("index 0")
        if index <= _STATIC_COUNT:
            return STATIC_TABLE[index - 1]
        dynamic = index - _STATIC_COUNT
        entries = self._entries
        if dynamic > len(entries):
            raise HpackDecodingError(f"index {index} beyond the tables")
        return entries[len(entries) - dynamic]

    def _literal(
        self, data: bytes, position: int, prefix_bits: int
    ) -> tuple[tuple[bytes, bytes], int]:
        index, position = _integer(data, position, prefix_bits)
        if index:
            name = self._field(index)[0]
        else:
            name, position = _string(data, position)
        value, position = _string(data, position)
        return (name, value), position

    def _add(self, field: tuple[bytes, bytes]) -> None:
        """§4.4: evict the oldest entries until the new one fits; one larger than the table
        empties it and is not added."""
        entry_size = len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
        if entry_size > self._max_size:
            self._entries.clear()
            self._size = 0
            return
        self._evict(entry_size)
        self._entries.append(field)
        self._size += entry_size

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until ``room`` more octets fit (§4.3)."""
        entries = self._entries
        dropped = 0
        while self._size + room > self._max_size and dropped < len(entries):
            name, value = entries[dropped]
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD
            dropped += 1
        if dropped:
            del entries[:dropped]


def _integer(data: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
    """§5.1: the integer at ``position`` with a ``prefix_bits`` prefix, and where it ends."""
    limit = (1 << prefix_bits) - 1
    value = data[position] & limit
    position += 1
    if value < limit:
        return value, position
    shift = 0
    end = len(data)
    while True:
        if position >= end:
            raise HpackDecodingError("truncated integer")
        octet = data[position]
        position += 1
        value += (octet & 0x7F) << shift
        if octet < 0x80:
            return value, position
        shift += 7
        if shift > _MAX_INTEGER_SHIFT:
            raise HpackDecodingError("integer too long")


def _string(data: bytes, position: int) -> tuple[bytes, int]:
    """§5.2: the string literal at ``position`` (Huffman-decoded if H is set), and its end."""
    if position >= len(data):
        raise HpackDecodingError("truncated block")
    huffman = data[position] & 0x80
    length, position = _integer(data, position, 7)
    end = position + length
    if end > len(data):
        raise HpackDecodingError("string literal beyond the block")
    raw = data[position:end]
    return (huffman_decode(raw) if huffman else raw), end
