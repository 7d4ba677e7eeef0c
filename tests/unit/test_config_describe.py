"""Views of a config (gateway.config.describe): route table, reload diff, /config view, hash."""

from __future__ import annotations

import copy
import json
import random
import re
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.config.describe import (
    config_hash,
    diff_configs,
    format_duration,
    format_size,
    redacted_view,
    restart_only_changes,
    route_table,
)
from gateway.config.loader import parse_config
from gateway.config.model import (
    KIB,
    MIB,
    GatewayConfig,
    HeaderMatch,
    ListenAddress,
    Rate,
    RateLimitConfig,
    RedisConfig,
    RouteConfig,
    RouteMatch,
    Target,
    TlsConfig,
    UpstreamConfig,
)
from gateway.config.units import parse_duration, parse_size
from gateway.errors import ConfigError
from tests.unit.tls_files import write_certificate

TOKEN = "s3cr3t-admin-token-0123"
HEADER_SECRET = "hunter2-header-secret"


def base_doc() -> dict[str, Any]:
    return {
        "server": {"listen": "0.0.0.0:8080"},
        "upstreams": {
            "users": {"targets": ["http://10.0.0.5:9000", "http://10.0.0.6:9000"]},
            "billing": {"targets": ["https://billing.internal"]},
        },
        "routes": [
            {
                "name": "users",
                "upstream": "users",
                "match": {
                    "host": "api.example.com",
                    "path_prefix": "/users",
                    "methods": ["GET", "POST"],
                },
            },
            {
                "name": "billing",
                "upstream": "billing",
                "match": {"host": "*.example.com", "path_prefix": "/billing"},
                "strip_prefix": True,
            },
            {"name": "default", "upstream": "users"},
        ],
    }


def load(doc: object, environ: dict[str, str] | None = None) -> GatewayConfig:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    return parse_config(text, {} if environ is None else environ)


# --- Editing a document -----------------------------------------------------------------------

Edit = Callable[[dict[str, Any]], None]


def _walk(doc: Any, path: str) -> tuple[Any, str | int]:
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    return node, int(last) if isinstance(node, list) else last


def put(path: str, value: object) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        node, key = _walk(doc, path)
        node[key] = value

    return edit


def drop(path: str) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        node, key = _walk(doc, path)
        del node[key]

    return edit


def add_route(route: dict[str, Any]) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        doc["routes"].append(route)

    return edit


def reverse(path: str) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        node, key = _walk(doc, path)
        value = node[key]
        node[key] = dict(reversed(value.items())) if isinstance(value, dict) else value[::-1]

    return edit


def listeners(*items: dict[str, Any]) -> Edit:
    return put("server.listeners", list(items))


def edited(*edits: Edit) -> dict[str, Any]:
    doc = base_doc()
    for edit in edits:
        edit(doc)
    return doc


# --- route_table ------------------------------------------------------------------------------


def test_route_table() -> None:
    doc = edited(
        put("routes.0.match.headers", {"X-Env": "prod", "X-Api-Token": HEADER_SECRET}),
        put("upstreams.billing.pool", {"max_connections": 8}),
        put("upstreams.billing.timeouts", {"read": "90s", "connect": "250ms"}),
    )
    assert route_table(load(doc)) == [
        "#  route    host             path prefix  methods   headers"
        "                               upstream  strip_prefix",
        "1  users    api.example.com  /users       GET,POST  x-env: prod, x-api-token: <redacted>"
        "  users     false",
        "2  billing  *.example.com    /billing     *         -"
        "                                     billing   true",
        "3  default  *                /            *         -"
        "                                     users     false",
        "",
        "upstream  targets                                     balance      pool"
        "                                             timeouts",
        "users     http://10.0.0.5:9000, http://10.0.0.6:9000  round_robin"
        "  max_connections=256 max_idle=64 idle_timeout=4s  connect=2s response=30s read=1m",
        "billing   https://billing.internal                    round_robin"
        "  max_connections=8 max_idle=8 idle_timeout=4s     connect=250ms response=30s read=90s",
    ]


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        # Written least specific first: the table shows the order the router tries them.
        (
            [
                ("all", None, "/", None),
                ("users", None, "/users", None),
                ("wild", "*.example.com", "/", None),
                ("wild-api", "*.api.example.com", "/v1", None),
                ("b-root", "b.example.com", "/", None),
                ("a-users-get", "a.example.com", "/users", ["GET"]),
                ("a-users", "a.example.com", "/users", None),
                ("a-user", "a.example.com", "/user", None),
                ("users-v1", None, "/users/v1", None),
            ],
            [
                "a-users-get",
                "a-users",
                "a-user",
                "b-root",
                "wild-api",
                "wild",
                "users-v1",
                "users",
                "all",
            ],
        ),
        # Ties (same host and prefix) keep the file order.
        (
            [("post", None, "/", ["POST"]), ("get", None, "/", ["GET"]), ("all", None, "/", None)],
            ["post", "get", "all"],
        ),
    ],
)
def test_route_table_is_in_precedence_order(
    routes: list[tuple[str, str | None, str, list[str] | None]], expected: list[str]
) -> None:
    doc = base_doc()
    doc["routes"] = [
        {
            "name": name,
            "upstream": "users",
            "match": {"host": host, "path_prefix": prefix, "methods": methods},
        }
        for name, host, prefix, methods in routes
    ]
    lines = route_table(load(doc))
    body = lines[1 : lines.index("")]
    assert [line.split()[0] for line in body] == [str(i) for i in range(1, len(expected) + 1)]
    assert [line.split()[1] for line in body] == expected
    view = redacted_view(load(doc))["route_table"]
    assert isinstance(view, list)
    assert [row["route"] for row in view] == expected


