"""The validated configuration: immutable objects built once by `gateway.config.loader`.

Every value here is already checked and converted (durations in seconds as float, sizes in
bytes as int). Nothing reads the YAML or the environment after loading; the objects are passed
in to whatever needs them. Defaults follow DESIGN.md §3 and HARDENING.md's edge defaults.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal

KIB = 1024
MIB = 1024 * KIB

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerLimits:
    # Whole request body, enforced on the stream (413).
    max_body: int = 10 * MIB
    # Whole header block (431) and number of header fields (431).
    max_header_bytes: int = 32 * KIB
    max_headers: int = 100
    # Request line and one header field (aiohttp's defaults; nginx uses 8 KiB).
    max_line: int = 8190
    # Requests served on one client connection before it is closed (HARDENING.md).
    max_requests_per_connection: int = 1000
    # WebSocket relays open at once, all workers and routes together (503 beyond).
    max_websockets: int = 10_000
    # Client connections open at once in one worker process (503 and close beyond). Each holds
    # a file descriptor and, idle, about 6 KiB: 10,000 is 60 MiB and fits a 16,384-fd limit
    # with room for the upstream pools (256 connections per upstream by default).
    max_connections: int = 10_000
    # Client connections open at once from one IP address in one worker (503 and close beyond).
    # Off by default: behind an L4 balancer or a NAT every client may share one address.
    max_connections_per_ip: int | None = None


@dataclass(frozen=True, slots=True)
class ServerTimeouts:
    # From accept (or from the first byte of a later request) until the header block is complete.
    header_read: float = 10.0
    # Idle keep-alive connection from a client.
    keepalive: float = 60.0
    # The longest gap between two reads of a request body that is still arriving (slow POST).
    body_progress: float = 30.0
    # The longest a client may leave a response unread: no byte taken from the gateway's send
    # buffer for this long, while it is full, drops the connection (nginx's send_timeout).
    send: float = 60.0
    # SIGTERM: time for in-flight requests to finish before the process exits.
    drain: float = 25.0


@dataclass(frozen=True, slots=True)
class TlsCertificate:
    """A PEM certificate chain and its private key, served to the names in ``server_names``."""

    cert: str
    key: str
    # SNI names this certificate answers (exact, or "*.example.com" for one label); empty for
    # the listener's default certificate, served when no other name matches.
    server_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS termination on a listener. Files are read when a worker starts and on every reload
    (SIGHUP), so a renewed certificate is served to new connections without a restart."""

    # The default certificate (YAML `cert` and `key`).
    default: TlsCertificate
    # More certificates chosen by SNI (YAML `sni: [{server_names, cert, key}]`).
    sni: tuple[TlsCertificate, ...] = ()
    min_version: Literal["1.2", "1.3"] = "1.2"
    # OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults); None keeps
    # Mozilla's "intermediate" list (`gateway.downstream.tls.INTERMEDIATE_CIPHERS`).
    ciphers: str | None = None


@dataclass(frozen=True, slots=True)
class ResetBudget:
    """Stream resets one HTTP/2 connection may cause, the client's (RST_STREAM) and the ones
    the gateway sends because of the client, as a token bucket; beyond it, GOAWAY
    ENHANCE_YOUR_CALM (the rapid-reset attack, CVE-2023-44487)."""

    burst: int = 200
    per_second: float = 20.0


@dataclass(frozen=True, slots=True)
class Http2Config:
    # Offer h2 by ALPN on a TLS listener (and allow `h2c`).
    enabled: bool = True
    # On a cleartext listener: the client preface selects HTTP/2 with prior knowledge
    # (RFC 9113 §3.3). `Upgrade: h2c` is never honoured (RFC 9113 §3.1 deprecates it).
    h2c: bool = False
    # Streams open at once on one connection (the loader allows 1 to 10,000).
    max_concurrent_streams: int = 100
    # The decoded header list (RFC 9113 §6.5.2 SETTINGS_MAX_HEADER_LIST_SIZE); a block beyond it
    # ends the connection with GOAWAY ENHANCE_YOUR_CALM.
    max_header_list_size: int = 64 * KIB
    # The largest frame the gateway accepts: 16 KiB to 16 MiB - 1 (RFC 9113 §6.5.2).
    max_frame_size: int = 16 * KIB
    # Each stream's receive window: a request body buffers at most this much before the
    # route's chain takes it (the window reopens only as it does).
    initial_window_size: int = 64 * KIB
    # Streams on one connection before a graceful GOAWAY (as server.limits for HTTP/1.1).
    max_requests_per_connection: int = 1000
    reset_budget: ResetBudget = field(default_factory=ResetBudget)


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    listen: ListenAddress
    tls: TlsConfig | None = None
    http2: Http2Config = field(default_factory=Http2Config)
    # Read a PROXY protocol v1 or v2 header first (from server.trusted_proxies only, so the
    # loader requires some): the address it carries is the client's.
    proxy_protocol: bool = False
    # A cleartext listener answering every request with 308 to the same URL on https (the
    # loader requires another listener with tls).
    redirect_to_https: bool = False

    @property
    def protocol_sniffing(self) -> bool:
        """Whether a connection's first bytes pick what serves it (PROXY header, h2c preface)."""
        return self.proxy_protocol or (self.tls is None and self.http2.enabled and self.http2.h2c)


