"""What a listener makes of an accepted socket: PROXY header, TLS, then HTTP/1.1 or HTTP/2.

* A ``proxy_protocol`` listener reads the PROXY header (v1 or v2) off the socket before anything
  else, and only from a peer in ``server.trusted_proxies``; the address it carries becomes the
  client's (X-Forwarded-For, rate limits, logs). The header is peeked and then consumed to its
  exact length, so the bytes after it (a TLS ClientHello or HTTP) stay in the kernel for the
  transport that follows.
* A TLS listener hands the socket to uvloop with its current SSL context (swapped on reload);
  after the handshake, ALPN says ``h2`` or HTTP/1.1 (`AlpnSelector`).
* A cleartext listener with ``http2.h2c`` looks at the first bytes: the 24-byte client preface
  selects HTTP/2 with prior knowledge (RFC 9113 §3.3), anything else is HTTP/1.1
  (`PrefaceSniffer`). Other listeners hand HTTP/1.1 connections over directly.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING, Final, cast

from gateway.downstream.h2codec import PREFACE
from gateway.downstream.proxy_protocol import (
    MAX_V1_LENGTH,
    MAX_V2_LENGTH,
    ProxyHeaderError,
    parse_proxy_header,
)
from gateway.downstream.tls import ServerTls
from gateway.headers import is_trusted_peer
from gateway.observability.logging import get_logger

if TYPE_CHECKING:
    from gateway.config.model import ListenerConfig
    from gateway.server import GatewayServer

log = get_logger("gateway.accept")

_PEEK: Final = max(MAX_V1_LENGTH, MAX_V2_LENGTH)
# While a PROXY header is incomplete the socket stays readable (peeking leaves the bytes in
# place), so waiting for the rest polls at this interval; headers arrive whole in practice.
_PROXY_POLL: Final = 0.005


class ListenerEntry:
    """One configured listener: how its connections are set up (reload-aware)."""

    def __init__(self, server: GatewayServer, index: int) -> None:
        self.server = server
        self.index = index
        self.tls = self.prepare(self.config)

    @property
    def config(self) -> ListenerConfig:
        return self.server.listener_config(self.index)

    @staticmethod
    def prepare(config: ListenerConfig) -> ServerTls | None:
        """The TLS contexts for ``config``, read from its files now (at start and on every
        reload, SIGHUP); connections already accepted keep the context they were accepted
        with. Raises OSError (ssl.SSLError) when a file cannot be loaded."""
        if config.tls is None:
            return None
        return ServerTls(config.tls, http2=config.http2.enabled)

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.tls
        return None if tls is None else tls.context

    def protocol(self, peer_ip: str = "") -> asyncio.Protocol:
        """The protocol for a new connection (``peer_ip`` from a PROXY header, or "")."""
        config = self.config
        server = self.server
        if config.tls is not None:
            return AlpnSelector(server, self.index, peer_ip)
        if config.http2.enabled and config.http2.h2c:
            return PrefaceSniffer(server, self.index, peer_ip)
        conn = server.http1(self.index)
        conn.peer_ip = peer_ip
        return conn

    def accepted(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket
    ) -> asyncio.Task[object]:
        """Set up an accepted socket (a task: TLS handshakes and PROXY headers take time)."""
        if self.config.proxy_protocol:
            return loop.create_task(self._proxied(loop, sock))
        return loop.create_task(self._hand_over(loop, sock, ""))

    async def _hand_over(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, peer_ip: str
    ) -> object:
        protocol = self.protocol(peer_ip)
        context = self.ssl_context()
        if context is None:
            return await loop.connect_accepted_socket(lambda: protocol, sock=sock)
        return await loop.connect_accepted_socket(
            lambda: protocol,
            sock=sock,
            ssl=context,
            ssl_handshake_timeout=self.server.limits().header_read,
        )

    async def _proxied(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> object:
        metrics = self.server.dispatcher.metrics
        try:
            peer = sock.getpeername()
        except OSError:
            sock.close()
            return None
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else ""
        trusted = self.server.dispatcher.runtime.edge.trusted_proxies
        if not is_trusted_peer(peer_ip, trusted):
            # Only a proxy the operator trusts may say who the client is.
            metrics.proxy_protocol_rejected("untrusted")
            sock.close()
            return None
        deadline = loop.time() + self.server.limits().header_read
        try:
            client_ip = await _read_proxy_header(loop, sock, deadline)
        except ProxyHeaderError as error:
            metrics.proxy_protocol_rejected("malformed")
            log.debug("proxy_header_refused", peer=peer_ip, error=str(error))
            sock.close()
            return None
        except TimeoutError:
            metrics.proxy_protocol_rejected("timeout")
            sock.close()
            return None
        except OSError:
            sock.close()
            return None
        return await self._hand_over(loop, sock, client_ip or peer_ip)


async def _read_proxy_header(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, deadline: float
) -> str | None:
    """Read a PROXY header off ``sock``; the client address it names (None: the peer's)."""
    while True:
        await _readable(loop, sock, deadline)
        data = sock.recv(_PEEK, socket.MSG_PEEK)
        if not data:
            raise ProxyHeaderError("connection closed before the PROXY header")
        parsed = parse_proxy_header(data)
        if parsed is not None:
            header, length = parsed
            taken = 0
            while taken < length:
                taken += len(sock.recv(length - taken))
            return header.source_ip
        if loop.time() >= deadline:
            raise TimeoutError
        await asyncio.sleep(_PROXY_POLL)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket, deadline: float) -> None:
    waiter: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not waiter.done():
            waiter.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
    finally:
        loop.remove_reader(fd)


class AlpnSelector(asyncio.Protocol):
    """Stands in until the TLS handshake is done; then ALPN picks HTTP/2 or HTTP/1.1."""

    def __init__(self, server: GatewayServer, index: int, peer_ip: str) -> None:
        self._server = server
        self._index = index
        self._peer_ip = peer_ip

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol: asyncio.Protocol
        if chosen == "h2":
            conn2 = self._server.http2(self._index)
            conn2.peer_ip = self._peer_ip
            protocol = conn2
        else:
            conn1 = self._server.http1(self._index)
            conn1.peer_ip = self._peer_ip
            protocol = conn1
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        return None


class PrefaceSniffer(asyncio.Protocol):
    """Holds a cleartext connection's first bytes until they show the HTTP/2 preface or not."""

    def __init__(self, server: GatewayServer, index: int, peer_ip: str) -> None:
        self._server = server
        self._index = index
        self._peer_ip = peer_ip
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        # A connection that sends nothing is answered as an HTTP/1.1 one would be (408).
        self._timer = loop.call_later(self._server.limits().header_read, self._decide_http1)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer = self._buffer + data
        if len(buffer) < len(PREFACE) and PREFACE.startswith(buffer):
            return  # could still be the preface
        if buffer.startswith(PREFACE):
            self._switch(self._server.http2(self._index))
        else:
            self._decide_http1()

    def _decide_http1(self) -> None:
        conn = self._server.http1(self._index)
        self._switch(conn)

    def _switch(self, protocol: asyncio.Protocol) -> None:
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._transport = None
        if self._peer_ip:
            cast(_HasPeer, protocol).peer_ip = self._peer_ip
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        buffer, self._buffer = self._buffer, b""
        if buffer:
            protocol.data_received(buffer)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        self._transport = None


class _HasPeer:
    peer_ip: str
