"""WebSocket caps across workers (gateway.websocket.caps): count files in one directory, as
the workers of one host share it; a dead worker's file is not counted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.model import WebSocketConfig
from gateway.errors import WebSocketCapacity, WebSocketClientLimit
from gateway.websocket.caps import PREFIX, CountFile, WebSocketCaps, fingerprint

ROUTE = WebSocketConfig(max_connections=3, max_per_client=2)


def alive_pid() -> int:
    """The pid of a process that lives as long as the test (another 'worker')."""
    return os.getppid()


def test_caps_are_counted_and_given_back(tmp_path: Path) -> None:
    caps = WebSocketCaps(tmp_path, slots=64)
    caps.acquire("live", "10.0.0.1", ROUTE, limit=100)
    caps.acquire("live", "10.0.0.1", ROUTE, limit=100)
    with pytest.raises(WebSocketClientLimit):
        caps.acquire("live", "10.0.0.1", ROUTE, limit=100)
    caps.acquire("live", "10.0.0.2", ROUTE, limit=100)
    with pytest.raises(WebSocketCapacity):
        caps.acquire("live", "10.0.0.3", ROUTE, limit=100)
    assert caps.total == 3
    assert caps.by_route() == {"live": 3}
    caps.release("live", "10.0.0.1")
    caps.acquire("live", "10.0.0.3", ROUTE, limit=100)
    with pytest.raises(WebSocketCapacity):
        caps.acquire("other", "10.0.0.9", ROUTE, limit=3)
    caps.close()
    assert not list(tmp_path.glob(f"{PREFIX}*"))


def test_two_workers_share_every_cap(tmp_path: Path) -> None:
    first = WebSocketCaps(tmp_path, slots=64)
    second = WebSocketCaps(tmp_path, slots=64, owner=alive_pid())
    first.acquire("live", "10.0.0.1", ROUTE, limit=100)
    first.acquire("live", "10.0.0.1", ROUTE, limit=100)
    # The same client on the other worker: its two relays count there too.
    with pytest.raises(WebSocketClientLimit):
        second.acquire("live", "10.0.0.1", ROUTE, limit=100)
    second.acquire("live", "10.0.0.2", ROUTE, limit=100)
    with pytest.raises(WebSocketCapacity):
        first.acquire("live", "10.0.0.3", ROUTE, limit=100)
    with pytest.raises(WebSocketCapacity):
        second.acquire("other", "10.0.0.3", WebSocketConfig(), limit=3)
    second.release("live", "10.0.0.2")
    first.acquire("live", "10.0.0.3", ROUTE, limit=100)
    second.close()
    first.close()


def test_a_dead_workers_counts_are_dropped(tmp_path: Path) -> None:
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(exited.stdout)
    stale = CountFile(tmp_path / f"{PREFIX}{dead}", 64)
    stale.add(fingerprint("route", "live"), 3)
    stale.add_total(3)
    stale.close()
    caps = WebSocketCaps(tmp_path, slots=64)
    caps.acquire("live", "10.0.0.1", ROUTE, limit=100)  # the dead worker's 3 are not counted
    assert not (tmp_path / f"{PREFIX}{dead}").exists()
    caps.close()


def test_tombstones_are_compacted_and_counts_survive(tmp_path: Path) -> None:
    caps = WebSocketCaps(tmp_path, slots=16)
    config = WebSocketConfig(max_connections=1000, max_per_client=1)
    caps.acquire("live", "keeper", config, limit=1000)
    # Far more distinct clients than slots, one at a time: only tombstones pile up.
    for index in range(200):
        caps.acquire("live", f"10.0.{index // 250}.{index % 250}", config, limit=1000)
        caps.release("live", f"10.0.{index // 250}.{index % 250}")
    with pytest.raises(WebSocketClientLimit):
        caps.acquire("live", "keeper", config, limit=1000)
    assert caps.total == 1
    caps.close()


def test_a_count_file_refuses_foreign_bytes(tmp_path: Path) -> None:
    path = tmp_path / f"{PREFIX}1"
    path.write_bytes(b"not a count file")
    with pytest.raises(ValueError, match="not a WebSocket count file"):
        CountFile(path)
