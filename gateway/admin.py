"""The admin listener: health, readiness, metrics and the active config; never the public port.

`/healthz` says the process is alive; `/readyz` turns 503 while the gateway drains so a load
balancer stops sending new connections before the listener closes; `/metrics` is the Prometheus
exposition of every worker; `/config` shows the active config's hash and route table with
secrets redacted; `POST /cache/purge` removes cached responses (`gateway.cache.purge`). When
`admin.token` is set, every mutating request (any method but GET and HEAD) needs `Authorization:
Bearer <token>`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.cache.purge import parse_purge
from gateway.config.model import AdminConfig
from gateway.observability import metrics

_SAFE_METHODS = frozenset({"GET", "HEAD"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminSource(Protocol):
    """What the process serving the admin endpoints knows about the gateway."""

    def ready(self) -> tuple[bool, dict[str, object]]: ...

    def config_view(self) -> dict[str, object]: ...

    def flush_metrics(self) -> None:
        """Publish observations held in this process before /metrics is rendered."""

    async def purge_cache(self, body: dict[str, object]) -> int:
        """Carry out a validated purge request everywhere; how many entries went."""
        ...


def _token_guard(token: str | None) -> Middleware:
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None and request.method not in _SAFE_METHODS:
            given = request.headers.get("Authorization", "").encode()
            # Constant-time comparison: the token must not leak through response timing.
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    {"error": "unauthorized", "message": "a valid admin bearer token is required"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="gateway-admin"'},
                )
        return await handler(request)

    return guard


def admin_app(config: AdminConfig, source: AdminSource) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, details = source.ready()
        body = {"status": "ready" if ready else "not_ready", **details}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_text(_: web.Request) -> web.Response:
        source.flush_metrics()
        payload, content_type = metrics.render()
        response = web.Response(body=payload)
        response.headers["Content-Type"] = content_type
        return response

    async def config_view(_: web.Request) -> web.Response:
        return web.json_response(source.config_view())

    async def cache_purge(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            parse_purge(body)
        except ValueError as error:  # not JSON (json.JSONDecodeError is one), or not a purge
            message = str(error) if not isinstance(error, json.JSONDecodeError) else "not JSON"
            return web.json_response({"error": "bad_request", "message": message}, status=400)
        try:
            removed = await source.purge_cache(body)
        except Exception as error:  # a store that cannot be reached: say so, change nothing
            return web.json_response(
                {"error": "unavailable", "message": f"purge failed: {error}"}, status=503
            )
        return web.json_response({"removed": removed})

    app = web.Application(middlewares=[_token_guard(config.token)])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/config", config_view)
    app.router.add_post("/cache/purge", cache_purge)
    return app


async def start_admin(
    config: AdminConfig, source: AdminSource
) -> tuple[web.AppRunner, tuple[str, int]]:
    runner = web.AppRunner(admin_app(config, source), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, config.listen.host, config.listen.port).start()
    bound = runner.addresses[0]
    return runner, (str(bound[0]), int(bound[1]))