DEFAULT_LISTENERS: Final = (ListenerConfig(ListenAddress("0.0.0.0", 8080)),)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    # The public listeners (YAML `server.listeners`, or `server.listen` for one plain one).
    listeners: tuple[ListenerConfig, ...] = DEFAULT_LISTENERS
    # Worker processes accepting on every listener with SO_REUSEPORT; "auto" is one per CPU core.
    workers: int | Literal["auto"] = 1
    # CIDRs whose X-Forwarded-For / X-Forwarded-Proto, and PROXY protocol headers, are believed.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    limits: ServerLimits = field(default_factory=ServerLimits)
    timeouts: ServerTimeouts = field(default_factory=ServerTimeouts)
    # The pseudonym this gateway adds in Via (RFC 9110 §7.6.3).
    via_name: str = "gateway"
    # The rate limit of every route that does not set its own `rate_limit`.
    rate_limit: RateLimitConfig | None = None

    @property
    def listen(self) -> ListenAddress:
        """The first listener's address (the only one when `server.listen` configured it)."""
        return self.listeners[0].listen


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: ListenAddress = ListenAddress("127.0.0.1", 9901)
    # When set, mutating admin endpoints need `Authorization: Bearer <token>`; required when
    # `listen` is not a loopback address. Never shown by /config.
    token: str | None = field(default=None, repr=False)
    # Collect and serve Prometheus metrics. Off only to measure what they cost.
    metrics: bool = True


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream server: ``http://host:port`` or ``https://host:port``."""

    scheme: Literal["http", "https"]
    host: str
    port: int
    # Its share of the requests against the other targets' (round_robin, least_requests) and
    # of the hash ring (consistent_hash).
    weight: int = 1

    @property
    def address(self) -> tuple[str, str, int]:
        """What makes two targets the same server, whatever their weights."""
        return (self.scheme, self.host, self.port)

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}"


@dataclass(frozen=True, slots=True)
class PoolConfig:
    # Connections open at once (busy + idle) per upstream, across its targets.
    max_connections: int = 256
    # Idle keep-alive connections kept per upstream.
    max_idle: int = 64
    # Kept below common upstream keep-alive timeouts (5 s) so we never reuse a closing socket.
    idle_timeout: float = 4.0


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    # TCP (and TLS) connect, and the longest wait for a free pool slot.
    connect: float = 2.0
    # From the end of the request to the first byte of the response head.
    response: float = 30.0
    # The longest gap between two reads of a response body.
    read: float = 60.0


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    # A PEM bundle to verify https targets with; None uses the system store.
    ca_file: str | None = None
    verify: bool = True


# Status ranges, both ends included: ((200, 399),) is 2xx and 3xx.
StatusRanges = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """Active checks: each worker asks every target for ``path`` each ``interval``."""

    path: str = "/"
    interval: float = 5.0
    # A check without a status line by then fails.
    timeout: float = 1.0
    # Consecutive passes that bring an unhealthy target back, failures that take one out.
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expected_status: StatusRanges = ((200, 399),)


@dataclass(frozen=True, slots=True)
class PassiveHealthConfig:
    """Ejection on the traffic itself (Envoy's outlier detection, nginx's max_fails)."""

    # Connect failures, resets, timeouts and 5xx answers in a row that eject a target.
    consecutive_failures: int = 5
    # The first ejection's length; each ejection that follows within max_ejection of the
    # target's return doubles it, up to max_ejection.
    base_ejection: float = 10.0
    max_ejection: float = 300.0


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """Per worker: beyond these the upstream is not asked at all; the answer is a fast 503
    (Envoy's circuit breaker thresholds, same defaults)."""

    # Requests sent to the upstream and not finished yet.
    max_requests: int = 1024
    # Requests waiting for a free connection slot (pool.max_connections are busy).
    max_pending: int = 1024


