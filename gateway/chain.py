"""One shape for every stage: ``async (request, call_next) -> response`` (DESIGN.md §1).

A route's chain is composed once when the config is loaded; a feature a route does not
configure is simply absent from its chain, so it costs nothing per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from gateway.messages import ProxyRequest, ProxyResponse

Handler = Callable[[ProxyRequest], Awaitable[ProxyResponse]]
Stage = Callable[[ProxyRequest, Handler], Awaitable[ProxyResponse]]


def compose(stages: Sequence[Stage], terminal: Handler) -> Handler:
    """Wrap ``terminal`` in ``stages``; the first stage sees the request first."""
    handler = terminal
    for stage in reversed(stages):
        handler = _bind(stage, handler)
    return handler


def _bind(stage: Stage, call_next: Handler) -> Handler:
    async def handle(request: ProxyRequest) -> ProxyResponse:
        return await stage(request, call_next)

    return handle
