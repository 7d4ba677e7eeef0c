"""The HPACK encoder for response header blocks (RFC 7541), compiled: what h2 calls to encode.

The gateway's response fields change with every response (X-Request-ID, Date), so indexing
them would churn a dynamic table for nothing; nginx's encoder does not index response fields
either. This encoder therefore uses only the static table (Appendix A) and literals without
indexing (§6.2.2), and never Huffman coding (§5.2 lets each string choose): a few more bytes
per response for a fraction of the CPU of hpack's general encoder (pure Python, with a linear
search of its dynamic table for every field).

It keeps the interface h2 4.x uses (`H2Codec` installs it as the connection's encoder):
``encode(headers)`` and the ``header_table_size`` that h2 sets when the client's
SETTINGS_HEADER_TABLE_SIZE changes. The gateway builds its fields valid and lower-case (h2's
outbound validation and normalisation are off); names and values are bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from gateway.downstream.hpack_tables import STATIC_TABLE


def _full_entries() -> dict[tuple[bytes, bytes], int]:
    # Only entries with a value: an empty value is encoded from the name's index (§6.2.2),
    # one byte more than an indexed field but the same for every name.
    return {entry: index for index, entry in enumerate(STATIC_TABLE, 1) if entry[1]}


def _names() -> dict[bytes, int]:
    names: dict[bytes, int] = {}
    for index, (name, _) in enumerate(STATIC_TABLE, 1):
        names.setdefault(name, index)  # the first index of a name, as every encoder uses
    return names


_FULL: Final = _full_entries()
_NAMES: Final = _names()

# §6.1 indexed field, §6.2.2 literal without indexing, §6.3 dynamic table size update: the
# representation's first bits, and the integer prefix (§5.1) that follows them.
_INDEXED: Final = 0x80
_WITHOUT_INDEXING: Final = 0x00
_SIZE_UPDATE: Final = 0x20


def _integer(out: bytearray, value: int, first: int, prefix_bits: int) -> None:
    """RFC 7541 §5.1: ``value`` in a ``prefix_bits`` prefix whose octet starts with ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        out.append(first | value)
        return
    out.append(first | limit)
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _string(out: bytearray, data: bytes) -> None:
    """RFC 7541 §5.2: a string literal, H bit clear (no Huffman)."""
    _integer(out, len(data), 0x00, 7)
    out += data


class ResponseEncoder:
    """Encodes header blocks from the static table and literals; never indexes."""

    __slots__ = ("_size_update_due", "_table_size")

    def __init__(self) -> None:
        self._table_size = 4096
        self._size_update_due = False

    @property
    def header_table_size(self) -> int:
        return self._table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # The client's SETTINGS_HEADER_TABLE_SIZE changed. The table this encoder uses is
        # always empty, but a decoder whose limit went down below the table's current size
        # expects a size update first in the next block (§4.2; nghttp2 refuses the block
        # otherwise): one update to 0 is valid whatever the new limit and the ones between.
        self._table_size = value
        self._size_update_due = True

    def encode(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        out = bytearray()
        if self._size_update_due:
            self._size_update_due = False
            _integer(out, 0, _SIZE_UPDATE, 5)
        for field in headers:
            name = field[0]
            value = field[1]
            index = _FULL.get((name, value), 0)
            if index:
                _integer(out, index, _INDEXED, 7)
                continue
            index = _NAMES.get(name, 0)
            if index:
                _integer(out, index, _WITHOUT_INDEXING, 4)
            else:
                out.append(_WITHOUT_INDEXING)
                _string(out, name)
            _string(out, value)
        return bytes(out)
