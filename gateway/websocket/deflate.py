"""permessage-deflate (RFC 7692), per hop, without context takeover in either direction.

Each hop negotiates on its own: the client with the gateway, the gateway with the upstream.
Both ask for ``server_no_context_takeover`` and ``client_no_context_takeover`` (§7.1.1), so
every message is compressed and inflated on its own and an idle relay holds no zlib state (a
deflate context is ~256 KiB, an inflate one ~44 KiB: 10,000 idle relays could not afford them).
"""

from __future__ import annotations

import zlib
from typing import Final

from gateway.websocket.frames import CLOSE_INVALID_DATA, CLOSE_TOO_BIG, ProtocolError

EXTENSION: Final = "permessage-deflate"
# The gateway's answer to a client's acceptable offer (§7.1.1.1, §7.1.1.2: a server may add
# client_no_context_takeover even when the offer lacks it).
SERVER_RESPONSE: Final = f"{EXTENSION}; server_no_context_takeover; client_no_context_takeover"
# What the gateway offers an upstream.
CLIENT_OFFER: Final = SERVER_RESPONSE
# §7.2.1: a compressed message's deflate stream ends with an empty stored block, 00 00 FF FF,
# removed before sending and appended again before inflating.
_TAIL: Final = b"\x00\x00\xff\xff"


def _params(offer: str) -> tuple[str, dict[str, str | None]] | None:
    parts = [part.strip() for part in offer.split(";")]
    name = parts[0].lower()
    params: dict[str, str | None] = {}
    for part in parts[1:]:
        if not part:
            return None
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if key in params:
            return None  # §7: a parameter given twice makes the offer invalid
        params[key] = value.strip().strip('"') if sep else None
    return name, params


def _window_bits(value: str | None, *, required: bool) -> int | None:
    """A max_window_bits value (8-15), None when absent and allowed; raises ValueError."""
    if value is None:
        if required:
            raise ValueError("missing value")
        return None
    if not value.isdigit() or not 8 <= int(value) <= 15:
        raise ValueError(value)
    return int(value)


def accept_offer(header_values: list[str]) -> tuple[str, int] | None:
    """Choose the first acceptable permessage-deflate offer among the client's
    Sec-WebSocket-Extensions values: (the response value, the window bits to compress with),
    or None to decline them all (the connection then goes on uncompressed)."""
    for value in header_values:
        for offer in value.split(","):
            parsed = _params(offer)
            if parsed is None or parsed[0] != EXTENSION:
                continue
            params = parsed[1]
            known = {
                "server_no_context_takeover",
                "client_no_context_takeover",
                "server_max_window_bits",
                "client_max_window_bits",
            }
            if set(params) - known:
                continue
            try:
                server_bits = None
                if "server_max_window_bits" in params:
                    server_bits = _window_bits(params["server_max_window_bits"], required=True)
                if "client_max_window_bits" in params:
                    _window_bits(params["client_max_window_bits"], required=False)
            except ValueError:
                continue
            if server_bits == 8:
                continue  # zlib's raw deflate cannot use a 256-byte window
            bits = server_bits or 15
            response = SERVER_RESPONSE
            if server_bits is not None:
                response += f"; server_max_window_bits={server_bits}"
            return response, bits
    return None


def accepted_by_upstream(header_values: list[str]) -> bool:
    """Whether the upstream's Sec-WebSocket-Extensions accepts the gateway's offer; raises
    ValueError for an answer the offer did not allow (the handshake then fails, §7.1.1):
    another extension, two answers, or one without server_no_context_takeover (the gateway
    keeps no inflate state between messages) or with client_max_window_bits (not offered)."""
    found = False
    for value in header_values:
        for item in value.split(","):
            if not item.strip():
                continue
            parsed = _params(item)
            if parsed is None or parsed[0] != EXTENSION or found:
                raise ValueError(f"unexpected extension {item.strip()!r}")
            params = parsed[1]
            allowed = {
                "server_no_context_takeover",
                "client_no_context_takeover",
                "server_max_window_bits",
            }
            if "server_no_context_takeover" not in params or set(params) - allowed:
                raise ValueError(f"permessage-deflate answered as {item.strip()!r}")
            found = True
    return found


def compress_message(payload: bytes, window_bits: int = 15) -> bytes:
    """One message's payload, deflated on its own (no context taken over)."""
    encoder = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window_bits)
    data = encoder.compress(payload) + encoder.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(_TAIL) else data


def inflate_message(payload: bytes, max_size: int) -> bytes:
    """One message's payload, inflated on its own; ProtocolError 1009 past ``max_size`` bytes
    (checked as it inflates: a deflate bomb never grows beyond it) and 1007 when corrupt."""
    decoder = zlib.decompressobj(-15)
    try:
        data = decoder.decompress(payload + _TAIL, max_size + 1)
    except zlib.error as exc:
        raise ProtocolError(CLOSE_INVALID_DATA, f"a message that does not inflate: {exc}") from None
    if len(data) > max_size:
        raise ProtocolError(CLOSE_TOO_BIG, f"message over {max_size} bytes once inflated")
    return data
