"""Pool behaviour on real sockets: slot limits, FIFO waiting, idle expiry, targets, DNS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest

from gateway.config.model import Target
from gateway.errors import BadGateway, GatewayTimeout, UpstreamBusy
from gateway.upstream import Resolver, UpstreamPool, UpstreamResponse
from gateway.upstream.resolver import Address
from tests.upstream_servers import (
    RawConnection,
    RawUpstream,
    collect,
    keep_alive,
    ok,
    upstream_config,
)

AUTHORITY = b"client.example"


class GatedUpstream:
    """Answers each request only once the test opens the gate; records arrival order."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.arrived: list[bytes] = []
        self.arrival = asyncio.Event()
        self.server = RawUpstream(self._handle)

    async def _handle(self, conn: RawConnection) -> None:
        while (request := await conn.read_request()) is not None:
            self.arrived.append(request.target)
            self.arrival.set()
            await self.gate.wait()
            await conn.send(ok(request.target))

    async def wait_arrivals(self, count: int) -> None:
        while len(self.arrived) < count:
            self.arrival.clear()
            await self.arrival.wait()


@contextlib.asynccontextmanager
async def gated() -> AsyncIterator[GatedUpstream]:
    upstream = GatedUpstream()
    async with upstream.server:
        yield upstream


async def fetch(pool: UpstreamPool, target: bytes = b"/") -> bytes:
    response = await pool.request("GET", target, [], AUTHORITY, None, None)
    try:
        return await collect(response.body)
    finally:
        await response.release()


async def test_max_connections_caps_sockets_and_waiters_are_served_in_order() -> None:
    async with gated() as upstream:
        pool = UpstreamPool(upstream_config(upstream.server.target(), max_connections=2))
        first = asyncio.create_task(fetch(pool, b"/a"))
        second = asyncio.create_task(fetch(pool, b"/b"))
        await upstream.wait_arrivals(2)
        waiters = []
        for target in (b"/c", b"/d", b"/e"):
            waiters.append(asyncio.create_task(fetch(pool, target)))
            await asyncio.sleep(0)  # runs the request up to its wait for a slot
        assert pool.waiting == 3
        assert pool.open_connections == 2
        upstream.gate.set()
        results = await asyncio.gather(first, second, *waiters)
        await pool.close()
    assert results == [b"/a", b"/b", b"/c", b"/d", b"/e"]
    assert upstream.arrived[2:] == [b"/c", b"/d", b"/e"]  # FIFO
    assert upstream.server.accepted == 2
    assert pool.connections_opened == 2


async def test_no_slot_within_the_connect_timeout_is_upstream_busy() -> None:
    async with gated() as upstream:
        pool = UpstreamPool(
            upstream_config(upstream.server.target(), max_connections=1, connect=0.05)
        )
        holder = asyncio.create_task(fetch(pool, b"/hold"))
        await upstream.wait_arrivals(1)
        with pytest.raises(UpstreamBusy):
            await fetch(pool)
        assert pool.waiting == 0
        upstream.gate.set()
        assert await holder == b"/hold"
        assert await fetch(pool, b"/after") == b"/after"
        await pool.close()
    assert pool.connections_opened == 1


async def test_a_cancelled_waiter_leaks_no_slot() -> None:
    async with gated() as upstream:
        pool = UpstreamPool(upstream_config(upstream.server.target(), max_connections=1))
        holder = asyncio.create_task(fetch(pool, b"/hold"))
        await upstream.wait_arrivals(1)
        waiter = asyncio.create_task(fetch(pool, b"/gone"))
        await asyncio.sleep(0)
        assert pool.waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        upstream.gate.set()
        await holder
        assert await fetch(pool, b"/next") == b"/next"
        assert pool.open_connections == 1
        await pool.close()
    assert b"/gone" not in upstream.arrived


async def test_idle_connections_above_max_idle_are_closed() -> None:
    async with gated() as upstream:
        pool = UpstreamPool(upstream_config(upstream.server.target(), max_idle=1))
        tasks = [asyncio.create_task(fetch(pool, b"/%d" % i)) for i in range(3)]
        await upstream.wait_arrivals(3)
        upstream.gate.set()
        await asyncio.gather(*tasks)
        await upstream.server.wait_closed_connections(2)
        assert pool.idle_connections == 1
        assert pool.open_connections == 1
        await pool.close()


async def test_idle_connections_close_after_the_idle_timeout() -> None:
    async with RawUpstream(keep_alive(lambda r: ok())) as upstream:
        pool = UpstreamPool(upstream_config(upstream.target(), idle_timeout=0.05))
        assert await fetch(pool) == b"ok"
        assert pool.idle_connections == 1
        await upstream.wait_closed_connections(1)  # the pool closed it, not the upstream
        assert pool.idle_connections == 0
        assert pool.open_connections == 0
        assert await fetch(pool) == b"ok"
        await pool.close()
    assert pool.connections_opened == 2


