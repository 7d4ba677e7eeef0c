"""The client-side TLS context for https upstream targets.

Built once per pool from ``UpstreamTLS``; the pool passes the target host as
``server_hostname`` so SNI and the certificate name check use it.
"""

from __future__ import annotations

import ssl

from gateway.config.model import UpstreamTLS


def client_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """A verifying context (the system store, or ``ca_file``) unless ``verify`` is off."""
    # create_default_context: TLS 1.2 minimum, hostname check and CERT_REQUIRED on.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    if not tls.verify:
        # Order matters: check_hostname must be off before verify_mode can drop to NONE.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    # The transport speaks HTTP/1.1 only; say so, so an ALPN-aware server never picks h2.
    context.set_alpn_protocols(["http/1.1"])
    return context
