"""Which targets of an upstream may take requests: active check verdicts and passive ejections.

Pure state, driven by the pool (outcomes of real requests) and by the active checker (its
verdicts), read by the balancer through `usable()`:

- **Active** (``health_check``): a target is out after ``unhealthy_threshold`` failed checks in
  a row and back after ``healthy_threshold`` passes in a row. Targets start healthy, so that a
  gateway (re)started during an incident still tries them (nginx does the same without
  ``mandatory``).
- **Passive** (``passive_health``): ``consecutive_failures`` failures in a row (connect
  failure, reset, timeout, 5xx) eject a target for ``base_ejection``. An ejection that follows
  within ``max_ejection`` of the target's last return doubles, up to ``max_ejection``. A target
  back from an ejection is on probation: its first failure ejects it again (nginx's
  ``max_fails`` after ``fail_timeout``); its first success ends the probation.
- **Panic**: when no target is usable, every target is (Envoy's panic threshold at its
  extreme): an upstream that is partly up answers some requests rather than none.

`usable()` is read on every request, so it is a cached list, rebuilt only when a verdict
changes or the earliest ejection ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from gateway.config.model import PassiveHealthConfig

_NEVER: Final = math.inf


class TargetHealth:
    """The health of the ``count`` targets of one upstream."""

    __slots__ = (
        "_clock",
        "_ejected_until",
        "_ejections",
        "_failures",
        "_next_return",
        "_passes",
        "_passive",
        "_probation",
        "_returned_at",
        "_usable",
        "checked_healthy",
        "panic",
    )

    def __init__(
        self, count: int, passive: PassiveHealthConfig | None, clock: Callable[[], float]
    ) -> None:
        self._passive = passive
        self._clock = clock
        # Passive: failures in a row, the end of the current ejection (0: not ejected), how many
        # ejections in a row, and when the target last came back.
        self._failures = [0] * count
        self._ejected_until = [0.0] * count
        self._ejections = [0] * count
        self._returned_at = [-_NEVER] * count
        self._probation = [False] * count
        # Active: the current verdict, and passes (positive) or failures (negative) in a row.
        self.checked_healthy = [True] * count
        self._passes = [0] * count
        self._next_return = _NEVER
        self._usable = [True] * count
        # Every target is out, so every target is used.
        self.panic = False

    # ----------------------------------------------------------------------- reading

    def usable(self) -> list[bool]:
        """Per target, whether the balancer may pick it (all True in panic mode)."""
        if self._clock() >= self._next_return:
            self._rebuild()
        return self._usable

    def is_ejected(self, index: int) -> bool:
        return self._ejected_until[index] > self._clock()

    def ejected_for(self, index: int) -> float:
        """Seconds left of the target's ejection; 0 when it is not ejected."""
        return max(0.0, self._ejected_until[index] - self._clock())

    def healthy(self, index: int) -> bool:
        """In service: healthy by the checks and not ejected (whatever panic mode does)."""
        return self.checked_healthy[index] and not self.is_ejected(index)

    # ------------------------------------------------------------- passive outcomes

    def succeeded(self, index: int) -> None:
        self._failures[index] = 0
        self._probation[index] = False

    def failed(self, index: int) -> bool:
        """Record a failure; True when it ejected the target."""
        passive = self._passive
        if passive is None or self.is_ejected(index):
            return False
        self._failures[index] += 1
        if self._probation[index] or self._failures[index] >= passive.consecutive_failures:
            self._eject(index, passive)
            return True
        return False

    def _eject(self, index: int, passive: PassiveHealthConfig) -> None:
        now = self._clock()
        if now - self._returned_at[index] > passive.max_ejection:
            self._ejections[index] = 0  # long enough back in service: start over
        self._ejections[index] += 1
        # 2**n grows without bound; the exponent is capped well past any max_ejection.
        doubling = 2.0 ** min(self._ejections[index] - 1, 32)
        length = min(passive.base_ejection * doubling, passive.max_ejection)
        self._ejected_until[index] = now + length
        self._failures[index] = 0
        self._probation[index] = True
        self._rebuild()

    # -------------------------------------------------------------- active verdicts

    def checked(self, index: int, passed: bool, healthy_threshold: int, unhealthy: int) -> bool:
        """Record one active check; True when it changed the target's verdict."""
        # Passes in a row count up from 1, failures in a row down from -1.
        before = self._passes[index]
        streak = max(before, 0) + 1 if passed else min(before, 0) - 1
        self._passes[index] = streak
        healthy = self.checked_healthy[index]
        if healthy and streak <= -unhealthy:
            self.checked_healthy[index] = False
        elif not healthy and streak >= healthy_threshold:
            self.checked_healthy[index] = True
            # A target the checks bring back starts with a clean passive record.
            self._ejected_until[index] = 0.0
            self._failures[index] = 0
            self._probation[index] = False
        else:
            return False
        self._rebuild()
        return True

    # ---------------------------------------------------------------------- internal

    def _rebuild(self) -> None:
        now = self._clock()
        next_return = _NEVER
        usable = []
        for index, until in enumerate(self._ejected_until):
            ejected = until > now
            if until and not ejected:
                # The ejection is over: back in service (on probation).
                self._ejected_until[index] = 0.0
                self._returned_at[index] = until
            if ejected:
                next_return = min(next_return, until)
            usable.append(self.checked_healthy[index] and not ejected)
        self.panic = not any(usable)
        self._usable = [True] * len(usable) if self.panic else usable
        self._next_return = next_return
