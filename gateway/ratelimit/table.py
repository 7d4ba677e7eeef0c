"""A bounded key table in a shared memory-mapped file: one per policy, shared by the workers.

A client's connections land on different worker processes (SO_REUSEPORT spreads them), so a
per-process table would let a client through once per worker. Every worker of a host maps the
same file instead (the supervisor's state directory, `gateway.ratelimit.memory`), and a
decision reads and writes its key's bucket under an `fcntl` byte-range lock on that bucket.

Layout: a 64-byte header, then ``buckets`` buckets of ``SLOTS`` slots of 24 bytes. Slot 0 of
a bucket is its *floor*; slots 1.. hold entries ``(fingerprint, a, b)``: a 64-bit BLAKE2b
fingerprint of the key (0 marks a free slot) and two floats of state, whose meaning the policy
gives (GCRA uses ``a``, the theoretical arrival time, `gateway.ratelimit.gcra`).

Bounded without handing anyone a fresh bucket early. An entry whose state says "full bucket"
(expired) may be overwritten: forgetting it changes nothing. When every entry of a bucket is
live and a new key needs a slot, the entry closest to expiry is evicted and its state folded
into the bucket's floor (the later TAT wins). A key not found in its bucket starts from the
floor, not from a full bucket, so an evicted client that returns is at least as limited as it
was; newcomers to a crowded bucket are too, until the floor expires. Under that much pressure
limits get stricter, never looser. Fingerprints collide with probability about n²/2⁶⁵ for n
live keys (1e-10 for 100,000 keys); two colliding keys would share a bucket, also strict.

Time is `time.monotonic()`: CLOCK_MONOTONIC is one clock for every process of a host.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from pathlib import Path
from typing import Final

from gateway.ratelimit.gcra import Verdict

MAGIC: Final = b"GWRLTAB1"
HEADER: Final = struct.Struct("<8sIIQ")  # magic, slots per bucket, slot size, buckets
HEADER_SIZE: Final = 64
SLOTS: Final = 8  # the floor and 7 entries: 192 bytes, three cache lines
SLOT: Final = struct.Struct("<Qdd")
STATE: Final = struct.Struct("<dd")
BUCKET: Final = struct.Struct("<" + "Qdd" * SLOTS)
BUCKET_SIZE: Final = BUCKET.size
# Only the fingerprints of a bucket: a lookup reads the one state it needs, not all of them.
FINGERPRINTS: Final = struct.Struct("<" + "Q16x" * SLOTS)
# Fingerprints remembered per process: a client's key recurs with each of its requests.
MEMO_SIZE: Final = 4096

# A policy's state for one key: two floats, ordered so that the larger is the more limited
# (GCRA: the theoretical arrival time first).
State = tuple[float, float]


class Policy:
    """The arithmetic a table runs under a bucket's lock (`gateway.ratelimit.policy`)."""

    def step(self, state: State | None, now: float) -> tuple[Verdict, State | None]:
        """The verdict for a request at ``now`` on ``state`` (None: never seen), and the
        state to store (None: leave it as it was)."""
        raise NotImplementedError

    def expired(self, state: State, now: float) -> bool:
        """Whether ``state`` is equivalent to a key never seen: its slot may be reused and,
        as a floor, it no longer applies."""
        raise NotImplementedError


def fingerprint(key: bytes) -> int:
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return value or 1  # 0 marks a free slot


def buckets_for(max_keys: int) -> int:
    return max(1, -(-max_keys // (SLOTS - 1)))


class SharedTable:
    """One policy's table, mapped from ``path`` (created, or joined when it exists)."""

    def __init__(self, path: Path, max_keys: int) -> None:
        self.path = path
        self.buckets = buckets_for(max_keys)
        size = HEADER_SIZE + self.buckets * BUCKET_SIZE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # Byte 0 is the header's lock; buckets lock bytes at their own offsets (>= 64).
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)
            try:
                existing = os.fstat(fd).st_size
                if existing == 0:
                    os.ftruncate(fd, size)
                    os.pwrite(fd, HEADER.pack(MAGIC, SLOTS, SLOT.size, self.buckets), 0)
                else:
                    magic, slots, slot_size, buckets = HEADER.unpack(os.pread(fd, HEADER.size, 0))
                    if (magic, slots, slot_size, buckets) != (
                        MAGIC,
                        SLOTS,
                        SLOT.size,
                        self.buckets,
                    ):
                        raise ValueError(f"{path} holds a different table layout")
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._memo: dict[bytes, int] = {}

    def close(self) -> None:
        if self._fd >= 0:
            self._map.close()
            os.close(self._fd)
            self._fd = -1

    def apply(self, key: bytes, now: float, policy: Policy) -> Verdict:
        """Run ``policy.step`` on ``key``'s state under its bucket's lock; store the result."""
        memo = self._memo
        fp = memo.get(key)
        if fp is None:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            fp = memo[key] = fingerprint(key)
        offset = HEADER_SIZE + (fp % self.buckets) * BUCKET_SIZE
        fd = self._fd
        table = self._map
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)
        try:
            fingerprints = FINGERPRINTS.unpack_from(table, offset)
            found = -1
            for index in range(1, SLOTS):
                if fingerprints[index] == fp:
                    found = index
                    break
            state: State | None
            if found >= 0:
                state = STATE.unpack_from(table, offset + found * SLOT.size + 8)
            else:
                floor: State = STATE.unpack_from(table, offset + 8)
                state = None if policy.expired(floor, now) else floor
            verdict, new_state = policy.step(state, now)
            if new_state is not None:
                slot = found if found >= 0 else self._free_slot(offset, now, policy)
                SLOT.pack_into(table, offset + slot * SLOT.size, fp, new_state[0], new_state[1])
            return verdict
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)

    def _free_slot(self, offset: int, now: float, policy: Policy) -> int:
        """A slot for a new key: a free or expired one, else the live entry nearest expiry,
        whose state then raises the floor (never a fresh bucket for it on its return)."""
        row = BUCKET.unpack_from(self._map, offset)
        victim = 1
        for index in range(1, SLOTS):
            if row[3 * index] == 0:
                return index
            state = (row[3 * index + 1], row[3 * index + 2])
            if policy.expired(state, now):
                return index
            if state < (row[3 * victim + 1], row[3 * victim + 2]):
                victim = index
        floor = (row[1], row[2])
        evicted = (row[3 * victim + 1], row[3 * victim + 2])
        if policy.expired(floor, now) or evicted > floor:
            SLOT.pack_into(self._map, offset, 0, evicted[0], evicted[1])
        return victim

    def live_keys(self, now: float, policy: Policy) -> int:
        """How many entries hold a live state (for tests and the admin view)."""
        count = 0
        for bucket in range(self.buckets):
            row = BUCKET.unpack_from(self._map, HEADER_SIZE + bucket * BUCKET_SIZE)
            for index in range(1, SLOTS):
                state = (row[3 * index + 1], row[3 * index + 2])
                if row[3 * index] and not policy.expired(state, now):
                    count += 1
        return count
