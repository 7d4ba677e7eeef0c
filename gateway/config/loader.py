"""Load the YAML contract (DESIGN.md §3) into the frozen objects of `gateway.config.model`.

The mechanism is one table per dataclass (`_Section`): YAML key -> converter. A converter turns
one YAML value into a model value or raises `_BadValueError` with the message for that value's
path; sections, lists and mappings record their children's problems and carry on, so one run
reports every problem in the file. Keys and defaults come from the dataclasses themselves, and
`_Section` refuses at import time a table that does not cover its dataclass exactly, so a field
added to the model cannot silently be missing from the YAML contract.

The environment is read only through the ``environ`` argument (default ``os.environ``).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import ssl
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from gateway.config.model import (
    DEFAULT_RATE_LIMIT_KEYS,
    KIB,
    MIB,
    AdminConfig,
    CacheConfig,
    CacheSettings,
    CircuitBreakerConfig,
    CompressionConfig,
    CompressionLevels,
    GatewayConfig,
    HeaderMatch,
    HealthCheckConfig,
    Http2Config,
    ListenAddress,
    ListenerConfig,
    LoggingConfig,
    PassiveHealthConfig,
    PoolConfig,
    RateLimitConfig,
    RedisConfig,
    ResetBudget,
    RetryBackoff,
    RetryConfig,
    RouteConfig,
    RouteMatch,
    ServerConfig,
    ServerLimits,
    ServerTimeouts,
    Target,
    TlsCertificate,
    TlsConfig,
    UpstreamConfig,
    UpstreamTimeouts,
    UpstreamTLS,
    WebSocketConfig,
)
from gateway.config.units import DURATION_NEEDS_UNIT, SIZE_NEEDS_UNIT, parse_duration, parse_size
from gateway.errors import ConfigError
from gateway.ratelimit.rate import parse_rate
from gateway.routing import shadowed_routes

__all__ = ["load_config", "parse_config", "unit_fields"]


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read and validate the YAML file at ``path``; raises ConfigError listing every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{os.fspath(path)}: cannot read the file: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{os.fspath(path)}: not UTF-8 text: {exc.reason}"]) from None
    # Relative file paths inside the config (tls.ca_file) are relative to the config file,
    # so `gateway validate` and `gateway run` agree whatever directory they are started from.
    return _parse(text, environ, os.fspath(path), Path(path).parent)


def parse_config(
    text: str, environ: Mapping[str, str] | None = None, source: str = "<string>"
) -> GatewayConfig:
    """Validate YAML ``text``; ``source`` names it in YAML syntax errors."""
    return _parse(text, environ, source, Path.cwd())


def _parse(
    text: str, environ: Mapping[str, str] | None, source: str, base_dir: Path
) -> GatewayConfig:
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # PyYAML splits some messages: "expected a single document in the stream" (context)
        # + "but found another document" (problem).
        message = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError([f"{source}: invalid YAML{where}: {message}"]) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, C0 controls)
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(
            [
                f"{source}: invalid YAML at line {line}, column {column}: character U+{code:04X}"
                " is not allowed"
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {' '.join(str(exc).split())}"]) from None

    ctx = _Context(os.environ if environ is None else environ, base_dir)
    # Route references are checked against every upstream name in the file, even names whose
    # upstream has other problems, so one typo is not reported twice.
    if isinstance(document, dict) and isinstance(document.get("upstreams"), dict):
        ctx.upstream_names = [str(name) for name in document["upstreams"]] or None
    server = document.get("server") if isinstance(document, dict) else None
    if isinstance(server, dict):
        proxies, listeners = server.get("trusted_proxies", []), server.get("listeners", [])
        ctx.trusted_proxies = bool(proxies) if isinstance(proxies, list) else None
        ctx.any_tls = (
            any(isinstance(item, dict) and item.get("tls") is not None for item in listeners)
            if isinstance(listeners, list)
            else None
        )
    config = _run(_GATEWAY, {} if document is None else document, "", ctx)
    if ctx.problems:
        raise ConfigError(ctx.problems)
    assert isinstance(config, GatewayConfig)
    return config


# --- YAML -------------------------------------------------------------------------------------


class _YamlMap(dict[Any, Any]):
    """A YAML mapping that remembers which of its keys were written more than once."""

    duplicates: tuple[Any, ...] = ()


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader whose mappings record duplicate keys (PyYAML silently keeps the last)."""

    def construct_strict_map(self, node: yaml.MappingNode) -> Iterable[_YamlMap]:
        data = _YamlMap()
        yield data  # yielded first, like SafeConstructor, so aliases to it resolve
        seen: set[Any] = set()
        duplicates: list[Any] = []
        # Checked before construct_mapping flattens merge keys (<<): a merged key that the
        # mapping then sets itself is an override, not a duplicate.
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_object(key_node)
            if key in seen and key not in duplicates:
                duplicates.append(key)
            seen.add(key)
        data.update(self.construct_mapping(node))
        data.duplicates = tuple(duplicates)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_strict_map)


# --- The conversion machinery -----------------------------------------------------------------


class _BadValueError(Exception):
    """The value at the current path is wrong; the argument is the message."""


class _Invalid:
    """Marks a value whose problems are already recorded; the enclosing object is not built."""


_INVALID: Final = _Invalid()


class _FromEnv(str):
    """A string that came (at least partly) from the environment.

    Environment values are always text, so an integer or boolean field accepts such a string
    when it spells one; a string written in the YAML itself is never coerced.
    """


class _Context:
    def __init__(self, environ: Mapping[str, str], base_dir: Path) -> None:
        self.environ = environ
        self.base_dir = base_dir
        self.problems: list[str] = []
        self.upstream_names: list[str] | None = None
        self.route_names: dict[str, str] = {}
        # Routes that do not set `rate_limit` (they get server.rate_limit), by name.
        self.rate_limit_inherited: set[str] = set()
        # Read from the document before conversion, like upstream_names, so that a listener is
        # checked against them even when it or they have other problems: whether
        # server.trusted_proxies lists any proxy, and whether any listener has a tls block
        # (None: not a list, so unknown).
        self.trusted_proxies: bool | None = False
        self.any_tls: bool | None = False
        # How problems name each listener's address: "server.listen" for the one-liner (and
        # the default), else "server.listeners[i].listen".
        self.listen_paths: list[str] = ["server.listen"]

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path or '(top level)'}: {message}")


Converter = Callable[[Any, str, _Context], Any]


def _run(convert: Converter, value: object, path: str, ctx: _Context) -> Any:
    """Interpolate ``value`` if it is a string, convert it, and record a problem if it fails."""
    try:
        if isinstance(value, str):
            value = _interpolate(value, ctx.environ)
        return convert(value, path, ctx)
    except _BadValueError as exc:
        ctx.problem(path, str(exc))
        return _INVALID


