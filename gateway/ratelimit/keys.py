"""What identifies a client to a route's limit: the configured key parts, as bytes.

Every key starts with the route's name, so each route counts on its own (a `server.rate_limit`
default too). Then, per part:

- ``client_ip``: the client address the edge settled on, through `server.trusted_proxies`
  (a forwarded address is believed only from a trusted peer; spoofed X-Forwarded-For values
  from anyone else change nothing);
- ``route``: nothing more, so all clients of the route share one bucket;
- ``header:NAME``: the first value of that field; a request without it counts under its client
  address instead (tagged apart, so no header value can pose as an address).
"""

from __future__ import annotations

from gateway.messages import ProxyRequest


class KeyBuilder:
    """Builds one route's keys; the parts are parsed once, not per request."""

    __slots__ = ("_parts", "_prefix")

    def __init__(self, route: str, parts: tuple[str, ...]) -> None:
        self._prefix = route.encode()
        # One entry per part: b"" for client_ip, None for route, the field name for a header.
        self._parts: list[bytes | None] = []
        for part in parts:
            if part == "client_ip":
                self._parts.append(b"")
            elif part == "route":
                self._parts.append(None)
            else:
                self._parts.append(part.removeprefix("header:").encode("ascii"))

    def key(self, request: ProxyRequest) -> bytes:
        pieces = [self._prefix]
        for part in self._parts:
            if part is None:
                continue
            if part:
                value = _first_value(request, part)
                if value is not None:
                    pieces.append(b"h:" + value)
                    continue
            pieces.append(b"ip:" + request.client_ip.encode())
        return b"\0".join(pieces)


def _first_value(request: ProxyRequest, name: bytes) -> bytes | None:
    size = len(name)
    for field, value in request.headers:
        if len(field) == size and field.lower() == name:
            return value
    return None
