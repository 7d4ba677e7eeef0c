"""Choosing an upstream target for a request: three balancers, pure (issue 9).

Each picks an index among the targets that are ``usable`` (healthy, not ejected); the caller
passes all of them usable when none is (panic mode: better some answers than none).

- `WeightedRoundRobin`: nginx's smooth weighted round robin. Weights 5, 1, 1 give
  a a b a c a a: the heavy target's turns are spread out, not bunched.
- `LeastRequests`: the power of two choices (Mitzenmacher; Envoy's default): two distinct usable
  targets at random, the one with fewer requests in flight per unit of weight wins. Nearly as
  good as scanning for the least loaded, without every worker herding onto the same one.
- `ConsistentHash`: a ring of virtual nodes (160 per unit of weight, as ketama) keyed by each
  target's own name, so the ring stays the same for the targets that stay: a target that comes
  or goes moves only the keys that hash to it. A key whose target is not usable goes to the
  next usable target clockwise, and back when it recovers.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from typing import Final

VIRTUAL_NODES: Final = 160


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Balancer:
    """What the pool asks: the index of the next target among the usable ones."""

    def pick(self, usable: Sequence[bool], key: bytes = b"") -> int:
        raise NotImplementedError


class WeightedRoundRobin(Balancer):
    __slots__ = ("_current", "_weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self._weights = list(weights)
        self._current = [0] * len(weights)

    def pick(self, usable: Sequence[bool], key: bytes = b"") -> int:
        # Each usable target gains its weight; the richest is picked and pays the total.
        weights = self._weights
        current = self._current
        best = -1
        total = 0
        for index, weight in enumerate(weights):
            if not usable[index]:
                continue
            current[index] += weight
            total += weight
            if best < 0 or current[index] > current[best]:
                best = index
        if best < 0:
            raise ValueError("no usable target")
        current[best] -= total
        return best


class LeastRequests(Balancer):
    """``inflight`` is the pool's own list of requests in flight per target, read at each pick."""

    __slots__ = ("_inflight", "_random", "_weights")

    def __init__(
        self, weights: Sequence[int], inflight: list[int], rng: random.Random | None = None
    ) -> None:
        self._weights = list(weights)
        self._inflight = inflight
        self._random = rng or random.Random()

    def pick(self, usable: Sequence[bool], key: bytes = b"") -> int:
        candidates = [index for index, ok in enumerate(usable) if ok]
        if not candidates:
            raise ValueError("no usable target")
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._random.sample(candidates, 2)
        inflight, weights = self._inflight, self._weights
        # Compared as inflight / weight without dividing: a * w_b <= b * w_a.
        if inflight[first] * weights[second] <= inflight[second] * weights[first]:
            return first
        return second


class ConsistentHash(Balancer):
    """``names`` identify the targets (their URLs): the ring is a function of them alone."""

    __slots__ = ("_owners", "_points")

    def __init__(self, names: Sequence[str], weights: Sequence[int]) -> None:
        ring: list[tuple[int, int]] = []
        for index, (name, weight) in enumerate(zip(names, weights, strict=True)):
            for node in range(VIRTUAL_NODES * weight):
                ring.append((_hash(f"{name}#{node}".encode()), index))
        ring.sort()
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]

    def pick(self, usable: Sequence[bool], key: bytes = b"") -> int:
        points, owners = self._points, self._owners
        start = bisect.bisect_left(points, _hash(key))
        size = len(points)
        for step in range(size):
            owner = owners[(start + step) % size]
            if usable[owner]:
                return owner
        raise ValueError("no usable target")


def balancer_for(balance: str, targets: Sequence[tuple[str, int]], inflight: list[int]) -> Balancer:
    """The balancer ``balance`` names, over ``targets`` given as (name, weight)."""
    names = [name for name, _ in targets]
    weights = [weight for _, weight in targets]
    if balance == "least_requests":
        return LeastRequests(weights, inflight)
    if balance == "consistent_hash":
        return ConsistentHash(names, weights)
    return WeightedRoundRobin(weights)
