"""RFC 9111 for a shared cache, as pure functions over header fields and times.

- `storable`: may this response be stored (§3, §3.5, §5.2.2), and if not, why;
- `freshness_lifetime` (§4.2.1, §4.2.2) and `initial_age` (§4.2.3): computed once, when an
  entry is stored, so that a hit is arithmetic (`Freshness.current_age`);
- `usable`: what a stored response may do for a request (§4.2, §4.2.4, §5.2.1, RFC 5861):
  serve it fresh, serve it stale (within max-stale or stale-while-revalidate), or revalidate;
- `vary_names` and `secondary_key`: the selecting header fields and the request's normalised
  values of them (§4.1);
- `invalidated_uris`: what an unsafe request's success invalidates (§4.4).

Everything a shared cache must not do errs towards not storing or revalidating: a wrong hit
hands one client another's response (HARDENING.md §C).
"""

from __future__ import annotations

from typing import Final

from gateway.cache.dates import parse_http_date
from gateway.cache.directives import CacheControl
from gateway.compression.negotiate import choose
from gateway.messages import Headers

# RFC 9110 §15.1: statuses cacheable by default (heuristically). 206 is left out (this cache
# does not combine ranges) and so is 501: no 5xx is stored (a transient failure must not
# outlive itself).
HEURISTIC_STATUSES: Final = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414})
# Statuses this cache understands the caching rules of (RFC 9111 §5.2.2.3 must-understand):
# the heuristically cacheable ones and the redirects whose rules are the defaults.
UNDERSTOOD_STATUSES: Final = HEURISTIC_STATUSES | {302, 303, 307}
# §4.2.2: a heuristic lifetime is a fraction of the time since Last-Modified, capped: a day
# is long enough to save the upstream work and short enough that a forgotten header does
# not pin a response for a week.
HEURISTIC_FRACTION: Final = 0.1
HEURISTIC_CAP: Final = 86400.0
# §4.4: methods whose success leaves stored responses for the target intact.
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Fields whose values are case-insensitive lists, normalised in secondary keys (§4.1 allows
# normalising; other fields are compared as sent, since lower-casing a case-sensitive value
# would let two different requests share a variant).
_CASELESS_LISTS: Final = frozenset(
    {b"accept", b"accept-encoding", b"accept-language", b"accept-charset"}
)


class Options:
    """What a route's cache config changes in the rules."""

    __slots__ = ("default_ttl", "store_set_cookie")

    def __init__(self, *, store_set_cookie: bool = False, default_ttl: float | None = None):
        # Responses with Set-Cookie are personal more often than not; storing them is opt-in.
        self.store_set_cookie = store_set_cookie
        # A lifetime for responses with no explicit freshness (instead of the heuristic).
        self.default_ttl = default_ttl


def field_values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for k, v in headers if k.lower() == name]


def has_field(headers: Headers, name: bytes) -> bool:
    return any(k.lower() == name for k, _ in headers)


def storable(
    method: str,
    status: int,
    *,
    request_headers: Headers,
    request_cc: CacheControl,
    response_headers: Headers,
    response_cc: CacheControl,
    options: Options,
) -> str | None:
    """None when a shared cache may store the response; otherwise why not (for Cache-Status
    ``detail`` and the tests)."""
    if method != "GET":
        # HEAD is answered from stored GET responses; other methods are not cached here.
        return "method"
    if status < 200 or status in {206, 304} or status >= 500:
        return "status"
    if response_cc.must_understand and status not in UNDERSTOOD_STATUSES:
        return "must-understand"
    # §5.2.2.3: a cache that understands the status may ignore no-store next to
    # must-understand.
    if response_cc.no_store and not response_cc.must_understand:
        return "no-store"
    if request_cc.no_store:
        return "no-store"
    if response_cc.private:
        return "private"
    # §3.5: a request with Authorization only when the response says shared caches may.
    shared = allows_credentials(response_cc)
    if not shared and has_field(request_headers, b"authorization"):
        return "authorization"
    # The same for Cookie (HARDENING.md §C), unless the response varies on it: a response
    # personalised by a cookie without saying so must not reach another client.
    if (
        not shared
        and has_field(request_headers, b"cookie")
        and b"cookie" not in vary_names(response_headers)
    ):
        return "cookie"
    if not options.store_set_cookie and has_field(response_headers, b"set-cookie"):
        return "set-cookie"
    if b"*" in vary_names(response_headers):
        return "vary-star"
    explicit = (
        response_cc.public
        or response_cc.max_age is not None
        or response_cc.s_maxage is not None
        or has_field(response_headers, b"expires")
    )
    if not explicit and status not in HEURISTIC_STATUSES:
        return "not-cacheable"
    return None