def test_route_table_columns_line_up() -> None:
    lines = route_table(load(base_doc()))
    header = lines[0]
    starts = [match.start() for match in re.finditer(r"(?<=  )\S", header)]
    for line in lines[1 : lines.index("")]:
        assert all(line[start - 2 : start] == "  " and line[start] != " " for start in starts)


# --- Units ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250ms"),
        (0.1, "100ms"),
        (1.5, "1500ms"),
        (1.0, "1s"),
        (30.0, "30s"),
        (60.0, "1m"),
        (90.0, "90s"),
        (120.0, "2m"),
        (3600.0, "1h"),
        (5400.0, "90m"),
        (0.0005, "0.0005s"),
        (4, "4s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (1, "1B"),
        (1024, "1KiB"),
        (1536, "1536B"),
        (8190, "8190B"),
        (10 * MIB, "10MiB"),
        (1024**3, "1GiB"),
        (1000, "1KB"),
        (10**9, "1GB"),
        (2048000, "2000KiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@given(
    number=st.one_of(
        st.integers(min_value=1, max_value=10**7).map(str),
        st.decimals(min_value="0.001", max_value="100000", places=3).map(str),
    ),
    unit=st.sampled_from(["ms", "s", "m", "h"]),
)
def test_durations_read_back_the_same(number: str, unit: str) -> None:
    seconds = parse_duration(number + unit)
    assume(seconds > 0)
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=1, max_value=10**13))
def test_sizes_read_back_the_same(size: int) -> None:
    assert parse_size(format_size(size)) == size


# --- diff_configs -----------------------------------------------------------------------------

