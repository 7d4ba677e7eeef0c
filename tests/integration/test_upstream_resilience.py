"""Balancing, health, retries and circuit breaking through a live gateway (issue 9).

Every upstream is a real server on loopback that says which target answered; a dead target is
a port nothing listens on. The gateway runs in this process, so a test can read its pools'
health directly as well as through the admin view and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import aiohttp
import pytest
from prometheus_client import REGISTRY

from gateway.app import RunningGateway, start
from gateway.config.model import (
    AdminConfig,
    CircuitBreakerConfig,
    HealthCheckConfig,
    ListenAddress,
    PassiveHealthConfig,
    PoolConfig,
    RetryBackoff,
    RetryConfig,
    RouteConfig,
    Target,
    UpstreamConfig,
)
from gateway.upstream.pool import UpstreamPool
from tests.harness import LOCAL, closed_port, eventually, gateway_config
from tests.upstream_servers import RawConnection, RawUpstream, ok

FAST_BACKOFF = RetryBackoff(base=0.001, max=0.001)


@dataclass
class Named:
    """An upstream answering ``200 <name>``; ``/healthz`` answers ``health`` (200 or 503)."""

    name: str
    health: int = 200
    # Set: requests wait for it (the gate); clear it to hold them.
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    # Close the connection on each request without answering (a reset before any byte).
    drop: bool = False
    status: int = 200
    served: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    checks: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    server: RawUpstream | None = None

    def __post_init__(self) -> None:
        self.gate.set()

    async def handle(self, conn: RawConnection) -> None:
        while (request := await conn.read_request()) is not None:
            if request.target == b"/healthz":
                self.checks += 1
                reason = b"OK" if self.health == 200 else b"Unavailable"
                await conn.send(
                    b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    % (self.health, reason)
                )
                return
            if self.drop:
                self.served.append(request.method)
                return
            self.served.append(request.method)
            self.bodies.append(request.body)
            self.arrived.set()
            await self.gate.wait()
            body = self.name.encode()
            await conn.send(
                ok(body)
                if self.status == 200
                else b"HTTP/1.1 %d Nope\r\nContent-Length: %d\r\n\r\n%s"
                % (self.status, len(body), body)
            )

    @property
    def target(self) -> Target:
        assert self.server is not None
        return self.server.target()


@contextlib.asynccontextmanager
async def upstreams(*names: str, port: int = 0) -> AsyncIterator[list[Named]]:
    started: list[Named] = []
    async with contextlib.AsyncExitStack() as stack:
        for name in names:
            named = Named(name)
            named.server = await stack.enter_async_context(RawUpstream(named.handle, port=port))
            started.append(named)
        yield started


def upstream(
    targets: Sequence[Target],
    *,
    passive: PassiveHealthConfig | None = None,
    **options: object,
) -> UpstreamConfig:
    config = UpstreamConfig(name="svc", targets=tuple(targets), passive_health=passive)
    return replace(config, **options)  # type: ignore[arg-type]


async def launch(
    gateways: list[RunningGateway],
    config: UpstreamConfig,
    retries: RetryConfig | None = RetryConfig(backoff=FAST_BACKOFF),  # noqa: B008
) -> tuple[RunningGateway, str]:
    route = RouteConfig(name="svc", upstream="svc", retries=retries)
    gateway = await start(
        replace(gateway_config([config], [route]), admin=AdminConfig(ListenAddress(LOCAL, 0)))
    )
    gateways.append(gateway)
    return gateway, f"http://{LOCAL}:{gateway.address[1]}"


def retries_counted(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "gateway_upstream_retries_total", {"upstream": "svc", "reason": reason}
    )
    return value or 0.0


def pool_of(gateway: RunningGateway) -> UpstreamPool:
    return gateway.dispatcher.runtime.pools["svc"]


async def get_all(
    client: aiohttp.ClientSession, url: str, count: int, method: str = "GET", **kw: object
) -> list[tuple[int, str]]:
    answers = []
    for _ in range(count):
        async with client.request(method, url, **kw) as response:  # type: ignore[arg-type]
            answers.append((response.status, await response.text()))
    return answers


def holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


# --------------------------------------------------------------------------- health


async def test_a_dead_target_is_ejected_and_all_50_requests_succeed(
    gateways: list[RunningGateway],
) -> None:
    async with upstreams("live") as (live,):
        dead = Target("http", LOCAL, closed_port())
        passive = PassiveHealthConfig(consecutive_failures=2, base_ejection=60.0)
        gateway, base = await launch(gateways, upstream([live.target, dead], passive=passive))
        async with aiohttp.ClientSession() as client:
            answers = await get_all(client, f"{base}/x", 50)
            assert answers == [(200, "live")] * 50
            assert len(live.served) == 50
            pool = pool_of(gateway)
            assert pool.health.is_ejected(1)
            assert not pool.health.is_ejected(0)
            # The admin view and the gauge say the same.
            admin = f"http://{LOCAL}:{gateway.admin_address[1]}"  # type: ignore[index]
            async with client.get(f"{admin}/config") as response:
                state = (await response.json())["upstream_state"]["svc"]
            assert state["panic"] is False
            assert [t["healthy"] for t in state["targets"]] == [True, False]
            assert state["targets"][1]["ejected_for_s"] > 50
            gauge = f'gateway_upstream_target_healthy{{target="{dead}",upstream="svc"}} 0.0'
            ejections = f'gateway_upstream_ejections_total{{target="{dead}",upstream="svc"}} 1.0'

            async def scraped() -> bool:
                async with client.get(f"{admin}/metrics") as response:
                    text = await response.text()
                assert ejections in text
                return gauge in text

            await eventually(scraped, "the gauge sampled", 5)


async def test_an_ejected_target_takes_traffic_again_after_it_recovers(
    gateways: list[RunningGateway],
) -> None:
    port = closed_port()
    async with upstreams("live") as (live,):
        passive = PassiveHealthConfig(consecutive_failures=1, base_ejection=0.3, max_ejection=1.0)
        returning = Target("http", LOCAL, port)
        gateway, base = await launch(gateways, upstream([live.target, returning], passive=passive))
        async with aiohttp.ClientSession() as client:
            assert await get_all(client, f"{base}/x", 4) == [(200, "live")] * 4
            assert pool_of(gateway).health.is_ejected(1)
            async with upstreams("back", port=port) as (back,):
                await asyncio.sleep(0.35)  # the ejection ends
                answers = await get_all(client, f"{base}/x", 10)
                assert {status for status, _ in answers} == {200}
                assert len(back.served) == 5  # round robin: half of them
                assert not pool_of(gateway).health.is_ejected(1)


async def test_active_checks_take_a_failing_target_out_and_bring_it_back(
    gateways: list[RunningGateway],
) -> None:
    async with upstreams("a", "b") as (a, b):
        check = HealthCheckConfig(
            path="/healthz",
            interval=0.05,
            timeout=0.05,
            healthy_threshold=2,
            unhealthy_threshold=2,
        )
        config = upstream([a.target, b.target], health_check=check)
        gateway, base = await launch(gateways, config)
        health = pool_of(gateway).health
        await eventually(holds(lambda: a.checks >= 2 and b.checks >= 2), "the first checks")
        b.health = 503
        await eventually(holds(lambda: not health.checked_healthy[1]), "b taken out", 5)
        async with aiohttp.ClientSession() as client:
            assert await get_all(client, f"{base}/x", 10) == [(200, "a")] * 10
            b.health = 200
            await eventually(holds(lambda: health.checked_healthy[1]), "b brought back", 5)
            answers = await get_all(client, f"{base}/x", 10)
        assert sorted(body for _, body in answers) == ["a"] * 5 + ["b"] * 5


async def test_when_every_target_is_out_all_of_them_are_used(
    gateways: list[RunningGateway],
) -> None:
    async with upstreams("a", "b") as (a, b):
        a.status = b.status = 500
        passive = PassiveHealthConfig(consecutive_failures=1, base_ejection=60.0)
        gateway, base = await launch(gateways, upstream([a.target, b.target], passive=passive))
        async with aiohttp.ClientSession() as client:
            await get_all(client, f"{base}/x", 2)
            assert pool_of(gateway).health.panic
            answers = await get_all(client, f"{base}/x", 6)
        # Panic mode: the upstream's own 500s still reach the client, from both targets.
        assert sorted(answers) == [(500, "a")] * 3 + [(500, "b")] * 3


# ------------------------------------------------------------------------ balancing


async def test_round_robin_follows_the_weights(gateways: list[RunningGateway]) -> None:
    async with upstreams("heavy", "light") as (heavy, light):
        targets = [replace(heavy.target, weight=3), light.target]
        _, base = await launch(gateways, upstream(targets))
        async with aiohttp.ClientSession() as client:
            answers = await get_all(client, f"{base}/x", 40)
    assert [body for _, body in answers].count("heavy") == 30
    # Smooth: never more than three heavy answers in a row.
    assert "heavy" * 4 not in "".join(body for _, body in answers)


async def test_least_requests_avoids_the_target_that_is_busy(
    gateways: list[RunningGateway],
) -> None:
    async with upstreams("slow", "fast") as (slow, fast):
        slow.gate.clear()  # the slow target holds what it gets
        _, base = await launch(
            gateways, upstream([slow.target, fast.target], balance="least_requests")
        )
        async with aiohttp.ClientSession() as client:
            held: list[asyncio.Task[list[tuple[int, str]]]] = []
            answers = []
            for _ in range(20):
                task = asyncio.create_task(get_all(client, f"{base}/x", 1))
                done = asyncio.create_task(slow.arrived.wait())
                await asyncio.wait({task, done}, return_when=asyncio.FIRST_COMPLETED)
                done.cancel()
                if task.done():
                    answers += task.result()
                else:
                    held.append(task)
                    slow.arrived.clear()
            # With one request in flight on the slow target, every later one went elsewhere.
            assert len(slow.served) == 1
            assert answers == [(200, "fast")] * 19
            slow.gate.set()
            for task in held:
                assert await task == [(200, "slow")]


async def test_consistent_hash_keeps_each_key_on_one_target_as_targets_come_and_go(
    gateways: list[RunningGateway],
) -> None:
    async with upstreams("a", "b", "c") as named:
        config = upstream(
            [n.target for n in named], balance="consistent_hash", hash_key="header:x-user"
        )
        gateway, base = await launch(gateways, config)
        users = [f"user-{n}" for n in range(40)]

        async def placement() -> dict[str, str]:
            placed: dict[str, set[str]] = {}
            async with aiohttp.ClientSession() as client:
                for user in users:
                    for _ in range(3):
                        [(status, body)] = await get_all(
                            client, f"{base}/x", 1, headers={"X-User": user}
                        )
                        assert status == 200
                        placed.setdefault(user, set()).add(body)
            assert all(len(bodies) == 1 for bodies in placed.values())
            return {user: bodies.pop() for user, bodies in placed.items()}

        before = await placement()
        assert set(before.values()) == {"a", "b", "c"}
        # Target c leaves: only its keys move.
        gateway.reload(
            replace(gateway.config, upstreams=(replace(config, targets=config.targets[:2]),))
        )
        after = await placement()
        for user, where in before.items():
            if where != "c":
                assert after[user] == where


# -------------------------------------------------------------------------- retries


async def test_a_connect_failure_is_retried_on_another_target(
    gateways: list[RunningGateway],
) -> None:
    async with upstreams("live") as (live,):
        dead = Target("http", LOCAL, closed_port())
        _, base = await launch(gateways, upstream([dead, live.target]))
        before = retries_counted("connect_failure")
        async with aiohttp.ClientSession() as client:
            assert await get_all(client, f"{base}/x", 10) == [(200, "live")] * 10
    assert retries_counted("connect_failure") - before == 5


async def test_a_burst_meeting_a_dead_target_is_all_answered(
    gateways: list[RunningGateway],
) -> None:
    async with upstreams("live") as (live,):
        dead = Target("http", LOCAL, closed_port())
        # No ejection: every other request meets the dead target, all at once.
        _, base = await launch(gateways, upstream([dead, live.target]))
        async with aiohttp.ClientSession() as client:
            burst = await asyncio.gather(*(get_all(client, f"{base}/x", 1) for _ in range(40)))
    # Refused connects are retried outside the retry budget: they reached no upstream.
    assert [answer for answers in burst for answer in answers] == [(200, "live")] * 40


async def test_post_is_never_retried_by_default(gateways: list[RunningGateway]) -> None:
    async with upstreams("live") as (live,):
        dead = Target("http", LOCAL, closed_port())
        _, base = await launch(gateways, upstream([dead, live.target]))
        async with aiohttp.ClientSession() as client:
            answers = await get_all(client, f"{base}/x", 10, method="POST", data=b"order")
    # Round robin: every other POST met the dead target first, and was not sent again.
    assert sorted(status for status, _ in answers) == [200] * 5 + [502] * 5
    assert live.served == [b"POST"] * 5


async def test_post_is_retried_with_its_body_when_the_route_opts_in(
    gateways: list[RunningGateway],
) -> None:
    async with upstreams("dropper", "live") as (dropper, live):
        dropper.drop = True  # closes each connection before answering: a reset
        retries = RetryConfig(non_idempotent=True, backoff=FAST_BACKOFF)
        _, base = await launch(gateways, upstream([dropper.target, live.target]), retries)
        async with aiohttp.ClientSession() as client:
            answers = await get_all(client, f"{base}/x", 4, method="POST", data=b"x" * 5000)
    assert answers == [(200, "live")] * 4
    assert live.bodies == [b"x" * 5000] * 4
    assert len(dropper.served) == 2


async def test_a_reset_is_retried_and_retries_can_be_turned_off(
    gateways: list[RunningGateway],
) -> None:
    async with upstreams("dropper", "live") as (dropper, live):
        dropper.drop = True
        targets = [dropper.target, live.target]
        _, base = await launch(gateways, upstream(targets))
        _, without = await launch(gateways, upstream(targets), retries=None)
        async with aiohttp.ClientSession() as client:
            assert await get_all(client, f"{base}/x", 4) == [(200, "live")] * 4
            answers = await get_all(client, f"{without}/x", 4)
    assert sorted(status for status, _ in answers) == [200, 200, 502, 502]


async def test_503_is_retried_only_when_the_route_lists_it(
    gateways: list[RunningGateway],
) -> None:
    async with upstreams("busy", "live") as (busy, live):
        busy.status = 503
        targets = [busy.target, live.target]
        listed = RetryConfig(on=("503",), backoff=FAST_BACKOFF)
        _, base = await launch(gateways, upstream(targets), listed)
        _, default = await launch(gateways, upstream(targets))
        async with aiohttp.ClientSession() as client:
            assert await get_all(client, f"{base}/x", 4) == [(200, "live")] * 4
            answers = await get_all(client, f"{default}/x", 4)
    assert sorted(answers) == [(200, "live")] * 2 + [(503, "busy")] * 2


async def test_the_retry_budget_caps_retries_when_everything_fails() -> None:
    async with upstreams("dropper") as (dropper,):
        dropper.drop = True
        pool = UpstreamPool(upstream([dropper.target]))
        # Retries wait long enough to be in flight together.
        retries = RetryConfig(attempts=2, backoff=RetryBackoff(base=0.2, max=0.2))

        async def one() -> None:
            with pytest.raises(Exception, match="closed the connection"):
                await pool.request("GET", b"/", [], b"h", None, None, retries=retries)

        await asyncio.gather(*(one() for _ in range(20)))
        await pool.close()
    # Without a budget every request would have been sent twice (40). With 20% of the 20
    # requests in flight, and never fewer than 3, only a handful were.
    assert 21 <= len(dropper.served) <= 26
    assert pool.outstanding == 0
    assert pool.inflight == [0]


# ---------------------------------------------------------------- circuit breaking


async def test_max_requests_answers_503_without_asking_the_upstream(
    gateways: list[RunningGateway],
) -> None:
    async with upstreams("slow") as (slow,):
        slow.gate.clear()
        breaker = CircuitBreakerConfig(max_requests=1)
        _, base = await launch(gateways, upstream([slow.target], circuit_breaker=breaker))
        async with aiohttp.ClientSession() as client:
            first = asyncio.create_task(get_all(client, f"{base}/x", 1))
            await slow.arrived.wait()
            async with client.get(f"{base}/y") as response:
                assert response.status == 503
                error = await response.json()
            assert error["error"] == "upstream_overloaded"
            assert "request_id" in error
            slow.gate.set()
            assert await first == [(200, "slow")]
    assert slow.served == [b"GET"]


async def test_max_pending_answers_503_once_the_queue_for_a_slot_is_full(
    gateways: list[RunningGateway],
) -> None:
    async with upstreams("slow") as (slow,):
        slow.gate.clear()
        config = upstream(
            [slow.target],
            pool=PoolConfig(max_connections=1, max_idle=1),
            circuit_breaker=CircuitBreakerConfig(max_pending=1),
        )
        gateway, base = await launch(gateways, config)
        async with aiohttp.ClientSession() as client:
            first = asyncio.create_task(get_all(client, f"{base}/1", 1))
            await slow.arrived.wait()
            second = asyncio.create_task(get_all(client, f"{base}/2", 1))
            await eventually(holds(lambda: pool_of(gateway).waiting == 1), "a waiter", 5)
            async with client.get(f"{base}/3") as response:
                assert response.status == 503
                assert (await response.json())["error"] == "upstream_overloaded"
            slow.gate.set()
            assert await first == [(200, "slow")]
            assert await second == [(200, "slow")]
    assert len(slow.served) == 2
