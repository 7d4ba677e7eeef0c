"""h2spec `http2/3.5`: the HTTP/2 connection preface (RFC 9113 §3.4).

On an h2c listener the preface is also what selects HTTP/2 (prior knowledge, RFC 9113 §3.3):
bytes that are not the preface are HTTP/1.1 there. A mangled preface can only reach the HTTP/2
parser after ALPN chose h2 on TLS, which is where 3.5/2 is checked as h2spec checks it.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from hyperframe.frame import SettingsFrame

from gateway.config.model import TlsCertificate, TlsConfig
from tests.conformance.conftest import Connect, Launch
from tests.conformance.h2client import PREFACE, ErrorCodes, RawH2Client
from tests.harness import raw_exchange


async def test_3_5_1_preface_then_settings_first(connect: Connect) -> None:
    """RFC 9113 §3.4: the server's preface is a SETTINGS frame, before any other frame, and
    the client's SETTINGS is acknowledged."""
    client = await connect(handshake=False)
    client.send(PREFACE, SettingsFrame(0))
    first = await client.read_frame()
    assert isinstance(first, SettingsFrame)
    assert "ACK" not in first.flags
    # What the gateway announces is its configuration (Http2Config defaults).
    assert first.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 100
    assert first.settings[SettingsFrame.ENABLE_PUSH] == 0
    while True:
        frame = await client.read_frame()
        if isinstance(frame, SettingsFrame):
            assert "ACK" in frame.flags
            break


@pytest.fixture
async def tls_client(launch: Launch, tmp_path: Path) -> AsyncIterator[RawH2Client]:
    """A TLS connection on which ALPN chose h2, nothing sent yet."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    gateway = await launch(h2c=False, tls=TlsConfig(TlsCertificate(str(cert), str(key))))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2"])
    client = await RawH2Client.open(gateway.addresses[0][1], ssl=context)
    ssl_object = client.writer.get_extra_info("ssl_object")
    assert ssl_object.selected_alpn_protocol() == "h2"
    yield client
    await client.close()


async def test_3_5_2_invalid_preface_over_tls_is_protocol_error(tls_client: RawH2Client) -> None:
    """RFC 9113 §3.4: a client preface that is not the 24 expected octets is a connection
    error of type PROTOCOL_ERROR."""
    tls_client.send(b"INVALID CONNECTION PREFACE\r\n\r\n")
    await tls_client.expect_connection_error(ErrorCodes.PROTOCOL_ERROR)


async def test_3_5_1_preface_over_tls_with_alpn_h2(tls_client: RawH2Client) -> None:
    """RFC 9113 §3.2: after ALPN h2 the connection is HTTP/2 from its first octet: a GET is
    answered with 200 from the upstream."""
    await tls_client.handshake()
    tls_client.send(tls_client.headers(1))
    assert (await tls_client.response(1)).status == 200


async def test_3_5_2_mangled_preface_on_h2c_listener_is_not_http2(h2c_port: int) -> None:
    """RFC 9113 §3.3: only the exact preface selects HTTP/2 on a cleartext listener; anything
    else is read as HTTP/1.1, which refuses this with 400 and no HTTP/2 frame."""
    answer = await raw_exchange(h2c_port, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
