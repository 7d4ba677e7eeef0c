"""The admin listener: health endpoints, never on the public port (DESIGN.md §3).

`/healthz` says the process is alive; `/readyz` turns 503 while the gateway drains so a load
balancer stops sending new connections before the listener closes.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.config.model import AdminConfig


@dataclass
class AdminState:
    draining: bool = False


def admin_app(state: AdminState) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if state.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_admin(
    config: AdminConfig, state: AdminState
) -> tuple[web.AppRunner, tuple[str, int]]:
    runner = web.AppRunner(admin_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, config.listen.host, config.listen.port).start()
    bound = runner.addresses[0]
    return runner, (str(bound[0]), int(bound[1]))
