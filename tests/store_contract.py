"""Behaviour every :class:`~rx_discovery.store.Store` adapter must have, as etcd v3 defines it.

``StoreContract`` is a mixin (not collected by itself): a test module subclasses it as
``Test...`` and provides three fixtures: ``store`` (the adapter under test), ``prefix`` (a key
prefix unique to the test, so that tests sharing one etcd never see each other's keys) and
``compact`` (a function compacting the store's history up to a revision; compaction is not
part of the Store port).

Adapters may deliver watch responses on another thread, so every expectation about a watch
waits for its condition with a deadline. Revisions are compared relative to the test's own
writes: a shared etcd may see other writes, so exact "+1" checks are retried a few times.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import reactivex.abc
from helpers import wait_until

from rx_discovery._errors import LeaseNotFound, RevisionCompacted
from rx_discovery.store import EventType, Store, WatchEvent, WatchResponse

DEADLINE = 5.0
"""Seconds a watch gets to deliver what a test waits for."""


def exactly_once_quiet(check: Callable[[], bool], attempts: int = 3) -> bool:
    """True when ``check`` holds in one of a few attempts: a stray write by someone else to a
    shared etcd can break an exact revision check once, but not every time."""
    return any(check() for _ in range(attempts))


class Recorder:
    """Collects a watch's non-empty responses and its error, from whatever thread emits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._responses: list[WatchResponse] = []
        self._error: Exception | None = None
        self.subscription: reactivex.abc.DisposableBase | None = None

    def on_next(self, response: WatchResponse) -> None:
        if response.events:  # empty ones are progress notifications
            with self._lock:
                self._responses.append(response)

    def on_error(self, error: Exception) -> None:
        with self._lock:
            self._error = error

    @property
    def responses(self) -> list[WatchResponse]:
        with self._lock:
            return list(self._responses)

    @property
    def events(self) -> list[WatchEvent]:
        return [event for response in self.responses for event in response.events]

    @property
    def error(self) -> Exception | None:
        with self._lock:
            return self._error

    def changes(self) -> list[tuple[EventType, str]]:
        return [(event.type, event.key) for event in self.events]

    def dispose(self) -> None:
        if self.subscription is not None:
            self.subscription.dispose()