DIFF_CASES: list[tuple[str, list[Edit], list[str]]] = [
    ("nothing", [], []),
    # Top-level sections, walked field by field.
    (
        "server-listen",
        [put("server.listen", "0.0.0.0:8081")],
        ["~ server.listeners[0].listen 0.0.0.0:8080 -> 0.0.0.0:8081 (needs restart)"],
    ),
    # server.listen is one plain listener: written as a list, nothing changes.
    ("listen-as-listeners", [drop("server.listen"), listeners({"listen": ":8080"})], []),
    (
        "listener-settings",
        [
            drop("server.listen"),
            listeners(
                {
                    "listen": ":8080",
                    "http2": {"max_concurrent_streams": 50, "reset_budget": {"per_second": 5}},
                    "proxy_protocol": True,
                }
            ),
            put("server.trusted_proxies", ["10.0.0.0/8"]),
        ],
        # Applied on a reload: the addresses stay the same.
        [
            "~ server.listeners[0].http2.max_concurrent_streams 100 -> 50",
            "~ server.listeners[0].http2.reset_budget.per_second 20 -> 5",
            "~ server.listeners[0].proxy_protocol false -> true",
            "~ server.trusted_proxies [] -> [10.0.0.0/8]",
        ],
    ),
    (
        "listener-added",
        [drop("server.listen"), listeners({"listen": ":8080"}, {"listen": "127.0.0.1:8081"})],
        [
            "~ server.listeners[1] unset -> {listen: 127.0.0.1:8081, tls: unset, http2:"
            " {enabled: true, h2c: false, max_concurrent_streams: 100, max_header_list_size:"
            " 64KiB, max_frame_size: 16KiB, initial_window_size: 64KiB,"
            " max_requests_per_connection: 1000, reset_budget: {burst: 200, per_second: 20}},"
            " proxy_protocol: false, redirect_to_https: false} (needs restart)"
        ],
    ),
    (
        "listener-moved-and-changed",
        # The supervisor keeps the old listeners whole when an address changes, so the h2c
        # change is not applied either.
        [drop("server.listen"), listeners({"listen": ":8081", "http2": {"h2c": True}})],
        [
            "~ server.listeners[0].listen 0.0.0.0:8080 -> 0.0.0.0:8081 (needs restart)",
            "~ server.listeners[0].http2.h2c false -> true (needs restart)",
        ],
    ),
    (
        "server-workers",
        [put("server.workers", "auto")],
        ["~ server.workers 1 -> auto (needs restart)"],
    ),
    (
        "admin-listen",
        [put("admin.listen", "[::1]:9901")],
        ["~ admin.listen 127.0.0.1:9901 -> [::1]:9901 (needs restart)"],
    ),
    (
        "admin-token",
        [put("admin.token", TOKEN)],
        ["~ admin.token unset -> <redacted> (needs restart)"],
    ),
    (
        "max-body",
        [put("server.limits.max_body", "20MiB")],
        ["~ server.limits.max_body 10MiB -> 20MiB"],
    ),
    ("max-line", [put("server.limits.max_line", "4KB")], ["~ server.limits.max_line 8190B -> 4KB"]),
    (
        "max-headers",
        [put("server.limits.max_headers", 50)],
        ["~ server.limits.max_headers 100 -> 50"],
    ),
    (
        "keepalive",
        [put("server.timeouts.keepalive", "10s")],
        ["~ server.timeouts.keepalive 1m -> 10s"],
    ),
    ("same-value-other-spelling", [put("server.timeouts.keepalive", "60000ms")], []),
    (
        "trusted-proxies",
        [put("server.trusted_proxies", ["10.0.0.0/8", "192.0.2.7"])],
        ["~ server.trusted_proxies [] -> [10.0.0.0/8, 192.0.2.7/32]"],
    ),
    ("via-name", [put("server.via_name", "edge")], ["~ server.via_name gateway -> edge"]),
    (
        "logging-level",
        [put("logging.level", "debug")],
        ["~ logging.level info -> debug (needs restart)"],
    ),
    ("access-log", [put("logging.access_log", False)], ["~ logging.access_log true -> false"]),
    # Upstreams, by name.
    (
        "upstream-added",
        [put("upstreams.users-v2", {"targets": ["http://10.0.0.7:9000", "http://[fd00::7]"]})],
        ["+ upstream users-v2 (http://10.0.0.7:9000, http://[fd00::7])"],
    ),
    (
        "upstream-removed",
        [drop("upstreams.billing"), drop("routes.1")],
        ["- upstream billing", "- route billing"],
    ),
    (
        "targets",
        [put("upstreams.users.targets", ["http://10.0.0.6:9000", "http://10.0.0.8:9000"])],
        ["~ upstream users: targets + http://10.0.0.8:9000, - http://10.0.0.5:9000"],
    ),
    (
        "targets-order",
        [reverse("upstreams.users.targets")],
        [
            "~ upstream users: targets [http://10.0.0.5:9000, http://10.0.0.6:9000]"
            " -> [http://10.0.0.6:9000, http://10.0.0.5:9000]"
        ],
    ),
    (
        "pool",
        [put("upstreams.users.pool", {"max_connections": 512, "idle_timeout": "2s"})],
        [
            "~ upstream users: pool.max_connections 256 -> 512",
            "~ upstream users: pool.idle_timeout 4s -> 2s",
        ],
    ),
    (
        "upstream-timeouts",
        [
            put("upstreams.billing.timeouts", {"read": "90s"}),
            put("upstreams.billing.dns_ttl", "5s"),
        ],
        [
            "~ upstream billing: timeouts.read 1m -> 90s",
            "~ upstream billing: dns_ttl 30s -> 5s",
        ],
    ),
    (
        "tls-and-host-header",
        [
            put("upstreams.billing.tls", {"verify": False}),
            put("upstreams.billing.host_header", "billing.internal"),
        ],
        [
            "~ upstream billing: tls.verify true -> false",
            "~ upstream billing: host_header preserve -> billing.internal",
        ],
    ),
    ("upstreams-reordered", [reverse("upstreams")], []),
    # Routes, by name.
    (
        "route-added",
        [
            add_route(
                {
                    "name": "api-v2",
                    "upstream": "users",
                    "match": {"host": "api.example.com", "path_prefix": "/v2"},
                }
            )
        ],
        ["+ route api-v2 (host api.example.com, prefix /v2 -> upstream users)"],
    ),
    (
        "route-added-with-conditions",
        [
            add_route(
                {
                    "name": "beta",
                    "upstream": "users",
                    "match": {
                        "path_prefix": "/beta",
                        "methods": ["HEAD", "GET"],
                        "headers": {"X-Beta": "1", "X-Api-Token": HEADER_SECRET},
                    },
                }
            )
        ],
        [
            "+ route beta (prefix /beta, methods GET,HEAD, header x-beta: 1,"
            " header x-api-token: <redacted> -> upstream users)"
        ],
    ),
    ("route-removed", [drop("routes.1")], ["- route billing"]),
    (
        "route-upstream",
        [put("routes.2.upstream", "billing")],
        ["~ route default: upstream users -> billing"],
    ),
    (
        "route-prefix",
        [put("routes.0.match.path_prefix", "/people")],
        ["~ route users: match.path_prefix /users -> /people"],
    ),
    (
        "route-host-moves-it",
        [put("routes.2.match", {"host": "api.example.com"})],
        [
            "~ route default: match.host unset -> api.example.com",
            "~ route default: precedence 3 -> 2",
        ],
    ),
    (
        "route-methods",
        [put("routes.0.match.methods", ["GET"])],
        ["~ route users: match.methods [GET, POST] -> [GET]"],
    ),
    (
        "route-methods-unset",
        [drop("routes.0.match.methods")],
        ["~ route users: match.methods [GET, POST] -> unset"],
    ),
    ("route-methods-order-and-case", [put("routes.0.match.methods", ["post", "Get"])], []),
    (
        "route-headers",
        [put("routes.0.match.headers", {"X-Env": "prod"})],
        ["~ route users: match.headers {} -> {x-env: prod}"],
    ),
    (
        "route-secret-header",
        [put("routes.0.match.headers", {"X-Api-Token": HEADER_SECRET})],
        ["~ route users: match.headers {} -> {x-api-token: <redacted>}"],
    ),
    (
        "route-strip-prefix",
        [put("routes.1.strip_prefix", False)],
        ["~ route billing: strip_prefix true -> false"],
    ),
    # Moving routes that never compete for a request changes nothing.
    ("routes-reordered", [reverse("routes")], []),
    (
        "everything-at-once",
        [
            put("server.workers", 4),
            put("upstreams.users-v2", {"targets": ["http://10.0.0.7:9000"]}),
            put("routes.2.upstream", "users-v2"),
            drop("routes.1"),
            drop("upstreams.billing"),
        ],
        [
            "~ server.workers 1 -> 4 (needs restart)",
            "- upstream billing",
            "+ upstream users-v2 (http://10.0.0.7:9000)",
            "- route billing",
            "~ route default: upstream users -> users-v2",
        ],
    ),
]


