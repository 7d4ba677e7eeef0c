"""The two opening handshakes (RFC 6455 §4) the relay stands between. Pure: fields in, fields out.

The client's request is checked as a server would (§4.2.1) before anything is sent upstream;
the gateway then opens its own handshake with the upstream (its own key, its own extension
offer: each hop negotiates permessage-deflate on its own), and answers the client 101 only
after the upstream's 101 passed the checks a client makes (§4.2.2, §4.1 point 5).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass

from gateway.messages import Headers
from gateway.websocket import deflate

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VERSION = b"13"
# Fields of one hop's handshake: never forwarded to the other hop, which gets its own.
# (Sec-WebSocket-Protocol is end to end: the gateway offers the client's list upstream and
# answers the client with what the upstream chose.)
HOP_FIELDS = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-accept",
        b"sec-websocket-protocol",
    }
)


class HandshakeRefused(Exception):
    """The client's upgrade request is not a valid WebSocket handshake: answer ``status``."""

    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers: Headers = headers or []


class BadUpstreamAnswer(Exception):
    """The upstream's 101 fails a check a client makes: no tunnel opens (502)."""


@dataclass(frozen=True, slots=True)
class ClientOffer:
    key: bytes
    # The subprotocols the client offered, in its order.
    protocols: tuple[str, ...]
    # Its Sec-WebSocket-Extensions values, for the client hop's negotiation.
    extensions: tuple[str, ...]


def _tokens(values: list[bytes]) -> list[bytes]:
    return [
        token.strip(b" \t").lower()
        for value in values
        for token in value.split(b",")
        if token.strip(b" \t")
    ]


def _values(headers: Headers, name: bytes) -> list[bytes]:
    return [value for field, value in headers if field.lower() == name]


def is_websocket_upgrade(upgrade: list[bytes]) -> bool:
    """Whether the Upgrade field values ask for websocket (§4.2.1 point 3; case-insensitive)."""
    return b"websocket" in _tokens(upgrade)


def read_client_offer(method: str, version: tuple[int, int], headers: Headers) -> ClientOffer:
    """The client's handshake fields, checked (§4.2.1); HandshakeRefused when invalid.

    ``headers`` are the request's end-to-end fields (Upgrade and Connection were checked by the
    caller, which saw them before the hop-by-hop fields were stripped)."""
    if method != "GET":
        raise HandshakeRefused(400, "a WebSocket handshake must be a GET")
    if version < (1, 1):
        raise HandshakeRefused(400, "a WebSocket handshake needs HTTP/1.1")
    versions = _tokens(_values(headers, b"sec-websocket-version"))
    if versions != [VERSION]:
        # §4.2.2: 426 with the versions the server speaks.
        raise HandshakeRefused(
            426,
            "unsupported Sec-WebSocket-Version (13 is supported)",
            [(b"Sec-WebSocket-Version", VERSION)],
        )
    keys = _values(headers, b"sec-websocket-key")
    if len(keys) != 1:
        raise HandshakeRefused(400, "a WebSocket handshake needs one Sec-WebSocket-Key")
    key = keys[0].strip(b" \t")
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise HandshakeRefused(400, "Sec-WebSocket-Key is not 16 bytes in base64")
    protocols = tuple(
        token.decode("latin-1")
        for value in _values(headers, b"sec-websocket-protocol")
        for token in (part.strip(b" \t") for part in value.split(b","))
        if token
    )
    extensions = tuple(
        value.decode("latin-1") for value in _values(headers, b"sec-websocket-extensions")
    )
    return ClientOffer(key, protocols, extensions)


def accept_value(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for ``key`` (§4.2.2 point 5.4; SHA-1 is the RFC's choice)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def new_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def upstream_fields(
    forwarded: Headers, key: bytes, protocols: tuple[str, ...], *, deflate_offer: bool
) -> Headers:
    """The upstream handshake's fields: the forwarded end-to-end ones (the client's own
    handshake fields removed) and the gateway's."""
    fields = [(name, value) for name, value in forwarded if name.lower() not in HOP_FIELDS]
    fields += [
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", key),
        (b"Sec-WebSocket-Version", VERSION),
    ]
    if protocols:
        fields.append((b"Sec-WebSocket-Protocol", ", ".join(protocols).encode("latin-1")))
    if deflate_offer:
        fields.append((b"Sec-WebSocket-Extensions", deflate.CLIENT_OFFER.encode("ascii")))
    return fields


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    protocol: str | None
    deflate: bool


def check_upstream_answer(
    headers: Headers, key: bytes, protocols: tuple[str, ...], *, deflate_offered: bool
) -> UpstreamAnswer:
    """The upstream's 101 checked as a client would (§4.1, §4.2.2); BadUpstreamAnswer if not."""
    if not is_websocket_upgrade(_values(headers, b"upgrade")):
        raise BadUpstreamAnswer("the 101 has no Upgrade: websocket")
    if b"upgrade" not in _tokens(_values(headers, b"connection")):
        raise BadUpstreamAnswer("the 101 has no Connection: upgrade")
    accepts = _values(headers, b"sec-websocket-accept")
    if [value.strip(b" \t") for value in accepts] != [accept_value(key)]:
        raise BadUpstreamAnswer("Sec-WebSocket-Accept does not match the key")
    chosen = [
        value.strip(b" \t").decode("latin-1")
        for value in _values(headers, b"sec-websocket-protocol")
    ]
    protocol: str | None = None
    if chosen:
        if len(chosen) != 1 or chosen[0] not in protocols:
            raise BadUpstreamAnswer(f"the upstream chose a subprotocol not offered: {chosen}")
        protocol = chosen[0]
    extensions = [
        value.decode("latin-1") for value in _values(headers, b"sec-websocket-extensions")
    ]
    if extensions and not deflate_offered:
        raise BadUpstreamAnswer("the upstream answered extensions that were not offered")
    try:
        compressed = deflate.accepted_by_upstream(extensions) if extensions else False
    except ValueError as exc:
        raise BadUpstreamAnswer(str(exc)) from None
    return UpstreamAnswer(protocol, compressed)


def client_101_fields(
    upstream_end_to_end: Headers,
    key: bytes,
    protocol: str | None,
    extension_response: str | None,
) -> Headers:
    """The 101 for the client: the upstream's end-to-end fields (cookies, for instance; its
    own handshake fields removed) and the client hop's handshake fields."""
    fields = [
        (name, value) for name, value in upstream_end_to_end if name.lower() not in HOP_FIELDS
    ]
    fields += [
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Accept", accept_value(key)),
    ]
    if protocol is not None:
        fields.append((b"Sec-WebSocket-Protocol", protocol.encode("latin-1")))
    if extension_response is not None:
        fields.append((b"Sec-WebSocket-Extensions", extension_response.encode("ascii")))
    return fields
