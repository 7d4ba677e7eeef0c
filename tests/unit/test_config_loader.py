"""The YAML contract (DESIGN.md §3): every rule, and the exact text of every problem line.

The problem lines are what operators read (`gateway validate`), so the tests assert them
exactly. Most cases are built as Python data on top of a minimal valid file and dumped to YAML;
cases about the YAML text itself (duplicate keys, syntax, interpolation) are written as text.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import loader
from gateway.config.loader import load_config, parse_config
from gateway.config.model import (
    KIB,
    MIB,
    AdminConfig,
    CacheConfig,
    CacheSettings,
    CircuitBreakerConfig,
    CompressionConfig,
    CompressionLevels,
    GatewayConfig,
    HeaderMatch,
    HealthCheckConfig,
    Http2Config,
    ListenAddress,
    ListenerConfig,
    LoggingConfig,
    PassiveHealthConfig,
    PoolConfig,
    Rate,
    RateLimitConfig,
    RedisConfig,
    ResetBudget,
    RetryBackoff,
    RetryConfig,
    RouteConfig,
    RouteMatch,
    ServerConfig,
    ServerLimits,
    ServerTimeouts,
    Target,
    TlsCertificate,
    TlsConfig,
    UpstreamConfig,
    UpstreamTimeouts,
    UpstreamTLS,
    WebSocketConfig,
)
from gateway.errors import ConfigError
from tests.unit.tls_files import write_certificate

TARGET = "http://10.0.0.5:9000"
ADMIN_TOKEN = "s3cr3t-admin-token-0123"


def base(**sections: Any) -> dict[str, Any]:
    """A minimal valid document with top-level ``sections`` added or replaced."""
    doc: dict[str, Any] = {
        "upstreams": {"users": {"targets": [TARGET]}},
        "routes": [{"name": "users", "upstream": "users"}],
    }
    doc.update(sections)
    return doc


def upstream(**body: Any) -> dict[str, Any]:
    """A minimal document whose one upstream ``users`` has ``body`` merged in."""
    return base(upstreams={"users": {"targets": [TARGET], **body}})


def route(**body: Any) -> dict[str, Any]:
    """A minimal document whose one route has ``body`` merged in."""
    return base(routes=[{"name": "users", "upstream": "users", **body}])


def match(**conditions: Any) -> dict[str, Any]:
    return route(match=conditions)


def parse(doc: object, environ: dict[str, str] | None = None) -> GatewayConfig:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    return parse_config(text, {} if environ is None else environ)


def problems(doc: object, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(doc, environ)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# --- One problem per case ------------------------------------------------------------------

ONE_PROBLEM: list[tuple[str, object, str]] = [
    # Structure
    ("root-not-mapping", [1], "(top level): expected a mapping, got a list"),
    ("no-upstreams", {"routes": base()["routes"]}, "upstreams: missing required key"),
    ("no-routes", {"upstreams": base()["upstreams"]}, "routes: missing required key"),
    ("empty-upstreams", base(upstreams={}), "upstreams: at least one upstream is required"),
    ("empty-routes", base(routes=[]), "routes: at least one route is required"),
    (
        "upstreams-list",
        base(upstreams=[{"targets": [TARGET]}]),
        "upstreams: expected a mapping of upstream names to upstreams, got a list",
    ),
    ("routes-mapping", base(routes={"a": 1}), "routes: expected a list of routes, got a mapping"),
    ("unknown-top-key", base(telemetry={"on": True}), "telemetry: unknown key"),
    ("misspelt-top-key", base(sever={}), "sever: unknown key (did you mean 'server'?)"),
    ("section-not-mapping", base(server=5), "server: expected a mapping, got 5"),
    ("section-string", base(logging="info"), "logging: expected a mapping, got 'info'"),
    # server.listen and admin.listen
    (
        "listen-int",
        base(server={"listen": 8080}),
        "server.listen: expected a string, got 8080 (quote it)",
    ),
    (
        "listen-no-port",
        base(server={"listen": "0.0.0.0"}),
        "server.listen: expected 'host:port', '[::1]:port' or ':port', got '0.0.0.0'",
    ),
    (
        "listen-port-range",
        base(server={"listen": "0.0.0.0:65536"}),
        "server.listen: port must be a number from 0 to 65535, got '65536'",
    ),
    (
        "listen-port-empty",
        base(server={"listen": "0.0.0.0:"}),
        "server.listen: port must be a number from 0 to 65535, got ''",
    ),
    (
        "listen-port-name",
        base(server={"listen": "0.0.0.0:http"}),
        "server.listen: port must be a number from 0 to 65535, got 'http'",
    ),
    (
        "listen-ipv6-unbracketed",
        base(server={"listen": "::1:8080"}),
        "server.listen: an IPv6 address needs brackets, e.g. '[::1]:8080', got '::1:8080'",
    ),
    (
        "listen-unclosed-bracket",
        base(server={"listen": "[::1:8080"}),
        "server.listen: missing ']' after the IPv6 address in '[::1:8080'",
    ),
    (
        "listen-ipv4-in-brackets",
        base(server={"listen": "[10.0.0.1]:80"}),
        "server.listen: '10.0.0.1' in brackets is not an IPv6 address",
    ),
    (
        "listen-junk-after-bracket",
        base(server={"listen": "[::1]8080"}),
        "server.listen: unexpected '8080' after ']' in '[::1]8080'",
    ),
    (
        "listen-bad-host",
        base(server={"listen": "my host:80"}),
        "server.listen: 'my host' is not a valid host name or IP address (in 'my host:80')",
    ),
    (
        # With a token, so the one problem is the overlap (without one, see
        # test_public_admin_without_token_and_overlap).
        "admin-listen-overlaps",
        base(admin={"listen": ":8080", "token": ADMIN_TOKEN}),
        "admin.listen: 0.0.0.0:8080 overlaps server.listen (0.0.0.0:8080):"
        " the admin endpoints never share a public port",
    ),
    (
        "server-listen-overlaps-admin",
        base(server={"listen": "127.0.0.1:9901"}),
        "admin.listen: 127.0.0.1:9901 overlaps server.listen (127.0.0.1:9901):"
        " the admin endpoints never share a public port",
    ),
    # server.trusted_proxies
    (
        "trusted-proxies-string",
        base(server={"trusted_proxies": "10.0.0.0/8"}),
        "server.trusted_proxies: expected a list of addresses, got '10.0.0.0/8'",
    ),
    (
        "trusted-proxies-bad",
        base(server={"trusted_proxies": ["10.0.0.0/8", "10.0.0.0/33"]}),
        "server.trusted_proxies[1]: expected an IP address or CIDR such as '10.0.0.0/8',"
        " got '10.0.0.0/33'",
    ),
    # Counts
    (
        "count-word",
        base(server={"limits": {"max_headers": "ten"}}),
        "server.limits.max_headers: expected an integer, got 'ten'",
    ),
    (
        "count-quoted-number",
        base(server={"limits": {"max_headers": "100"}}),
        "server.limits.max_headers: expected an integer, got '100'",
    ),
    (
        "count-bool",
        base(server={"limits": {"max_headers": True}}),
        "server.limits.max_headers: expected an integer, got true",
    ),
    (
        "count-float",
        base(server={"limits": {"max_requests_per_connection": 1.5}}),
        "server.limits.max_requests_per_connection: expected an integer, got 1.5",
    ),
    (
        "count-zero",
        base(server={"limits": {"max_headers": 0}}),
        "server.limits.max_headers: must be at least 1, got 0",
    ),
    (
        "count-null",
        base(server={"limits": {"max_headers": None}}),
        "server.limits.max_headers: expected an integer, got null",
    ),
    # Sizes
    (
        "size-bare-int",
        base(server={"limits": {"max_body": 10}}),
        "server.limits.max_body: a size needs a unit, e.g. '64KiB'",
    ),
    (
        "size-bare-string",
        base(server={"limits": {"max_line": "8190"}}),
        "server.limits.max_line: a size needs a unit, e.g. '64KiB'",
    ),
    (
        "size-zero",
        base(server={"limits": {"max_body": "0B"}}),
        "server.limits.max_body: must be greater than 0, got '0B'",
    ),
    (
        "size-bad-unit",
        base(server={"limits": {"max_header_bytes": "32kb"}}),
        "server.limits.max_header_bytes: expected a size such as '512B', '64KiB', '10MiB'"
        " or '1GB', got '32kb'",
    ),
    (
        "size-bool",
        base(server={"limits": {"max_body": False}}),
        "server.limits.max_body: expected a size such as '64KiB', got false",
    ),
    (
        "size-fraction-of-byte",
        base(server={"limits": {"max_body": "0.5B"}}),
        "server.limits.max_body: size '0.5B' is not a whole number of bytes",
    ),
    # Durations
    (
        "duration-bare-int",
        base(server={"timeouts": {"keepalive": 5}}),
        "server.timeouts.keepalive: a duration needs a unit, e.g. '5s'",
    ),
    (
        "duration-bare-float",
        base(server={"timeouts": {"drain": 2.5}}),
        "server.timeouts.drain: a duration needs a unit, e.g. '5s'",
    ),
    (
        "duration-bare-string",
        base(server={"timeouts": {"header_read": "10"}}),
        "server.timeouts.header_read: a duration needs a unit, e.g. '5s'",
    ),
    (
        "duration-zero",
        base(server={"timeouts": {"keepalive": "0s"}}),
        "server.timeouts.keepalive: must be greater than 0, got '0s'",
    ),
    (
        "duration-bad-unit",
        base(server={"timeouts": {"keepalive": "5sec"}}),
        "server.timeouts.keepalive: expected a duration such as '250ms', '5s', '2m' or '1h',"
        " got '5sec'",
    ),
    (
        "duration-list",
        base(server={"timeouts": {"keepalive": ["5s"]}}),
        "server.timeouts.keepalive: expected a duration such as '5s', got a list",
    ),
    # The client abuse limits (HARDENING.md §F).
    (
        "max-connections-zero",
        base(server={"limits": {"max_connections": 0}}),
        "server.limits.max_connections: must be at least 1, got 0",
    ),
    (
        "max-connections-null",
        base(server={"limits": {"max_connections": None}}),
        "server.limits.max_connections: expected an integer, got null",
    ),
    (
        "max-connections-per-ip-negative",
        base(server={"limits": {"max_connections_per_ip": -1}}),
        "server.limits.max_connections_per_ip: must be at least 1, got -1",
    ),
    (
        "max-connections-per-ip-word",
        base(server={"limits": {"max_connections_per_ip": "many"}}),
        "server.limits.max_connections_per_ip: expected an integer, got 'many'",
    ),
    (
        "body-progress-bare-number",
        base(server={"timeouts": {"body_progress": 30}}),
        "server.timeouts.body_progress: a duration needs a unit, e.g. '5s'",
    ),
    (
        "send-zero",
        base(server={"timeouts": {"send": "0s"}}),
        "server.timeouts.send: must be greater than 0, got '0s'",
    ),
    (
        "unknown-nested-key",
        base(server={"timeouts": {"keep_alive": "5s"}}),
        "server.timeouts.keep_alive: unknown key (did you mean 'keepalive'?)",
    ),
    # server.via_name
    (
        "via-name-space",
        base(server={"via_name": "my gateway"}),
        "server.via_name: expected a token (letters, digits, '-', '.', '_' ...), got 'my gateway'",
    ),
    (
        "via-name-int",
        base(server={"via_name": 5}),
        "server.via_name: expected a string, got 5 (quote it)",
    ),
    # logging
    (
        "level-unknown",
        base(logging={"level": "verbose"}),
        "logging.level: expected one of 'debug', 'info', 'warning', 'error', got 'verbose'",
    ),
    (
        "level-case",
        base(logging={"level": "WARN"}),
        "logging.level: expected one of 'debug', 'info', 'warning', 'error', got 'WARN'"
        " (did you mean 'warning'?)",
    ),
    (
        "bool-string",
        base(logging={"access_log": "yes"}),
        "logging.access_log: expected a boolean (true or false), got 'yes'",
    ),
    (
        "bool-int",
        base(logging={"access_log": 1}),
        "logging.access_log: expected a boolean (true or false), got 1",
    ),
    # upstreams
    (
        "upstream-name-space",
        base(
            upstreams={"my users": {"targets": [TARGET]}},
            routes=[{"name": "users", "upstream": "my users"}],
        ),
        "upstreams.my users: an upstream name has only letters, digits, '_' and '-',"
        " got 'my users'",
    ),
    (
        "upstream-name-int",
        base(upstreams={123: {"targets": [TARGET]}}, routes=[{"name": "a", "upstream": "123"}]),
        "upstreams.123: an upstream name has only letters, digits, '_' and '-', got 123",
    ),
    (
        "upstream-null",
        base(upstreams={"users": None}),
        "upstreams.users.targets: missing required key",
    ),
    (
        "upstream-list",
        base(upstreams={"users": [TARGET]}),
        "upstreams.users: expected a mapping, got a list",
    ),
    (
        "upstream-name-key",
        upstream(name="users"),
        "upstreams.users.name: unknown key (an upstream's name is its key under 'upstreams')",
    ),
    (
        "upstream-misspelt-key",
        upstream(target=[TARGET]),
        "upstreams.users.target: unknown key (did you mean 'targets'?)",
    ),
    (
        "targets-empty",
        upstream(targets=[]),
        "upstreams.users.targets: at least one target is required",
    ),
    (
        "targets-string",
        upstream(targets=TARGET),
        f"upstreams.users.targets: expected a list of targets, got '{TARGET}'",
    ),
    (
        "target-no-scheme",
        upstream(targets=["10.0.0.5:9000"]),
        "upstreams.users.targets[0]: expected a URL such as 'http://10.0.0.5:9000',"
        " got '10.0.0.5:9000'",
    ),
    (
        "target-scheme",
        upstream(targets=["ws://10.0.0.5"]),
        "upstreams.users.targets[0]: a target's scheme must be http or https, got 'ws://10.0.0.5'",
    ),
    (
        "target-path",
        upstream(targets=["http://10.0.0.5/api"]),
        "upstreams.users.targets[0]: a target has no path, query or fragment:"
        " 'http://10.0.0.5/api'",
    ),
    (
        "target-query",
        upstream(targets=["http://10.0.0.5?x=1"]),
        "upstreams.users.targets[0]: a target has no path, query or fragment:"
        " 'http://10.0.0.5?x=1'",
    ),
    (
        "target-userinfo",
        upstream(targets=["http://user:secret@10.0.0.5"]),
        "upstreams.users.targets[0]: a target cannot carry user credentials:"
        " 'http://user:secret@10.0.0.5'",
    ),
    (
        "target-no-host",
        upstream(targets=["http://:9000"]),
        "upstreams.users.targets[0]: a target needs a host: 'http://:9000'",
    ),
    (
        "target-port-zero",
        upstream(targets=["http://10.0.0.5:0"]),
        "upstreams.users.targets[0]: port must be a number from 1 to 65535, got '0'",
    ),
    (
        "target-ipv6-unbracketed",
        upstream(targets=["http://fd00::5:9000"]),
        "upstreams.users.targets[0]: an IPv6 address needs brackets, e.g. '[::1]:8080',"
        " got 'fd00::5:9000'",
    ),
    (
        "target-bad-host",
        upstream(targets=["http://bad..host"]),
        "upstreams.users.targets[0]: 'bad..host' is not a valid host name or IP address"
        " (in 'http://bad..host')",
    ),
    (
        "target-octal-looking",
        upstream(targets=["http://010.0.0.1"]),
        "upstreams.users.targets[0]: '010.0.0.1' is not a valid host name or IP address"
        " (in 'http://010.0.0.1')",
    ),
    (
        "target-numeric-name",
        upstream(targets=["http://10.0.0.256"]),
        "upstreams.users.targets[0]: '10.0.0.256' is not a valid host name or IP address"
        " (in 'http://10.0.0.256')",
    ),
    (
        "target-int",
        upstream(targets=[9000]),
        "upstreams.users.targets[0]: expected a string, got 9000 (quote it)",
    ),
    (
        "target-duplicate",
        upstream(targets=["http://a.internal", "http://a.internal:80"]),
        "upstreams.users.targets[1]: duplicate target 'http://a.internal'"
        " (first at upstreams.users.targets[0])",
    ),
    (
        "balance-unknown",
        upstream(balance="random"),
        "upstreams.users.balance: expected one of 'round_robin', 'least_requests',"
        " 'consistent_hash', got 'random'",
    ),
    (
        "balance-close",
        upstream(balance="round-robin"),
        "upstreams.users.balance: expected one of 'round_robin', 'least_requests',"
        " 'consistent_hash', got 'round-robin' (did you mean 'round_robin'?)",
    ),
    (
        "target-weight-zero",
        upstream(targets=[{"url": TARGET, "weight": 0}]),
        "upstreams.users.targets[0].weight: must be at least 1, got 0",
    ),
    (
        "target-weight-too-big",
        upstream(targets=[{"url": TARGET, "weight": 257}]),
        "upstreams.users.targets[0].weight: must be at most 256, got 257",
    ),
    (
        "target-mapping-without-url",
        upstream(targets=[{"weight": 2}]),
        "upstreams.users.targets[0].url: missing required key",
    ),
    (
        "target-mapping-unknown-key",
        upstream(targets=[{"url": TARGET, "weigth": 2}]),
        "upstreams.users.targets[0].weigth: unknown key (did you mean 'weight'?)",
    ),
    (
        "target-duplicate-with-other-weight",
        upstream(targets=[TARGET, {"url": TARGET, "weight": 2}]),
        f"upstreams.users.targets[1]: duplicate target '{TARGET}' (first at"
        " upstreams.users.targets[0])",
    ),
    (
        "hash-key-without-consistent-hash",
        upstream(hash_key="client_ip"),
        "upstreams.users.hash_key: only balance: consistent_hash uses a hash_key",
    ),
    (
        "hash-key-unknown",
        upstream(balance="consistent_hash", hash_key="cookie:session"),
        "upstreams.users.hash_key: expected 'client_ip' or 'header:NAME' (e.g."
        " 'header:X-User-Id'), got 'cookie:session'",
    ),
    (
        "health-check-relative-path",
        upstream(health_check={"path": "healthz"}),
        "upstreams.users.health_check.path: expected a path such as '/healthz', got 'healthz'",
    ),
    (
        "health-check-timeout-above-interval",
        upstream(health_check={"interval": "1s", "timeout": "2s"}),
        "upstreams.users.health_check.timeout: must not exceed interval (1s), got 2s",
    ),
    (
        "health-check-status-out-of-range",
        upstream(health_check={"expected_status": [200, "300-600"]}),
        "upstreams.users.health_check.expected_status: expected statuses from 100 to 599, low"
        " to high, got '300-600'",
    ),
    (
        "health-check-status-not-a-status",
        upstream(health_check={"expected_status": ["2xx"]}),
        "upstreams.users.health_check.expected_status: expected statuses such as 200 or ranges"
        " such as '200-399', got '2xx'",
    ),
    (
        "health-check-threshold-zero",
        upstream(health_check={"healthy_threshold": 0}),
        "upstreams.users.health_check.healthy_threshold: must be at least 1, got 0",
    ),
    (
        "passive-health-max-below-base",
        upstream(passive_health={"base_ejection": "1m", "max_ejection": "30s"}),
        "upstreams.users.passive_health.max_ejection: must be at least base_ejection (60s),"
        " got 30s",
    ),
    (
        "circuit-breaker-zero",
        upstream(circuit_breaker={"max_pending": 0}),
        "upstreams.users.circuit_breaker.max_pending: must be at least 1, got 0",
    ),
    (
        "retries-unknown-condition",
        route(retries={"on": [500]}),
        "routes[0].retries.on[0]: only 502, 503 and 504 are retried, got 500",
    ),
    (
        "retries-unknown-condition-name",
        route(retries={"on": ["timeout"]}),
        "routes[0].retries.on[0]: expected one of 'connect_failure', 'reset', '502', '503',"
        " '504', got 'timeout'",
    ),
    (
        "retries-duplicate-condition",
        route(retries={"on": ["reset", "reset"]}),
        "routes[0].retries.on[1]: duplicate condition 'reset'",
    ),
    (
        "retries-budget-above-100",
        route(retries={"budget_percent": 150}),
        "routes[0].retries.budget_percent: must be at most 100, got 150",
    ),
    (
        "retries-backoff-max-below-base",
        route(retries={"backoff": {"base": "1s"}}),
        "routes[0].retries.backoff.max: must be at least base (1s), got 0.25s",
    ),
    (
        "retries-attempts-zero",
        route(retries={"attempts": 0}),
        "routes[0].retries.attempts: must be at least 1, got 0",
    ),
    (
        "pool-idle-above-connections",
        upstream(pool={"max_connections": 64, "max_idle": 65}),
        "upstreams.users.pool.max_idle: must not exceed max_connections (64), got 65",
    ),
    (
        "pool-idle-above-default-connections",
        upstream(pool={"max_idle": 300}),
        "upstreams.users.pool.max_idle: must not exceed max_connections (256), got 300",
    ),
    (
        "pool-idle-zero",
        upstream(pool={"max_idle": 0}),
        "upstreams.users.pool.max_idle: must be at least 1, got 0",
    ),
    (
        "pool-idle-timeout-bare",
        upstream(pool={"idle_timeout": 4}),
        "upstreams.users.pool.idle_timeout: a duration needs a unit, e.g. '5s'",
    ),
    (
        "upstream-timeout-zero",
        upstream(timeouts={"connect": "0ms"}),
        "upstreams.users.timeouts.connect: must be greater than 0, got '0ms'",
    ),
    (
        "dns-ttl-bare",
        upstream(dns_ttl=30),
        "upstreams.users.dns_ttl: a duration needs a unit, e.g. '5s'",
    ),
    (
        "tls-verify-string",
        upstream(tls={"verify": "false"}),
        "upstreams.users.tls.verify: expected a boolean (true or false), got 'false'",
    ),
    (
        "tls-ca-file-empty",
        upstream(tls={"ca_file": ""}),
        "upstreams.users.tls.ca_file: expected a file path, got ''",
    ),
    (
        "host-header-empty",
        upstream(host_header=""),
        "upstreams.users.host_header: expected 'preserve', 'target' or a fixed host such as"
        " 'api.internal:8443', got ''",
    ),
    (
        "host-header-space",
        upstream(host_header="api internal"),
        "upstreams.users.host_header: expected 'preserve', 'target' or a fixed host such as"
        " 'api.internal:8443', got 'api internal'",
    ),
    (
        "host-header-crlf",
        upstream(host_header="a.internal\r\nX-Evil: 1"),
        "upstreams.users.host_header: expected 'preserve', 'target' or a fixed host such as"
        " 'api.internal:8443', got 'a.internal\\r\\nX-Evil: 1'",
    ),
    (
        "host-header-bad-port",
        upstream(host_header="api.internal:0"),
        "upstreams.users.host_header: expected 'preserve', 'target' or a fixed host such as"
        " 'api.internal:8443', got 'api.internal:0'",
    ),
    # routes
    ("route-not-mapping", base(routes=["users"]), "routes[0]: expected a mapping, got 'users'"),
    (
        "route-no-name",
        base(routes=[{"upstream": "users"}]),
        "routes[0].name: missing required key",
    ),
    (
        "route-no-upstream",
        base(routes=[{"name": "users"}]),
        "routes[0].upstream: missing required key",
    ),
    (
        "route-name-space",
        route(name="users api"),
        "routes[0].name: a route name is a metrics label: only letters, digits, '_', '.'"
        " and '-', got 'users api'",
    ),
    (
        "route-name-duplicate",
        base(
            routes=[
                {"name": "web", "upstream": "users"},
                {"name": "api", "upstream": "users", "match": {"path_prefix": "/a"}},
                {"name": "other", "upstream": "users", "match": {"path_prefix": "/o"}},
                {"name": "api", "upstream": "users", "match": {"path_prefix": "/b"}},
            ]
        ),
        "routes[3].name: duplicate route name 'api' (first at routes[1])",
    ),
    (
        "route-unknown-upstream",
        route(upstream="usres"),
        "routes[0].upstream: unknown upstream 'usres' (did you mean 'users'?)",
    ),
    (
        "route-unknown-upstream-far",
        route(upstream="billing"),
        "routes[0].upstream: unknown upstream 'billing'",
    ),
    (
        "route-misspelt-key",
        base(
            routes=[
                {"name": "a", "upstream": "users", "match": {"path_prefix": "/a"}},
                {"name": "b", "upstream": "users", "match": {"path_prefix": "/b"}},
                {"name": "c", "upstream": "users", "mtach": {"path_prefix": "/c"}},
            ]
        ),
        "routes[2].mtach: unknown key (did you mean 'match'?)",
    ),
    (
        "strip-prefix-string",
        route(strip_prefix="true"),
        "routes[0].strip_prefix: expected a boolean (true or false), got 'true'",
    ),
    (
        "match-not-mapping",
        route(match="/users"),
        "routes[0].match: expected a mapping, got '/users'",
    ),
    (
        "match-unknown-key",
        match(path="/users"),
        "routes[0].match.path: unknown key (did you mean 'path_prefix'?)",
    ),
    (
        "match-host-port",
        match(host="api.example.com:8080"),
        "routes[0].match.host: a host to match has no port, got 'api.example.com:8080'",
    ),
    (
        "match-host-ipv6-port",
        match(host="[::1]:8080"),
        "routes[0].match.host: a host to match has no port, got '[::1]:8080'",
    ),
    (
        "match-host-bad-chars",
        match(host="api!.example.com"),
        "routes[0].match.host: expected a host name such as 'api.example.com' or a wildcard"
        " such as '*.example.com', got 'api!.example.com'",
    ),
    (
        "match-host-star-only",
        match(host="*"),
        "routes[0].match.host: expected a host name such as 'api.example.com' or a wildcard"
        " such as '*.example.com', got '*'",
    ),
    (
        "match-host-inner-star",
        match(host="api.*.com"),
        "routes[0].match.host: expected a host name such as 'api.example.com' or a wildcard"
        " such as '*.example.com', got 'api.*.com'",
    ),
    (
        "match-host-numeric-wildcard",
        match(host="*.10"),
        "routes[0].match.host: expected a host name such as 'api.example.com' or a wildcard"
        " such as '*.example.com', got '*.10'",
    ),
    (
        "match-host-int",
        match(host=5),
        "routes[0].match.host: expected a string, got 5 (quote it)",
    ),
    (
        "path-prefix-no-slash",
        match(path_prefix="users"),
        "routes[0].match.path_prefix: must start with '/', got 'users'",
    ),
    (
        "path-prefix-query",
        match(path_prefix="/users?id=1"),
        "routes[0].match.path_prefix: must be a path without query, fragment, spaces or"
        " control characters, got '/users?id=1'",
    ),
    (
        "path-prefix-space",
        match(path_prefix="/my users"),
        "routes[0].match.path_prefix: must be a path without query, fragment, spaces or"
        " control characters, got '/my users'",
    ),
    (
        "methods-empty",
        match(methods=[]),
        "routes[0].match.methods: expected at least one method (omit the key to match every"
        " method)",
    ),
    (
        "methods-string",
        match(methods="GET"),
        "routes[0].match.methods: expected a list of methods, got 'GET'",
    ),
    (
        "methods-not-token",
        match(methods=["GET", "GET POST"]),
        "routes[0].match.methods[1]: expected an HTTP method such as 'GET', got 'GET POST'",
    ),
    (
        "headers-list",
        match(headers=["X-Env: prod"]),
        "routes[0].match.headers: expected a mapping of header names to values, got a list",
    ),
    (
        "headers-value-int",
        match(headers={"X-Version": 2}),
        "routes[0].match.headers.X-Version: expected a string, got 2 (quote it)",
    ),
    (
        "headers-bad-name",
        match(headers={"X Env": "prod"}),
        "routes[0].match.headers.X Env: expected a header name such as 'X-Env', got 'X Env'",
    ),
    (
        "headers-same-name-other-case",
        match(headers={"X-Env": "prod", "x-env": "dev"}),
        "routes[0].match.headers.x-env: duplicate header 'x-env' (first as 'X-Env')",
    ),
    (
        "headers-value-newline",
        match(headers={"X-Env": "a\nb"}),
        "routes[0].match.headers.X-Env: a header value cannot contain CR, LF or NUL",
    ),
]


@pytest.mark.parametrize(
    ("doc", "expected"), [case[1:] for case in ONE_PROBLEM], ids=[case[0] for case in ONE_PROBLEM]
)
def test_one_problem(doc: object, expected: str) -> None:
    assert problems(doc) == [expected]


def test_empty_file_names_both_required_sections() -> None:
    assert problems("") == ["upstreams: missing required key", "routes: missing required key"]
    assert problems("# only a comment\n") == [
        "upstreams: missing required key",
        "routes: missing required key",
    ]


@given(
    st.one_of(
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=0).map(str),
    )
)
def test_bare_numbers_never_pass_as_durations_or_sizes(number: int | float | str) -> None:
    doc = base(server={"limits": {"max_body": number}, "timeouts": {"drain": number}})
    assert problems(doc) == [
        "server.limits.max_body: a size needs a unit, e.g. '64KiB'",
        "server.timeouts.drain: a duration needs a unit, e.g. '5s'",
    ]


# --- Shadowed routes -------------------------------------------------------------------------


def test_shadowed_route_names_the_winner() -> None:
    routes = [
        {"name": "a", "upstream": "users", "match": {"path_prefix": "/a"}},
        {"name": "api", "upstream": "users", "match": {"path_prefix": "/api"}},
        {"name": "b", "upstream": "users", "match": {"path_prefix": "/b"}},
        {
            "name": "api-get",
            "upstream": "users",
            "match": {"path_prefix": "/api", "methods": ["GET"]},
        },
    ]
    assert problems(base(routes=routes)) == [
        "routes[3]: shadowed by routes[1] ('api'), it can never match"
    ]


def test_routes_that_only_look_alike_are_not_shadowed() -> None:
    routes = [
        # A narrower route first, then the broader one: both can match.
        {"name": "get", "upstream": "users", "match": {"methods": ["GET"]}},
        {"name": "beta", "upstream": "users", "match": {"headers": {"X-Beta": "1"}}},
        {"name": "all", "upstream": "users"},
        # A host route wins over "all" for its host whatever the order.
        {"name": "host", "upstream": "users", "match": {"host": "api.example.com"}},
        {"name": "users", "upstream": "users", "match": {"path_prefix": "/users"}},
    ]
    names = [r.name for r in parse(base(routes=routes)).routes]
    assert names == ["get", "beta", "all", "host", "users"]


def test_shadowing_is_checked_even_when_another_route_is_invalid() -> None:
    routes = [
        {"name": "all", "upstream": "users"},
        {"name": "bad", "upstream": "nope"},
        {"name": "again", "upstream": "users", "match": {"path_prefix": "/"}},
    ]
    assert problems(base(routes=routes)) == [
        "routes[1].upstream: unknown upstream 'nope'",
        "routes[2]: shadowed by routes[0] ('all'), it can never match",
    ]


# --- YAML itself ------------------------------------------------------------------------------

MINIMAL_TEXT = """\
upstreams:
  users:
    targets: ["http://10.0.0.5:9000"]
