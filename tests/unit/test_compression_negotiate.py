"""Accept-Encoding negotiation (gateway.compression.negotiate): a table, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.compression.negotiate import (
    IDENTITY,
    accepted,
    accepts,
    choose,
    identity_refused,
    parse_qvalue,
)

SERVER = ("br", "zstd", "gzip")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # No field, or an empty one: uncompressed.
        ([], IDENTITY),
        ([b""], IDENTITY),
        # Browsers: the server's order breaks the tie.
        ([b"gzip, deflate, br, zstd"], "br"),
        ([b"gzip, deflate"], "gzip"),
        ([b"gzip", b"br"], "br"),  # spread over two field lines
        # The client's q wins over the server's order.
        ([b"br;q=0.5, gzip"], "gzip"),
        ([b"gzip;q=0.8, zstd;q=0.9, br;q=0.1"], "zstd"),
        # q=0 refuses; * stands for the codings not named.
        ([b"br;q=0, *"], "zstd"),
        ([b"*;q=0.3, gzip;q=0.5"], "gzip"),
        ([b"*"], "br"),
        ([b"*;q=0"], IDENTITY),
        ([b"br;q=0, zstd;q=0, gzip;q=0"], IDENTITY),
        # identity ranked above every coding wins; unranked, it is only the fallback.
        ([b"gzip;q=0.5, identity"], IDENTITY),
        ([b"gzip;q=0.5, identity;q=0.4"], "gzip"),
        ([b"gzip;q=0.5"], "gzip"),
        # Case, spaces, the x-gzip alias, unknown codings and parameters.
        ([b"  GZIP ; Q=0.7 ,  compress"], "gzip"),
        ([b"x-gzip"], "gzip"),
        ([b"deflate, compress"], IDENTITY),
        ([b"gzip;level=9"], "gzip"),
        # Unreadable weights skip their element (never a crash, never q > 1).
        ([b"br;q=2, gzip"], "gzip"),
        ([b"br;q=0.5000, gzip;q=0.1"], "gzip"),
        ([b"br;q=, gzip;q=0.1"], "gzip"),
        ([b";q=1, gzip"], "gzip"),
        # A coding named twice keeps its first weight.
        ([b"br;q=0, br;q=1, gzip"], "gzip"),
    ],
)
def test_choose(values: list[bytes], expected: str) -> None:
    assert choose(values, SERVER) == expected


def test_only_the_routes_algorithms_are_chosen() -> None:
    assert choose([b"br, gzip"], ("gzip",)) == "gzip"
    assert choose([b"br"], ("gzip",)) == IDENTITY
    assert choose([b"br, zstd"], ("zstd", "br")) == "zstd"
    assert choose([b"gzip"], ()) == IDENTITY


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0.0),
        ("0.", 0.0),
        ("0.5", 0.5),
        ("0.123", 0.123),
        ("1", 1.0),
        ("1.000", 1.0),
        ("0.1234", None),
        ("1.001", None),
        ("2", None),
        (".5", None),
        ("", None),
        ("-0", None),
        ("0.5 ", None),
    ],
)
def test_parse_qvalue(text: str, expected: float | None) -> None:
    assert parse_qvalue(text) == expected


def test_identity_refused() -> None:
    assert identity_refused([b"identity;q=0"])
    assert identity_refused([b"gzip, *;q=0"])
    assert not identity_refused([b"*;q=0, identity;q=0.1"])
    assert not identity_refused([b"gzip"])
    assert not identity_refused([])


codings = st.sampled_from(["br", "zstd", "gzip", "deflate", "identity", "*", "x-gzip", "BR"])
weights = st.one_of(
    st.none(),
    st.sampled_from(["0", "0.001", "0.5", "0.999", "1", "1.0", "2", "abc", ""]),
)
elements = st.lists(st.tuples(codings, weights), max_size=8)


def render(items: list[tuple[str, str | None]]) -> bytes:
    return ", ".join(name if q is None else f"{name};q={q}" for name, q in items).encode()


@given(elements, st.permutations(SERVER))
def test_the_choice_is_acceptable_and_never_beaten(
    items: list[tuple[str, str | None]], server: list[str]
) -> None:
    values = [render(items)] if items else []
    chosen = choose(values, tuple(server))
    assert chosen in (*server, IDENTITY)
    if not values:
        return
    weights = accepted(values)

    def q(coding: str) -> float:
        return weights.get(coding, weights.get("*", 0.0))

    if chosen != IDENTITY:
        # Acceptable to the client, and no other offered coding is strictly preferred.
        assert q(chosen) > 0
        assert all(q(other) <= q(chosen) for other in server)
        # Among equals, the server's order decides.
        first_best = next(c for c in server if q(c) == q(chosen))
        assert chosen == first_best
    else:
        # Identity only when no offered coding is acceptable, or identity is ranked higher.
        best = max((q(c) for c in server), default=0.0)
        assert best == 0 or weights.get(IDENTITY, -1.0) > best


@given(st.binary(max_size=200))
def test_any_bytes_parse(value: bytes) -> None:
    choose([value], SERVER)


@pytest.mark.parametrize(
    ("values", "coding", "expected"),
    [
        ([b"gzip, br"], "gzip", True),
        ([b"br"], "gzip", False),
        ([b"*"], "gzip", True),
        ([b"gzip;q=0, *"], "gzip", False),
        ([b"x-gzip"], "gzip", True),
        ([], "gzip", False),  # no field: never assume the client decodes anything
    ],
)
def test_accepts(values: list[bytes], coding: str, expected: bool) -> None:
    assert accepts(values, coding) is expected
