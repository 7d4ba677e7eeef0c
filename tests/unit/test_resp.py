"""RESP2 replies and commands (gateway.redisproto.client): a table, and any reply split anywhere."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.redisproto.client import INCOMPLETE, encode_command, parse_reply
from gateway.redisproto.errors import RedisError


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"+OK\r\n", "OK"),
        (b":42\r\n", 42),
        (b":-3\r\n", -3),
        (b"$5\r\nhello\r\n", b"hello"),
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*0\r\n", []),
        (b"*4\r\n:1\r\n:9\r\n$1\r\n0\r\n$8\r\n0.100000\r\n", [1, 9, b"0", b"0.100000"]),
        (b"*2\r\n*1\r\n:1\r\n$2\r\nab\r\n", [[1], b"ab"]),
    ],
)
def test_replies(data: bytes, value: Any) -> None:
    assert parse_reply(data) == (value, len(data))


def test_an_error_reply_is_returned_not_raised() -> None:
    error, offset = parse_reply(b"-NOSCRIPT No matching script.\r\n")
    assert isinstance(error, RedisError)
    assert str(error) == "NOSCRIPT No matching script."
    assert offset == 31


@pytest.mark.parametrize("data", [b"", b"+OK", b"$5\r\nhel", b"*2\r\n:1\r\n", b"*1\r\n$3\r\nab"])
def test_a_partial_reply_is_incomplete(data: bytes) -> None:
    assert parse_reply(data) == (INCOMPLETE, 0)


@pytest.mark.parametrize("data", [b"?what\r\n", b"$3\r\nabcXY", b":x\r\n"])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        parse_reply(data)


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert encode_command("EVALSHA", b"k", 1, 0.5) == (
        b"*4\r\n$7\r\nEVALSHA\r\n$1\r\nk\r\n$1\r\n1\r\n$3\r\n0.5\r\n"
    )


replies = st.recursive(
    st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.binary(max_size=40),
        st.none(),
        st.text(alphabet="abcXYZ 012", max_size=20).map(lambda text: ("simple", text)),
    ),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


def encode(value: Any) -> bytes:
    if isinstance(value, tuple):
        text: str = value[1]
        return b"+" + text.encode() + b"\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if value is None:
        return b"$-1\r\n"
    return b"*%d\r\n" % len(value) + b"".join(encode(item) for item in value)


def expected(value: Any) -> Any:
    if isinstance(value, tuple):
        return value[1]
    if isinstance(value, list):
        return [expected(item) for item in value]
    return value


@settings(max_examples=300, deadline=None)
@given(st.lists(replies, min_size=1, max_size=4), st.data())
def test_replies_split_anywhere_parse_once_complete(values: list[Any], data: st.DataObject) -> None:
    stream = b"".join(encode(value) for value in values)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream)))
    buffer = bytearray(stream[:cut])
    parsed: list[Any] = []
    offset = 0
    for chunk in (stream[cut:], b""):
        while offset < len(buffer):
            value, offset = parse_reply(buffer, offset)
            if value is INCOMPLETE:
                break
            parsed.append(value)
        buffer += chunk
    while offset < len(buffer):
        value, offset = parse_reply(buffer, offset)
        parsed.append(value)
    assert parsed == [expected(value) for value in values]
