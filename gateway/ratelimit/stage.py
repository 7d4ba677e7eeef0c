"""The rate-limit stage of a route's chain: decide, then 429 or forward with the fields.

One decision per request, before anything is forwarded, against the route's backend:

- memory: the shared table of this host (`gateway.ratelimit.memory`), decided synchronously;
- redis: one script call within the route's ``budget``. When Redis errs or misses the budget,
  ``on_backend_error`` decides: ``local`` asks the memory backend (per host, so a limit across
  N instances loosens to N times the rate for the outage, never to no limit), ``allow`` lets the
  request through, ``deny`` answers 503. Such decisions count as ``error``; the switch to
  failing and back is logged once each way (`RemoteHealth`).

Refused requests get 429 with Retry-After and the RateLimit fields (`gateway.ratelimit.fields`);
allowed ones carry the fields too. ``enforce: false`` is shadow mode: a would-be 429 is counted
and logged as ``shadow`` and the request goes on, without fields.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Protocol

from gateway.chain import Handler
from gateway.config.model import RateLimitConfig
from gateway.errors import ServiceUnavailable, TooManyRequests
from gateway.messages import ProxyRequest, ProxyResponse
from gateway.observability.request_metrics import RequestMetrics
from gateway.ratelimit.fields import policy_value, response_fields
from gateway.ratelimit.gcra import Verdict
from gateway.ratelimit.keys import KeyBuilder
from gateway.ratelimit.memory import MemoryLimiter


class RemoteLimiter(Protocol):
    """A backend shared by several gateways (`gateway.ratelimit.redis`)."""

    name: str

    async def decide(self, key: bytes) -> Verdict: ...

    def failed(self, error: BaseException) -> None:
        """Note a failed decision (errors and missed budgets)."""

    def answered(self) -> None:
        """Note a decision the backend made."""


class RateLimitStage:
    __slots__ = (
        "_budget",
        "_enforce",
        "_item",
        "_keys",
        "_local",
        "_metrics",
        "_mode",
        "_policy",
        "_remote",
        "_route",
    )

    def __init__(
        self,
        route: str,
        config: RateLimitConfig,
        local: MemoryLimiter,
        remote: RemoteLimiter | None,
        metrics: RequestMetrics,
    ) -> None:
        self._route = route
        self._keys = KeyBuilder(route, config.key)
        self._local = local
        self._remote = remote
        self._metrics = metrics
        self._enforce = config.enforce
        self._mode = config.on_backend_error
        self._budget = config.budget
        self._item = f'"{route}"'.encode("ascii")
        self._policy = policy_value(route, config)

    async def __call__(self, request: ProxyRequest, call_next: Handler) -> ProxyResponse:
        key = self._keys.key(request)
        started = perf_counter()
        remote = self._remote
        verdict: Verdict | None
        if remote is None:
            verdict = self._local.decide(key)
            backend = "memory"
            failed = False
        else:
            backend = remote.name
            verdict, failed = await self._ask(remote, key)
        seconds = perf_counter() - started
        if failed:
            decision = "error"
        elif verdict is not None and not verdict.allowed:
            decision = "limited" if self._enforce else "shadow"
        else:
            decision = "allowed"
        request.rate_limit = decision
        self._metrics.ratelimit_decided(self._route, decision, backend, seconds)
        if verdict is None:  # the backend failed: on_backend_error is "allow" or "deny"
            if self._mode == "deny":
                raise ServiceUnavailable("the rate-limit backend is unavailable")
            return await call_next(request)
        if not verdict.allowed:
            if self._enforce:
                raise TooManyRequests(
                    "rate limit exceeded",
                    fields=response_fields(self._item, self._policy, verdict),
                )
            return await call_next(request)
        response = await call_next(request)
        if self._enforce:
            response.headers.extend(response_fields(self._item, self._policy, verdict))
        return response

    async def _ask(self, remote: RemoteLimiter, key: bytes) -> tuple[Verdict | None, bool]:
        """The remote verdict, or the memory backend's for `local` (None for the other modes);
        and whether the remote failed."""
        try:
            async with asyncio.timeout(self._budget):
                verdict = await remote.decide(key)
        except Exception as error:  # connection errors, Redis errors, the budget
            remote.failed(error)
            if self._mode == "local":
                return self._local.decide(key), True
            return None, True
        remote.answered()
        return verdict, False
