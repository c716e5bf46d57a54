"""Pickers: choose one host among candidates, cheaply and thread-safely, without locks.

A picker is stateless apart from what its policy needs (a round-robin counter); the in-flight
counts that ``least_requests`` compares belong to the caller (the balancer), so the same picker
works inside a :class:`~rx_discovery.balance.Balancer` and in an Rx pipeline.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal, Protocol

from rx_discovery.model import Host

__all__ = ["POLICIES", "LeastRequests", "Picker", "Policy", "Random", "RoundRobin", "make_picker"]

Policy = Literal["round_robin", "random", "least_requests"]
POLICIES: Final = ("round_robin", "random", "least_requests")

_NO_COUNTS: Mapping[str, int] = {}


class Picker(Protocol):
    """Chooses one of ``candidates`` (never empty)."""

    def __call__(self, candidates: Sequence[Host]) -> Host: ...


class RoundRobin:
    """Each candidate in turn. ``next()`` on an ``itertools.count`` is atomic under the GIL, so
    concurrent picks never share a turn nor need a lock. When the candidates change, the turn
    goes on from the same counter (no restart at the first host, which would overload it)."""

    def __init__(self, start: int | None = None) -> None:
        # a random start, so that many clients started together do not all begin on one host
        self._turns = itertools.count(random.randrange(1 << 16) if start is None else start)

    def __call__(self, candidates: Sequence[Host]) -> Host:
        return candidates[next(self._turns) % len(candidates)]


class Random:
    """A candidate drawn uniformly at random."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = (rng or random.Random()).random

    def __call__(self, candidates: Sequence[Host]) -> Host:
        # int(random() * n) is uniform enough for n far below 2**53, at a third of choice()'s
        # cost
        return candidates[int(self._random() * len(candidates))]


class LeastRequests:
    """Power of two choices: draw two distinct candidates at random and take the one with
    fewer calls in flight (ties: the first drawn). Nearly as good as scanning every host for
    the least loaded one, at O(1), and it does not herd every client onto the same idle host.

    Args:
        in_flight: uuid -> calls in flight, read without a lock (a stale count only makes one
            choice slightly worse).
    """

    def __init__(self, in_flight: Mapping[str, int] = _NO_COUNTS,
                 rng: random.Random | None = None) -> None:
        self._in_flight = in_flight
        self._random = (rng or random.Random()).random

    def __call__(self, candidates: Sequence[Host]) -> Host:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        first = int(self._random() * count)
        second = int(self._random() * (count - 1))
        if second >= first:
            second += 1
        a, b = candidates[first], candidates[second]
        loads = self._in_flight
        return b if loads.get(b.uuid, 0) < loads.get(a.uuid, 0) else a


_FACTORIES: dict[str, Callable[[Mapping[str, int]], Picker]] = {
    "round_robin": lambda _: RoundRobin(),
    "random": lambda _: Random(),
    "least_requests": LeastRequests,
}


def make_picker(policy: str, in_flight: Mapping[str, int] = _NO_COUNTS) -> Picker:
    """The picker of ``policy``.

    Raises:
        ValueError: an unknown policy (before any I/O).
    """
    factory = _FACTORIES.get(policy) if isinstance(policy, str) else None
    if factory is None:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    return factory(in_flight)