routes:
  - name: users
    upstream: users
"""


def test_duplicate_key_in_a_route() -> None:
    text = MINIMAL_TEXT + "    match:\n      host: a.example.com\n      host: b.example.com\n"
    assert problems(text) == ["routes[0].match.host: duplicate key"]


def test_duplicate_keys_at_every_level() -> None:
    text = """\
upstreams:
  users:
    targets: ["http://10.0.0.5:9000"]
    balance: round_robin
    balance: round_robin
  users:
    targets: ["http://10.0.0.6:9000"]
routes:
  - name: users
    upstream: users
    match: {headers: {X-Env: a, X-Env: b}}
logging: {level: info}
logging: {level: debug}
"""
    # A mapping's own duplicates come before its children's problems.
    assert problems(text) == [
        "logging: duplicate key",
        "upstreams.users: duplicate key",
        "routes[0].match.headers.X-Env: duplicate key",
    ]


def test_merge_keys_override_without_being_duplicates() -> None:
    text = """\
upstreams:
  users: &users
    targets: ["http://10.0.0.5:9000"]
    dns_ttl: 10s
  orders:
    <<: *users
    dns_ttl: 5s
routes:
  - name: users
    upstream: orders
"""
    orders = parse(text).upstream("orders")
    assert orders.dns_ttl == 5.0
    assert orders.targets == (Target("http", "10.0.0.5", 9000),)


def test_yaml_syntax_error_has_line_and_column() -> None:
    text = "routes:\n  - name: a\n    upstream: b: c\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, {}, source="gw.yaml")
    assert info.value.problems == [
        "gw.yaml: invalid YAML at line 3, column 16: mapping values are not allowed here"
    ]


def test_yaml_with_two_documents_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL_TEXT + "---\n" + MINIMAL_TEXT, {})
    assert info.value.problems == [
        "<string>: invalid YAML at line 7, column 1: expected a single document in the stream,"
        " but found another document"
    ]


def test_yaml_forbidden_character_has_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("server:\n  via_name: a\x00b\n", {})
    assert info.value.problems == [
        "<string>: invalid YAML at line 2, column 14: character U+0000 is not allowed"
    ]


def test_yaml_unknown_tags_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("!!python/object:os.system {}\n", {})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("<string>: invalid YAML at line 1, column 1:")


# --- Several problems at once -----------------------------------------------------------------


def test_all_problems_are_reported_together() -> None:
    text = """\
