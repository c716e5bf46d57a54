"""First reads in bulk: the first state of many streams started together, in few round trips.

A gateway that subscribes ``hosts()`` of thousands of services would otherwise pay one
sequential round trip per service. Instead, each :class:`~rx_discovery.sync.PrefixSync`
started without a read of its own asks :class:`FirstReads` for its first state; a few workers
on the I/O scheduler take whatever is waiting and read it with one
:func:`~rx_discovery.store.read_prefixes` (on etcd, up to 64 ranges per transaction: one round
trip, one revision). Batches form by themselves, without a timer: while one read is in
flight, the next requests queue, and the next worker takes them all. A single stream started
alone is read at once, as before.

A batch that fails (etcd unreachable, one range refused, a transaction too large) hands each
of its syncs back to its own first read (``PrefixSync.read_alone``), which reports the
failure where the user looks and retries with backoff as it always did: a refusal of one
service never holds back the others.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Protocol

from rx_discovery._runtime import Runtime
from rx_discovery.store import Snapshot, Store, read_prefixes

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

    def install_first(self, snapshot: Snapshot) -> None: ...

    def read_alone(self, error: Exception) -> None: ...

    def flush_now(self) -> None: ...


class FirstReads:
    """Reads the first state of the syncs that ask for it, in batches (see the module).

    Args:
        store: the store to read.
        runtime: the I/O scheduler the reads run on; deliveries are handed off from it.
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

    def request(self, sync: Reader) -> None:
        """Read ``sync``'s first state soon, with whatever else is waiting."""
        with self._lock:
            self._waiting.append(sync)
            if self._workers >= _WORKERS:
                return  # a worker running takes it with its next batch
            self._workers += 1
        self._runtime.run(self._work)

    def _work(self) -> None:
        try:
            while self._read_batch():
                pass
        finally:
            with self._lock:
                self._workers -= 1
                again = bool(self._waiting) and self._workers < _WORKERS
                if again:  # a request queued while this worker was leaving
                    self._workers += 1
            if again:
                self._runtime.run(self._work)

    def _read_batch(self) -> bool:
        """Read one batch; False when nothing waits."""
        with self._lock:
            batch: list[Reader] = []
            while self._waiting and len(batch) < _BATCH:
                sync = self._waiting.popleft()
                if sync.wants_first_read:  # not stopped, nor read by a
                    # subscriber meanwhile
                    batch.append(sync)
            if not batch:
                return False
        try:
            snapshots = read_prefixes(self._store, [sync.prefix for sync in batch])
        except Exception as error:  # each alone: its own error, its own retry
            log.debug("bulk first read of %d prefixes failed (%s: %s); reading each alone",
                      len(batch), type(error).__name__, error)
            for sync in batch:
                sync.read_alone(error)
            return True
        for sync, snapshot in zip(batch, snapshots, strict=True):
            sync.install_first(snapshot)
        # the first states reach their subscribers off this worker, in one hand-off
        self._runtime.hand_off(_FlushAll(batch))
        return True


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
