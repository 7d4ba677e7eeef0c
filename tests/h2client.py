"""A small asyncio HTTP/2 client for the tests, on python-hyper/h2 (as the gateway's own side is).

It speaks h2c with prior knowledge, or h2 over TLS when given an SSL context (ALPN ``h2``), and
runs any number of requests concurrently on one connection. Real sockets only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings


@dataclass
class H2Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    # The RST_STREAM code when the server reset the stream instead of completing it.
    reset: int | None = None

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def headers_named(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


@dataclass
class _Stream:
    done: asyncio.Future[None]
    headers: list[tuple[str, str]] = field(default_factory=list)
    interim: list[int] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    reset: int | None = None


class H2Client:
    """``async with H2Client(port) as client: response = await client.get("/")``."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        authority: str | None = None,
        settings: dict[int, int] | None = None,
    ) -> None:
        self.port = port
        self.host = host
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self.authority = authority or f"{host}:{port}"
        self._settings = settings or {}
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self._streams: dict[int, _Stream] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._window: asyncio.Event = asyncio.Event()
        # Received bytes short of a whole frame (`_take_goaway`).
        self._pending = b""
        # GOAWAY from the server: (error code, last stream id).
        self.goaway: tuple[int, int] | None = None
        self.closed = asyncio.Event()
        self.alpn: str | None = None

    async def __aenter__(self) -> H2Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, ssl=self._ssl, server_hostname=self._server_hostname
        )
        ssl_object = self._writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.alpn = ssl_object.selected_alpn_protocol()
        conn = self._conn
        conn.initiate_connection()
        if self._settings:
            conn.update_settings(self._settings)
        self._flush()
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                for event in self._conn.receive_data(self._take_goaway(data)):
                    self._event(event)
                self._flush()
        finally:
            self.closed.set()
            for stream in self._streams.values():
                if not stream.done.done():
                    stream.done.set_exception(ConnectionError("connection closed"))

    def _take_goaway(self, data: bytes) -> bytes:
        """``data`` without its GOAWAY frames, which are recorded in ``goaway``.

        h2's state machine stops processing a connection once it receives GOAWAY, while the
        streams up to its last stream id are still answered (RFC 9113 §6.8): the test client
        needs those answers, so GOAWAY never reaches h2 here. The preface is the server's
        SETTINGS frame; frames are cut on their 9-byte headers.
        """
        buffer = self._pending + data
        kept = bytearray()
        offset = 0
        while len(buffer) - offset >= 9:
            length = int.from_bytes(buffer[offset : offset + 3], "big")
            end = offset + 9 + length
            if end > len(buffer):
                break
            if buffer[offset + 3] == 0x7:  # GOAWAY
                last, code = struct.unpack("!II", buffer[offset + 9 : offset + 17])
                self.goaway = (code, last & 0x7FFFFFFF)
            else:
                kept += buffer[offset:end]
            offset = end
        self._pending = buffer[offset:]
        return bytes(kept)

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            stream = self._streams[event.stream_id]
            stream.headers = [(str(k), str(v)) for k, v in event.headers or []]
        elif isinstance(event, h2.events.InformationalResponseReceived):
            for key, value in event.headers or []:
                if str(key) == ":status":
                    self._streams[event.stream_id].interim.append(int(value))
        elif isinstance(event, h2.events.DataReceived):
            stream = self._streams[event.stream_id]
            stream.body += event.data or b""
            self._conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            done = self._streams[event.stream_id].done
            if not done.done():
                done.set_result(None)
        elif isinstance(event, h2.events.StreamReset):
            reset = self._streams.get(event.stream_id)
            if reset is not None:
                reset.reset = int(event.error_code or 0)
                if not reset.done.done():
                    reset.done.set_result(None)
        elif isinstance(event, h2.events.WindowUpdated):
            self._window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = (int(event.error_code or 0), int(event.last_stream_id or 0))

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> H2Response:
        conn = self._conn
        stream_id = conn.get_next_available_stream_id()
        stream = self._streams[stream_id] = _Stream(asyncio.get_running_loop().create_future())
        fields = [
            (":method", method),
            (":path", path),
            (":scheme", "https" if self._ssl is not None else "http"),
            (":authority", self.authority),
            *headers,
        ]
        conn.send_headers(stream_id, fields, end_stream=body is None)
        self._flush()
        if body is not None:
            await self._send_body(stream_id, body)
        await stream.done
        status = 0
        kept: list[tuple[str, str]] = []
        for key, value in stream.headers:
            if key == ":status":
                status = int(value)
            else:
                kept.append((key, value))
        return H2Response(status, kept, bytes(stream.body), stream.reset)

    async def get(self, path: str, headers: Sequence[tuple[str, str]] = ()) -> H2Response:
        return await self.request("GET", path, headers=headers)

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        conn = self._conn
        offset = 0
        while offset < len(body):
            window = conn.local_flow_control_window(stream_id)
            if window <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            size = min(window, conn.max_outbound_frame_size, len(body) - offset)
            conn.send_data(stream_id, body[offset : offset + size])
            offset += size
            self._flush()
        conn.end_stream(stream_id)
        self._flush()


def client_tls_context(ca_pem: bytes, alpn: Sequence[str] = ("h2", "http/1.1")) -> ssl.SSLContext:
    """A client context trusting ``ca_pem`` and offering ``alpn``."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.set_alpn_protocols(list(alpn))
    return context
