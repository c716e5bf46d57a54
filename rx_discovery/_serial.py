"""SerialSubject: hand values to user observers outside every library lock, one at a time.

The library's state changes under its own locks (a registration's, a sync's), but observers are
user code: called under such a lock, an observer that subscribes to another stream, waits for
a thread or blocks can dead-lock the library (and, on the keepalive thread, stop every lease).
So state changes *enqueue* their value while they hold their lock, and *flush* after they let it
go. Whichever thread flushes first delivers everything queued, in order, until the queue is
empty; a thread that flushes while another delivers returns at once (that one delivers its
value), so delivery is serial and in enqueue order however many threads change state. An
observer that raises is logged and keeps its subscription; the others still get the value.

Like a ``BehaviorSubject`` when ``replay`` is set: a subscriber first gets the latest value,
then every later one, with no gap and no repeat (the latest value is queued for it alone, in
the same order as everyone else's values).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import reactivex
from reactivex import abc
from reactivex.observer import Observer

__all__ = ["SerialSubject", "SerialThread", "as_observer"]

T = TypeVar("T")

log = logging.getLogger("rx_discovery")

_COMPLETED = object()


def as_observer(on_next: Any, on_error: Any, on_completed: Any) -> abc.ObserverBase[Any]:
    """The observer given to ``subscribe(on_next, on_error, on_completed)``, by reactivex's
    rule: an object with a callable ``on_next`` is the observer, else the callbacks are."""
    if callable(getattr(on_next, "on_next", None)):
        observer: abc.ObserverBase[Any] = on_next
        return observer
    return Observer(on_next, on_error, on_completed)


class _Detach(abc.DisposableBase, Generic[T]):
    """What :meth:`SerialSubject.attach` returns (idempotent): ``Disposable(lambda: ...)``
    without a lock, a closure and its cells (~0.3 KB less for each subscription of every
    watched service)."""

    __slots__ = ("_observer", "_subject")

    def __init__(self, subject: SerialSubject[T], observer: abc.ObserverBase[T]) -> None:
        self._subject = subject
        self._observer = observer

    def dispose(self) -> None:
        self._subject._unsubscribe(self._observer)


class SerialSubject(Generic[T]):
    """A subject whose observers are called outside the caller's locks, serially.

    Args:
        label: names the subject in log lines (an observer that raised).
        replay: a new subscriber first gets the latest value (``initial`` until one is sent).
        initial: the latest value before any :meth:`enqueue` (only with ``replay``).
    """

    # slotted: one per subscriber of every watched service (~50 bytes less than a dict)
    __slots__ = ("_completed", "_draining", "_has_latest", "_label", "_latest", "_lock",
                 "_observers", "_queue", "_replay")

    def __init__(self, label: str, *, replay: bool = False, initial: T | None = None,
                 has_initial: bool = False) -> None:
        self._label = label
        self._replay = replay
        self._lock = threading.Lock()
        self._observers: tuple[abc.ObserverBase[T], ...] = ()
        # a list, not a deque: it is almost always empty, and an empty deque costs ~600 bytes
        # (one subject per subscriber of every watched service)
        self._queue: list[tuple[object, tuple[abc.ObserverBase[T], ...]]] = []
        self._draining = False
        self._completed = False
        self._latest: T | None = initial
        self._has_latest = has_initial

    @property
    def value(self) -> T | None:
        """The latest value enqueued (None when none yet)."""
        return self._latest

    def observe(self) -> reactivex.Observable[T]:
        """The values, delivered serially on the thread that flushes."""
        return reactivex.create(lambda observer, _: self.attach(observer))

    def enqueue(self, value: T) -> None:
        """Queue ``value`` for every current observer; safe under any lock. Call
        :meth:`flush` once that lock is released."""
        with self._lock:
            if self._completed:
                return
            self._latest, self._has_latest = value, True
            if self._observers:
                self._queue.append((value, self._observers))

    def enqueue_completed(self) -> None:
        """Queue the completion of every observer (later values are dropped)."""
        with self._lock:
            if self._completed:
                return
            self._completed = True
            observers, self._observers = self._observers, ()
            if observers:
                self._queue.append((_COMPLETED, observers))

    def on_next(self, value: T) -> None:
        """Enqueue and flush: only for callers that hold no library lock."""
        self.enqueue(value)
        self.flush()

    def on_completed(self) -> None:
        """Complete every observer: only for callers that hold no library lock."""
        self.enqueue_completed()
        self.flush()

    def flush(self) -> None:
        """Deliver what is queued, unless another thread (or an outer frame of this one)
        is delivering already: it delivers this too. Never call it under a library lock."""
        while True:
            with self._lock:
                if self._draining or not self._queue:
                    return
                self._draining = True
                value, observers = self._queue.pop(0)
            try:
                for observer in observers:
                    self._deliver(observer, value)
            finally:
                with self._lock:
                    self._draining = False

    def _deliver(self, observer: abc.ObserverBase[T], value: object) -> None:
        try:
            if value is _COMPLETED:
                observer.on_completed()
            else:
                observer.on_next(value)  # type: ignore[arg-type]
        except Exception:  # user code: it must not stop the library nor the others
            log.exception("%s: an observer raised; it keeps its subscription", self._label)

    def attach(self, observer: abc.ObserverBase[T]) -> abc.DisposableBase:
        """Subscribe ``observer`` itself (what :meth:`observe` does, without another layer
        of reactivex subscription objects: ~1 KB per watched service and subscriber)."""
        with self._lock:
            if self._completed:
                self._queue.append((_COMPLETED, (observer,)))
            else:
                self._observers = (*self._observers, observer)
                if self._replay and self._has_latest:
                    self._queue.append((self._latest, (observer,)))
        self.flush()
        return _Detach(self, observer)

    def _unsubscribe(self, observer: abc.ObserverBase[T]) -> None:
        with self._lock:
            self._observers = tuple(o for o in self._observers if o is not observer)
            # values already queued for it are dropped: it asked to stop
            self._queue = [(v, tuple(o for o in obs if o is not observer))
                           for v, obs in self._queue]


class SerialThread:
    """One daemon thread that runs what is submitted, in order; started on first use, ended
    by :meth:`stop` once what was submitted before has run."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def submit(self, action: Callable[[], None]) -> None:
        with self._lock:
            if self._stopped:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            # queued under the lock: a stop() in between would queue the end first, and
            # an action accepted here would never run
            self._queue.put(action)

    def settle(self, timeout: float) -> None:
        """Wait until what was submitted so far has run (nothing to wait for once stopped)."""
        done = threading.Event()
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            if not self._stopped:
                self._queue.put(done.set)
        if self._stopped:
            thread.join(timeout)
        else:
            done.wait(timeout)

    def stop(self) -> None:
        with self._lock:
            if self._stopped or self._thread is None:
                self._stopped = True
                return
            self._stopped = True
        self._queue.put(None)

    def _run(self) -> None:
        while (action := self._queue.get()) is not None:
            action()  # each action guards its own observers (SerialSubject.flush does)
