"""The client side of the gateway (gateway.downstream): pipelining, upgrades, errors, closing.

Raw sockets against a real gateway and a real upstream on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

from gateway.app import RunningGateway, start
from gateway.config.model import ServerConfig, ServerLimits
from gateway.downstream.connection import (
    MAX_PIPELINED,
    ClientConnection,
    ConnectionLimits,
    ConnectionRegistry,
    PendingRequest,
)
from tests.harness import LOCAL, gateway_config, parse_raw_response, raw_exchange, upstream_to


async def launch(gateways: list[RunningGateway], port: int, **limits: int) -> RunningGateway:
    server = ServerConfig(limits=replace(ServerLimits(), **limits)) if limits else None
    gateway = await start(gateway_config([upstream_to("echo", port)], server=server))
    gateways.append(gateway)
    return gateway


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response (Content-Length or chunked framed): its head and its body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lowered = head.lower()
    if b"content-length: " in lowered:
        length = int(lowered.split(b"content-length: ")[1].split(b"\r\n")[0])
        return head, await reader.readexactly(length)
    if b"transfer-encoding: chunked" in lowered:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if not size:
                return head, bytes(body)
            body += data[:-2]
    return head, b""


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_pipelined_requests_are_answered_in_order_beyond_the_queue_bound(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    gateway = await launch(gateways, echo_port)
    count = MAX_PIPELINED * 2 + 3
    burst = b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % index for index in range(count))
    async with connection(gateway.address[1]) as (reader, writer):
        writer.write(burst)
        await writer.drain()
        for index in range(count):
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert json.loads(body)["target"] == f"/{index}"


async def test_a_pipelined_body_belongs_to_its_own_request(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    gateway = await launch(gateways, echo_port)
    burst = (
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /d HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    async with connection(gateway.address[1]) as (reader, writer):
        writer.write(burst)
        seen = [json.loads((await read_response(reader))[1]) for _ in range(4)]
    assert [(p["target"], p["body"]) for p in seen] == [
        ("/a", ""),
        ("/b", "hello"),
        ("/c", "abc"),
        ("/d", ""),
    ]


async def test_an_upgrade_request_is_answered_as_http_and_the_connection_goes_on(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    gateway = await launch(gateways, echo_port)
    async with connection(gateway.address[1]) as (reader, writer):
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        sent = {name.lower() for name, _ in json.loads(body)["headers"]}
        assert "upgrade" not in sent
        head, body = await read_response(reader)
        assert json.loads(body)["target"] == "/next"


async def test_connect_is_refused_and_the_tunnel_bytes_are_never_parsed(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    gateway = await launch(gateways, echo_port)
    answer = await raw_exchange(
        gateway.address[1],
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    status, fields, body = parse_raw_response(answer)
    assert status == 400
    assert fields["connection"] == ["close"]
    assert answer.count(b"HTTP/1.1") == 1  # the bytes after CONNECT got no answer of their own
    assert json.loads(body)["error"] == "bad_request"


async def test_a_parse_error_after_a_good_request_answers_both_in_order_then_closes(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    gateway = await launch(gateways, echo_port)
    answer = await raw_exchange(
        gateway.address[1],
        b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET /bad HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
    )
    first, _, rest = answer.partition(b"HTTP/1.1 400")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close" in rest


async def test_an_error_to_head_has_no_body(echo_port: int, gateways: list[RunningGateway]) -> None:
    gateway = await launch(gateways, echo_port)
    answer = await raw_exchange(gateway.address[1], b"HEAD / HTTP/1.1\r\nHost: a b\r\n\r\n")
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Content-Length: " in head
    assert rest == b""


async def test_an_oversized_body_gets_its_413_intact_while_the_client_still_sends(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    gateway = await launch(gateways, echo_port, max_body=1024)
    async with connection(gateway.address[1]) as (reader, writer):
        # Declared within limits for the head check (chunked), then it keeps coming.
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        block = b"%x\r\n%s\r\n" % (4096, b"x" * 4096)
        for _ in range(8):
            writer.write(block)
            await writer.drain()
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 413 ")
        assert b"Connection: close" in head
        assert json.loads(body)["error"] == "body_too_large"
        # The gateway half-closed after the answer: the client sees the end, not a reset.
        assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_http10_keep_alive_is_honoured_and_said(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    gateway = await launch(gateways, echo_port)
    async with connection(gateway.address[1]) as (reader, writer):
        for _ in range(2):
            writer.write(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
            head, _ = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"Connection: keep-alive\r\n" in head


async def test_a_streamed_body_is_chunked_for_11_and_close_delimited_for_10(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    gateway = await launch(gateways, echo_port)
    async with connection(gateway.address[1]) as (reader, writer):
        writer.write(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
        head, body = await read_response(reader)
        assert b"Transfer-Encoding: chunked" in head
        assert body == b"part0;part1;part2;"
    answer = await raw_exchange(
        gateway.address[1], b"GET /stream HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head
    assert b"Connection: close" in head
    assert body == b"part0;part1;part2;"


async def test_date_is_added_when_the_upstream_sent_none(gateways: list[RunningGateway]) -> None:
    async def dateless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(dateless, LOCAL, 0)
    try:
        gateway = await launch(gateways, upstream.sockets[0].getsockname()[1])
        answer = await raw_exchange(
            gateway.address[1], b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        _, fields, body = parse_raw_response(answer)
        assert len(fields["date"]) == 1
        assert fields["date"][0].endswith(" GMT")
        assert body == b"ok"
    finally:
        upstream.close()
        await upstream.wait_closed()


async def test_a_client_gone_mid_body_leaves_the_gateway_serving(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    gateway = await launch(gateways, echo_port)
    port = gateway.address[1]
    async with connection(port) as (_, writer):
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        await asyncio.sleep(0.1)
    for _ in range(50):
        if not gateway.server.connections:
            break
        await asyncio.sleep(0.05)
    assert not gateway.server.connections
    assert gateway.dispatcher.inflight == 0
    answer = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_drain_closes_idle_connections_at_once_and_busy_ones_after_their_answer(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    gateway = await launch(gateways, echo_port)
    port = gateway.address[1]
    async with connection(port) as (idle_reader, idle_writer), connection(port) as (reader, writer):
        idle_writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await read_response(idle_reader)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        draining = asyncio.create_task(gateway.drain(10.0))
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Connection: close" in head
        assert body == b"late"
        await asyncio.wait_for(draining, 10)


async def test_a_request_leaves_no_cyclic_garbage(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    # Everything a request allocates must be freed by reference counting: cycles wait for the
    # collector, and with many of them its pauses showed in p99 (docs/performance.md).
    gateway = await launch(gateways, echo_port)
    async with connection(gateway.address[1]) as (reader, writer):

        async def exchange(request: bytes) -> None:
            writer.write(request)
            await read_response(reader)

        plain = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        posted = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        for _ in range(20):
            await exchange(plain)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(50):
                await exchange(plain)
                await exchange(posted)
            gc.collect()
            leaked = sorted({type(thing).__name__ for thing in gc.garbage})
            assert not gc.garbage, f"{len(gc.garbage)} objects in cycles: {leaked}"
        finally:
            gc.set_debug(0)
            gc.garbage.clear()


async def test_a_burst_of_connections_is_accepted_in_one_pass(
    echo_port: int, gateways: list[RunningGateway]
) -> None:
    # libuv alone accepts one connection per pass of the loop; a loaded gateway then left a
    # burst of clients in the kernel's queue for seconds (docs/performance.md, c1000).
    gateway = await launch(gateways, echo_port)
    listener = gateway.listener
    before_wakeups, before_accepted = listener.wakeups, listener.accepted
    # Connected by the kernel while this loop cannot run: all are queued when it next polls.
    clients = [socket.create_connection((LOCAL, gateway.address[1])) for _ in range(50)]
    try:
        for _ in range(20):
            await asyncio.sleep(0.01)
            if listener.accepted - before_accepted == 50:
                break
        assert listener.accepted - before_accepted == 50
        assert listener.wakeups - before_wakeups == 1
        for client in clients:
            client.setblocking(False)
        answered = 0
        for client in clients:
            reader, writer = await asyncio.open_connection(sock=client)
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            head, _ = await read_response(reader)
            answered += head.startswith(b"HTTP/1.1 200 OK\r\n")
            writer.close()
        assert answered == 50
    finally:
        for client in clients:
            client.close()


async def test_one_task_answers_a_connection_and_survives_a_failing_handler() -> None:
    # Requests on a connection run one after the other in one task (docs/performance.md); a
    # handler that raises must not leave the requests behind it unanswered, and the task must
    # end with the connection.
    loop = asyncio.get_running_loop()
    reported: list[BaseException] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context["exception"]))
    served: list[ClientConnection] = []

    async def handler(conn: ClientConnection, pending: PendingRequest) -> None:
        if pending.head.raw_target == b"/boom":
            raise RuntimeError("handler bug")
        conn.requests_served += 1
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def accept() -> ClientConnection:
        limits = ConnectionLimits(ServerConfig())
        conn = ClientConnection(ConnectionRegistry(), handler, limits, loop)
        served.append(conn)
        return conn

    server = await loop.create_server(accept, LOCAL, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        async with connection(port) as (reader, writer):
            writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await read_response(reader))[1] == b"ok"
            task = served[0]._task
            writer.write(b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await read_response(reader))[1] == b"ok"
            assert served[0]._task is task
            assert [str(error) for error in reported] == ["handler bug"]
        await asyncio.wait_for(served[0].closed_waiter, 5)
        assert task is not None
        await asyncio.wait_for(asyncio.shield(task), 5)
        assert served[0]._task is None
    finally:
        loop.set_exception_handler(previous)
        server.close()
        await server.wait_closed()