@pytest.mark.parametrize(
    ("edits", "expected"), [case[1:] for case in DIFF_CASES], ids=[case[0] for case in DIFF_CASES]
)
def test_diff_configs(edits: list[Edit], expected: list[str]) -> None:
    old = load(base_doc())
    new = load(edited(*edits))
    lines = diff_configs(new, old)
    assert lines == expected
    assert (config_hash(new) == config_hash(old)) is (lines == [])
    assert (diff_configs(old, new) == []) is (lines == [])
    assert TOKEN not in "\n".join(lines)
    assert HEADER_SECRET not in "\n".join(lines)


def test_diff_is_symmetric_in_wording() -> None:
    old = load(base_doc())
    new = load(edited(put("server.limits.max_body", "20MiB"), drop("routes.1")))
    assert diff_configs(old, new) == [
        "~ server.limits.max_body 20MiB -> 10MiB",
        "+ route billing (host *.example.com, prefix /billing -> upstream billing)",
    ]


def test_changed_token_is_listed_but_not_shown() -> None:
    other = "another-admin-token-4567"
    old = load(edited(put("admin.token", TOKEN)))
    new = load(edited(put("admin.token", other)))
    assert diff_configs(new, old) == ["~ admin.token <redacted> -> <redacted> (needs restart)"]
    assert config_hash(new) != config_hash(old)


def _tied(*names: str) -> list[dict[str, Any]]:
    methods = {"get": ["GET"], "post": ["POST"], "put": ["PUT"], "delete": ["DELETE"]}
    return [
        {"name": name, "upstream": "users", "match": {"methods": methods[name]}} for name in names
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # Same host and prefix: the file order decides, so moving one is a change.
        (["get", "post", "put"], ["put", "get", "post"], ["~ route put: precedence 3 -> 1"]),
        (["get", "post", "put"], ["post", "put", "get"], ["~ route get: precedence 1 -> 3"]),
        (["get", "post"], ["post", "get"], ["~ route post: precedence 2 -> 1"]),
        # Added routes shift the numbers of the others without moving them.
        (
            ["get", "post"],
            ["put", "get", "post"],
            ["+ route put (prefix /, methods PUT -> upstream users)"],
        ),
        # One moved route whose number stays the same.
        (
            ["get", "post", "put"],
            ["delete", "post", "get"],
            [
                "- route put",
                "+ route delete (prefix /, methods DELETE -> upstream users)",
                "~ route post: precedence 2 -> 2 (reordered)",
            ],
        ),
    ],
)
def test_precedence_changes(old: list[str], new: list[str], expected: list[str]) -> None:
    before = load(edited(put("routes", _tied(*old))))
    after = load(edited(put("routes", _tied(*new))))
    assert diff_configs(after, before) == expected
    assert config_hash(after) != config_hash(before)


# --- Fields added by later features -------------------------------------------------------------
# A feature adds a field (a route's rate_limit, a redis section with a password in its URL): the
# diff, the view and the hash pick it up by walking the dataclasses.


def _limited(
    rate_limit: RateLimitConfig | None = None, redis: RedisConfig | None = None
) -> GatewayConfig:
    config = load(base_doc())
    routes = tuple(
        replace(r, rate_limit=rate_limit if r.name == "users" else None) for r in config.routes
    )
    return replace(config, routes=routes, redis=redis)


def test_later_fields_are_diffed() -> None:
    plain = _limited()
    limited = _limited(RateLimitConfig(rate=Rate(100, 1, "100/second"), burst=10))
    assert diff_configs(limited, plain) == [
        "~ route users: rate_limit unset -> {rate: 100/second, burst: 10, key: [client_ip],"
        " backend: memory, strategy: token_bucket, enforce: true, on_backend_error: local,"
        " budget: 50ms, max_keys: 65536}"
    ]
    more = _limited(RateLimitConfig(rate=Rate(100, 1, "100/second"), burst=20))
    assert diff_configs(more, limited) == ["~ route users: rate_limit.burst 10 -> 20"]
    assert config_hash(limited) != config_hash(plain)
    routes = redacted_view(limited)["routes"]
    assert isinstance(routes, list)
    assert routes[0]["rate_limit"] == {
        "rate": "100/second",
        "burst": 10,
        "key": ["client_ip"],
        "backend": "memory",
        "strategy": "token_bucket",
        "enforce": True,
        "on_backend_error": "local",
        "budget": 0.05,
        "max_keys": 65536,
    }
    assert [route["rate_limit"] for route in routes[1:]] == [None, None]


