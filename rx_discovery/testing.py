"""Helpers for testing discovery pipelines in virtual time, without a server.

``Discovery.in_memory(scheduler)`` runs the whole library on :class:`MemoryStore`, an in-memory
store with etcd's semantics (revisions, leases, TTL, compaction) driven by any reactivex
scheduler. With ``reactivex.testing.TestScheduler`` one unit of virtual time is one second,
so a TTL of 6 expires 6.0 later, and minutes of virtual time run in milliseconds. A host that
registers at tick 10 with ttl 6 (keepalives every ttl/3: at 12, 14, ... 50) and crashes at
tick 50.5 is reported down at 56, its last keepalive + ttl, exactly as etcd would expire it:

>>> from reactivex.testing import TestScheduler
>>> from rx_discovery import Discovery
>>> from rx_discovery.testing import crash, make_host, record
>>> scheduler = TestScheduler()
>>> discovery = Discovery.in_memory(scheduler)
>>> downs = record(discovery.subscribe_down("api"), scheduler)
>>> held = {}
>>> _ = scheduler.schedule_absolute(
...     10, lambda *_: held.setdefault("api", discovery.register("api", make_host(1), ttl=6)))
>>> _ = scheduler.schedule_absolute(50.5, lambda *_: crash(held["api"]))
>>> scheduler.advance_to(100)
>>> downs.values
[(56.0, 'uuid-1')]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import reactivex
from reactivex import abc
from reactivex.notification import Notification, OnCompleted, OnError, OnNext

from rx_discovery.model import Host
from rx_discovery.registration import Registration
from rx_discovery.store.memory import MemoryStore

__all__ = ["MemoryStore", "Recorder", "crash", "make_host", "record"]

T = TypeVar("T")


def make_host(n: int = 1, *, hostname: str | None = None, **fields: Any) -> Host:
    """A host for tests: ``host-{n}.test`` on port ``8000 + n``, with a stable uuid
    ``uuid-{n}`` (override any field by keyword)."""
    values: dict[str, Any] = {"ports": {"http": str(8000 + n)}, "uuid": f"uuid-{n}"}
    values.update(fields)
    return Host(hostname=hostname or f"host-{n}.test", **values)


def crash(registration: Registration) -> None:
    """Make ``registration`` behave as if its process was killed: keepalives stop and the
    lease is left to expire by its TTL (nothing is revoked)."""
    registration._stop(revoke=False)


@dataclass
class Recorder(Generic[T]):
    """What an observable emitted, with the scheduler's clock at each emission.

    Attributes:
        messages: ``(time, Notification)`` pairs, as reactivex's ``ReactiveTest`` writes them.
    """

    messages: list[tuple[float, Notification[T]]] = field(default_factory=list)
    subscription: abc.DisposableBase | None = None

    @property
    def values(self) -> list[tuple[float, T]]:
        """``(time, value)`` of each on_next."""
        return [(t, n.value) for t, n in self.messages if isinstance(n, OnNext)]

    @property
    def items(self) -> list[T]:
        """The values alone, in order."""
        return [value for _, value in self.values]

    @property
    def error(self) -> Exception | None:
        """The error the observable failed with, if it did."""
        for _, n in self.messages:
            if isinstance(n, OnError):
                return n.exception
        return None

    @property
    def completed(self) -> bool:
        return any(isinstance(n, OnCompleted) for _, n in self.messages)

    def dispose(self) -> None:
        if self.subscription is not None:
            self.subscription.dispose()


def record(observable: reactivex.Observable[T], scheduler: abc.SchedulerBase,
           clock: Callable[[], float] | None = None) -> Recorder[T]:
    """Subscribe to ``observable`` now and record every notification with the time at which
    it arrived on ``scheduler``'s clock (seconds; a ``TestScheduler``'s virtual clock)."""
    recorder: Recorder[T] = Recorder()
    now = clock or (lambda: float(getattr(scheduler, "clock", scheduler.now.timestamp())))

    def keep(notification: Notification[T]) -> None:
        recorder.messages.append((now(), notification))

    recorder.subscription = observable.subscribe(
        on_next=lambda value: keep(OnNext(value)),
        on_error=lambda error: keep(OnError(error)),
        on_completed=lambda: keep(OnCompleted()),
    )
    return recorder