Balance = Literal["round_robin", "least_requests", "consistent_hash"]


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    targets: tuple[Target, ...]
    # round_robin: smooth weighted round robin (nginx's); least_requests: the less loaded of
    # two random targets (power of two choices); consistent_hash: a ring by hash_key.
    balance: Balance = "round_robin"
    # consistent_hash only: "client_ip" or "header:<lower-case field name>" (a request
    # without that field hashes by its client address).
    hash_key: str = "client_ip"
    # None: no active checks (every target is presumed healthy until traffic says otherwise).
    health_check: HealthCheckConfig | None = None
    # None: traffic never ejects a target.
    passive_health: PassiveHealthConfig | None = field(default_factory=PassiveHealthConfig)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    timeouts: UpstreamTimeouts = field(default_factory=UpstreamTimeouts)
    tls: UpstreamTLS = field(default_factory=UpstreamTLS)
    # "preserve" (the client's Host), "target" (the chosen target's authority) or a fixed value.
    host_header: str = "preserve"
    # Seconds a DNS answer for a target hostname is reused before it is resolved again.
    dns_ttl: float = 30.0


RetryCondition = Literal["connect_failure", "reset", "502", "503", "504"]


@dataclass(frozen=True, slots=True)
class RetryBackoff:
    # Before retry n (1, 2, ...): a random wait up to min(base * 2**(n-1), max) ("full
    # jitter"), so that clients failing together do not retry together.
    base: float = 0.025
    max: float = 0.25


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """A route's retries. ``retries: {enabled: false}`` is none beyond the stale keep-alive
    retry (RFC 9112 §9.3.1), which is always made."""

    # Tries in all, the first included.
    attempts: int = 2
    # connect_failure: no connection (refused, unreachable, connect timeout); reset: the
    # connection closed before any response byte; 502/503/504: that answer from the upstream.
    on: tuple[RetryCondition, ...] = ("connect_failure", "reset")
    # Retries in flight to the upstream, at most this share of its requests in flight (and
    # always at least 3), per worker, so that retries never multiply the load of a failing
    # upstream (Envoy's retry budget). Retries of refused connects are not counted: those
    # requests reached no upstream.
    budget_percent: int = 20
    backoff: RetryBackoff = field(default_factory=RetryBackoff)
    # Also retry methods that are not idempotent (POST, PATCH; RFC 9110 §9.2.2).
    non_idempotent: bool = False
    # A request body is kept for a retry up to this size; a larger one is never retried once
    # a byte of it was sent.
    max_replay_body: int = 64 * KIB


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    # Lower-case field name; the value is compared exactly.
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class RouteMatch:
    # None matches any host; "*.example.com" matches one or more labels before example.com.
    host: str | None = None
    # Segment-aware prefix: "/users" matches "/users" and "/users/7", not "/usersx".
    path_prefix: str = "/"
    # None matches every method.
    methods: frozenset[str] | None = None
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` requests per ``period`` seconds, parsed from a `limits` rate string."""

    limit: int
    period: int
    # As the config wrote it ("100/second"), for messages and the admin view.
    text: str

    @property
    def interval(self) -> float:
        """Seconds per token: the GCRA emission interval."""
        return self.period / self.limit

    def __str__(self) -> str:
        return self.text


# A rate-limit key part: "client_ip", "route", or "header:<lower-case field name>".
KeyPart = str


DEFAULT_RATE_LIMIT_KEYS: Final = 65536


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """One route's rate limit (issue 5); every key but ``rate`` has a default."""

    rate: Rate
    # Bucket size in requests; 0 (the config omits it) means rate.limit.
    burst: int = 0
    # What identifies a client: one or more parts, combined.
    key: tuple[KeyPart, ...] = ("client_ip",)
    backend: Literal["memory", "redis"] = "memory"
    strategy: Literal["token_bucket", "fixed_window", "sliding_window", "moving_window"] = (
        "token_bucket"
    )
    # False is shadow mode: would-be 429s are counted and logged, and the request goes on.
    enforce: bool = True
    # When the Redis backend fails or misses its budget: decide with the memory backend,
    # allow the request, or answer 503.
    on_backend_error: Literal["local", "allow", "deny"] = "local"
    # The longest a Redis decision may take before it counts as failed.
    budget: float = 0.05
    # Keys the memory backend's table holds per route (and worker host).
    max_keys: int = DEFAULT_RATE_LIMIT_KEYS

    def __post_init__(self) -> None:
        if self.burst == 0:
            object.__setattr__(self, "burst", self.rate.limit)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """A route's response cache (RFC 9111, shared). ``cache: {enabled: false}`` is no cache."""

    store: Literal["memory", "redis"] = "memory"
    # The largest body stored; a larger response streams through unstored.
    max_object_size: int = 1 * MIB
    # Lifetime of responses without explicit freshness (max-age, s-maxage, Expires), instead
    # of the Last-Modified heuristic; None keeps the heuristic (RFC 9111 §4.2.2).
    default_ttl: float | None = None
    # RFC 5861 windows for responses that do not set their own.
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    # The upstream response field listing purge tags.
    tag_header: str = "Cache-Tag"
    # Responses with Set-Cookie are not stored unless this is on.
    store_set_cookie: bool = False
    # How long the Redis store keeps an entry with validators after it went stale, so that
    # it can still be revalidated with a 304 instead of fetched whole.
    revalidate_for: float = 600.0


@dataclass(frozen=True, slots=True)
class CompressionLevels:
    # Fit for dynamic content: most of the size gain for a fraction of the top levels' CPU
    # (docs/performance.md: br 4 saved 3% of br 3's size for 47% more CPU on 32 KiB of JSON).
    # brotli 0-11, zstd 1-22, gzip 1-9.
    br: int = 3
    zstd: int = 3
    gzip: int = 6


# Media types worth compressing: text, and the structured formats sent as application/*.
# `type/*` matches a whole type, `type/*+suffix` a structured-syntax suffix (RFC 6838 §4.2.8).
DEFAULT_COMPRESSIBLE: Final = (
    "text/*",
    "application/json",
    "application/*+json",
    "application/x-ndjson",
    "application/javascript",
    "application/ecmascript",
    "application/xml",
    "application/*+xml",
    "application/wasm",
    "application/graphql-response+json",
    "image/svg+xml",
    "font/ttf",
    "font/otf",
)


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    """A route's response compression. ``compression: {enabled: false}`` is none."""

    # In the server's order of preference; the client's q-values come first.
    algorithms: tuple[Literal["br", "zstd", "gzip"], ...] = ("br", "zstd", "gzip")
    # Bodies of a known length below this go uncompressed.
    min_size: int = 1 * KIB
    levels: CompressionLevels = field(default_factory=CompressionLevels)
    content_types: tuple[str, ...] = DEFAULT_COMPRESSIBLE


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    """A route's WebSocket relaying. ``websocket: {enabled: false}`` (the default) is none:
    an Upgrade request is then forwarded as a plain request, without its Upgrade field."""

    # Relays open at once on this route, all workers together (503 beyond).
    max_connections: int = 1000
    # Relays open at once per client IP on this route, all workers together (429 beyond); None:
    # no cap (behind an L4 balancer every client may share one address).
    max_per_client: int | None = None
    # A message (all its frames; inflated, when compressed) beyond this closes with 1009.
    max_message_size: int = 1 * MIB
    # Per direction: messages waiting for a peer that reads slowly, at most this many and this
    # many bytes; when full, the sending side is no longer read (or closed with 1013).
    queue_messages: int = 64
    queue_bytes: int = 1 * MIB
    # No frame from a side for half of it: it is pinged; for all of it: the relay closes.
    idle_timeout: float = 60.0
    on_overflow: Literal["backpressure", "close"] = "backpressure"
    # permessage-deflate (RFC 7692) on each hop, negotiated on its own, without context takeover.
    permessage_deflate: bool = False


@dataclass(frozen=True, slots=True)
class CacheSettings:
    # The memory store's budget per worker process: bodies, fields and bookkeeping.
    max_bytes: int = 256 * MIB


@dataclass(frozen=True, slots=True)
class RedisConfig:
    # redis://[user:password@]host:port/db, rediss:// for TLS, or unix:///path/to/socket.
    url: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    upstream: str
    match: RouteMatch = field(default_factory=RouteMatch)
    # Remove match.path_prefix from the path before forwarding.
    strip_prefix: bool = False
    # None: no rate limit. A route that does not set the key gets server.rate_limit.
    rate_limit: RateLimitConfig | None = None
    # None: no response cache.
    cache: CacheConfig | None = None
    # None: responses pass as the upstream encoded them.
    compression: CompressionConfig | None = None
    # None: no WebSocket relaying.
    websocket: WebSocketConfig | None = None
    # None: only the stale keep-alive retry.
    retries: RetryConfig | None = field(default_factory=RetryConfig)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    upstreams: tuple[UpstreamConfig, ...]
    routes: tuple[RouteConfig, ...]
    server: ServerConfig = field(default_factory=ServerConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Needed by every `rate_limit` with `backend: redis` and every `cache` with `store: redis`.
    redis: RedisConfig | None = None
    cache: CacheSettings = field(default_factory=CacheSettings)

    def upstream(self, name: str) -> UpstreamConfig:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise KeyError(name)


def with_listen_ports(server: ServerConfig, ports: Sequence[int]) -> ServerConfig:
    """``server`` with its listeners on ``ports`` (the supervisor's resolved ones), in order."""
    listeners = tuple(
        replace(listener, listen=replace(listener.listen, port=port))
        for listener, port in zip(server.listeners, ports, strict=True)
    )
    return replace(server, listeners=listeners)