def test_later_secrets_are_redacted() -> None:
    old = _limited(redis=RedisConfig("redis://:pw-one@cache-a:6379/0"))
    new = _limited(redis=RedisConfig("redis://admin:pw-two@cache-b:6379/0"))
    lines = diff_configs(new, old)
    assert lines == [
        "~ redis.url redis://<redacted>@cache-a:6379/0 -> redis://<redacted>@cache-b:6379/0",
    ]
    view = redacted_view(new)
    assert view["redis"] == {"url": "redis://<redacted>@cache-b:6379/0"}
    shown = json.dumps(view) + "\n".join(lines)
    assert not re.search("pw-|admin:", shown)
    assert config_hash(new) != config_hash(
        _limited(redis=RedisConfig("redis://admin:pw-three@cache-b:6379/0"))
    )


# --- Listeners --------------------------------------------------------------------------------


def _tls_doc(tmp_path: Path, tls: dict[str, Any]) -> dict[str, Any]:
    return edited(
        drop("server.listen"),
        listeners(
            {"listen": ":8443", "tls": tls, "http2": {"max_frame_size": "32KiB"}},
            {"listen": ":8080", "redirect_to_https": True},
        ),
    )


def test_certificate_changes_apply_on_a_reload(tmp_path: Path) -> None:
    cert, key = write_certificate(tmp_path, "old.crt", "old.key")
    renewed, renewed_key = write_certificate(tmp_path, "new.crt", "new.key")
    api_cert, api_key = write_certificate(tmp_path, "api.crt", "api.key", "api.example.com")
    old = load(_tls_doc(tmp_path, {"cert": cert, "key": key}))
    sni = [{"server_names": ["API.example.com"], "cert": api_cert, "key": api_key}]
    tls = {"cert": renewed, "key": renewed_key, "sni": sni, "min_version": "1.3"}
    new = load(_tls_doc(tmp_path, tls))
    assert diff_configs(new, old) == [
        f"~ server.listeners[0].tls.cert {cert} -> {renewed}",
        f"~ server.listeners[0].tls.key {key} -> {renewed_key}",
        f"~ server.listeners[0].tls.sni[0] unset -> {{cert: {api_cert}, key: {api_key},"
        " server_names: [api.example.com]}",
        "~ server.listeners[0].tls.min_version 1.2 -> 1.3",
    ]
    assert restart_only_changes(new, old) == []
    assert config_hash(new) != config_hash(old)


def test_a_changed_address_keeps_every_listener_until_a_restart(tmp_path: Path) -> None:
    cert, key = write_certificate(tmp_path, "gw.crt", "gw.key")
    old = load(_tls_doc(tmp_path, {"cert": cert, "key": key}))
    doc = _tls_doc(tmp_path, {"cert": cert, "key": key, "min_version": "1.3"})
    doc["server"]["listeners"][1]["listen"] = ":8000"
    doc["server"]["workers"] = 2
    new = load(doc)
    assert restart_only_changes(new, old) == [
        "server.listeners[0].tls.min_version",
        "server.listeners[1].listen",
        "server.workers",
    ]
    assert diff_configs(new, old) == [
        "~ server.listeners[0].tls.min_version 1.2 -> 1.3 (needs restart)",
        "~ server.listeners[1].listen 0.0.0.0:8080 -> 0.0.0.0:8000 (needs restart)",
        "~ server.workers 1 -> 2 (needs restart)",
    ]
    fewer = edited(
        drop("server.listen"),
        listeners(
            {
                "listen": ":8443",
                "tls": {"cert": cert, "key": key},
                "http2": {"max_frame_size": "32KiB"},
            }
        ),
    )
    assert restart_only_changes(load(fewer), old) == ["server.listeners[1]"]


def test_the_view_writes_tls_as_the_yaml_does(tmp_path: Path) -> None:
    cert, key = write_certificate(tmp_path, "gw.crt", "gw.key")
    api_cert, api_key = write_certificate(tmp_path, "api.crt", "api.key", "api.example.com")
    sni = [{"server_names": ["api.example.com", "*.example.org"], "cert": api_cert, "key": api_key}]
    tls = {"cert": cert, "key": key, "sni": sni, "ciphers": "ECDHE+AESGCM:!aNULL"}
    view = redacted_view(load(_tls_doc(tmp_path, tls)))
    server = view["server"]
    assert isinstance(server, dict)
    assert server["listeners"][0]["tls"] == {
        "cert": cert,
        "key": key,
        "sni": [
            {
                "cert": api_cert,
                "key": api_key,
                "server_names": ["api.example.com", "*.example.org"],
            }
        ],
        "min_version": "1.2",
        "ciphers": "ECDHE+AESGCM:!aNULL",
    }
    assert server["listeners"][0]["http2"]["max_frame_size"] == 32 * KIB
    assert server["listeners"][1]["redirect_to_https"] is True


# --- redacted_view ----------------------------------------------------------------------------


