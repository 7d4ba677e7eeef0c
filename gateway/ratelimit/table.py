"""A bounded key table in a shared memory-mapped file: one per policy, shared by the workers.

A client's connections land on different worker processes (SO_REUSEPORT spreads them), so a
per-process table would let a client through once per worker. Every worker of a host maps the
same file instead (the supervisor's state directory, `gateway.ratelimit.memory`), and a
decision reads and writes its key's bucket under an `fcntl` byte-range lock on that bucket.

Layout: a 64-byte header, then ``buckets`` buckets of ``SLOTS`` slots. Slot 0 of a bucket is
its *floor*; slots 1.. hold entries ``(fingerprint, state...)``: a 64-bit BLAKE2b fingerprint
of the key (0 marks a free slot) and the policy's ``width`` floats of state, whose meaning the
policy gives (GCRA: the theoretical arrival time, `gateway.ratelimit.gcra`; a moving window:
its log of timestamps, `gateway.ratelimit.policy`). With two floats a slot is 24 bytes and a
bucket 192, three cache lines.

Bounded without handing anyone a fresh bucket early. An entry whose state says "full bucket"
(expired) may be overwritten: forgetting it changes nothing. When every entry of a bucket is
live and a new key needs a slot, the entry closest to expiry is evicted and its state folded
into the bucket's floor (`Policy.merge`: at least as limiting as both). A key not found in its
bucket starts from the floor, not from a full bucket, so an evicted client that returns is at
least as limited as it was; newcomers to a crowded bucket are too, until the floor expires.
Under that much pressure limits get stricter, never looser: counted from the start, no client
is allowed more requests than an unbounded table would allow it (a property test drives every
strategy through a one-bucket table to check it). One request may be decided the other way
round: a floor that refused a request the client's own state would have allowed leaves it that
much more room for the next. Fingerprints collide with probability about n²/2⁶⁵ for n live keys
(1e-10 for 100,000 keys); two colliding keys would share a bucket, also strict.

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
SLOTS: Final = 8  # the floor and 7 entries: with two floats of state, 192 bytes
# Fingerprints remembered per process: a client's key recurs with each of its requests.
MEMO_SIZE: Final = 4096

# A policy's state for one key: ``Policy.width`` floats, the first the time at which it
# expires (GCRA: the theoretical arrival time; a fixed window: its end).
State = tuple[float, ...]


class Policy:
    """The arithmetic a table runs under a bucket's lock (`gateway.ratelimit.policy`)."""

    # Floats of state per key.
    width: int = 2

    def step(self, state: State | None, now: float) -> tuple[Verdict, State | None]:
        """The verdict for a request at ``now`` on ``state`` (None: never seen), and the
        state to store (None: leave it as it was)."""
        raise NotImplementedError

    def expired(self, state: State, now: float) -> bool:
        """Whether ``state`` is equivalent to a key never seen: its slot may be reused and,
        as a floor, it no longer applies."""
        raise NotImplementedError

    def merge(self, floor: State, evicted: State, now: float) -> State:
        """A live floor and an evicted live state folded into one at least as limiting as
        each: by default each component at its largest (the most limiting, for states whose
        components only grow with use)."""
        return tuple([max(a, b) for a, b in zip(floor, evicted, strict=True)])


def fingerprint(key: bytes) -> int:
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return value or 1  # 0 marks a free slot


def buckets_for(max_keys: int) -> int:
    return max(1, -(-max_keys // (SLOTS - 1)))


def table_bytes(max_keys: int, width: int) -> int:
    """The size of the file of a table for ``max_keys`` keys of ``width`` floats each."""
    return HEADER_SIZE + buckets_for(max_keys) * SLOTS * 8 * (1 + width)


class SharedTable:
    """One policy's table, mapped from ``path`` (created, or joined when it exists)."""

    def __init__(self, path: Path, max_keys: int, width: int = 2) -> None:
        self.path = path
        self.buckets = buckets_for(max_keys)
        self.width = width
        self._slot = struct.Struct("<Q" + "d" * width)
        self._state = struct.Struct("<" + "d" * width)
        self._bucket_size = SLOTS * self._slot.size
        # Only the fingerprints of a bucket: a lookup reads the one state it needs.
        self._fingerprints = struct.Struct("<" + f"Q{8 * width}x" * SLOTS)
        size = table_bytes(max_keys, width)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # Byte 0 is the header's lock; buckets lock bytes at their own offsets (>= 64).
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)
            try:
                existing = os.fstat(fd).st_size
                layout = (MAGIC, SLOTS, self._slot.size, self.buckets)
                if existing == 0:
                    os.ftruncate(fd, size)
                    os.pwrite(fd, HEADER.pack(*layout), 0)
                elif HEADER.unpack(os.pread(fd, HEADER.size, 0)) != layout:
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
        offset = HEADER_SIZE + (fp % self.buckets) * self._bucket_size
        slot_size = self._slot.size
        fd = self._fd
        table = self._map
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)
        try:
            fingerprints = self._fingerprints.unpack_from(table, offset)
            found = -1
            for index in range(1, SLOTS):
                if fingerprints[index] == fp:
                    found = index
                    break
            state: State | None
            if found >= 0:
                state = self._state.unpack_from(table, offset + found * slot_size + 8)
            else:
                floor: State = self._state.unpack_from(table, offset + 8)
                state = None if policy.expired(floor, now) else floor
            verdict, new_state = policy.step(state, now)
            if new_state is not None:
                slot = found if found >= 0 else self._free_slot(offset, now, policy)
                self._slot.pack_into(table, offset + slot * slot_size, fp, *new_state)
            return verdict
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)

    def _entry(self, offset: int, index: int) -> tuple[int, State]:
        row = self._slot.unpack_from(self._map, offset + index * self._slot.size)
        return row[0], row[1:]

    def _free_slot(self, offset: int, now: float, policy: Policy) -> int:
        """A slot for a new key: a free or expired one, else the live entry nearest expiry,
        whose state then joins the floor (never a fresh bucket for it on its return)."""
        victim = 1
        victim_state: State | None = None
        for index in range(1, SLOTS):
            fp, state = self._entry(offset, index)
            if fp == 0 or policy.expired(state, now):
                return index
            if victim_state is None or state < victim_state:
                victim, victim_state = index, state
        assert victim_state is not None
        _, floor = self._entry(offset, 0)
        if not policy.expired(floor, now):
            victim_state = policy.merge(floor, victim_state, now)
        self._slot.pack_into(self._map, offset, 0, *victim_state)
        return victim

    def live_keys(self, now: float, policy: Policy) -> int:
        """How many entries hold a live state (for tests and the admin view)."""
        count = 0
        for bucket in range(self.buckets):
            offset = HEADER_SIZE + bucket * self._bucket_size
            for index in range(1, SLOTS):
                fp, state = self._entry(offset, index)
                if fp and not policy.expired(state, now):
                    count += 1
        return count