class StoreContract:
    """The Store port's behaviour; subclass it as ``Test...`` with ``store`` and ``prefix``."""

    @pytest.fixture(autouse=True)
    def _watches(self) -> Iterator[None]:
        self._recorders: list[Recorder] = []
        yield
        for recorder in self._recorders:
            recorder.dispose()

    def watch(self, store: Store, prefix: str, start_revision: int, exact: bool = False
              ) -> Recorder:
        recorder = Recorder()
        recorder.subscription = store.watch(prefix, start_revision, exact=exact).subscribe(
            on_next=recorder.on_next, on_error=recorder.on_error
        )
        self._recorders.append(recorder)
        return recorder

    # ------------------------------------------------------------ revisions and key-values

    def test_each_write_bumps_the_revision_once(self, store: Store, prefix: str) -> None:
        def check() -> bool:
            first = store.put(f"{prefix}/a", b"1")
            second = store.put(f"{prefix}/b", b"2")
            snapshot = store.get_prefix(f"{prefix}/")
            return second == first + 1 and snapshot.revision == second

        assert exactly_once_quiet(check)
        snapshot = store.get_prefix(f"{prefix}/")
        assert [kv.mod_revision for kv in snapshot.items] == [
            snapshot.items[0].mod_revision,
            snapshot.items[0].mod_revision + 1,
        ]

    def test_put_returns_the_revision_that_get_reports(self, store: Store, prefix: str) -> None:
        revision = store.put(f"{prefix}/k", b"v")
        kv = store.get(f"{prefix}/k")
        assert kv is not None
        assert (kv.key, kv.value, kv.mod_revision) == (f"{prefix}/k", b"v", revision)
        assert store.get(f"{prefix}/missing") is None

    def test_create_and_mod_revision_and_version(self, store: Store, prefix: str) -> None:
        key = f"{prefix}/k"
        created = store.put(key, b"1")
        modified = store.put(key, b"2")
        kv = store.get(key)
        assert kv is not None
        assert (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
            b"2",
            created,
            modified,
            2,
            0,
        )
        deleted = store.delete(key)
        assert deleted > modified
        assert store.get(key) is None
        recreated = store.put(key, b"3")
        kv = store.get(key)
        assert kv is not None
        assert (kv.create_revision, kv.mod_revision, kv.version) == (recreated, recreated, 1)

    def test_delete_of_a_missing_key_does_not_bump(self, store: Store, prefix: str) -> None:
        def check() -> bool:
            written = store.put(f"{prefix}/k", b"v")
            return store.delete(f"{prefix}/missing") == written

        assert exactly_once_quiet(check)

    def test_get_prefix_is_sorted_and_isolated(self, store: Store, prefix: str) -> None:
        for key in ("/a/z", "/ab/x", "/a/b", "/b/a", "/a"):
            store.put(prefix + key, key.encode())
        snapshot = store.get_prefix(f"{prefix}/a/")
        assert [kv.key for kv in snapshot.items] == [f"{prefix}/a/b", f"{prefix}/a/z"]
        assert [kv.value for kv in snapshot.items] == [b"/a/b", b"/a/z"]
        assert snapshot.revision >= max(kv.mod_revision for kv in snapshot.items)
        assert store.get_prefix(f"{prefix}/nothing/").items == ()

    # ------------------------------------------------------------ leases

    def test_grant_has_a_minimum_ttl_of_two(self, store: Store) -> None:
        lease = store.grant(1)
        try:
            assert lease.id > 0
            assert lease.ttl == 2
        finally:
            store.revoke(lease.id)

    def test_keepalive_returns_the_ttl(self, store: Store) -> None:
        lease = store.grant(7)
        try:
            assert lease.ttl == 7
            assert store.keepalive(lease.id) == 7
        finally:
            store.revoke(lease.id)

    def test_put_with_a_missing_lease_fails(self, store: Store, prefix: str) -> None:
        lease = store.grant(5)
        store.revoke(lease.id)
        with pytest.raises(LeaseNotFound):
            store.put(f"{prefix}/k", b"v", lease=lease.id)
        assert store.get(f"{prefix}/k") is None

    def test_keepalive_of_a_revoked_lease_fails(self, store: Store) -> None:
        lease = store.grant(5)
        store.revoke(lease.id)
        with pytest.raises(LeaseNotFound):
            store.keepalive(lease.id)
        store.revoke(lease.id)  # revoking it again is not an error

    def test_put_attaches_the_lease(self, store: Store, prefix: str) -> None:
        lease = store.grant(30)
        try:
            store.put(f"{prefix}/k", b"v", lease=lease.id)
            kv = store.get(f"{prefix}/k")
            assert kv is not None
            assert kv.lease == lease.id
        finally:
            store.revoke(lease.id)

    def test_watch_events_carry_the_lease(self, store: Store, prefix: str) -> None:
        start = store.get_prefix(f"{prefix}/").revision + 1
        recorder = self.watch(store, f"{prefix}/", start)
        lease = store.grant(30)
        try:
            store.put(f"{prefix}/leased", b"1", lease=lease.id)
            store.put(f"{prefix}/free", b"2")
            wait_until(lambda: len(recorder.events) == 2, DEADLINE, message="2 events")
            assert [(e.key, e.lease) for e in recorder.events] == [
                (f"{prefix}/leased", lease.id), (f"{prefix}/free", 0)]
        finally:
            store.revoke(lease.id)

    def test_revoke_deletes_the_keys_in_one_revision(self, store: Store, prefix: str) -> None:
        start = store.get_prefix(f"{prefix}/").revision + 1
        recorder = self.watch(store, f"{prefix}/", start)
        lease = store.grant(30)
        store.put(f"{prefix}/a", b"1", lease=lease.id)
        store.put(f"{prefix}/b", b"2", lease=lease.id)
        store.put(f"{prefix}/kept", b"3")
        store.revoke(lease.id)

        assert [kv.key for kv in store.get_prefix(f"{prefix}/").items] == [f"{prefix}/kept"]
        wait_until(lambda: len(recorder.events) == 5, DEADLINE, message="5 events")
        deletions = recorder.events[-2:]
        assert [(e.type, e.key) for e in deletions] == [
            (EventType.DELETE, f"{prefix}/a"),
            (EventType.DELETE, f"{prefix}/b"),
        ]
        assert deletions[0].mod_revision == deletions[1].mod_revision
        assert_whole_revisions(recorder.responses)

    @pytest.mark.slow
    def test_lease_expires_after_its_ttl(self, store: Store, prefix: str) -> None:
        # Real time, so once only, with etcd's shortest TTL.
        start = store.get_prefix(f"{prefix}/").revision + 1
        recorder = self.watch(store, f"{prefix}/", start)
        lease = store.grant(2)
        store.put(f"{prefix}/k", b"v", lease=lease.id)
        wait_until(
            lambda: (EventType.DELETE, f"{prefix}/k") in recorder.changes(),
            timeout=8.0,
            message="the lease to expire",
        )
        assert store.get(f"{prefix}/k") is None
        with pytest.raises(LeaseNotFound):
            store.keepalive(lease.id)

    # ------------------------------------------------------------ watches

    def test_watch_replays_from_a_past_revision(self, store: Store, prefix: str) -> None:
        store.put(f"{prefix}/a", b"1")
        since = store.put(f"{prefix}/b", b"2")
        store.delete(f"{prefix}/a")
        last = store.put(f"{prefix}/c", b"3")

        recorder = self.watch(store, f"{prefix}/", since)
        wait_until(lambda: len(recorder.events) >= 3, DEADLINE, message="3 events")
        assert [(e.type, e.key, e.value) for e in recorder.events] == [
            (EventType.PUT, f"{prefix}/b", b"2"),
            (EventType.DELETE, f"{prefix}/a", b""),
            (EventType.PUT, f"{prefix}/c", b"3"),
        ]
        revisions = [e.mod_revision for e in recorder.events]
        assert revisions[0] == since and revisions[-1] == last
        assert revisions == sorted(revisions)
        assert_whole_revisions(recorder.responses)

    def test_watch_follows_live_writes(self, store: Store, prefix: str) -> None:
        start = store.get_prefix(f"{prefix}/").revision + 1
        recorder = self.watch(store, f"{prefix}/", start)
        created = store.put(f"{prefix}/k", b"1")
        store.put(f"{prefix}/k", b"2")
        deleted = store.delete(f"{prefix}/k")

        wait_until(lambda: len(recorder.events) >= 3, DEADLINE, message="3 events")
        first, second, third = recorder.events
        assert (first.type, first.value, first.version, first.create_revision) == (
            EventType.PUT,
            b"1",
            1,
            created,
        )
        assert (second.type, second.value, second.version) == (EventType.PUT, b"2", 2)
        assert (third.type, third.key, third.mod_revision) == (
            EventType.DELETE,
            f"{prefix}/k",
            deleted,
        )
        assert recorder.error is None

    def test_watch_from_now_skips_history(self, store: Store, prefix: str) -> None:
        store.put(f"{prefix}/old", b"v")
        recorder = self.watch(store, f"{prefix}/", 0)

        # When the server registers the watch is the adapter's business: write until seen.
        def seen_new() -> bool:
            store.put(f"{prefix}/new", b"v")
            return bool(recorder.events)

        wait_until(seen_new, DEADLINE, message="a live event")
        assert {key for _, key in recorder.changes()} == {f"{prefix}/new"}

    def test_watch_ignores_other_prefixes(self, store: Store, prefix: str) -> None:
        start = store.get_prefix(f"{prefix}/").revision + 1
        recorder = self.watch(store, f"{prefix}/a/", start)
        store.put(f"{prefix}/ab/x", b"v")
        store.put(f"{prefix}/b/y", b"v")
        store.put(f"{prefix}/a/z", b"v")

        wait_until(lambda: bool(recorder.events), DEADLINE, message="the event under /a/")
        assert recorder.changes() == [(EventType.PUT, f"{prefix}/a/z")]

    def test_watch_from_a_compacted_revision_fails(
        self, store: Store, prefix: str, compact: Callable[[int], None]
    ) -> None:
        old = store.put(f"{prefix}/k", b"1")
        store.put(f"{prefix}/k", b"2")
        kept = store.put(f"{prefix}/k", b"3")
        compact(kept)

        too_old = self.watch(store, f"{prefix}/", old)
        from_the_first = self.watch(store, f"{prefix}/", 1)  # the first revision is no exception
        oldest = self.watch(store, f"{prefix}/", kept)
        wait_until(lambda: too_old.error is not None and from_the_first.error is not None,
                   DEADLINE, message="RevisionCompacted")
        for failed in (too_old.error, from_the_first.error):
            assert isinstance(failed, RevisionCompacted)
            assert failed.compact_revision == kept
        wait_until(lambda: bool(oldest.events), DEADLINE, message="the compact revision")
        assert [(e.value, e.mod_revision) for e in oldest.events] == [(b"3", kept)]
        assert oldest.error is None

    def test_exact_watch_sees_its_key_alone(self, store: Store, prefix: str) -> None:
        start = store.get_prefix(f"{prefix}/").revision + 1
        exact = self.watch(store, f"{prefix}/svc", start, exact=True)
        every = self.watch(store, f"{prefix}/svc", start)
        for key in ("svc-x", "svc", "svc/y", "sv", "svc"):
            store.put(f"{prefix}/{key}", b"v")
        store.delete(f"{prefix}/svc")
        wait_until(lambda: len(every.events) == 5, DEADLINE, message="the prefix watch")
        wait_until(lambda: len(exact.events) == 3, DEADLINE, message="the exact watch")
        assert exact.changes() == [(EventType.PUT, f"{prefix}/svc")] * 2 + [
            (EventType.DELETE, f"{prefix}/svc")]
        assert exact.error is None

    def test_disposed_watch_stops_delivering(self, store: Store, prefix: str) -> None:
        start = store.get_prefix(f"{prefix}/").revision + 1
        disposed = self.watch(store, f"{prefix}/", start)
        sibling = self.watch(store, f"{prefix}/", start)  # the same, left open
        store.put(f"{prefix}/before", b"v")
        wait_until(lambda: bool(disposed.events) and bool(sibling.events), DEADLINE,
                   message="the first event")
        disposed.dispose()

        store.put(f"{prefix}/after", b"v")
        # The sibling, live since the same moment, sees the write: the disposed one would
        # have seen it by now (a condition, not a sleep).
        wait_until(lambda: len(sibling.events) == 2, DEADLINE, message="the sibling watch")
        assert disposed.changes() == [(EventType.PUT, f"{prefix}/before")]
        assert disposed.error is None


def assert_whole_revisions(responses: list[WatchResponse]) -> None:
    """Each response holds whole revisions in order (one transaction is never split across
    responses) and is stamped with the revision of its last event."""
    seen: set[int] = set()
    for response in responses:
        if not response.events:
            continue
        revisions = [e.mod_revision for e in response.events]
        assert revisions == sorted(revisions)
        assert response.revision == revisions[-1]
        assert not seen & set(revisions), "a revision split across responses"
        seen |= set(revisions)