def test_redacted_view() -> None:
    doc = edited(
        put("admin.token", TOKEN),
        put("server.trusted_proxies", ["10.0.0.0/8", "fd00::/8"]),
        put("routes.0.match.headers", {"X-Env": "prod", "X-Api-Token": HEADER_SECRET}),
    )
    view = redacted_view(load(doc))
    assert list(view) == [
        "server",
        "admin",
        "logging",
        "redis",
        "cache",
        "upstreams",
        "routes",
        "route_table",
    ]
    assert view["redis"] is None
    assert view["cache"] == {"max_bytes": 256 * MIB}
    assert view["admin"] == {"listen": "127.0.0.1:9901", "token": "<redacted>", "metrics": True}
    assert view["server"] == {
        "listeners": [
            {
                "listen": "0.0.0.0:8080",
                "tls": None,
                "http2": {
                    "enabled": True,
                    "h2c": False,
                    "max_concurrent_streams": 100,
                    "max_header_list_size": 64 * KIB,
                    "max_frame_size": 16 * KIB,
                    "initial_window_size": 64 * KIB,
                    "max_requests_per_connection": 1000,
                    "reset_budget": {"burst": 200, "per_second": 20.0},
                },
                "proxy_protocol": False,
                "redirect_to_https": False,
            }
        ],
        "workers": 1,
        "trusted_proxies": ["10.0.0.0/8", "fd00::/8"],
        "limits": {
            "max_body": 10 * MIB,
            "max_header_bytes": 32 * KIB,
            "max_headers": 100,
            "max_line": 8190,
            "max_requests_per_connection": 1000,
            "max_websockets": 10_000,
            "max_connections": 10_000,
            "max_connections_per_ip": None,
        },
        "timeouts": {
            "header_read": 10.0,
            "keepalive": 60.0,
            "body_progress": 30.0,
            "send": 60.0,
            "drain": 25.0,
        },
        "via_name": "gateway",
        "rate_limit": None,
    }
    assert view["logging"] == {"level": "info", "access_log": True}
    upstreams = view["upstreams"]
    assert isinstance(upstreams, dict)
    assert list(upstreams) == ["users", "billing"]
    assert upstreams["billing"] == {
        "targets": ["https://billing.internal"],
        "balance": "round_robin",
        "hash_key": "client_ip",
        "health_check": None,
        "passive_health": {"consecutive_failures": 5, "base_ejection": 10.0, "max_ejection": 300.0},
        "circuit_breaker": {"max_requests": 1024, "max_pending": 1024},
        "pool": {"max_connections": 256, "max_idle": 64, "idle_timeout": 4.0},
        "timeouts": {"connect": 2.0, "response": 30.0, "read": 60.0},
        "tls": {"ca_file": None, "verify": True},
        "host_header": "preserve",
        "dns_ttl": 30.0,
    }
    routes = view["routes"]
    assert isinstance(routes, list)
    assert routes[0] == {
        "name": "users",
        "upstream": "users",
        "match": {
            "host": "api.example.com",
            "path_prefix": "/users",
            "methods": ["GET", "POST"],
            "headers": {"x-env": "prod", "x-api-token": "<redacted>"},
        },
        "strip_prefix": False,
        "rate_limit": None,
        "cache": None,
        "compression": None,
        "websocket": None,
        "retries": {
            "attempts": 2,
            "on": ["connect_failure", "reset"],
            "budget_percent": 20,
            "backoff": {"base": 0.025, "max": 0.25},
            "non_idempotent": False,
            "max_replay_body": 64 * KIB,
        },
    }
    assert view["route_table"] == [
        {
            "precedence": 1,
            "route": "users",
            "host": "api.example.com",
            "path_prefix": "/users",
            "methods": ["GET", "POST"],
            "headers": {"x-env": "prod", "x-api-token": "<redacted>"},
            "upstream": "users",
            "strip_prefix": False,
        },
        {
            "precedence": 2,
            "route": "billing",
            "host": "*.example.com",
            "path_prefix": "/billing",
            "methods": None,
            "headers": {},
            "upstream": "billing",
            "strip_prefix": True,
        },
        {
            "precedence": 3,
            "route": "default",
            "host": None,
            "path_prefix": "/",
            "methods": None,
            "headers": {},
            "upstream": "users",
            "strip_prefix": False,
        },
    ]
    text = json.dumps(view)
    assert TOKEN not in text
    assert HEADER_SECRET not in text


def test_redacted_view_keeps_an_unset_token_visible() -> None:
    assert redacted_view(load(base_doc()))["admin"] == {
        "listen": "127.0.0.1:9901",
        "token": None,
        "metrics": True,
    }


def _model_paths(cls: type[Any], prefix: str, present: frozenset[str] = frozenset()) -> list[str]:
    """Every field of ``cls``, recursively; a list of sections as ``name[]``, and an optional
    section that is off by default walked only when its path is in ``present``."""
    paths = []
    for f in fields(cls):
        kind = typing.get_type_hints(cls)[f.name]
        path = f"{prefix}{f.name}"
        options = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if f.default_factory is not MISSING and type(None) in typing.get_args(kind):
            # An optional section that is on by default (passive_health, retries) shows its
            # fields; one that is off by default shows null.
            kind = type(f.default_factory())
        elif path in present and len(options) == 1:
            kind = options[0]
        items = typing.get_args(kind)
        if typing.get_origin(kind) is tuple and items[1:] == (...,) and _nested(items[0]):
            paths += _model_paths(items[0], f"{path}[].", present)
        elif cls is TlsConfig and f.name == "default":
            # The YAML (and the view) write the default certificate as tls.cert and tls.key.
            paths += [f"{prefix}cert", f"{prefix}key"]
        elif _nested(kind):
            paths += _model_paths(kind, f"{path}.", present)
        else:
            paths.append(path)
    return paths


