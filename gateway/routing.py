"""Route matching: the request's host, path, method and headers choose one configured route.

Precedence (DESIGN.md §3) is decided by the host first, then the path:

1. routes whose host matches the request beat routes without a host: an exact host first, then
   wildcards (``*.example.com``), the longer suffix first;
2. within one host condition, the longest ``path_prefix`` wins;
3. ties go to the route written first in the file.

Only then do ``methods`` and ``headers`` filter: candidates are walked in that order and the first
one whose methods and header conditions also hold is the match. A route that fails its method or
header condition therefore lets a less specific route answer instead of producing a 404.

Path prefixes are segment-aware (RFC 3986 §3.3: a path is a sequence of ``/``-separated segments):

- ``/`` matches every path (including the asterisk-form ``*`` of ``OPTIONS *``, RFC 9112 §3.2.4);
- a prefix not ending in ``/`` (``/users``) matches the path itself and anything below it
  (``/users``, ``/users/``, ``/users/7``) but not a longer segment (``/usersx``);
- a prefix ending in ``/`` (``/api/``) is a plain string prefix: it matches ``/api/`` and
  ``/api/x`` but not ``/api``. The operator wrote the slash on purpose, and ``/api`` may be a
  different resource; ``/api`` (without the slash) is the way to match both. This is also what
  nginx ``location /api/`` and Envoy ``prefix: /api/`` do.

Paths are compared exactly as received (still percent-encoded, case-sensitive, RFC 3986 §6.2.2.1);
nothing here decodes or normalises dot-segments.

Hosts are compared case-insensitively (RFC 9110 §4.2.3): route hosts are lower-cased and stripped
of one trailing dot (an absolute name, RFC 1034 §3.1) at compile time, IPv6 literals are put in
their canonical bracketed form, the same normalisation `gateway.headers.parse_host` applies to the
request's Host.

Everything per-request is a handful of dict lookups: the table is compiled once per config into
one group per exact host, one per wildcard suffix and one for host-less routes; within a group,
routes are bucketed by their exact prefix string so a path is looked up at each distinct
configured prefix length instead of being compared with every route.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from gateway.config.model import RouteConfig, RouteMatch
from gateway.messages import Headers

__all__ = ["Router", "normalize_route_host", "shadowed_routes", "strip_prefix"]


def normalize_route_host(host: str) -> str:
    """The configured host in the form request hosts are compared in.

    Lower-case, one trailing dot removed, IPv6 literals bracketed and canonical (RFC 5952), so
    ``API.Example.com.`` equals the request host ``api.example.com`` and ``[0::1]`` equals
    ``[::1]``. Wildcards keep their leading ``*.``.
    """
    host = host.strip().lower()
    if host.endswith(".") and len(host) > 1:
        host = host[:-1]
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in literal:
        try:
            return f"[{ipaddress.IPv6Address(literal).compressed}]"
        except ValueError:
            return host
    return host


# A route's host condition: (0, host) exact, (1, ".suffix") wildcard, None for any host.
_HostKey = tuple[int, str] | None
_EXACT = 0
_WILDCARD = 1


def _host_key(host: str | None) -> _HostKey:
    if host is None:
        return None
    host = normalize_route_host(host)
    if host.startswith("*."):
        # Keep the dot: "*.example.com" matches hosts ending in ".example.com" with at least one
        # character before it, i.e. one or more labels, never "example.com" itself.
        return (_WILDCARD, host[1:])
    return (_EXACT, host)


class _Route:
    """One route with its conditions in the shape the hot path wants."""

    __slots__ = ("config", "headers", "methods")

    def __init__(self, config: RouteConfig) -> None:
        match = config.match
        self.config = config
        # Methods are case-sensitive (RFC 9110 §9.1) and registered in upper case; the config
        # spelling is upper-cased once here, the request method is compared as sent.
        self.methods: frozenset[str] | None = (
            None if match.methods is None else frozenset(m.upper() for m in match.methods)
        )
        # Field names are case-insensitive (RFC 9110 §5.1): lower-case them once here and lower the
        # request's names per comparison. Values are compared byte for byte; a configured value
        # is encoded as UTF-8, what a client sending non-ASCII bytes most plausibly means.
        self.headers: tuple[tuple[bytes, bytes], ...] = tuple(
            (h.name.lower().encode("ascii"), h.value.encode("utf-8")) for h in match.headers
        )

    def accepts(self, method: str, headers: Headers) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        for name, value in self.headers:
            for field_name, field_value in headers:
                if field_value == value and field_name.lower() == name:
                    break
            else:
                return False
        return True


class _Group:
    """The routes sharing one host condition, ordered by prefix length then file order."""

    __slots__ = ("by_prefix", "lengths", "root")

    def __init__(self, routes: list[tuple[str, _Route]]) -> None:
        by_prefix: dict[str, list[_Route]] = {}
        root: list[_Route] = []
        for prefix, route in routes:  # file order, kept inside each bucket for ties
            if prefix == "/":
                root.append(route)
            else:
                by_prefix.setdefault(prefix, []).append(route)
        self.by_prefix = {prefix: tuple(bucket) for prefix, bucket in by_prefix.items()}
        # Distinct prefix lengths, longest first: a path has at most one candidate prefix per
        # length (its own first N characters), so this walk visits prefixes in precedence order
        # and its cost is bounded by the config, never by the length of an attacker's path.
        self.lengths = tuple(sorted({len(p) for p in by_prefix}, reverse=True))
        self.root = tuple(root)

    def find(self, path: str, method: str, headers: Headers) -> RouteConfig | None:
        size = len(path)
        for length in self.lengths:
            if length > size:
                continue
            bucket = self.by_prefix.get(path[:length])
            if bucket is None:
                continue
            # Segment boundary: a prefix ending in "/" is a plain prefix; any other must end the
            # path or be followed by "/" ("/users" vs "/usersx").
            if length != size and path[length - 1] != "/" and path[length] != "/":
                continue
            for route in bucket:
                if route.accepts(method, headers):
                    return route.config
        for route in self.root:
            if route.accepts(method, headers):
                return route.config
        return None

    def in_order(self) -> list[_Route]:
        # `find`'s walk for a path that every prefix matches; prefixes of one length exclude
        # each other, so among them the order is free and sorted.
        prefixes = sorted(self.by_prefix, key=lambda prefix: (-len(prefix), prefix))
        return [route for prefix in prefixes for route in self.by_prefix[prefix]] + [*self.root]


class Router:
    """The compiled route table of one config; `match` runs on every request."""

    __slots__ = ("_any", "_exact", "_wildcard_lengths", "_wildcards")

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        exact: dict[str, list[tuple[str, _Route]]] = {}
        wildcards: dict[str, list[tuple[str, _Route]]] = {}
        any_host: list[tuple[str, _Route]] = []
        for config in routes:
            entry = (config.match.path_prefix, _Route(config))
            key = _host_key(config.match.host)
            if key is None:
                any_host.append(entry)
            elif key[0] == _EXACT:
                exact.setdefault(key[1], []).append(entry)
            else:
                wildcards.setdefault(key[1], []).append(entry)
        self._exact = {host: _Group(entries) for host, entries in exact.items()}
        self._wildcards = {suffix: _Group(entries) for suffix, entries in wildcards.items()}
        # Longest suffix first: "*.api.example.com" is more specific than "*.example.com".
        self._wildcard_lengths = tuple(sorted({len(s) for s in wildcards}, reverse=True))
        self._any = _Group(any_host) if any_host else None

    def match(self, host: str, path: str, method: str, headers: Headers) -> RouteConfig | None:
        """The route for a request, or None (a 404).

        ``host`` is the request's host lower-cased without port ("" when absent), as
        `gateway.headers.parse_host` returns it; ``path`` is the path part of the target.
        """
        if host:
            group = self._exact.get(host)
            if group is not None:
                found = group.find(path, method, headers)
                if found is not None:
                    return found
            size = len(host)
            for length in self._wildcard_lengths:
                # Strictly shorter than the host: the "*" stands for at least one label.
                if length < size:
                    group = self._wildcards.get(host[size - length :])
                    if group is not None:
                        found = group.find(path, method, headers)
                        if found is not None:
                            return found
        if self._any is not None:
            return self._any.find(path, method, headers)
        return None

    def in_precedence_order(self) -> list[RouteConfig]:
        """Every route, in the order `match` considers them.

        `match` tries the first route of this list whose host, path, method and headers
        conditions hold. Routes that no request can offer `match` together (two exact hosts,
        two wildcard suffixes or two path prefixes of the same length) are in sorted order, so
        the list depends on the order in the file only where that order decides (ties).
        """
        groups = [self._exact[host] for host in sorted(self._exact)]
        suffixes = sorted(self._wildcards, key=lambda suffix: (-len(suffix), suffix))
        groups += [self._wildcards[suffix] for suffix in suffixes]
        if self._any is not None:
            groups.append(self._any)
        return [route.config for group in groups for route in group.in_order()]


def _match_covers(a: RouteMatch, b: RouteMatch) -> bool:
    """Whether A's method and header conditions hold for every request B's hold for."""
    if a.methods is not None:
        if b.methods is None:
            return False
        if not {m.upper() for m in b.methods} <= {m.upper() for m in a.methods}:
            return False
    a_headers = {(h.name.lower(), h.value) for h in a.headers}
    b_headers = {(h.name.lower(), h.value) for h in b.headers}
    return a_headers <= b_headers


def shadowed_routes(routes: Sequence[RouteConfig]) -> list[tuple[int, int]]:
    """Routes that can never be chosen, as ``(shadowed_index, shadowing_index)`` pairs.

    Route B is shadowed by A when A comes before B in precedence order for every request B
    matches and A matches all of them too. That reduces to: the same host condition, the same
    path prefix, A earlier in the file, A's methods a superset of B's (None is every method) and
    A's header conditions a subset of B's. Why nothing else qualifies:

    - a route with a different host condition never precedes B on all of B's hosts: an exact
      host only covers one host, a longer wildcard suffix does not cover all of a shorter one's
      hosts, and a shorter one (or no host) comes after B;
    - A matching all of B's paths means A's prefix is a string prefix of B's (a segment prefix,
      or any prefix for ``/``), so it is no longer than B's; A precedes B only if it is not
      shorter either, i.e. the same prefix.

    One pair is reported per shadowed route, naming the route that wins instead (the first in
    the file). Shadowing by several routes together (A for GET, C for POST, B for both) is not
    detected.
    """
    keys = [(_host_key(r.match.host), r.match.path_prefix) for r in routes]
    pairs: list[tuple[int, int]] = []
    for b, route_b in enumerate(routes):
        for a in range(b):
            if keys[a] == keys[b] and _match_covers(routes[a].match, route_b.match):
                pairs.append((b, a))
                break
    return pairs


def strip_prefix(target: bytes, prefix: str) -> bytes:
    """Remove a matched ``path_prefix`` from a raw origin-form target, keeping the rest as is.

    The remainder (rest of the path and any ``?query``) is kept byte for byte, never re-encoded;
    the result always starts with ``/`` because an origin-form target must (RFC 9112 §3.2.1):
    with prefix ``/users``, ``/users/7?a=1`` becomes ``/7?a=1``, ``/users`` becomes ``/`` and
    ``/users?x=1`` becomes ``/?x=1``; with ``/api/``, ``/api/x`` becomes ``/x``.

    A target the prefix does not match (segment-aware, as in routing) is returned unchanged.
    The prefix is encoded as UTF-8, which for the usual ASCII (percent-encoded) prefix is the
    bytes on the wire.
    """
    raw = prefix.encode("utf-8")
    if not target.startswith(raw):
        return target
    rest = target[len(raw) :]
    if not raw.endswith(b"/") and rest and rest[0] not in b"/?":
        return target  # "/usersx" is not below "/users"
    if rest.startswith(b"/"):
        return rest
    return b"/" + rest
