"""The lean Redis client (gateway.redisproto.client) against a real redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.redisproto.client import MAX_PENDING, RedisClient
from gateway.redisproto.errors import ConnectionGone, RedisError
from tests.redis_server import redis_server, start_redis


async def test_commands_pipelined_on_one_connection(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        client = RedisClient(server.url)
        try:
            replies = await asyncio.gather(*(client.command("INCR", "n") for _ in range(200)))
            assert sorted(replies) == list(range(1, 201))  # type: ignore[type-var]
            assert await client.command("GET", "n") == b"200"
            with pytest.raises(RedisError, match="unknown command"):
                await client.command("NOSUCHCOMMAND")
            # An error reply leaves the connection in step.
            assert await client.command("PING") == "PONG"
            clients = await client.command("CLIENT", "LIST")
            assert isinstance(clients, bytes)
            assert clients.count(b"\n") == 1  # one connection for all of the above
        finally:
            await client.close()


async def test_auth_and_database_from_the_url(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        assert server.command("CONFIG", "SET", "requirepass", "s3cret") == "+OK"
        client = RedisClient(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        wrong = RedisClient(f"redis://:nope@127.0.0.1:{server.port}/0")
        try:
            await client.command("SET", "where", "db3")
            info = await client.command("CLIENT", "INFO")
            assert isinstance(info, bytes)
            assert b" db=3 " in info
            with pytest.raises(RedisError, match=r"WRONGPASS|invalid"):
                await wrong.command("PING")
        finally:
            await client.close()
            await wrong.close()


async def test_a_restarted_server_is_reached_again(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    client = RedisClient(server.url)
    try:
        assert await client.command("PING") == "PONG"
        port = server.port
        server.stop()
        with pytest.raises((ConnectionGone, OSError)):
            await client.command("PING")
        server = start_redis(tmp_path, port=port)
        assert await client.command("PING") == "PONG"
    finally:
        await client.close()
        server.stop()


async def test_a_stalled_server_never_queues_more_than_the_bound(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        client = RedisClient(server.url)
        try:
            assert await client.command("PING") == "PONG"
            server.pause()
            waiting = [asyncio.ensure_future(client.command("PING")) for _ in range(MAX_PENDING)]
            await asyncio.sleep(0)
            with pytest.raises(ConnectionGone, match="already wait"):
                await client.command("PING")
            # Callers that give up (their budget) leave; the replies that come later are
            # dropped in order and the connection stays usable.
            for task in waiting[:-1]:
                task.cancel()
            server.resume()
            assert await asyncio.wait_for(waiting[-1], 10) == "PONG"
            assert await client.command("ECHO", "after") == b"after"
        finally:
            server.resume()
            await client.close()
