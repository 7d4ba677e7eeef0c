"""The lean pooled upstream transport: HTTP/1.1 on asyncio protocols with llhttp (DESIGN.md §2).

``UpstreamPool.request`` sends one request and returns an ``UpstreamResponse`` whose body
streams with backpressure; ``release()`` returns the connection to the pool.
"""

from gateway.upstream.pool import UpstreamPool
from gateway.upstream.resolver import Resolver
from gateway.upstream.response import UpstreamResponse

__all__ = ["Resolver", "UpstreamPool", "UpstreamResponse"]
