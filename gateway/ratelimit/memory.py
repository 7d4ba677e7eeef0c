"""The memory backend: exact for every worker of a host together, through shared tables.

Each limited route gets a `SharedTable` file in the state directory. Under `gateway run` the
supervisor creates that directory and passes it to its workers (``GATEWAY_STATE_DIR``), so all
of them map the same files and a client counts once whichever worker its connection landed on;
the directory is removed when the supervisor exits. A gateway started in-process (tests,
`gateway.app.start`) without the variable uses a private directory of its own.

The file's name comes from the route and everything that gives a key's state its meaning
(strategy, rate, burst, key, table size): a reload that keeps them keeps the counts; one that
changes them starts a new table.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Final

from gateway.config.model import RateLimitConfig
from gateway.ratelimit.gcra import Verdict
from gateway.ratelimit.policy import policy_for
from gateway.ratelimit.table import Policy, SharedTable

STATE_DIR_ENV: Final = "GATEWAY_STATE_DIR"


class MemoryLimiter:
    """Decides for one route's policy against its shared table."""

    __slots__ = ("_policy", "_table")

    def __init__(self, table: SharedTable, policy: Policy) -> None:
        self._table = table
        self._policy = policy

    def decide(self, key: bytes) -> Verdict:
        return self._table.apply(key, time.monotonic(), self._policy)


def table_name(route: str, config: RateLimitConfig) -> str:
    rate = config.rate
    parts = (route, config.strategy, rate.limit, rate.period, config.burst, config.key)
    identity = repr((*parts, config.max_keys))
    return f"ratelimit-{hashlib.sha256(identity.encode()).hexdigest()[:20]}.table"


class Tables:
    """The shared tables this process has mapped, by file name, counted by their users.

    A runtime takes a table for each route that needs one (`limiter`) and gives them back when
    it is gone (`release`, from a finalizer on the runtime: the last request on an old
    runtime may still decide after a reload swapped in the new one). A reload that keeps a
    route's policy takes the same table before the old runtime lets go of it; a table nobody
    uses any more is unmapped.
    """

    def __init__(self, directory: Path | None = None) -> None:
        configured = os.environ.get(STATE_DIR_ENV)
        self._private: Path | None = None
        if directory is None:
            if configured:
                directory = Path(configured)
            else:
                directory = self._private = Path(tempfile.mkdtemp(prefix="gateway-state-"))
        self.directory = directory
        self._open: dict[str, SharedTable] = {}
        self._users: dict[str, int] = {}

    def limiter(self, route: str, config: RateLimitConfig) -> tuple[MemoryLimiter, str]:
        """A limiter on the route's table, and the table's name to `release` later."""
        name = table_name(route, config)
        policy = policy_for(config)
        table = self._open.get(name)
        if table is None:
            table = SharedTable(self.directory / name, config.max_keys, policy.width)
            self._open[name] = table
        self._users[name] = self._users.get(name, 0) + 1
        return MemoryLimiter(table, policy), name

    def release(self, names: list[str]) -> None:
        for name in names:
            users = self._users.get(name, 0) - 1
            if users > 0:
                self._users[name] = users
                continue
            self._users.pop(name, None)
            table = self._open.pop(name, None)
            if table is not None:
                table.close()

    @property
    def mapped(self) -> int:
        """How many tables are mapped (for tests)."""
        return len(self._open)

    def close(self) -> None:
        """Unmap every table and remove a private directory."""
        for table in self._open.values():
            table.close()
        self._open.clear()
        self._users.clear()
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
