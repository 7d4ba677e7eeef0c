"""Prometheus metrics, aggregated over every worker process.

With several workers, `PROMETHEUS_MULTIPROC_DIR` is set by the supervisor before any worker
starts, and prometheus-client keeps each process's values in memory-mapped files there; the admin
endpoint sums them (prometheus-client's multiprocess mode). Without it (one process, tests) the
default registry is used. Labels stay low-cardinality: route and upstream names from the config,
a fixed set of methods and status classes, never paths, hosts or addresses.

The request path sums its observations in plain numbers (`request_metrics`) and publishes
them here once a second. Gauges that describe state (connections, in-flight requests, pool
sizes, event-loop tasks) are sampled once a second by `GaugeSampler` instead of being updated
per request: a per-request gauge write in multiprocess mode is a locked mmap write, paid twice
per request for nothing.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from gateway import __version__

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Route label for requests no route matched (and for requests rejected before routing).
UNMATCHED = "unmatched"

_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

# Latency buckets from 1 ms to 30 s: a proxy's own latency sits in the low milliseconds, an
# upstream's may reach the response timeout.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# A rate-limit decision: microseconds in memory, a round trip to Redis, the budget (50 ms).
RATELIMIT_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)

REQUESTS = Counter(
    "gateway_requests_total",
    "Requests answered, by route, method, status class and client protocol (http1, http2).",
    ["route", "method", "status_class", "protocol"],
)
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time from the complete request head to the end of the response, by route.",
    ["route"],
    buckets=BUCKETS,
)
UPSTREAM_DURATION = Histogram(
    "gateway_upstream_request_duration_seconds",
    "Time from sending a request upstream to its response head, by upstream.",
    ["upstream"],
    buckets=BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors_total",
    "Upstream failures by kind: connect (refused, reset, bad answer), timeout, busy (no pool "
    "slot), overloaded (circuit breaker), aborted (failed after the response began).",
    ["upstream", "kind"],
)
UPSTREAM_RETRIES = Counter(
    "gateway_upstream_retries_total",
    "Requests sent again, by upstream and reason (connect_failure, reset, 502, 503, 504, and"
    " stale: a reused keep-alive connection the upstream had closed).",
    ["upstream", "reason"],
)
UPSTREAM_EJECTIONS = Counter(
    "gateway_upstream_ejections_total",
    "Targets taken out of service by passive health (failures in a row), by upstream and target.",
    ["upstream", "target"],
)
RATELIMIT_DECISIONS = Counter(
    "gateway_ratelimit_decisions_total",
    "Rate-limit decisions by route: allowed, limited (429), shadow (would have been limited,"
    " enforce: false) and error (the backend failed or missed its budget; on_backend_error"
    " decided).",
    ["route", "decision"],
)
RATELIMIT_BACKEND_DURATION = Histogram(
    "gateway_ratelimit_backend_seconds",
    "Time a rate-limit backend took to decide, by backend (memory, redis).",
    ["backend"],
    buckets=RATELIMIT_BUCKETS,
)
RATELIMIT_BACKEND_FAILURES = Counter(
    "gateway_ratelimit_backend_failovers_total",
    "Times a rate-limit backend went from answering to failing (errors or missed budgets);"
    ' the decisions made meanwhile count as decision="error".',
    ["backend"],
)
CACHE_REQUESTS = Counter(
    "gateway_cache_requests_total",
    "Requests on cached routes by what the cache did: hit, miss, stale (served stale:"
    " stale-while-revalidate or stale-if-error), revalidated (refreshed by a 304), bypass"
    " (not a cacheable request) and coalesced (answered by a concurrent miss's response).",
    ["route", "result"],
)
CACHE_ENTRIES = Gauge(
    "gateway_cache_entries",
    "Stored responses by cache store: memory (summed over the workers, each has its own),"
    " redis (counted by the admin process a few hundred keys a second; trails by one pass).",
    ["store"],
    multiprocess_mode="livesum",
)
CACHE_BYTES = Gauge(
    "gateway_cache_bytes",
    "Bytes the cache stores hold: memory (bodies, fields and bookkeeping, summed over the"
    " workers), redis (MEMORY USAGE of the store's keys).",
    ["store"],
    multiprocess_mode="livesum",
)
COMPRESSION_BYTES = Counter(
    "gateway_compression_bytes_total",
    "Bytes through response compression by algorithm: stage=in before it, stage=out after.",
    ["algorithm", "stage"],
)
WEBSOCKET_CONNECTIONS = Gauge(
    "gateway_websocket_connections",
    "WebSocket relays open, by route, sampled each second.",
    ["route"],
    multiprocess_mode="livesum",
)
WEBSOCKET_MESSAGES = Counter(
    "gateway_websocket_messages_total",
    "WebSocket data messages relayed, by route and direction (to_upstream, to_client).",
    ["route", "direction"],
)
WEBSOCKET_BYTES = Counter(
    "gateway_websocket_bytes_total",
    "Payload bytes of the WebSocket data messages relayed (uncompressed), by route and direction.",
    ["route", "direction"],
)
WEBSOCKET_REJECTED = Counter(
    "gateway_websocket_rejected_total",
    "WebSocket upgrades refused before the 101, by route and reason (capacity, client_limit,"
    " handshake, upstream).",
    ["route", "reason"],
)
WEBSOCKET_QUEUE_FULL = Counter(
    "gateway_websocket_queue_full_total",
    "Times a WebSocket direction's queue filled (its sender paused, or closed with 1013).",
    ["route", "direction"],
)
UPSTREAM_CONNECTIONS = Gauge(
    "gateway_upstream_connections",
    "Pooled upstream connections by state (active, idle), sampled each second.",
    ["upstream", "state"],
    multiprocess_mode="livesum",
)
UPSTREAM_TARGET_HEALTHY = Gauge(
    "gateway_upstream_target_healthy",
    "1 when a target is in service (healthy by its active checks, not ejected), 0 when it is"
    " out; with several workers, 0 when any worker has it out. Sampled each second.",
    ["upstream", "target"],
    multiprocess_mode="livemin",
)
INFLIGHT = Gauge(
    "gateway_inflight_requests",
    "Requests being handled, sampled each second.",
    multiprocess_mode="livesum",
)
CONNECTIONS = Gauge(
    "gateway_connections",
    "Open client connections, sampled each second.",
    multiprocess_mode="livesum",
)
EVENT_LOOP_TASKS = Gauge(
    "gateway_event_loop_tasks",
    "asyncio tasks alive in the workers' event loops (summed), sampled each second: flat under"
    " steady load, a leak of tasks otherwise.",
    multiprocess_mode="livesum",
)
CONNECTIONS_REFUSED = Counter(
    "gateway_connections_refused_total",
    "Client connections refused (503, or dropped when too many are being refused) by the cap"
    " they hit: max_connections, max_connections_per_ip.",
    ["reason"],
)
CLIENT_TIMEOUTS = Counter(
    "gateway_client_timeouts_total",
    "Client connections ended by a deadline: header_read (408), body_progress (408),"
    " send (the response left unread; aborted).",
    ["kind"],
)
HTTP2_GOAWAYS = Counter(
    "gateway_http2_goaways_total",
    "HTTP/2 connections ended because of the client, by the GOAWAY error code sent"
    " (protocol_error, enhance_your_calm for the reset budget, oversized header blocks...).",
    ["code"],
)
PROXY_PROTOCOL_REJECTED = Counter(
    "gateway_proxy_protocol_rejected_total",
    "Connections closed on a proxy_protocol listener: untrusted (the peer is not in"
    " server.trusted_proxies), malformed (no valid PROXY header), timeout.",
    ["reason"],
)
CONFIG_RELOADS = Counter(
    "gateway_config_reloads_total",
    "Configuration reloads by result (success, error).",
    ["result"],
)
WORKER_RESTARTS = Counter(
    "gateway_worker_restarts_total",
    "Worker processes restarted by the supervisor after they died.",
)
ACCESS_LOG_DROPPED = Counter(
    "gateway_access_log_dropped_total",
    "Log lines dropped because stdout could not keep up (the queue was full).",
)
BUILD_INFO = Gauge(
    "gateway_build_info",
    "Always 1; the labels carry the gateway and Python versions.",
    ["version", "python"],
    multiprocess_mode="max",
)


def status_class(status: int) -> str:
    return _STATUS_CLASS.get(status // 100, "other")


def mark_build_info() -> None:
    BUILD_INFO.labels(__version__, platform.python_version()).set(1)


def render() -> tuple[bytes, str]:
    """The exposition text for /metrics: every worker's values when multiprocess is on."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters and histograms keep counting)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def count_requests(route: str, method: str, status: int, protocol: str, count: int) -> None:
    REQUESTS.labels(route, method, status_class(status), protocol).inc(count)


