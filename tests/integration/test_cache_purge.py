"""`POST /cache/purge` on the admin listener: in one process, and relayed to every worker."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import aiohttp

from gateway.app import RunningGateway, start
from gateway.config.model import CacheConfig, RouteConfig
from tests.harness import LOCAL, gateway_config, upstream_to
from tests.integration.cache_origin import Origin, fetch, respond
from tests.integration.test_workers import supervised


async def purge(admin_port: int, body: object) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session:
        url = f"http://{LOCAL}:{admin_port}/cache/purge"
        async with session.post(url, json=body) as response:
            return response.status, await response.json()


async def test_purge_by_url_prefix_and_tag(
    origin: tuple[Origin, int], gateways: list[RunningGateway]
) -> None:
    recorder, port = origin
    for path, tags in (
        ("/users/1", "users user-1"),
        ("/users/2", "users"),
        ("/orders/1", "orders"),
        ("/orders/2", "orders"),
    ):
        recorder.answers[path] = respond(b"x", Cache_Control="max-age=60", Cache_Tag=tags)
    route = RouteConfig(name="api", upstream="origin", cache=CacheConfig())
    gateway = await start(gateway_config([upstream_to("origin", port)], [route]))
    gateways.append(gateway)
    assert gateway.admin_address is not None
    admin = gateway.admin_address[1]

    async def fill() -> None:
        for path in ("/users/1", "/users/2", "/orders/1", "/orders/2"):
            await fetch(gateway, path, Host="api.example.com")

    await fill()
    assert await purge(admin, {"url": "http://api.example.com/users/1"}) == (200, {"removed": 1})
    assert await purge(admin, {"url": "http://api.example.com/users/1"}) == (200, {"removed": 0})
    assert await purge(admin, {"tag": "orders"}) == (200, {"removed": 2})
    assert await purge(admin, {"path_prefix": "/users/"}) == (200, {"removed": 1})
    await fill()
    # Everything was purged, so everything went upstream again.
    assert [recorder.hits(p) for p in ("/users/1", "/users/2", "/orders/1", "/orders/2")] == [2] * 4
    status, body = await purge(admin, {"path": "/x"})
    assert status == 400
    assert body == {
        "error": "bad_request",
        "message": "unknown key 'path': use one of url, path_prefix, tag",
    }


async def test_a_purge_reaches_every_worker(origin: tuple[Origin, int], tmp_path: Path) -> None:
    recorder, port = origin
    recorder.answers["/page"] = respond(b"x", Cache_Control="max-age=60", Cache_Tag="pages")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            server: {{listen: "127.0.0.1:0", workers: 2}}
            admin: {{listen: "127.0.0.1:0"}}
            logging: {{access_log: false}}
            upstreams:
              origin: {{targets: ["http://127.0.0.1:{port}"]}}
            routes:
              - {{name: api, upstream: origin, cache: {{}}}}
            """
        )
    )
    async with supervised(config, tmp_path / "gateway.log") as gateway:
        url = f"http://{LOCAL}:{gateway.port}/page"

        async def get_page() -> None:
            # A new connection each time: SO_REUSEPORT spreads them over both workers.
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                await response.read()

        # Until both workers hold the page (each misses once), then once more each.
        for _ in range(200):
            await get_page()
            if recorder.hits("/page") == 2:
                break
        assert recorder.hits("/page") == 2
        status, body = await purge(gateway.admin_port, {"tag": "pages"})
        assert (status, body) == (200, {"removed": 2})
        for _ in range(200):
            await get_page()
            if recorder.hits("/page") == 4:
                break
        await asyncio.sleep(0.1)
        assert recorder.hits("/page") == 4
