"""Views of a validated config: the route table, a reload diff, the /config view and a hash.

Pure functions over `gateway.config.model` objects: no I/O, no environment, no clock.

- `route_table`: the routes in precedence order (the order `gateway.routing.Router` tries
  them) as a fixed-width table, then one line per upstream, for people (CLI, logs);
- `diff_configs`: what a reload from one config to another changes, one line per change;
- `redacted_view`: a JSON-able view of the whole config for the admin ``/config`` endpoint,
  with secrets replaced by ``"<redacted>"``;
- `config_hash`: a sha256 of a canonical JSON form, to tell which config is running.

Everything walks the dataclasses generically, so a field added to the model (a route's
``rate_limit``, a ``redis`` section) shows up in the diff, the view and the hash without new
code here. Which numbers are durations or sizes comes from the loader's tables
(`gateway.config.loader.unit_fields`), so they print as ``30s`` and ``10MiB``.

Secrets: a field, or a header name in a route's ``match.headers``, whose name contains
``token``, ``password``, ``secret`` (and a few other credential words, see `_SECRET_NAME`) is
never shown, nor is the userinfo part of a URL (``redis://:pw@host`` shows as
``redis://<redacted>@host``). They are still compared and hashed: a new token is listed as
``~ admin.token <redacted> -> <redacted>`` and changes the hash.

The canonical form behind `config_hash` and the comparisons of `diff_configs` keeps what
changes the gateway's behaviour and drops what does not: upstreams (and header conditions) are
mappings in YAML, so their order is dropped; routes are taken in precedence order, so moving a
route in the file matters only among routes with the same host and path prefix, where the file
order decides; lists (targets, trusted proxies, listeners) keep their order. So
``diff_configs(new, old) == []`` exactly when ``config_hash(new) == config_hash(old)``.

Listeners (and a TLS listener's SNI certificates) are compared item by item:
``~ server.listeners[0].tls.cert a.crt -> b.crt``. A listener's address, or a listener added or
removed, needs a restart; while the addresses stay the same, everything else about the
listeners applies on a reload, and once they differ nothing does (the supervisor keeps the old
listeners whole), so then every listener change is marked ``(needs restart)``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import json
import re
import typing
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any, Final, TypeAlias, cast

from gateway.config.loader import unit_fields
from gateway.config.model import (
    GatewayConfig,
    HeaderMatch,
    HealthCheckConfig,
    ListenAddress,
    Rate,
    RouteConfig,
    StatusRanges,
    Target,
    TlsConfig,
    UpstreamConfig,
)
from gateway.routing import Router

__all__ = [
    "REDACTED",
    "config_hash",
    "diff_configs",
    "format_duration",
    "format_size",
    "redacted_view",
    "route_table",
]

REDACTED: Final = "<redacted>"

Json: TypeAlias = bool | int | float | str | list["Json"] | dict[str, "Json"] | None

# Field names (and header names) whose values are never shown.
_SECRET_NAME = re.compile(
    r"token|passw(?:or)?d|secret|credential|authorization|cookie|api[-_]?key|private[-_]?key",
    re.IGNORECASE,
)
# scheme://userinfo@ -- the authority ends at the first "/", "?" or "#".
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
# Dataclasses shown as one value rather than walked field by field.
_SCALARS = (ListenAddress, Target, HeaderMatch, Rate)
# What a reload cannot apply: the worker count, the supervisor's admin listener (address, token
# guard, metrics switch) and the log level (logging is configured once per process). Everything
# else, server limits and timeouts included, applies to new connections.
_NEEDS_RESTART: Final = ("server.workers", "admin.", "logging.level")
# The listening sockets are bound once: a listener's address, and a listener added or removed.
_LISTENER_ADDRESS: Final = re.compile(r"server\.listeners(?:\[[0-9]+\](?:\.listen)?)?")


def needs_restart(path: str) -> bool:
    """Whether a change of the setting at ``path`` (``server.workers``...) needs a restart.

    A listener's other settings (certificates, http2) apply on a reload, but only while the
    listener addresses stay the same: `restart_only_changes` knows that relation.
    """
    return _LISTENER_ADDRESS.fullmatch(path) is not None or any(
        path == key or (key.endswith(".") and path.startswith(key)) for key in _NEEDS_RESTART
    )


def restart_only_changes(new: GatewayConfig, old: GatewayConfig) -> list[str]:
    """The paths of the settings that differ and that only a restart applies."""
    return [path for path, _, _, restart in _top_level_changes(new, old) if restart]


def _top_level_changes(new: GatewayConfig, old: GatewayConfig) -> list[tuple[str, str, str, bool]]:
    """``(path, old, new, needs restart)`` for each changed setting outside upstreams and routes."""
    # The supervisor keeps the old listeners whole when their addresses differ
    # (`gateway.supervisor.keep_restart_only`): then none of their changes applies either.
    rebound = [listener.listen for listener in new.server.listeners] != [
        listener.listen for listener in old.server.listeners
    ]
    found: list[tuple[str, str, str, bool]] = []
    for field in dataclasses.fields(new):
        if field.name in ("upstreams", "routes"):
            continue
        for path, before, after in _changes(
            getattr(old, field.name, None), getattr(new, field.name), type(new), field.name
        ):
            restart = needs_restart(path) or (rebound and path.startswith("server.listeners"))
            found.append((path, before, after, restart))
    return found


_UNITS: Final = unit_fields()
_DURATION_UNITS: Final = (
    ("h", Fraction(3600)),
    ("m", Fraction(60)),
    ("s", Fraction(1)),
    ("ms", Fraction(1, 1000)),
)
_SIZE_UNITS: Final = (
    ("GiB", 1024**3),
    ("MiB", 1024**2),
    ("KiB", 1024),
    ("GB", 1000**3),
    ("MB", 1000**2),
    ("KB", 1000),
)


# --- Public API -------------------------------------------------------------------------------


def route_table(config: GatewayConfig) -> list[str]:
    """The routes in precedence order as a fixed-width table, then a table of the upstreams.

    Route ``#`` is the precedence: for a request, the router answers with the first route in
    this order whose conditions hold. A ``*`` host or methods matches every host or method.
    """
    rows = [["#", "route", "host", "path prefix", "methods", "headers", "upstream", "strip_prefix"]]
    for position, route in enumerate(_precedence(config), 1):
        match = route.match
        rows.append(
            [
                str(position),
                route.name,
                "*" if match.host is None else match.host,
                match.path_prefix,
                "*" if match.methods is None else ",".join(sorted(match.methods)),
                ", ".join(_render(h, None, "") for h in match.headers) or "-",
                route.upstream,
                _render(route.strip_prefix, RouteConfig, "strip_prefix"),
            ]
        )
    upstreams = [["upstream", "targets", "balance", "pool", "timeouts"]]
    for upstream in config.upstreams:
        upstreams.append(
            [
                upstream.name,
                ", ".join(str(target) for target in upstream.targets),
                _render(upstream.balance, UpstreamConfig, "balance"),
                _key_values(upstream.pool),
                _key_values(upstream.timeouts),
            ]
        )
    return [*_columns(rows), "", *_columns(upstreams)]


def diff_configs(new: GatewayConfig, old: GatewayConfig) -> list[str]:
    """What a reload from ``old`` to ``new`` changes, one line per change; [] for nothing.

    ``+`` added, ``-`` removed, ``~`` changed. Changes a reload cannot apply end in
    ``(needs restart)``. Secrets show as ``<redacted>`` (a changed token is still listed).
    """
    lines = [
        f"~ {path} {before} -> {after}{' (needs restart)' if restart else ''}"
        for path, before, after, restart in _top_level_changes(new, old)
    ]
    lines += _diff_upstreams(new, old)
    lines += _diff_routes(new, old)
    return lines


def redacted_view(config: GatewayConfig) -> dict[str, object]:
    """The whole config as JSON-able data for the admin ``/config`` endpoint.

    Shaped like the YAML (upstreams keyed by name, routes in file order, header conditions
    as a mapping), with durations in seconds, sizes in bytes, addresses, URLs and networks as
    strings and secrets as ``"<redacted>"``; plus ``route_table``: the routes in precedence
    order, each with its ``precedence``.
    """
    view: dict[str, object] = dict(_config_tree(config, redact=True, canonical=False))
    rows: list[dict[str, Json]] = []
    for position, route in enumerate(_precedence(config), 1):
        match = _tree(route.match, RouteConfig, "match", redact=True, canonical=False)
        assert isinstance(match, dict)
        rows.append(
            {
                "precedence": position,
                "route": route.name,
                **match,
                "upstream": route.upstream,
                "strip_prefix": route.strip_prefix,
            }
        )
    view["route_table"] = rows
    return view


def config_hash(config: GatewayConfig) -> str:
    """sha256 (hex) of the canonical JSON form of the unredacted config.

    Equal configs hash equal whatever the YAML formatting, key order or unit spelling
    (``1m`` or ``60s``); see the module docstring for what else the canonical form ignores.
    """
    return hashlib.sha256(_json(_config_tree(config, redact=False, canonical=True))).hexdigest()


# --- The tree: JSON-able data, redacted or canonical -----------------------------------------


def _precedence(config: GatewayConfig) -> list[RouteConfig]:
    return Router(config.routes).in_precedence_order()


def _config_tree(config: GatewayConfig, *, redact: bool, canonical: bool) -> dict[str, Json]:
    tree: dict[str, Json] = {}
    for field in dataclasses.fields(config):
        if field.name not in ("upstreams", "routes"):
            value = getattr(config, field.name)
            tree[field.name] = _tree(
                value, type(config), field.name, redact=redact, canonical=canonical
            )
    tree["upstreams"] = {
        upstream.name: _fields_tree(upstream, redact=redact, canonical=canonical, skip="name")
        for upstream in config.upstreams
    }
    routes = _precedence(config) if canonical else config.routes
    tree["routes"] = [_fields_tree(route, redact=redact, canonical=canonical) for route in routes]
    return tree


def _fields_tree(value: Any, *, redact: bool, canonical: bool, skip: str = "") -> dict[str, Json]:
    cls = type(value)
    return {
        name: _tree(item, cls, name, redact=redact, canonical=canonical)
        for name, item in _yaml_fields(value)
        if name != skip
    }


def _yaml_fields(value: Any) -> list[tuple[str, Any]]:
    """A section's ``(key, value)`` pairs as the YAML writes them.

    Only `TlsConfig` differs from its fields: the YAML writes its default certificate as `cert`
    and `key` in the tls mapping itself (the loader never gives that certificate names).
    """
    pairs = [(field.name, getattr(value, field.name)) for field in dataclasses.fields(value)]
    if isinstance(value, TlsConfig):
        default = value.default
        return [("cert", default.cert), ("key", default.key), *pairs[1:]]
    return pairs


def _tree(
    value: object, owner: type[Any] | None, name: str, *, redact: bool, canonical: bool
) -> Json:
    """``value``, held by the field ``owner.name``, as JSON-able data."""
    if redact and value is not None and _is_secret(name):
        return REDACTED
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        # One spelling per number: 30 and 30.0 are the same timeout.
        return int(value) if canonical and value.is_integer() else value
    if isinstance(value, str):
        return _redact_url(value) if redact else str(value)
    if isinstance(value, Target):
        # As the YAML writes it: a URL, or {url, weight} when the weight is not the default.
        return str(value) if value.weight == 1 else {"url": str(value), "weight": value.weight}
    if isinstance(value, ListenAddress | Rate | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if owner is HealthCheckConfig and name == "expected_status":
        return [low if low == high else f"{low}-{high}" for low, high in cast(StatusRanges, value)]
    if isinstance(value, tuple) and owner is not None and _is_header_map(owner, name):
        return {
            match.name: _tree(match.value, HeaderMatch, match.name, redact=redact, canonical=False)
            for match in value
        }
    if isinstance(value, frozenset | set):
        items = [_tree(item, owner, name, redact=redact, canonical=canonical) for item in value]
        return sorted(items, key=_json)
    if isinstance(value, tuple | list):
        return [_tree(item, owner, name, redact=redact, canonical=canonical) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields_tree(value, redact=redact, canonical=canonical)
    raise TypeError(f"no JSON form for {type(value).__name__} in {name!r}")


def _json(tree: Json) -> bytes:
    return json.dumps(
        tree, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


@functools.cache
def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_header_map(owner: type[Any], name: str) -> bool:
    """A field of header conditions: a mapping in YAML, so their order means nothing."""
    return bool(
        dataclasses.is_dataclass(owner) and _hints(owner).get(name) == tuple[HeaderMatch, ...]
    )


def _is_secret(name: str) -> bool:
    return _SECRET_NAME.search(name) is not None


def _redact_url(text: str) -> str:
    return _USERINFO.sub(rf"\g<1>{REDACTED}@", text)


# --- Rendering values for people --------------------------------------------------------------


def _render(value: object, owner: type[Any] | None, name: str) -> str:
    """``value`` of the field ``owner.name`` as an operator writes it (YAML flow style)."""
    if value is not None and _is_secret(name):
        return REDACTED
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    kind = _unit(owner, name)
    if kind == "duration" and isinstance(value, int | float):
        return format_duration(value)
    if kind == "size" and isinstance(value, int):
        return format_size(value)
    if isinstance(value, float):
        # A plain rate (reset_budget.per_second): 20, not 20.0, as an operator writes it.
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return _redact_url(value) if value else '""'
    if isinstance(value, HeaderMatch):
        return f"{value.name}: {_render(value.value, HeaderMatch, value.name)}"
    if isinstance(value, tuple) and owner is not None and _is_header_map(owner, name):
        return "{" + ", ".join(_render(match, None, "") for match in value) + "}"
    if isinstance(value, frozenset | set):
        return _flow_list(sorted(_render(item, owner, name) for item in value))
    if isinstance(value, tuple | list):
        return _flow_list(_render(item, owner, name) for item in value)
    if _is_section(value):
        return "{" + _key_values(value, ": ", ", ") + "}"
    return str(value)


def _unit(owner: type[Any] | None, name: str) -> str | None:
    for cls in () if owner is None else owner.__mro__:
        if (cls, name) in _UNITS:
            return _UNITS[cls, name]
    return None


def _flow_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(items) + "]"


def _key_values(value: Any, between: str = "=", separator: str = " ") -> str:
    cls = type(value)
    return separator.join(
        f"{name}{between}{_render(item, cls, name)}" for name, item in _yaml_fields(value)
    )


def format_duration(seconds: float) -> str:
    """Seconds in the largest unit that gives a whole number: ``60.0`` -> ``"1m"``.

    The result reads back (`gateway.config.units.parse_duration`) as the same float.
    """
    for unit, factor in _DURATION_UNITS:
        count = round(Fraction(seconds) / factor)
        if count >= 1 and float(count * factor) == seconds:
            return f"{count}{unit}"
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def format_size(size: int) -> str:
    """Bytes in the largest binary (else decimal) unit that divides them: ``1048576`` ->
    ``"1MiB"``, ``8190`` -> ``"8190B"``."""
    for unit, factor in _SIZE_UNITS:
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


# --- Diff -------------------------------------------------------------------------------------


def _same(a: object, b: object, owner: type[Any], name: str) -> bool:
    """Equal in the canonical form `config_hash` digests."""
    tree_a = _tree(a, owner, name, redact=False, canonical=True)
    tree_b = _tree(b, owner, name, redact=False, canonical=True)
    return _json(tree_a) == _json(tree_b)


def _is_section(value: object) -> bool:
    return (
        dataclasses.is_dataclass(value)
        and not isinstance(value, type)
        and not isinstance(value, _SCALARS)
    )


def _sections(value: object) -> typing.TypeGuard[tuple[Any, ...]]:
    """A tuple of sections (possibly empty), such as `ServerConfig.listeners`."""
    return isinstance(value, tuple) and all(_is_section(item) for item in value)


def _changes(
    old: object, new: object, owner: type[Any], name: str, path: str = ""
) -> list[tuple[str, str, str]]:
    """``(path, old, new)`` for each changed field, walking nested sections field by field."""
    path = path or name
    found: list[tuple[str, str, str]] = []
    if _is_section(old) and _is_section(new) and type(old) is type(new):
        for (key, before), (_, after) in zip(_yaml_fields(old), _yaml_fields(new), strict=True):
            found += _changes(before, after, type(new), key, f"{path}.{key}")
        return found
    if _sections(old) and _sections(new) and (old or new):
        # Listeners, SNI certificates: item by item, so a changed certificate path is one line
        # rather than the whole list twice; an item only one side has is `unset` on the other.
        for index in range(max(len(old), len(new))):
            before = old[index] if index < len(old) else None
            after = new[index] if index < len(new) else None
            found += _changes(before, after, owner, name, f"{path}[{index}]")
        return found
    if _same(old, new, owner, name):
        return []
    return [(path, _render(old, owner, name), _render(new, owner, name))]


def _diff_upstreams(new: GatewayConfig, old: GatewayConfig) -> list[str]:
    before = {upstream.name: upstream for upstream in old.upstreams}
    after = {upstream.name: upstream for upstream in new.upstreams}
    lines = [f"- upstream {name}" for name in before if name not in after]
    lines += [
        f"+ upstream {name} ({', '.join(str(target) for target in upstream.targets)})"
        for name, upstream in after.items()
        if name not in before
    ]
    for name, upstream in after.items():
        if name in before:
            lines += [
                f"~ upstream {name}: {change}"
                for change in _upstream_changes(before[name], upstream)
            ]
    return lines


def _upstream_changes(old: UpstreamConfig, new: UpstreamConfig) -> list[str]:
    found: list[str] = []
    for field in dataclasses.fields(new):
        if field.name == "name":
            continue
        if field.name == "targets" and set(old.targets) != set(new.targets):
            added = [f"+ {target}" for target in new.targets if target not in old.targets]
            removed = [f"- {target}" for target in old.targets if target not in new.targets]
            found.append(f"targets {', '.join(added + removed)}")
            continue
        found += [
            f"{path} {before} -> {after}"
            for path, before, after in _changes(
                getattr(old, field.name, None), getattr(new, field.name), type(new), field.name
            )
        ]
    return found


def _diff_routes(new: GatewayConfig, old: GatewayConfig) -> list[str]:
    old_order = _precedence(old)
    new_order = _precedence(new)
    before = {route.name: route for route in old_order}
    after = {route.name: route for route in new_order}
    lines = [f"- route {name}" for name in before if name not in after]
    lines += [
        f"+ route {name} {_route_summary(route)}"
        for name, route in after.items()
        if name not in before
    ]
    old_position = {route.name: position for position, route in enumerate(old_order, 1)}
    new_position = {route.name: position for position, route in enumerate(new_order, 1)}
    moved = _moved(
        [name for name in after if name in before], [name for name in before if name in after]
    )
    for name, route in after.items():
        if name not in before:
            continue
        for field in dataclasses.fields(route):
            if field.name == "name":
                continue
            lines += [
                f"~ route {name}: {path} {was} -> {now}"
                for path, was, now in _changes(
                    getattr(before[name], field.name, None),
                    getattr(route, field.name),
                    type(route),
                    field.name,
                )
            ]
        if name in moved:
            was, now = old_position[name], new_position[name]
            note = " (reordered)" if was == now else ""
            lines.append(f"~ route {name}: precedence {was} -> {now}{note}")
    return lines


def _route_summary(route: RouteConfig) -> str:
    match = route.match
    parts = [] if match.host is None else [f"host {match.host}"]
    parts.append(f"prefix {match.path_prefix}")
    if match.methods is not None:
        parts.append(f"methods {','.join(sorted(match.methods))}")
    parts += [f"header {_render(header, None, '')}" for header in match.headers]
    return f"({', '.join(parts)} -> upstream {route.upstream})"


def _moved(new_order: Sequence[str], old_order: Sequence[str]) -> set[str]:
    """The fewest names to move so that ``old_order`` becomes ``new_order`` (same names).

    The rest keep their relative order: a longest increasing subsequence of their old ranks.
    """
    rank = {name: index for index, name in enumerate(old_order)}
    ranks = [rank[name] for name in new_order]
    tails: list[int] = []  # tails[k]: rank ending the best increasing run of length k + 1
    ends: list[int] = []  # ends[k]: index in `ranks` of that rank
    previous: list[int] = []
    for index, value in enumerate(ranks):
        k = bisect_left(tails, value)
        if k == len(tails):
            tails.append(value)
            ends.append(index)
        else:
            tails[k] = value
            ends[k] = index
        previous.append(ends[k - 1] if k else -1)
    kept: set[str] = set()
    index = ends[-1] if ends else -1
    while index >= 0:
        kept.add(new_order[index])
        index = previous[index]
    return set(new_order) - kept