def _nested(kind: object) -> bool:
    return is_dataclass(kind) and kind not in (ListenAddress, Target, HeaderMatch)


def _view_paths(tree: object, prefix: str) -> list[str]:
    if isinstance(tree, dict) and tree and prefix.rsplit(".", 2)[-2:-1] != ["headers"]:
        return [p for key, value in tree.items() for p in _view_paths(value, f"{prefix}{key}.")]
    if isinstance(tree, list) and tree and isinstance(tree[0], dict):
        return _view_paths(tree[0], f"{prefix[:-1]}[].")
    return [prefix[:-1]]


def test_redacted_view_shows_every_field(tmp_path: Path) -> None:
    cert, key = write_certificate(tmp_path, "gw.crt", "gw.key")
    api_cert, api_key = write_certificate(tmp_path, "api.crt", "api.key", "api.example.com")
    sni = [{"server_names": ["api.example.com"], "cert": api_cert, "key": api_key}]
    doc = edited(
        drop("server.listen"),
        listeners({"listen": ":8443", "tls": {"cert": cert, "key": key, "sni": sni}}),
    )
    view = redacted_view(load(doc))
    shown = set()
    for section in ("server", "admin", "logging", "redis", "cache"):
        shown |= set(_view_paths(view[section], f"{section}."))
    upstreams = view["upstreams"]
    routes = view["routes"]
    assert isinstance(upstreams, dict)
    assert isinstance(routes, list)
    shown |= set(_view_paths(upstreams["users"], "upstream.")) | {"upstream.name"}
    shown |= set(_view_paths(routes[0], "route."))
    present = frozenset({"server.listeners[].tls"})
    expected = {
        path
        for path in _model_paths(GatewayConfig, "", present)
        if not path.startswith(("upstreams", "routes"))  # below, each on its own
    }
    expected |= set(_model_paths(UpstreamConfig, "upstream."))
    expected |= set(_model_paths(RouteConfig, "route."))
    assert shown == expected


def test_redacted_view_is_json() -> None:
    view = redacted_view(load(edited(put("admin.token", TOKEN))))
    assert json.loads(json.dumps(view, allow_nan=False)) == view


# --- config_hash ------------------------------------------------------------------------------


def test_config_hash_is_sha256_hex() -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", config_hash(load(base_doc())))


def test_config_hash_ignores_formatting() -> None:
    written = """\
server: {listen: "0.0.0.0:8080"}
upstreams:
  users: {targets: ["http://10.0.0.5:9000", "http://10.0.0.6:9000"]}
  billing: {targets: ["https://billing.internal"]}
routes:
  - {name: users, upstream: users,
     match: {host: api.example.com, path_prefix: /users, methods: [GET, POST]}}
  - {name: billing, upstream: billing, match: {host: "*.example.com", path_prefix: /billing},
     strip_prefix: true}
  - {name: default, upstream: users}
"""
    rewritten = """\
# The same gateway, written differently.
routes:
  - name: default
    upstream: users
    match: {path_prefix: /}
  - upstream: billing
    name: billing
    strip_prefix: true
    match:
      path_prefix: /billing
      host: "*.EXAMPLE.com."
  - match: {methods: [post, GET, get], path_prefix: /users, host: API.example.com}
    upstream: users
    name: users
logging: {level: info, access_log: true}
upstreams:
  billing:
    targets: ["https://billing.internal:443/"]
    pool: {max_connections: 256, idle_timeout: 4000ms}
  users:
    targets: ["HTTP://10.0.0.5:9000", "http://10.0.0.6:9000"]
    timeouts: {read: 1m}
admin:
  listen: "127.0.0.1:${ADMIN_PORT:-9901}"
  token: "${GATEWAY_ADMIN_TOKEN:-}"
server:
  listen: ":8080"
  workers: 1
  limits: {max_body: 10240KiB}
"""
    assert config_hash(load(written)) == config_hash(load(rewritten))
    assert config_hash(load(written)) == config_hash(load(base_doc()))
    assert diff_configs(load(written), load(rewritten)) == []


def test_config_hash_depends_on_the_token() -> None:
    assert config_hash(load(edited(put("admin.token", TOKEN)))) != config_hash(load(base_doc()))


# --- Properties -------------------------------------------------------------------------------

