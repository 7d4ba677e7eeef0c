"""The cache stage of a route's chain: hits, misses that fill the store, revalidation.

For GET and HEAD, by the rules of `gateway.cache.policy`:

- **hit**: a stored response usable as it is answers at once, with ``Age`` and
  ``Cache-Status`` (RFC 9211); a client's If-None-Match / If-Modified-Since gets 304 from it.
- **stale** (RFC 5861 stale-while-revalidate): a stale response within its window answers at
  once, and one background request per key refreshes it.
- **revalidated**: a stored response that needs validation goes upstream with its validators
  (RFC 9111 §4.3.1); a 304 refreshes it (§4.3.4) and it answers; a new response replaces it.
  When that fails (an error, or a 5xx) within stale-if-error, the stale response answers.
- **miss**: the request goes upstream. Concurrent misses for one key coalesce: the first goes
  upstream and streams to its client while its body is kept (up to ``max_object_size``); the
  others wait for it (at most `COALESCE_WAIT`) and answer from the stored entry, or go
  upstream themselves when it was not storable.
- **bypass**: other methods go upstream; an unsafe one answered 2xx/3xx invalidates the
  stored responses of its target and of same-origin Location and Content-Location (§4.4).
  Range requests bypass the cache too (it does not combine or slice ranges), and so do GET
  requests with a body (the key does not hold it).

Truncated bodies, 206 and 5xx are never stored (HARDENING.md §C).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from gateway.cache.directives import CacheControl, cache_control
from gateway.cache.entry import CacheEntry
from gateway.cache.keys import authority_port, origin, primary_key
from gateway.cache.policy import (
    FRESH,
    STALE,
    STALE_WHILE_REVALIDATE,
    Freshness,
    Options,
    allows_credentials,
    invalidated_uris,
    secondary_key,
    storable,
    vary_names,
)
from gateway.cache.store import CacheStore
from gateway.cache.validators import (
    not_modified,
    not_modified_fields,
    refreshed_fields,
    revalidation_fields,
)
from gateway.chain import Handler
from gateway.compression.negotiate import accepts
from gateway.config.model import CacheConfig
from gateway.errors import BadGateway, GatewayError, GatewayTimeout, UpstreamBusy
from gateway.messages import CompleteBody, Headers, ProxyRequest, ProxyResponse

# How long a miss waits for a concurrent one of the same key before going upstream itself
# (nginx's proxy_cache_lock_timeout is 5 s too).
COALESCE_WAIT: Final = 5.0
# Background refreshes (stale-while-revalidate) running at once per stage; beyond that a
# stale hit is served without scheduling one (a later request will).
MAX_REFRESHES: Final = 64
# Fields of the request that make it conditional: answered by the cache from the stored
# response, never forwarded with the cache's own validators.
_CONDITIONALS: Final = frozenset(
    {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range"}
)
# Request fields some frameworks obey to serve another path or method than the request line
# says. The key holds the request line, so on a cached route they would let one client store
# another URL's (or a POST's) answer under this key: they never reach the upstream from here
# (HARDENING.md §C, "headers the key ignores are stripped or harmless").
_OVERRIDES: Final = frozenset(
    {
        b"x-original-url",
        b"x-rewrite-url",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
    }
)
# Fields of a response never stored: recomputed or added per answer.
_NOT_STORED: Final = frozenset({b"age", b"x-request-id", b"cache-status"})
_EMPTY_CONTROL: Final = CacheControl()
_UPSTREAM_FAILURES: Final = (BadGateway, GatewayTimeout, UpstreamBusy)


class RequestFacts:
    """What the cache needs from a request's fields, found in one pass."""

    __slots__ = (
        "accept_encoding",
        "cache_control",
        "conditional",
        "credentials",
        "overrides",
        "pragma_no_cache",
        "ranged",
    )

    def __init__(self, headers: Headers) -> None:
        cache_control: list[bytes] = []
        pragma: list[bytes] = []
        self.conditional = False
        self.credentials = False
        self.ranged = False
        self.overrides = False
        self.accept_encoding: list[bytes] = []
        for name, value in headers:
            lname = name.lower()
            if lname == b"accept-encoding":
                self.accept_encoding.append(value)
            elif lname in _OVERRIDES:
                self.overrides = True
            elif lname == b"cache-control":
                cache_control.append(value)
            elif lname == b"pragma":
                pragma.append(value)
            elif lname in _CONDITIONALS:
                self.conditional = True
            elif lname in {b"authorization", b"cookie"}:
                self.credentials = True
            elif lname == b"range":
                self.ranged = True
        self.cache_control = CacheControl.parse(cache_control) if cache_control else _EMPTY_CONTROL
        # RFC 9111 §5.4: Pragma: no-cache counts only without Cache-Control.
        self.pragma_no_cache = not cache_control and any(
            b"no-cache" in value.lower() for value in pragma
        )


