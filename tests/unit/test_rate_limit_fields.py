"""Client keys and response fields of the rate limiter: pure, table-driven."""

from __future__ import annotations

import pytest

from gateway.config.model import Rate, RateLimitConfig
from gateway.messages import Headers, ProxyRequest
from gateway.ratelimit.fields import policy_value, response_fields, seconds
from gateway.ratelimit.gcra import Verdict
from gateway.ratelimit.keys import KeyBuilder


def request(client_ip: str = "192.0.2.1", headers: Headers | None = None) -> ProxyRequest:
    return ProxyRequest(
        method="GET",
        target=b"/",
        path="/",
        host="example.com",
        authority=b"example.com",
        headers=headers or [],
        version=(1, 1),
        body=None,
        content_length=None,
        scheme="http",
        client_ip=client_ip,
        peer_ip=client_ip,
        peer_trusted=False,
        request_id="r",
    )


@pytest.mark.parametrize(
    ("parts", "req", "key"),
    [
        (("client_ip",), request(), b"api\0ip:192.0.2.1"),
        (("route",), request(), b"api"),
        (("route",), request("198.51.100.7"), b"api"),
        (
            ("header:x-api-key",),
            request(headers=[(b"X-Api-Key", b"k1"), (b"x-api-key", b"k2")]),
            b"api\0h:k1",
        ),
        # Without the field, the client's address; tagged so no value can pose as one.
        (("header:x-api-key",), request(), b"api\0ip:192.0.2.1"),
        (
            ("header:x-api-key",),
            request(headers=[(b"X-Api-Key", b"ip:192.0.2.1")]),
            b"api\0h:ip:192.0.2.1",
        ),
        (
            ("client_ip", "header:x-tenant"),
            request(headers=[(b"X-Tenant", b"blue")]),
            b"api\0ip:192.0.2.1\0h:blue",
        ),
    ],
)
def test_keys(parts: tuple[str, ...], req: ProxyRequest, key: bytes) -> None:
    assert KeyBuilder("api", parts).key(req) == key


def test_each_route_counts_apart() -> None:
    assert KeyBuilder("a", ("client_ip",)).key(request()) != KeyBuilder("b", ("client_ip",)).key(
        request()
    )


@pytest.mark.parametrize(
    ("rate", "burst", "value"),
    [
        (Rate(100, 1, "100/second"), 200, b'"users-api";q=100;w=1;gw-burst=200'),
        (Rate(10, 300, "10 per 5 minutes"), 10, b'"users-api";q=10;w=300;gw-burst=10'),
    ],
)
def test_policy_field(rate: Rate, burst: int, value: bytes) -> None:
    assert policy_value("users-api", RateLimitConfig(rate=rate, burst=burst)) == value


@pytest.mark.parametrize(
    ("value", "whole"),
    [(0.0, 0), (0.0000000001, 0), (0.1, 1), (1.0, 1), (1.2, 2), (59.9999, 60)],
)
def test_seconds_round_up(value: float, whole: int) -> None:
    assert seconds(value) == whole


def test_allowed_fields() -> None:
    fields = response_fields(b'"api"', b"P", Verdict(True, 57, 0.0, 0.43))
    assert fields == [(b"RateLimit-Policy", b"P"), (b"RateLimit", b'"api";r=57;t=1')]


def test_refused_fields_agree_with_retry_after() -> None:
    fields = response_fields(b'"api"', b"P", Verdict(False, 0, 2.2, 7.0))
    assert fields == [
        (b"Retry-After", b"3"),
        (b"RateLimit-Policy", b"P"),
        (b"RateLimit", b'"api";r=0;t=3'),
    ]
    # Never "come back in 0 seconds".
    soon = dict(response_fields(b'"api"', b"P", Verdict(False, 0, 0.001, 0.5)))
    assert soon[b"Retry-After"] == b"1"
