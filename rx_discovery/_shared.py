"""Hot, shared, ref-counted observables of a :class:`~rx_discovery.sync.PrefixSync`.

Like ``publish() + ref_count()`` with a replay of the current state, but thread-safe: reactivex's
``ref_count`` counts subscribers without a lock, and subscribers here come and go on any
thread. The first subscriber starts the sync (one store watch), the last one stops it, and a
later subscriber starts a fresh one. A subscriber that joins a running sync first receives the
current state (``Change.initial``), then every change, in order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import reactivex
from reactivex import abc
from reactivex.disposable import Disposable

from rx_discovery.sync import Change

__all__ = ["SharedSync", "Stoppable"]

T = TypeVar("T")

log = logging.getLogger("rx_discovery")


class Stoppable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def ensure_loaded(self) -> None: ...


class SharedSync(Generic[T]):
    """One sync shared by every subscriber of :attr:`observable`.

    Args:
        create: builds a sync that publishes to the given callback, its backoff timed on the
            given scheduler (None: the default); called by the first subscriber.
    """

    def __init__(self, create: Callable[[Callable[[Change[T]], None], abc.SchedulerBase | None],
                                        Stoppable]) -> None:
        self._create = create
        self._lock = threading.RLock()  # re-entrant: an observer may dispose from on_next
        # replaced, never mutated: publishing iterates it without a copy
        self._observers: tuple[abc.ObserverBase[Change[T]], ...] = ()
        self._sync: Stoppable | None = None
        self._last: Change[T] | None = None
        self._closed = False

    def observe(self, scheduler: abc.SchedulerBase | None = None
                ) -> reactivex.Observable[Change[T]]:
        """The shared changes. ``scheduler`` times the sync's retries when this subscription
        is the one that starts it."""
        return reactivex.create(lambda observer, _: self._subscribe(observer, scheduler))

    def ensure_loaded(self) -> None:
        """Make the running sync read its first state now, on this thread (see
        :meth:`PrefixSync.ensure_loaded`); nothing when no sync runs.

        Raises:
            StoreError: the read failed.
        """
        sync = self._sync
        if sync is not None:
            sync.ensure_loaded()

    def close(self) -> None:
        """Stop the sync and complete every subscriber; later subscribers complete at once."""
        with self._lock:
            self._closed = True
            observers, self._observers = self._observers, ()
            stop, self._sync, self._last = self._sync, None, None
        if stop is not None:
            stop.stop()
        for observer in observers:
            observer.on_completed()

    def _subscribe(self, observer: abc.ObserverBase[Change[T]],
                   scheduler: abc.SchedulerBase | None) -> abc.DisposableBase:
        start: Stoppable | None = None
        with self._lock:
            if self._closed:
                observer.on_completed()
                return Disposable()
            self._observers = (*self._observers, observer)
            if self._sync is None:
                start = self._sync = self._create(lambda change: self._publish(start, change),
                                                  scheduler)
            elif self._last is not None:
                observer.on_next(self._last.as_initial())
        if start is not None:
            start.start()
        return Disposable(lambda: self._unsubscribe(observer))

    def _publish(self, sync: Stoppable | None, change: Change[T]) -> None:
        with self._lock:
            if sync is not self._sync:
                return  # a stopped sync still finishing its last callback
            self._last = change
            for observer in self._observers:
                try:
                    observer.on_next(change)
                except Exception:  # one faulty subscriber must not starve the others
                    log.exception("a subscriber's on_next raised; it keeps its subscription")

    def _unsubscribe(self, observer: abc.ObserverBase[Any]) -> None:
        stop: Stoppable | None = None
        with self._lock:
            if observer not in self._observers:
                return
            observers = list(self._observers)
            observers.remove(observer)
            self._observers = tuple(observers)
            if not self._observers and self._sync is not None:
                stop, self._sync, self._last = self._sync, None, None
        if stop is not None:  # outside the lock: stopping may wait for a watch thread
            stop.stop()