def count_upstream_errors(upstream: str, kind: str, count: int) -> None:
    UPSTREAM_ERRORS.labels(upstream, kind).inc(count)


def count_upstream_retry(upstream: str, reason: str) -> None:
    # Rare (a failure each), so counted where it happens rather than batched per second.
    UPSTREAM_RETRIES.labels(upstream, reason).inc()


def count_upstream_ejection(upstream: str, target: str) -> None:
    UPSTREAM_EJECTIONS.labels(upstream, target).inc()


def count_ratelimit_decisions(route: str, decision: str, count: int) -> None:
    RATELIMIT_DECISIONS.labels(route, decision).inc(count)


def count_cache_requests(route: str, result: str, count: int) -> None:
    CACHE_REQUESTS.labels(route, result).inc(count)


def count_compression_bytes(algorithm: str, raw: int, out: int) -> None:
    COMPRESSION_BYTES.labels(algorithm, "in").inc(raw)
    COMPRESSION_BYTES.labels(algorithm, "out").inc(out)


def count_websocket(route: str, direction: str, messages: int, size: int) -> None:
    WEBSOCKET_MESSAGES.labels(route, direction).inc(messages)
    WEBSOCKET_BYTES.labels(route, direction).inc(size)


def count_websocket_event(counter: Counter, route: str, label: str, count: int) -> None:
    counter.labels(route, label).inc(count)


