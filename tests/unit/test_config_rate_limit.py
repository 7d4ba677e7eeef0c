"""The `rate_limit` and `redis` keys (issue 5): defaults, inheritance, and each problem named."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.model import Rate, RateLimitConfig
from tests.unit.test_config_loader import base, parse, problems, route


def limited(**rate_limit: Any) -> dict[str, Any]:
    return route(rate_limit=rate_limit)


def test_only_rate_is_required_and_burst_defaults_to_the_rate() -> None:
    config = parse(limited(rate="100/second"))
    assert config.routes[0].rate_limit == RateLimitConfig(rate=Rate(100, 1, "100/second"))
    limit = config.routes[0].rate_limit
    assert limit is not None
    assert (limit.burst, limit.key, limit.backend, limit.strategy) == (
        100,
        ("client_ip",),
        "memory",
        "token_bucket",
    )
    assert (limit.enforce, limit.on_backend_error, limit.budget) == (True, "local", 0.05)


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100/second", Rate(100, 1, "100/second")),
        ("10 per 5 minutes", Rate(10, 300, "10 per 5 minutes")),
        ("3/hour", Rate(3, 3600, "3/hour")),
        ("1/day", Rate(1, 86400, "1/day")),
    ],
)
def test_rates_use_the_limits_syntax(text: str, rate: Rate) -> None:
    limit = parse(limited(rate=text)).routes[0].rate_limit
    assert limit is not None
    assert limit.rate == rate
    assert limit.rate.interval == rate.period / rate.limit


def test_key_parts_alone_or_combined() -> None:
    one = parse(limited(rate="1/second", key="header:X-Api-Key")).routes[0].rate_limit
    assert one is not None
    assert one.key == ("header:x-api-key",)
    both = parse(limited(rate="1/second", key=["route", "client_ip"])).routes[0].rate_limit
    assert both is not None
    assert both.key == ("route", "client_ip")


def test_routes_without_their_own_get_the_server_default() -> None:
    doc = base(
        server={"rate_limit": {"rate": "5/second"}},
        routes=[
            {"name": "a", "upstream": "users", "match": {"path_prefix": "/a"}},
            {
                "name": "b",
                "upstream": "users",
                "match": {"path_prefix": "/b"},
                "rate_limit": {"rate": "1/second"},
            },
            {"name": "c", "upstream": "users", "match": {"path_prefix": "/c"}, "rate_limit": False},
            {"name": "d", "upstream": "users", "rate_limit": None},
        ],
    )
    config = parse(doc)
    rates = [None if r.rate_limit is None else r.rate_limit.rate.text for r in config.routes]
    assert rates == ["5/second", "1/second", None, None]


def test_no_rate_limit_anywhere_by_default() -> None:
    config = parse(base())
    assert config.server.rate_limit is None
    assert config.routes[0].rate_limit is None
    assert config.redis is None


def test_redis_backend_with_a_redis_section() -> None:
    doc = limited(rate="1/second", backend="redis")
    doc["redis"] = {"url": "redis://127.0.0.1:6379/0"}
    limit = parse(doc).routes[0].rate_limit
    assert limit is not None
    assert limit.backend == "redis"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (limited(), "routes[0].rate_limit.rate: missing required key"),
        (
            limited(rate="lots"),
            "routes[0].rate_limit.rate: expected a rate such as '100/second' or"
            " '10 per 5 minutes', got 'lots'",
        ),
        (
            limited(rate="0/second"),
            "routes[0].rate_limit.rate: a rate allows at least 1 request, got '0/second'",
        ),
        (
            limited(rate="1/second;5/minute"),
            "routes[0].rate_limit.rate: expected one rate, got 2 in '1/second;5/minute'",
        ),
        (
            limited(rate="1/second", burst=0),
            "routes[0].rate_limit.burst: must be at least 1, got 0",
        ),
        (
            limited(rate="1/second", key="cookie:session"),
            "routes[0].rate_limit.key: expected 'client_ip', 'route' or 'header:NAME'"
            " (e.g. 'header:X-Api-Key'), got 'cookie:session'",
        ),
        (
            limited(rate="1/second", key=["client_ip", "client_ip"]),
            "routes[0].rate_limit.key[1]: duplicate key part 'client_ip'",
        ),
        (
            limited(rate="1/second", key=[]),
            "routes[0].rate_limit.key: at least one key part is required",
        ),
        (
            limited(rate="1/second", backend="memcached"),
            "routes[0].rate_limit.backend: expected one of 'memory', 'redis', got 'memcached'",
        ),
        (
            limited(rate="1/second", backend="redis"),
            "routes[0].rate_limit.backend: 'redis' needs the redis section (redis.url)",
        ),
        (
            limited(rate="1/second", strategy="fixed_window", burst=5),
            "routes[0].rate_limit.burst: only the token_bucket strategy has a burst;"
            " fixed_window allows rate.limit requests per window",
        ),
        (
            limited(rate="67108864/hour", strategy="sliding_window"),
            "routes[0].rate_limit.rate: sliding_window counts at most 67108863 requests per"
            " window, got 67108864; use a shorter period or fixed_window",
        ),
        (
            limited(rate="1000/hour", strategy="moving_window"),
            "routes[0].rate_limit.strategy: moving_window keeps 1000 timestamps for each of"
            " max_keys=65536 keys: 500 MiB of table, over the 256 MiB allowed; lower max_keys"
            " or the limit, or use sliding_window (two counters per key)",
        ),
        (
            limited(rate="1/second", strategy="leaky"),
            "routes[0].rate_limit.strategy: expected one of 'token_bucket', 'fixed_window',"
            " 'sliding_window', 'moving_window', got 'leaky'",
        ),
        (
            limited(rate="1/second", on_backend_error="retry"),
            "routes[0].rate_limit.on_backend_error: expected one of 'local', 'allow', 'deny',"
            " got 'retry'",
        ),
        (
            limited(rate="1/second", budget=50),
            "routes[0].rate_limit.budget: a duration needs a unit, e.g. '5s'",
        ),
        (
            limited(rate="1/second", burts=5),
            "routes[0].rate_limit.burts: unknown key (did you mean 'burst'?)",
        ),
        (
            route(rate_limit=True),
            "routes[0].rate_limit: expected a mapping with at least 'rate', or false for no limit",
        ),
        (
            base(server={"rate_limit": {"rate": "1/second", "backend": "redis"}}),
            "server.rate_limit.backend: 'redis' needs the redis section (redis.url)",
        ),
        (
            base(redis={"url": "http://cache:6379"}),
            "redis.url: expected a URL starting with redis://, rediss:// or unix://",
        ),
        (base(redis={}), "redis.url: missing required key"),
    ],
)
def test_each_problem_is_named(doc: object, expected: str) -> None:
    assert problems(doc) == [expected]


def test_a_redis_url_is_never_echoed() -> None:
    found = problems(base(redis={"url": "http://user:hunter2@cache:6379"}))
    assert "hunter2" not in "\n".join(found)


@pytest.mark.parametrize("strategy", ["fixed_window", "sliding_window", "moving_window"])
def test_the_window_strategies_are_accepted(strategy: str) -> None:
    limit = parse(limited(rate="100/minute", strategy=strategy)).routes[0].rate_limit
    assert limit is not None
    assert (limit.strategy, limit.rate.limit, limit.rate.period) == (strategy, 100, 60)


def test_a_large_moving_window_fits_with_fewer_keys_or_no_memory_table() -> None:
    parse(limited(rate="1000/hour", strategy="moving_window", max_keys=4096))
    # On Redis without the local fallback no memory table is made: the limit is Redis's.
    doc = limited(
        rate="1000/hour", strategy="moving_window", backend="redis", on_backend_error="allow"
    )
    doc["redis"] = {"url": "redis://127.0.0.1:6379"}
    parse(doc)
