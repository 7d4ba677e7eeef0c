"""The terminal stage of a route's upgrade chain: caps, the two handshakes, and the tunnel.

DESIGN.md §1: rate limit → connection caps → WebSocket relay. The stage answers with the
upstream's own response when it is not a 101 (relayed as a plain response: no tunnel opens),
and with a 101 carrying a `Tunnel` otherwise; the server writes that 101 and opens the tunnel
(`gateway.server`). The caps are taken before anything is sent upstream and given back when
the relay ends (or the handshake fails).
"""

from __future__ import annotations

import asyncio
from time import perf_counter

from gateway import headers as header_rules
from gateway.config.model import RouteConfig, WebSocketConfig
from gateway.downstream.connection import TunnelHooks
from gateway.errors import (
    BadGateway,
    GatewayError,
    WebSocketCapacity,
    WebSocketClientLimit,
    WebSocketRefused,
)
from gateway.messages import CompleteBody, ProxyRequest, ProxyResponse
from gateway.observability.request_metrics import RequestMetrics
from gateway.proxy import Rewriter
from gateway.upstream.pool import UpstreamPool
from gateway.websocket import deflate
from gateway.websocket.caps import WebSocketCaps
from gateway.websocket.handshake import (
    BadUpstreamAnswer,
    ClientOffer,
    HandshakeRefused,
    check_upstream_answer,
    client_101_fields,
    new_key,
    read_client_offer,
    upstream_fields,
)
from gateway.websocket.relay import Relay, Side
from gateway.websocket.upstream import UpstreamSide


class _SideHooks(TunnelHooks):
    """What one side's connection tells the relay (the client's `ClientConnection` and the
    upstream's `UpstreamSide` alike)."""

    __slots__ = ("_relay", "_side")

    def __init__(self, relay: Relay, side: Side) -> None:
        self._relay = relay
        self._side = side

    def received(self, data: bytes) -> None:
        self._relay.received(self._side, data)

    def writable(self, writable: bool) -> None:
        self._relay.writable(self._side, writable)

    def lost(self) -> None:
        self._relay.lost(self._side)

    def shutdown(self) -> None:
        self._relay.shutdown()


class Tunnel:
    """A 101's other half: the upstream connection, ready to be relayed to the client."""

    __slots__ = (
        "_caps",
        "_client_bits",
        "_client_ip",
        "_config",
        "_metrics",
        "_route",
        "_side",
        "_upstream_deflate",
    )

    def __init__(
        self,
        *,
        caps: WebSocketCaps,
        config: WebSocketConfig,
        route: str,
        client_ip: str,
        metrics: RequestMetrics,
        side: UpstreamSide,
        client_bits: int | None,
        upstream_deflate: bool,
    ) -> None:
        self._caps = caps
        self._config = config
        self._route = route
        self._client_ip = client_ip
        self._metrics = metrics
        self._side = side
        self._client_bits = client_bits
        self._upstream_deflate = upstream_deflate

    def open(self, client: asyncio.Transport) -> tuple[Relay, TunnelHooks]:
        """The relay between ``client`` (its 101 written) and the upstream, and the hooks for
        the client connection (`ClientConnection.enter_tunnel`)."""
        relay = Relay(
            self._config,
            self._route,
            self._metrics,
            asyncio.get_running_loop(),
            client=client,
            client_deflate_bits=self._client_bits,
            upstream=self._side.transport,  # type: ignore[arg-type]
            upstream_deflate=self._upstream_deflate,
        )
        relay.done.add_done_callback(lambda _: self._caps.release(self._route, self._client_ip))
        self._side.attach(_SideHooks(relay, relay.upstream))
        return relay, _SideHooks(relay, relay.client)

    def abandon(self) -> None:
        """The client is gone before its 101: no relay."""
        self._side.abort()
        self._caps.release(self._route, self._client_ip)


