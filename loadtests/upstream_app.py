"""The body upstream of the load tests: an aiohttp app on one port, access log off.

- ``GET /bytes/N`` answers N bytes (at most 16 MiB) of ``application/octet-stream``;
- ``POST /echo`` reads the whole body and answers ``{"received": SIZE}``.

    python loadtests/upstream_app.py --port PORT
"""

from __future__ import annotations

import argparse
from functools import lru_cache

import uvloop
from aiohttp import web

LIMIT = 16 * 1024 * 1024


@lru_cache(maxsize=16)
def payload(size: int) -> bytes:
    return b"x" * size


async def bytes_handler(request: web.Request) -> web.Response:
    size = int(request.match_info["size"])
    if size > LIMIT:
        raise web.HTTPBadRequest(text="too large")
    return web.Response(body=payload(size), content_type="application/octet-stream")


async def echo_handler(request: web.Request) -> web.Response:
    received = len(await request.read())
    return web.json_response({"received": received})


def make_app() -> web.Application:
    app = web.Application(client_max_size=LIMIT)
    app.router.add_get(r"/bytes/{size:\d+}", bytes_handler)
    app.router.add_post("/echo", echo_handler)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=4096,
        keepalive_timeout=300,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
