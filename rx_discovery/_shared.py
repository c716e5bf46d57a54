"""Hot, shared, ref-counted observables of a :class:`~rx_discovery.sync.PrefixSync`.

Like ``publish() + ref_count()`` with a replay of the current state, but thread-safe: reactivex's
``ref_count`` counts subscribers without a lock, and subscribers here come and go on any
thread. The first subscriber starts the sync (one store watch), the last one stops it, and a
later subscriber starts a fresh one.

Delivery: the sync *enqueues* each change under its lock, into one
:class:`~rx_discovery._serial.SerialSubject` per subscriber, and flushes after releasing it, so
observers (user code) never run under a library lock; each subscriber gets its changes one at a
time, in revision order, and one that raises or blocks does not stop the sync. (One queue per
subscriber rather than one per stream: a late joiner's replay is then delivered on its own
thread during ``subscribe()``, even while another thread delivers to the others.)

What a subscriber gets first: the current state (``Change.initial``) when it was read before
``subscribe()`` returned (a running sync's latest state, or the first read, which a waiting
subscription makes on its own thread); when a waiting subscription did not know the state then
(the store unreachable at subscribe time), the first state read afterwards comes as a change
that *adds* every item in it: the subscriber never saw them, and any of them may have appeared
after it subscribed, so none is lost. A subscription that does not wait (a stream of states:
``hosts()``, ``services()``) takes the first state read, whenever it comes, as its first
state (``initial``), sharing the one snapshot object with the other subscribers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import reactivex
from reactivex import abc
from reactivex.disposable import Disposable

from rx_discovery._first_reads import delivering_first_sets
from rx_discovery._serial import SerialSubject, as_observer
from rx_discovery.sync import Change

__all__ = ["CLOSED_MESSAGE", "SharedSync", "Stoppable"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("rx_discovery")

CLOSED_MESSAGE = "this Discovery is closed"


class Stoppable(Protocol):
    @property
    def loaded(self) -> bool: ...

    def start(self, block: bool = False) -> None: ...

    def stop(self) -> None: ...

    def ensure_loaded(self, hand_off: bool = False) -> None: ...


class _Joiner(abc.DisposableBase, Generic[T]):
    """One subscriber: its queue, and whether its first value is still to come. Disposing it
    ends the subscription (idempotent): it is what ``subscribe()`` returns."""

    __slots__ = ("after_return", "first", "inner", "shared", "subject")

    def __init__(self, shared: SharedSync[T], subject: SerialSubject[Change[T]],
                 inner: abc.DisposableBase) -> None:
        self.shared = shared
        self.subject = subject
        self.inner = inner  # the subscription to ``subject``
        self.first = True  # nothing enqueued for it yet
        self.after_return = False  # subscribe() returned before its first value was known

    def dispose(self) -> None:
        self.shared._unsubscribe(self)

    def enqueue(self, change: Change[T]) -> None:
        """Call under the SharedSync's lock (the order of values is decided there)."""
        if self.first:
            self.first = False
            if self.after_return:  # unseen state: every item is new to this subscriber
                change = Change(change.revision, change.items, tuple(sorted(change.items)),
                                resync=True)
            elif not (change.initial and change.empty and not change.resync):
                change = change.as_initial()  # (a first snapshot is shared as it is)
        self.subject.enqueue(change)


class _Publish(Generic[T]):
    """The ``publish`` callback of one sync of a SharedSync (slotted: one is kept per watched
    service); its changes are dropped once that sync is no longer the current one."""

    __slots__ = ("shared", "sync")

    def __init__(self, shared: SharedSync[T]) -> None:
        self.shared = shared
        self.sync: Stoppable | None = None  # set as soon as it is made

    def __call__(self, change: Change[T]) -> None:
        self.shared._publish(self.sync, change)


class _Mapped(abc.ObserverBase[Change[T]], Generic[T, R]):
    """An observer of changes that hands ``mapper(change)`` to another."""

    __slots__ = ("_mapper", "_observer")

    def __init__(self, observer: abc.ObserverBase[R], mapper: Callable[[Change[T]], R]) -> None:
        self._observer = observer
        self._mapper = mapper

    def on_next(self, change: Change[T]) -> None:
        self._observer.on_next(self._mapper(change))

    def on_error(self, error: Exception) -> None:
        self._observer.on_error(error)

    def on_completed(self) -> None:
        self._observer.on_completed()