class WebSocketStage:
    """Caps, the upstream handshake, and the answer to the client's (see the module doc)."""

    __slots__ = (
        "_caps",
        "_config",
        "_limit",
        "_metrics",
        "_pool",
        "_response_timeout",
        "_rewriter",
        "_route",
        "_upstream",
    )

    def __init__(
        self,
        route: RouteConfig,
        config: WebSocketConfig,
        pool: UpstreamPool,
        *,
        caps: WebSocketCaps,
        limit: int,
        via_name: str,
        response_timeout: float,
        metrics: RequestMetrics,
    ) -> None:
        self._route = route.name
        self._upstream = route.upstream
        self._config = config
        self._pool = pool
        self._caps = caps
        self._limit = limit
        self._metrics = metrics
        self._rewriter = Rewriter(route, via_name, pool.config)
        self._response_timeout = response_timeout

    async def __call__(self, request: ProxyRequest) -> ProxyResponse:
        route = self._route
        try:
            offer = read_client_offer(request.method, request.version, request.headers)
        except HandshakeRefused as refused:
            self._metrics.websocket_rejected(route, "handshake")
            raise WebSocketRefused(refused.message, refused.status, refused.headers) from None
        try:
            self._caps.acquire(route, request.client_ip, self._config, self._limit)
        except WebSocketClientLimit:
            self._metrics.websocket_rejected(route, "client_limit")
            raise
        except WebSocketCapacity:
            self._metrics.websocket_rejected(route, "capacity")
            raise
        side = UpstreamSide(asyncio.get_running_loop())
        try:
            return await self._handshake(request, offer, side)
        except BaseException as error:
            side.abort()
            self._caps.release(route, request.client_ip)
            if isinstance(error, GatewayError):
                self._metrics.websocket_rejected(route, "upstream")
            raise

    async def _handshake(
        self,
        request: ProxyRequest,
        offer: ClientOffer,
        side: UpstreamSide,
    ) -> ProxyResponse:
        config = self._config
        protocols = offer.protocols
        target = self._rewriter.target(request)
        request_id = request.request_id.encode("ascii")
        forwarded = self._rewriter.fields(request, request_id)
        key = new_key()
        fields = upstream_fields(forwarded, key, protocols, deflate_offer=config.permessage_deflate)
        sent = perf_counter()
        try:
            head = await self._pool.open_tunnel(
                target, fields, request.authority, side, self._rewriter.hash_key(request)
            )
            answer = await side.answer(head, self._response_timeout)
        except GatewayError as error:
            kind = "timeout" if error.status == 504 else "connect"
            self._metrics.upstream_failed(self._upstream, kind)
            raise
        waited = perf_counter() - sent
        self._metrics.upstream_answered(self._upstream, waited)
        relayed = header_rules.downstream_response_headers(
            answer.headers, request_id=request_id, via=self._rewriter.via_response
        )
        if answer.status != 101:
            # Relayed as a plain response; no tunnel opens (HARDENING.md §A).
            self._caps.release(self._route, request.client_ip)
            self._metrics.websocket_rejected(self._route, "upstream")
            body = answer.body
            no_body = answer.status in (204, 304)
            return ProxyResponse(
                status=answer.status,
                reason=answer.reason,
                headers=relayed,
                body=None if no_body else CompleteBody(body),
                content_length=None if no_body else len(body),
                upstream=self._upstream,
                upstream_seconds=waited,
            )
        try:
            accepted = check_upstream_answer(
                answer.headers, key, protocols, deflate_offered=config.permessage_deflate
            )
        except BadUpstreamAnswer as error:
            raise BadGateway(f"invalid WebSocket handshake answer: {error}") from None
        client_deflate = (
            deflate.accept_offer(list(offer.extensions)) if config.permessage_deflate else None
        )
        response = ProxyResponse(
            status=101,
            reason=b"Switching Protocols",
            headers=client_101_fields(
                relayed,
                offer.key,
                accepted.protocol,
                client_deflate[0] if client_deflate is not None else None,
            ),
            upstream=self._upstream,
            upstream_seconds=waited,
        )
        response.tunnel = Tunnel(
            caps=self._caps,
            config=config,
            route=self._route,
            client_ip=request.client_ip,
            metrics=self._metrics,
            side=side,
            client_bits=client_deflate[1] if client_deflate is not None else None,
            upstream_deflate=accepted.deflate,
        )
        return response
