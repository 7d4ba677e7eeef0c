"""The relay between a client's WebSocket and the upstream's, once both handshakes are done.

Callback-driven: the two connections' protocols hand their bytes to `Relay.received`, and a
message goes out as soon as it is whole. No task, no queue object and no zlib state per relay
while it is idle: an idle relay is two transports, two parsers and one timer.

Per direction, messages wait in the destination's outbox only while its transport is paused
(its buffer above the high-water mark: the peer reads slowly). When an outbox holds
`queue_messages` messages or `queue_bytes` bytes, the source is no longer read (TCP
backpressure reaches the fast side; memory stays flat) or, with `on_overflow: close`, both sides
are closed with 1013. Reading resumes when the outbox has drained to half.

Pings and pongs pass end to end; the gateway's own idle pings (payload `IDLE_PING`) are answered
to it and not relayed. Close frames pass both ways with their code and reason; a side that
drops without one gets its peer closed with 1001 (the client went away) or 1011 (the upstream
failed), and a side that breaks the protocol is closed with the code that says why (1002, 1007,
1009) and its peer as if it had dropped. The closing handshake gets `CLOSE_TIMEOUT`, then the
connections are cut.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import Final

from gateway.config.model import WebSocketConfig
from gateway.observability.request_metrics import RequestMetrics
from gateway.websocket import deflate
from gateway.websocket.frames import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA,
    CLOSE_TRY_AGAIN_LATER,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    Message,
    ProtocolError,
    close_payload,
    encode_frame,
    parse_close,
)

CLOSE_TIMEOUT: Final = 5.0
IDLE_PING: Final = b"gateway-idle"
# Messages smaller than this are not worth compressing; larger than COMPRESS_LIMIT are sent
# uncompressed rather than deflated on the event loop (RSV1 is per message, RFC 7692 §6).
COMPRESS_MIN: Final = 64
COMPRESS_LIMIT: Final = 64 * 1024
TO_UPSTREAM: Final = "to_upstream"
TO_CLIENT: Final = "to_client"


_KEYS = bytearray()


def mask_key() -> bytes:
    """4 bytes from the system's CSPRNG for a frame's mask (RFC 6455 §5.3: unpredictable),
    drawn 4 KiB at a time: one getrandom call per 1,024 frames, not one per frame."""
    if not _KEYS:
        _KEYS.extend(os.urandom(4096))
    key = bytes(_KEYS[-4:])
    del _KEYS[-4:]
    return key


class Side:
    """One hop: its transport, the parser of what it sends, and what waits to be sent to it."""

    __slots__ = (
        "batch",
        "close_received",
        "close_sent",
        "closing",
        "deflate_bits",
        "direction",
        "is_client",
        "last_seen",
        "lost",
        "masks",
        "outbox",
        "outbox_bytes",
        "parser",
        "pinged",
        "read_paused",
        "sent_bytes",
        "transport",
        "write_paused",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        is_client: bool,
        max_message_size: int,
        deflate_bits: int | None,
        now: float,
    ) -> None:
        self.transport = transport
        self.is_client = is_client
        # A client masks what it sends; the gateway masks what it sends the upstream (§5.3).
        self.parser = FrameParser(
            masked=is_client,
            max_message_size=max_message_size,
            compression=deflate_bits is not None,
        )
        self.masks = not is_client
        self.deflate_bits = deflate_bits
        # The direction of the messages sent *to* this side.
        self.direction = TO_CLIENT if is_client else TO_UPSTREAM
        self.outbox: deque[bytes] = deque()
        self.outbox_bytes = 0
        # Frames made while one read is processed, written together after it: one send for
        # all the messages a read brought, not one each.
        self.batch: list[bytes] = []
        self.write_paused = False
        self.read_paused = False
        self.close_sent = False
        self.close_received = False
        # Close once the outbox is flushed (the closing handshake is over on this hop).
        self.closing = False
        self.lost = False
        self.last_seen = now
        self.pinged = False
        # Payload bytes of the data messages relayed to this side (for the access log).
        self.sent_bytes = 0


class Relay:
    """Relays messages between ``client`` and ``upstream`` until both connections are gone."""

    __slots__ = (
        "_batching",
        "_close_timer",
        "_config",
        "_loop",
        "_metrics",
        "_route",
        "_timer",
        "client",
        "close_code",
        "done",
        "upstream",
    )

    def __init__(
        self,
        config: WebSocketConfig,
        route: str,
        metrics: RequestMetrics,
        loop: asyncio.AbstractEventLoop,
        *,
        client: asyncio.Transport,
        client_deflate_bits: int | None,
        upstream: asyncio.Transport,
        upstream_deflate: bool,
    ) -> None:
        self._config = config
        self._route = route
        self._metrics = metrics
        self._loop = loop
        now = loop.time()
        self.client = Side(
            client,
            is_client=True,
            max_message_size=config.max_message_size,
            deflate_bits=client_deflate_bits,
            now=now,
        )
        self.upstream = Side(
            upstream,
            is_client=False,
            max_message_size=config.max_message_size,
            deflate_bits=15 if upstream_deflate else None,
            now=now,
        )
        # Set when both connections are gone.
        self.done: asyncio.Future[None] = loop.create_future()
        # The first close code seen (sent or received), for the access log.
        self.close_code: int | None = None
        self._timer: asyncio.TimerHandle | None = loop.call_later(
            config.idle_timeout / 2, self._tick
        )
        self._close_timer: asyncio.TimerHandle | None = None
        self._batching = False

    def other(self, side: Side) -> Side:
        return self.upstream if side is self.client else self.client

    # ---------------------------------------------------------------- from the protocols

    def received(self, side: Side, data: bytes) -> None:
        side.last_seen = self._loop.time()
        side.pinged = False
        if side.close_received:
            return  # nothing is read after a Close frame (§5.5.1)
        self._batching = True
        try:
            messages = side.parser.feed(data)
            for message in messages:
                self._message(side, message)
        except ProtocolError as error:
            self._fail(side, error.code, error.reason)
        finally:
            self._batching = False
            self._write_batch(self.other(side))
            self._write_batch(side)

    def _write_batch(self, side: Side) -> None:
        batch = side.batch
        if batch:
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            batch.clear()
            if not side.lost:
                side.transport.write(data)  # may pause writing (pause_writing)
            if side.closing and not side.outbox:
                side.transport.close()

    def writable(self, side: Side, writable: bool) -> None:
        side.write_paused = not writable
        if writable:
            self._flush(side)

    def lost(self, side: Side) -> None:
        if side.lost:
            return
        side.lost = True
        side.outbox.clear()
        side.outbox_bytes = 0
        other = self.other(side)
        if not side.close_received and not other.lost:
            # Dropped without a Close frame: the peer learns why (RFC 6455 §7.1.5 keeps 1006
            # for the peer's own view; it is never sent).
            if side.is_client:
                self._close(other, CLOSE_GOING_AWAY, "the client went away")
            else:
                self._close(other, CLOSE_INTERNAL_ERROR, "the upstream connection was lost")
            self._arm_close_timer()
        if other.lost:
            self._finish()

    def shutdown(self, reason: str = "the gateway is shutting down") -> None:
        """SIGTERM: 1001 to both sides, then the closing handshakes get CLOSE_TIMEOUT."""
        for side in (self.client, self.upstream):
            if not side.lost:
                self._close(side, CLOSE_GOING_AWAY, reason)
        self._arm_close_timer()

    # ---------------------------------------------------------------------- messages

    def _message(self, source: Side, message: Message) -> None:
        target = self.other(source)
        opcode = message.opcode
        if opcode == OP_PING:
            self._send(target, source, OP_PING, message.payload)
        elif opcode == OP_PONG:
            if message.payload != IDLE_PING:  # not the answer to the gateway's own ping
                self._send(target, source, OP_PONG, message.payload)
        elif opcode == OP_CLOSE:
            code, reason = parse_close(message.payload)
            source.close_received = True
            if self.close_code is None:
                self.close_code = code
            # Relayed as it came (an answer to a Close relayed the other way, or a first one).
            self._close(target, code, reason)
            self._closing(source)
            self._arm_close_timer()
        else:
            payload = message.payload
            if message.compressed:
                payload = deflate.inflate_message(payload, self._config.max_message_size)
            if opcode == OP_TEXT:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError(
                        CLOSE_INVALID_DATA, "a text message that is not UTF-8"
                    ) from None
            self._metrics.websocket_message(self._route, target.direction, len(payload))
            target.sent_bytes += len(payload)
            self._send(target, source, opcode, payload)

    def _send(self, target: Side, source: Side | None, opcode: int, payload: bytes) -> None:
        if target.close_sent or target.lost:
            return  # nothing may follow a Close frame (§5.5.1)
        rsv1 = False
        if (
            target.deflate_bits is not None
            and (opcode in (OP_TEXT, OP_BINARY))
            and COMPRESS_MIN <= len(payload) <= COMPRESS_LIMIT
        ):
            payload = deflate.compress_message(payload, target.deflate_bits)
            rsv1 = True
        frame = encode_frame(
            opcode, payload, mask_key=mask_key() if target.masks else None, rsv1=rsv1
        )
        if opcode == OP_CLOSE:
            target.close_sent = True
        if not target.outbox and not target.write_paused:
            if self._batching:
                target.batch.append(frame)
            else:
                target.transport.write(frame)
            return
        target.outbox.append(frame)
        target.outbox_bytes += len(frame)
        config = self._config
        if source is not None and (
            len(target.outbox) >= config.queue_messages or target.outbox_bytes >= config.queue_bytes
        ):
            self._overflow(source, target)

    def _overflow(self, source: Side, target: Side) -> None:
        if source.read_paused:
            return
        self._metrics.websocket_queue_full(self._route, target.direction)
        if self._config.on_overflow == "close":
            for side in (self.client, self.upstream):
                side.outbox.clear()
                side.outbox_bytes = 0
                side.write_paused = False
                self._close(side, CLOSE_TRY_AGAIN_LATER, "the peer does not keep up")
            self._arm_close_timer()
            return
        source.read_paused = True
        source.transport.pause_reading()

    def _flush(self, side: Side) -> None:
        outbox = side.outbox
        while outbox and not side.write_paused and not side.lost:
            frame = outbox.popleft()
            side.outbox_bytes -= len(frame)
            side.transport.write(frame)  # may pause writing again (pause_writing)
        source = self.other(side)
        config = self._config
        if (
            source.read_paused
            and not source.lost
            and len(outbox) <= config.queue_messages // 2
            and side.outbox_bytes <= config.queue_bytes // 2
        ):
            source.read_paused = False
            source.transport.resume_reading()
        if side.closing and not outbox:
            side.transport.close()

    # ---------------------------------------------------------------------- closing

    def _close(self, side: Side, code: int, reason: str) -> None:
        """Send ``side`` a Close frame (once)."""
        if side.close_sent or side.lost:
            return
        if self.close_code is None:
            self.close_code = code
        # close_payload gives a Close with no code (1005 relayed) an empty payload.
        self._send(side, None, OP_CLOSE, close_payload(code, reason))
        self._closing(side)

    def _closing(self, side: Side) -> None:
        """Close ``side``'s connection once its closing handshake is over and its outbox is
        flushed (the server closes first on the client hop, §7.1.1; the gateway does not
        wait for the upstream to do so either)."""
        if side.close_sent and side.close_received and not side.closing:
            side.closing = True
            # A batch still to write (the Close frame among it) is written first, and the
            # connection closed then (`_write_batch`).
            if not side.outbox and not side.batch:
                side.transport.close()

    def _fail(self, side: Side, code: int, reason: str) -> None:
        """``side`` broke the protocol or a limit: it gets ``code``; its peer is closed as if
        ``side`` had dropped."""
        side.close_received = True  # read no more from it
        if not side.read_paused:
            side.read_paused = True
            side.transport.pause_reading()
        self._close(side, code, reason)
        other = self.other(side)
        if side.is_client:
            self._close(other, CLOSE_GOING_AWAY, "the client broke the protocol")
        else:
            self._close(other, CLOSE_INTERNAL_ERROR, "the upstream broke the protocol")
        self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and not self.done.done():
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self._cut)

    def _cut(self) -> None:
        """The closing handshake took too long: cut what is left."""
        self._close_timer = None
        for side in (self.client, self.upstream):
            if not side.lost:
                side.transport.abort()

    def _tick(self) -> None:
        """Every half of idle_timeout: a side silent since the last tick's ping is closed
        (1001), a side quiet for about half the timeout is pinged. A side the relay stopped
        reading (backpressure) is not silent, only unread."""
        self._timer = None
        if self.done.done():
            return
        now = self._loop.time()
        half = self._config.idle_timeout / 2
        for side in (self.client, self.upstream):
            if side.lost or side.read_paused:
                continue
            if side.pinged:
                for each in (self.client, self.upstream):
                    self._close(each, CLOSE_GOING_AWAY, "idle timeout")
                self._arm_close_timer()
                return
            # 0.9: the tick may come a little early or the last frame a little late; a side
            # must not escape its ping by a few milliseconds.
            if now - side.last_seen >= half * 0.9 and not side.close_sent:
                side.pinged = True
                self._send(side, None, OP_PING, IDLE_PING)
        self._timer = self._loop.call_later(half, self._tick)

    def _finish(self) -> None:
        for timer in (self._timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._close_timer = None
        if not self.done.done():
            self.done.set_result(None)
