"""Everything built from one config: router, upstream pools and each route's chain.

A `Runtime` is immutable once built. Reloads build a new one and swap it in; requests in flight
finish on the runtime they started with, and the old pools drain and close.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.chain import Handler, compose
from gateway.config.model import GatewayConfig
from gateway.edge import EdgeSettings
from gateway.headers import via_value
from gateway.proxy import Forwarder
from gateway.routing import Router
from gateway.upstream.pool import UpstreamPool


@dataclass(frozen=True, slots=True)
class Runtime:
    config: GatewayConfig
    edge: EdgeSettings
    router: Router
    pools: Mapping[str, UpstreamPool]
    handlers: Mapping[str, Handler]
    # The Via element for responses relayed to clients (RFC 9110 §7.6.3).
    via_response: bytes

    @classmethod
    def build(cls, config: GatewayConfig) -> Runtime:
        pools = {upstream.name: UpstreamPool(upstream) for upstream in config.upstreams}
        handlers: dict[str, Handler] = {}
        for route in config.routes:
            forward = Forwarder(route, pools[route.upstream], config.server.via_name)
            # Later issues add rate limit, cache and compression stages here, per route.
            handlers[route.name] = compose((), forward)
        return cls(
            config=config,
            edge=EdgeSettings.from_config(config.server),
            router=Router(config.routes),
            pools=MappingProxyType(pools),
            handlers=MappingProxyType(handlers),
            via_response=via_value((1, 1), config.server.via_name),
        )

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()
