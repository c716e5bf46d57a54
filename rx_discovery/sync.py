"""Keeps the decoded state of one key prefix in sync with the store: snapshot, watch, resume.

This is where "gap-free" lives. A :class:`PrefixSync` reads the prefix (a snapshot at revision
R), then watches from R + 1 and applies each event once. When the watch fails it is reopened
from the last revision it applied + 1, after a jittered backoff, for ever; when that revision
was compacted it reads the prefix again and publishes the difference as an ordinary change.
Values that do not decode are reported and skipped, never fatal.

Thread: changes are *enqueued* (``publish``, ``report``) under the sync's lock, on the store's
watch thread (etcd: the watch reader thread; memory: the store's scheduler), on the I/O
scheduler (background reads) or on a subscriber's thread (a first read at subscribe time);
never two at once, in revision order. ``flush`` is called after the lock is released, so user
observers never run under it; after a background read it is handed off (``Runtime.hand_off``),
so that an observer that blocks never holds an I/O worker. Recovery (the next watch, a retry)
is always in place before ``flush`` runs, so an observer that raises or blocks cannot stop the
sync.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from immutables import Map
from reactivex import abc
from reactivex.disposable import SerialDisposable, SingleAssignmentDisposable

from rx_discovery import metrics
from rx_discovery._errors import MalformedValue, RevisionCompacted
from rx_discovery._runtime import Backoff, Runtime
from rx_discovery.store import EventType, Snapshot, Store, WatchEvent, WatchResponse

if TYPE_CHECKING:
    from rx_discovery._first_reads import FirstReads

__all__ = ["Change", "Codec", "Diagnostic", "KeyCodec", "PrefixSync"]

log = logging.getLogger("rx_discovery")

T = TypeVar("T")

# Watches are cheap to reopen: retry soon (jittered, so clients do not stampede), and at most
# 0.5 s apart, so a stream resumes within ~1 s of etcd coming back: (initial, maximum) in s.
_RETRY = (0.05, 0.5)
# A permanent refusal (a permission, a login) heals only when someone fixes it: retry slowly,
# as a refused login is (1 s doubling to 60 s), not every 0.5 s for ever.
_SLOW_RETRY = (1.0, 60.0)


@dataclass(frozen=True)
class Diagnostic:
    """A problem found in the store that was skipped (the stream went on).

    Attributes:
        key: the store key holding the bad value.
        reason: what is wrong (never the value itself).
        revision: the revision of the bad value (0 when unknown).
    """

    key: str
    reason: str
    revision: int = 0

    def __str__(self) -> str:
        return f"{self.key} (revision {self.revision}): {self.reason}"


@dataclass(frozen=True, slots=True)
class Change(Generic[T]):
    """One step of the state of a prefix.

    Attributes:
        revision: the store revision the state reflects.
        items: the whole state after the change, ``id -> value``: a persistent map, so that
            a change costs O(log n) however many items there are, and states can be kept.
        added: ids created by this change; updated: ids whose value changed;
        removed: ``id -> last value`` of the ids that vanished.
        initial: this is the first state seen (a snapshot), not a change.
        resync: this change was computed by re-reading the prefix after a compaction.
    """

    revision: int
    items: Map[str, T]
    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: Mapping[str, T] | None = None
    initial: bool = False
    resync: bool = False

    def as_initial(self) -> Change[T]:
        """The same state as a first snapshot, for a subscriber that joins late."""
        return Change(self.revision, self.items, initial=True)

    @property
    def empty(self) -> bool:
        return not (self.added or self.updated or self.removed)


class KeyCodec(Generic[T]):
    """How a prefix's keys and values become ``id -> value``."""

    __slots__ = ()

    def ident(self, key: str) -> str | None:
        """The id of ``key``; None to ignore the key.

        Raises:
            MalformedValue: the key belongs here but is unusable (reported).
        """
        raise NotImplementedError

    def entry(self, key: str, value: bytes) -> tuple[str, T] | None:
        """``(id, value)`` of a key and its value; None to ignore the key.

        Raises:
            MalformedValue: the key or the value is unusable (reported, skipped).
        """
        raise NotImplementedError


class Codec(KeyCodec[T]):
    """A :class:`KeyCodec` of two functions.

    Args:
        ident: the id of a key (as :meth:`KeyCodec.ident`).
        decode: the value of a key; raises MalformedValue (reported, skipped).
    """

    __slots__ = ("_decode", "_ident")

    def __init__(self, ident: Callable[[str], str | None],
                 decode: Callable[[str, bytes], T]) -> None:
        self._ident = ident
        self._decode = decode

    def ident(self, key: str) -> str | None:
        return self._ident(key)

    def entry(self, key: str, value: bytes) -> tuple[str, T] | None:
        ident = self._ident(key)
        return None if ident is None else (ident, self._decode(key, value))


