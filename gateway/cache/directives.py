"""Cache-Control (RFC 9111 §5.2) and the stale-* extensions (RFC 5861), parsed once per message.

``cache-directive = token [ "=" ( token / quoted-string ) ]``, case-insensitive names, spread
over any number of comma-separated field lines. What the cache does with odd input, always
the conservative side:

- a freshness directive (max-age, s-maxage) with a value that is not delta-seconds, or given
  twice with different values, marks the response's freshness invalid: it is stale
  (RFC 9111 §4.2.1, "caches are encouraged to consider responses that have invalid freshness
  information to be stale");
- delta-seconds beyond 2**31 read as 2**31 (§1.2.2);
- the qualified forms of ``private`` and ``no-cache`` keep their field names: the cache strips
  those fields before storing (§5.2.2.4, §5.2.2.7), so they are never served from it;
- unknown directives are ignored (§5.2.3).
"""

from __future__ import annotations

from typing import Final

from gateway.messages import Headers

# RFC 9111 §1.2.2: the greatest delta-seconds a cache needs to represent.
DELTA_MAX: Final = 2**31
_TCHAR: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def parse_directives(values: list[bytes]) -> list[tuple[str, str | None]]:
    """The directives of Cache-Control field values, in order: (lower-case name, argument).

    A malformed element is skipped up to the next comma; the rest still counts."""
    directives: list[tuple[str, str | None]] = []
    for value in values:
        position, end = 0, len(value)
        while position < end:
            # Skip separators and whitespace before a directive.
            while position < end and value[position] in b", \t":
                position += 1
            start = position
            while position < end and value[position] in _TCHAR:
                position += 1
            name = value[start:position].decode("ascii").lower()
            while position < end and value[position] in b" \t":
                position += 1
            argument: str | None = None
            good = bool(name)
            if position < end and value[position] == ord("="):
                position += 1
                while position < end and value[position] in b" \t":
                    position += 1
                if position < end and value[position] == ord('"'):
                    argument, position, closed = _quoted(value, position + 1)
                    good = good and closed
                else:
                    start = position
                    while position < end and value[position] in _TCHAR:
                        position += 1
                    argument = value[start:position].decode("ascii")
                    good = good and bool(argument)
                while position < end and value[position] in b" \t":
                    position += 1
            if position < end and value[position] != ord(","):
                good = False
                while position < end and value[position] != ord(","):
                    position += 1
            if good:
                directives.append((name, argument))
    return directives


def _quoted(value: bytes, position: int) -> tuple[str, int, bool]:
    """A quoted-string's content from just after its opening quote; its end; whether closed."""
    out = bytearray()
    end = len(value)
    while position < end:
        byte = value[position]
        if byte == ord('"'):
            return out.decode("latin-1"), position + 1, True
        if byte == ord("\\") and position + 1 < end:
            position += 1
            byte = value[position]
        out.append(byte)
        position += 1
    return out.decode("latin-1"), position, False


def _field_names(argument: str | None) -> tuple[bytes, ...]:
    if not argument:
        return ()
    names = (name.strip().lower() for name in argument.split(","))
    return tuple(name.encode("ascii", "replace") for name in names if name)


class CacheControl:
    """The directives a cache acts on, from a request's or a response's Cache-Control."""

    __slots__ = (
        "freshness_invalid",
        "immutable",
        "max_age",
        "max_stale",
        "min_fresh",
        "must_revalidate",
        "must_understand",
        "no_cache",
        "no_cache_fields",
        "no_store",
        "no_transform",
        "only_if_cached",
        "private",
        "private_fields",
        "proxy_revalidate",
        "public",
        "s_maxage",
        "stale_if_error",
        "stale_while_revalidate",
    )

    def __init__(self) -> None:
        self.max_age: int | None = None
        self.s_maxage: int | None = None
        # A freshness directive could not be read: the response is stale.
        self.freshness_invalid = False
        self.no_cache = False
        self.no_cache_fields: tuple[bytes, ...] = ()
        self.no_store = False
        self.private = False
        self.private_fields: tuple[bytes, ...] = ()
        self.public = False
        self.must_revalidate = False
        self.proxy_revalidate = False
        self.must_understand = False
        self.no_transform = False
        self.immutable = False
        # Request directives. max_stale: None absent, DELTA_MAX for "any staleness".
        self.max_stale: int | None = None
        self.min_fresh: int | None = None
        self.only_if_cached = False
        # RFC 5861, in seconds; None when absent.
        self.stale_while_revalidate: int | None = None
        self.stale_if_error: int | None = None

    @classmethod
    def parse(cls, values: list[bytes]) -> CacheControl:
        control = cls()
        for name, argument in parse_directives(values):
            control._apply(name, argument)
        return control

    def _apply(self, name: str, argument: str | None) -> None:
        if name == "max-age":
            self.max_age = self._freshness(self.max_age, argument)
        elif name == "s-maxage":
            self.s_maxage = self._freshness(self.s_maxage, argument)
        elif name == "no-cache":
            if argument:
                self.no_cache_fields += _field_names(argument)
            else:
                self.no_cache = True
        elif name == "no-store":
            self.no_store = True
        elif name == "private":
            if argument:
                self.private_fields += _field_names(argument)
            else:
                self.private = True
        elif name == "public":
            self.public = True
        elif name == "must-revalidate":
            self.must_revalidate = True
        elif name == "proxy-revalidate":
            self.proxy_revalidate = True
        elif name == "must-understand":
            self.must_understand = True
        elif name == "no-transform":
            self.no_transform = True
        elif name == "immutable":
            self.immutable = True
        elif name == "max-stale":
            # Without a value: any staleness (RFC 9111 §5.2.1.2). An unreadable one: none.
            seconds = DELTA_MAX if argument is None else delta_seconds(argument)
            self.max_stale = 0 if seconds is None else seconds
        elif name == "min-fresh":
            seconds = delta_seconds(argument)
            # Unreadable: ask for more freshness than anything has (conservative).
            self.min_fresh = DELTA_MAX if seconds is None else seconds
        elif name == "only-if-cached":
            self.only_if_cached = True
        elif name == "stale-while-revalidate":
            self.stale_while_revalidate = delta_seconds(argument)
        elif name == "stale-if-error":
            self.stale_if_error = delta_seconds(argument)

    def _freshness(self, current: int | None, argument: str | None) -> int | None:
        seconds = delta_seconds(argument)
        if seconds is None or (current is not None and current != seconds):
            self.freshness_invalid = True
            return current if seconds is None else min(seconds, current or 0)
        return seconds


def delta_seconds(argument: str | None) -> int | None:
    """RFC 9111 §1.2.2 delta-seconds (1*DIGIT), capped at 2**31; None when not one."""
    if not argument or not argument.isascii() or not argument.isdigit():
        return None
    return min(int(argument), DELTA_MAX)


def cache_control(headers: Headers) -> CacheControl:
    """The Cache-Control of a message's header fields."""
    return CacheControl.parse([v for k, v in headers if k.lower() == b"cache-control"])
