"""Passive health: eject a host that failed for a while, growing with each failure in a row.

A host reported failed is ejected for ``base * 2**(n-1)`` seconds (``n``: its ejections since
its last success), at most ``maximum``; failures reported while it is ejected (the other calls
of the same outage) do not count. It comes back by itself when that time has passed on
the scheduler (so a ``TestScheduler`` drives it), and one success forgets its streak. A host
whose key goes is forgotten at once (its timer cancelled). Deciding what to pick when every
host is ejected is the balancer's job, not this one's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass

from reactivex import abc
from reactivex.internal.exceptions import DisposedException

__all__ = ["Ejections"]


@dataclass
class _Streak:
    failures: int = 0       # ejections since the last success
    generation: int = 0     # names the latest ejection (a readmission of an older one is stale)
    timer: abc.DisposableBase | None = None


class Ejections:
    """Which hosts are ejected now. Thread-safe; ``on_change`` is called (outside the lock)
    after a host comes back, on the scheduler's thread.

    Args:
        scheduler: measures ejection times.
        base: the first ejection, in seconds.
        maximum: the cap of the exponential growth, in seconds.
        on_change: called when a host's ejection ends by itself.
    """

    def __init__(self, scheduler: abc.SchedulerBase, base: float, maximum: float,
                 on_change: Callable[[], None]) -> None:
        if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 0:
            raise ValueError(f"eject_base must be a positive number of seconds, got {base!r}")
        if isinstance(maximum, bool) or not isinstance(maximum, (int, float)) \
                or not maximum >= base:
            raise ValueError(f"eject_max must be a number >= eject_base ({base}), "
                             f"got {maximum!r}")
        self._scheduler = scheduler
        self._base, self._maximum = float(base), float(maximum)
        self._on_change = on_change
        self._lock = threading.Lock()
        self._streaks: dict[str, _Streak] = {}
        self._ejected: frozenset[str] = frozenset()
        self._closed = False

    @property
    def ejected(self) -> frozenset[str]:
        """The uuids ejected now (a snapshot)."""
        return self._ejected

    def duration(self, failures: int) -> float:
        """How long the ``failures``-th ejection in a row lasts."""
        return min(self._maximum, self._base * 2.0 ** min(failures - 1, 60))

    def fail(self, uuid: str) -> bool:
        """Eject ``uuid`` (again, once it is back: for longer). A failure while it is ejected
        changes nothing: the calls that were in flight when it went down all fail, and that
        is one outage, not a streak (each would double the time up to ``maximum``). Returns
        whether the ejected set changed."""
        with self._lock:
            if self._closed or uuid in self._ejected:
                return False
            streak = self._streaks.setdefault(uuid, _Streak())
            streak.failures += 1
            streak.generation += 1
            generation, previous, streak.timer = streak.generation, streak.timer, None
            delay = self.duration(streak.failures)
            changed = uuid not in self._ejected
            self._ejected = self._ejected | {uuid}
        if previous is not None:
            previous.dispose()
        try:
            timer: abc.DisposableBase | None = self._scheduler.schedule_relative(
                delay, lambda *_: self._readmit(uuid, generation))
        except DisposedException:  # the scheduler is gone (closing): nothing to time
            return changed
        with self._lock:
            if self._streaks.get(uuid) is streak and streak.generation == generation:
                streak.timer, timer = timer, None
        if timer is not None:  # ejected again or forgotten meanwhile
            timer.dispose()
        return changed

    def succeed(self, uuid: str) -> None:
        """A success: the next failure of ``uuid`` starts from the base time again. (An
        ejected host that succeeds, picked because every host was ejected, stays ejected
        until its time is over.)"""
        if uuid not in self._streaks:   # the usual case, read without the lock
            return
        with self._lock:
            streak = self._streaks.get(uuid)
            if streak is None:
                return
            streak.failures = 0
            if uuid not in self._ejected:
                del self._streaks[uuid]

    def retain(self, uuids: Collection[str]) -> bool:
        """Forget every host not in ``uuids`` (their keys went). Returns whether the ejected
        set changed."""
        with self._lock:
            gone = [self._streaks.pop(uuid) for uuid in list(self._streaks)
                    if uuid not in uuids]
            before = self._ejected
            self._ejected = frozenset(u for u in before if u in uuids)
        for streak in gone:
            if streak.timer is not None:
                streak.timer.dispose()
        return self._ejected != before

    def close(self) -> None:
        """Cancel every timer; nothing is ejected any more."""
        with self._lock:
            self._closed = True
            streaks, self._streaks = self._streaks, {}
            self._ejected = frozenset()
        for streak in streaks.values():
            if streak.timer is not None:
                streak.timer.dispose()

    def _readmit(self, uuid: str, generation: int) -> None:
        with self._lock:
            streak = self._streaks.get(uuid)
            if streak is None or streak.generation != generation:
                return  # stale: ejected again, or forgotten, since
            streak.timer = None
            if not streak.failures:
                del self._streaks[uuid]
            self._ejected = self._ejected - {uuid}
        self._on_change()
