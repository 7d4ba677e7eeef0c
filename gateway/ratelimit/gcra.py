"""The token bucket as GCRA, the generic cell rate algorithm: one timestamp per key.

A bucket of ``burst`` tokens refilled at one token per ``interval`` seconds is the same thing
as a theoretical arrival time (TAT): the instant at which the bucket would be full again if
nothing more arrived. A request at ``now`` costing ``cost`` tokens moves the TAT to
``max(TAT, now) + cost * interval``; it is allowed when that is no more than ``burst *
interval`` ahead of ``now``. An allowed request stores the new TAT; a refused one changes
nothing. A key whose TAT is not after ``now`` is a full bucket, exactly like a key never seen,
which is what lets a bounded table forget it (`gateway.ratelimit.table`).

Pure arithmetic on floats in seconds: the memory backend, the Redis script (``gcra.lua``,
the same rule in Lua) and the tests share it.
"""

from __future__ import annotations

import math


class Verdict:
    """One decision and what the response fields say about it.

    A plain class rather than a NamedTuple: one is built per request, and under mypyc a
    hand-written class is native (`gateway.messages`).
    """

    __slots__ = ("allowed", "remaining", "reset_after", "retry_after")

    def __init__(
        self, allowed: bool, remaining: int, retry_after: float, reset_after: float
    ) -> None:
        self.allowed = allowed
        # Whole tokens left after this request (0 when refused).
        self.remaining = remaining
        # Seconds until a request of the same cost would be allowed (0 when allowed).
        self.retry_after = retry_after
        # Seconds until the bucket is full again.
        self.reset_after = reset_after

    def _fields(self) -> tuple[bool, int, float, float]:
        return (self.allowed, self.remaining, self.retry_after, self.reset_after)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Verdict) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Verdict(allowed={self.allowed}, remaining={self.remaining}, "
            f"retry_after={self.retry_after}, reset_after={self.reset_after})"
        )


def decide(
    tat: float | None, now: float, interval: float, burst: int, cost: int = 1
) -> tuple[Verdict, float | None]:
    """Decide a request at ``now`` against a bucket whose stored TAT is ``tat`` (None: unseen).

    ``interval`` is the seconds per token (the rate's period divided by its limit) and
    ``burst`` the bucket's size in tokens; ``cost`` tokens are taken when allowed. Returns the
    verdict and the TAT to store (None when nothing changes: a refused request).
    """
    start = now if tat is None or tat < now else tat
    tolerance = burst * interval
    new_tat = start + cost * interval
    ahead = new_tat - now
    if ahead > tolerance + _EPSILON:
        return Verdict(False, 0, ahead - tolerance, start - now), None
    return Verdict(True, _whole_tokens(tolerance - ahead, interval), 0.0, ahead), new_tat


# Float slack: after k requests at one instant the TAT is now + k * interval summed k times,
# which may exceed burst * interval by a rounding error when k == burst.
_EPSILON = 1e-9


def _whole_tokens(spare_seconds: float, interval: float) -> int:
    return max(0, math.floor(spare_seconds / interval + _EPSILON))
