"""Several listeners under `gateway run` (a supervisor and two workers): every port answers in
its protocol, SIGHUP re-reads the certificate, SIGTERM sends HTTP/2 clients GOAWAY and lets
their open streams finish."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import trustme

from tests.h2client import H2Client, client_tls_context
from tests.harness import (
    LOCAL,
    echo_app,
    eventually,
    log_events,
    serve_app,
    start_gateway_process,
)


def _issue(ca: trustme.CA, directory: Path) -> None:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(directory / "gateway.crt")
    cert.private_key_pem.write_to_path(directory / "gateway.key")


def _config(directory: Path, upstream: int) -> Path:
    path = directory / "gateway.yaml"
    path.write_text(
        f"""
server:
  workers: 2
  listeners:
    - listen: "{LOCAL}:0"
    - listen: "{LOCAL}:0"
      http2: {{h2c: true}}
    - listen: "{LOCAL}:0"
      tls: {{cert: gateway.crt, key: gateway.key}}
  timeouts: {{drain: 20s}}
admin:
  listen: "{LOCAL}:0"
logging:
  access_log: false
upstreams:
  app: {{targets: ["http://{LOCAL}:{upstream}"]}}
routes:
  - name: all
    upstream: app
    match: {{path_prefix: /}}
"""
    )
    return path


async def test_listeners_reload_and_drain_under_the_supervisor(tmp_path: Path) -> None:
    ca = trustme.CA()
    _issue(ca, tmp_path)
    async with serve_app(echo_app()) as upstream:
        log = tmp_path / "gateway.log"
        gateway = start_gateway_process(_config(tmp_path, upstream), log)
        try:
            plain, h2c, tls = gateway.ports
            assert len({plain, h2c, tls}) == 3
            reader, writer = await asyncio.open_connection(LOCAL, plain)
            writer.write(b"GET /plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 ")
            writer.close()
            async with H2Client(h2c) as client:
                assert (await client.get("/h2c")).status == 200
            context = client_tls_context(ca.cert_pem.bytes())
            async with H2Client(tls, ssl_context=context, server_hostname="localhost") as client:
                assert client.alpn == "h2"
                assert (await client.get("/tls")).status == 200

            # SIGHUP: a renewed certificate (another CA) reaches new connections.
            renewed = trustme.CA()
            _issue(renewed, tmp_path)
            gateway.process.send_signal(signal.SIGHUP)
            new_context = client_tls_context(renewed.cert_pem.bytes())

            async def renewed_served() -> bool:
                try:
                    async with H2Client(
                        tls, ssl_context=new_context, server_hostname="localhost"
                    ) as client:
                        return (await client.get("/renewed")).status == 200
                except OSError:
                    return False

            await eventually(renewed_served, "the renewed certificate to be served")

            # SIGTERM with a stream open: GOAWAY naming it, then its answer, then exit 0.
            async with H2Client(h2c) as client:
                assert (await client.get("/warm")).status == 200
                slow = asyncio.ensure_future(client.get("/slow"))  # answered after 5 s
                await asyncio.sleep(0.3)
                gateway.terminate()
                response = await asyncio.wait_for(slow, 15)
                assert client.goaway is not None
                assert client.goaway == (0, 3)
            assert response.status == 200
            assert response.body == b"late"
            assert await asyncio.to_thread(gateway.process.wait, 30) == 0
            reloads = [e for e in log_events(log) if e.get("event") == "config_reloaded"]
            assert reloads, "the SIGHUP reload was not logged"
        finally:
            if gateway.process.poll() is None:
                gateway.process.kill()
                gateway.process.wait()
