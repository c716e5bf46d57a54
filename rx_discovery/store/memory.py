"""An in-memory :class:`~rx_discovery.store.Store` with etcd v3 semantics, on a reactivex scheduler.

It exists so that everything above the store port can be tested without a server, and in
virtual time: give it a :class:`reactivex.testing.TestScheduler` and lease TTLs, expiries and
watch deliveries all happen on that scheduler's clock.

What it reproduces from etcd:

* one global revision, 1 when empty, +1 per write; a delete of a missing key is no write;
* per key ``create_revision``, ``mod_revision``, ``version`` and lease;
* leases with a minimum TTL of 2 s; an expired or revoked lease deletes all its keys in one
  revision (one transaction, as etcd's lessor does);
* watches that replay history from a start revision, then follow live writes, one
  :class:`~rx_discovery.store.WatchResponse` per revision; compaction, after which a watch from
  an older revision fails with :class:`~rx_discovery.RevisionCompacted`.

Fault switches for tests: :meth:`MemoryStore.disconnect`, :meth:`MemoryStore.reconnect`,
:meth:`MemoryStore.restart`, :meth:`MemoryStore.expire_lease`, :meth:`MemoryStore.compact`.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import reactivex
from reactivex import abc
from reactivex.disposable import Disposable
from reactivex.internal.exceptions import DisposedException
from reactivex.scheduler import EventLoopScheduler

from rx_discovery._errors import LeaseNotFound, RevisionCompacted, StoreUnavailable
from rx_discovery.health import Health, HealthTracker
from rx_discovery.store import EventType, KeyValue, Lease, Snapshot, WatchEvent, WatchResponse

__all__ = ["MIN_LEASE_TTL", "MemoryStore"]

MIN_LEASE_TTL = 2
"""etcd rounds smaller TTLs up to this (1.5 election timeouts of the default config, in s)."""

# etcd lease ids are large int64s; starting far from revision numbers makes a lease id passed
# where a revision is expected (or the reverse) fail loudly in tests.
_FIRST_LEASE_ID = 1 << 32


@dataclass(eq=False)
class _Lease:
    id: int
    ttl: int
    deadline: datetime
    keys: set[str] = field(default_factory=set)


@dataclass(eq=False)
class _Watch:
    """One watch subscription: what is waiting for delivery, and to whom."""

    prefix: str
    observer: abc.ObserverBase[WatchResponse]
    exact: bool = False  # the key ``prefix`` alone
    start: int = 0  # the first revision it may deliver (etcd skips earlier ones: ``minRev``)
    queue: deque[WatchResponse | Exception] = field(default_factory=deque)
    draining: bool = False  # a drain is scheduled or running: a new one must not start
    done: bool = False  # disposed, failed or store closed: deliver nothing more

    def matches(self, key: str) -> bool:
        return key == self.prefix if self.exact else key.startswith(self.prefix)

    def offer(self, item: WatchResponse | Exception) -> bool:
        """Queue ``item``; True when the caller must schedule a drain. Call under the lock."""
        self.queue.append(item)
        if self.draining:
            return False
        self.draining = True
        return True


class MemoryStore:
    """An in-memory key-value store with etcd v3's revisions, leases and watches.

    Thread-safe: one lock guards the state, and observers are never called while it is held.
    Watch responses are delivered asynchronously, on the store's scheduler (never inside the
    call that wrote), in revision order per watch; lease expiry runs on the same scheduler, at
    the deadline on the scheduler's clock.

    Args:
        scheduler: where time runs and watches are delivered. It must run actions later, not
            inside ``schedule`` (an ``EventLoopScheduler``, a ``TestScheduler``...). None: a
            private ``EventLoopScheduler`` whose daemon thread starts on first use and stops
            on :meth:`close`.
    """

    def __init__(self, scheduler: abc.SchedulerBase | None = None) -> None:
        self._owns_scheduler = scheduler is None
        self._scheduler: abc.SchedulerBase = (
            EventLoopScheduler() if scheduler is None else scheduler
        )
        self._lock = threading.Lock()
        self._revision = 1  # an empty etcd is at revision 1
        self._compacted = 0  # watches from a revision below this fail
        self._kvs: dict[str, KeyValue] = {}
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(_FIRST_LEASE_ID)
        # Every write since the last compaction, in revision order: (revision, events).
        self._history: list[tuple[int, tuple[WatchEvent, ...]]] = []
        self._watches: list[_Watch] = []
        self._connected = True
        self._closed = False
        self._health = HealthTracker("memory store")
        self._health.connected()

    # ------------------------------------------------------------------ Store: key-values

    def get_prefix(self, prefix: str) -> Snapshot:
        """Every key starting with ``prefix``, sorted by key, and the current revision.

        Raises:
            StoreUnavailable: disconnected or closed.
        """
        with self._lock:
            self._check_available()
            items = tuple(kv for key, kv in sorted(self._kvs.items()) if key.startswith(prefix))
            return Snapshot(self._revision, items)

    def get(self, key: str) -> KeyValue | None:
        """One key, or None.

        Raises:
            StoreUnavailable: disconnected or closed.
        """
        with self._lock:
            self._check_available()
            return self._kvs.get(key)

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write ``key``, attached to ``lease`` (0: no lease, detaching it from any old one).

        Returns:
            The new revision.

        Raises:
            ValueError: ``key`` is empty (etcd refuses it too).
            LeaseNotFound: ``lease`` does not exist (expired or revoked).
            StoreUnavailable: disconnected or closed.
        """
        if not key:
            raise ValueError("key must not be empty")
        with self._lock:
            self._check_available()
            target, drains = self._live_lease(lease) if lease else (None, [])
            found = target is not None or not lease
            if found:
                drains = self._commit([self._write(key, value, target)])
            revision = self._revision
        self._schedule_drains(drains)  # those of a lease found expired, or of the write
        if not found:
            raise LeaseNotFound(f"lease {lease:x} not found")
        return revision

    def delete(self, key: str) -> int:
        """Delete ``key`` if present (a missing key changes nothing, not even the revision).

        Returns:
            The revision after the call.

        Raises:
            StoreUnavailable: disconnected or closed.
        """
        with self._lock:
            self._check_available()
            drains = self._commit(self._remove([key]))
            revision = self._revision
        self._schedule_drains(drains)
        return revision

    # ------------------------------------------------------------------ Store: leases

    def grant(self, ttl: int) -> Lease:
        """Grant a lease of ``max(ttl, 2)`` seconds, expiring on the scheduler's clock.

        Raises:
            StoreUnavailable: disconnected or closed.
        """
        ttl = max(int(ttl), MIN_LEASE_TTL)
        with self._lock:
            self._check_available()
            lease = _Lease(next(self._lease_ids), ttl, self._now() + timedelta(seconds=ttl))
            self._leases[lease.id] = lease
        self._arm(lease, timedelta(seconds=ttl))
        return Lease(lease.id, ttl)

    def keepalive(self, lease: int) -> int:
        """Push ``lease``'s deadline to now + its TTL.

        Returns:
            The lease's TTL in seconds.

        Raises:
            LeaseNotFound: the lease expired or was revoked.
            StoreUnavailable: disconnected or closed.
        """
        with self._lock:
            self._check_available()
            found, drains = self._live_lease(lease)
            if found is not None:
                found.deadline = self._now() + timedelta(seconds=found.ttl)
                return found.ttl
        self._schedule_drains(drains)
        raise LeaseNotFound(f"lease {lease:x} not found")

    def revoke(self, lease: int) -> None:
        """Revoke ``lease`` and delete its keys, in one revision. A missing lease is no error.

        Raises:
            StoreUnavailable: disconnected or closed.
        """
        with self._lock:
            self._check_available()
            found = self._leases.get(lease)
            drains = self._end_lease(found) if found is not None else []
        self._schedule_drains(drains)

    # ------------------------------------------------------------------ Store: watches

    def watch(self, prefix: str, start_revision: int, *, exact: bool = False
              ) -> reactivex.Observable[WatchResponse]:
        """Every change under ``prefix`` from ``start_revision`` on, in revision order (with
        ``exact``: of the key ``prefix`` alone).

        Cold: each subscription is one watch, which first replays the recorded history from
        ``start_revision`` (0: from now, i.e. the current revision + 1), then follows live
        writes, one :class:`WatchResponse` per revision. It never completes; it fails with
        :class:`RevisionCompacted` when ``start_revision`` is older than the last compaction,
        and with :class:`StoreUnavailable` on :meth:`disconnect`/:meth:`restart` or when
        subscribed while disconnected. Everything is emitted on the store's scheduler.
        """

        def subscribe(
            observer: abc.ObserverBase[WatchResponse], _: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            watch = _Watch(prefix, observer, exact)
            with self._lock:
                drain = self._open(watch, start_revision)
            if drain:
                self._schedule_drains([watch])
            return Disposable(lambda: self._cancel(watch))

        return reactivex.create(subscribe)

    def close(self) -> None:
        """Cancel every watch (silently) and stop the private scheduler. Idempotent.

        Afterwards every call raises :class:`StoreUnavailable`.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for watch in self._watches:
                watch.done = True
            self._watches.clear()
        self._health.closed()
        if self._owns_scheduler and isinstance(self._scheduler, EventLoopScheduler):
            self._scheduler.dispose()

    @property
    def health(self) -> reactivex.Observable[Health]:
        """CONNECTED, RECONNECTING between :meth:`disconnect` and :meth:`reconnect`, CLOSED."""
        return self._health.observable

    # ------------------------------------------------------------------ fault switches

    def disconnect(self) -> None:
        """Act as if the server became unreachable.

        Every call raises :class:`StoreUnavailable`, active watches fail with it and new ones
        fail at once. Server-side time goes on: leases that are not refreshed expire.
        """
        with self._lock:
            self._connected = False
            drains = self._fail_watches("disconnected")
        self._health.failed("disconnected (MemoryStore.disconnect)")
        self._schedule_drains(drains)

    def reconnect(self) -> None:
        """Undo :meth:`disconnect`: calls and new watches work again."""
        with self._lock:
            self._connected = True
        self._health.connected()

    def restart(self) -> None:
        """Act as if the server restarted (or a new leader took over).

        Active watches fail with :class:`StoreUnavailable`, as their connection dropped; data is
        kept, and every lease gets a full TTL again, as etcd's new leader renews them.
        """
        with self._lock:
            now = self._now()
            for lease in self._leases.values():
                lease.deadline = now + timedelta(seconds=lease.ttl)
            drains = self._fail_watches("server restarted")
        self._schedule_drains(drains)

    def expire_lease(self, lease: int) -> None:
        """Expire ``lease`` now, as if its TTL ran out: its keys are deleted in one revision.

        Raises:
            LeaseNotFound: no such lease (a test mistake more often than not).
        """
        with self._lock:
            found = self._leases.get(lease)
            if found is None:
                raise LeaseNotFound(f"lease {lease:x} not found")
            drains = self._end_lease(found)
        self._schedule_drains(drains)

    def compact(self, revision: int | None = None) -> None:
        """Forget history before ``revision`` (default: the current revision).

        Afterwards a watch from a revision below ``revision`` fails with
        ``RevisionCompacted(revision)``; a watch from ``revision`` itself still works. Compacting
        to a revision at or below an earlier compaction does nothing (etcd would refuse it).

        Raises:
            ValueError: ``revision`` is in the future.
        """
        with self._lock:
            target = self._revision if revision is None else revision
            if target > self._revision:
                raise ValueError(f"revision {target} is in the future (now {self._revision})")
            if target <= self._compacted:
                return
            self._compacted = target
            first_kept = bisect.bisect_left(self._history, target, key=lambda entry: entry[0])
            del self._history[:first_kept]

    # ------------------------------------------------------------------ inspection

    @property
    def scheduler(self) -> abc.SchedulerBase:
        """The scheduler that runs lease time and watch delivery (the given one or private)."""
        return self._scheduler

    @property
    def revision(self) -> int:
        """The current revision."""
        with self._lock:
            return self._revision

    @property
    def compact_revision(self) -> int:
        """The revision of the last compaction (0 if none)."""
        with self._lock:
            return self._compacted

    @property
    def watch_count(self) -> int:
        """How many watch subscriptions are active (neither disposed nor failed)."""
        with self._lock:
            return len(self._watches)

    @property
    def leases(self) -> dict[int, float]:
        """Live lease ids and the seconds left before each expires."""
        with self._lock:
            now = self._now()
            return {
                lease.id: max((lease.deadline - now).total_seconds(), 0.0)
                for lease in self._leases.values()
            }

    @property
    def connected(self) -> bool:
        """False between :meth:`disconnect` and :meth:`reconnect`."""
        with self._lock:
            return self._connected

    def keys(self, prefix: str = "") -> list[str]:
        """The stored keys starting with ``prefix``, sorted; works even when disconnected."""
        with self._lock:
            return sorted(key for key in self._kvs if key.startswith(prefix))

    def dump(self, prefix: str = "") -> dict[str, KeyValue]:
        """The stored keys starting with ``prefix``, sorted, with their values and metadata."""
        with self._lock:
            return {key: kv for key, kv in sorted(self._kvs.items()) if key.startswith(prefix)}

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"<MemoryStore revision={self._revision} keys={len(self._kvs)} "
                f"leases={len(self._leases)} watches={len(self._watches)}"
                f"{'' if self._connected else ' disconnected'}{' closed' if self._closed else ''}>"
            )

    # ------------------------------------------------------------------ internals (under lock)

    def _now(self) -> datetime:
        return self._scheduler.now

    def _check_available(self) -> None:
        if self._closed:
            raise StoreUnavailable("store is closed")
        if not self._connected:
            raise StoreUnavailable("store is disconnected")

    def _live_lease(self, lease_id: int) -> tuple[_Lease | None, list[_Watch]]:
        """The lease if it is alive. One past its deadline whose timer has not fired yet (the
        timer may be queued behind this call at the same instant) is expired here, so that a
        lease is gone at exactly grant time + TTL whichever runs first."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return None, []
        if lease.deadline <= self._now():
            return None, self._end_lease(lease)
        return lease, []

    def _write(self, key: str, value: bytes, lease: _Lease | None) -> WatchEvent:
        """Store ``key`` at the next revision; returns its PUT event (not yet committed)."""
        revision = self._revision + 1
        old = self._kvs.get(key)
        if old is not None and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        if lease is not None:
            lease.keys.add(key)
        kv = KeyValue(
            key=key,
            value=value,
            create_revision=old.create_revision if old else revision,
            mod_revision=revision,
            version=old.version + 1 if old else 1,
            lease=lease.id if lease else 0,
        )
        self._kvs[key] = kv
        return WatchEvent(
            EventType.PUT, key, value, revision, kv.create_revision, kv.version, kv.lease
        )

    def _remove(self, keys: Iterable[str]) -> list[WatchEvent]:
        """Delete those of ``keys`` that exist, at the next revision; returns their events."""
        revision = self._revision + 1
        events = []
        for key in sorted(keys):
            old = self._kvs.pop(key, None)
            if old is None:
                continue
            if old.lease in self._leases:
                self._leases[old.lease].keys.discard(key)
            events.append(WatchEvent(EventType.DELETE, key, b"", revision))
        return events

    def _end_lease(self, lease: _Lease) -> list[_Watch]:
        """Drop ``lease`` and delete its keys in one revision (as etcd's revoke txn does)."""
        del self._leases[lease.id]
        return self._commit(self._remove(lease.keys))

    def _commit(self, events: list[WatchEvent]) -> list[_Watch]:
        """Make ``events`` one new revision and queue them to the matching watches.

        Returns the watches that need a drain scheduled (once the lock is released). No events:
        no write, no new revision.
        """
        if not events:
            return []
        self._revision += 1
        batch = tuple(events)
        self._history.append((self._revision, batch))
        drains = []
        for watch in self._watches:
            mine = tuple(event for event in batch if watch.matches(event.key))
            if mine and self._revision >= watch.start and watch.offer(
                    WatchResponse(self._revision, mine)):
                drains.append(watch)
        return drains

    def _open(self, watch: _Watch, start_revision: int) -> bool:
        """Start ``watch``: queue its replay (or its failure) and register it for live writes.

        Returns True when a drain must be scheduled.
        """
        if self._closed or not self._connected:
            return watch.offer(StoreUnavailable("store is closed or disconnected"))
        if 0 < start_revision < self._compacted:
            return watch.offer(RevisionCompacted(self._compacted))
        start = watch.start = start_revision if start_revision > 0 else self._revision + 1
        drain = False
        first = bisect.bisect_left(self._history, start, key=lambda entry: entry[0])
        for revision, batch in self._history[first:]:
            mine = tuple(event for event in batch if watch.matches(event.key))
            if mine:
                drain = watch.offer(WatchResponse(revision, mine)) or drain
        self._watches.append(watch)
        return drain

    def _fail_watches(self, reason: str) -> list[_Watch]:
        """Queue a StoreUnavailable to every active watch, which stops following writes."""
        drains = [w for w in self._watches if w.offer(StoreUnavailable(f"watch lost: {reason}"))]
        self._watches.clear()
        return drains

    # ------------------------------------------------------------------ internals (no lock held)

    def _cancel(self, watch: _Watch) -> None:
        with self._lock:
            watch.done = True
            watch.queue.clear()
            if watch in self._watches:
                self._watches.remove(watch)

    def _schedule_drains(self, watches: list[_Watch]) -> None:
        for watch in watches:
            self._schedule(lambda _s, _st, w=watch: self._drain(w))

    def _drain(self, watch: _Watch) -> None:
        """Deliver ``watch``'s queue in order, one item at a time, outside the lock."""
        while True:
            with self._lock:
                if watch.done or not watch.queue:
                    watch.draining = False
                    return
                item = watch.queue.popleft()
                if isinstance(item, Exception):
                    watch.done = True
            if isinstance(item, Exception):
                watch.observer.on_error(item)
                return
            watch.observer.on_next(item)

    def _arm(self, lease: _Lease, delay: timedelta) -> None:
        """Run the expiry check of ``lease`` after ``delay`` on the scheduler."""
        self._schedule(lambda _s, _st: self._on_lease_timer(lease), delay)

    def _on_lease_timer(self, lease: _Lease) -> None:
        # Keepalives only move the deadline; the timer re-arms itself for what is left, so one
        # timer per lease is pending at any time.
        with self._lock:
            if self._closed or self._leases.get(lease.id) is not lease:
                return
            left = lease.deadline - self._now()
            drains = [] if left > timedelta(0) else self._end_lease(lease)
        if left > timedelta(0):
            self._arm(lease, left)
        self._schedule_drains(drains)

    def _schedule(self, action: Any, delay: timedelta | None = None) -> None:
        if self._closed:
            return
        try:
            if delay is None:
                self._scheduler.schedule(action)
            else:
                self._scheduler.schedule_relative(delay, action)
        except DisposedException:  # closed concurrently: nothing is to be delivered any more
            pass
