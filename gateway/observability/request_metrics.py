"""Per-request observations, summed in plain numbers and published once a second by `flush`.

In multiprocess mode every increment of a prometheus-client value is a locked write to a
memory-mapped file: several per request cost a single worker a third of its throughput
(loadtests/compare_nginx.py --observability). Summing in plain numbers and publishing the sums
once a second costs a few dict operations per request; /metrics trails by at most a second, far
below any scrape interval. Keys are bounded: config names, a fixed method set, the status code.

Apart from `gateway.observability.metrics` (the prometheus-client side) because this runs for
every request and is compiled with mypyc (setup.py); that module is not.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

from gateway.observability import metrics

# RFC 9110 §9 methods plus PATCH; anything else a client invents is "other".
_KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_BOUNDS: Final = [*metrics.BUCKETS, float("inf")]
_RATELIMIT_BOUNDS: Final = [*metrics.RATELIMIT_BUCKETS, float("inf")]


def method_label(method: str) -> str:
    return method if method in _KNOWN_METHODS else "other"


# RFC 9113 §7 error codes as metric labels.
GOAWAY_CODES: dict[int, str] = {
    0x0: "no_error",
    0x1: "protocol_error",
    0x2: "internal_error",
    0x3: "flow_control_error",
    0x4: "settings_timeout",
    0x5: "stream_closed",
    0x6: "frame_size_error",
    0x7: "refused_stream",
    0x8: "cancel",
    0x9: "compression_error",
    0xA: "connect_error",
    0xB: "enhance_your_calm",
    0xC: "inadequate_security",
    0xD: "http_1_1_required",
}


class Observations:
    """Histogram observations held in plain numbers until the next flush."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        # prometheus-client stores one (non-cumulative) count per upper bound, +Inf last.
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class RequestMetrics:
    """What the request path observes, published to prometheus-client by `flush`."""

    __slots__ = (
        "_cache_results",
        "_client_events",
        "_compressed",
        "_durations",
        "_ratelimit_decisions",
        "_ratelimit_durations",
        "_requests",
        "_upstream_durations",
        "_upstream_errors",
        "_websocket_events",
        "_websocket_messages",
    )

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int, str], int] = {}
        self._durations: dict[str, Observations] = {}
        self._upstream_durations: dict[str, Observations] = {}
        self._upstream_errors: dict[tuple[str, str], int] = {}
        self._ratelimit_decisions: dict[tuple[str, str], int] = {}
        self._cache_results: dict[tuple[str, str], int] = {}
        # algorithm -> [bytes in, bytes out]
        self._compressed: dict[str, list[int]] = {}
        self._ratelimit_durations: dict[str, Observations] = {}
        # (route, direction) -> [messages, bytes]
        self._websocket_messages: dict[tuple[str, str], list[int]] = {}
        # (kind, route, label) -> count; kind is "rejected" or "queue_full".
        self._websocket_events: dict[tuple[str, str, str], int] = {}
        # (kind, label) -> count; kind is "refused" (label: the cap) or "timeout" (the deadline).
        self._client_events: dict[tuple[str, str], int] = {}

    def request_done(
        self, route: str, method: str, status: int, seconds: float, protocol: str = "http1"
    ) -> None:
        # Keyed by the method label, not the method: clients may send any token as a method.
        key = (route, method_label(method), status, protocol)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        observations = self._durations.get(route)
        if observations is None:
            observations = self._durations[route] = Observations(_BOUNDS)
        observations.add(seconds)

    def upstream_answered(self, upstream: str, seconds: float) -> None:
        observations = self._upstream_durations.get(upstream)
        if observations is None:
            observations = self._upstream_durations[upstream] = Observations(_BOUNDS)
        observations.add(seconds)

    def upstream_failed(self, upstream: str, kind: str) -> None:
        key = (upstream, kind)
        self._upstream_errors[key] = self._upstream_errors.get(key, 0) + 1

    def ratelimit_decided(self, route: str, decision: str, backend: str, seconds: float) -> None:
        key = (route, decision)
        self._ratelimit_decisions[key] = self._ratelimit_decisions.get(key, 0) + 1
        observations = self._ratelimit_durations.get(backend)
        if observations is None:
            observations = self._ratelimit_durations[backend] = Observations(_RATELIMIT_BOUNDS)
        observations.add(seconds)

    def cache_result(self, route: str, result: str) -> None:
        key = (route, result)
        self._cache_results[key] = self._cache_results.get(key, 0) + 1

    def compressed(self, algorithm: str, raw: int, out: int) -> None:
        sizes = self._compressed.get(algorithm)
        if sizes is None:
            sizes = self._compressed[algorithm] = [0, 0]
        sizes[0] += raw
        sizes[1] += out

    def websocket_message(self, route: str, direction: str, size: int) -> None:
        key = (route, direction)
        counts = self._websocket_messages.get(key)
        if counts is None:
            counts = self._websocket_messages[key] = [0, 0]
        counts[0] += 1
        counts[1] += size

    def websocket_rejected(self, route: str, reason: str) -> None:
        key = ("rejected", route, reason)
        self._websocket_events[key] = self._websocket_events.get(key, 0) + 1

    def websocket_queue_full(self, route: str, direction: str) -> None:
        key = ("queue_full", route, direction)
        self._websocket_events[key] = self._websocket_events.get(key, 0) + 1

    def connection_refused(self, reason: str) -> None:
        key = ("refused", reason)
        self._client_events[key] = self._client_events.get(key, 0) + 1

    def client_timed_out(self, kind: str) -> None:
        key = ("timeout", kind)
        self._client_events[key] = self._client_events.get(key, 0) + 1

    def http2_goaway(self, code: int) -> None:
        key = ("goaway", GOAWAY_CODES.get(code, "unknown"))
        self._client_events[key] = self._client_events.get(key, 0) + 1

    def proxy_protocol_rejected(self, reason: str) -> None:
        key = ("proxy", reason)
        self._client_events[key] = self._client_events.get(key, 0) + 1

    def flush(self) -> None:
        """Publish what was observed since the last flush."""
        client_events, self._client_events = self._client_events, {}
        for (kind, label), count in client_events.items():
            if kind == "refused":
                counter = metrics.CONNECTIONS_REFUSED
            elif kind == "timeout":
                counter = metrics.CLIENT_TIMEOUTS
            elif kind == "goaway":
                counter = metrics.HTTP2_GOAWAYS
            else:
                counter = metrics.PROXY_PROTOCOL_REJECTED
            counter.labels(label).inc(count)
        relayed, self._websocket_messages = self._websocket_messages, {}
        for (route, direction), (count, size) in relayed.items():
            metrics.count_websocket(route, direction, count, size)
        events, self._websocket_events = self._websocket_events, {}
        for (kind, route, label), count in events.items():
            counter = (
                metrics.WEBSOCKET_REJECTED if kind == "rejected" else metrics.WEBSOCKET_QUEUE_FULL
            )
            metrics.count_websocket_event(counter, route, label, count)
        requests, self._requests = self._requests, {}
        for (route, method, status, protocol), count in requests.items():
            metrics.count_requests(route, method, status, protocol, count)
        durations, self._durations = self._durations, {}
        for route, observations in durations.items():
            metrics.add_observations(
                metrics.REQUEST_DURATION, route, observations.counts, observations.total
            )
        upstream_durations, self._upstream_durations = self._upstream_durations, {}
        for upstream, observations in upstream_durations.items():
            metrics.add_observations(
                metrics.UPSTREAM_DURATION, upstream, observations.counts, observations.total
            )
        errors, self._upstream_errors = self._upstream_errors, {}
        for (upstream, kind), count in errors.items():
            metrics.count_upstream_errors(upstream, kind, count)
        decisions, self._ratelimit_decisions = self._ratelimit_decisions, {}
        for (route, decision), count in decisions.items():
            metrics.count_ratelimit_decisions(route, decision, count)
        compressed, self._compressed = self._compressed, {}
        for algorithm, (raw, out) in compressed.items():
            metrics.count_compression_bytes(algorithm, raw, out)
        results, self._cache_results = self._cache_results, {}
        for (route, result), count in results.items():
            metrics.count_cache_requests(route, result, count)
        backend_durations, self._ratelimit_durations = self._ratelimit_durations, {}
        for backend, observations in backend_durations.items():
            metrics.add_observations(
                metrics.RATELIMIT_BACKEND_DURATION,
                backend,
                observations.counts,
                observations.total,
            )


class DisabledRequestMetrics(RequestMetrics):
    """Used when `admin.metrics` is false: every observation is a no-op."""

    __slots__ = ()

    def request_done(
        self, route: str, method: str, status: int, seconds: float, protocol: str = "http1"
    ) -> None:
        return None

    def upstream_answered(self, upstream: str, seconds: float) -> None:
        return None

    def upstream_failed(self, upstream: str, kind: str) -> None:
        return None

    def ratelimit_decided(self, route: str, decision: str, backend: str, seconds: float) -> None:
        return None

    def cache_result(self, route: str, result: str) -> None:
        return None

    def compressed(self, algorithm: str, raw: int, out: int) -> None:
        return None

    def flush(self) -> None:
        return None

    def http2_goaway(self, code: int) -> None:
        return None

    def proxy_protocol_rejected(self, reason: str) -> None:
        return None

    def websocket_message(self, route: str, direction: str, size: int) -> None:
        return None

    def websocket_rejected(self, route: str, reason: str) -> None:
        return None

    def websocket_queue_full(self, route: str, direction: str) -> None:
        return None

    def connection_refused(self, reason: str) -> None:
        return None

    def client_timed_out(self, kind: str) -> None:
        return None
