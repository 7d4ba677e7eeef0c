"""A recording upstream for the cache tests: answers per path, and every request it saw."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.app import RunningGateway
from tests.harness import LOCAL, serve_app


@dataclass
class Origin:
    """What the upstream answers per path, and every request it saw."""

    # Per path: a function of the request to a response (or to an awaitable of one).
    answers: dict[str, Callable[[web.Request], Any]] = field(default_factory=dict)
    seen: list[web.Request] = field(default_factory=list)
    delay: float = 0.0

    def hits(self, path: str) -> int:
        return sum(1 for request in self.seen if request.path == path)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self.answers.get(request.path)
        if answer is None:
            return web.Response(status=404, text="no answer configured")
        result = answer(request)
        response: web.StreamResponse = await result if inspect.isawaitable(result) else result
        return response


async def serve_origin() -> AsyncIterator[tuple[Origin, int]]:
    recorder = Origin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    async with serve_app(app) as port:
        yield recorder, port


def respond(
    body: bytes = b"hello",
    *,
    status: int = 200,
    fields: dict[str, str] | None = None,
    **headers: str,
) -> Callable[[web.Request], web.Response]:
    fields = {
        name.replace("_", "-"): value for name, value in {**(fields or {}), **headers}.items()
    }

    def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers=fields)

    return answer


async def fetch(
    gateway: RunningGateway, path: str, method: str = "GET", **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    url = f"http://{LOCAL}:{gateway.address[1]}{path}"
    fields = {name.replace("_", "-"): value for name, value in headers.items()}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, headers=fields) as response:
            body = await response.read()
            return response.status, CIMultiDict(response.headers), body
