"""The primary cache key (RFC 9111 §2): method, scheme, host, port, and the target as sent.

Only GET responses are stored (HEAD is answered from them), so the method part is always GET
today; it stays in the key so that a second cacheable method could never share entries. The
host is the lower-cased one the router saw, the port the authority's or the scheme's default,
and the target (path and query) the exact bytes received: two spellings of one URI are two
keys, a miss rather than a wrong hit. Fields the key leaves out are either in Vary (secondary
keys, `gateway.cache.policy`) or cannot change the upstream's answer through this gateway
(X-Forwarded-Host from an untrusted client is replaced, `gateway.headers`).
"""

from __future__ import annotations

from typing import Final

from gateway.messages import ProxyRequest

_DEFAULT_PORTS: Final = {"http": b"80", "https": b"443"}


def authority_port(authority: bytes, scheme: str) -> bytes:
    """The port of a Host value (``host``, ``host:port``, ``[v6]:port``), or the default."""
    colon = authority.rfind(b":")
    if colon > authority.rfind(b"]") and authority[colon + 1 :].isdigit():
        return authority[colon + 1 :].lstrip(b"0") or b"0"
    return _DEFAULT_PORTS.get(scheme, b"80")


def origin(scheme: str, host: str, port: bytes) -> bytes:
    return b"%s://%s:%s" % (
        scheme.encode("ascii"),
        host.encode("idna" if not host.isascii() else "ascii"),
        port,
    )


def primary_key(request: ProxyRequest) -> bytes:
    """The key of the stored GET responses for ``request`` (GET or HEAD)."""
    port = authority_port(request.authority, request.scheme)
    return b"GET " + origin(request.scheme, request.host, port) + request.target


def key_for_url(url: str) -> bytes | None:
    """The key of an absolute http(s) URL (for purges), or None when it is not one."""
    for scheme in ("http", "https"):
        prefix = scheme + "://"
        if url[: len(prefix)].lower() == prefix:
            rest = url[len(prefix) :]
            slash = rest.find("/")
            authority, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
            if not authority or any(c in authority for c in "@ \t"):
                return None
            raw = authority.encode("idna" if not authority.isascii() else "ascii").lower()
            port = authority_port(raw, scheme)
            host = raw.rsplit(b":", 1)[0] if raw.rfind(b":") > raw.rfind(b"]") else raw
            return b"GET " + origin(scheme, host.decode("ascii"), port) + target.encode("utf-8")
    return None


def target_of(key: bytes) -> bytes:
    """The target (path and query) part of a key."""
    scheme_end = key.find(b"://")
    slash = key.find(b"/", scheme_end + 3)
    return key[slash:] if slash >= 0 else b"/"