async def test_targets_are_chosen_round_robin_with_their_own_host() -> None:
    order: list[int] = []

    def recorder(port_index: int) -> RawUpstream:
        def respond(request: object) -> bytes:
            order.append(port_index)
            return ok()

        return RawUpstream(keep_alive(respond))

    async with recorder(0) as a, recorder(1) as b:
        pool = UpstreamPool(upstream_config(a.target(), b.target(), host_header="target"))
        for _ in range(4):
            await fetch(pool)
        await pool.close()
    assert order == [0, 1, 0, 1]
    assert pool.connections_opened == 2
    hosts_a = {r.header(b"host") for c in a.connections for r in c.requests}
    hosts_b = {r.header(b"host") for c in b.connections for r in c.requests}
    assert hosts_a == {b"127.0.0.1:%d" % a.port}
    assert hosts_b == {b"127.0.0.1:%d" % b.port}


async def test_full_pool_trades_an_idle_connection_to_another_target() -> None:
    async with (
        RawUpstream(keep_alive(lambda r: ok(b"a"))) as a,
        RawUpstream(keep_alive(lambda r: ok(b"b"))) as b,
    ):
        pool = UpstreamPool(upstream_config(a.target(), b.target(), max_connections=1, connect=0.2))
        assert await fetch(pool) == b"a"
        assert await fetch(pool) == b"b"  # no wait for a slot: a's idle socket made room
        await a.wait_closed_connections(1)
        assert pool.open_connections == 1
        await pool.close()


async def test_close_closes_idle_now_and_busy_connections_on_release() -> None:
    async with gated() as upstream:
        pool = UpstreamPool(upstream_config(upstream.server.target()))
        tasks = [
            asyncio.create_task(pool.request("GET", b"/%d" % i, [], AUTHORITY, None, None))
            for i in range(2)
        ]
        await upstream.wait_arrivals(2)
        upstream.gate.set()
        idle, busy = await asyncio.gather(*tasks)
        await collect(idle.body)  # finished: back to the pool
        assert pool.idle_connections == 1
        await pool.close()
        await upstream.server.wait_closed_connections(1)
        assert await collect(busy.body) == b"/1"
        await busy.release()
        await upstream.server.wait_closed_connections(2)
        assert pool.idle_connections == 0
        assert pool.open_connections == 0


# ------------------------------------------------------------------------------ DNS


class FakeDNS:
    """A lookup function returning fixed answers and counting queries."""

    def __init__(self, answers: Sequence[Address]) -> None:
        self.answers = answers
        self.queries: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[Address]:
        self.queries.append(host)
        return self.answers


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_hostnames_resolve_once_and_fall_back_to_the_next_address() -> None:
    def respond(request: object) -> bytes:
        return ok(b"ok", b"Connection: close\r\n")

    async with RawUpstream(keep_alive(respond)) as upstream:
        dns = FakeDNS(
            [
                (socket.AF_INET, ("127.0.0.1", closed_port())),
                (socket.AF_INET, ("127.0.0.1", upstream.port)),
            ]
        )
        pool = UpstreamPool(
            upstream_config(Target("http", "upstream.test", upstream.port)),
            resolver=Resolver(30.0, lookup=dns),
        )
        assert await fetch(pool) == b"ok"
        assert await fetch(pool) == b"ok"
        await pool.close()
    assert pool.connections_opened == 2  # Connection: close each time
    assert dns.queries == ["upstream.test"]  # the second connect used the cache
    assert upstream.connections[0].requests[0].header(b"host") == AUTHORITY


async def test_dns_failure_is_bad_gateway() -> None:
    async def failing(host: str, port: int) -> Sequence[Address]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    pool = UpstreamPool(
        upstream_config(Target("http", "nowhere.test", 80)),
        resolver=Resolver(30.0, lookup=failing),
    )
    with pytest.raises(BadGateway):
        await fetch(pool)
    assert pool.open_connections == 0
    await pool.close()


async def test_a_stalled_dns_lookup_counts_against_the_connect_timeout() -> None:
    answer = asyncio.Event()

    async def stalled(host: str, port: int) -> Sequence[Address]:
        await answer.wait()
        return []

    pool = UpstreamPool(
        upstream_config(Target("http", "slow.test", 80), connect=0.05),
        resolver=Resolver(30.0, lookup=stalled),
    )
    with pytest.raises(GatewayTimeout):
        await fetch(pool)
    assert pool.open_connections == 0
    answer.set()  # let the shielded lookup finish
    await asyncio.sleep(0)
    await pool.close()


@contextlib.contextmanager
def unanswered_listener() -> Iterator[int]:
    """A port whose accept queue is full, so new SYNs are dropped and connects hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_tcp_connect_not_done_within_the_connect_timeout_is_gateway_timeout() -> None:
    with unanswered_listener() as port:
        pool = UpstreamPool(upstream_config(Target("http", "127.0.0.1", port), connect=0.1))
        with pytest.raises(GatewayTimeout):
            await fetch(pool)
        assert pool.open_connections == 0
        await pool.close()


async def test_pool_can_be_built_outside_a_running_loop() -> None:
    # The runtime builds pools at start-up; nothing may need the loop before a request.
    async with RawUpstream(keep_alive(lambda r: ok())) as upstream:
        pool = await asyncio.to_thread(UpstreamPool, upstream_config(upstream.target()))
        response: UpstreamResponse = await pool.request("GET", b"/", [], AUTHORITY, None, None)
        assert await collect(response.body) == b"ok"
        await response.release()
        await pool.close()