server:
  listen: ":8080"
  limits: {max_headers: ten, max_body: 10}
  timeouts: {keepalive: 5}
  worker: 2
upstreams:
  users:
    targets: ["http://10.0.0.5:9000", "ftp://x", "http://10.0.0.5:9000/"]
    pool: {max_connections: 8, max_idle: 9}
  bad name:
    targets: []
routes:
  - name: api
    upstream: usres
  - name: api
    upstream: users
  - mtach: {}
    name: b
    upstream: users
    strip_prefix: "no"
logging: {level: INFO}
"""
    assert problems(text) == [
        "server.limits.max_headers: expected an integer, got 'ten'",
        "server.limits.max_body: a size needs a unit, e.g. '64KiB'",
        "server.timeouts.keepalive: a duration needs a unit, e.g. '5s'",
        "server.worker: unknown key (did you mean 'workers'?)",
        "upstreams.users.targets[1]: a target's scheme must be http or https, got 'ftp://x'",
        "upstreams.users.targets[2]: duplicate target 'http://10.0.0.5:9000'"
        " (first at upstreams.users.targets[0])",
        "upstreams.users.pool.max_idle: must not exceed max_connections (8), got 9",
        "upstreams.bad name: an upstream name has only letters, digits, '_' and '-',"
        " got 'bad name'",
        "upstreams.bad name.targets: at least one target is required",
        "routes[0].upstream: unknown upstream 'usres' (did you mean 'users'?)",
        "routes[1].name: duplicate route name 'api' (first at routes[0])",
        "routes[2].mtach: unknown key (did you mean 'match'?)",
        "routes[2].strip_prefix: expected a boolean (true or false), got 'no'",
        "logging.level: expected one of 'debug', 'info', 'warning', 'error', got 'INFO'"
        " (did you mean 'info'?)",
    ]


def test_routes_are_not_blamed_when_upstreams_is_broken() -> None:
    # One mistake, one line: without a usable `upstreams` no route reference is checked.
    assert problems(base(upstreams=[TARGET])) == [
        "upstreams: expected a mapping of upstream names to upstreams, got a list"
    ]


def test_a_route_may_name_an_upstream_that_has_problems() -> None:
    assert problems(upstream(balance="random")) == [
        "upstreams.users.balance: expected one of 'round_robin', 'least_requests',"
        " 'consistent_hash', got 'random'"
    ]


# --- Environment interpolation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "environ", "expected"),
    [
        ("${ENV}", {"ENV": "prod"}, "prod"),
        ("pre-${ENV}-post", {"ENV": "prod"}, "pre-prod-post"),
        ("${A}${B}", {"A": "x", "B": "y"}, "xy"),
        ("${ENV:-dev}", {}, "dev"),
        ("${ENV:-dev}", {"ENV": ""}, "dev"),
        ("${ENV:-dev}", {"ENV": "prod"}, "prod"),
        ("${ENV:-}", {}, ""),
        ("${ENV:-a:-b}", {}, "a:-b"),
        ("${ENV}", {"ENV": ""}, ""),
        ("$${ENV}", {"ENV": "prod"}, "${ENV}"),
        ("cost: $5 and $$", {}, "cost: $5 and $$"),
        ("${ENV}", {"ENV": "${OTHER}"}, "${OTHER}"),  # values are not interpolated again
    ],
)
def test_interpolation(written: str, environ: dict[str, str], expected: str) -> None:
    config = parse(match(headers={"X-Env": written}), environ)
    assert config.routes[0].match.headers == (HeaderMatch("x-env", expected),)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("${ENV}", "environment variable 'ENV' is not set"),
        ("a-${ENV}", "environment variable 'ENV' is not set"),
        (
            "${1ENV}",
            "invalid reference '${1ENV}': write ${NAME} or ${NAME:-default}, or $${ for"
            " a literal '${'",
        ),
        (
            "${}",
            "invalid reference '${}': write ${NAME} or ${NAME:-default}, or $${ for a literal '${'",
        ),
        (
            "${ENV",
            "invalid reference '${': write ${NAME} or ${NAME:-default}, or $${ for a literal '${'",
        ),
        (
            "${ENV-x}",
            "invalid reference '${ENV-x}': write ${NAME} or ${NAME:-default}, or $${"
            " for a literal '${'",
        ),
    ],
)
def test_interpolation_problems(written: str, expected: str) -> None:
    assert problems(match(headers={"X-Env": written})) == [
        f"routes[0].match.headers.X-Env: {expected}"
    ]


def test_interpolation_happens_before_conversion() -> None:
    doc = base(
        server={
            "listen": "${HOST:-127.0.0.1}:${PORT}",
            "limits": {"max_body": "${MAX_BODY}", "max_headers": "${MAX_HEADERS}"},
            "timeouts": {"keepalive": "${KEEPALIVE}"},
        },
        logging={"access_log": "${ACCESS_LOG}"},
        upstreams={"users": {"targets": ["http://${USERS_HOST}:9000"]}},
    )
    environ = {
        "PORT": "8000",
        "MAX_BODY": "1MiB",
        "MAX_HEADERS": "50",
        "KEEPALIVE": "30s",
        "ACCESS_LOG": "False",
        "USERS_HOST": "users.internal",
    }
    config = parse(doc, environ)
    assert config.server.listen == ListenAddress("127.0.0.1", 8000)
    assert config.server.limits.max_body == MIB
    assert config.server.limits.max_headers == 50
    assert config.server.timeouts.keepalive == 30.0
    assert config.logging.access_log is False
    assert config.upstreams[0].targets == (Target("http", "users.internal", 9000),)
    # The model holds plain strings, whatever the loader used inside.
    assert type(config.upstreams[0].targets[0].host) is str


@pytest.mark.parametrize(
    ("doc", "environ", "expected"),
    [
        (
            base(server={"limits": {"max_headers": "${N}"}}),
            {"N": "ten"},
            "server.limits.max_headers: expected an integer, got 'ten'",
        ),
        (
            base(server={"limits": {"max_body": "${N}"}}),
            {"N": "10"},
            "server.limits.max_body: a size needs a unit, e.g. '64KiB'",
        ),
        (
            base(logging={"access_log": "${LOG}"}),
            {"LOG": "yes"},
            "logging.access_log: expected a boolean (true or false), got 'yes'",
        ),
        (
            upstream(targets=["http://${USERS_HOST}:9000"]),
            {},
            "upstreams.users.targets[0]: environment variable 'USERS_HOST' is not set",
        ),
    ],
)
def test_interpolated_values_are_validated(
    doc: object, environ: dict[str, str], expected: str
) -> None:
    assert problems(doc, environ) == [expected]


def test_environ_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_VIA", "edge-1")
    text = yaml.safe_dump(base(server={"via_name": "${GATEWAY_TEST_VIA}"}))
    assert parse_config(text).server.via_name == "edge-1"


def test_mapping_keys_are_not_interpolated() -> None:
    assert problems(base(server={"${KEY}": "x"}), {"KEY": "listen"}) == [
        "server.${KEY}: unknown key"
    ]


def test_unset_variables_are_all_reported() -> None:
    doc = base(server={"listen": "${LISTEN}", "via_name": "${VIA}"})
    assert problems(doc) == [
        "server.listen: environment variable 'LISTEN' is not set",
        "server.via_name: environment variable 'VIA' is not set",
    ]


# --- server.workers and admin.token ----------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "environ", "expected"),
    [
        (4, {}, 4),
        (1, {}, 1),
        ("auto", {}, "auto"),
        ("${WORKERS}", {"WORKERS": "8"}, 8),
        ("${WORKERS:-auto}", {}, "auto"),
        ("${WORKERS:-2}", {}, 2),
    ],
)
def test_workers(written: object, environ: dict[str, str], expected: int | str) -> None:
    assert parse(base(server={"workers": written}), environ).server.workers == expected


@pytest.mark.parametrize(
    ("written", "environ", "expected"),
    [
        (0, {}, "must be at least 1, got 0"),
        (-1, {}, "must be at least 1, got -1"),
        ("four", {}, "expected an integer or 'auto', got 'four'"),
        # Quoted in the YAML itself: a string, as for every other integer.
        ("4", {}, "expected an integer or 'auto', got '4'"),
        ("Auto", {}, "expected an integer or 'auto', got 'Auto'"),
        (True, {}, "expected an integer or 'auto', got true"),
        (2.5, {}, "expected an integer or 'auto', got 2.5"),
        (None, {}, "expected an integer or 'auto', got null"),
        ([2], {}, "expected an integer or 'auto', got a list"),
        ("${WORKERS}", {"WORKERS": "four"}, "expected an integer or 'auto', got 'four'"),
        ("${WORKERS}", {"WORKERS": "0"}, "must be at least 1, got 0"),
        ("${WORKERS:-}", {}, "expected an integer or 'auto', got ''"),
    ],
)
def test_workers_problems(written: object, environ: dict[str, str], expected: str) -> None:
    assert problems(base(server={"workers": written}), environ) == [f"server.workers: {expected}"]


@pytest.mark.parametrize(
    "written",
    [
        ADMIN_TOKEN,
        "a" * 16,  # the shortest accepted
        "!#$%&'()*+,-./:;<=>?@[]^_`{|}~",  # every visible ASCII character is fine
        "x" * 200,
    ],
)
def test_admin_token(written: str) -> None:
    assert parse(base(admin={"token": written})).admin.token == written


_TOKEN_FORMAT = "expected at least 16 visible ASCII characters"


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("too-short-token", _TOKEN_FORMAT),  # 15 characters
        ("", _TOKEN_FORMAT),
        ("t\u00f6ken-0123456789abcdef", _TOKEN_FORMAT),  # non-ASCII
        ("token with spaces 0123", _TOKEN_FORMAT),
        ("token-0123456789\tabc", _TOKEN_FORMAT),
        # A number is refused without being echoed: it is still a secret.
        (1234567890123456789, "expected a string, got a number (quote it)"),
        (["a" * 16], "expected a string, got a list"),
    ],
)
def test_admin_token_problems(written: object, expected: str) -> None:
    found = problems(base(admin={"token": written}))
    assert found == [f"admin.token: {expected}"]
    assert "1234567890123456789" not in found[0]


@pytest.mark.parametrize(
    ("listen", "shown"),
    [
        ("0.0.0.0:9901", "0.0.0.0:9901"),
        (":9901", "0.0.0.0:9901"),
        ("10.0.0.1:9901", "10.0.0.1:9901"),
        ("[::]:9901", "[::]:9901"),
        ("[fd00::1]:9901", "[fd00::1]:9901"),
        ("admin.internal:9901", "admin.internal:9901"),
    ],
)
def test_admin_token_required_off_loopback(listen: str, shown: str) -> None:
    assert problems(base(admin={"listen": listen})) == [
        f"admin.token: required when admin.listen ({shown}) is not a loopback address"
    ]
    config = parse(base(admin={"listen": listen, "token": ADMIN_TOKEN}))
    assert config.admin.token == ADMIN_TOKEN


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:9901", "127.0.0.2:9901", "[::1]:9901", "localhost:9901", "LocalHost:0"]
)
def test_admin_token_not_required_on_loopback(listen: str) -> None:
    assert parse(base(admin={"listen": listen})).admin.token is None


def test_admin_token_left_unset_through_the_environment() -> None:
    admin = {"listen": "${ADMIN_LISTEN:-127.0.0.1:9901}", "token": "${ADMIN_TOKEN:-}"}
    assert parse(base(admin=admin)).admin == AdminConfig()
    exposed = {"ADMIN_LISTEN": "0.0.0.0:9901"}
    assert problems(base(admin=admin), exposed) == [
        "admin.token: required when admin.listen (0.0.0.0:9901) is not a loopback address"
    ]
    config = parse(base(admin=admin), {**exposed, "ADMIN_TOKEN": ADMIN_TOKEN})
    assert config.admin == AdminConfig(ListenAddress("0.0.0.0", 9901), ADMIN_TOKEN)


def test_public_admin_without_token_and_overlap() -> None:
    assert problems(base(admin={"listen": ":8080"})) == [
        "admin.listen: 0.0.0.0:8080 overlaps server.listen (0.0.0.0:8080):"
        " the admin endpoints never share a public port",
        "admin.token: required when admin.listen (0.0.0.0:8080) is not a loopback address",
    ]


def test_a_bad_token_is_reported_once() -> None:
    # The admin section is invalid, so "required" is not reported on top of the format.
    assert problems(base(admin={"listen": "0.0.0.0:9901", "token": "short"})) == [
        f"admin.token: {_TOKEN_FORMAT}"
    ]


def test_admin_token_is_not_in_repr() -> None:
    assert ADMIN_TOKEN not in repr(parse(base(admin={"token": ADMIN_TOKEN})))


# --- Values that convert ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        (":8080", ListenAddress("0.0.0.0", 8080)),
        ("127.0.0.1:0", ListenAddress("127.0.0.1", 0)),
        ("[::1]:8080", ListenAddress("::1", 8080)),
        ("[::]:443", ListenAddress("::", 443)),
        ("[0:0::1]:80", ListenAddress("::1", 80)),
        ("LocalHost:65535", ListenAddress("localhost", 65535)),
    ],
)
def test_listen_addresses(written: str, expected: ListenAddress) -> None:
    assert parse(base(server={"listen": written})).server.listen == expected


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("http://10.0.0.5:9000", Target("http", "10.0.0.5", 9000)),
        ("http://10.0.0.5", Target("http", "10.0.0.5", 80)),
        ("https://api.internal", Target("https", "api.internal", 443)),
        ("HTTPS://API.Internal:8443/", Target("https", "api.internal", 8443)),
        ("http://[fd00::5]:9000", Target("http", "fd00::5", 9000)),
        ("https://[::1]", Target("https", "::1", 443)),
        ("http://users_service:8000", Target("http", "users_service", 8000)),
        ("http://10.0.0.5.nip.io", Target("http", "10.0.0.5.nip.io", 80)),
        ("http://0x7f.example", Target("http", "0x7f.example", 80)),
    ],
)
def test_targets(written: str, expected: Target) -> None:
    assert parse(upstream(targets=[written])).upstreams[0].targets == (expected,)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("api.example.com", "api.example.com"),
        ("API.Example.COM", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("*.Example.com", "*.example.com"),
        ("localhost", "localhost"),
        ("10.0.0.1", "10.0.0.1"),
        ("[0:0::1]", "[::1]"),
    ],
)
def test_match_hosts(written: str, expected: str) -> None:
    assert parse(match(host=written)).routes[0].match.host == expected


@pytest.mark.parametrize(
    "written", ["preserve", "target", "api.internal", "api.internal:8443", "[::1]:8080"]
)
def test_host_header_values(written: str) -> None:
    assert parse(upstream(host_header=written)).upstreams[0].host_header == written


def test_methods_are_upper_cased_into_a_frozenset() -> None:
    methods = parse(match(methods=["get", "POST", "get"])).routes[0].match.methods
    assert methods == frozenset({"GET", "POST"})


def test_null_methods_means_every_method() -> None:
    assert parse(match(methods=None)).routes[0].match.methods is None


def test_header_names_are_lower_cased_in_file_order() -> None:
    headers = parse(match(headers={"X-Env": "prod", "Accept": "text/html"})).routes[0].match.headers
    assert headers == (HeaderMatch("x-env", "prod"), HeaderMatch("accept", "text/html"))


def test_trusted_proxies_become_networks() -> None:
    doc = base(server={"trusted_proxies": ["10.1.2.3/8", "192.0.2.7", "fd00::/8"]})
    assert parse(doc).server.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("fd00::/8"),
    )


def test_omitted_max_idle_follows_a_small_max_connections() -> None:
    pool = parse(upstream(pool={"max_connections": 10})).upstreams[0].pool
    assert pool == PoolConfig(max_connections=10, max_idle=10)


def test_null_sections_take_their_defaults() -> None:
    config = parse(base(server=None, admin=None, logging=None))
    assert (config.server, config.admin, config.logging) == (
        ServerConfig(),
        AdminConfig(),
        LoggingConfig(),
    )


def test_partial_sections_keep_the_other_defaults() -> None:
    config = parse(base(server={"limits": {"max_body": "1MiB"}, "timeouts": {"drain": "5s"}}))
    assert config.server == ServerConfig(
        limits=ServerLimits(max_body=MIB), timeouts=ServerTimeouts(drain=5.0)
    )


def test_ca_file_must_be_an_existing_regular_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert parse(upstream(tls={"ca_file": str(ca)})).upstreams[0].tls.ca_file == str(ca)
    assert problems(upstream(tls={"ca_file": str(tmp_path / "missing.pem")})) == [
        f"upstreams.users.tls.ca_file: no such file: '{tmp_path / 'missing.pem'}'"
    ]
    assert problems(upstream(tls={"ca_file": str(tmp_path)})) == [
        f"upstreams.users.tls.ca_file: not a regular file: '{tmp_path}'"
    ]


def test_ca_file_may_be_left_unset_through_the_environment() -> None:
    doc = upstream(tls={"ca_file": "${CA_FILE:-}"})
    assert parse(doc).upstreams[0].tls.ca_file is None


# --- Listeners: TLS, HTTP/2, PROXY protocol --------------------------------------------------

# Relative paths, as a config file writes them: resolved against the file's folder.
TLS = {"cert": "tls/gateway.crt", "key": "tls/gateway.key"}


def sni(*names: str, cert: str = "tls/api.crt", key: str = "tls/api.key") -> dict[str, Any]:
    return {"server_names": list(names), "cert": cert, "key": key}


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    """A config folder with tls/: two certificates, another key, an encrypted key, junk."""
    write_certificate(tmp_path, "tls/gateway.crt", "tls/gateway.key")
    write_certificate(tmp_path, "tls/api.crt", "tls/api.key", "api.example.com")
    write_certificate(tmp_path, "tls/other.crt", "tls/other.key", "other.example.com")
    key = serialization.load_pem_private_key((tmp_path / "tls/gateway.key").read_bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    (tmp_path / "tls/encrypted.key").write_bytes(encrypted)
    (tmp_path / "tls/junk.pem").write_text("not a certificate\n")
    return tmp_path


def load_in(directory: Path, doc: dict[str, Any]) -> GatewayConfig:
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_config(path, {})


def problems_in(directory: Path, doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_in(directory, doc)
    return info.value.problems


def listeners(*items: dict[str, Any], **server: Any) -> dict[str, Any]:
    return base(server={"listeners": list(items), **server})


def tls_listener(**settings: Any) -> dict[str, Any]:
    return {"listen": ":8443", "tls": TLS, **settings}


_MISMATCH = "[X509: KEY_VALUES_MISMATCH] key values mismatch"
_ENCRYPTED = (
    "is encrypted: the gateway reads private keys without a passphrase (write it out"
    " unencrypted, e.g. with `openssl pkey`, readable only by the gateway)"
)
L0 = "server.listeners[0]"

# (id, document, problem lines); {dir} is the config file's folder.
LISTENER_PROBLEMS: list[tuple[str, dict[str, Any], list[str]]] = [
    # The list itself
    (
        "listen-and-listeners",
        base(server={"listen": ":8080", "listeners": [{"listen": ":8081"}]}),
        [
            "server.listeners: give either server.listen (one plain listener) or"
            " server.listeners, not both"
        ],
    ),
    ("no-listeners", listeners(), ["server.listeners: at least one listener is required"]),
    (
        "too-many-listeners",
        listeners(*({"listen": f"127.0.0.1:{8000 + i}"} for i in range(17))),
        ["server.listeners: at most 16 listeners, got 17"],
    ),
    (
        "listeners-not-a-list",
        base(server={"listeners": {"listen": ":8080"}}),
        ["server.listeners: expected a list of listeners, got a mapping"],
    ),
    ("listener-without-listen", listeners({"tls": None}), [f"{L0}.listen: missing required key"]),
    (
        "listener-unknown-key",
        listeners({"listen": ":8080", "tsl": None}),
        [f"{L0}.tsl: unknown key (did you mean 'tls'?)"],
    ),
    (
        "overlapping-listeners",
        listeners(
            {"listen": ":8080"},
            {"listen": "127.0.0.1:8080"},
            {"listen": "127.0.0.1:8081"},
            {"listen": "[::]:8081"},
            {"listen": "127.0.0.2:8081"},
        ),
        [
            "server.listeners[1].listen: 127.0.0.1:8080 overlaps server.listeners[0].listen"
            " (0.0.0.0:8080)",
            "server.listeners[3].listen: [::]:8081 overlaps server.listeners[2].listen"
            " (127.0.0.1:8081)",
            "server.listeners[4].listen: 127.0.0.2:8081 overlaps server.listeners[3].listen"
            " ([::]:8081)",
        ],
    ),
    (
        "admin-overlaps-a-later-listener",
        listeners({"listen": ":8080"}, {"listen": "127.0.0.1:9901"}),
        [
            "admin.listen: 127.0.0.1:9901 overlaps server.listeners[1].listen (127.0.0.1:9901):"
            " the admin endpoints never share a public port"
        ],
    ),
    # Certificate files
    (
        "cert-missing-file",
        listeners(tls_listener(tls={**TLS, "cert": "tls/none.crt"})),
        [f"{L0}.tls.cert: no such file: '{{dir}}/tls/none.crt'"],
    ),
    (
        "key-not-given",
        listeners(tls_listener(tls={"cert": TLS["cert"]})),
        [f"{L0}.tls.key: missing required key"],
    ),
    (
        "tls-empty",
        listeners(tls_listener(tls={})),
        [f"{L0}.tls.cert: missing required key", f"{L0}.tls.key: missing required key"],
    ),
    (
        "key-of-another-certificate",
        listeners(tls_listener(tls={**TLS, "key": "tls/other.key"})),
        [f"{L0}.tls.cert: does not load with its key '{{dir}}/tls/other.key': {_MISMATCH}"],
    ),
    (
        "cert-not-pem",
        listeners(tls_listener(tls={**TLS, "cert": "tls/junk.pem"})),
        [
            f"{L0}.tls.cert: no PEM certificate ('-----BEGIN CERTIFICATE-----') in"
            " '{dir}/tls/junk.pem'"
        ],
    ),
    (
        "cert-and-key-swapped",
        listeners(tls_listener(tls={"cert": TLS["key"], "key": TLS["cert"]})),
        [
            f"{L0}.tls.cert: no PEM certificate ('-----BEGIN CERTIFICATE-----') in"
            " '{dir}/tls/gateway.key'",
            f"{L0}.tls.key: no PEM private key ('-----BEGIN PRIVATE KEY-----') in"
            " '{dir}/tls/gateway.crt'",
        ],
    ),
    (
        "key-encrypted",
        listeners(tls_listener(tls={**TLS, "key": "tls/encrypted.key"})),
        [f"{L0}.tls.key: '{{dir}}/tls/encrypted.key' {_ENCRYPTED}"],
    ),
    (
        "sni-key-of-another-certificate",
        listeners(tls_listener(tls={**TLS, "sni": [sni("api.example.com", key="tls/other.key")]})),
        [f"{L0}.tls.sni[0].cert: does not load with its key '{{dir}}/tls/other.key': {_MISMATCH}"],
    ),
    (
        "sni-cert-missing-file",
        listeners(tls_listener(tls={**TLS, "sni": [sni("api.example.com", cert="tls/x.crt")]})),
        [f"{L0}.tls.sni[0].cert: no such file: '{{dir}}/tls/x.crt'"],
    ),
    # SNI names
    (
        "sni-without-names",
        listeners(
            tls_listener(tls={**TLS, "sni": [{"cert": "tls/api.crt", "key": "tls/api.key"}]})
        ),
        [f"{L0}.tls.sni[0].server_names: missing required key"],
    ),
    (
        "sni-empty-names",
        listeners(tls_listener(tls={**TLS, "sni": [sni()]})),
        [f"{L0}.tls.sni[0].server_names: at least one server name is required"],
    ),
    (
        "sni-bad-names",
        listeners(
            tls_listener(
                tls={
                    **TLS,
                    "sni": [
                        sni("*.*.example.com", "api.*.example.com", "*", "10.0.0.1", "a b.com")
                    ],
                }
            )
        ),
        [
            f"{L0}.tls.sni[0].server_names[{i}]: expected a host name such as"
            f" 'api.example.com' or a wildcard such as '*.example.com', got {name!r}"
            for i, name in enumerate(["*.*.example.com", "api.*.example.com", "*"])
        ]
        + [
            f"{L0}.tls.sni[0].server_names[3]: SNI never carries an IP address (RFC 6066 §3),"
            " got '10.0.0.1'",
            f"{L0}.tls.sni[0].server_names[4]: expected a host name such as 'api.example.com'"
            " or a wildcard such as '*.example.com', got 'a b.com'",
        ],
    ),
    (
        "sni-name-twice",
        listeners(tls_listener(tls={**TLS, "sni": [sni("api.example.com", "API.example.com")]})),
        [f"{L0}.tls.sni[0].server_names[1]: duplicate server name 'api.example.com'"],
    ),
    (
        "sni-name-in-two-entries",
        listeners(
            tls_listener(
                tls={
                    **TLS,
                    "sni": [
                        sni("api.example.com", "*.example.org"),
                        sni(
                            "www.example.com",
                            "*.EXAMPLE.org",
                            cert="tls/other.crt",
                            key="tls/other.key",
                        ),
                    ],
                }
            )
        ),
        [
            f"{L0}.tls.sni[1].server_names[1]: '*.example.org' is already in"
            f" {L0}.tls.sni[0].server_names"
        ],
    ),
    # Versions and ciphers
    (
        "min-version-1.1",
        listeners(tls_listener(tls={**TLS, "min_version": "1.1"})),
        [f"{L0}.tls.min_version: expected '1.2' or '1.3', got '1.1'"],
    ),
    (
        "min-version-float",
        listeners(tls_listener(tls={**TLS, "min_version": 1.25})),
        [f"{L0}.tls.min_version: expected '1.2' or '1.3', got 1.25"],
    ),
    (
        "ciphers-unknown",
        listeners(tls_listener(tls={**TLS, "ciphers": "NOPE-CIPHER"})),
        [
            f"{L0}.tls.ciphers: OpenSSL selects no cipher from 'NOPE-CIPHER' (try it with"
            " `openssl ciphers`)"
        ],
    ),
    (
        "ciphers-anonymous",
        listeners(tls_listener(tls={**TLS, "ciphers": "ECDHE+AESGCM:ADH-AES128-GCM-SHA256"})),
        [
            f"{L0}.tls.ciphers: selects suites without authentication or encryption"
            " (ADH-AES128-GCM-SHA256): add ':!aNULL:!eNULL'"
        ],
    ),
    (
        "ciphers-with-tls-1.3-only",
        listeners(tls_listener(tls={**TLS, "ciphers": "ECDHE+AESGCM", "min_version": "1.3"})),
        [
            f"{L0}.tls.ciphers: sets the TLS 1.2 suites, and min_version: '1.3' refuses TLS 1.2:"
            " remove one"
        ],
    ),
    # HTTP/2 limits
    *(
        (
            f"http2-{key}-{written}",
            listeners({"listen": ":8080", "http2": {key: written}}),
            [f"{L0}.http2.{key}: {message}"],
        )
        for key, written, message in [
            ("max_concurrent_streams", 0, "must be at least 1, got 0"),
            ("max_concurrent_streams", 10_001, "must be from 1 to 10000, got 10001"),
            ("max_header_list_size", "2KiB", "must be from 4KiB to 16MiB, got '2KiB'"),
            ("max_header_list_size", "17MiB", "must be from 4KiB to 16MiB, got '17MiB'"),
            ("max_header_list_size", 65536, "a size needs a unit, e.g. '64KiB'"),
            (
                "max_frame_size",
                "16383B",
                "must be from 16KiB to 16777215B (RFC 9113 §6.5.2), got '16383B'",
            ),
            (
                "max_frame_size",
                "16MiB",
                "must be from 16KiB to 16777215B (RFC 9113 §6.5.2), got '16MiB'",
            ),
            (
                "initial_window_size",
                "1000B",
                "must be from 1KiB to 2147483647B (2^31-1, RFC 9113 §6.5.2), got '1000B'",
            ),
            (
                "initial_window_size",
                "2GiB",
                "must be from 1KiB to 2147483647B (2^31-1, RFC 9113 §6.5.2), got '2GiB'",
            ),
            ("max_requests_per_connection", 0, "must be at least 1, got 0"),
            ("enabled", "yes", "expected a boolean (true or false), got 'yes'"),
        ]
    ),
    *(
        (
            f"reset-budget-{key}-{written}",
            listeners({"listen": ":8080", "http2": {"reset_budget": {key: written}}}),
            [f"{L0}.http2.reset_budget.{key}: {message}"],
        )
        for key, written, message in [
            ("burst", 0, "must be at least 1, got 0"),
            ("per_second", 0, "expected a number above 0, got 0"),
            ("per_second", -1.5, "expected a number above 0, got -1.5"),
            ("per_second", "fast", "expected a number above 0, got 'fast'"),
            ("per_second", float("inf"), "expected a number above 0, got inf"),
        ]
    ),
    # Relations within a listener
    (
        "h2c-while-disabled",
        listeners({"listen": ":8080", "http2": {"enabled": False, "h2c": True}}),
        [f"{L0}.http2.h2c: h2c is HTTP/2 over cleartext: it needs enabled: true"],
    ),
    (
        "h2c-on-tls",
        listeners(tls_listener(http2={"h2c": True})),
        [f"{L0}.http2.h2c: h2c is HTTP/2 over cleartext; a TLS listener negotiates h2 by ALPN"],
    ),
    (
        "redirect-on-tls",
        listeners(tls_listener(redirect_to_https=True)),
        [
            f"{L0}.redirect_to_https: this listener has tls: it serves https itself (redirect"
            " from a cleartext one)"
        ],
    ),
    # Relations between listeners and with other keys
    (
        "redirect-without-tls",
        listeners({"listen": ":8080"}, {"listen": ":8081", "redirect_to_https": True}),
        [
            "server.listeners[1].redirect_to_https: no listener has tls: there is no https"
            " listener to redirect to"
        ],
    ),
    (
        "proxy-protocol-without-trusted-proxies",
        listeners(tls_listener(proxy_protocol=True), {"listen": ":8080", "proxy_protocol": True}),
        [
            f"server.listeners[{i}].proxy_protocol: needs server.trusted_proxies: the PROXY"
            " header is accepted only from a trusted proxy, so every connection would be refused"
            for i in (0, 1)
        ],
    ),
    (
        "proxy-protocol-with-empty-trusted-proxies",
        listeners({"listen": ":8080", "proxy_protocol": True}, trusted_proxies=[]),
        [
            f"{L0}.proxy_protocol: needs server.trusted_proxies: the PROXY header is accepted"
            " only from a trusted proxy, so every connection would be refused"
        ],
    ),
]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [case[1:] for case in LISTENER_PROBLEMS],
    ids=[case[0] for case in LISTENER_PROBLEMS],
)
def test_listener_problems(tls_dir: Path, doc: dict[str, Any], expected: list[str]) -> None:
    assert problems_in(tls_dir, doc) == [line.replace("{dir}", str(tls_dir)) for line in expected]


def test_listener_problems_are_reported_with_the_others(tls_dir: Path) -> None:
    # A listener whose tls block is broken is still checked for what does not depend on it,
    # and trusted_proxies written after the listeners counts.
    doc = base(
        server={
            "listeners": [
                {
                    "listen": ":8443",
                    "tls": {**TLS, "key": "tls/other.key", "sni": [sni("10.0.0.1")]},
                    "http2": {"max_frame_size": "1MiB", "max_concurrent_streams": 0},
                    "proxy_protocol": True,
                    "redirect_to_https": True,
                },
                {"listen": ":8080", "http2": {"enabled": False, "h2c": True}},
            ],
            "trusted_proxies": [],
        },
        admin={"listen": "127.0.0.1:8080"},
    )
    assert problems_in(tls_dir, doc) == [
        f"{L0}.tls.sni[0].server_names[0]: SNI never carries an IP address (RFC 6066 §3),"
        " got '10.0.0.1'",
        f"{L0}.tls.cert: does not load with its key '{tls_dir}/tls/other.key': {_MISMATCH}",
        f"{L0}.http2.max_concurrent_streams: must be at least 1, got 0",
        f"{L0}.redirect_to_https: this listener has tls: it serves https itself (redirect from"
        " a cleartext one)",
        f"{L0}.proxy_protocol: needs server.trusted_proxies: the PROXY header is accepted only"
        " from a trusted proxy, so every connection would be refused",
        "server.listeners[1].http2.h2c: h2c is HTTP/2 over cleartext: it needs enabled: true",
    ]


def test_listeners_with_tls(tls_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(os.sep))  # relative to the config file, not the working directory
    doc = listeners(
        {
            "listen": "[::]:8443",
            "tls": {
                **TLS,
                "min_version": 1.3,  # YAML's float
                "sni": [sni("API.example.com", "*.Example.org")],
            },
            "http2": {"max_frame_size": "16777215B", "initial_window_size": "1KiB"},
            "proxy_protocol": True,
        },
        {
            "listen": "0.0.0.0:8080",
            "http2": {"h2c": True, "reset_budget": {"burst": 10, "per_second": 0.5}},
            "redirect_to_https": True,
            "proxy_protocol": True,
        },
        trusted_proxies=["10.0.0.0/8"],
    )
    config = load_in(tls_dir, doc)
    tls = tls_dir / "tls"
    assert config.server.listeners == (
        ListenerConfig(
            ListenAddress("::", 8443),
            tls=TlsConfig(
                default=TlsCertificate(str(tls / "gateway.crt"), str(tls / "gateway.key")),
                sni=(
                    TlsCertificate(
                        str(tls / "api.crt"),
                        str(tls / "api.key"),
                        ("api.example.com", "*.example.org"),
                    ),
                ),
                min_version="1.3",
            ),
            http2=Http2Config(max_frame_size=16 * MIB - 1, initial_window_size=KIB),
            proxy_protocol=True,
        ),
        ListenerConfig(
            ListenAddress("0.0.0.0", 8080),
            http2=Http2Config(h2c=True, reset_budget=ResetBudget(burst=10, per_second=0.5)),
            proxy_protocol=True,
            redirect_to_https=True,
        ),
    )
    assert config.server.listen == ListenAddress("::", 8443)


def test_server_listen_is_one_plain_listener() -> None:
    config = parse(base(server={"listen": "127.0.0.1:9000"}))
    assert config.server.listeners == (ListenerConfig(ListenAddress("127.0.0.1", 9000)),)
    assert parse(MINIMAL_TEXT).server.listeners == (ListenerConfig(ListenAddress("0.0.0.0", 8080)),)


def test_listener_settings_from_the_environment() -> None:
    doc = listeners(
        {
            "listen": "${LISTEN}",
            "http2": {"h2c": "${H2C}", "reset_budget": {"per_second": "${RESETS:-2.5}"}},
        }
    )
    listener = parse(doc, {"LISTEN": ":9000", "H2C": "true"}).server.listeners[0]
    assert listener.http2.h2c is True
    assert listener.http2.reset_budget.per_second == 2.5


# The widest and narrowest values each HTTP/2 limit takes.
@pytest.mark.parametrize(
    ("key", "written", "expected"),
    [
        ("max_concurrent_streams", 1, 1),
        ("max_concurrent_streams", 10_000, 10_000),
        ("max_header_list_size", "4KiB", 4 * KIB),
        ("max_header_list_size", "16MiB", 16 * MIB),
        ("max_frame_size", "16KiB", 16 * KIB),
        ("max_frame_size", "16777215B", 2**24 - 1),
        ("initial_window_size", "1KiB", KIB),
        ("initial_window_size", "2147483647B", 2**31 - 1),
    ],
)
def test_http2_limits_at_their_bounds(key: str, written: object, expected: int) -> None:
    http2 = parse(listeners({"listen": ":8080", "http2": {key: written}})).server.listeners[0].http2
    assert getattr(http2, key) == expected


# --- Defaults and completeness ---------------------------------------------------------------


def test_minimal_file_yields_the_model_defaults() -> None:
    config = parse(MINIMAL_TEXT)
    assert config == GatewayConfig(
        upstreams=(UpstreamConfig(name="users", targets=(Target("http", "10.0.0.5", 9000),)),),
        routes=(RouteConfig(name="users", upstream="users"),),
    )
    # Spelled out too, so a changed model default shows up here as well as in the model.
    assert config.server.limits.max_body == 10 * MIB
    assert config.server.limits.max_header_bytes == 32 * KIB
    assert config.server.timeouts.header_read == 10.0
    assert config.upstreams[0].pool.idle_timeout == 4.0
    assert config.admin.listen == ListenAddress("127.0.0.1", 9901)


EVERY_KEY = """\
server:
  listeners:
    - listen: "127.0.0.1:8443"
      tls:
        cert: tls/gateway.crt
        key: tls/gateway.key
        min_version: "1.3"
        sni:
          - server_names: [api.example.com, "*.example.org"]
            cert: tls/api.crt
            key: tls/api.key
      http2:
        max_concurrent_streams: 50
        max_header_list_size: 32KiB
        max_frame_size: 32KiB
        initial_window_size: 1MiB
        max_requests_per_connection: 500
        reset_budget: {burst: 50, per_second: 5}
      proxy_protocol: true
    - listen: "127.0.0.1:8444"
      tls: {cert: tls/gateway.crt, key: tls/gateway.key, ciphers: "ECDHE+AESGCM"}
      http2: {enabled: false}
    - listen: "127.0.0.1:8000"
      http2: {h2c: true}
      redirect_to_https: true
  workers: 4
  trusted_proxies: ["10.0.0.0/8"]
  limits:
    max_body: 1MiB
    max_header_bytes: 16KiB
    max_headers: 50
    max_line: 4KiB
    max_requests_per_connection: 10
    max_websockets: 500
    max_connections: 2000
    max_connections_per_ip: 20
  timeouts: {header_read: 5s, keepalive: 30s, body_progress: 15s, send: 45s, drain: 10s}
  via_name: edge
  rate_limit:
    rate: 50/minute
    burst: 5
    key: route
    backend: redis
    strategy: token_bucket
    enforce: false
    on_backend_error: allow
    budget: 30ms
    max_keys: 500
