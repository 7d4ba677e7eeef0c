"""Route matching, shadowed-route detection and prefix stripping (gateway.routing)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.model import HeaderMatch, RouteConfig, RouteMatch
from gateway.messages import Headers
from gateway.routing import Router, normalize_route_host, shadowed_routes, strip_prefix


def route(
    name: str,
    *,
    host: str | None = None,
    prefix: str = "/",
    methods: Sequence[str] | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> RouteConfig:
    return RouteConfig(
        name=name,
        upstream="u",
        match=RouteMatch(
            host=host,
            path_prefix=prefix,
            methods=None if methods is None else frozenset(methods),
            headers=tuple(HeaderMatch(n, v) for n, v in headers),
        ),
    )


def chosen(
    routes: Sequence[RouteConfig],
    host: str = "",
    path: str = "/",
    method: str = "GET",
    headers: Headers | None = None,
) -> str | None:
    found = Router(routes).match(host, path, method, headers or [])
    return None if found is None else found.name


# --- path prefixes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "path", "matches"),
    [
        ("/", "/", True),
        ("/", "/anything/at/all", True),
        ("/", "*", True),  # OPTIONS * (RFC 9112 §3.2.4) still reaches the catch-all
        ("/users", "/users", True),
        ("/users", "/users/", True),
        ("/users", "/users/7", True),
        ("/users", "/users/7/orders", True),
        ("/users", "/users//7", True),
        ("/users", "/usersx", False),
        ("/users", "/users.json", False),
        ("/users", "/user", False),
        ("/users", "/", False),
        ("/users", "/Users", False),  # paths are case-sensitive (RFC 3986 §6.2.2.1)
        ("/users", "/%75sers", False),  # compared as received, never decoded
        ("/users", "*", False),
        ("/api/", "/api/", True),
        ("/api/", "/api/x", True),
        ("/api/", "/api//x", True),
        ("/api/", "/api", False),  # decision: a trailing slash in the prefix is required
        ("/api/", "/apix", False),
        ("/api/v1", "/api/v1", True),
        ("/api/v1", "/api/v1/x", True),
        ("/api/v1", "/api/v10", False),
        ("/api/v1", "/api", False),
    ],
)
def test_path_prefix(prefix: str, path: str, matches: bool) -> None:
    assert (chosen([route("r", prefix=prefix)], path=path) == "r") is matches


# --- hosts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route_host", "request_host", "matches"),
    [
        (None, "", True),
        (None, "api.example.com", True),
        ("api.example.com", "api.example.com", True),
        ("API.Example.COM", "api.example.com", True),  # config normalised at compile time
        ("api.example.com.", "api.example.com", True),  # absolute name (RFC 1034 §3.1)
        ("api.example.com", "www.example.com", False),
        ("api.example.com", "", False),
        ("api.example.com", "x.api.example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.Example.com", "a.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.example.com", "aexample.com", False),
        ("*.example.com", "a.example.org", False),
        ("*.example.com", "", False),
        ("[::1]", "[::1]", True),
        ("[0:0::1]", "[::1]", True),  # IPv6 literals compared in canonical form
        ("::1", "[::1]", True),
        ("10.0.0.1", "10.0.0.1", True),
    ],
)
def test_host(route_host: str | None, request_host: str, matches: bool) -> None:
    routes = [route("r", host=route_host)]
    assert (chosen(routes, host=request_host) == "r") is matches


@pytest.mark.parametrize(
    ("configured", "normalized"),
    [
        ("API.example.com", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("*.Example.com", "*.example.com"),
        ("[2001:DB8:0::1]", "[2001:db8::1]"),
        ("2001:db8::1", "[2001:db8::1]"),
        ("[not-ipv6:x]", "[not-ipv6:x]"),
    ],
)
def test_normalize_route_host(configured: str, normalized: str) -> None:
    assert normalize_route_host(configured) == normalized


# --- methods and headers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("methods", "method", "matches"),
    [
        (None, "GET", True),
        (None, "PURGE", True),
        (["GET", "POST"], "GET", True),
        (["GET", "POST"], "POST", True),
        (["GET", "POST"], "DELETE", False),
        (["get"], "GET", True),  # config spelling upper-cased
        (["GET"], "get", False),  # methods are case-sensitive (RFC 9110 §9.1)
        ([], "GET", False),
    ],
)
def test_methods(methods: list[str] | None, method: str, matches: bool) -> None:
    assert (chosen([route("r", methods=methods)], method=method) == "r") is matches


@pytest.mark.parametrize(
    ("conditions", "headers", "matches"),
    [
        ([], [], True),
        ([("x-tenant", "a")], [(b"X-Tenant", b"a")], True),
        ([("x-tenant", "a")], [(b"x-tenant", b"a")], True),
        ([("x-tenant", "a")], [(b"X-TENANT", b"a")], True),
        ([("X-Tenant", "a")], [(b"x-tenant", b"a")], True),
        ([("x-tenant", "a")], [(b"X-Tenant", b"A")], False),  # values compared exactly
        ([("x-tenant", "a")], [(b"X-Tenant", b"a ")], False),
        ([("x-tenant", "a")], [(b"X-Tenant", b"ab")], False),
        ([("x-tenant", "a")], [], False),
        ([("x-tenant", "a")], [(b"X-Other", b"a")], False),
        ([("x-tenant", "a")], [(b"X-Tenant", b"b"), (b"X-Tenant", b"a")], True),  # any line
        ([("x-tenant", "a"), ("x-beta", "1")], [(b"X-Tenant", b"a")], False),
        ([("x-tenant", "a"), ("x-beta", "1")], [(b"x-beta", b"1"), (b"X-Tenant", b"a")], True),
        ([("x-name", "café")], [(b"X-Name", "café".encode())], True),  # config value as UTF-8
    ],
)
def test_headers(conditions: list[tuple[str, str]], headers: Headers, matches: bool) -> None:
    assert (chosen([route("r", headers=conditions)], headers=headers) == "r") is matches


# --- precedence ------------------------------------------------------------------------------

PRECEDENCE_ROUTES = [
    route("any-root"),
    route("any-users", prefix="/users"),
    route("any-users-admin", prefix="/users/admin"),
    route("wild-root", host="*.example.com"),
    route("wild-api", host="*.api.example.com"),
    route("wild-users", host="*.example.com", prefix="/users"),
    route("exact-root", host="api.example.com"),
    route("exact-users-get", host="api.example.com", prefix="/users", methods=["GET"]),
    route("exact-users-beta", host="api.example.com", prefix="/users", headers=[("x-beta", "1")]),
    route("exact-users", host="api.example.com", prefix="/users"),
    route("exact-users-dup", host="api.example.com", prefix="/users"),
]


@pytest.mark.parametrize(
    ("host", "path", "method", "headers", "expected"),
    [
        # An exact host beats everything else, even with a shorter prefix.
        ("api.example.com", "/users/admin/x", "GET", [], "exact-users-get"),
        ("api.example.com", "/other", "GET", [], "exact-root"),
        # Within a host, methods and headers filter in file order among equal prefixes.
        ("api.example.com", "/users/7", "POST", [], "exact-users"),
        ("api.example.com", "/users/7", "POST", [(b"X-Beta", b"1")], "exact-users-beta"),
        ("api.example.com", "/users/7", "GET", [(b"X-Beta", b"1")], "exact-users-get"),
        # Wildcards: the longer suffix first, then the longest prefix in that suffix.
        ("v1.api.example.com", "/users", "GET", [], "wild-api"),
        ("www.example.com", "/users/1", "GET", [], "wild-users"),
        ("www.example.com", "/usersx", "GET", [], "wild-root"),
        ("a.b.example.com", "/", "GET", [], "wild-root"),
        # No host route matches: host-less routes by prefix length.
        ("example.com", "/users/admin/1", "GET", [], "any-users-admin"),
        ("example.com", "/users/adminx", "GET", [], "any-users"),
        ("", "/users", "GET", [], "any-users"),
        ("other.org", "/x", "GET", [], "any-root"),
    ],
)
def test_precedence(host: str, path: str, method: str, headers: Headers, expected: str) -> None:
    assert chosen(PRECEDENCE_ROUTES, host, path, method, headers) == expected


def test_filter_falls_through_to_less_specific_host() -> None:
    routes = [
        route("fallback"),
        route("wild-post", host="*.example.com", methods=["POST"]),
        route("exact-post", host="api.example.com", prefix="/x", methods=["POST"]),
    ]
    assert chosen(routes, "api.example.com", "/x", "POST") == "exact-post"
    assert chosen(routes, "api.example.com", "/x", "GET") == "fallback"
    assert chosen(routes, "www.example.com", "/x", "POST") == "wild-post"


def test_no_route() -> None:
    routes = [route("r", host="api.example.com", prefix="/users")]
    assert chosen(routes, "api.example.com", "/orders") is None
    assert chosen(routes, "other.org", "/users") is None
    assert chosen([], "api.example.com", "/") is None


def test_match_returns_the_config_object() -> None:
    routes = [route("a"), route("b", prefix="/b")]
    assert Router(routes).match("", "/b/1", "GET", []) is routes[1]


# --- shadowed routes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ([route("a"), route("b")], [(1, 0)]),  # identical duplicates
        ([route("a"), route("b"), route("c")], [(1, 0), (2, 0)]),
        ([route("a", prefix="/x"), route("b", prefix="/x", methods=["GET"])], [(1, 0)]),
        ([route("a", prefix="/x", methods=["GET"]), route("b", prefix="/x")], []),
        (
            [route("a", methods=["GET", "POST"]), route("b", methods=["post"])],
            [(1, 0)],
        ),
        ([route("a", methods=["GET"]), route("b", methods=["POST"])], []),
        ([route("a", methods=[]), route("b", methods=["GET"])], []),
        ([route("a"), route("b", headers=[("x-a", "1")])], [(1, 0)]),
        ([route("a", headers=[("x-a", "1")]), route("b")], []),
        ([route("a", headers=[("X-A", "1")]), route("b", headers=[("x-a", "1")])], [(1, 0)]),
        ([route("a", headers=[("x-a", "1")]), route("b", headers=[("x-a", "2")])], []),
        (
            [
                route("a", headers=[("x-a", "1")]),
                route("b", headers=[("x-b", "2"), ("x-a", "1")]),
            ],
            [(1, 0)],
        ),
        # Hosts: only the same (normalised) host condition can shadow.
        ([route("a", host="API.example.com"), route("b", host="api.example.com")], [(1, 0)]),
        ([route("a", host="*.example.com"), route("b", host="*.EXAMPLE.com")], [(1, 0)]),
        ([route("a", host="*.example.com"), route("b", host="api.example.com")], []),
        ([route("a", host="*.com"), route("b", host="*.example.com")], []),
        ([route("a"), route("b", host="api.example.com")], []),
        ([route("a", host="api.example.com"), route("b")], []),
        # Paths: a shorter prefix covers but loses precedence; a longer one does not cover.
        ([route("a", prefix="/users"), route("b", prefix="/users/admin")], []),
        ([route("a", prefix="/users/admin"), route("b", prefix="/users")], []),
        ([route("a", prefix="/api"), route("b", prefix="/api/")], []),
        ([route("a", prefix="/api/"), route("b", prefix="/api")], []),
        ([route("a", prefix="/users"), route("b", prefix="/users")], [(1, 0)]),
        # The later route never shadows an earlier one; the first shadowing route is named.
        ([route("a", prefix="/x"), route("b", prefix="/y"), route("c", prefix="/x")], [(2, 0)]),
        (
            [
                route("a", methods=["GET"]),
                route("b"),
                route("c", methods=["GET"]),
            ],
            [(2, 0)],
        ),
        ([route("b", methods=["GET"]), route("a"), route("c")], [(2, 1)]),
    ],
)
def test_shadowed_routes(routes: list[RouteConfig], expected: list[tuple[int, int]]) -> None:
    assert shadowed_routes(routes) == expected


# --- strip_prefix --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "prefix", "expected"),
    [
        (b"/users/7?a=1", "/users", b"/7?a=1"),
        (b"/users", "/users", b"/"),
        (b"/users/", "/users", b"/"),
        (b"/users?x=1", "/users", b"/?x=1"),
        (b"/users/7/orders", "/users", b"/7/orders"),
        (b"/users//7", "/users", b"//7"),
        (b"/users/%2F7?q=%20+x", "/users", b"/%2F7?q=%20+x"),  # kept byte for byte
        (b"/api/x", "/api/", b"/x"),
        (b"/api/", "/api/", b"/"),
        (b"/api/?q", "/api/", b"/?q"),
        (b"/", "/", b"/"),
        (b"/a/b?c", "/", b"/a/b?c"),
        (b"/?q", "/", b"/?q"),
        (b"/usersx", "/users", b"/usersx"),  # not a match: unchanged
        (b"/other", "/users", b"/other"),
        (b"*", "/", b"*"),
        (b"/api/v1/items?x=/api/v1", "/api/v1", b"/items?x=/api/v1"),
    ],
)
def test_strip_prefix(target: bytes, prefix: str, expected: bytes) -> None:
    assert strip_prefix(target, prefix) == expected


# --- properties ------------------------------------------------------------------------------

SEGMENT = st.text(
    alphabet="abcxyz019-._~%", min_size=1, max_size=6
)  # no "/" or "?": one path segment
NON_SLASH_PREFIX = st.lists(SEGMENT, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s))
PREFIX = st.one_of(st.just("/"), NON_SLASH_PREFIX, NON_SLASH_PREFIX.map(lambda p: p + "/"))


@given(prefix=PREFIX, extension=st.lists(SEGMENT, max_size=3), trailing=st.booleans())
def test_prefix_and_segment_extensions_match(
    prefix: str, extension: list[str], trailing: bool
) -> None:
    router = Router([route("r", prefix=prefix)])
    path = prefix.rstrip("/") + "".join("/" + s for s in extension) + ("/" if trailing else "")
    if prefix.endswith("/") and not path.startswith(prefix):
        path = prefix  # "/api/" itself; "/api" is deliberately not below "/api/"
    assert router.match("", path or "/", "GET", []) is not None
    assert router.match("", prefix, "GET", []) is not None


@given(prefix=NON_SLASH_PREFIX, extension=SEGMENT)
def test_non_segment_extension_does_not_match(prefix: str, extension: str) -> None:
    router = Router([route("r", prefix=prefix)])
    assert router.match("", prefix + extension, "GET", []) is None
    assert router.match("", prefix + extension + "/x", "GET", []) is None
    if prefix != "/":
        assert Router([route("r", prefix=prefix + "/")]).match("", prefix, "GET", []) is None


# A small world so that random routes and requests collide often.
ROUTE_HOSTS = [
    None,
    "a.example.com",
    "A.Example.com",
    "b.example.com",
    "*.example.com",
    "*.a.example.com",
    "*.com",
]
ROUTE_PREFIXES = ["/", "/a", "/a/", "/a/b", "/ab", "/b", "/a/b/"]
ROUTE_METHODS = [None, ["GET"], ["GET", "POST"], ["POST"], ["get", "DELETE"]]
HEADER_CONDITIONS = [("x-a", "1"), ("x-b", "2"), ("X-A", "2")]
REQUEST_HOSTS = [
    "",
    "a.example.com",
    "b.example.com",
    "x.a.example.com",
    "example.com",
    "z.com",
    "a.example.org",
]
REQUEST_PATHS = ["/", "/a", "/a/", "/a/b", "/a/bc", "/a/b/", "/a/b/c", "/ab", "/b/c", "/c", "*"]
REQUEST_HEADER_FIELDS = [
    (b"x-a", b"1"),
    (b"X-A", b"2"),
    (b"x-B", b"2"),
    (b"X-B", b"1"),
    (b"x-c", b"1"),
]

ROUTES = st.lists(
    st.tuples(
        st.sampled_from(ROUTE_HOSTS),
        st.sampled_from(ROUTE_PREFIXES),
        st.sampled_from(ROUTE_METHODS),
        st.lists(st.sampled_from(HEADER_CONDITIONS), max_size=2, unique=True),
    ),
    max_size=10,
).map(
    lambda specs: [
        route(f"r{i}", host=h, prefix=p, methods=m, headers=hs)
        for i, (h, p, m, hs) in enumerate(specs)
    ]
)
REQUESTS = st.tuples(
    st.sampled_from(REQUEST_HOSTS),
    st.sampled_from(REQUEST_PATHS),
    st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
    st.lists(st.sampled_from(REQUEST_HEADER_FIELDS), max_size=3),
)


def reference_match(
    routes: Sequence[RouteConfig], host: str, path: str, method: str, headers: Headers
) -> RouteConfig | None:
    """DESIGN.md §3 precedence spelled out naively: sort every candidate, take the first."""

    def host_rank(pattern: str | None) -> tuple[int, int] | None:
        if pattern is None:
            return (2, 0)
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            suffix = pattern[1:]
            ok = host.endswith(suffix) and len(host) > len(suffix)
            return (1, -len(suffix)) if ok else None
        return (0, 0) if pattern == host else None

    def path_ok(prefix: str) -> bool:
        if prefix == "/":
            return True
        if prefix.endswith("/"):
            return path.startswith(prefix)
        return path == prefix or path.startswith(prefix + "/")

    def filters_ok(match: RouteMatch) -> bool:
        if match.methods is not None and method not in {m.upper() for m in match.methods}:
            return False
        fields = {(n.lower(), v) for n, v in headers}
        return all((h.name.lower().encode(), h.value.encode()) in fields for h in match.headers)

    candidates = []
    for index, r in enumerate(routes):
        rank = host_rank(r.match.host)
        if rank is not None and path_ok(r.match.path_prefix):
            candidates.append((rank, -len(r.match.path_prefix), index, r))
    candidates.sort(key=lambda c: c[:3])
    for *_, r in candidates:
        if filters_ok(r.match):
            return r
    return None


@settings(max_examples=300)
@given(routes=ROUTES, requests=st.lists(REQUESTS, min_size=1, max_size=10))
def test_router_agrees_with_reference(
    routes: list[RouteConfig], requests: list[tuple[str, str, str, Headers]]
) -> None:
    router = Router(routes)
    for host, path, method, headers in requests:
        assert router.match(host, path, method, headers) is reference_match(
            routes, host, path, method, headers
        )


@given(
    specs=st.lists(
        st.tuples(
            st.sampled_from(ROUTE_HOSTS[:1] + ROUTE_HOSTS[2:]), st.sampled_from(ROUTE_PREFIXES)
        ),
        unique=True,
        max_size=10,
    ),
    data=st.data(),
    request=REQUESTS,
)
def test_precedence_is_independent_of_file_order(
    specs: list[tuple[str | None, str]], data: st.DataObject, request: tuple[str, str, str, Headers]
) -> None:
    # Without ties (distinct host condition and prefix, no filters) file order cannot matter.
    routes = [route(f"r{i}", host=h, prefix=p) for i, (h, p) in enumerate(specs)]
    shuffled = data.draw(st.permutations(routes))
    host, path, method, headers = request
    assert chosen(routes, host, path, method, headers) == chosen(
        shuffled, host, path, method, headers
    )


@given(data=st.data(), request=REQUESTS)
def test_ties_go_to_file_order(data: st.DataObject, request: tuple[str, str, str, Headers]) -> None:
    host_pattern = data.draw(st.sampled_from(ROUTE_HOSTS))
    prefix = data.draw(st.sampled_from(ROUTE_PREFIXES))
    routes = [route(f"r{i}", host=host_pattern, prefix=prefix) for i in range(3)]
    host, path, method, headers = request
    assert chosen(routes, host, path, method, headers) in (None, "r0")


@settings(max_examples=300)
@given(routes=ROUTES, requests=st.lists(REQUESTS, min_size=1, max_size=20))
def test_shadowed_routes_are_never_chosen(
    routes: list[RouteConfig], requests: list[tuple[str, str, str, Headers]]
) -> None:
    router = Router(routes)
    shadowed = {id(routes[b]) for b, _ in shadowed_routes(routes)}
    for host, path, method, headers in requests:
        found = router.match(host, path, method, headers)
        assert found is None or id(found) not in shadowed


@settings(max_examples=300)
@given(routes=ROUTES, requests=st.lists(REQUESTS, min_size=1, max_size=10))
def test_match_is_the_first_applicable_route_in_precedence_order(
    routes: list[RouteConfig], requests: list[tuple[str, str, str, Headers]]
) -> None:
    router = Router(routes)
    order = router.in_precedence_order()
    assert sorted(map(id, order)) == sorted(map(id, routes))
    for host, path, method, headers in requests:
        first = next(
            (r for r in order if reference_match([r], host, path, method, headers) is r), None
        )
        assert router.match(host, path, method, headers) is first


def test_precedence_order_example() -> None:
    routes = [
        route("all"),
        route("users", prefix="/users"),
        route("wild", host="*.example.com"),
        route("wild-api", host="*.api.example.com", prefix="/v1"),
        route("b-root", host="b.example.com"),
        route("a-users", host="a.example.com", prefix="/users"),
        route("a-users-get", host="A.example.com", prefix="/users", methods=["GET"]),
        route("a-user", host="a.example.com", prefix="/user"),
        route("users-v1", prefix="/users/v1"),
    ]
    order = [r.name for r in Router(routes).in_precedence_order()]
    assert order == [
        "a-users",
        "a-users-get",
        "a-user",
        "b-root",
        "wild-api",
        "wild",
        "users-v1",
        "users",
        "all",
    ]


@given(
    specs=st.lists(
        st.tuples(
            st.sampled_from(ROUTE_HOSTS[:1] + ROUTE_HOSTS[2:]), st.sampled_from(ROUTE_PREFIXES)
        ),
        unique=True,
        max_size=10,
    ),
    data=st.data(),
)
def test_precedence_order_is_independent_of_file_order(
    specs: list[tuple[str | None, str]], data: st.DataObject
) -> None:
    routes = [route(f"r{i}", host=h, prefix=p) for i, (h, p) in enumerate(specs)]
    shuffled = data.draw(st.permutations(routes))
    assert Router(routes).in_precedence_order() == Router(shuffled).in_precedence_order()


@given(routes=ROUTES)
def test_shadowing_route_precedes_the_shadowed(routes: list[RouteConfig]) -> None:
    for b, a in shadowed_routes(routes):
        assert a < b
        assert routes[a].match.path_prefix == routes[b].match.path_prefix


@given(
    prefix=PREFIX,
    rest=st.lists(SEGMENT, max_size=3),
    query=st.one_of(st.none(), st.binary(max_size=12).filter(lambda q: b"#" not in q)),
)
def test_strip_prefix_properties(prefix: str, rest: list[str], query: bytes | None) -> None:
    path = (prefix.rstrip("/") + "".join("/" + s for s in rest)) or "/"
    if prefix.endswith("/") and not path.startswith(prefix):
        path = prefix
    target = path.encode() + (b"" if query is None else b"?" + query)
    assert Router([route("r", prefix=prefix)]).match("", path, "GET", []) is not None
    stripped = strip_prefix(target, prefix)
    assert stripped.startswith(b"/")
    # The query survives byte for byte.
    if query is not None:
        assert stripped.endswith(b"?" + query)
    # Stripping "/" changes nothing; otherwise the prefix plus the result rebuilds the target.
    if prefix == "/":
        assert stripped == target
    elif stripped.startswith(b"/") and target.startswith(prefix.rstrip("/").encode() + b"/"):
        assert prefix.rstrip("/").encode() + stripped == target