class CacheStage:
    __slots__ = (
        "_codings",
        "_flights",
        "_max_object_size",
        "_name",
        "_options",
        "_refreshes",
        "_revalidate_for",
        "_route",
        "_sie",
        "_store",
        "_swr",
        "_tag_header",
        "_tasks",
    )

    def __init__(
        self,
        route: str,
        config: CacheConfig,
        store: CacheStore,
        name: bytes,
        codings: tuple[str, ...] | None = None,
    ) -> None:
        self._route = route
        # The route's compression algorithms: Accept-Encoding keys variants by the coding
        # it negotiates (`secondary_key`). None without compression.
        self._codings = codings
        self._store = store
        # The cache's name in Cache-Status (RFC 9211 §2): the gateway's Via name.
        self._name = name
        self._options = Options(
            store_set_cookie=config.store_set_cookie, default_ttl=config.default_ttl
        )
        self._max_object_size = config.max_object_size
        self._swr = config.stale_while_revalidate
        self._sie = config.stale_if_error
        self._revalidate_for = config.revalidate_for
        self._tag_header = config.tag_header.lower().encode("ascii")
        # Misses going upstream now, by key: their futures give the entry they stored.
        self._flights: dict[bytes, asyncio.Future[CacheEntry | None]] = {}
        self._refreshes: set[bytes] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, request: ProxyRequest, call_next: Handler) -> ProxyResponse:
        method = request.method
        if method not in {"GET", "HEAD"}:
            return await self._unsafe(request, call_next)
        if request.body is not None:
            # A GET with a body (search APIs do this) may be answered by its body, which the
            # key does not hold: it goes upstream, and its answer is not stored.
            request.cache = "bypass"
            return await call_next(request)
        facts = RequestFacts(request.headers)
        if facts.overrides:
            request.headers = [(k, v) for k, v in request.headers if k.lower() not in _OVERRIDES]
        if facts.ranged:
            request.cache = "bypass"
            return await call_next(request)
        key = primary_key(request)
        variants = await self._store.variants(key)
        entry = _select(variants, request.headers, facts, self._codings)
        now = time.time()
        control = facts.cache_control
        if entry is not None:
            use = entry.freshness.usable(control, facts.pragma_no_cache, now)
            if use in {FRESH, STALE}:
                return self._answer(
                    request, entry, now, "hit", b"hit", conditional=facts.conditional
                )
            if use == STALE_WHILE_REVALIDATE:
                self._refresh_later(request, key, entry, call_next)
                return self._answer(
                    request, entry, now, "stale", b"hit; fwd=stale", conditional=facts.conditional
                )
        if control.only_if_cached:
            # RFC 9111 §5.2.1.7: no stored response to use, so 504.
            request.cache = "miss"
            raise GatewayTimeout("only-if-cached, and no stored response may be used")
        if entry is not None:
            return await self._revalidate(request, key, entry, facts, call_next)
        fwd = b"fwd=uri-miss" if not variants else b"fwd=vary-miss"
        return await self._miss(request, key, facts, call_next, fwd)

    # --- answering from the store -------------------------------------------------------

    def _answer(
        self,
        request: ProxyRequest,
        entry: CacheEntry,
        now: float,
        result: str,
        status: bytes,
        *,
        conditional: bool = True,
    ) -> ProxyResponse:
        request.cache = result
        freshness = entry.freshness
        age = int(freshness.current_age(now))
        ttl = int(freshness.lifetime) - age
        cache_status = b"%s; %s; ttl=%d" % (self._name, status, ttl)
        added = [
            (b"Age", b"%d" % age),
            (b"Cache-Status", cache_status),
            (b"X-Request-ID", request.request_id.encode("ascii")),
        ]
        if (
            conditional
            and entry.status == 200
            and not_modified(
                request.headers,
                entry.header(b"etag"),
                entry.header(b"last-modified"),
                entry.header(b"date"),
            )
        ):
            return ProxyResponse(
                304, b"Not Modified", headers=not_modified_fields(entry.headers) + added
            )
        body = None if request.method == "HEAD" else CompleteBody(entry.body)
        return ProxyResponse(
            entry.status,
            entry.reason,
            headers=entry.headers + added,
            body=body,
            content_length=len(entry.body),
        )

    # --- going upstream -----------------------------------------------------------------

    async def _miss(
        self,
        request: ProxyRequest,
        key: bytes,
        facts: RequestFacts,
        call_next: Handler,
        fwd: bytes,
    ) -> ProxyResponse:
        if facts.conditional or request.method == "HEAD":
            # Forwarded as it is: the answer may be a 304 or have no body, nothing to store.
            request.cache = "miss"
            response = await call_next(request)
            _add_status(response, b"%s; %s" % (self._name, fwd))
            return response
        flight = self._flights.get(key)
        if flight is not None:
            try:
                stored = await asyncio.wait_for(asyncio.shield(flight), COALESCE_WAIT)
            except TimeoutError:
                stored = None
            if stored is not None and _matches(stored, request.headers, facts, self._codings):
                return self._answer(
                    request, stored, time.time(), "coalesced", b"hit; detail=coalesced"
                )
            request.cache = "miss"
            return await self._fetch(request, key, facts, call_next, fwd=fwd, flight=None)
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        request.cache = "miss"
        return await self._fetch(request, key, facts, call_next, fwd=fwd, flight=flight)

    async def _fetch(
        self,
        request: ProxyRequest,
        key: bytes,
        facts: RequestFacts,
        call_next: Handler,
        *,
        fwd: bytes,
        flight: asyncio.Future[CacheEntry | None] | None,
    ) -> ProxyResponse:
        """Forward ``request`` and store what comes back when it may be stored."""
        request_time = time.time()
        try:
            response = await call_next(request)
        except BaseException:
            self._land(key, flight, None)
            raise
        return self._keep(
            request, key, facts, response, request_time=request_time, fwd=fwd, flight=flight
        )

    def _keep(
        self,
        request: ProxyRequest,
        key: bytes,
        facts: RequestFacts,
        response: ProxyResponse,
        *,
        request_time: float,
        fwd: bytes,
        flight: asyncio.Future[CacheEntry | None] | None,
    ) -> ProxyResponse:
        response_time = time.time()
        headers = response.headers
        response_cc = cache_control(headers)
        why_not = storable(
            "GET",
            response.status,
            request_headers=request.headers,
            request_cc=facts.cache_control,
            response_headers=headers,
            response_cc=response_cc,
            options=self._options,
        )
        length = response.content_length
        if why_not is None and length is not None and length > self._max_object_size:
            why_not = "too-large"
        freshness = None
        if why_not is None:
            freshness = self._freshness(
                response.status, headers, response_cc, request_time, response_time
            )
            if self._ttl(freshness, headers) <= 0:
                why_not = "stale"
        if why_not is not None or freshness is None:
            why_not = why_not or "stale"
            self._land(key, flight, None)
            _add_status(response, b"%s; %s; detail=%s" % (self._name, fwd, why_not.encode()))
            return response
        vary = vary_names(headers)
        template = CacheEntry(
            key=key,
            status=response.status,
            reason=response.reason,
            headers=_stored_fields(
                headers, response_cc.private_fields + response_cc.no_cache_fields
            ),
            body=b"",
            freshness=freshness,
            vary=vary,
            secondary=secondary_key(request.headers, vary, self._codings) if vary else b"",
            tags=_tags(headers, self._tag_header),
            shared=allows_credentials(response_cc),
        )
        _add_status(response, b"%s; %s; stored" % (self._name, fwd))
        if response.body is None:
            self._complete(key, flight, template, b"")
            return response
        response.body = TeeBody(
            response.body,
            length,
            self._max_object_size,
            lambda body: self._kept(key, flight, template, body),
        )
        release = response.release

        async def released() -> None:
            # A client that went away before the end leaves nothing stored; waiters go
            # upstream themselves.
            self._land(key, flight, None)
            if release is not None:
                await release()

        response.release = released
        return response

    def _kept(
        self,
        key: bytes,
        flight: asyncio.Future[CacheEntry | None] | None,
        template: CacheEntry,
        body: bytes | None,
    ) -> None:
        """The end of a teed body: store it whole, or (None) let the waiters go."""
        if body is None:
            self._land(key, flight, None)
        else:
            self._complete(key, flight, template, body)

    def _complete(
        self,
        key: bytes,
        flight: asyncio.Future[CacheEntry | None] | None,
        template: CacheEntry,
        body: bytes,
    ) -> None:
        entry = template.but(body=body)
        self._land(key, flight, entry)
        self._spawn(self._put(entry))

    def _freshness(
        self,
        status: int,
        headers: Headers,
        control: CacheControl,
        request_time: float,
        response_time: float,
    ) -> Freshness:
        """A response's freshness under this route's options and stale windows."""
        return Freshness.of(
            status,
            headers,
            response_cc=control,
            request_time=request_time,
            response_time=response_time,
            options=self._options,
            default_swr=self._swr,
            default_sie=self._sie,
        )

    def _refreshed(
        self, entry: CacheEntry, update: Headers, request_time: float, response_time: float
    ) -> CacheEntry:
        """``entry`` with the fields of a 304 and a new freshness (RFC 9111 §3.2, §4.3.4)."""
        headers = refreshed_fields(
            entry.headers, [(k, v) for k, v in update if k.lower() not in _NOT_STORED]
        )
        control = cache_control(headers)
        freshness = self._freshness(entry.status, headers, control, request_time, response_time)
        return entry.but(headers=headers, freshness=freshness, shared=allows_credentials(control))

    async def _put(self, entry: CacheEntry) -> None:
        await self._store.put(entry, self._ttl(entry.freshness, entry.headers))

    def _ttl(self, freshness: Freshness, headers: Headers) -> float:
        """How long a store keeps an entry: while fresh, then its stale windows, and
        ``revalidate_for`` more when it has validators to revalidate with."""
        fresh_for = freshness.lifetime - freshness.initial_age
        stale_for = max(freshness.stale_while_revalidate, freshness.stale_if_error)
        has_validators = any(k.lower() in (b"etag", b"last-modified") for k, _ in headers)
        return max(0.0, fresh_for) + stale_for + (self._revalidate_for if has_validators else 0.0)

    def _land(
        self, key: bytes, flight: asyncio.Future[CacheEntry | None] | None, entry: CacheEntry | None
    ) -> None:
        """End a flight (once): its waiters get ``entry``, or None to go upstream themselves."""
        if flight is None or flight.done():
            return
        flight.set_result(entry)
        if self._flights.get(key) is flight:
            del self._flights[key]

    async def _revalidate(
        self,
        request: ProxyRequest,
        key: bytes,
        entry: CacheEntry,
        facts: RequestFacts,
        call_next: Handler,
    ) -> ProxyResponse:
        """RFC 9111 §4.3: ask the upstream whether ``entry`` is still current."""
        etag, modified = entry.header(b"etag"), entry.header(b"last-modified")
        validators = revalidation_fields(etag, modified)
        forwarded = _with_fields(request, validators)
        request_time = time.time()
        try:
            response = await call_next(forwarded)
        except _UPSTREAM_FAILURES:
            if entry.freshness.may_serve_on_error(facts.cache_control, time.time()):
                return self._answer(
                    request, entry, time.time(), "stale", b"hit; fwd=stale; detail=stale-if-error"
                )
            raise
        now = time.time()
        if response.status == 304 and validators:
            await _discard(response)
            refreshed = self._refreshed(entry, response.headers, request_time, now)
            self._spawn(self._put(refreshed))
            return self._answer(
                request, refreshed, now, "revalidated", b"hit; fwd=stale; fwd-status=304"
            )
        if response.status >= 500 and entry.freshness.may_serve_on_error(facts.cache_control, now):
            await _discard(response)
            return self._answer(
                request,
                entry,
                now,
                "stale",
                b"hit; fwd=stale; fwd-status=%d; detail=stale-if-error" % response.status,
            )
        request.cache = "miss"
        if response.status == 304:
            # Our validators were not sent (the entry has none): nothing to refresh.
            return response
        return self._keep(
            request, key, facts, response, request_time=request_time, fwd=b"fwd=stale", flight=None
        )

    def _refresh_later(
        self, request: ProxyRequest, key: bytes, entry: CacheEntry, call_next: Handler
    ) -> None:
        """RFC 5861 §3: one background revalidation per key while stale responses answer."""
        if key in self._refreshes or len(self._refreshes) >= MAX_REFRESHES:
            return
        self._refreshes.add(key)
        facts = RequestFacts([])
        validators = revalidation_fields(entry.header(b"etag"), entry.header(b"last-modified"))
        forwarded = _with_fields(request, validators)

        async def refresh() -> None:
            try:
                request_time = time.time()
                response = await call_next(forwarded)
                if response.status == 304 and validators:
                    await _discard(response)
                    await self._put(
                        self._refreshed(entry, response.headers, request_time, time.time())
                    )
                    return
                kept = self._keep(
                    forwarded,
                    key,
                    facts,
                    response,
                    request_time=request_time,
                    fwd=b"fwd=stale",
                    flight=None,
                )
                await _discard(kept)
            except GatewayError:
                pass  # the stale entry stays; a later request tries again
            finally:
                self._refreshes.discard(key)

        self._spawn(refresh())

    # --- invalidation -------------------------------------------------------------------

    async def _unsafe(self, request: ProxyRequest, call_next: Handler) -> ProxyResponse:
        request.cache = "bypass"
        response = await call_next(request)
        if 200 <= response.status < 400 and request.method not in ("OPTIONS", "TRACE"):
            base = origin(
                request.scheme, request.host, authority_port(request.authority, request.scheme)
            )
            targets = [
                request.target,
                *invalidated_uris(
                    request.method, response.status, response.headers, request.authority
                ),
            ]
            for target in targets:
                self._spawn(self._delete(b"GET " + base + target))
        return response

    async def _delete(self, key: bytes) -> None:
        await self._store.delete(key)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()


