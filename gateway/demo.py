"""A bundled demo upstream and built-in config, so a newcomer can `curl` through the gateway.

`gateway demo` serves this upstream on 127.0.0.1:8081 and the gateway on 127.0.0.1:8080 in one
process, on built-in defaults (no config file, no Redis).
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from gateway.config.model import (
    AdminConfig,
    GatewayConfig,
    ListenAddress,
    ListenerConfig,
    RouteConfig,
    RouteMatch,
    ServerConfig,
    Target,
    UpstreamConfig,
)


def demo_app() -> web.Application:
    """Endpoints that show what the gateway does to a request on its way through."""

    async def index(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "service": "demo",
                "try": ["/echo", "/stream", "/status/503", "/api/echo (strip_prefix)"],
            }
        )

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "target": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_bytes": len(body),
            }
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        for i in range(5):
            await response.write(f"chunk {i}\n".encode())
            await asyncio.sleep(0.2)
        await response.write_eof()
        return response

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=json.dumps({"status": code}))

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get("/stream", stream)
    app.router.add_get("/status/{code:\\d{3}}", status)
    return app


def demo_config(
    gateway_port: int = 8080, upstream_port: int = 8081, admin_port: int = 9901
) -> GatewayConfig:
    upstream = UpstreamConfig(name="demo", targets=(Target("http", "127.0.0.1", upstream_port),))
    return GatewayConfig(
        server=ServerConfig(listeners=(ListenerConfig(ListenAddress("127.0.0.1", gateway_port)),)),
        admin=AdminConfig(listen=ListenAddress("127.0.0.1", admin_port)),
        upstreams=(upstream,),
        routes=(
            RouteConfig(
                name="api",
                upstream="demo",
                match=RouteMatch(path_prefix="/api"),
                strip_prefix=True,
            ),
            RouteConfig(name="default", upstream="demo"),
        ),
    )


async def start_demo_upstream(port: int) -> web.AppRunner:
    runner = web.AppRunner(demo_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner
