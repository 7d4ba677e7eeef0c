"""The suite itself runs on the production event loop."""

import asyncio

import uvloop


async def test_async_tests_run_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
