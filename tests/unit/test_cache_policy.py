"""RFC 9111 for a shared cache (gateway.cache.policy), section by section, table-driven."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.dates import format_http_date
from gateway.cache.directives import CacheControl, cache_control
from gateway.cache.policy import (
    FRESH,
    HEURISTIC_CAP,
    REVALIDATE,
    STALE,
    STALE_WHILE_REVALIDATE,
    Freshness,
    Options,
    freshness_lifetime,
    initial_age,
    invalidated_uris,
    secondary_key,
    storable,
    vary_names,
)
from gateway.messages import Headers

NOW = 1_700_000_000.0
DATE = (b"Date", format_http_date(NOW))


def fields(*pairs: tuple[str, str]) -> Headers:
    return [(k.encode(), v.encode()) for k, v in pairs]


def why_not(
    status: int = 200,
    response: Headers | None = None,
    request: Headers | None = None,
    method: str = "GET",
    options: Options | None = None,
) -> str | None:
    response = [] if response is None else response
    request = [] if request is None else request
    return storable(
        method,
        status,
        request_headers=request,
        request_cc=cache_control(request),
        response_headers=response,
        response_cc=cache_control(response),
        options=options or Options(),
    )


# §3: storing responses.
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ({}, None),  # 200 is heuristically cacheable (RFC 9110 §15.1)
        ({"response": fields(("Cache-Control", "max-age=60"))}, None),
        ({"method": "HEAD"}, "method"),
        ({"method": "POST", "response": fields(("Cache-Control", "max-age=60"))}, "method"),
        ({"status": 206}, "status"),
        ({"status": 304}, "status"),
        ({"status": 500, "response": fields(("Cache-Control", "max-age=60"))}, "status"),
        ({"status": 501}, "status"),
        ({"status": 503}, "status"),
        ({"status": 404}, None),
        ({"status": 410}, None),
        ({"status": 301}, None),
        # A status not cacheable by default needs explicit freshness.
        ({"status": 302}, "not-cacheable"),
        ({"status": 302, "response": fields(("Cache-Control", "max-age=5"))}, None),
        ({"status": 201, "response": fields(("Expires", "Sun, 06 Nov 2094 08:49:37 GMT"))}, None),
        ({"status": 400, "response": fields(("Cache-Control", "public"))}, None),
        # §5.2.2.5, §5.2.1.5: no-store on either message.
        ({"response": fields(("Cache-Control", "max-age=60, no-store"))}, "no-store"),
        ({"request": fields(("Cache-Control", "no-store"))}, "no-store"),
        # §5.2.2.3: must-understand with a status understood overrides no-store...
        ({"response": fields(("Cache-Control", "must-understand, no-store, max-age=9"))}, None),
        # ...and forbids storing one that is not understood.
        (
            {"status": 299, "response": fields(("Cache-Control", "must-understand, max-age=9"))},
            "must-understand",
        ),
        # §5.2.2.7: unqualified private is never for a shared cache; qualified is.
        ({"response": fields(("Cache-Control", "private, max-age=60"))}, "private"),
        ({"response": fields(("Cache-Control", 'private="X-User", max-age=60'))}, None),
        # Set-Cookie only when the route opts in.
        (
            {"response": fields(("Set-Cookie", "id=1"), ("Cache-Control", "max-age=60"))},
            "set-cookie",
        ),
        (
            {
                "response": fields(("Set-Cookie", "id=1"), ("Cache-Control", "max-age=60")),
                "options": Options(store_set_cookie=True),
            },
            None,
        ),
        # §4.1: Vary: * never matches, so it is not stored.
        ({"response": fields(("Vary", "Accept, *"))}, "vary-star"),
        ({"response": fields(("Vary", "Accept-Encoding"))}, None),
    ],
)
def test_storable(case: dict[str, object], expected: str | None) -> None:
    assert why_not(**case) == expected  # type: ignore[arg-type]


# §3.5: requests with Authorization.
@pytest.mark.parametrize(
    ("directives", "expected"),
    [
        ("max-age=60", "authorization"),
        ("", "authorization"),
        ("public", None),
        ("must-revalidate, max-age=60", None),
        ("s-maxage=60", None),
    ],
)
def test_authorization_needs_the_response_to_allow_shared_caching(
    directives: str, expected: str | None
) -> None:
    response = fields(("Cache-Control", directives)) if directives else []
    request = fields(("Authorization", "Bearer secret"))
    assert why_not(response=response, request=request) == expected


def lifetime(*pairs: tuple[str, str], status: int = 200, options: Options | None = None) -> float:
    response = [DATE, *fields(*pairs)]
    return freshness_lifetime(status, response, cache_control(response), NOW, options or Options())


def date_from_now(seconds: float) -> str:
    return format_http_date(NOW + seconds).decode()


# §4.2.1: calculating freshness lifetime.
@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ((("Cache-Control", "max-age=60"),), 60),
        # s-maxage wins for a shared cache.
        ((("Cache-Control", "max-age=60, s-maxage=10"),), 10),
        # max-age wins over Expires.
        ((("Cache-Control", "max-age=60"), ("Expires", date_from_now(500))), 60),
        ((("Expires", date_from_now(500)),), 500),
        ((("Expires", date_from_now(-500)),), 0),
        # §5.3: an invalid Expires, "0" in particular, is in the past; so are two of them.
        ((("Expires", "0"),), 0),
        ((("Expires", date_from_now(500)), ("Expires", date_from_now(600))), 0),
        # Invalid or conflicting freshness directives: stale.
        ((("Cache-Control", "max-age=sixty"),), 0),
        ((("Cache-Control", "max-age=60, max-age=70"), ("Expires", date_from_now(500))), 0),
        # Nothing explicit and no Last-Modified: no heuristic either.
        ((), 0),
    ],
)
def test_freshness_lifetime(pairs: tuple[tuple[str, str], ...], expected: float) -> None:
    assert lifetime(*pairs) == pytest.approx(expected)


# §4.2.2: heuristic freshness.
@pytest.mark.parametrize(
    ("modified_ago", "status", "expected"),
    [
        (1000, 200, 100),  # 10% of the time since Last-Modified
        (10 * 86400 * 10, 200, HEURISTIC_CAP),  # capped
        (1000, 404, 100),
        (1000, 302, 0),  # not heuristically cacheable
        (-1000, 200, 0),  # modified in the future: no heuristic
    ],
)
def test_heuristic_freshness(modified_ago: float, status: int, expected: float) -> None:
    got = lifetime(("Last-Modified", date_from_now(-modified_ago)), status=status)
    assert got == pytest.approx(expected)


def test_default_ttl_replaces_the_heuristic_but_never_explicit_freshness() -> None:
    options = Options(default_ttl=30)
    assert lifetime(options=options) == 30
    assert lifetime(("Last-Modified", date_from_now(-1000)), options=options) == 30
    assert lifetime(("Cache-Control", "max-age=5"), options=options) == 5
    assert lifetime(("Expires", "0"), options=options) == 0


# §4.2.3: calculating age.
@pytest.mark.parametrize(
    ("date_offset", "age", "request_time", "response_time", "expected"),
    [
        (0, None, NOW, NOW, 0),
        # The apparent age: generated 10 s before it arrived.
        (-10, None, NOW, NOW, 10),
        # An upstream cache's Age plus the response delay (2 s in flight).
        (0, "100", NOW - 2, NOW, 102),
        # The larger of the two corrections.
        (-50, "20", NOW, NOW, 50),
        # A Date in the future (clock skew): never a negative age.
        (30, None, NOW, NOW, 0),
        # An unreadable Age is ignored.
        (0, "soon", NOW, NOW, 0),
    ],
)
def test_initial_age(
    date_offset: float,
    age: str | None,
    request_time: float,
    response_time: float,
    expected: float,
) -> None:
    headers: Headers = [(b"Date", format_http_date(NOW + date_offset))]
    if age is not None:
        headers.append((b"Age", age.encode()))
    assert initial_age(headers, request_time, response_time) == pytest.approx(expected)


def stored(directives: str = "max-age=60", *, age: float = 0, **defaults: float) -> Freshness:
    headers = fields(("Cache-Control", directives)) if directives else []
    headers.append(DATE)
    return Freshness.of(
        200,
        headers,
        response_cc=cache_control(headers),
        request_time=NOW - age,
        response_time=NOW - age,
        options=Options(),
        default_swr=defaults.get("swr", 0.0),
        default_sie=defaults.get("sie", 0.0),
    )


def use(freshness: Freshness, request: str = "", *, at: float = 0, pragma: bool = False) -> str:
    control = CacheControl.parse([request.encode()] if request else [])
    return freshness.usable(control, pragma, NOW + at)


# §4.2, §4.2.4, §5.2.1: using a stored response.
@pytest.mark.parametrize(
    ("directives", "request_directives", "at", "expected"),
    [
        ("max-age=60", "", 0, FRESH),
        ("max-age=60", "", 59, FRESH),
        ("max-age=60", "", 60, REVALIDATE),
        ("max-age=60", "", 61, REVALIDATE),
        # Response no-cache: always revalidated.
        ("max-age=60, no-cache", "", 0, REVALIDATE),
        # Request no-cache (§5.2.1.4) and max-age (§5.2.1.1).
        ("max-age=60", "no-cache", 0, REVALIDATE),
        ("max-age=60", "max-age=10", 5, FRESH),
        ("max-age=60", "max-age=10", 11, REVALIDATE),
        ("max-age=60", "max-age=0", 1, REVALIDATE),
        # min-fresh (§5.2.1.3): at least that much freshness left.
        ("max-age=60", "min-fresh=20", 30, FRESH),
        ("max-age=60", "min-fresh=20", 45, REVALIDATE),
        # max-stale (§5.2.1.2): stale accepted up to that much.
        ("max-age=60", "max-stale=30", 80, STALE),
        ("max-age=60", "max-stale=30", 95, REVALIDATE),
        ("max-age=60", "max-stale", 10**6, STALE),
        # ...but never against must-revalidate, proxy-revalidate or s-maxage (§4.2.4).
        ("max-age=60, must-revalidate", "max-stale", 80, REVALIDATE),
        ("max-age=60, proxy-revalidate", "max-stale", 80, REVALIDATE),
        ("s-maxage=60", "max-stale", 80, REVALIDATE),
        # RFC 5861 stale-while-revalidate.
        ("max-age=60, stale-while-revalidate=30", "", 80, STALE_WHILE_REVALIDATE),
        ("max-age=60, stale-while-revalidate=30", "", 91, REVALIDATE),
        ("max-age=60, stale-while-revalidate=30, must-revalidate", "", 80, REVALIDATE),
    ],
)
def test_usable(directives: str, request_directives: str, at: float, expected: str) -> None:
    assert use(stored(directives), request_directives, at=at) == expected


def test_pragma_no_cache_counts_like_request_no_cache() -> None:
    # RFC 9111 §5.4: Pragma: no-cache is honoured when the request has no Cache-Control.
    assert use(stored(), pragma=True) == REVALIDATE


def test_route_stale_windows_apply_when_the_response_gives_none() -> None:
    freshness = stored("max-age=60", swr=30, sie=300)
    assert use(freshness, at=80) == STALE_WHILE_REVALIDATE
    assert freshness.may_serve_on_error(CacheControl(), NOW + 300)
    assert not freshness.may_serve_on_error(CacheControl(), NOW + 361)
    # The response's own windows win over the route's.
    assert use(stored("max-age=60, stale-while-revalidate=5", swr=30), at=80) == REVALIDATE


@pytest.mark.parametrize(
    ("directives", "request_directives", "at", "expected"),
    [
        ("max-age=60, stale-if-error=100", "", 150, True),
        ("max-age=60, stale-if-error=100", "", 161, False),
        ("max-age=60", "", 61, False),
        ("max-age=60", "stale-if-error=100", 150, True),
        ("max-age=60, stale-if-error=100, must-revalidate", "", 70, False),
        ("max-age=60, stale-if-error=100, no-cache", "", 70, False),
    ],
)
def test_stale_if_error(
    directives: str, request_directives: str, at: float, expected: bool
) -> None:
    control = CacheControl.parse([request_directives.encode()] if request_directives else [])
    assert stored(directives).may_serve_on_error(control, NOW + at) is expected


def test_age_counts_from_the_initial_age() -> None:
    # Stored with an Age of 50 from an upstream cache: 10 s of a max-age of 60 are left.
    headers = [DATE, (b"Age", b"50"), (b"Cache-Control", b"max-age=60")]
    freshness = Freshness.of(
        200,
        headers,
        response_cc=cache_control(headers),
        request_time=NOW,
        response_time=NOW,
        options=Options(),
    )
    assert freshness.current_age(NOW + 5) == 55
    assert freshness.usable(CacheControl(), False, NOW + 9) == FRESH
    assert freshness.usable(CacheControl(), False, NOW + 11) == REVALIDATE


# §4.1: Vary.
def test_vary_names() -> None:
    headers = fields(("Vary", "Accept-Encoding, accept-language"), ("Vary", "ACCEPT-encoding, X-A"))
    assert vary_names(headers) == (b"accept-encoding", b"accept-language", b"x-a")
    assert vary_names([]) == ()


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        # Accept-* lists are normalised: whitespace, case, line splits.
        (fields(("Accept-Encoding", "gzip, br")), fields(("Accept-Encoding", "GZIP,br")), True),
        (
            fields(("Accept-Encoding", "gzip"), ("Accept-Encoding", "br")),
            fields(("Accept-Encoding", "gzip, br")),
            True,
        ),
        (fields(("Accept-Encoding", "gzip")), fields(("Accept-Encoding", "br")), False),
        # Absent and empty differ.
        ([], fields(("Accept-Encoding", "")), False),
        # Other fields are compared as sent: a case-sensitive value is never folded.
        (fields(("X-Tenant", "Acme")), fields(("X-Tenant", "acme")), False),
        (fields(("X-Tenant", "acme")), fields(("X-Tenant", "acme")), True),
        # A value cannot forge the separator of the next field.
        (
            fields(("X-A", "1\n+2")),
            fields(("X-A", "1"), ("X-B", "2")),
            False,
        ),
    ],
)
def test_secondary_keys(first: Headers, second: Headers, same: bool) -> None:
    names = (b"accept-encoding", b"x-tenant", b"x-a", b"x-b")
    assert (secondary_key(first, names) == secondary_key(second, names)) is same


@given(
    st.lists(st.tuples(st.sampled_from([b"x-a", b"x-b"]), st.binary(max_size=8)), max_size=4),
    st.lists(st.tuples(st.sampled_from([b"x-a", b"x-b"]), st.binary(max_size=8)), max_size=4),
)
def test_different_values_never_share_a_secondary_key(first: Headers, second: Headers) -> None:
    names = (b"x-a", b"x-b")

    def values(headers: Headers) -> tuple[bytes | None, ...]:
        joined = []
        for name in names:
            found = [v for k, v in headers if k == name]
            joined.append(b",".join(found).strip() if found else None)
        return tuple(joined)

    if values(first) != values(second):
        assert secondary_key(first, names) != secondary_key(second, names)


# §4.4: invalidation.
@pytest.mark.parametrize(
    ("method", "status", "location", "expected"),
    [
        ("POST", 201, "/items/7", [b"/items/7"]),
        ("PUT", 200, "http://api.example.com/items/7?x=1", [b"/items/7?x=1"]),
        ("DELETE", 204, "https://API.example.com/a", [b"/a"]),
        # Another origin's URI is never invalidated on this response's word.
        ("POST", 201, "http://other.example.com/items/7", []),
        ("POST", 201, "//other.example.com/x", []),
        # Only after success.
        ("POST", 500, "/items/7", []),
        ("POST", 404, "/items/7", []),
        # Safe methods invalidate nothing.
        ("GET", 200, "/items/7", []),
    ],
)
def test_invalidated_uris(method: str, status: int, location: str, expected: list[bytes]) -> None:
    headers = fields(("Location", location), ("Content-Location", location))
    assert invalidated_uris(method, status, headers, b"api.example.com") == expected


def test_accept_encoding_keys_by_the_negotiated_coding_when_the_route_compresses() -> None:
    names = (b"accept-encoding",)
    codings = ("br", "zstd", "gzip")

    def key(value: str | None) -> bytes:
        headers = [] if value is None else fields(("Accept-Encoding", value))
        return secondary_key(headers, names, codings)

    assert key("gzip, deflate, br") == key("br;q=1, gzip;q=0.5") == key("*")
    assert key("gzip") == key("gzip, deflate") != key("br")
    assert key(None) == key("deflate") != key("gzip")
    # Without compression the field counts as sent (normalised).
    assert secondary_key(fields(("Accept-Encoding", "gzip, br")), names) != secondary_key(
        fields(("Accept-Encoding", "br")), names
    )