def _select(
    variants: list[CacheEntry],
    headers: Headers,
    facts: RequestFacts,
    codings: tuple[str, ...] | None,
) -> CacheEntry | None:
    """The newest stored response whose Vary fields match the request (RFC 9111 §4.1)."""
    for entry in variants:
        if _matches(entry, headers, facts, codings):
            return entry
    return None


def _matches(
    entry: CacheEntry, headers: Headers, facts: RequestFacts, codings: tuple[str, ...] | None
) -> bool:
    # RFC 9111 §3.5: not for a request with Authorization unless the response allowed it; the
    # same for Cookie (HARDENING.md §C), unless the response varies on it.
    if (
        facts.credentials
        and not entry.shared
        and (b"cookie" not in entry.vary or any(k.lower() == b"authorization" for k, _ in headers))
    ):
        return False
    # An encoded body only for a client that said it accepts that coding (whatever the
    # upstream's Vary said).
    if entry.coding is not None and not accepts(facts.accept_encoding, entry.coding):
        return False
    if not entry.vary:
        return True
    return secondary_key(headers, entry.vary, codings) == entry.secondary


def _stored_fields(headers: Headers, dropped: tuple[bytes, ...]) -> Headers:
    drop = _NOT_STORED.union(dropped)
    return [(name, value) for name, value in headers if name.lower() not in drop]


