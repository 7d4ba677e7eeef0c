"""Everything built from one config: router, upstream pools and each route's chain.

A `Runtime` is immutable once built. A reload builds a new one and swaps it in; requests in
flight finish on the runtime they started with. Pools whose upstream config did not change are
carried over with their warm connections; the others drain and close.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.cache.backends import CacheStores
from gateway.chain import Handler, Stage, compose
from gateway.compression.stage import CompressionStage
from gateway.config.model import GatewayConfig
from gateway.edge import EdgeSettings
from gateway.headers import via_value
from gateway.observability.access_log import AccessLog
from gateway.observability.request_metrics import RequestMetrics
from gateway.proxy import Forwarder
from gateway.ratelimit.backends import RateLimitBackends
from gateway.routing import Router
from gateway.upstream.pool import UpstreamPool
from gateway.websocket.caps import WebSocketCaps
from gateway.websocket.stage import WebSocketStage


# weakref_slot: the rate-limit tables a runtime uses are given back by a finalizer on it.
@dataclass(frozen=True, slots=True, weakref_slot=True)
class Runtime:
    config: GatewayConfig
    edge: EdgeSettings
    router: Router
    pools: Mapping[str, UpstreamPool]
    handlers: Mapping[str, Handler]
    # Routes with `websocket`: the chain for their WebSocket upgrades (rate limit, caps and
    # the relay's handshakes, DESIGN.md §1).
    upgrade_handlers: Mapping[str, Handler]
    # The Via element for responses relayed to clients (RFC 9110 §7.6.3).
    via_response: bytes
    # None when logging.access_log is off.
    access_log: AccessLog | None

    @classmethod
    def build(
        cls,
        config: GatewayConfig,
        metrics: RequestMetrics,
        backends: RateLimitBackends,
        previous: Runtime | None = None,
        caches: CacheStores | None = None,
        *,
        websockets: WebSocketCaps | None = None,
    ) -> Runtime:
        pools: dict[str, UpstreamPool] = {}
        old_pools = previous.pools if previous is not None else {}
        old_upstreams = (
            {u.name: u for u in previous.config.upstreams} if previous is not None else {}
        )
        for upstream in config.upstreams:
            kept = old_pools.get(upstream.name)
            if kept is not None and old_upstreams[upstream.name] == upstream:
                pools[upstream.name] = kept
            else:
                pools[upstream.name] = pool = UpstreamPool(upstream)
                pool.start()
        handlers: dict[str, Handler] = {}
        upgrade_handlers: dict[str, Handler] = {}
        leases: list[str] = []
        for route in config.routes:
            forward = Forwarder(route, pools[route.upstream], config.server.via_name, metrics)
            # DESIGN.md §1: rate limit, cache, compression: the cache keeps what compression
            # made, so a hit costs no compression.
            stages: list[Stage] = []
            rate_limit = backends.stage(route, config, metrics, leases)
            if rate_limit is not None:
                stages.append(rate_limit)
            cache = caches.stage(route, config) if caches is not None else None
            if cache is not None:
                stages.append(cache)
            if route.compression is not None:
                stages.append(CompressionStage(route.compression, metrics))
            handlers[route.name] = compose(stages, forward)
            if route.websocket is not None:
                if websockets is None:
                    raise ValueError("a route relays WebSockets: Runtime.build needs their caps")
                upstream = config.upstream(route.upstream)
                relay = WebSocketStage(
                    route,
                    route.websocket,
                    pools[route.upstream],
                    caps=websockets,
                    limit=config.server.limits.max_websockets,
                    via_name=config.server.via_name,
                    response_timeout=upstream.timeouts.response,
                    metrics=metrics,
                )
                upgrade_handlers[route.name] = compose(
                    [rate_limit] if rate_limit is not None else [], relay
                )
        runtime = cls(
            config=config,
            edge=EdgeSettings.from_config(config.server),
            router=Router(config.routes),
            pools=MappingProxyType(pools),
            handlers=MappingProxyType(handlers),
            upgrade_handlers=MappingProxyType(upgrade_handlers),
            via_response=via_value((1, 1), config.server.via_name),
            access_log=AccessLog() if config.logging.access_log else None,
        )
        if leases:
            # Requests in flight on this runtime may still decide after a reload replaced
            # it: its tables are given back only once nothing refers to it any more.
            weakref.finalize(runtime, backends.release, leases)
        return runtime

    def pools_to_retire(self, successor: Runtime) -> list[UpstreamPool]:
        """The pools of this runtime that ``successor`` does not carry over."""
        kept = {id(pool) for pool in successor.pools.values()}
        return [pool for pool in self.pools.values() if id(pool) not in kept]

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()
