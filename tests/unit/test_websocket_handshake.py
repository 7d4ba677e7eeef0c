"""The opening handshakes (gateway.websocket.handshake) and permessage-deflate per hop
(gateway.websocket.deflate): tables of offers and answers."""

from __future__ import annotations

import base64
import os
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.messages import Headers
from gateway.websocket import deflate
from gateway.websocket.frames import CLOSE_INVALID_DATA, CLOSE_TOO_BIG, ProtocolError
from gateway.websocket.handshake import (
    BadUpstreamAnswer,
    HandshakeRefused,
    accept_value,
    check_upstream_answer,
    client_101_fields,
    is_websocket_upgrade,
    read_client_offer,
    upstream_fields,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def test_accept_value_is_the_rfc_example() -> None:
    # RFC 6455 §1.3.
    assert accept_value(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([b"websocket"], True),
        ([b"WebSocket"], True),
        ([b"h2c, websocket"], True),
        ([b"h2c"], False),
        ([], False),
    ],
)
def test_upgrade_names_websocket(values: list[bytes], expected: bool) -> None:
    assert is_websocket_upgrade(values) is expected


def fields(**extra: str) -> Headers:
    base = {"Sec-WebSocket-Key": KEY.decode(), "Sec-WebSocket-Version": "13"}
    base.update({name.replace("_", "-"): value for name, value in extra.items()})
    return [(name.encode(), value.encode()) for name, value in base.items() if value]


def test_a_valid_offer() -> None:
    offer = read_client_offer(
        "GET",
        (1, 1),
        fields(
            Sec_WebSocket_Protocol="chat, superchat",
            Sec_WebSocket_Extensions="permessage-deflate",
        ),
    )
    assert offer.key == KEY
    assert offer.protocols == ("chat", "superchat")
    assert offer.extensions == ("permessage-deflate",)


@pytest.mark.parametrize(
    ("method", "version", "headers", "status"),
    [
        ("POST", (1, 1), fields(), 400),
        ("GET", (1, 0), fields(), 400),
        ("GET", (1, 1), fields(Sec_WebSocket_Version="8"), 426),
        ("GET", (1, 1), fields(Sec_WebSocket_Version=""), 426),
        ("GET", (1, 1), fields(Sec_WebSocket_Key=""), 400),
        ("GET", (1, 1), fields(Sec_WebSocket_Key="c2hvcnQ="), 400),
        ("GET", (1, 1), fields(Sec_WebSocket_Key="not base64!"), 400),
        ("GET", (1, 1), [*fields(), (b"Sec-WebSocket-Key", KEY)], 400),
    ],
)
def test_invalid_offers(
    method: str, version: tuple[int, int], headers: Headers, status: int
) -> None:
    with pytest.raises(HandshakeRefused) as caught:
        read_client_offer(method, version, headers)
    assert caught.value.status == status
    if status == 426:
        assert (b"Sec-WebSocket-Version", b"13") in caught.value.headers


def test_upstream_fields_replace_the_clients_handshake() -> None:
    forwarded = [
        (b"Origin", b"https://app.example"),
        (b"Sec-WebSocket-Key", KEY),
        (b"Sec-WebSocket-Extensions", b"permessage-deflate"),
        (b"Sec-WebSocket-Protocol", b"chat"),
        (b"Cookie", b"a=1"),
    ]
    key = base64.b64encode(os.urandom(16))
    out = upstream_fields(forwarded, key, ("chat",), deflate_offer=False)
    names = [name.lower() for name, _ in out]
    assert (b"Origin", b"https://app.example") in out
    assert (b"Cookie", b"a=1") in out
    assert (b"Sec-WebSocket-Key", key) in out
    assert names.count(b"sec-websocket-key") == 1
    assert b"sec-websocket-extensions" not in names
    assert (b"Sec-WebSocket-Protocol", b"chat") in out
    assert (b"Upgrade", b"websocket") in out


def answer(key: bytes, **extra: str) -> Headers:
    base = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": accept_value(key).decode(),
    }
    base.update({name.replace("_", "-"): value for name, value in extra.items()})
    return [(name.encode(), value.encode()) for name, value in base.items() if value]


def test_a_valid_upstream_answer() -> None:
    result = check_upstream_answer(
        answer(KEY, Sec_WebSocket_Protocol="chat"), KEY, ("chat", "x"), deflate_offered=False
    )
    assert (result.protocol, result.deflate) == ("chat", False)


