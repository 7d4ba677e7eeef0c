"""WebSocket caps counted across every worker of a host: global, per route, per client IP.

A client's connections land on different workers (SO_REUSEPORT), so per-process counts would
let `max_per_client: 5` become 5 per worker. Each worker keeps its own counts in a file of the
state directory (the one the rate limiter's tables use, `GATEWAY_STATE_DIR`), written by it
alone; an upgrade takes the directory's lock, sums the key's counts over every worker's file,
and adds one to its own only if every cap allows it. The lock makes that exact: two workers
cannot both take the last slot. Upgrades are rare next to requests, and a decision reads one
slot per worker.

A worker that dies leaves a file whose counts no longer hold: files are named by pid, and one
whose process is gone is removed by the next upgrade that sees it (its counts were only ever
stricter than the truth).

A worker's file: a header (magic, slot count, open relays), then an open-addressing table of
``(fingerprint, count)`` slots keyed by BLAKE2b fingerprints of ``route`` and ``route + client
IP``. A slot whose count fell to 0 is a tombstone; the table is rebuilt when they pile up.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from gateway.config.model import WebSocketConfig
from gateway.errors import WebSocketCapacity, WebSocketClientLimit

STATE_DIR_ENV: Final = "GATEWAY_STATE_DIR"
MAGIC: Final = b"GWWSCAP1"
HEADER: Final = struct.Struct("<8sQQQ")  # magic, slots, open relays, slots ever used
SLOT: Final = struct.Struct("<QQ")  # fingerprint (0: never used), count
PREFIX: Final = "websockets-"
LOCK_NAME: Final = "websockets.lock"


def fingerprint(*parts: str) -> int:
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class CountFile:
    """One worker's counts (see the module doc). Read and written under the directory's lock."""

    __slots__ = ("_map", "path", "slots")

    def __init__(self, path: Path, slots: int | None = None) -> None:
        """Create the file with ``slots`` slots, or map an existing one (``slots`` None)."""
        self.path = path
        if slots is not None:
            with path.open("wb") as file:
                file.truncate(HEADER.size + slots * SLOT.size)
                file.write(HEADER.pack(MAGIC, slots, 0, 0))
        with path.open("r+b") as file:
            self._map = mmap.mmap(file.fileno(), 0)
        magic, count = b"", 0
        if len(self._map) >= HEADER.size:
            magic, count, _, _ = HEADER.unpack_from(self._map, 0)
        if magic != MAGIC or len(self._map) != HEADER.size + count * SLOT.size:
            self._map.close()
            raise ValueError(f"{path} is not a WebSocket count file")
        self.slots = int(count)

    @property
    def total(self) -> int:
        return int(HEADER.unpack_from(self._map, 0)[2])

    def _probe(self, key: int) -> Iterator[int]:
        start = key % self.slots
        for step in range(self.slots):
            yield HEADER.size + ((start + step) % self.slots) * SLOT.size

    def get(self, key: int) -> int:
        for offset in self._probe(key):
            found, count = SLOT.unpack_from(self._map, offset)
            if found == key:
                return int(count)
            if found == 0:
                return 0
        return 0

    def add(self, key: int, delta: int) -> None:
        """Add ``delta`` to ``key``'s count (the relay total is `add_total`'s)."""
        reuse: int | None = None
        free: int | None = None
        for offset in self._probe(key):
            found, count = SLOT.unpack_from(self._map, offset)
            if found == key:
                SLOT.pack_into(self._map, offset, key, max(count + delta, 0))
                return
            if found == 0:
                free = offset
                break
            if count == 0 and reuse is None:
                reuse = offset  # a tombstone: usable for a new key
        if delta <= 0:
            return
        if reuse is not None:
            SLOT.pack_into(self._map, reuse, key, delta)
        elif free is not None:
            SLOT.pack_into(self._map, free, key, delta)
            self._set_header(used=self.used + 1)
        else:
            raise RuntimeError("WebSocket count file full")

    def _set_header(self, *, total: int | None = None, used: int | None = None) -> None:
        magic, slots, old_total, old_used = HEADER.unpack_from(self._map, 0)
        HEADER.pack_into(
            self._map,
            0,
            magic,
            slots,
            old_total if total is None else total,
            old_used if used is None else used,
        )

    def add_total(self, delta: int) -> None:
        self._set_header(total=max(self.total + delta, 0))

    @property
    def used(self) -> int:
        """Slots ever used (live or tombstone), kept in the header."""
        return int(HEADER.unpack_from(self._map, 0)[3])

    def compact(self) -> None:
        """Rewrite the live slots without tombstones (their count 0)."""
        live = []
        for index in range(self.slots):
            found, count = SLOT.unpack_from(self._map, HEADER.size + index * SLOT.size)
            if found and count:
                live.append((found, count))
        self._map[HEADER.size :] = bytes(self.slots * SLOT.size)
        self._set_header(used=0)
        for key, count in live:
            self.add(key, count)

    def close(self) -> None:
        self._map.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WebSocketCaps:
    """This worker's relays, counted against the caps across the host's workers."""

    __slots__ = (
        "_by_route",
        "_closed",
        "_directory",
        "_lock_path",
        "_mine",
        "_others",
        "_private",
    )

    def __init__(
        self, directory: Path | None = None, slots: int = 1 << 16, owner: int | None = None
    ) -> None:
        """``owner`` names this worker's file (its pid; tests give others)."""
        self._private: Path | None = None
        if directory is None:
            configured = os.environ.get(STATE_DIR_ENV)
            if configured:
                directory = Path(configured)
            else:
                directory = self._private = Path(tempfile.mkdtemp(prefix="gateway-ws-"))
        self._directory = directory
        self._lock_path = directory / LOCK_NAME
        pid = os.getpid() if owner is None else owner
        self._mine = CountFile(directory / f"{PREFIX}{pid}", slots)
        self._others: dict[Path, CountFile] = {}
        # This worker's relays per route, for the gauge (summed over workers by Prometheus).
        self._by_route: dict[str, int] = {}
        self._closed = False

    @property
    def total(self) -> int:
        """Relays open in this worker."""
        return self._mine.total

    def by_route(self) -> dict[str, int]:
        return dict(self._by_route)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock_path.open("a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _workers(self) -> list[CountFile]:
        """Every worker's count file, this one's first; files of dead workers are removed."""
        files = [self._mine]
        seen = set()
        for entry in os.scandir(self._directory):
            if not entry.name.startswith(PREFIX):
                continue
            path = Path(entry.path)
            if path == self._mine.path:
                continue
            seen.add(path)
            pid = int(entry.name[len(PREFIX) :]) if entry.name[len(PREFIX) :].isdigit() else 0
            if not _alive(pid):
                stale = self._others.pop(path, None)
                if stale is not None:
                    stale.close()
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            mapped = self._others.get(path)
            if mapped is None:
                try:
                    mapped = self._others[path] = CountFile(path)
                except (ValueError, OSError):
                    continue  # being created by a starting worker: it holds nothing yet
            files.append(mapped)
        for gone in set(self._others) - seen:
            self._others.pop(gone).close()
        return files

    def acquire(self, route: str, client_ip: str, config: WebSocketConfig, limit: int) -> None:
        """Take a slot, or raise WebSocketCapacity (503) / WebSocketClientLimit (429)."""
        route_key = fingerprint("route", route)
        client_key = fingerprint("client", route, client_ip)
        with self._locked():
            files = self._workers()
            total = sum(file.total for file in files)
            if total >= limit:
                raise WebSocketCapacity(f"{limit} WebSockets are open, the gateway's cap")
            on_route = sum(file.get(route_key) for file in files)
            if on_route >= config.max_connections:
                raise WebSocketCapacity(f"route {route!r} has {on_route} WebSockets open, its cap")
            if config.max_per_client is not None:
                mine = sum(file.get(client_key) for file in files)
                if mine >= config.max_per_client:
                    raise WebSocketClientLimit(
                        f"this client has {mine} WebSockets open on route {route!r}, its cap"
                    )
            own = self._mine
            if own.used > own.slots // 2:
                own.compact()
            own.add(route_key, 1)
            own.add(client_key, 1)
            own.add_total(1)
        self._by_route[route] = self._by_route.get(route, 0) + 1

    def release(self, route: str, client_ip: str) -> None:
        with self._locked():
            own = self._mine
            own.add(fingerprint("route", route), -1)
            own.add(fingerprint("client", route, client_ip), -1)
            own.add_total(-1)
        left = self._by_route.get(route, 0) - 1
        if left > 0:
            self._by_route[route] = left
        else:
            self._by_route.pop(route, None)

    def close(self) -> None:
        """Unmap and remove this worker's file (once; a drained gateway may be drained again)."""
        if self._closed:
            return
        self._closed = True
        for file in self._others.values():
            file.close()
        self._others.clear()
        self._mine.close()
        with contextlib.suppress(FileNotFoundError):
            self._mine.path.unlink()
        if self._private is not None:
            for path in self._private.iterdir():
                path.unlink()
            self._private.rmdir()
