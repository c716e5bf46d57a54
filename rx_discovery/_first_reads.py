"""First reads in bulk: the first state of many streams started together, in few round trips.

A gateway that subscribes ``hosts()`` of thousands of services would otherwise pay one
sequential round trip per service. Instead, each :class:`~rx_discovery.sync.PrefixSync`
started without a read of its own asks :class:`FirstReads` for its first state; a few workers
on the I/O scheduler take whatever is waiting and read it with one
:func:`~rx_discovery.store.read_prefixes` (on etcd, up to 64 ranges per transaction: one round
trip, one revision). Batches form by themselves, without a timer: while one read is in
flight, the next requests queue, and the next worker takes them all. A single stream started
alone is read at once, as before.

A batch that fails because the store is unreachable goes back to the head of the queue, and
nothing is read until a backoff passed (one for the whole queue, not one per service): a
gateway started before etcd costs one failed call per backoff, not thousands, and its services
are read in bulk when etcd comes (the store reports the outage on health; a stream started
with a ``scheduler=`` of its own reads alone then, its retries timed there). A batch that fails
otherwise (one range refused, a transaction too large or not supported) hands each of its
syncs back to its own first read (``PrefixSync.read_alone``), which reports the failure where
the user looks and retries with backoff as it always did: a refusal of one service never holds
back the others.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Protocol

from reactivex import abc

from rx_discovery._errors import StoreUnavailable
from rx_discovery._runtime import Backoff, Runtime
from rx_discovery.store import Snapshot, Store, read_prefixes
from rx_discovery.sync import _RETRY

__all__ = ["FirstReads", "delivering_first_sets"]

log = logging.getLogger("rx_discovery")

# Set on the thread while it delivers first sets read in bulk (see delivering_first_sets)
_delivering = threading.local()

# At most this many prefixes per bulk read, and this many reads in flight at once: two keep a
# round trip in flight while the previous answer is installed, without holding every I/O worker
# (registrations and keepalive fallbacks share them).
_BATCH = 64
_WORKERS = 2


class Reader(Protocol):
    """What :class:`FirstReads` needs of a sync (``PrefixSync``)."""

    @property
    def prefix(self) -> str: ...

    @property
    def wants_first_read(self) -> bool: ...

    @property
    def timer(self) -> abc.SchedulerBase: ...

    def install_first(self, snapshot: Snapshot) -> None: ...

    def read_alone(self, error: Exception) -> None: ...

    def flush_now(self) -> None: ...


class FirstReads:
    """Reads the first state of the syncs that ask for it, in batches (see the module).

    Args:
        store: the store to read.
        runtime: the I/O scheduler the reads run on, and the timer of its rests; deliveries
            are handed off from it.
    """

    def __init__(self, store: Store, runtime: Runtime) -> None:
        self._store = store
        self._runtime = runtime
        self._lock = threading.Lock()
        # Strong: while its first read waits, nothing else may hold a sync (a subscriber that
        # kept no disposable: the watch that will hold it is not open yet), and a weak
        # reference let a garbage collection drop a live stream. A sync stopped meanwhile is
        # held until its turn, and skipped then.
        self._waiting: deque[Reader] = deque()
        self._workers = 0
        # While the store is unreachable: no read until the rest ends (one backoff for the
        # whole queue), and batches halved by each failure (a transaction too slow to answer
        # in time is one too), doubled back by each success
        self._resting = False
        self._backoff: Backoff | None = None
        self._limit = _BATCH

    @property
    def timer(self) -> abc.SchedulerBase:
        """The scheduler that times the rests (the Discovery's timer)."""
        return self._runtime.timer

    def request(self, sync: Reader) -> None:
        """Read ``sync``'s first state soon, with whatever else is waiting."""
        with self._lock:
            self._waiting.append(sync)
            if self._resting or self._workers >= _WORKERS:
                return  # a worker running takes it with its next batch, or one after the rest
            self._workers += 1
        self._runtime.run(self._work)

    def _work(self) -> None:
        try:
            while self._read_batch():
                pass
        finally:
            with self._lock:
                self._workers -= 1
                again = self._can_start()
            if again:  # a request queued while this worker was leaving
                self._runtime.run(self._work)

    def _can_start(self) -> bool:
        """Count a new worker if one should start (call under the lock)."""
        if self._waiting and not self._resting and self._workers < _WORKERS:
            self._workers += 1
            return True
        return False

    def _read_batch(self) -> bool:
        """Read one batch; False when nothing waits, or the store is resting."""
        with self._lock:
            batch: list[Reader] = []
            while self._waiting and len(batch) < self._limit and not self._resting:
                sync = self._waiting.popleft()
                if sync.wants_first_read:  # not stopped, nor read by a
                    # subscriber meanwhile
                    batch.append(sync)
            if not batch:
                return False
        try:
            snapshots = read_prefixes(self._store, [sync.prefix for sync in batch])
        except StoreUnavailable as error:  # etcd unreachable: all wait, and retry together,
            # but for a stream started with a scheduler of its own, which times its retries
            timer = self.timer
            for sync in batch:
                if sync.timer is not timer:
                    sync.read_alone(error)
            resting = [sync for sync in batch if sync.timer is timer]
            if resting:
                self._rest(resting, error)
                return False
            return True
        except Exception as error:  # refused (one range maybe): each alone, its own error
            log.debug("bulk first read of %d prefixes failed (%s: %s); reading each alone",
                      len(batch), type(error).__name__, error)
            for sync in batch:
                sync.read_alone(error)
            return True
        with self._lock:
            self._backoff = None
            self._limit = min(_BATCH, self._limit * 2)
            another = self._can_start()  # after a rest, one worker starts: now two
        if another:
            self._runtime.run(self._work)
        for sync, snapshot in zip(batch, snapshots, strict=True):
            sync.install_first(snapshot)
        # the first states reach their subscribers off this worker, in one hand-off
        self._runtime.hand_off(_FlushAll(batch))
        return True

    def _rest(self, batch: list[Reader], error: StoreUnavailable) -> None:
        """Put ``batch`` back first in line, and read nothing until a backoff passed: while
        etcd is unreachable, thousands of first reads cost one failed call per backoff, not
        one each (the store reports the outage on health). The syncs stopped meanwhile are
        dropped: close() stops them all, then cuts the read in flight, which is no outage."""
        batch = [sync for sync in batch if sync.wants_first_read]
        if not batch:
            return
        with self._lock:
            self._waiting.extendleft(reversed(batch))
            self._limit = max(1, len(batch) // 2)
            if self._resting:
                return  # the other worker's failure started the rest already
            self._resting = True
            backoff = self._backoff = self._backoff or Backoff(*_RETRY)
            delay = backoff.next()
        log.log(logging.INFO if backoff.attempt == 1 else logging.DEBUG,
                "first reads of %d services failed (%s); retrying together in %.2fs",
                len(self._waiting), error, delay)
        self._runtime.after(delay, self._wake)

    def _wake(self) -> None:
        """The rest is over: one worker reads again (a second one joins once it succeeds)."""
        with self._lock:
            self._resting = False
            start = self._can_start()
        if start:
            self._work()  # on the I/O scheduler already


def delivering_first_sets() -> bool:
    """True on a thread that is delivering first sets read in bulk. They are delivered one
    after the other: an observer that subscribes another service there and waits for its
    first set (a balancer's ``pick()``) would wait for a delivery queued behind itself, so a
    subscription made there reads its first state at once, on this thread (as
    ``subscribe_new`` does)."""
    return getattr(_delivering, "active", False)


class _FlushAll:
    """Delivers what the syncs of a batch enqueued (user code: never on the I/O worker)."""

    __slots__ = ("_syncs",)

    def __init__(self, syncs: list[Any]) -> None:
        self._syncs = syncs

    def __call__(self) -> None:
        outer = delivering_first_sets()  # (delivered inline: nested in another delivery)
        _delivering.active = True
        try:
            for sync in self._syncs:
                try:
                    sync.flush_now()
                except Exception:  # one observer's failure is logged; the others get theirs
                    log.exception("rx-discovery: delivering a first state failed")
        finally:
            _delivering.active = outer