admin:
  listen: "127.0.0.1:9000"
  token: "${ADMIN_TOKEN}"
  metrics: false
logging: {level: debug, access_log: false}
redis: {url: "redis://cache.internal:6380/2"}
upstreams:
  accounts:
    targets: [{url: "https://users.internal:8443", weight: 3}]
    balance: consistent_hash
    hash_key: header:X-User-Id
    health_check:
      enabled: true
      path: /healthz
      interval: 2s
      timeout: 500ms
      healthy_threshold: 1
      unhealthy_threshold: 2
      expected_status: [200, "204-299"]
    passive_health:
      enabled: true
      consecutive_failures: 3
      base_ejection: 5s
      max_ejection: 1m
    circuit_breaker: {max_requests: 100, max_pending: 10}
    pool: {max_connections: 32, max_idle: 8, idle_timeout: 2s}
    timeouts: {connect: 1s, response: 10s, read: 20s}
    tls: {ca_file: CA_FILE, verify: false}
    host_header: target
    dns_ttl: 1m
routes:
  - name: users-api
    upstream: accounts
    match:
      host: "*.example.com"
      path_prefix: /users
      methods: [GET]
      headers: {X-Env: prod}
    strip_prefix: true
    rate_limit:
      rate: 10 per 5 minutes
      burst: 3
      key: [client_ip, header:X-Api-Key]
      backend: redis
      strategy: token_bucket
      enforce: false
      on_backend_error: deny
      budget: 20ms
      max_keys: 1000
    cache:
      enabled: true
      store: redis
      max_object_size: 64KiB
      default_ttl: 30s
      stale_while_revalidate: 10s
      stale_if_error: 5m
      tag_header: Surrogate-Key
      store_set_cookie: true
      revalidate_for: 1h
    compression:
      enabled: true
      algorithms: [gzip, br]
      min_size: 256B
      levels: {br: 5, zstd: 6, gzip: 4}
      content_types: [text/html, "application/*+json"]
    websocket:
      enabled: true
      max_connections: 300
      max_per_client: 4
      max_message_size: 64KiB
      queue_messages: 16
      queue_bytes: 256KiB
      idle_timeout: 2m
      on_overflow: close
      permessage_deflate: true
    retries:
      enabled: true
      attempts: 3
      on: [connect_failure, 503]
      budget_percent: 50
      backoff: {base: 10ms, max: 100ms}
      non_idempotent: true
      max_replay_body: 16KiB
