"""Shelf: per-name objects held while someone uses them, released with their last user.

A Discovery keeps one object per service (or per scheduler) for as long as registrations use
it; without counting, every name ever used would stay in memory for the Discovery's life.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Shelf"]

K = TypeVar("K")
V = TypeVar("V")


class Shelf(Generic[K, V]):
    """``key -> value``, created by the first :meth:`take`, dropped by the last
    :meth:`give_back`. Thread-safe; ``create`` runs under the shelf's lock (keep it cheap:
    no I/O, no user code)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[K, tuple[V, int]] = {}

    def take(self, key: K, create: Callable[[], V]) -> V:
        """The value of ``key`` (created if none), counted as used once more."""
        with self._lock:
            value, users = self._held.get(key) or (create(), 0)
            self._held[key] = (value, users + 1)
            return value

    def give_back(self, key: K) -> None:
        """One user of ``key`` is done; the last one drops it."""
        with self._lock:
            value, users = self._held.get(key, (None, 0))
            if users > 1:
                self._held[key] = (value, users - 1)  # type: ignore[assignment]
            else:
                self._held.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._held))

    def __len__(self) -> int:
        return len(self._held)
