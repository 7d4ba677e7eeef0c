"""The terminal stage of every HTTP route: forward the request to the route's upstream pool."""

from __future__ import annotations

from time import perf_counter

from gateway import headers as header_rules
from gateway.config.model import RouteConfig, UpstreamConfig
from gateway.errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    UpstreamBusy,
    UpstreamOverloaded,
)
from gateway.messages import Headers, ProxyRequest, ProxyResponse
from gateway.observability.request_metrics import RequestMetrics
from gateway.ratelimit.keys import KeyBuilder
from gateway.routing import strip_prefix
from gateway.upstream.pool import UpstreamPool


def _error_kind(error: GatewayError) -> str:
    """gateway_upstream_errors_total{kind} for what failed before the response head."""
    if isinstance(error, GatewayTimeout):
        return "timeout"
    if isinstance(error, UpstreamOverloaded):
        return "overloaded"
    if isinstance(error, UpstreamBusy):
        return "busy"
    return "connect"


class Rewriter:
    """A route's request as its upstream gets it (RFC 9110 §7.6): the target without the
    route's prefix (`strip_prefix`), the forwarded fields with Via and the request id; and the
    Via element for the answers relayed back."""

    __slots__ = ("_hash_key", "_prefix", "_via_by_version", "via_response")

    def __init__(self, route: RouteConfig, via_name: str, upstream: UpstreamConfig) -> None:
        self._prefix = route.match.path_prefix if route.strip_prefix else None
        # consistent_hash balances on the client address or a header (the rate limiter's key
        # rules: a request without the header hashes by its address).
        self._hash_key = (
            KeyBuilder(upstream.name, (upstream.hash_key,))
            if upstream.balance == "consistent_hash"
            else None
        )
        # RFC 9110 §7.6.3: Via names the protocol version each hop received the message with.
        self._via_by_version = {
            version: header_rules.via_value(version, via_name)
            for version in ((1, 0), (1, 1), (2, 0))
        }
        self.via_response = header_rules.via_value((1, 1), via_name)

    def target(self, request: ProxyRequest) -> bytes:
        if self._prefix is None:
            return request.target
        return strip_prefix(request.target, self._prefix)

    def hash_key(self, request: ProxyRequest) -> bytes:
        """What the upstream's balancer hashes (consistent_hash), or nothing."""
        builder = self._hash_key
        return b"" if builder is None else builder.key(request)

    def fields(self, request: ProxyRequest, request_id: bytes) -> Headers:
        return header_rules.upstream_request_headers(
            request.headers,
            peer_trusted=request.peer_trusted,
            peer_ip=request.peer_ip,
            scheme=request.scheme,
            authority=request.authority,
            request_id=request_id,
            via=self._via_by_version[request.version],
            end_to_end=True,
        )


class Forwarder:
    """Rewrites the head for the upstream (RFC 9110 §7.6), sends it, and relays the answer."""

    __slots__ = ("_metrics", "_pool", "_retries", "_rewriter", "_upstream", "_via_response")

    def __init__(
        self, route: RouteConfig, pool: UpstreamPool, via_name: str, metrics: RequestMetrics
    ) -> None:
        self._pool = pool
        self._upstream = route.upstream
        self._retries = route.retries
        self._metrics = metrics
        self._rewriter = Rewriter(route, via_name, pool.config)
        self._via_response = self._rewriter.via_response

    async def __call__(self, request: ProxyRequest) -> ProxyResponse:
        rewriter = self._rewriter
        target = rewriter.target(request)
        request_id = request.request_id.encode("ascii")
        fields = rewriter.fields(request, request_id)
        sent = perf_counter()
        try:
            upstream = await self._pool.request(
                request.method,
                target,
                fields,
                request.authority,
                request.body,
                request.content_length,
                expect_continue=request.expect_continue,
                on_informational=request.send_informational,
                hash_key=rewriter.hash_key(request),
                retries=self._retries,
            )
        except (BadGateway, GatewayTimeout, UpstreamBusy) as error:
            self._metrics.upstream_failed(self._upstream, _error_kind(error))
            raise
        waited = perf_counter() - sent
        self._metrics.upstream_answered(self._upstream, waited)
        try:
            fields = header_rules.downstream_response_headers(
                upstream.headers, request_id=request_id, via=self._via_response
            )
        except BaseException:
            # The connection slot must go back to the pool whatever happens here.
            await upstream.release()
            raise
        return ProxyResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=fields,
            body=upstream.body,
            content_length=upstream.content_length,
            release=upstream.release,
            upstream=self._upstream,
            upstream_seconds=waited,
        )
