"""The response fields of a rate limit: Retry-After and the IETF RateLimit fields.

``RateLimit-Policy`` and ``RateLimit`` follow draft-ietf-httpapi-ratelimit-headers (-10/-11):
Structured Field lists of one item each, named after the route (§3, §4):

    RateLimit-Policy: "users-api";q=100;w=1;gw-burst=200
    RateLimit: "users-api";r=57;t=1

``q`` and ``w`` are the rate as configured (100 per 1 second); the bucket size, which the
draft has no parameter for, goes in the vendor-prefixed ``gw-burst`` (§3.1 allows extra
parameters and asks for a prefix). ``r`` is the whole tokens left. ``t`` is the seconds until
the bucket is full again on an allowed request, and on a refused one the seconds until the next
request may pass, equal to Retry-After, which §6 requires not to end before the window does.
No partition key (``pk``) is sent: the key is the client's address or one of its header
values, which §6.1 asks servers not to echo.
"""

from __future__ import annotations

import math

from gateway.config.model import RateLimitConfig
from gateway.messages import Headers
from gateway.ratelimit.gcra import Verdict


def policy_value(route: str, config: RateLimitConfig) -> bytes:
    # Route names are letters, digits, "_", "." and "-": valid in an sf-string as they are.
    rate = config.rate
    value = f'"{route}";q={rate.limit};w={rate.period}'
    if config.strategy == "token_bucket":
        value += f";gw-burst={config.burst}"
    return value.encode("ascii")


def seconds(value: float) -> int:
    """Whole seconds, rounded up: delay-seconds (RFC 9110 §10.2.3) never promise too early."""
    return max(0, math.ceil(value - 1e-9))


def response_fields(route: bytes, policy: bytes, verdict: Verdict) -> Headers:
    """The fields for a response the limit decided on; ``route`` is the quoted item name."""
    if verdict.allowed:
        state = b"%s;r=%d;t=%d" % (route, verdict.remaining, seconds(verdict.reset_after))
        return [(b"RateLimit-Policy", policy), (b"RateLimit", state)]
    wait = max(1, seconds(verdict.retry_after))
    return [
        (b"Retry-After", b"%d" % wait),
        (b"RateLimit-Policy", policy),
        (b"RateLimit", b"%s;r=0;t=%d" % (route, wait)),
    ]