def set_cache_size(store: str, entries: int, size: int) -> None:
    CACHE_ENTRIES.labels(store).set(entries)
    CACHE_BYTES.labels(store).set(size)


def count_ratelimit_failover(backend: str) -> None:
    RATELIMIT_BACKEND_FAILURES.labels(backend).inc()


def add_observations(histogram: Histogram, label: str, counts: list[int], total: float) -> None:
    """Add whole bucket counts (one per bound of the histogram's buckets, +Inf last) and
    their sum."""
    child = histogram.labels(label)
    # Not in prometheus-client's public API: its histogram child keeps one value per bucket and
    # one for the sum, and has for many releases.
    buckets = child._buckets
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)
    child._sum.inc(total)


class GaugeSampler:
    """Sets the state gauges from counters the worker keeps anyway, once a second."""

    def __init__(
        self,
        inflight: Callable[[], int],
        connections: Callable[[], int],
        pools: Callable[[], Iterable[tuple[str, int, int]]],
        *,
        memory_cache: Callable[[], tuple[int, int] | None] = lambda: None,
        websockets: Callable[[], dict[str, int]] = dict,
        targets: Callable[[], Iterable[tuple[str, str, bool]]] = tuple,
        tasks: Callable[[], int] | None = None,
    ) -> None:
        self._inflight = inflight
        self._connections = connections
        self._pools = pools
        # (entries, bytes) of this process's memory cache store, None without one.
        self._memory_cache = memory_cache
        # Open relays per route.
        self._websockets = websockets
        self._websocket_routes: set[str] = set()
        self._seen: set[str] = set()
        # (upstream, target, in service) for every target of every upstream.
        self._targets = targets
        self._seen_targets: set[tuple[str, str]] = set()
        # Tasks alive in the event loop (None: not reported). Counting them walks a WeakSet of
        # every task, one per client connection among them: fine once a second, not per request.
        self._tasks = tasks

    def sample(self) -> None:
        INFLIGHT.set(self._inflight())
        CONNECTIONS.set(self._connections())
        if self._tasks is not None:
            EVENT_LOOP_TASKS.set(self._tasks())
        relays = self._websockets()
        # Routes whose relays all closed go back to 0 rather than keep their last value.
        for route in self._websocket_routes | relays.keys():
            WEBSOCKET_CONNECTIONS.labels(route).set(relays.get(route, 0))
        self._websocket_routes |= relays.keys()
        memory = self._memory_cache()
        if memory is not None:
            set_cache_size("memory", memory[0], memory[1])
        current: set[str] = set()
        for name, open_connections, idle in self._pools():
            current.add(name)
            UPSTREAM_CONNECTIONS.labels(name, "idle").set(idle)
            UPSTREAM_CONNECTIONS.labels(name, "active").set(open_connections - idle)
        for gone in self._seen - current:
            # An upstream removed by a reload stops being reported.
            UPSTREAM_CONNECTIONS.remove(gone, "idle")
            UPSTREAM_CONNECTIONS.remove(gone, "active")
        self._seen = current
        targets: set[tuple[str, str]] = set()
        for upstream, target, healthy in self._targets():
            targets.add((upstream, target))
            UPSTREAM_TARGET_HEALTHY.labels(upstream, target).set(1 if healthy else 0)
        for gone_target in self._seen_targets - targets:
            UPSTREAM_TARGET_HEALTHY.remove(*gone_target)
        self._seen_targets = targets
