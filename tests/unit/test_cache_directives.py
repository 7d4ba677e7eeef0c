"""Cache-Control parsing (gateway.cache.directives) and HTTP-dates (gateway.cache.dates)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.dates import format_http_date, parse_http_date
from gateway.cache.directives import DELTA_MAX, CacheControl, delta_seconds, parse_directives


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([b"max-age=60"], [("max-age", "60")]),
        ([b"Max-Age=60, PUBLIC"], [("max-age", "60"), ("public", None)]),
        ([b"no-cache", b"no-store"], [("no-cache", None), ("no-store", None)]),
        (
            [b' private="Set-Cookie, X-Id" , s-maxage=5'],
            [("private", "Set-Cookie, X-Id"), ("s-maxage", "5")],
        ),
        ([b'no-cache="a\\"b"'], [("no-cache", 'a"b')]),
        # A comma inside a quoted string does not split the directive.
        ([b'x="1,2", max-age=3'], [("x", "1,2"), ("max-age", "3")]),
        # Empty elements and stray whitespace are fine.
        ([b" , ,max-age=1,,"], [("max-age", "1")]),
        # A malformed element is skipped; its neighbours count.
        ([b"max-age=1 2, public"], [("public", None)]),
        ([b"=5, no-store"], [("no-store", None)]),
        ([b'private="unterminated, max-age=5'], []),
        ([b"max-age=, public"], [("public", None)]),
    ],
)
def test_parse_directives(values: list[bytes], expected: list[tuple[str, str | None]]) -> None:
    assert parse_directives(values) == expected


@given(st.binary(max_size=200))
def test_parsing_never_fails_on_any_bytes(value: bytes) -> None:
    control = CacheControl.parse([value])
    assert control.max_age is None or 0 <= control.max_age <= DELTA_MAX


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("60", 60),
        ("007", 7),
        ("99999999999999", DELTA_MAX),
        ("-1", None),
        ("1.5", None),
        ("", None),
        (None, None),
        ("٣", None),  # a digit to str.isdigit, not to RFC 9111
    ],
)
def test_delta_seconds(text: str | None, expected: int | None) -> None:
    assert delta_seconds(text) == expected


def test_response_directives() -> None:
    control = CacheControl.parse(
        [
            b"public, max-age=60, s-maxage=30, must-revalidate, proxy-revalidate",
            b"no-transform, immutable, stale-while-revalidate=10, stale-if-error=300",
        ]
    )
    assert (control.public, control.max_age, control.s_maxage) == (True, 60, 30)
    assert (control.must_revalidate, control.proxy_revalidate) == (True, True)
    assert (control.no_transform, control.immutable) == (True, True)
    assert (control.stale_while_revalidate, control.stale_if_error) == (10, 300)
    assert not control.freshness_invalid


def test_qualified_private_and_no_cache_keep_their_fields() -> None:
    control = CacheControl.parse([b'private="Set-Cookie", no-cache="X-Token, X-Other"'])
    assert not control.private
    assert not control.no_cache
    assert control.private_fields == (b"set-cookie",)
    assert control.no_cache_fields == (b"x-token", b"x-other")


@pytest.mark.parametrize(
    "values",
    [
        [b"max-age=abc"],
        [b"max-age=60, max-age=120"],
        [b"max-age=60", b"max-age=30"],
        [b"s-maxage=-5"],
    ],
)
def test_unreadable_or_conflicting_freshness_is_invalid(values: list[bytes]) -> None:
    # RFC 9111 §4.2.1: such a response is best considered stale.
    assert CacheControl.parse(values).freshness_invalid


def test_a_repeated_identical_freshness_directive_is_fine() -> None:
    control = CacheControl.parse([b"max-age=60, max-age=60"])
    assert (control.max_age, control.freshness_invalid) == (60, False)


@pytest.mark.parametrize(
    ("values", "max_stale", "min_fresh"),
    [
        ([b"max-stale"], DELTA_MAX, None),
        ([b"max-stale=30"], 30, None),
        ([b"max-stale=soon"], 0, None),
        ([b"min-fresh=10"], None, 10),
        ([b"min-fresh=x"], None, DELTA_MAX),
    ],
)
def test_request_directives(
    values: list[bytes], max_stale: int | None, min_fresh: int | None
) -> None:
    control = CacheControl.parse(values)
    assert (control.max_stale, control.min_fresh) == (max_stale, min_fresh)


def test_only_if_cached_and_no_cache_on_requests() -> None:
    control = CacheControl.parse([b"only-if-cached, no-cache, max-age=0"])
    assert (control.only_if_cached, control.no_cache, control.max_age) == (True, True, 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 9110 §5.6.7's three formats of one instant.
        (b"Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0),
        (b"Sunday, 06-Nov-94 08:49:37 GMT", 784111777.0),
        (b"Sun Nov  6 08:49:37 1994", 784111777.0),
        (b" Sun, 06 Nov 1994 08:49:37 GMT ", 784111777.0),
        (b"0", None),
        (b"-1", None),
        (b"tomorrow", None),
        (b"Sun, 06 Nov 1994 08:49:37 +0200", None),
        (b"Sun, 32 Nov 1994 08:49:37 GMT", None),
        (b"Xyz, 06 Nov 1994 08:49:37 GMT", None),
        (b"", None),
    ],
)
def test_http_dates(value: bytes, expected: float | None) -> None:
    assert parse_http_date(value) == expected


@given(st.integers(min_value=0, max_value=4102444800))
def test_dates_round_trip(seconds: int) -> None:
    assert parse_http_date(format_http_date(seconds)) == seconds


@given(st.binary(max_size=60))
def test_date_parsing_never_fails_on_any_bytes(value: bytes) -> None:
    parse_http_date(value)