def allows_credentials(response_cc: CacheControl) -> bool:
    """Whether a stored response may answer requests with credentials (RFC 9111 §3.5)."""
    return response_cc.public or response_cc.must_revalidate or response_cc.s_maxage is not None


def has_explicit_freshness(response_cc: CacheControl, response_headers: Headers) -> bool:
    return (
        response_cc.freshness_invalid
        or response_cc.s_maxage is not None
        or response_cc.max_age is not None
        or has_field(response_headers, b"expires")
    )


def freshness_lifetime(
    status: int,
    response_headers: Headers,
    response_cc: CacheControl,
    response_time: float,
    options: Options,
) -> float:
    """Seconds the response is fresh for, from its generation (§4.2.1)."""
    if response_cc.freshness_invalid:
        return 0.0
    if response_cc.s_maxage is not None:
        return float(response_cc.s_maxage)
    if response_cc.max_age is not None:
        return float(response_cc.max_age)
    date = date_value(response_headers, response_time)
    expires = field_values(response_headers, b"expires")
    if expires:
        # §5.3: more than one Expires, or an invalid one ("0"), means already expired.
        moment = parse_http_date(expires[0]) if len(expires) == 1 else None
        return 0.0 if moment is None else max(0.0, moment - date)
    if options.default_ttl is not None:
        return options.default_ttl
    if status in HEURISTIC_STATUSES:
        modified = field_values(response_headers, b"last-modified")
        if len(modified) == 1:
            moment = parse_http_date(modified[0])
            if moment is not None and moment < date:
                return min(HEURISTIC_CAP, (date - moment) * HEURISTIC_FRACTION)
    return 0.0


def date_value(response_headers: Headers, response_time: float) -> float:
    """The response's Date, or the time it was received when it has none (RFC 9110 §6.6.1:
    a recipient with a clock assigns one)."""
    dates = field_values(response_headers, b"date")
    if len(dates) == 1:
        moment = parse_http_date(dates[0])
        if moment is not None:
            return moment
    return response_time


def initial_age(response_headers: Headers, request_time: float, response_time: float) -> float:
    """The corrected initial age of §4.2.3: how old the response already was on arrival."""
    apparent_age = max(0.0, response_time - date_value(response_headers, response_time))
    ages = field_values(response_headers, b"age")
    age_value = 0.0
    if ages:
        text = ages[0].strip()
        # An Age that is not delta-seconds is ignored; a huge one is capped (§5.1).
        if text.isdigit():
            age_value = float(min(int(text), 2**31))
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, age_value + response_delay)


# What a stored response may do for a request.
FRESH: Final = "fresh"
STALE: Final = "stale"  # may be served stale (max-stale)
STALE_WHILE_REVALIDATE: Final = "swr"  # serve stale now, refresh in the background
REVALIDATE: Final = "revalidate"


class Freshness:
    """The timing facts of a stored response, fixed when it is stored or refreshed."""

    __slots__ = (
        "initial_age",
        "lifetime",
        "no_cache",
        "no_stale",
        "response_time",
        "stale_if_error",
        "stale_while_revalidate",
    )

    def __init__(
        self,
        *,
        lifetime: float,
        initial_age: float,
        response_time: float,
        no_cache: bool = False,
        no_stale: bool = False,
        stale_while_revalidate: float = 0.0,
        stale_if_error: float = 0.0,
    ) -> None:
        self.lifetime = lifetime
        self.initial_age = initial_age
        self.response_time = response_time
        # Response no-cache: every use needs a successful revalidation (§5.2.2.4).
        self.no_cache = no_cache
        # must-revalidate, proxy-revalidate or s-maxage: never served stale (§4.2.4,
        # §5.2.2.2, §5.2.2.8, §5.2.2.10).
        self.no_stale = no_stale
        self.stale_while_revalidate = stale_while_revalidate
        self.stale_if_error = stale_if_error

    @classmethod
    def of(
        cls,
        status: int,
        response_headers: Headers,
        *,
        response_cc: CacheControl,
        request_time: float,
        response_time: float,
        options: Options,
        default_swr: float = 0.0,
        default_sie: float = 0.0,
    ) -> Freshness:
        """The freshness of a response received at ``response_time``; the route's stale
        windows apply where the response gives none."""
        swr = response_cc.stale_while_revalidate
        sie = response_cc.stale_if_error
        return cls(
            lifetime=freshness_lifetime(
                status, response_headers, response_cc, response_time, options
            ),
            initial_age=initial_age(response_headers, request_time, response_time),
            response_time=response_time,
            no_cache=response_cc.no_cache,
            no_stale=(
                response_cc.must_revalidate
                or response_cc.proxy_revalidate
                or response_cc.s_maxage is not None
            ),
            stale_while_revalidate=float(default_swr if swr is None else swr),
            stale_if_error=float(default_sie if sie is None else sie),
        )

    def current_age(self, now: float) -> float:
        """§4.2.3: the corrected initial age plus the time the response has been stored."""
        return self.initial_age + max(0.0, now - self.response_time)

    def usable(self, request_cc: CacheControl, pragma_no_cache: bool, now: float) -> str:
        """What this stored response may do for a request with ``request_cc`` (§4.2.4)."""
        if self.no_cache or request_cc.no_cache or pragma_no_cache:
            return REVALIDATE
        age = self.current_age(now)
        left = self.lifetime - age
        if request_cc.max_age is not None and age > request_cc.max_age:
            # §5.2.1.1: the client does not want a response older than that, fresh or not.
            return REVALIDATE
        if left > 0:
            if request_cc.min_fresh is not None and left < request_cc.min_fresh:
                return REVALIDATE
            return FRESH
        if self.no_stale:
            return REVALIDATE
        staleness = -left
        if request_cc.max_stale is not None and staleness <= request_cc.max_stale:
            return STALE
        if staleness < self.stale_while_revalidate:
            return STALE_WHILE_REVALIDATE
        return REVALIDATE

    def may_serve_on_error(self, request_cc: CacheControl, now: float) -> bool:
        """RFC 5861 §4: a stale response may answer when revalidation fails (an error or a
        5xx), within stale-if-error (the request's or the response's)."""
        if self.no_stale or self.no_cache:
            return False
        staleness = self.current_age(now) - self.lifetime
        window = self.stale_if_error
        if request_cc.stale_if_error is not None:
            window = float(request_cc.stale_if_error)
        return staleness <= window


