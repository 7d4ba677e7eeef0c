"""Gateway errors: each carries the HTTP status and a short code.

Errors become HTTP responses in exactly one place, the server's error boundary
(`gateway.server`), which renders ``{"error": CODE, "message": ..., "request_id": ...}``.
Library exceptions are mapped to these where they arise.
"""

from __future__ import annotations


class GatewayError(Exception):
    """An error the client is told about with ``status`` and ``code``."""

    status: int = 500
    code: str = "internal_error"
    # Whether the client connection must be closed after the error response (for example
    # when an unread request body would otherwise be parsed as the next request).
    close_connection: bool = False

    def __init__(
        self,
        message: str,
        *,
        close_connection: bool | None = None,
        fields: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if close_connection is not None:
            self.close_connection = close_connection
        # Extra header fields for the error response (Retry-After, RateLimit...), as raw
        # (name, value) pairs.
        self.fields: list[tuple[bytes, bytes]] = fields or []


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"
    close_connection = True


class RouteNotFound(GatewayError):
    status = 404
    code = "route_not_found"


class RequestTimeout(GatewayError):
    status = 408
    code = "request_timeout"
    close_connection = True


class ClientClosedRequest(GatewayError):
    """The client closed its connection before its request was complete.

    Logged with nginx's 499; never sent, since nobody is left to read it.
    """

    status = 499
    code = "client_closed_request"
    close_connection = True


class UriTooLong(GatewayError):
    status = 414
    code = "uri_too_long"
    close_connection = True


class PayloadTooLarge(GatewayError):
    status = 413
    code = "body_too_large"
    close_connection = True


class HeadersTooLarge(GatewayError):
    status = 431
    code = "headers_too_large"
    close_connection = True


class UnsupportedTransferCoding(GatewayError):
    """A request body in a transfer coding other than chunked alone (RFC 9112 §6.1: a server
    that receives a transfer coding it does not understand should answer 501)."""

    status = 501
    code = "unsupported_transfer_coding"
    close_connection = True


class TooManyRequests(GatewayError):
    """A rate limit refused the request (RFC 6585 §4); Retry-After says when to come back.

    A body the client still sends is never parsed as a next request: the connection lingers
    to discard it and closes (`gateway.downstream.connection`), like after any early answer.
    """

    status = 429
    code = "rate_limited"


class BadGateway(GatewayError):
    """The upstream refused, reset or broke the connection before a response (RFC 9110 §15.6.3)."""

    status = 502
    code = "bad_gateway"


class UpstreamBusy(GatewayError):
    """No pooled connection slot became free within the upstream's connect timeout."""

    status = 503
    code = "upstream_busy"


class UpstreamOverloaded(UpstreamBusy):
    """The upstream's circuit breaker is open: too many requests in flight or waiting for a
    connection (``circuit_breaker``); the upstream is not asked at all."""

    code = "upstream_overloaded"


class ServiceUnavailable(GatewayError):
    status = 503
    code = "unavailable"


class WebSocketRefused(GatewayError):
    """A WebSocket handshake the gateway will not relay (RFC 6455 §4.2.1): 400, or 426 with
    the versions it speaks."""

    status = 400
    code = "websocket_handshake"

    def __init__(self, message: str, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        super().__init__(message, fields=fields)
        self.status = status


class WebSocketCapacity(GatewayError):
    """A WebSocket cap (global or the route's) is reached; refused before the 101."""

    status = 503
    code = "websocket_capacity"


class RedirectToHttps(GatewayError):
    """A cleartext listener with `redirect_to_https`: every request is told where it lives."""

    status = 308
    code = "redirect_to_https"


class ConnectionCapacity(GatewayError):
    """The worker holds `max_connections` client connections, or the client's IP holds
    `max_connections_per_ip`: the connection's first request gets this, then it closes."""

    status = 503
    code = "connection_capacity"
    close_connection = True


class WebSocketClientLimit(GatewayError):
    """The client IP holds its route's `max_per_client` WebSockets already."""

    status = 429
    code = "websocket_client_limit"


class GatewayTimeout(GatewayError):
    """The upstream did not connect or answer in time (RFC 9110 §15.6.5)."""

    status = 504
    code = "gateway_timeout"


class UpstreamAborted(Exception):
    """The upstream failed after the first response byte reached the client.

    Not a GatewayError: a second response cannot be sent, so the client connection is aborted
    instead (never a clean end of a truncated body).
    """


class ConfigError(Exception):
    """A configuration file is invalid; ``problems`` are ``path.to.key: what is wrong`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
