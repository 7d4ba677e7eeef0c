"""HTTP/2 request field rules (RFC 9113 §8.2, §8.3), pure: checked once per request by
`gateway.downstream.h2codec` (compiled with mypyc; h2's own checks are off, see there)."""

from __future__ import annotations

import re
from typing import Final

# RFC 9110 §5.1: a field name is a token; RFC 9113 §8.2.1: lower-case only in HTTP/2.
_FIELD_NAME: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
# RFC 9113 §8.2.1: no NUL, CR or LF in a value, and no leading or trailing space or tab.
_BAD_VALUE: Final = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
_DIGITS: Final = re.compile(rb"[0-9]{1,18}")
# RFC 9113 §8.2.2: connection-specific fields make a request malformed.
_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# RFC 9113 §8.3.1; :protocol (RFC 8441) is not offered (no SETTINGS_ENABLE_CONNECT_PROTOCOL).
_REQUEST_PSEUDO: Final = frozenset({b":method", b":scheme", b":authority", b":path"})


def request_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a request's header list is malformed (RFC 9113 §8.2, §8.3), or None."""
    seen: set[bytes] = set()
    regular = False
    method = scheme = path = authority = host = length = None
    for name, value in headers:
        if _BAD_VALUE.search(value) is not None:
            return f"invalid value in {name!r}"
        if name[:1] == b":":
            if regular:
                return f"pseudo-header {name!r} after a regular field"
            if name not in _REQUEST_PSEUDO:
                return f"pseudo-header {name!r} not allowed in a request"
            if name in seen:
                return f"pseudo-header {name!r} repeated"
            seen.add(name)
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":scheme":
                scheme = value
            else:
                authority = value
            continue
        regular = True
        if _FIELD_NAME.fullmatch(name) is None:
            return f"invalid field name {name!r}"
        if name in _CONNECTION_SPECIFIC:
            return f"connection-specific field {name!r}"
        if name == b"te":
            if value.lower() != b"trailers":
                return "TE other than trailers"
        elif name == b"host":
            if host is not None:
                return "more than one Host"
            host = value
        elif name == b"content-length":
            if _DIGITS.fullmatch(value) is None or (length is not None and value != length):
                return "invalid Content-Length"
            length = value
    if method is None:
        return "missing :method"
    if method == b"CONNECT":
        # §8.5: no :scheme or :path (the gateway then refuses CONNECT itself).
        return None if scheme is None and path is None else "CONNECT with :scheme or :path"
    if scheme is None or not path:
        return "missing :scheme or :path"
    if authority is None and host is None:
        return "missing :authority and Host"
    if authority is not None and host is not None and authority != host:
        return ":authority and Host differ"
    return None


def trailer_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a trailer section is malformed (no pseudo-header fields, RFC 9113 §8.1), or None."""
    for name, value in headers:
        if _FIELD_NAME.fullmatch(name) is None:
            return f"invalid trailer field name {name!r}"
        if _BAD_VALUE.search(value) is not None:
            return f"invalid value in trailer {name!r}"
    return None