def _key(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(value: object) -> str:
    """A value as the operator wrote it, for "got ..." in messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _did_you_mean(word: object, options: Iterable[str]) -> str:
    lowered = {option.lower(): option for option in options}
    text = str(word).lower()
    close = difflib.get_close_matches(text, list(lowered), n=1, cutoff=0.6)
    # A shortened or lengthened key ("path" for "path_prefix") is a likelier slip than the
    # edit distance suggests.
    close = close or [
        option for option in lowered if option.startswith(text) or text.startswith(option)
    ]
    return f" (did you mean '{lowered[close[0]]}'?)" if close and text else ""


class _Section:
    """Converts a YAML mapping into the dataclass ``cls`` using one converter per key."""

    def __init__(
        self,
        cls: type[Any],
        schema: Mapping[str, Converter],
        *,
        injected: Iterable[str] = (),
        hints: Mapping[str, str] | None = None,
        finish: Callable[[dict[str, Any], set[str], str, _Context], None] | None = None,
        aliases: Mapping[str, Converter] | None = None,
    ) -> None:
        self.fields = {f.name: f for f in dataclasses.fields(cls)}
        # YAML keys that are not fields of ``cls`` (an older spelling): converted like the
        # others, and ``finish`` turns them into fields (it must remove them from kwargs).
        self.aliases = dict(aliases or {})
        self.injected = frozenset(injected)
        if set(schema) | self.injected != set(self.fields):
            raise TypeError(f"the YAML schema of {cls.__name__} does not match its fields")
        self.cls = cls
        self.schema = schema
        self.hints = hints or {}
        self.finish = finish

    def __call__(self, value: object, path: str, ctx: _Context) -> Any:
        return self.build(value, path, ctx, {})

    def build(self, value: object, path: str, ctx: _Context, preset: dict[str, Any]) -> Any:
        # `server:` with every child commented out is null in YAML: the defaults apply.
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise _BadValueError(f"expected a mapping, got {_describe(value)}")
        ok = _report_duplicates(value, path, ctx)
        kwargs = dict(preset)
        for key, item in value.items():
            convert = (
                self.schema.get(key) or self.aliases.get(key) if isinstance(key, str) else None
            )
            if convert is None:
                hint = self.hints.get(key) or _did_you_mean(key, self.schema)
                ctx.problem(_key(path, key), f"unknown key{hint}")
                ok = False
                continue
            result = _run(convert, item, _key(path, key), ctx)
            if result is _INVALID:
                ok = False
            else:
                kwargs[key] = result
        for name, field in self.fields.items():
            required = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
            if required and name not in kwargs and name not in value and name not in self.injected:
                ctx.problem(_key(path, name), "missing required key")
                ok = False
        if self.finish is not None:
            given = {key for key in value if isinstance(key, str)}
            before = len(ctx.problems)
            self.finish(kwargs, given, path, ctx)
            ok = ok and len(ctx.problems) == before
        return self.cls(**kwargs) if ok else _INVALID


def _report_duplicates(value: dict[Any, Any], path: str, ctx: _Context) -> bool:
    duplicates = getattr(value, "duplicates", ())
    for key in duplicates:
        ctx.problem(_key(path, key), "duplicate key")
    return not duplicates


def _list_of(
    item: Converter,
    what: str,
    *,
    plural: str | None = None,
    allow_empty: bool = False,
    most: int | None = None,
    check: Callable[[list[tuple[int, Any]], str, _Context], None] | None = None,
) -> Converter:
    """A YAML list converted item by item into a tuple, of at most ``most`` items.

    ``check`` sees the valid items with their indices, so relations between items (duplicates,
    shadowing) are reported in the same run as problems with other items.
    """

    def convert(value: object, path: str, ctx: _Context) -> Any:
        if not isinstance(value, list):
            raise _BadValueError(
                f"expected a list of {plural or what + 's'}, got {_describe(value)}"
            )
        if not value and not allow_empty:
            raise _BadValueError(f"at least one {what} is required")
        if most is not None and len(value) > most:
            raise _BadValueError(f"at most {most} {plural or what + 's'}, got {len(value)}")
        before = len(ctx.problems)
        results = [_run(item, element, f"{path}[{i}]", ctx) for i, element in enumerate(value)]
        if check is not None:
            check([(i, r) for i, r in enumerate(results) if r is not _INVALID], path, ctx)
        return tuple(results) if len(ctx.problems) == before else _INVALID

    return convert


def _optional(convert: Converter) -> Converter:
    """null (or an empty value from the environment, ``${CA_FILE:-}``) means "not set"."""

    def optional(value: object, path: str, ctx: _Context) -> Any:
        if value is None or (isinstance(value, _FromEnv) and not value):
            return None
        return convert(value, path, ctx)

    return optional


def _feature(section: _Section, default: Callable[[], Any]) -> Converter:
    """An optional block (a route's cache or compression, an upstream's health checks): a
    mapping whose ``enabled`` defaults to true, true for the defaults, false or null for none."""

    def convert(value: object, path: str, ctx: _Context) -> Any:
        if value is None or value is False:
            return None
        if value is True:
            return default()
        enabled: Any = True
        if isinstance(value, dict) and "enabled" in value:
            enabled = _run(_boolean, value["enabled"], _key(path, "enabled"), ctx)
            value = {k: v for k, v in value.items() if k != "enabled"}
        # A disabled block is validated all the same: a typo in it is still a typo.
        config = section(value, path, ctx)
        if enabled is _INVALID or config is _INVALID:
            return _INVALID
        return config if enabled else None

    return convert


# --- ${ENV_VAR} interpolation -----------------------------------------------------------------

# `$${` first so an escaped reference is never read as a reference; a `${` left unmatched by
# the complete form is malformed.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


def _interpolate(text: str, environ: Mapping[str, str]) -> str:
    if "${" not in text:
        return text
    substituted = False

    def replace(match: re.Match[str]) -> str:
        nonlocal substituted
        if match[0] == "$${":
            return "${"
        body = match[1]
        reference = _VARIABLE.fullmatch(body) if body is not None else None
        if reference is None:
            raise _BadValueError(
                f"invalid reference {match[0]!r}: write ${{NAME}} or ${{NAME:-default}},"
                " or $${ for a literal '${'"
            )
        substituted = True
        value = environ.get(reference["name"])
        default = reference["default"]
        # Like the shell's ${NAME:-default}: the default also covers a variable set to "".
        if default is not None and not value:
            return default
        if value is None:
            raise _BadValueError(f"environment variable {reference['name']!r} is not set")
        return value

    result = _REFERENCE.sub(replace, text)
    return _FromEnv(result) if substituted else result


# --- Scalars ----------------------------------------------------------------------------------


def _string(value: object) -> str:
    if not isinstance(value, str):
        quote = " (quote it)" if isinstance(value, int | float) else ""
        raise _BadValueError(f"expected a string, got {_describe(value)}{quote}")
    return str(value)  # a plain str, not _FromEnv, goes into the model


def _boolean(value: object, path: str, ctx: _Context) -> bool:
    if isinstance(value, _FromEnv) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise _BadValueError(f"expected a boolean (true or false), got {_describe(value)}")
    return value


def _count(value: object, path: str, ctx: _Context) -> int:
    if isinstance(value, _FromEnv) and re.fullmatch(r"[+-]?[0-9]+", value):
        value = int(value)
    # bool is an int subclass in Python; `max_headers: true` is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _BadValueError(f"expected an integer, got {_describe(value)}")
    if value < 1:
        raise _BadValueError(f"must be at least 1, got {value}")
    return value


def _workers(value: object, path: str, ctx: _Context) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, _FromEnv) and re.fullmatch(r"[+-]?[0-9]+", value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _BadValueError(f"expected an integer or 'auto', got {_describe(value)}")
    return _count(value, path, ctx)


def _token(value: object, path: str, ctx: _Context) -> str:
    if not isinstance(value, str):
        # Never echo the value: a token written as a bare number is still a secret.
        got = "a number (quote it)" if isinstance(value, int | float) else _describe(value)
        raise _BadValueError(f"expected a string, got {got}")
    text = str(value)
    # It travels in an Authorization header: visible ASCII only, and long enough to matter.
    if len(text) < 16 or not all(33 <= ord(char) <= 126 for char in text):
        raise _BadValueError("expected at least 16 visible ASCII characters")
    return text


def _with_unit(
    parse: Callable[[str], float], needs_unit: str, example: str, *, zero: bool = False
) -> Converter:
    """A duration or size: a string with a unit, greater than 0 (or 0 too, with ``zero``)."""

    def convert(value: object, path: str, ctx: _Context) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise _BadValueError(f"expected {example}, got {_describe(value)}")
        if not isinstance(value, str):
            raise _BadValueError(needs_unit)
        try:
            amount = parse(value)
        except ValueError as exc:
            raise _BadValueError(str(exc)) from None
        if amount < 0 or (amount == 0 and not zero):
            floor = "at least 0" if zero else "greater than 0"
            raise _BadValueError(f"must be {floor}, got {_describe(value)}")
        return amount

    return convert


_duration = _with_unit(parse_duration, DURATION_NEEDS_UNIT, "a duration such as '5s'")
_size = _with_unit(parse_size, SIZE_NEEDS_UNIT, "a size such as '64KiB'")
# A size that may be 0B: compress whatever the size.
_size_or_zero = _with_unit(parse_size, SIZE_NEEDS_UNIT, "a size such as '64KiB'", zero=True)
# A duration that may be 0s: a window that is off.
_duration_or_zero = _with_unit(
    parse_duration, DURATION_NEEDS_UNIT, "a duration such as '5s'", zero=True
)


def _choice(*allowed: str) -> Converter:
    def choice(value: object, path: str, ctx: _Context) -> str:
        text = _string(value)
        if text not in allowed:
            options = ", ".join(repr(option) for option in allowed)
            raise _BadValueError(
                f"expected one of {options}, got {_describe(value)}{_did_you_mean(text, allowed)}"
            )
        return text

    return choice


# --- Hosts, addresses, URLs -------------------------------------------------------------------

# RFC 1123 labels, plus "_" because container runtimes (docker compose service names) hand
# out such names and resolvers accept them.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# RFC 9110 token: HTTP methods, field names, the Via pseudonym.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _valid_hostname(host: str) -> bool:
    """A lower-case DNS name, or an IPv4 address in dotted-decimal form."""
    if len(host) > 253 or _HOSTNAME.fullmatch(host) is None:
        return False
    # A name ending in a numeric label is read as an IPv4 address by resolvers and URL parsers,
    # sometimes in octal or hex ("010.0.0.1" is 8.0.0.1 to inet_aton): only plain dotted
    # decimal is accepted, so the address the operator reads is the address used.
    if host.rsplit(".", 1)[-1].isdigit():
        try:
            return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
        except ValueError:
            return False
    return True


def _split_host_port(text: str) -> tuple[str, str | None]:
    """``host:port``, ``[v6]:port``, ``host`` -> (host without brackets, port text or None)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise _BadValueError(f"missing ']' after the IPv6 address in {text!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _BadValueError(f"{host!r} in brackets is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise _BadValueError(f"unexpected {rest!r} after ']' in {text!r}")
        return host, rest[1:] if rest else None
    if text.count(":") > 1:
        raise _BadValueError(f"an IPv6 address needs brackets, e.g. '[::1]:8080', got {text!r}")
    host, colon, port = text.partition(":")
    return host, port if colon else None


def _port(text: str, lowest: int) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not lowest <= int(text) <= 65535:
        raise _BadValueError(f"port must be a number from {lowest} to 65535, got {text!r}")
    return int(text)


def _check_host(host: str, original: str) -> str:
    """A hostname (lower-cased) or an IP address (canonical form)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _valid_hostname(host.lower()):
        raise _BadValueError(f"{host!r} is not a valid host name or IP address (in {original!r})")
    return host.lower()


def _listen(value: object, path: str, ctx: _Context) -> ListenAddress:
    text = _string(value)
    host, port = _split_host_port(text)
    if port is None:
        raise _BadValueError(f"expected 'host:port', '[::1]:port' or ':port', got {text!r}")
    # Port 0 asks the OS for a free port: useless in production, handy in tests.
    number = _port(port, 0)
    return ListenAddress("0.0.0.0" if host == "" else _check_host(host, text), number)


def _network(
    value: object, path: str, ctx: _Context
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = _string(value)
    try:
        # strict=False: "10.1.2.3/8" means 10.0.0.0/8 rather than being an error.
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _BadValueError(
            f"expected an IP address or CIDR such as '10.0.0.0/8', got {text!r}"
        ) from None


_TARGET = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)", re.DOTALL
)


# HAProxy's ceiling; a consistent_hash ring holds 160 points per unit of weight.
MAX_WEIGHT: Final = 256


def _target(value: object, path: str, ctx: _Context) -> Any:
    """A URL string, or ``{url, weight}``."""
    if not isinstance(value, dict):
        return _target_url(value, path, ctx)
    _report_duplicates(value, path, ctx)
    unknown = [key for key in value if key not in ("url", "weight")]
    for key in unknown:
        ctx.problem(_key(path, key), f"unknown key{_did_you_mean(key, ('url', 'weight'))}")
    if "url" in value:
        target = _run(_target_url, value["url"], _key(path, "url"), ctx)
    else:
        ctx.problem(_key(path, "url"), "missing required key")
        target = _INVALID
    weight = _run(_weight, value.get("weight", 1), _key(path, "weight"), ctx)
    if unknown or target is _INVALID or weight is _INVALID:
        return _INVALID
    return dataclasses.replace(target, weight=weight)


def _weight(value: object, path: str, ctx: _Context) -> int:
    weight = _count(value, path, ctx)
    if weight > MAX_WEIGHT:
        raise _BadValueError(f"must be at most {MAX_WEIGHT}, got {weight}")
    return weight


def _target_url(value: object, path: str, ctx: _Context) -> Target:
    text = _string(value)
    match = _TARGET.fullmatch(text)
    if match is None:
        raise _BadValueError(f"expected a URL such as 'http://10.0.0.5:9000', got {text!r}")
    scheme: Literal["http", "https"]
    if match["scheme"].lower() == "http":
        scheme = "http"
    elif match["scheme"].lower() == "https":
        scheme = "https"
    else:
        raise _BadValueError(f"a target's scheme must be http or https, got {text!r}")
    # A lone "/" is how many people write a bare origin; anything more would be dropped.
    if match["rest"] not in ("", "/"):
        raise _BadValueError(f"a target has no path, query or fragment: {text!r}")
    authority = match["authority"]
    if "@" in authority:
        raise _BadValueError(f"a target cannot carry user credentials: {text!r}")
    host, port = _split_host_port(authority)
    if not host:
        raise _BadValueError(f"a target needs a host: {text!r}")
    default_port = 443 if scheme == "https" else 80
    number = default_port if port is None else _port(port, 1)
    return Target(scheme, _check_host(host, text), number)


def _check_targets(targets: list[tuple[int, Target]], path: str, ctx: _Context) -> None:
    first: dict[tuple[str, str, int], int] = {}
    for index, target in targets:
        address = target.address
        if address in first:
            ctx.problem(
                f"{path}[{index}]",
                f"duplicate target '{target}' (first at {path}[{first[address]}])",
            )
        first.setdefault(address, index)


def _host_header(value: object, path: str, ctx: _Context) -> str:
    text = _string(value)
    if text in ("preserve", "target"):
        return text
    # A fixed Host value goes on the wire as is: it must be a valid host[:port].
    try:
        host, port = _split_host_port(text)
        if not host:
            raise _BadValueError("")
        _check_host(host, text)
        if port is not None:
            _port(port, 1)
    except _BadValueError:
        raise _BadValueError(
            "expected 'preserve', 'target' or a fixed host such as 'api.internal:8443',"
            f" got {_describe(value)}"
        ) from None
    return text


# --- Upstreams --------------------------------------------------------------------------------

_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _ca_file(value: object, path: str, ctx: _Context) -> str:
    text = _string(value)
    if not text:
        raise _BadValueError("expected a file path, got ''")
    resolved = ctx.base_dir / text
    if not resolved.exists():
        raise _BadValueError(f"no such file: {str(resolved)!r}")
    if not resolved.is_file():
        raise _BadValueError(f"not a regular file: {str(resolved)!r}")
    if not os.access(resolved, os.R_OK):
        raise _BadValueError(f"file is not readable: {str(resolved)!r}")
    return str(resolved)


def _finish_pool(kwargs: dict[str, Any], given: set[str], path: str, ctx: _Context) -> None:
    defaults = PoolConfig()
    connections = kwargs.get("max_connections", defaults.max_connections)
    idle = kwargs.get("max_idle")
    if ("max_connections" in given and "max_connections" not in kwargs) or (
        "max_idle" in given and idle is None
    ):
        return  # already reported
    default_idle = defaults.max_idle
    if idle is None:
        # An omitted max_idle follows a small max_connections down rather than forcing the
        # operator to set both.
        kwargs["max_idle"] = min(default_idle, connections)
    elif idle > connections:
        ctx.problem(
            _key(path, "max_idle"), f"must not exceed max_connections ({connections}), got {idle}"
        )


def _hash_key(value: object, path: str, ctx: _Context) -> str:
    text = _string(value)
    if text == "client_ip":
        return text
    kind, colon, name = text.partition(":")
    if kind == "header" and colon and _TOKEN.fullmatch(name):
        return f"header:{name.lower()}"
    raise _BadValueError(
        f"expected 'client_ip' or 'header:NAME' (e.g. 'header:X-User-Id'), got {_describe(value)}"
    )


def _status_ranges(value: object, path: str, ctx: _Context) -> Any:
    """``[200, "200-299"]``: statuses and inclusive ranges of them."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _BadValueError("at least one status or range is required")
    ranges: list[tuple[int, int]] = []
    for item in items:
        low_text, dash, high_text = str(item).partition("-")
        if (
            isinstance(item, bool)
            or not isinstance(item, int | str)
            or not re.fullmatch(r"[0-9]{3}", low_text)
            or (dash and not re.fullmatch(r"[0-9]{3}", high_text))
        ):
            raise _BadValueError(
                f"expected statuses such as 200 or ranges such as '200-399', got {_describe(item)}"
            )
        low, high = int(low_text), int(high_text) if dash else int(low_text)
        if not 100 <= low <= high <= 599:
            raise _BadValueError(f"expected statuses from 100 to 599, low to high, got {item!r}")
        ranges.append((low, high))
    return tuple(ranges)


def _check_path(value: object, path: str, ctx: _Context) -> str:
    text = _string(value)
    # It goes on a request line as is: origin-form (RFC 9112 §3.2.1), visible ASCII.
    if not text.startswith("/") or not all(33 <= ord(char) <= 126 for char in text):
        raise _BadValueError(f"expected a path such as '/healthz', got {_describe(value)}")
    return text


def _finish_health_check(kwargs: dict[str, Any], given: set[str], path: str, ctx: _Context) -> None:
    interval, timeout = kwargs.get("interval", 5.0), kwargs.get("timeout", 1.0)
    if "interval" in kwargs and "timeout" in kwargs and timeout > interval:
        ctx.problem(
            _key(path, "timeout"), f"must not exceed interval ({interval:g}s), got {timeout:g}s"
        )


def _finish_passive(kwargs: dict[str, Any], given: set[str], path: str, ctx: _Context) -> None:
    base, most = kwargs.get("base_ejection", 10.0), kwargs.get("max_ejection", 300.0)
    if ("base_ejection" in kwargs or "max_ejection" in kwargs) and base > most:
        ctx.problem(
            _key(path, "max_ejection"),
            f"must be at least base_ejection ({base:g}s), got {most:g}s",
        )


_HEALTH_CHECK = _Section(
    HealthCheckConfig,
    {
        "path": _check_path,
        "interval": _duration,
        "timeout": _duration,
        "healthy_threshold": _count,
        "unhealthy_threshold": _count,
        "expected_status": _status_ranges,
    },
    finish=_finish_health_check,
)
_PASSIVE_HEALTH = _Section(
    PassiveHealthConfig,
    {"consecutive_failures": _count, "base_ejection": _duration, "max_ejection": _duration},
    finish=_finish_passive,
)


def _finish_upstream(kwargs: dict[str, Any], given: set[str], path: str, ctx: _Context) -> None:
    if "hash_key" in given and kwargs.get("balance", "round_robin") != "consistent_hash":
        ctx.problem(_key(path, "hash_key"), "only balance: consistent_hash uses a hash_key")


_UPSTREAM = _Section(
    UpstreamConfig,
    {
        "targets": _list_of(_target, "target", check=_check_targets),
        "balance": _choice("round_robin", "least_requests", "consistent_hash"),
        "hash_key": _hash_key,
        "health_check": _feature(_HEALTH_CHECK, HealthCheckConfig),
        "passive_health": _feature(_PASSIVE_HEALTH, PassiveHealthConfig),
        "circuit_breaker": _Section(
            CircuitBreakerConfig, {"max_requests": _count, "max_pending": _count}
        ),
        "pool": _Section(
            PoolConfig,
            {"max_connections": _count, "max_idle": _count, "idle_timeout": _duration},
            finish=_finish_pool,
        ),
        "timeouts": _Section(
            UpstreamTimeouts, {"connect": _duration, "response": _duration, "read": _duration}
        ),
        "tls": _Section(UpstreamTLS, {"ca_file": _optional(_ca_file), "verify": _boolean}),
        "host_header": _host_header,
        "dns_ttl": _duration,
    },
    injected=["name"],
    hints={"name": " (an upstream's name is its key under 'upstreams')"},
    finish=_finish_upstream,
)


def _upstreams(value: object, path: str, ctx: _Context) -> Any:
    if not isinstance(value, dict):
        raise _BadValueError(
            f"expected a mapping of upstream names to upstreams, got {_describe(value)}"
        )
    if not value:
        raise _BadValueError("at least one upstream is required")
    ok = _report_duplicates(value, path, ctx)
    results = []
    for name, body in value.items():
        where = _key(path, name)
        if not isinstance(name, str) or not _UPSTREAM_NAME.fullmatch(name):
            ctx.problem(
                where,
                f"an upstream name has only letters, digits, '_' and '-', got {_describe(name)}",
            )
            ok = False
        # The body is checked even under a bad name, so its problems show up in this run too.
        try:
            result = _UPSTREAM.build(body, where, ctx, {"name": str(name)})
        except _BadValueError as exc:
            ctx.problem(where, str(exc))
            result = _INVALID
        ok = ok and result is not _INVALID
        results.append(result)
    return tuple(results) if ok else _INVALID


# --- Rate limits ------------------------------------------------------------------------------


def _rate(value: object, path: str, ctx: _Context) -> Any:
    try:
        return parse_rate(_string(value))
    except ValueError as exc:
        raise _BadValueError(str(exc)) from None


_SIMPLE_KEY_PARTS = ("client_ip", "route")


def _key_part(value: object, path: str, ctx: _Context) -> str:
    text = _string(value)
    if text in _SIMPLE_KEY_PARTS:
        return text
    kind, colon, name = text.partition(":")
    if kind == "header" and colon and _TOKEN.fullmatch(name):
        # Field names are case-insensitive (RFC 9110 §5.1): compared in lower case.
        return f"header:{name.lower()}"
    raise _BadValueError(
        "expected 'client_ip', 'route' or 'header:NAME' (e.g. 'header:X-Api-Key'),"
        f" got {_describe(value)}"
    )


def _no_duplicates(what: str) -> Callable[[list[tuple[int, Any]], str, _Context], None]:
    """A `_list_of` check naming each item that repeats an earlier one."""

    def check(items: list[tuple[int, Any]], path: str, ctx: _Context) -> None:
        first: dict[Any, int] = {}
        for index, item in items:
            if item in first:
                ctx.problem(f"{path}[{index}]", f"duplicate {what}{item!r}")
            first.setdefault(item, index)

    return check


_key_list = _list_of(_key_part, "key part", check=_no_duplicates("key part "))
# A sliding window packs two counts in one float of the shared table, below 2**26 each
# (gateway.ratelimit.policy.MAX_SLIDING_LIMIT).
_MAX_SLIDING_LIMIT = (1 << 26) - 1
# A moving window keeps the time of each of the last `limit` allowed requests for every key:
# 8 bytes each, in a shared table file that every worker maps.
_MAX_MOVING_TABLE = 256 * 1024 * 1024


def _rate_limit_key(value: object, path: str, ctx: _Context) -> Any:
    if isinstance(value, list):
        return _key_list(value, path, ctx)
    return (_key_part(value, path, ctx),)


def _finish_rate_limit(kwargs: dict[str, Any], given: set[str], path: str, ctx: _Context) -> None:
    rate = kwargs.get("rate")
    burst = kwargs.get("burst")
    if rate is not None and burst is not None and burst < 1:
        ctx.problem(_key(path, "burst"), f"must be at least 1, got {burst}")
    strategy = kwargs.get("strategy", "token_bucket")
    if "burst" in given and strategy != "token_bucket":
        ctx.problem(
            _key(path, "burst"),
            f"only the token_bucket strategy has a burst; {strategy} allows rate.limit requests"
            " per window",
        )
    if rate is None:
        return
    if strategy == "sliding_window" and rate.limit > _MAX_SLIDING_LIMIT:
        ctx.problem(
            _key(path, "rate"),
            f"sliding_window counts at most {_MAX_SLIDING_LIMIT} requests per window,"
            f" got {rate.limit}; use a shorter period or fixed_window",
        )
    uses_memory = (
        kwargs.get("backend", "memory") == "memory"
        or kwargs.get("on_backend_error", "local") == "local"
    )
    max_keys = kwargs.get("max_keys", DEFAULT_RATE_LIMIT_KEYS)
    if strategy == "moving_window" and uses_memory:
        table = max_keys * rate.limit * 8
        if table > _MAX_MOVING_TABLE:
            ctx.problem(
                _key(path, "strategy"),
                f"moving_window keeps {rate.limit} timestamps for each of max_keys={max_keys}"
                f" keys: {table // 2**20} MiB of table, over the"
                f" {_MAX_MOVING_TABLE // 2**20} MiB allowed; lower max_keys or the limit, or"
                " use sliding_window (two counters per key)",
            )


_RATE_LIMIT = _Section(
    RateLimitConfig,
    {
        "rate": _rate,
        "burst": _count,
        "key": _rate_limit_key,
        "backend": _choice("memory", "redis"),
        "strategy": _choice("token_bucket", "fixed_window", "sliding_window", "moving_window"),
        "enforce": _boolean,
        "on_backend_error": _choice("local", "allow", "deny"),
        "budget": _duration,
        "max_keys": _count,
    },
    finish=_finish_rate_limit,
)


def _rate_limit(value: object, path: str, ctx: _Context) -> Any:
    """A rate_limit mapping; false or null for none (a route opting out of server.rate_limit)."""
    if (
        value is None
        or value is False
        or (isinstance(value, _FromEnv) and value.lower() == "false")
    ):
        return None
    if value is True:
        raise _BadValueError("expected a mapping with at least 'rate', or false for no limit")
    return _RATE_LIMIT(value, path, ctx)


def _field_name(value: object, path: str, ctx: _Context) -> str:
    text = _string(value)
    if not _TOKEN.fullmatch(text):
        raise _BadValueError(f"expected a header field name, got {_describe(value)}")
    return text


_CACHE = _Section(
    CacheConfig,
    {
        "store": _choice("memory", "redis"),
        "max_object_size": _size,
        "default_ttl": _optional(_duration),
        "stale_while_revalidate": _duration_or_zero,
        "stale_if_error": _duration_or_zero,
        "tag_header": _field_name,
        "store_set_cookie": _boolean,
        "revalidate_for": _duration,
    },
)


_cache = _feature(_CACHE, CacheConfig)


def _level(low: int, high: int) -> Converter:
    def convert(value: object, path: str, ctx: _Context) -> int:
        if isinstance(value, _FromEnv) and re.fullmatch(r"[0-9]+", value):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise _BadValueError(
                f"expected an integer from {low} to {high}, got {_describe(value)}"
            )
        return value

    return convert


_MEDIA_RANGE = re.compile(
    r"[a-z0-9][a-z0-9!#$&^_.+-]*/(\*|\*\+[a-z0-9!#$&^_.+-]+|[a-z0-9][a-z0-9!#$&^_.+-]*)"
)


def _media_range(value: object, path: str, ctx: _Context) -> str:
    text = _string(value).strip().lower()
    if not _MEDIA_RANGE.fullmatch(text):
        raise _BadValueError(
            "expected a media type such as 'application/json', 'text/*' or"
            f" 'application/*+json', got {_describe(value)}"
        )
    return text


_COMPRESSION = _Section(
    CompressionConfig,
    {
        "algorithms": _list_of(
            _choice("br", "zstd", "gzip"), "algorithm", check=_no_duplicates("")
        ),
        "min_size": _size_or_zero,
        "levels": _Section(
            CompressionLevels,
            {"br": _level(0, 11), "zstd": _level(1, 22), "gzip": _level(1, 9)},
        ),
        "content_types": _list_of(_media_range, "media type", check=_no_duplicates("")),
    },
)


_compression = _feature(_COMPRESSION, CompressionConfig)


_WEBSOCKET = _Section(
    WebSocketConfig,
    {
        "max_connections": _count,
        "max_per_client": _optional(_count),
        "max_message_size": _size,
        "queue_messages": _count,
        "queue_bytes": _size,
        "idle_timeout": _duration,
        "on_overflow": _choice("backpressure", "close"),
        "permessage_deflate": _boolean,
    },
)


_websocket = _feature(_WEBSOCKET, WebSocketConfig)


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _redis_url(value: object, path: str, ctx: _Context) -> str:
    text = _string(value)
    if not text.startswith(_REDIS_SCHEMES):
        # Never echo the value: a URL may carry a password.
        raise _BadValueError("expected a URL starting with redis://, rediss:// or unix://")
    return text


# --- Routes -----------------------------------------------------------------------------------

_ROUTE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _route_name(value: object, path: str, ctx: _Context) -> str:
    name = _string(value)
    if not _ROUTE_NAME.fullmatch(name):
        raise _BadValueError(
            "a route name is a metrics label: only letters, digits, '_', '.' and '-',"
            f" got {_describe(value)}"
        )
    route = path.removesuffix(".name")
    first = ctx.route_names.setdefault(name, route)
    if first != route:
        raise _BadValueError(f"duplicate route name {name!r} (first at {first})")
    return name


def _upstream_ref(value: object, path: str, ctx: _Context) -> str:
    name = _string(value)
    known = ctx.upstream_names
    # Without a usable `upstreams` mapping that problem is reported once, not per route.
    if known is not None and name not in known:
        raise _BadValueError(f"unknown upstream {name!r}{_did_you_mean(name, known)}")
    return name


def _host_pattern(value: object, path: str, ctx: _Context) -> str:
    # Hosts compare case-insensitively (RFC 9110 §4.2.3); stored in the form `gateway.routing`
    # compares request hosts in: lower case, no trailing dot, IPv6 bracketed and canonical.
    text = _string(value).lower()
    if text.startswith("["):
        host, port = _split_host_port(text)
        if port is not None:
            raise _BadValueError(f"a host to match has no port, got {_describe(value)}")
        return f"[{ipaddress.IPv6Address(host).compressed}]"
    if ":" in text:
        raise _BadValueError(f"a host to match has no port, got {_describe(value)}")
    if text.endswith(".") and text != ".":
        text = text[:-1]  # "example.com." is the absolute form of the same name
    if not _valid_hostname(text.removeprefix("*.")):
        raise _BadValueError(
            "expected a host name such as 'api.example.com' or a wildcard such as"
            f" '*.example.com', got {_describe(value)}"
        )
    return text


def _path_prefix(value: object, path: str, ctx: _Context) -> str:
    text = _string(value)
    if not text.startswith("/"):
        raise _BadValueError(f"must start with '/', got {_describe(value)}")
    if any(char in "?#" or ord(char) <= 0x20 or ord(char) == 0x7F for char in text):
        raise _BadValueError(
            f"must be a path without query, fragment, spaces or control characters,"
            f" got {_describe(value)}"
        )
    return text


def _method(value: object, path: str, ctx: _Context) -> str:
    text = _string(value)
    if not _TOKEN.fullmatch(text):
        raise _BadValueError(f"expected an HTTP method such as 'GET', got {_describe(value)}")
    return text.upper()


_methods_list = _list_of(_method, "method")


def _methods(value: object, path: str, ctx: _Context) -> Any:
    if isinstance(value, list) and not value:
        raise _BadValueError("expected at least one method (omit the key to match every method)")
    methods = _methods_list(value, path, ctx)
    return _INVALID if methods is _INVALID else frozenset(methods)


def _header_value(value: object, path: str, ctx: _Context) -> str:
    text = _string(value)
    if any(char in text for char in "\r\n\0"):
        raise _BadValueError("a header value cannot contain CR, LF or NUL")
    return text


def _header_matches(value: object, path: str, ctx: _Context) -> Any:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _BadValueError(
            f"expected a mapping of header names to values, got {_describe(value)}"
        )
    ok = _report_duplicates(value, path, ctx)
    matches: list[HeaderMatch] = []
    first: dict[str, object] = {}
    for name, item in value.items():
        where = _key(path, name)
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            ctx.problem(where, f"expected a header name such as 'X-Env', got {_describe(name)}")
            ok = False
            continue
        # Field names are case-insensitive: "X-Env" and "x-env" are the same header.
        if name.lower() in first:
            ctx.problem(where, f"duplicate header {name!r} (first as {first[name.lower()]!r})")
            ok = False
            continue
        first[name.lower()] = name
        result = _run(_header_value, item, where, ctx)
        if result is _INVALID:
            ok = False
        else:
            matches.append(HeaderMatch(name.lower(), result))
    return tuple(matches) if ok else _INVALID


def _check_shadowing(valid: list[tuple[int, RouteConfig]], path: str, ctx: _Context) -> None:
    # Shadowing is a relation between two routes, so it is sound on the valid subset too.
    indices = [index for index, _ in valid]
    routes = [route for _, route in valid]
    for shadowed, by in shadowed_routes(routes):
        ctx.problem(
            f"{path}[{indices[shadowed]}]",
            f"shadowed by {path}[{indices[by]}] ({routes[by].name!r}), it can never match",
        )


_RETRY_CONDITIONS: Final = ("connect_failure", "reset", "502", "503", "504")


def _retry_condition(value: object, path: str, ctx: _Context) -> Any:
    # YAML reads 502 as an integer; the model keeps every condition as text.
    if isinstance(value, int) and not isinstance(value, bool):
        if str(value) not in _RETRY_CONDITIONS:
            raise _BadValueError(f"only 502, 503 and 504 are retried, got {value}")
        return str(value)
    return _choice(*_RETRY_CONDITIONS)(value, path, ctx)


def _finish_backoff(kwargs: dict[str, Any], given: set[str], path: str, ctx: _Context) -> None:
    base, most = kwargs.get("base", 0.025), kwargs.get("max", 0.25)
    if ("base" in kwargs or "max" in kwargs) and base > most:
        ctx.problem(_key(path, "max"), f"must be at least base ({base:g}s), got {most:g}s")


def _percent(value: object, path: str, ctx: _Context) -> int:
    number = _count(value, path, ctx)
    if number > 100:
        raise _BadValueError(f"must be at most 100, got {number}")
    return number


_RETRIES = _Section(
    RetryConfig,
    {
        "attempts": _count,
        "on": _list_of(
            _retry_condition,
            "condition",
            allow_empty=True,
            check=_no_duplicates("condition "),
        ),
        "budget_percent": _percent,
        "backoff": _Section(
            RetryBackoff, {"base": _duration, "max": _duration}, finish=_finish_backoff
        ),
        "non_idempotent": _boolean,
        "max_replay_body": _size_or_zero,
    },
)
_retries_block = _feature(_RETRIES, RetryConfig)


def _retries(value: object, path: str, ctx: _Context) -> Any:
    # YAML 1.1 reads a bare `on:` key as the boolean true; here it can only mean "on".
    if isinstance(value, dict) and True in value and "on" not in value:
        renamed = _YamlMap((("on" if key is True else key), item) for key, item in value.items())
        renamed.duplicates = getattr(value, "duplicates", ())
        value = renamed
    return _retries_block(value, path, ctx)


_ROUTE = _Section(
    RouteConfig,
    {
        "name": _route_name,
        "upstream": _upstream_ref,
        "match": _Section(
            RouteMatch,
            {
                "host": _optional(_host_pattern),
                "path_prefix": _path_prefix,
                "methods": _optional(_methods),
                "headers": _header_matches,
            },
        ),
        "strip_prefix": _boolean,
        "rate_limit": _rate_limit,
        "cache": _cache,
        "compression": _compression,
        "websocket": _websocket,
        "retries": _retries,
    },
    finish=lambda kwargs, given, path, ctx: _finish_route(kwargs, given, ctx),
)


def _finish_route(kwargs: dict[str, Any], given: set[str], ctx: _Context) -> None:
    if "rate_limit" not in given and "name" in kwargs:
        ctx.rate_limit_inherited.add(kwargs["name"])


# --- Top level --------------------------------------------------------------------------------


def _via_name(value: object, path: str, ctx: _Context) -> str:
    text = _string(value)
    if not _TOKEN.fullmatch(text):
        raise _BadValueError(
            f"expected a token (letters, digits, '-', '.', '_' ...), got {_describe(value)}"
        )
    return text


def _overlaps(a: ListenAddress, b: ListenAddress) -> bool:
    wildcard = ("0.0.0.0", "::")
    return a.port == b.port != 0 and (a.host == b.host or a.host in wildcard or b.host in wildcard)


def _finish_gateway(kwargs: dict[str, Any], given: set[str], path: str, ctx: _Context) -> None:
    if ("server" in given) != ("server" in kwargs) or ("admin" in given) != ("admin" in kwargs):
        return  # an invalid section is reported already; do not compare with a default
    server: ServerConfig = kwargs.get("server", ServerConfig())
    admin: AdminConfig = kwargs.get("admin", AdminConfig())
    for listener, where in zip(server.listeners, ctx.listen_paths, strict=True):
        if _overlaps(listener.listen, admin.listen):
            ctx.problem(
                "admin.listen",
                f"{admin.listen} overlaps {where} ({listener.listen}):"
                " the admin endpoints never share a public port",
            )
            break
    if admin.token is None and not _is_loopback(admin.listen.host):
        ctx.problem(
            "admin.token",
            f"required when admin.listen ({admin.listen}) is not a loopback address",
        )
    routes = kwargs.get("routes")
    if not isinstance(routes, tuple):
        return
    default = server.rate_limit
    if default is not None:
        routes = kwargs["routes"] = tuple(
            dataclasses.replace(route, rate_limit=default)
            if route.name in ctx.rate_limit_inherited
            else route
            for route in routes
        )
    if "redis" not in kwargs and ("redis" not in given):
        if default is not None and default.backend == "redis":
            ctx.problem("server.rate_limit.backend", "'redis' needs the redis section (redis.url)")
        for index, route in enumerate(routes):
            limit = route.rate_limit
            if limit is not None and limit.backend == "redis" and limit is not default:
                ctx.problem(
                    f"routes[{index}].rate_limit.backend",
                    "'redis' needs the redis section (redis.url)",
                )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# --- Listeners: TLS, HTTP/2, PROXY protocol --------------------------------------------------

# Each listener is a socket in every worker and a port the supervisor reserves; more than a few
# is a mistake (a port range written out), and 16 leaves room for any real layout.
MAX_LISTENERS: Final = 16


def _positive_number(value: object, path: str, ctx: _Context) -> float:
    if isinstance(value, _FromEnv) and re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", value):
        value = float(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not value > 0
    ):
        raise _BadValueError(f"expected a number above 0, got {_describe(value)}")
    return float(value)


def _within(convert: Converter, low: int, high: int, bounds: str) -> Converter:
    """``convert``'s number, refused outside ``low``..``high``; ``bounds`` says so in words.

    ``convert`` stays a closure cell, so `unit_fields` still finds a `_size` wrapped this way.
    """

    def within(value: object, path: str, ctx: _Context) -> Any:
        number = convert(value, path, ctx)
        if not low <= number <= high:
            raise _BadValueError(f"must be {bounds}, got {_describe(value)}")
        return number

    return within


def _tls_version(value: object, path: str, ctx: _Context) -> str:
    # YAML reads a bare 1.2 as a float; repr gives it back as written (1.25 stays "1.25").
    text = repr(value) if isinstance(value, float) else _string(value)
    if text not in ("1.2", "1.3"):
        raise _BadValueError(f"expected '1.2' or '1.3', got {_describe(value)}")
    return text


def _ciphers(value: object, path: str, ctx: _Context) -> str:
    text = _string(value)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.set_ciphers(text)
    except ssl.SSLError:
        raise _BadValueError(
            f"OpenSSL selects no cipher from {_describe(value)} (try it with `openssl ciphers`)"
        ) from None
    # "HIGH" or "ALL" alone bring anonymous (aNULL) and unencrypted (eNULL) suites along:
    # harmless with browsers, which never offer them, but never what an edge should accept.
    weak = [
        suite["name"]
        for suite in context.get_ciphers()
        if suite["auth"] == "auth-null" or suite["symmetric"] is None
    ]
    if weak:
        shown = ", ".join(weak[:3]) + (", ..." if len(weak) > 3 else "")
        raise _BadValueError(
            f"selects suites without authentication or encryption ({shown}): add ':!aNULL:!eNULL'"
        )
    return text


_PEM_CERTIFICATE: Final = re.compile(rb"-----BEGIN CERTIFICATE-----")
_PEM_PRIVATE_KEY: Final = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")
# "(_ssl.c:3926)" after OpenSSL's reason says where in CPython it was raised: noise here.
_SSL_SOURCE: Final = re.compile(r"\s*\(_ssl\.c:[0-9]+\)$")


class _KeyIsEncryptedError(Exception):
    """Raised by the password callback: the private key asked for a passphrase."""


def _no_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal, and a worker has none.
    raise _KeyIsEncryptedError


def _check_certificate(cert: str, key: str, path: str, ctx: _Context) -> None:
    """Load ``cert`` and ``key`` as a worker will, each problem named under ``path``.

    A file without the PEM block it should hold is named by its own key; OpenSSL's "PEM lib"
    would not say which of the two it is. The pair is loaded as a worker loads it, so a key
    that does not match its certificate is reported here rather than when a worker starts.
    """
    ok = True
    for name, file, pattern, what in (
        ("cert", cert, _PEM_CERTIFICATE, "PEM certificate ('-----BEGIN CERTIFICATE-----')"),
        ("key", key, _PEM_PRIVATE_KEY, "PEM private key ('-----BEGIN PRIVATE KEY-----')"),
    ):
        try:
            data = Path(file).read_bytes()
        except OSError as exc:
            ctx.problem(_key(path, name), f"cannot read {file!r}: {exc.strerror}")
            ok = False
            continue
        if pattern.search(data) is None:
            ctx.problem(_key(path, name), f"no {what} in {file!r}")
            ok = False
    if not ok:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _KeyIsEncryptedError:
        ctx.problem(
            _key(path, "key"),
            f"{key!r} is encrypted: the gateway reads private keys without a passphrase"
            " (write it out unencrypted, e.g. with `openssl pkey`, readable only by the gateway)",
        )
    except ssl.SSLError as exc:
        reason = _SSL_SOURCE.sub("", str(exc.args[-1]))
        ctx.problem(_key(path, "cert"), f"does not load with its key {key!r}: {reason}")


def _server_name(value: object, path: str, ctx: _Context) -> str:
    # Names compare case-insensitively; a wildcard stands for exactly one leftmost label
    # (RFC 6125 §6.4.3), as the certificates it picks are matched by clients.
    text = _string(value).lower()
    name = text.removeprefix("*.")
    if not _valid_hostname(name):
        raise _BadValueError(
            "expected a host name such as 'api.example.com' or a wildcard such as"
            f" '*.example.com', got {_describe(value)}"
        )
    if name.rsplit(".", 1)[-1].isdigit():
        raise _BadValueError(
            f"SNI never carries an IP address (RFC 6066 §3), got {_describe(value)}"
        )
    return text


def _check_server_names(valid: list[tuple[int, TlsCertificate]], path: str, ctx: _Context) -> None:
    # A name in two entries would leave the certificate it gets to the order of the list.
    first: dict[str, int] = {}
    for index, certificate in valid:
        for position, name in enumerate(certificate.server_names):
            if name in first:
                ctx.problem(
                    f"{path}[{index}].server_names[{position}]",
                    f"{name!r} is already in {path}[{first[name]}].server_names",
                )
            first.setdefault(name, index)


def _finish_tls(kwargs: dict[str, Any], given: set[str], path: str, ctx: _Context) -> None:
    cert = kwargs.pop("cert", None)
    key = kwargs.pop("key", None)
    for name in ("cert", "key"):
        if name not in given:
            ctx.problem(_key(path, name), "missing required key")
    if cert is None or key is None:
        return  # missing, or reported by _ca_file
    _check_certificate(cert, key, path, ctx)
    kwargs["default"] = TlsCertificate(cert=cert, key=key)
    if kwargs.get("ciphers") is not None and kwargs.get("min_version") == "1.3":
        ctx.problem(
            _key(path, "ciphers"),
            "sets the TLS 1.2 suites, and min_version: '1.3' refuses TLS 1.2: remove one",
        )


def _finish_sni(kwargs: dict[str, Any], given: set[str], path: str, ctx: _Context) -> None:
    if "server_names" not in given:
        ctx.problem(_key(path, "server_names"), "missing required key")
    if "cert" in kwargs and "key" in kwargs:
        _check_certificate(kwargs["cert"], kwargs["key"], path, ctx)


_SNI_CERTIFICATE = _Section(
    TlsCertificate,
    {
        "cert": _ca_file,
        "key": _ca_file,
        "server_names": _list_of(_server_name, "server name", check=_no_duplicates("server name ")),
    },
    finish=_finish_sni,
)

_TLS = _Section(
    TlsConfig,
    {
        "sni": _list_of(
            _SNI_CERTIFICATE, "certificate", allow_empty=True, check=_check_server_names
        ),
        "min_version": _tls_version,
        "ciphers": _optional(_ciphers),
    },
    injected=("default",),
    aliases={"cert": _ca_file, "key": _ca_file},
    finish=_finish_tls,
)


def _finish_http2(kwargs: dict[str, Any], given: set[str], path: str, ctx: _Context) -> None:
    if kwargs.get("h2c") and kwargs.get("enabled") is False:
        ctx.problem(_key(path, "h2c"), "h2c is HTTP/2 over cleartext: it needs enabled: true")


_HTTP2 = _Section(
    Http2Config,
    {
        "enabled": _boolean,
        "h2c": _boolean,
        # Each open stream holds a request's state and a receive window.
        "max_concurrent_streams": _within(_count, 1, 10_000, "from 1 to 10000"),
        # Below 4 KiB ordinary browser requests (cookies) no longer fit; the decoded list is
        # held whole, so it is bounded like server.limits.
        "max_header_list_size": _within(_size, 4 * KIB, 16 * MIB, "from 4KiB to 16MiB"),
        # RFC 9113 §6.5.2: 2^14 to 2^24-1.
        "max_frame_size": _within(
            _size, 16 * KIB, 16 * MIB - 1, "from 16KiB to 16777215B (RFC 9113 §6.5.2)"
        ),
        # RFC 9113 §6.5.2 allows 1 byte to 2^31-1; a window below 1 KiB turns a request body
        # into a WINDOW_UPDATE for every few bytes.
        "initial_window_size": _within(
            _size, KIB, 2**31 - 1, "from 1KiB to 2147483647B (2^31-1, RFC 9113 §6.5.2)"
        ),
        "max_requests_per_connection": _count,
        "reset_budget": _Section(ResetBudget, {"burst": _count, "per_second": _positive_number}),
    },
    finish=_finish_http2,
)


def _finish_listener(kwargs: dict[str, Any], given: set[str], path: str, ctx: _Context) -> None:
    # A tls block with problems of its own still says this listener is meant to serve TLS.
    has_tls = kwargs.get("tls") is not None or ("tls" in given and "tls" not in kwargs)
    http2: Http2Config = kwargs.get("http2", Http2Config())
    if has_tls and http2.h2c:
        ctx.problem(
            _key(path, "http2.h2c"),
            "h2c is HTTP/2 over cleartext; a TLS listener negotiates h2 by ALPN",
        )
    if kwargs.get("redirect_to_https"):
        if has_tls:
            ctx.problem(
                _key(path, "redirect_to_https"),
                "this listener has tls: it serves https itself (redirect from a cleartext one)",
            )
        elif ctx.any_tls is False:
            ctx.problem(
                _key(path, "redirect_to_https"),
                "no listener has tls: there is no https listener to redirect to",
            )
    if kwargs.get("proxy_protocol") and ctx.trusted_proxies is False:
        ctx.problem(
            _key(path, "proxy_protocol"),
            "needs server.trusted_proxies: the PROXY header is accepted only from a trusted"
            " proxy, so every connection would be refused",
        )


_LISTENER = _Section(
    ListenerConfig,
    {
        "listen": _listen,
        "tls": _optional(_TLS),
        "http2": _HTTP2,
        "proxy_protocol": _boolean,
        "redirect_to_https": _boolean,
    },
    finish=_finish_listener,
)


def _check_listeners(valid: list[tuple[int, ListenerConfig]], path: str, ctx: _Context) -> None:
    for later, (index, listener) in enumerate(valid):
        for other, earlier in valid[:later]:
            if _overlaps(listener.listen, earlier.listen):
                ctx.problem(
                    f"{path}[{index}].listen",
                    f"{listener.listen} overlaps {path}[{other}].listen ({earlier.listen})",
                )
                break


def _finish_server(kwargs: dict[str, Any], given: set[str], path: str, ctx: _Context) -> None:
    listen = kwargs.pop("listen", None)
    if "listen" in given and "listeners" in given:
        ctx.problem(
            _key(path, "listeners"),
            "give either server.listen (one plain listener) or server.listeners, not both",
        )
        return
    if listen is not None:
        kwargs["listeners"] = (ListenerConfig(listen),)
    elif "listeners" in kwargs:
        where = _key(path, "listeners")
        ctx.listen_paths = [f"{where}[{i}].listen" for i in range(len(kwargs["listeners"]))]


# --- The whole file --------------------------------------------------------------------------

_GATEWAY = _Section(
    GatewayConfig,
    {
        "upstreams": _upstreams,
        "routes": _list_of(_ROUTE, "route", check=_check_shadowing),
        "server": _Section(
            ServerConfig,
            {
                "listeners": _list_of(
                    _LISTENER, "listener", most=MAX_LISTENERS, check=_check_listeners
                ),
                "workers": _workers,
                "trusted_proxies": _list_of(
                    _network, "address", plural="addresses", allow_empty=True
                ),
                "limits": _Section(
                    ServerLimits,
                    {
                        "max_body": _size,
                        "max_header_bytes": _size,
                        "max_headers": _count,
                        "max_line": _size,
                        "max_requests_per_connection": _count,
                        "max_websockets": _count,
                        "max_connections": _count,
                        "max_connections_per_ip": _optional(_count),
                    },
                ),
                "timeouts": _Section(
                    ServerTimeouts,
                    {
                        "header_read": _duration,
                        "keepalive": _duration,
                        "body_progress": _duration,
                        "send": _duration,
                        "drain": _duration,
                    },
                ),
                "via_name": _via_name,
                "rate_limit": _rate_limit,
            },
            aliases={"listen": _listen},
            finish=_finish_server,
        ),
        "admin": _Section(
            AdminConfig, {"listen": _listen, "token": _optional(_token), "metrics": _boolean}
        ),
        "logging": _Section(
            LoggingConfig,
            {"level": _choice("debug", "info", "warning", "error"), "access_log": _boolean},
        ),
        "redis": _Section(RedisConfig, {"url": _redis_url}),
        "cache": _Section(CacheSettings, {"max_bytes": _size}),
    },
    finish=_finish_gateway,
)


def unit_fields() -> dict[tuple[type[Any], str], Literal["duration", "size"]]:
    """The model fields written with a unit: ``(dataclass, field name) -> "duration" | "size"``.

    Read from the tables above (through wrappers such as `_optional` and `_list_of`), so a
    field added with `_duration` or `_size` is known to `gateway.config.describe` at once.
    """
    kinds: dict[tuple[type[Any], str], Literal["duration", "size"]] = {}
    seen: set[int] = set()

    def walk(convert: object, owner: tuple[type[Any], str] | None) -> None:
        if convert in (_duration, _duration_or_zero, _size, _size_or_zero):
            if owner is not None:
                kinds[owner] = "size" if convert in (_size, _size_or_zero) else "duration"
            return
        if id(convert) in seen:  # a converter shared by several fields, or a cycle
            return
        seen.add(id(convert))
        if isinstance(convert, _Section):
            for key, child in convert.schema.items():
                walk(child, (convert.cls, key))
        else:
            for cell in getattr(convert, "__closure__", None) or ():
                walk(cell.cell_contents, owner)

    # `_upstreams`, `_rate_limit` and `_retries` reach their sections as globals, not through
    # closures.
    for root in (_GATEWAY, _UPSTREAM, _RATE_LIMIT, _CACHE, _COMPRESSION, _WEBSOCKET, _RETRIES):
        walk(root, None)
    return kinds