class SharedSync(Generic[T]):
    """One sync shared by every subscriber of :attr:`observable`.

    Args:
        create: builds a sync that enqueues to the given ``publish`` callback and calls the
            given ``flush`` after releasing its lock, its backoff timed on the given scheduler
            (None: the default); called by the first subscriber.
        label: names the stream in log lines.
    """

    # slotted: one per watched service (~50 bytes less than an instance dict)
    __slots__ = ("__weakref__", "_closed", "_create", "_joiners", "_label", "_last", "_lock",
                 "_sync")

    def __init__(self, create: Callable[[Callable[[Change[T]], None], Callable[[], None],
                                         abc.SchedulerBase | None], Stoppable],
                 label: str = "stream") -> None:
        self._create = create
        self._label = label
        self._lock = threading.RLock()
        # replaced, never mutated: flushing iterates it without the lock
        self._joiners: tuple[_Joiner[T], ...] = ()
        self._sync: Stoppable | None = None
        self._last: Change[T] | None = None
        self._closed = False

    def observe(self, scheduler: abc.SchedulerBase | None = None, *, wait: bool = False,
                guard: Callable[[], None] | None = None) -> reactivex.Observable[Change[T]]:
        """The shared changes. ``scheduler`` times the sync's retries when this subscription
        is the one that starts it. With ``wait``, ``subscribe()`` reads the first state on the
        caller's thread when it is not known yet (bounded by the store's call timeout; on
        failure the read goes on in the background), so that the subscriber misses nothing
        that happens after ``subscribe()`` returns. After :meth:`close`, a subscriber gets
        ``on_error(RuntimeError)`` at once. ``guard`` is called at each ``subscribe()``;
        what it raises goes to ``on_error`` (a Discovery's fork check)."""
        return _Subscribable(self, None, scheduler, wait, guard)

    def observe_mapped(self, mapper: Callable[[Change[T]], R],
                       scheduler: abc.SchedulerBase | None = None, *, wait: bool = False,
                       guard: Callable[[], None] | None = None) -> reactivex.Observable[R]:
        """:meth:`observe`, each change passed through ``mapper`` (which must not raise) on
        its way: what ``observe().pipe(map(mapper))`` does, without reactivex's subscription
        objects for the extra layer (~0.7 KB per subscriber of every watched service)."""
        return _Subscribable(self, mapper, scheduler, wait, guard)

    def ensure_loaded(self) -> None:
        """Make the running sync read its first state now, on this thread, handing what it
        delivers off to the runtime's delivery threads (see :meth:`PrefixSync.ensure_loaded`:
        a registration calls it on an I/O worker); nothing when no sync runs.

        Raises:
            StoreError: the read failed.
        """
        sync = self._sync
        if sync is not None:
            sync.ensure_loaded(hand_off=True)

    def close(self) -> None:
        """Stop the sync and complete every subscriber; later subscribers fail at once."""
        with self._lock:
            self._closed = True
            joiners, self._joiners = self._joiners, ()
            stop, self._sync, self._last = self._sync, None, None
        if stop is not None:
            stop.stop()
        for joiner in joiners:
            joiner.subject.on_completed()

    def _subscribe(self, observer: abc.ObserverBase[Change[T]],
                   scheduler: abc.SchedulerBase | None, wait: bool) -> abc.DisposableBase:
        # an observer of a first set that subscribes here: read now (see the function)
        wait = wait or delivering_first_sets()
        subject: SerialSubject[Change[T]] = SerialSubject(self._label)
        inner = subject.attach(observer)  # nothing queued yet: calls nothing
        joiner = _Joiner(self, subject, inner)
        start: Stoppable | None = None
        with self._lock:
            closed = self._closed
            if not closed:
                self._joiners = (*self._joiners, joiner)
                if self._sync is None:
                    publish = _Publish(self)
                    start = self._sync = publish.sync = self._create(
                        publish, self._flush, scheduler)
                elif self._last is not None:
                    joiner.enqueue(self._last)
                sync = self._sync
        if closed:
            inner.dispose()
            raise RuntimeError(CLOSED_MESSAGE)  # to on_error, by _Subscribable.subscribe
        try:
            if start is not None:
                start.start(block=wait)
            elif wait and not sync.loaded:
                try:
                    sync.ensure_loaded()
                except Exception as error:  # the background read goes on
                    log.info("%s: first read failed at subscribe (%s: %s)", self._label,
                             type(error).__name__, error)
        except BaseException:  # interrupted (Ctrl-C): nobody will hold this subscription
            self._unsubscribe(joiner)
            raise
        if wait:  # (a subscriber that does not wait takes its first value as a state)
            with self._lock:
                joiner.after_return = True  # a first value enqueued from now on is unseen
        subject.flush()  # the replay, if another thread has not delivered it already
        return joiner

    def _publish(self, sync: Stoppable | None, change: Change[T]) -> None:
        """Enqueue ``change`` for every subscriber (called under the sync's lock)."""
        with self._lock:
            if sync is not self._sync:
                return  # a stopped sync still finishing its last callback
            self._last = change
            for joiner in self._joiners:
                joiner.enqueue(change)

    def _flush(self) -> None:
        """Deliver what is queued (called by the sync after releasing its lock)."""
        for joiner in self._joiners:
            joiner.subject.flush()

    def _unsubscribe(self, joiner: _Joiner[T]) -> None:
        joiner.inner.dispose()
        stop: Stoppable | None = None
        with self._lock:
            if joiner not in self._joiners:
                return
            self._joiners = tuple(j for j in self._joiners if j is not joiner)
            if not self._joiners and self._sync is not None:
                stop, self._sync, self._last = self._sync, None, None
        if stop is not None:  # outside the lock: stopping may wait for a watch thread
            stop.stop()


class _Subscribable(reactivex.Observable[R], Generic[T, R]):
    """:meth:`SharedSync.observe` (``mapper`` None) or :meth:`SharedSync.observe_mapped`:
    subscribing joins the sync directly, without reactivex's per-subscription objects (an
    auto-detaching observer and two disposables, each with a lock, and a trampoline: ~0.6 KB
    for every subscription of every watched service). What they guarantee holds here: the
    SerialSubject calls the observer serially and never after it ended, and an exception
    raised while subscribing reaches ``on_error``."""

    def __init__(self, shared: SharedSync[T], mapper: Callable[[Change[T]], R] | None,
                 scheduler: abc.SchedulerBase | None, wait: bool,
                 guard: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._shared = shared
        self._mapper = mapper
        self._scheduler = scheduler
        self._wait = wait
        self._guard = guard

    def subscribe(self, on_next: Any = None, on_error: Any = None, on_completed: Any = None,
                  *, scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        given = as_observer(on_next, on_error, on_completed)
        observer = given if self._mapper is None else _Mapped(given, self._mapper)
        try:
            if self._guard is not None:
                self._guard()
            return self._shared._subscribe(observer, self._scheduler, self._wait)
        except Exception as error:  # as reactivex's subscribe: the error goes to on_error
            # (called here only: what it raises, as the default on_error does, propagates
            # and is never handed to on_error a second time)
            observer.on_error(error)
            return Disposable()