def vary_names(response_headers: Headers) -> tuple[bytes, ...]:
    """The lower-case field names the response varies on (§4.1), in order, without repeats;
    ``*`` among them means no request matches."""
    names: list[bytes] = []
    for value in field_values(response_headers, b"vary"):
        for element in value.split(b","):
            name = element.strip().lower()
            if name and name not in names:
                names.append(name)
    return tuple(names)


def normalised_value(request_headers: Headers, name: bytes) -> bytes | None:
    """The request's value of ``name`` for a secondary key: None when absent; the lines
    combined; list elements trimmed (and lower-cased for the case-insensitive Accept-*)."""
    values = field_values(request_headers, name)
    if not values:
        return None
    combined = b",".join(values)
    if name in _CASELESS_LISTS:
        elements = [element.strip().lower() for element in combined.split(b",")]
        return b",".join(element for element in elements if element)
    return combined.strip()


def secondary_key(
    request_headers: Headers, names: tuple[bytes, ...], codings: tuple[str, ...] | None = None
) -> bytes:
    """The request's values of the selecting fields, one unambiguous byte string: a field
    absent and a field present but empty differ.

    With ``codings`` (the route compresses with these), Accept-Encoding counts by the coding
    it negotiates, not as sent: browsers spell the same preference a dozen ways, and one
    variant per spelling would fill the key's variants with copies (issue 7)."""
    parts = []
    for name in names:
        if name == b"accept-encoding" and codings is not None:
            values = field_values(request_headers, name)
            parts.append(b"=" + choose(values, codings).encode("ascii"))
            continue
        value = normalised_value(request_headers, name)
        parts.append(
            b"-" if value is None else b"+" + value.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")
        )
    return b"\n".join(parts)


def invalidated_uris(
    method: str, status: int, response_headers: Headers, own_authority: bytes
) -> list[bytes]:
    """§4.4: after an unsafe request answered 2xx or 3xx, the target URI and the same-origin
    URIs in Location and Content-Location lose their stored responses. Returned as origin-form
    targets (path and query) of this authority, or absolute ones reduced to it; the target URI
    itself is the caller's."""
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    targets: list[bytes] = []
    for name in (b"location", b"content-location"):
        for value in field_values(response_headers, name):
            target = _same_origin_target(value.strip(), own_authority)
            if target is not None and target not in targets:
                targets.append(target)
    return targets


def _same_origin_target(reference: bytes, authority: bytes) -> bytes | None:
    if reference.startswith(b"/") and not reference.startswith(b"//"):
        return reference
    for scheme in (b"http://", b"https://"):
        if reference.lower().startswith(scheme):
            rest = reference[len(scheme) :]
            slash = rest.find(b"/")
            host, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
            # §4.4: only when the host is the same (a cache MUST NOT invalidate other origins
            # on a response's word, or one origin could purge another's entries).
            if host.lower() == authority.lower():
                return path
    return None
