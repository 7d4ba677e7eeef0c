"""Listeners: TLS termination with ALPN and SNI, h2c, redirect_to_https, PROXY protocol v1/v2,
certificate reloads, and GOAWAY on drain and reload. Real sockets, certificates made here."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
import trustme

from gateway.app import RunningGateway, start
from gateway.config.model import (
    Http2Config,
    ListenAddress,
    ListenerConfig,
    RateLimitConfig,
    RouteConfig,
    ServerConfig,
    TlsCertificate,
    TlsConfig,
)
from gateway.ratelimit.rate import parse_rate
from tests.h2client import H2Client, client_tls_context
from tests.harness import echo_app, fields_of, gateway_config, serve_app, upstream_to

ANY = ListenAddress("127.0.0.1", 0)
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@dataclass
class Certificates:
    ca: trustme.CA
    tls: TlsConfig
    directory: Path

    def client(self, alpn: Sequence[str] = ("h2", "http/1.1")) -> ssl.SSLContext:
        return client_tls_context(self.ca.cert_pem.bytes(), alpn)


def _issue(ca: trustme.CA, directory: Path, name: str, *hosts: str) -> TlsCertificate:
    cert = ca.issue_cert(*hosts)
    cert.cert_chain_pems[0].write_to_path(directory / f"{name}.crt")
    cert.private_key_pem.write_to_path(directory / f"{name}.key")
    return TlsCertificate(str(directory / f"{name}.crt"), str(directory / f"{name}.key"))


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    ca = trustme.CA()
    default = _issue(ca, tmp_path, "default", "localhost", "127.0.0.1")
    api = _issue(ca, tmp_path, "api", "api.example.test")
    api = replace(api, server_names=("api.example.test",))
    return Certificates(ca, TlsConfig(default=default, sni=(api,)), tmp_path)


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    async with serve_app(echo_app()) as port:
        yield port


@pytest.fixture
async def launch(
    upstream: int,
) -> AsyncIterator[list[RunningGateway]]:
    started: list[RunningGateway] = []
    yield started
    for gateway in started:
        await gateway.drain(1.0)


async def _start(
    started: list[RunningGateway],
    upstream: int,
    *listeners: ListenerConfig,
    routes: Sequence[RouteConfig] | None = None,
    trusted: bool = True,
) -> RunningGateway:
    server = ServerConfig(listeners=listeners, trusted_proxies=LOOPBACK if trusted else ())
    gateway = await start(
        gateway_config([upstream_to("up", upstream)], routes=routes, server=server)
    )
    started.append(gateway)
    return gateway


def _tls_listener(certificates: Certificates, **http2: object) -> ListenerConfig:
    return ListenerConfig(ANY, tls=certificates.tls, http2=Http2Config(**http2))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- TLS, ALPN


async def test_alpn_selects_h2_when_the_client_offers_it(
    launch: list[RunningGateway], upstream: int, certificates: Certificates
) -> None:
    gateway = await _start(launch, upstream, _tls_listener(certificates))
    port = gateway.addresses[0][1]
    async with H2Client(
        port, ssl_context=certificates.client(), server_hostname="localhost"
    ) as client:
        assert client.alpn == "h2"
        response = await client.get("/over/h2?x=1")
    assert response.status == 200
    echoed = json.loads(response.body)
    assert echoed["target"] == "/over/h2?x=1"
    assert echoed["version"] == "1.1"  # upstreams stay HTTP/1.1
    assert fields_of(echoed, "X-Forwarded-Proto") == ["https"]
    assert fields_of(echoed, "Via") == ["2 gateway"]
    # Connection-specific fields never reach an HTTP/2 client (RFC 9113 §8.2.2).
    assert response.header("connection") is None
    assert response.header("keep-alive") is None
    assert response.headers_named("set-cookie") == ["a=1", "b=2"]


@pytest.mark.parametrize("offer", [("http/1.1",), ()], ids=["http1.1-only", "no-alpn"])
async def test_alpn_falls_back_to_http11(
    launch: list[RunningGateway],
    upstream: int,
    certificates: Certificates,
    offer: tuple[str, ...],
) -> None:
    gateway = await _start(launch, upstream, _tls_listener(certificates))
    port = gateway.addresses[0][1]
    context = certificates.client(offer)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() in (None, "http/1.1")
        writer.write(b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")


async def test_a_listener_with_http2_off_offers_only_http11(
    launch: list[RunningGateway], upstream: int, certificates: Certificates
) -> None:
    gateway = await _start(launch, upstream, _tls_listener(certificates, enabled=False))
    port = gateway.addresses[0][1]
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=certificates.client(), server_hostname="localhost"
    )
    try:
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        writer.write(b"GET /plain HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")


async def test_sni_selects_the_certificate_for_the_name(
    launch: list[RunningGateway], upstream: int, certificates: Certificates
) -> None:
    gateway = await _start(launch, upstream, _tls_listener(certificates))
    port = gateway.addresses[0][1]

    async def served_names(server_name: str) -> list[str]:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=certificates.client(), server_hostname=server_name
        )
        try:
            peer = writer.get_extra_info("peercert")
            return [value for kind, value in peer["subjectAltName"] if kind == "DNS"]
        finally:
            writer.close()

    assert await served_names("api.example.test") == ["api.example.test"]
    assert await served_names("localhost") == ["localhost"]


async def test_a_reload_serves_a_renewed_certificate_to_new_connections(
    launch: list[RunningGateway], upstream: int, certificates: Certificates
) -> None:
    gateway = await _start(launch, upstream, _tls_listener(certificates))
    port = gateway.addresses[0][1]
    old_client = certificates.client()
    async with H2Client(port, ssl_context=old_client, server_hostname="localhost") as before:
        assert (await before.get("/")).status == 200
        # The files are replaced by a certificate from another CA, then the config reloads
        # (what SIGHUP does in a worker).
        renewed = trustme.CA()
        _issue(renewed, certificates.directory, "default", "localhost", "127.0.0.1")
        gateway.reload(gateway.config)
        # The connection opened before is told to go away (GOAWAY NO_ERROR), gracefully.
        await asyncio.wait_for(before.closed.wait(), 5)
        assert before.goaway is not None
        assert before.goaway[0] == 0
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection(
            "127.0.0.1", port, ssl=certificates.client(), server_hostname="localhost"
        )
    new_client = client_tls_context(renewed.cert_pem.bytes())
    async with H2Client(port, ssl_context=new_client, server_hostname="localhost") as after:
        assert (await after.get("/")).status == 200


# ------------------------------------------------------------------------- h2c, redirect


async def test_h2c_prior_knowledge_and_http11_share_a_cleartext_listener(
    launch: list[RunningGateway], upstream: int
) -> None:
    gateway = await _start(launch, upstream, ListenerConfig(ANY, http2=Http2Config(h2c=True)))
    port = gateway.addresses[0][1]
    async with H2Client(port) as client:
        responses = await asyncio.gather(*(client.get(f"/h2c/{i}") for i in range(20)))
    assert [json.loads(r.body)["target"] for r in responses] == [f"/h2c/{i}" for i in range(20)]
    assert all(fields_of(json.loads(r.body), "X-Forwarded-Proto") == ["http"] for r in responses)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/h1") as response:
            assert response.status == 200
            assert (await response.json())["target"] == "/h1"


async def test_redirect_to_https_points_at_the_tls_listener(
    launch: list[RunningGateway], upstream: int, certificates: Certificates
) -> None:
    gateway = await _start(
        launch,
        upstream,
        _tls_listener(certificates),
        ListenerConfig(ANY, redirect_to_https=True),
    )
    tls_port, plain_port = (address[1] for address in gateway.addresses)
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"http://127.0.0.1:{plain_port}/a/b?c=d",
            headers={"Host": "shop.example.test"},
            allow_redirects=False,
        ) as response:
            assert response.status == 308
            assert response.headers["Location"] == f"https://shop.example.test:{tls_port}/a/b?c=d"
            body = await response.json()
    assert body["error"] == "redirect_to_https"
    assert body["request_id"] == response.headers["X-Request-ID"]


# -------------------------------------------------------------------------- PROXY protocol


def _proxy_v1(source: str, port: int = 40000) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    destination = "::1" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {source} {destination} {port} 8080\r\n".encode()


def _proxy_v2(source: str, port: int = 40000) -> bytes:
    address = ipaddress.ip_address(source)
    if address.version == 4:
        block = address.packed + bytes(4) + struct.pack("!HH", port, 8080)
        family = 0x11
    else:
        block = address.packed + bytes(16) + struct.pack("!HH", port, 8080)
        family = 0x21
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, family]) + struct.pack("!H", len(block)) + block


async def _raw(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the gateway closes; b"" when it closed without answering
    (a close with the client's bytes unread is a reset, which is also no answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def _echoed(response: bytes) -> dict[str, object]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return json.loads(body)  # type: ignore[no-any-return]


@pytest.mark.parametrize("encode", [_proxy_v1, _proxy_v2], ids=["v1", "v2"])
@pytest.mark.parametrize("source", ["203.0.113.7", "2001:db8::7"])
async def test_a_trusted_proxy_header_names_the_client(
    launch: list[RunningGateway], upstream: int, encode: object, source: str
) -> None:
    gateway = await _start(launch, upstream, ListenerConfig(ANY, proxy_protocol=True))
    port = gateway.addresses[0][1]
    header = encode(source)  # type: ignore[operator]
    request = b"GET /who HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    echoed = _echoed(await _raw(port, header + request))
    assert fields_of(echoed, "X-Forwarded-For") == [source]


async def test_an_untrusted_peer_on_a_proxy_listener_is_refused(
    launch: list[RunningGateway], upstream: int
) -> None:
    gateway = await _start(
        launch, upstream, ListenerConfig(ANY, proxy_protocol=True), trusted=False
    )
    port = gateway.addresses[0][1]
    request = b"GET /who HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    # With a header or without, the connection closes with no answer: only a trusted proxy
    # may say who the client is.
    assert await _raw(port, _proxy_v1("203.0.113.7") + request) == b""
    assert await _raw(port, request) == b""


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"PROXY TCP4 300.0.0.1 127.0.0.1 1 2\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x12\x00\x0c" + bytes(12),  # UDP
    ],
    ids=["no-header", "bad-v1-address", "v2-udp"],
)
async def test_a_trusted_peer_without_a_valid_header_is_refused(
    launch: list[RunningGateway], upstream: int, data: bytes
) -> None:
    gateway = await _start(launch, upstream, ListenerConfig(ANY, proxy_protocol=True))
    assert await _raw(gateway.addresses[0][1], data) == b""


async def test_proxy_header_then_tls_then_h2(
    launch: list[RunningGateway], upstream: int, certificates: Certificates
) -> None:
    listener = replace(_tls_listener(certificates), proxy_protocol=True)
    gateway = await _start(launch, upstream, listener)
    port = gateway.addresses[0][1]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(_proxy_v2("198.51.100.9"))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=certificates.client(("http/1.1",)), server_hostname="localhost"
    )
    try:
        writer.write(b"GET /tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        echoed = _echoed(await asyncio.wait_for(reader.read(), 5))
    finally:
        writer.close()
    assert fields_of(echoed, "X-Forwarded-For") == ["198.51.100.9"]
    assert fields_of(echoed, "X-Forwarded-Proto") == ["https"]


async def test_proxy_header_then_h2c(launch: list[RunningGateway], upstream: int) -> None:
    listener = ListenerConfig(ANY, proxy_protocol=True, http2=Http2Config(h2c=True))
    gateway = await _start(launch, upstream, listener)
    port = gateway.addresses[0][1]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(_proxy_v1("192.0.2.44"))
    client = H2Client(port)
    client._reader, client._writer = await asyncio.open_connection(sock=sock)
    client._conn.initiate_connection()
    client._flush()
    client._task = asyncio.get_running_loop().create_task(client._read())
    try:
        response = await client.get("/h2c-proxied")
    finally:
        await client.close()
    assert fields_of(json.loads(response.body), "X-Forwarded-For") == ["192.0.2.44"]


async def test_rate_limits_key_on_the_address_the_proxy_names(
    launch: list[RunningGateway], upstream: int
) -> None:
    route = RouteConfig(
        name="limited",
        upstream="up",
        rate_limit=RateLimitConfig(rate=parse_rate("1/minute"), burst=1),
    )
    gateway = await _start(
        launch, upstream, ListenerConfig(ANY, proxy_protocol=True), routes=[route]
    )
    port = gateway.addresses[0][1]
    request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"

    async def status(source: str) -> bytes:
        answer = await _raw(port, _proxy_v1(source) + request)
        return answer.split(b" ", 2)[1]

    assert await status("203.0.113.1") == b"200"
    assert await status("203.0.113.1") == b"429"
    assert await status("203.0.113.2") == b"200"


# ------------------------------------------------------------------------------ lifecycle


async def test_drain_sends_goaway_and_lets_open_streams_finish(
    launch: list[RunningGateway], upstream: int
) -> None:
    gateway = await _start(launch, upstream, ListenerConfig(ANY, http2=Http2Config(h2c=True)))
    port = gateway.addresses[0][1]
    async with H2Client(port) as client:
        assert (await client.get("/warm")).status == 200
        slow = asyncio.ensure_future(client.get("/slow"))  # the upstream answers after 5 s
        await asyncio.sleep(0.2)
        drained = asyncio.ensure_future(gateway.drain(10.0))
        await asyncio.wait_for(client.closed.wait(), 10)
        response = await slow
        await drained
    assert client.goaway is not None
    code, last_stream = client.goaway
    assert code == 0
    assert last_stream == 3  # the slow stream: it was open, so it is answered
    assert response.status == 200
    assert response.body == b"late"
    launch.remove(gateway)