cache: {max_bytes: 64MiB}
"""


def _expected_every_key(directory: Path) -> GatewayConfig:
    ca_file = str(directory / "ca.pem")
    gateway = TlsCertificate(str(directory / "tls/gateway.crt"), str(directory / "tls/gateway.key"))
    api = TlsCertificate(
        str(directory / "tls/api.crt"),
        str(directory / "tls/api.key"),
        ("api.example.com", "*.example.org"),
    )
    return GatewayConfig(
        server=ServerConfig(
            listeners=(
                ListenerConfig(
                    ListenAddress("127.0.0.1", 8443),
                    tls=TlsConfig(default=gateway, sni=(api,), min_version="1.3"),
                    http2=Http2Config(
                        max_concurrent_streams=50,
                        max_header_list_size=32 * KIB,
                        max_frame_size=32 * KIB,
                        initial_window_size=MIB,
                        max_requests_per_connection=500,
                        reset_budget=ResetBudget(burst=50, per_second=5.0),
                    ),
                    proxy_protocol=True,
                ),
                ListenerConfig(
                    ListenAddress("127.0.0.1", 8444),
                    tls=TlsConfig(default=gateway, ciphers="ECDHE+AESGCM"),
                    http2=Http2Config(enabled=False),
                ),
                ListenerConfig(
                    ListenAddress("127.0.0.1", 8000),
                    http2=Http2Config(h2c=True),
                    redirect_to_https=True,
                ),
            ),
            workers=4,
            trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
            limits=ServerLimits(
                max_body=MIB,
                max_header_bytes=16 * KIB,
                max_headers=50,
                max_line=4 * KIB,
                max_requests_per_connection=10,
                max_websockets=500,
                max_connections=2000,
                max_connections_per_ip=20,
            ),
            timeouts=ServerTimeouts(
                header_read=5.0, keepalive=30.0, body_progress=15.0, send=45.0, drain=10.0
            ),
            via_name="edge",
            rate_limit=RateLimitConfig(
                rate=Rate(50, 60, "50/minute"),
                burst=5,
                key=("route",),
                backend="redis",
                enforce=False,
                on_backend_error="allow",
                budget=0.03,
                max_keys=500,
            ),
        ),
        admin=AdminConfig(
            listen=ListenAddress("127.0.0.1", 9000), token=ADMIN_TOKEN, metrics=False
        ),
        logging=LoggingConfig(level="debug", access_log=False),
        redis=RedisConfig("redis://cache.internal:6380/2"),
        upstreams=(
            UpstreamConfig(
                name="accounts",
                targets=(Target("https", "users.internal", 8443, weight=3),),
                balance="consistent_hash",
                hash_key="header:x-user-id",
                health_check=HealthCheckConfig(
                    path="/healthz",
                    interval=2.0,
                    timeout=0.5,
                    healthy_threshold=1,
                    unhealthy_threshold=2,
                    expected_status=((200, 200), (204, 299)),
                ),
                passive_health=PassiveHealthConfig(
                    consecutive_failures=3, base_ejection=5.0, max_ejection=60.0
                ),
                circuit_breaker=CircuitBreakerConfig(max_requests=100, max_pending=10),
                pool=PoolConfig(max_connections=32, max_idle=8, idle_timeout=2.0),
                timeouts=UpstreamTimeouts(connect=1.0, response=10.0, read=20.0),
                tls=UpstreamTLS(ca_file=ca_file, verify=False),
                host_header="target",
                dns_ttl=60.0,
            ),
        ),
        routes=(
            RouteConfig(
                name="users-api",
                upstream="accounts",
                match=RouteMatch(
                    host="*.example.com",
                    path_prefix="/users",
                    methods=frozenset({"GET"}),
                    headers=(HeaderMatch("x-env", "prod"),),
                ),
                strip_prefix=True,
                rate_limit=RateLimitConfig(
                    rate=Rate(10, 300, "10 per 5 minutes"),
                    burst=3,
                    key=("client_ip", "header:x-api-key"),
                    backend="redis",
                    strategy="token_bucket",
                    enforce=False,
                    on_backend_error="deny",
                    budget=0.02,
                    max_keys=1000,
                ),
                cache=CacheConfig(
                    store="redis",
                    max_object_size=64 * KIB,
                    default_ttl=30.0,
                    stale_while_revalidate=10.0,
                    stale_if_error=300.0,
                    tag_header="Surrogate-Key",
                    store_set_cookie=True,
                    revalidate_for=3600.0,
                ),
                compression=CompressionConfig(
                    algorithms=("gzip", "br"),
                    min_size=256,
                    levels=CompressionLevels(br=5, zstd=6, gzip=4),
                    content_types=("text/html", "application/*+json"),
                ),
                websocket=WebSocketConfig(
                    max_connections=300,
                    max_per_client=4,
                    max_message_size=64 * KIB,
                    queue_messages=16,
                    queue_bytes=256 * KIB,
                    idle_timeout=120.0,
                    on_overflow="close",
                    permessage_deflate=True,
                ),
                retries=RetryConfig(
                    attempts=3,
                    on=("connect_failure", "503"),
                    budget_percent=50,
                    backoff=RetryBackoff(base=0.01, max=0.1),
                    non_idempotent=True,
                    max_replay_body=16 * KIB,
                ),
            ),
        ),
        cache=CacheSettings(max_bytes=64 * MIB),
    )


# The rate-limit strategy: `burst` is only allowed with token_bucket, the default.
_ONLY_VALUE = {(RateLimitConfig, "strategy")}
# Compared whole: the default certificate is written as tls.cert and tls.key, and never has
# server names of its own.
_WHOLE = {(TlsConfig, "default")}
# What an item of a list of sections is compared with.
_ITEM_DEFAULTS: dict[type[Any], object] = {
    ListenerConfig: ListenerConfig(ListenAddress("0.0.0.0", 8080)),
    TlsCertificate: TlsCertificate("", ""),
}


def _differs_from_defaults(value: object, default: object, where: str) -> list[str]:
    """Fields of ``value`` (recursively) still equal to ``default``'s.

    A list of sections (listeners) passes for a field when any of its items sets that field:
    some keys exclude each other within one listener (h2c and tls).
    """
    if isinstance(value, tuple) and value and type(value[0]) in _ITEM_DEFAULTS:
        item_default = _ITEM_DEFAULTS[type(value[0])]
        per_item = [set(_differs_from_defaults(item, item_default, f"{where}[]")) for item in value]

        def unset_in(path: str, paths: set[str]) -> bool:
            # An item whose whole section is the default (tls: null) leaves its fields unset.
            return any(path == p or path.startswith((f"{p}.", f"{p}[")) for p in paths)

        candidates = set().union(*per_item)
        return sorted(path for path in candidates if all(unset_in(path, s) for s in per_item))
    if default is None and isinstance(value, TlsConfig):
        default = TlsConfig(default=TlsCertificate("", ""))
    if default is None and isinstance(value, RateLimitConfig):
        # An optional section: compared with the one that sets only its required key.
        default = RateLimitConfig(rate=Rate(1, 1, "1/second"))
    if default is None and isinstance(value, CacheConfig):
        default = CacheConfig()
    if default is None and isinstance(value, CompressionConfig):
        default = CompressionConfig()
    if default is None and isinstance(value, WebSocketConfig):
        default = WebSocketConfig()
    if default is None and isinstance(value, HealthCheckConfig):
        default = HealthCheckConfig()
    if not is_dataclass(value) or isinstance(value, ListenAddress | Target | HeaderMatch | Rate):
        return [where] if value == default else []
    same = []
    for field in fields(value):
        if (type(value), field.name) in _ONLY_VALUE:
            continue
        item, item_default = getattr(value, field.name), getattr(default, field.name)
        if (type(value), field.name) in _WHOLE:
            same += [f"{where}.{field.name}"] if item == item_default else []
            continue
        same += _differs_from_defaults(item, item_default, f"{where}.{field.name}")
    return same


def test_every_field_is_settable_under_its_own_name(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    write_certificate(tmp_path, "tls/gateway.crt", "tls/gateway.key")
    write_certificate(tmp_path, "tls/api.crt", "tls/api.key", "api.example.com")
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(EVERY_KEY.replace("CA_FILE", "ca.pem"))
    config = load_config(config_file, {"ADMIN_TOKEN": ADMIN_TOKEN})
    expected = _expected_every_key(tmp_path)
    assert config == expected
    # And the file above really sets every field to something other than its default, so a
    # field added to the model without a YAML key fails here.
    minimal = parse(MINIMAL_TEXT)
    assert _differs_from_defaults(config.server, minimal.server, "server") == []
    assert _differs_from_defaults(config.admin, minimal.admin, "admin") == []
    assert _differs_from_defaults(config.logging, minimal.logging, "logging") == []
    assert _differs_from_defaults(config.upstreams[0], minimal.upstreams[0], "upstream") == []
    assert _differs_from_defaults(config.routes[0], minimal.routes[0], "route") == []


def test_unit_fields_are_read_from_the_tables() -> None:
    kinds = loader.unit_fields()
    assert kinds[ServerLimits, "max_body"] == "size"
    assert kinds[ServerLimits, "max_line"] == "size"
    assert kinds[ServerTimeouts, "drain"] == "duration"
    assert kinds[PoolConfig, "idle_timeout"] == "duration"
    assert kinds[UpstreamConfig, "dns_ttl"] == "duration"
    assert (ServerLimits, "max_headers") not in kinds
    # Reached through server.listeners' list and a bounds check (`_within`).
    for name in ("max_header_list_size", "max_frame_size", "initial_window_size"):
        assert kinds[Http2Config, name] == "size"
    assert (Http2Config, "max_concurrent_streams") not in kinds
    # A rate, not a duration: the one float that is written without a unit.
    assert (ResetBudget, "per_second") not in kinds
    # The model keeps every duration as a float (seconds): each float field is one.
    floats = set()
    for cls in (
        ServerTimeouts,
        PoolConfig,
        UpstreamTimeouts,
        UpstreamConfig,
        ServerLimits,
        RateLimitConfig,
        CacheConfig,
        WebSocketConfig,
        HealthCheckConfig,
        PassiveHealthConfig,
        RetryBackoff,
        Http2Config,
        ListenerConfig,
        TlsConfig,
    ):
        floats |= {(cls, f.name) for f in fields(cls) if f.type in ("float", "float | None")}
    assert floats == {key for key, kind in kinds.items() if kind == "duration"}


def test_a_schema_must_cover_its_dataclass_exactly() -> None:
    with pytest.raises(TypeError, match="does not match its fields"):
        loader._Section(LoggingConfig, {"level": loader._boolean})
    with pytest.raises(TypeError, match="does not match its fields"):
        loader._Section(AdminConfig, {"listen": loader._listen, "extra": loader._boolean})


# --- load_config ------------------------------------------------------------------------------


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(MINIMAL_TEXT)
    assert load_config(path, {}) == parse(MINIMAL_TEXT)
    assert load_config(str(path), {}) == parse(MINIMAL_TEXT)


def test_load_config_resolves_ca_file_next_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(upstream(tls={"ca_file": "certs/ca.pem"})))
    monkeypatch.chdir(Path(os.sep))
    config = load_config(path, {})
    assert config.upstreams[0].tls.ca_file == str(tmp_path / "certs" / "ca.pem")


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems == [f"{path}: cannot read the file: No such file or directory"]


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL_TEXT.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems == [f"{path}: not UTF-8 text: invalid continuation byte"]


def test_load_config_names_the_file_in_yaml_errors(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("routes: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}: invalid YAML at line 2, column 1: ")


def test_the_per_ip_connection_cap_is_off_unless_set() -> None:
    assert parse(MINIMAL_TEXT).server.limits.max_connections_per_ip is None
    text = MINIMAL_TEXT + "server:\n  limits: {max_connections_per_ip: null, max_connections: 5}\n"
    limits = parse(text).server.limits
    assert limits.max_connections_per_ip is None
    assert limits.max_connections == 5
