"""TLS termination: the server-side SSL contexts of a listener, with ALPN and SNI.

A listener's contexts are built when its worker starts and again on every reload (SIGHUP), from
the files the config names: a renewed certificate reaches new connections without a restart,
while established connections keep the context they were accepted with.
"""

from __future__ import annotations

import ssl
from typing import Final

from gateway.config.model import TlsCertificate, TlsConfig

# Mozilla's "intermediate" TLS 1.2 list (ssl-config.mozilla.org, 2024): forward-secret AEAD
# suites only, which also keeps TLS 1.2 clear of RFC 9113 Appendix A's list for h2.
INTERMEDIATE_CIPHERS: Final = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)

_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _context(tls: TlsConfig, certificate: TlsCertificate, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.set_ciphers(tls.ciphers or INTERMEDIATE_CIPHERS)
    # No TLS-level compression (CRIME), no renegotiation (a client-triggered CPU cost), and
    # the server's cipher order.
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    )
    # A key that became encrypted after validation fails here rather than OpenSSL prompting
    # for a passphrase on the worker's terminal.
    context.load_cert_chain(certificate.cert, certificate.key, password=_no_password)
    context.set_alpn_protocols(alpn)
    return context


def _no_password() -> bytes:
    raise ssl.SSLError("the private key is encrypted: give the gateway an unencrypted key")


class ServerTls:
    """The contexts of one TLS listener: the default certificate and those chosen by SNI."""

    __slots__ = ("_exact", "_wildcard", "context")

    def __init__(self, tls: TlsConfig, *, http2: bool) -> None:
        # ALPN (RFC 7301): h2 first when the listener serves HTTP/2; a client offering
        # neither gets HTTP/1.1 (no ALPN answer), as nginx does.
        alpn = ["h2", "http/1.1"] if http2 else ["http/1.1"]
        self.context = _context(tls, tls.default, alpn)
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: dict[str, ssl.SSLContext] = {}
        for certificate in tls.sni:
            context = _context(tls, certificate, alpn)
            for name in certificate.server_names:
                if name.startswith("*."):
                    self._wildcard.setdefault(name[2:], context)
                else:
                    self._exact.setdefault(name, context)
        if tls.sni:
            self.context.sni_callback = self._select

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        """The context serving ``server_name`` (exact name first, then a one-label wildcard,
        then the default)."""
        if server_name:
            name = server_name.lower().rstrip(".")
            context = self._exact.get(name)
            if context is not None:
                return context
            _, _, parent = name.partition(".")
            context = self._wildcard.get(parent)
            if context is not None:
                return context
        return self.context

    def _select(
        self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        chosen = self.context_for(server_name)
        if chosen is not self.context:
            sock.context = chosen