# Equal values, spelled differently.
SPELLINGS = {
    "60s": ["60s", "1m", "60000ms"],
    "30s": ["30s", "30000ms", "0.5m"],
    "10MiB": ["10MiB", "10240KiB", "10485760B"],
    "1MB": ["1MB", "1000KB", "1000000B"],
    "api.example.com": ["api.example.com", "API.Example.com", "api.example.com."],
}
TARGETS = ["http://10.0.0.5:9000", "http://10.0.0.6:9000", "https://a.internal"]
TOKENS = [None, "token-aaaaaaaaaaaaaaaa", "token-bbbbbbbbbbbbbbbb"]


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    server: dict[str, Any] = {}
    if draw(st.booleans()):
        server["workers"] = draw(st.sampled_from([1, 2, "auto"]))
    if draw(st.booleans()):
        server["limits"] = {"max_body": draw(st.sampled_from(["10MiB", "1MB"]))}
    if draw(st.booleans()):
        server["timeouts"] = {"keepalive": draw(st.sampled_from(["60s", "30s"]))}
    if draw(st.booleans()):
        server["trusted_proxies"] = draw(
            st.sampled_from([[], ["10.0.0.0/8"], ["10.0.0.0/8", "192.0.2.7"], ["192.0.2.7"]])
        )
    doc: dict[str, Any] = {"server": server}
    token = draw(st.sampled_from(TOKENS))
    if token is not None:
        doc["admin"] = {"token": token}
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))
    upstreams: dict[str, Any] = {}
    for name in names:
        body: dict[str, Any] = {
            "targets": draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=2, unique=True))
        }
        if draw(st.booleans()):
            body["pool"] = {"max_connections": draw(st.sampled_from([8, 16]))}
        if draw(st.booleans()):
            body["timeouts"] = {"read": draw(st.sampled_from(["60s", "30s"]))}
        upstreams[name] = body
    doc["upstreams"] = upstreams
    route_names = draw(st.permutations(["r1", "r2", "r3", "r4"]))
    count = draw(st.integers(min_value=1, max_value=4))
    routes = []
    for route_name in route_names[:count]:
        match: dict[str, Any] = {}
        host = draw(st.sampled_from([None, "api.example.com", "*.example.com"]))
        if host is not None:
            match["host"] = host
        match["path_prefix"] = draw(st.sampled_from(["/", "/a", "/b"]))
        methods = draw(st.sampled_from([None, ["GET"], ["POST", "GET"], ["DELETE"]]))
        if methods is not None:
            match["methods"] = methods
        match["headers"] = draw(st.sampled_from([{}, {"X-A": "1"}, {"X-A": "1", "X-B": "2"}]))
        routes.append(
            {
                "name": route_name,
                "upstream": draw(st.sampled_from(names)),
                "match": match,
                "strip_prefix": draw(st.booleans()),
            }
        )
    doc["routes"] = routes
    return doc


def valid(doc: object) -> GatewayConfig:
    try:
        return load(doc)
    except ConfigError:
        assume(False)
        raise


def rewrite(doc: object, rnd: random.Random) -> object:
    """The same document: keys reordered, values spelled differently, methods shuffled."""
    if isinstance(doc, dict):
        items = list(doc.items())
        rnd.shuffle(items)
        out: dict[Any, object] = {}
        for key, value in items:
            if key == "methods" and isinstance(value, list):
                shuffled = rnd.sample(value, len(value))
                out[key] = [rnd.choice([m, m.lower()]) for m in shuffled]
            else:
                out[key] = rewrite(value, rnd)
        return out
    if isinstance(doc, list):
        return [rewrite(item, rnd) for item in doc]
    if isinstance(doc, str) and doc in SPELLINGS:
        return rnd.choice(SPELLINGS[doc])
    return doc


def dump(doc: object, rnd: random.Random) -> str:
    style = rnd.choice([True, False, None])
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=style)


@settings(max_examples=100)
@given(doc=documents(), rnd=st.randoms(use_true_random=False))
def test_a_config_has_no_diff_with_itself(doc: dict[str, Any], rnd: random.Random) -> None:
    config = valid(doc)
    assert diff_configs(config, config) == []
    again = load(dump(rewrite(copy.deepcopy(doc), rnd), rnd))
    assert config_hash(again) == config_hash(config)
    assert diff_configs(again, config) == []
    # A second view of the same config is the same view.
    assert redacted_view(again) == redacted_view(config)


@settings(max_examples=150)
@given(a=documents(), b=documents(), same=st.booleans(), rnd=st.randoms(use_true_random=False))
def test_diff_is_empty_exactly_when_hashes_are_equal(
    a: dict[str, Any], b: dict[str, Any], same: bool, rnd: random.Random
) -> None:
    old = valid(a)
    new = valid(dump(rewrite(copy.deepcopy(a), rnd), rnd) if same else b)
    lines = diff_configs(new, old)
    assert (lines == []) is (config_hash(new) == config_hash(old))
    assert (diff_configs(old, new) == []) is (lines == [])
    assert all(line[:2] in ("+ ", "- ", "~ ") for line in lines)


@given(doc=documents(), rnd=st.randoms(use_true_random=False))
def test_moving_routes_changes_something_only_for_ties(
    doc: dict[str, Any], rnd: random.Random
) -> None:
    config = valid(doc)
    moved = copy.deepcopy(doc)
    rnd.shuffle(moved["routes"])
    shuffled = valid(moved)
    keys = [(r.match.host, r.match.path_prefix) for r in config.routes]
    ties = len(set(keys)) < len(keys)
    if not ties:
        assert config_hash(shuffled) == config_hash(config)
    assert (diff_configs(shuffled, config) == []) is (config_hash(shuffled) == config_hash(config))


def test_route_match_defaults_are_explicit_in_the_view() -> None:
    # The empty `match` and the spelled-out defaults are the same route.
    spelled = edited(put("routes.2.match", {"path_prefix": "/", "methods": None, "headers": {}}))
    assert config_hash(load(spelled)) == config_hash(load(base_doc()))
    assert load(spelled).routes[2].match == RouteMatch()
