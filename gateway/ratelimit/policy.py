"""A route's limit as the backends apply it: the strategy's arithmetic over a key's state."""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Final

from gateway.config.model import Rate, RateLimitConfig
from gateway.ratelimit.gcra import Verdict, decide
from gateway.ratelimit.table import Policy, State


class TokenBucket(Policy):
    """GCRA over the table's two floats: ``(TAT, 0.0)``."""

    __slots__ = ("burst", "interval", "rate")

    def __init__(self, rate: Rate, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.interval = rate.interval

    def step(self, state: State | None, now: float) -> tuple[Verdict, State | None]:
        verdict, new_tat = decide(
            None if state is None else state[0], now, self.interval, self.burst
        )
        return verdict, None if new_tat is None else (new_tat, 0.0)

    def expired(self, state: State, now: float) -> bool:
        # A TAT not after now is a full bucket: the same as a key never seen.
        return state[0] <= now


class FixedWindow(Policy):
    """``limit`` requests per window of ``period`` seconds. Windows are aligned on the clock
    (window ``n`` is ``[n*period, (n+1)*period)``), so every key's windows turn together and a
    live state always belongs to the current window; the table's floats are ``(end, count)``.

    The `limits` library opens a key's window at its first request instead. Aligned windows
    are what lets a bounded table stay exact: the floor of two live states is the larger count
    of the same window, never a window that ends early (`gateway.ratelimit.table`)."""

    __slots__ = ("limit", "period")

    def __init__(self, rate: Rate) -> None:
        self.limit = rate.limit
        self.period = float(rate.period)

    def step(self, state: State | None, now: float) -> tuple[Verdict, State | None]:
        if state is None or state[0] <= now:
            end, count = (math.floor(now / self.period) + 1) * self.period, 0
        else:
            end, count = state[0], int(state[1])
        left = end - now
        if count >= self.limit:
            return Verdict(False, 0, left, left), None
        count += 1
        return Verdict(True, self.limit - count, 0.0, left), (end, float(count))

    def expired(self, state: State, now: float) -> bool:
        return state[0] <= now


# A sliding window keeps two counts in one float: previous * 2**26 + current. A double holds
# integers exactly up to 2**53, so both fit while each stays below 2**26 (the loader refuses
# larger limits).
COUNT_BASE: Final = 1 << 26
MAX_SLIDING_LIMIT: Final = COUNT_BASE - 1


class SlidingWindow(Policy):
    """The `limits` library's sliding window counter: the count of the current window plus
    that of the previous one weighted by how much of it still overlaps the last ``period``
    seconds. Windows are aligned on the clock (window ``n`` is ``[n*period, (n+1)*period)``),
    as in limits' memory storage, so every key's windows turn together. The table's floats are
    ``(end of the next window, previous * 2**26 + current)``: the state expires when even the
    current count no longer weighs anything."""

    __slots__ = ("limit", "period")

    def __init__(self, rate: Rate) -> None:
        self.limit = rate.limit
        self.period = float(rate.period)

    def counts(self, state: State | None, window: int) -> tuple[int, int]:
        """The (previous, current) counts of ``state`` seen from ``window``."""
        if state is None:
            return 0, 0
        previous, current = divmod(int(state[1]), COUNT_BASE)
        stored = round(state[0] / self.period) - 2
        if stored == window:
            return previous, current
        if stored == window - 1:
            return current, 0
        return 0, 0

    def _state(self, window: int, previous: int, current: int) -> State:
        return ((window + 2) * self.period, float(previous * COUNT_BASE + current))

    def step(self, state: State | None, now: float) -> tuple[Verdict, State | None]:
        period = self.period
        limit = self.limit
        window = math.floor(now / period)
        previous, current = self.counts(state, window)
        end = (window + 1) * period
        weight = (end - now) / period
        if math.floor(previous * weight + current) + 1 > limit:
            # Allowed again once the weighted count drops below the limit: later in this
            # window as the previous one weighs less, or in the next, where this one is the
            # previous (refused with current < limit means previous > 0).
            if current < limit:
                at = end - period * (limit - current) / previous
            else:
                at = end + period - period * limit / current
            reset = (end + period if current else end) - now
            return Verdict(False, 0, max(at - now, 0.0), reset), None
        current += 1
        remaining = limit - math.floor(previous * weight + current)
        verdict = Verdict(True, max(remaining, 0), 0.0, end + period - now)
        return verdict, self._state(window, previous, current)

    def expired(self, state: State, now: float) -> bool:
        return state[0] <= now

    def merge(self, floor: State, evicted: State, now: float) -> State:
        # Seen from the same window, each count at its largest.
        window = math.floor(now / self.period)
        floor_previous, floor_current = self.counts(floor, window)
        evicted_previous, evicted_current = self.counts(evicted, window)
        return self._state(
            window, max(floor_previous, evicted_previous), max(floor_current, evicted_current)
        )


class MovingWindow(Policy):
    """The `limits` library's moving window: a request is allowed when fewer than ``limit``
    were allowed in the ``period`` seconds before it, which takes a log of the last ``limit``
    allowed requests' times. The table's floats are ``(newest + period, head, log...)``: the
    log is a ring whose oldest entry is at ``head`` (-inf while unused)."""

    __slots__ = ("limit", "period")

    def __init__(self, rate: Rate) -> None:
        self.limit = rate.limit
        self.period = float(rate.period)
        self.width = 2 + rate.limit

    def log(self, state: State | None) -> list[float]:
        """The times of the last ``limit`` allowed requests, oldest first."""
        if state is None:
            return [-math.inf] * self.limit
        head = 2 + int(state[1])
        return [*state[head:], *state[2:head]]

    def step(self, state: State | None, now: float) -> tuple[Verdict, State | None]:
        period = self.period
        oldest = -math.inf if state is None else state[2 + int(state[1])]
        if oldest >= now - period:
            # The limit-th most recent allowed request is still within the window.
            assert state is not None
            return Verdict(False, 0, oldest + period - now, state[0] - now), None
        if state is None:
            ring = [-math.inf] * self.limit
            head = 0
        else:
            ring = list(state[2:])
            head = int(state[1])
        ring[head] = now
        head = (head + 1) % self.limit
        entries = [*ring[head:], *ring[:head]]
        within = self.limit - bisect_left(entries, now - period)
        verdict = Verdict(True, self.limit - within, 0.0, period)
        return verdict, (now + period, float(head), *ring)

    def expired(self, state: State, now: float) -> bool:
        # Strictly after: a request exactly a period after the newest still sees it.
        return state[0] < now

    def merge(self, floor: State, evicted: State, now: float) -> State:
        # The most recent ``limit`` times of both logs: within any window that ends after now
        # it holds at least as many entries as either log, up to the limit.
        entries = sorted([*self.log(floor), *self.log(evicted)])[-self.limit :]
        return (max(floor[0], evicted[0]), 0.0, *entries)


def policy_for(config: RateLimitConfig) -> Policy:
    """The arithmetic of ``config.strategy`` for the memory backend."""
    if config.strategy == "fixed_window":
        return FixedWindow(config.rate)
    if config.strategy == "sliding_window":
        return SlidingWindow(config.rate)
    if config.strategy == "moving_window":
        return MovingWindow(config.rate)
    return TokenBucket(config.rate, config.burst)
