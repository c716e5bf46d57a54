"""What the library's own layers cost a process per watched service that never changes
(issue 12): PrefixSync, SharedSync, a subscriber's SerialSubject and what ties them together.

The store below them is the memory store's reads with watches that keep only their observer,
as the etcd store's shared stream does (its per-watch cost is measured by
``python -m bench --only scale``), so the figures are those of production's layers alone.
Measured with CPython 3.11: ~3.5 KB (tracemalloc) and 31 gc-tracked objects per service, its
one host (~1.3 KB) included; before issue 12's trimming, ~7.5 KB and 75 (a lambda and its
cells, a lock or a reactivex layer for each link). The bounds leave ~1.7x room, so that only
a real regression (a few closures, locks or subjects per service more) fails.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from typing import Any

import pytest
import reactivex
from reactivex import abc
from reactivex.testing import TestScheduler

from rx_discovery import Discovery
from rx_discovery.store import WatchResponse
from rx_discovery.store.memory import MemoryStore
from rx_discovery.testing import make_host

SERVICES = 1000
BYTES_PER_SERVICE = 6_000
OBJECTS_PER_SERVICE = 55


class _Watch(abc.DisposableBase):
    __slots__ = ("observer", "watches")

    def __init__(self, watches: list[_Watch], observer: abc.ObserverBase[WatchResponse]
                 ) -> None:
        self.observer, self.watches = observer, watches

    def dispose(self) -> None:
        if self in self.watches:
            self.watches.remove(self)


class _IdleWatch(reactivex.Observable[WatchResponse]):
    """A watch whose subscription keeps its observer and nothing else."""

    def __init__(self, watches: list[_Watch]) -> None:
        super().__init__()
        self._watches = watches

    def subscribe(self, on_next: Any = None, on_error: Any = None, on_completed: Any = None,
                  *, scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        watch = _Watch(self._watches, on_next)
        self._watches.append(watch)
        return watch


class _IdleStore(MemoryStore):
    """The memory store, with idle watches."""

    def __init__(self, scheduler: TestScheduler) -> None:
        super().__init__(scheduler)
        self.idle: list[_Watch] = []

    def watch(self, prefix: str, start_revision: int, *, exact: bool = False
              ) -> reactivex.Observable[WatchResponse]:
        return _IdleWatch(self.idle)


def _measure(discovery: Discovery, scheduler: TestScheduler) -> tuple[float, float, list[Any]]:
    """(bytes, gc-tracked objects) per service of SERVICES ``hosts()`` subscriptions."""
    subscriptions = [discovery.hosts("warm-up").subscribe(lambda _: None)]
    firsts: list[int] = []  # the size of each first HostSet (not the set: it is garbage)
    gc.collect()
    objects = len(gc.get_objects())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        subscriptions += [discovery.hosts(f"s{index}").subscribe(
            lambda hosts: firsts.append(len(hosts)))
                          for index in range(SERVICES)]
        scheduler.advance_by(1)
        gc.collect()
        size = (tracemalloc.get_traced_memory()[0] - before) / SERVICES
    finally:
        tracemalloc.stop()
    count = (len(gc.get_objects()) - objects - 1) / SERVICES  # - 1: the list of subscriptions
    assert firsts == [1] * SERVICES
    return size, count, subscriptions


@pytest.mark.slow
def test_an_idle_watched_service_costs_the_library_a_few_kilobytes_and_objects() -> None:
    scheduler = TestScheduler()
    store = _IdleStore(scheduler)
    discovery = Discovery(store=store)
    # What decoding interns (each host's port, "8000 + n"), interned up front and kept, as a
    # long-running process has them: interned in the measurement, they grew the interpreter's
    # table of interned strings (tens of thousands after the property tests) by a whole
    # resize, old and new side by side, once in CI: 7.4 KB a service instead of 3.5.
    interned = []
    for index in range(SERVICES):
        host = make_host(index)
        interned += [sys.intern(port) for port in host.ports.values()]
        store.put(f"/services/s{index}/{host.uuid}", host.to_json().encode())
    size, count, subscriptions = _measure(discovery, scheduler)
    assert len(interned) == SERVICES  # kept alive until measured (a freed one leaves the table)
    assert len(store.idle) == SERVICES + 1  # one watch each (and the warm-up's)
    assert size < BYTES_PER_SERVICE, f"{size:.0f} bytes per watched service"
    assert count < OBJECTS_PER_SERVICE, f"{count:.1f} objects per watched service"
    for subscription in subscriptions:
        subscription.dispose()
    assert not store.idle  # each watch cancelled with its last subscriber
    discovery.close()