class PrefixSync(Generic[T]):
    """The state of one prefix, kept in sync; publishes a :class:`Change` per store change.

    Args:
        store: the store to read and watch.
        prefix: the key prefix.
        codec: turns keys and values into ids and values.
        runtime: where I/O and backoff timers run.
        publish: enqueues each change (called under the sync's lock: must not call user code).
        report: enqueues each skipped bad value (same rule).
        flush: delivers what was enqueued; called after the lock is released.
        name: a label for log lines.
        exact: watch the key ``prefix`` alone, not every key starting with it.
        first_reads: reads the first state in bulk with other syncs started together, when
            the sync is started without a read of its own (None: read alone).
    """

    # slotted: one per watched service (~50 bytes less than an instance dict)
    __slots__ = ("_backoff", "_bad", "_codec", "_exact", "_first_reads", "_flush", "_items",
                 "_loaded", "_lock", "_name", "_pending", "_prefix", "_publish", "_report",
                 "_revision", "_runtime", "_slow_backoff", "_stopped", "_store", "_token", "_watch")

    def __init__(self, store: Store, prefix: str, codec: KeyCodec[T], runtime: Runtime,
                 publish: Callable[[Change[T]], None], report: Callable[[Diagnostic], None],
                 name: str, flush: Callable[[], None] = lambda: None, *,
                 exact: bool = False, first_reads: FirstReads | None = None) -> None:
        self._store = store
        self._prefix = prefix
        self._codec = codec
        self._runtime = runtime
        self._publish = publish
        self._report = report
        self._flush = flush
        self._name = name
        self._exact = exact
        self._first_reads = first_reads
        self._lock = threading.RLock()
        self._items: Map[str, T] = Map()
        self._bad: dict[str, int] | None = None  # key -> revision of bad values reported
        self._revision = 0  # last revision applied
        self._loaded = False
        self._stopped = False
        self._token = object()  # identifies the current watch; stale callbacks are ignored
        # Made when first needed, dropped when done (under the lock): most syncs never
        # retry, and thousands of idle ones each kept two locks and two Backoffs for it.
        self._watch: abc.DisposableBase | None = None
        self._pending: SerialDisposable | None = None
        # None: no failure since the last success (see _RETRY and _SLOW_RETRY)
        self._backoff: Backoff | None = None
        self._slow_backoff: Backoff | None = None

    @property
    def loaded(self) -> bool:
        """True once the first state was read and enqueued."""
        return self._loaded

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def timer(self) -> abc.SchedulerBase:
        """The scheduler that times this sync's retries."""
        return self._runtime.timer

    @property
    def wants_first_read(self) -> bool:
        """Neither read yet nor stopped (what :class:`FirstReads` asks before reading)."""
        return not (self._loaded or self._stopped)

    def start(self, block: bool = False) -> None:
        """Read the prefix and start watching: the first read on the caller's thread when
        ``block`` (bounded by the store's call timeout; on failure it goes on in the
        background), else in the background (in bulk with other syncs, with ``first_reads``)."""
        if block and not self._stopped:
            try:
                self._load(first=True, retry=False, hand_off=False)
                return
            except Exception as error:
                log.info("%s: first read failed (%s: %s); retrying in the background",
                         self._name, type(error).__name__, error)
            if self._first_reads is None or self._first_reads.timer is not self.timer:
                self._later(0, self._first_load)  # a scheduler of its own times its retries
                return
        # in the background: with the other first reads (which wait for an unreachable
        # store together), else alone
        if self._first_reads is not None:
            self._first_reads.request(self)
        else:
            self._later(0, self._first_load)

    def install_first(self, snapshot: Snapshot) -> None:
        """Take ``snapshot`` (read in bulk by :class:`FirstReads`) as the first state, unless
        the sync read its own meanwhile, and start watching; the caller flushes
        (:meth:`flush_now`) once off its I/O worker."""
        try:
            self._install(snapshot, first=True)
        except Exception as error:  # a codec bug: as a failed read of its own
            self._retry(self._first_load, error, "read")

    def read_alone(self, error: Exception) -> None:
        """The bulk read that held this sync failed: read on its own now (its own error
        reported, its own backoff)."""
        self._later(0, self._first_load)

    def flush_now(self) -> None:
        """Deliver what was enqueued (user code: call outside every library lock)."""
        self._flush()

    def ensure_loaded(self, hand_off: bool = False) -> None:
        """Read the first state now, on the caller's thread, unless it was read already.

        A registration calls it before writing its key, so that its own put reaches every
        stream of the service as a change, and a failure to read is its own error; it runs
        on an I/O worker, so it asks to ``hand_off`` the deliveries (as background reads do).

        Raises:
            StoreError: the read failed (the background load keeps retrying).
        """
        if not self._loaded and not self._stopped:
            self._load(first=True, retry=False, hand_off=hand_off)

    def stop(self) -> None:
        """Cancel the watch and any pending retry. Nothing is published afterwards."""
        with self._lock:
            self._stopped = True
            self._token = object()
            pending, watch, self._watch = self._pending, self._watch, None
        if pending is not None:
            pending.dispose()
        if watch is not None:
            watch.dispose()

    # --- snapshot -----------------------------------------------------------------------

    def _first_load(self) -> None:
        self._load(first=True)

    def _resync(self) -> None:
        self._load(first=False)

    def _load(self, first: bool, retry: bool = True, hand_off: bool = True) -> None:
        if self._stopped:
            return
        try:
            self._read(first)
        except Exception as error:  # any: a store fault, a codec bug; the sync must go on
            if not retry:
                raise
            self._retry(self._first_load if first else self._resync, error, "read")
        finally:
            # outside the lock: user code; the watch or retry is in place. On an I/O worker
            # hand it off: a blocking observer must not hold the worker
            if hand_off:
                self._runtime.hand_off(self._flush)
            else:
                self._flush()

    def _read(self, first: bool) -> None:
        self._install(self._store.get_prefix(self._prefix), first)

    def _install(self, snapshot: Snapshot, first: bool) -> None:
        with self._lock:
            if self._stopped or (first and self._loaded):
                return  # another thread read the first state meanwhile
            items: dict[str, T] = {}
            for kv in snapshot.items:
                decoded = self._decode(kv.key, kv.value, kv.mod_revision)
                if decoded is not None:
                    items[decoded[0]] = decoded[1]
            first = not self._loaded
            state = Map(items)
            change = _diff(self._items, state, snapshot.revision, first, resync=True)
            self._items, self._revision = state, snapshot.revision
            self._backoff = self._slow_backoff = None
            self._open_watch()  # recovery first: publishing enqueues only, but stay safe
            if first or not change.empty:
                if not first:
                    log.info("%s: resynced at revision %d (%d added, %d removed)", self._name,
                             snapshot.revision, len(change.added), len(change.removed or ()))
                self._publish(change)
            # only now: a subscriber that sees ``loaded`` (without this lock) must find the
            # first state enqueued already, not have it come later as unseen hosts
            self._loaded = True

    # --- watch --------------------------------------------------------------------------

    def _open_watch(self) -> None:
        with self._lock:
            if self._stopped:
                return
            token = self._token = object()
            previous, self._watch = self._watch, None
            if previous is not None:
                previous.dispose()
            # ``exact`` only when asked: a Store written before the keyword still watches hosts
            watch = (self._store.watch(self._prefix, self._revision + 1, exact=True)
                     if self._exact else self._store.watch(self._prefix, self._revision + 1))
            self._watch = watch.subscribe(_WatchObserver(self, token))

    def _on_response(self, token: object, response: WatchResponse) -> None:
        try:
            with self._lock:
                if token is not self._token:
                    return
                if self._backoff is not None or self._slow_backoff is not None:
                    log.info("%s: watch resumed from revision %d", self._name,
                             self._revision + 1)
                    metrics.stream_event("resumes", self._name)
                    self._backoff = self._slow_backoff = None
                if not response.events:  # progress notification: nothing changed up to here
                    self._revision = max(self._revision, response.revision)
                    return
                for revision in _by_revision(response.events):
                    if revision[0].mod_revision > self._revision:  # else applied (overlap)
                        self._apply(revision)
        except Exception as error:  # a bug (e.g. in a codec): reopen from what was applied
            log.exception("%s: could not apply a watch response", self._name)
            self._on_error(token, error)
        finally:
            self._flush()  # outside the lock: user code

    def _apply(self, events: Sequence[WatchEvent]) -> None:
        """Apply the events of one revision and publish the change (one per revision, so no
        host that came and went is lost, even when etcd sends many revisions at once).

        A revision touches each key at most once (etcd refuses a transaction that repeats a
        key), so each event is classified as it is applied: O(log n) per event."""
        before = self._items
        items = before.mutate()
        added: list[str] = []
        updated: list[str] = []
        removed: dict[str, T] = {}
        for event in events:
            decoded = None
            if event.type is EventType.DELETE:
                if self._bad:
                    self._bad.pop(event.key, None)
            else:
                decoded = self._decode(event.key, event.value, event.mod_revision)
            if decoded is not None:
                ident, value = decoded
                old = items.get(ident)
                items[ident] = value
                if old is None:
                    added.append(ident)
                elif old != value:
                    updated.append(ident)
                continue
            # deleted, or overwritten with garbage: gone, as a fresh read would say
            gone = self._ident(event.key, report=False)
            if gone is not None:
                old = items.get(gone)
                if old is not None:
                    del items[gone]
                    removed[gone] = old
        self._revision = events[-1].mod_revision
        self._items = after = items.finish()
        if added or updated or removed:  # sorted: a batch of ids always comes in key order
            self._publish(Change(
                self._revision, after,
                tuple(sorted(added)) if len(added) > 1 else tuple(added),
                tuple(sorted(updated)) if len(updated) > 1 else tuple(updated),
                dict(sorted(removed.items())) if len(removed) > 1 else removed))

    def _on_error(self, token: object, error: Exception) -> None:
        with self._lock:
            if token is not self._token:
                return
            self._token = object()
        if isinstance(error, RevisionCompacted):
            log.info("%s: revision %d was compacted (oldest %d); re-reading the prefix",
                     self._name, self._revision + 1, error.compact_revision)
            metrics.stream_event("resyncs", self._name)
            self._later(0, self._resync)
        else:
            metrics.stream_event("reconnects", self._name)
            self._retry(self._open_watch, error, "watch")

    def _retry(self, action: Callable[[], None], error: Exception, what: str) -> None:
        if self._stopped:
            return
        permanent = getattr(error, "permanent", False)
        with self._lock:
            if permanent:
                backoff = self._slow_backoff = self._slow_backoff or Backoff(*_SLOW_RETRY)
            else:
                backoff = self._backoff = self._backoff or Backoff(*_RETRY)
            delay = backoff.next()
        level = ((logging.WARNING if permanent else logging.INFO) if backoff.attempt == 1
                 else logging.DEBUG)
        log.log(level, "%s: %s failed (%s: %s); retrying in %.2fs", self._name, what,
                type(error).__name__, error, delay)
        self._later(delay, action)

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` on the I/O scheduler after ``delay``, cancelling what was pending.
        Recorded as pending *before* it is scheduled: a worker may run it, fail and schedule
        its retry before ``after`` returns, and recording it then would cancel that retry."""
        slot = SingleAssignmentDisposable()
        with self._lock:
            if self._stopped:
                return  # stop() has disposed what was pending (or found nothing)
            if self._pending is None:
                self._pending = SerialDisposable()  # disposed by stop(): so is any slot after
            pending = self._pending
        pending.disposable = slot
        slot.disposable = self._runtime.after(delay, action)  # disposed at once if replaced

    # --- decoding -----------------------------------------------------------------------

    def _ident(self, key: str, report: bool = True, revision: int = 0) -> str | None:
        try:
            return self._codec.ident(key)
        except MalformedValue as error:
            if report:
                self._skip(key, error.reason, revision)
            return None

    def _decode(self, key: str, value: bytes, revision: int) -> tuple[str, T] | None:
        try:
            return self._codec.entry(key, value)
        except MalformedValue as error:
            self._skip(key, error.reason, revision)
            return None

    def _skip(self, key: str, reason: str, revision: int) -> None:
        if self._bad is None:
            self._bad = {}
        elif self._bad.get(key) == revision:
            return  # already reported (a resync reads it again)
        self._bad[key] = revision
        metrics.stream_event("skipped", self._name)
        log.warning("%s: skipped malformed value at %s (revision %d): %s", self._name, key,
                    revision, reason)
        self._report(Diagnostic(key, reason, revision))


class _WatchObserver(abc.ObserverBase[WatchResponse]):
    """The observer of one watch of a sync (what ``subscribe(on_next=lambda ..., on_error=
    lambda ...)`` makes, without two closures and an Observer for every watched service)."""

    __slots__ = ("_sync", "_token")

    def __init__(self, sync: PrefixSync[Any], token: object) -> None:
        self._sync = sync
        self._token = token

    def on_next(self, response: WatchResponse) -> None:
        self._sync._on_response(self._token, response)

    def on_error(self, error: Exception) -> None:
        self._sync._on_error(self._token, error)

    def on_completed(self) -> None:
        pass  # a watch never completes


def _by_revision(events: Sequence[WatchEvent]) -> list[Sequence[WatchEvent]]:
    """The events grouped by revision (one transaction each), in order."""
    groups: list[Sequence[WatchEvent]] = []
    start = 0
    for index in range(1, len(events) + 1):
        if index == len(events) or events[index].mod_revision != events[start].mod_revision:
            groups.append(events[start:index])
            start = index
    return groups


def _diff(before: Mapping[str, T], after: Map[str, T], revision: int, initial: bool,
          resync: bool = False) -> Change[T]:
    """The change from ``before`` to ``after`` (a re-read: every id is looked at)."""
    if initial:
        return Change(revision, after, initial=True)
    keys = set(before) | set(after)
    added = tuple(sorted(k for k in keys if k in after and k not in before))
    updated = tuple(sorted(k for k in keys if k in after and k in before and before[k] != after[k]))
    removed = {k: before[k] for k in sorted(keys) if k in before and k not in after}
    return Change(revision, after, added, updated, removed, resync=resync)
