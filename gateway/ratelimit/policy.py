"""A route's limit as the backends apply it: the strategy's arithmetic over a key's state."""

from __future__ import annotations

from gateway.config.model import Rate
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