@pytest.mark.parametrize(
    "headers",
    [
        answer(KEY, Upgrade=""),
        answer(KEY, Connection="keep-alive"),
        answer(KEY, Sec_WebSocket_Accept="wrong"),
        answer(KEY, Sec_WebSocket_Protocol="other"),
        answer(KEY, Sec_WebSocket_Extensions="permessage-deflate; server_no_context_takeover"),
    ],
)
def test_invalid_upstream_answers(headers: Headers) -> None:
    with pytest.raises(BadUpstreamAnswer):
        check_upstream_answer(headers, KEY, ("chat",), deflate_offered=False)


@pytest.mark.parametrize(
    ("extensions", "accepted"),
    [
        ("permessage-deflate; server_no_context_takeover", True),
        ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", True),
        ("", False),
    ],
)
def test_upstream_deflate_answers(extensions: str, accepted: bool) -> None:
    result = check_upstream_answer(
        answer(KEY, Sec_WebSocket_Extensions=extensions), KEY, (), deflate_offered=True
    )
    assert result.deflate is accepted


@pytest.mark.parametrize(
    "extensions",
    [
        "permessage-deflate",  # would keep its context: the gateway keeps no inflate state
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
        "x-webkit-deflate-frame",
        "permessage-deflate; server_no_context_takeover, permessage-deflate; "
        "server_no_context_takeover",
    ],
)
def test_upstream_deflate_answers_the_offer_did_not_allow(extensions: str) -> None:
    with pytest.raises(BadUpstreamAnswer):
        check_upstream_answer(
            answer(KEY, Sec_WebSocket_Extensions=extensions), KEY, (), deflate_offered=True
        )


def test_client_101_fields() -> None:
    upstream = [(b"Set-Cookie", b"s=1"), (b"Sec-WebSocket-Accept", b"theirs")]
    out = client_101_fields(upstream, KEY, "chat", deflate.SERVER_RESPONSE)
    assert (b"Set-Cookie", b"s=1") in out
    assert (b"Sec-WebSocket-Accept", accept_value(KEY)) in out
    assert (b"Sec-WebSocket-Accept", b"theirs") not in out
    assert (b"Sec-WebSocket-Protocol", b"chat") in out


@pytest.mark.parametrize(
    ("offers", "expected"),
    [
        (["permessage-deflate"], (deflate.SERVER_RESPONSE, 15)),
        (["permessage-deflate; client_max_window_bits"], (deflate.SERVER_RESPONSE, 15)),
        (
            ["permessage-deflate; server_max_window_bits=10"],
            (deflate.SERVER_RESPONSE + "; server_max_window_bits=10", 10),
        ),
        # The first acceptable offer wins; invalid ones are skipped.
        (
            ["permessage-deflate; server_max_window_bits=8, permessage-deflate"],
            (deflate.SERVER_RESPONSE, 15),
        ),
        (["permessage-deflate; unknown_param"], None),
        (["permessage-deflate; server_max_window_bits"], None),
        (["permessage-deflate; server_max_window_bits=16"], None),
        (["permessage-deflate; server_no_context_takeover; server_no_context_takeover"], None),
        (["x-webkit-deflate-frame"], None),
        ([], None),
    ],
)
def test_client_deflate_offers(offers: list[str], expected: tuple[str, int] | None) -> None:
    assert deflate.accept_offer(offers) == expected


@given(st.binary(max_size=5000), st.integers(min_value=9, max_value=15))
def test_messages_round_trip_through_deflate(payload: bytes, bits: int) -> None:
    compressed = deflate.compress_message(payload, bits)
    assert not compressed.endswith(b"\x00\x00\xff\xff")
    assert deflate.inflate_message(compressed, len(payload)) == payload


def test_a_deflate_bomb_stops_at_the_limit() -> None:
    bomb = deflate.compress_message(b"\x00" * 10_000_000)
    assert len(bomb) < 20_000
    with pytest.raises(ProtocolError) as caught:
        deflate.inflate_message(bomb, 1 << 20)
    assert caught.value.code == CLOSE_TOO_BIG


def test_a_corrupt_message_is_invalid_data() -> None:
    with pytest.raises(ProtocolError) as caught:
        deflate.inflate_message(b"\xff\xff\xff\xff", 1000)
    assert caught.value.code == CLOSE_INVALID_DATA


def test_compressed_messages_decode_with_a_plain_raw_inflater() -> None:
    # What a browser does with server_no_context_takeover: one raw inflater per message.
    data = deflate.compress_message(b'{"a": 1}' * 100)
    assert zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff") == b'{"a": 1}' * 100