def _tags(headers: Headers, name: bytes) -> tuple[bytes, ...]:
    tags: list[bytes] = []
    for field_name, value in headers:
        if field_name.lower() == name:
            for tag in value.replace(b",", b" ").split():
                if tag not in tags and len(tag) <= 255:
                    tags.append(tag)
    return tuple(tags[:64])


def _with_fields(request: ProxyRequest, validators: Headers) -> ProxyRequest:
    """A copy of ``request`` for going upstream: the client's conditionals replaced by the
    cache's validators (the cache answers the client's itself)."""
    headers = [(k, v) for k, v in request.headers if k.lower() not in _CONDITIONALS]
    return ProxyRequest(
        method="GET",
        target=request.target,
        path=request.path,
        host=request.host,
        authority=request.authority,
        headers=headers + validators,
        version=request.version,
        body=None,
        content_length=None,
        scheme=request.scheme,
        client_ip=request.client_ip,
        peer_ip=request.peer_ip,
        peer_trusted=request.peer_trusted,
        request_id=request.request_id,
        trace_id=request.trace_id,
    )


def _add_status(response: ProxyResponse, value: bytes) -> None:
    response.headers.append((b"Cache-Status", value))


async def _discard(response: ProxyResponse) -> None:
    """Read and drop a response's body so that its upstream connection can be reused."""
    # Released on both ways out, not from a `finally` (one that awaits is miscompiled by mypyc:
    # see Dispatcher._relay).
    try:
        if response.body is not None:
            async for _ in response.body:
                pass
    except BaseException:
        if response.release is not None:
            await response.release()
        raise
    if response.release is not None:
        await response.release()


class TeeBody:
    """A body on its way to the client, kept (up to ``limit`` bytes) to be stored once whole:
    ``on_end`` gets the whole body, or None when it was too large, cut short or failed."""

    __slots__ = ("_body", "_ended", "_kept", "_length", "_limit", "_on_end", "_size")

    def __init__(
        self,
        body: AsyncIterator[bytes],
        length: int | None,
        limit: int,
        on_end: Callable[[bytes | None], None],
    ) -> None:
        self._body = body
        self._length = length
        self._limit = limit
        self._on_end = on_end
        self._kept: list[bytes] | None = []
        self._size = 0
        self._ended = False

    def __aiter__(self) -> TeeBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._body.__anext__()
        except StopAsyncIteration:
            kept = self._kept
            whole = kept is not None and (self._length is None or self._size == self._length)
            self._end(b"".join(kept) if kept is not None and whole else None)
            raise
        except BaseException:
            self._end(None)
            raise
        kept = self._kept
        if kept is not None:
            self._size += len(chunk)
            if self._size > self._limit:
                self._kept = None
                self._end(None)
            else:
                kept.append(chunk)
        return chunk

    def _end(self, body: bytes | None) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(body)
