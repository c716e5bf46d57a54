"""The Store contract (tests/store_contract.py) on the v2 store (etcd's v2 keys API, the Go
package's protocol) on the session's EmbeddedEtcd, which runs with ``--enable-v2=true``.

Where v2 cannot behave as v3 (no transactions, no per-key version, a key cannot also be a
directory, history is the last 1,000 events instead of compaction), the contract test is
replaced by its v2 counterpart below, with the reason.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from helpers import wait_until
from store_contract import DEADLINE, Recorder, StoreContract

from rx_discovery._errors import (
    LeaseNotFound,
    PermissionDenied,
    RevisionCompacted,
    StoreError,
    StoreUnavailable,
)
from rx_discovery.config import Settings, parse_endpoint
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.health import HealthState
from rx_discovery.store import EventType, Store
from rx_discovery.store.v2 import EtcdV2Store

_HISTORY = 1000  # events etcd's v2 store keeps for watches


def v2_store(endpoint: str, timeout: float = 5.0) -> EtcdV2Store:
    return EtcdV2Store(Settings(endpoints=(parse_endpoint(endpoint),), timeout=timeout))


@pytest.fixture
def store(etcd: EmbeddedEtcd) -> Iterator[EtcdV2Store]:
    v2 = v2_store(etcd.endpoint)
    yield v2
    v2.close()


@pytest.fixture
def prefix(unique_prefix: str) -> str:
    return unique_prefix


@pytest.fixture
def compact() -> Callable[[int], None]:
    def unsupported(revision: int) -> None:
        raise AssertionError("v2 has no compaction")

    return unsupported


async def _tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


def roll_history(store: EtcdV2Store, prefix: str, events: int = _HISTORY + 10) -> None:
    """Push ``events`` writes through etcd's v2 history (its counterpart of compaction)."""
    for n in range(events):
        store.put(f"{prefix}/churn", str(n).encode())


class TestStoreContractV2(StoreContract):
    # -- replaced: v2 lacks what these check -------------------------------------------------

    def test_create_and_mod_revision_and_version(self, store: Store, prefix: str) -> None:
        """v2 keeps no per-key version, and a write replaces the node (as Go's ``Set`` does):
        createdIndex is the last write's, so every stored key reports version 1."""
        key = f"{prefix}/k"
        store.put(key, b"1")
        modified = store.put(key, b"2")
        kv = store.get(key)
        assert kv is not None
        assert (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
            b"2", modified, modified, 1, 0)
        deleted = store.delete(key)
        assert deleted > modified
        assert store.get(key) is None
        recreated = store.put(key, b"3")
        kv = store.get(key)
        assert kv is not None
        assert (kv.create_revision, kv.mod_revision, kv.version) == (recreated, recreated, 1)

    def test_get_prefix_is_sorted_and_isolated(self, store: Store, prefix: str) -> None:
        """As the contract, without a key ``/a`` beside the directory ``/a/`` (v2 is a tree:
        a key cannot also be a directory)."""
        for key in ("/a/z", "/ab/x", "/a/b", "/b/a", "/a/c/deep"):
            store.put(prefix + key, key.encode())
        snapshot = store.get_prefix(f"{prefix}/a/")
        assert [kv.key for kv in snapshot.items] == [
            f"{prefix}/a/b", f"{prefix}/a/c/deep", f"{prefix}/a/z"]
        assert snapshot.revision >= max(kv.mod_revision for kv in snapshot.items)
        assert store.get_prefix(f"{prefix}/nothing/").items == ()
        # a prefix that is not a directory: the keys of the parent that start with it
        assert [kv.key for kv in store.get_prefix(f"{prefix}/a").items] == [
            f"{prefix}/a/b", f"{prefix}/a/c/deep", f"{prefix}/a/z", f"{prefix}/ab/x"]

    @pytest.mark.skip(reason="v2 has no transactions: revoking a lease deletes its keys one "
                             "index each (see test_revoke_deletes_every_key_of_the_lease)")
    def test_revoke_deletes_the_keys_in_one_revision(self) -> None:
        pass

    def test_revoke_deletes_every_key_of_the_lease(self, store: Store, prefix: str) -> None:
        start = store.get_prefix(f"{prefix}/").revision + 1
        recorder = self.watch(store, f"{prefix}/", start)
        lease = store.grant(30)
        store.put(f"{prefix}/a", b"1", lease=lease.id)
        store.put(f"{prefix}/b", b"2", lease=lease.id)
        store.put(f"{prefix}/kept", b"3")
        store.revoke(lease.id)
        assert [kv.key for kv in store.get_prefix(f"{prefix}/").items] == [f"{prefix}/kept"]
        wait_until(lambda: len(recorder.events) == 5, DEADLINE, message="5 events")
        assert sorted(recorder.changes()[-2:]) == [
            (EventType.DELETE, f"{prefix}/a"), (EventType.DELETE, f"{prefix}/b")]

    @pytest.mark.skip(reason="v2 has no leases: a key's TTL emulates one, and a v2 watch "
                             "answer carries the node's TTL, not a lease id")
    def test_watch_events_carry_the_lease(self) -> None:
        pass

    def test_watch_follows_live_writes(self, store: Store, prefix: str) -> None:
        """As the contract, but every v2 write replaces the node: version is always 1."""
        start = store.get_prefix(f"{prefix}/").revision + 1
        recorder = self.watch(store, f"{prefix}/", start)
        created = store.put(f"{prefix}/k", b"1")
        updated = store.put(f"{prefix}/k", b"2")
        deleted = store.delete(f"{prefix}/k")
        wait_until(lambda: len(recorder.events) >= 3, DEADLINE, message="3 events")
        first, second, third = recorder.events
        assert (first.type, first.value, first.version, first.create_revision) == (
            EventType.PUT, b"1", 1, created)
        assert (second.type, second.value, second.version, second.mod_revision) == (
            EventType.PUT, b"2", 1, updated)
        assert (third.type, third.key, third.mod_revision) == (
            EventType.DELETE, f"{prefix}/k", deleted)
        assert recorder.error is None

    @pytest.mark.skip(reason="v2 has no compaction: see test_watch_before_the_kept_history_"
                             "fails (etcd keeps the last 1,000 events)")
    def test_watch_from_a_compacted_revision_fails(self) -> None:
        pass

    def test_exact_watch_sees_its_key_alone(self, store: EtcdV2Store, prefix: str) -> None:
        """The contract's (on branches whose contract has it), without a key ``svc/y`` beside
        the key ``svc`` (v2 is a tree)."""
        start = store.get_prefix(f"{prefix}/").revision + 1
        exact, every = Recorder(), Recorder()
        for recorder, only in ((exact, True), (every, False)):
            recorder.subscription = store.watch(f"{prefix}/svc", start, exact=only).subscribe(
                on_next=recorder.on_next, on_error=recorder.on_error)
        try:
            for key in ("svc-x", "svc", "sv", "svc"):
                store.put(f"{prefix}/{key}", b"v")
            store.delete(f"{prefix}/svc")
            wait_until(lambda: len(every.events) == 4, DEADLINE, message="the prefix watch")
            wait_until(lambda: len(exact.events) == 3, DEADLINE, message="the exact watch")
            assert exact.changes() == [(EventType.PUT, f"{prefix}/svc")] * 2 + [
                (EventType.DELETE, f"{prefix}/svc")]
            assert exact.error is None
        finally:
            exact.dispose()
            every.dispose()

    # -- v2 only ---------------------------------------------------------------------------

    def test_watch_before_the_kept_history_fails(self, store: EtcdV2Store, prefix: str) -> None:
        old = store.put(f"{prefix}/k", b"1")
        roll_history(store, prefix)
        too_old = self.watch(store, f"{prefix}/", old)
        wait_until(lambda: too_old.error is not None, DEADLINE, message="RevisionCompacted")
        assert isinstance(too_old.error, RevisionCompacted)
        oldest = too_old.error.compact_revision
        assert old < oldest <= store.get_prefix(f"{prefix}/").revision
        kept = self.watch(store, f"{prefix}/", oldest)
        wait_until(lambda: bool(kept.events), DEADLINE, message="the oldest kept event")
        assert kept.events[0].mod_revision >= oldest
        assert kept.error is None

    def test_expiry_is_a_delete_event(self, store: EtcdV2Store, prefix: str) -> None:
        start = store.get_prefix(f"{prefix}/").revision + 1
        recorder = self.watch(store, f"{prefix}/", start)
        lease = store.grant(2)
        written = store.put(f"{prefix}/k", b"v", lease=lease.id)
        wait_until(lambda: (EventType.DELETE, f"{prefix}/k") in recorder.changes(), 8.0,
                   message="the key to expire")
        assert recorder.events[-1].mod_revision > written

    def test_keepalive_keeps_the_key_without_events(self, store: EtcdV2Store,
                                                    prefix: str) -> None:
        start = store.get_prefix(f"{prefix}/").revision + 1
        recorder = self.watch(store, f"{prefix}/", start)
        lease = store.grant(2)
        written = store.put(f"{prefix}/k", b"v", lease=lease.id)
        deadline = time.monotonic() + 4.5  # over twice the TTL
        while time.monotonic() < deadline:
            assert store.keepalive(lease.id) == 2
            time.sleep(0.5)
        assert store.get(f"{prefix}/k") is not None
        assert store.get_prefix(f"{prefix}/").revision > written  # refreshes advance the index
        store.put(f"{prefix}/marker", b"m")
        wait_until(lambda: len(recorder.events) >= 2, DEADLINE, message="the marker")
        assert recorder.changes() == [(EventType.PUT, f"{prefix}/k"),
                                      (EventType.PUT, f"{prefix}/marker")]

    def test_keepalive_of_a_lease_whose_key_was_deleted_fails(self, store: EtcdV2Store,
                                                              prefix: str,
                                                              etcd: EmbeddedEtcd) -> None:
        lease = store.grant(30)
        store.put(f"{prefix}/k", b"v", lease=lease.id)
        other = v2_store(etcd.endpoint)  # someone else deletes it
        try:
            other.delete(f"{prefix}/k")
        finally:
            other.close()
        with pytest.raises(LeaseNotFound):
            store.keepalive(lease.id)
        with pytest.raises(LeaseNotFound):  # the lease is gone for good
            store.put(f"{prefix}/k", b"v", lease=lease.id)

    def test_keys_starting_with_an_underscore_are_hidden_from_listings(
            self, store: EtcdV2Store, prefix: str) -> None:
        store.put(f"{prefix}/d/_hidden", b"h")
        store.put(f"{prefix}/d/shown", b"s")
        assert [kv.key for kv in store.get_prefix(f"{prefix}/d/").items] == [f"{prefix}/d/shown"]
        kv = store.get(f"{prefix}/d/_hidden")
        assert kv is not None and kv.value == b"h"

    def test_values_are_stored_byte_for_byte(self, store: EtcdV2Store, prefix: str,
                                             etcd: EmbeddedEtcd) -> None:
        value = '{"name":"h\\u00e9","password":"a&b=c+d%20 é/?#"}'.encode()
        store.put(f"{prefix}/k", value)
        raw = httpx.get(f"{etcd.endpoint}/v2/keys{prefix}/k").json()["node"]["value"]
        assert raw.encode() == value
        kv = store.get(f"{prefix}/k")
        assert kv is not None and kv.value == value

    def test_more_watches_than_httpxs_default_pool(self, etcd: EmbeddedEtcd,
                                                    prefix: str) -> None:
        """Each watch holds a connection for its long poll: 150 idle watches (httpx pools 100
        by default, and a poll waiting for a connection fails after the call timeout) must
        all be served."""
        # timeout 2.5 s: 150 polls connecting at once on one event loop, in a process that
        # shares 2 loaded cores with the suite, took over 1 s to connect once (ConnectTimeout)
        with v2_store(etcd.endpoint, timeout=2.5) as store:
            start = store.get_prefix(f"{prefix}/").revision + 1
            recorders = [self.watch(store, f"{prefix}/", start) for _ in range(150)]
            time.sleep(3.0)  # idle for longer than the timeout: a too small pool fails polls
            store.put(f"{prefix}/k", b"v")
            wait_until(lambda: all(r.events or r.error for r in recorders), 3 * DEADLINE,
                       message="every watch to see the put")
            errors = [r.error for r in recorders if r.error]
            assert not errors, f"{len(errors)} watches failed, e.g. {errors[0]!r}"

    def test_a_value_that_is_not_text_is_refused_before_any_io(self, store: EtcdV2Store,
                                                                prefix: str) -> None:
        with pytest.raises(ValueError, match="not UTF-8"):
            store.put(f"{prefix}/k", b"\xff\xfe")
        assert store.get(f"{prefix}/k") is None

    def test_dispose_cancels_the_poll_at_once(self, store: EtcdV2Store, prefix: str) -> None:
        before = {t.name for t in threading.enumerate()}
        recorder = self.watch(store, f"{prefix}/", 0)
        recorder.dispose()

        def delivery_threads_gone() -> bool:
            names = {t.name for t in threading.enumerate()} - before
            return not any(name.startswith("rx-discovery-v2-watch ") for name in names)

        wait_until(delivery_threads_gone, 2.0, message="the watch thread to end")
        loop = store._watches._loop  # the long poll itself is cancelled, not left to time out
        assert loop is not None

        def polls() -> int:
            return len(asyncio.run_coroutine_threadsafe(_tasks(), loop).result(2.0))

        wait_until(lambda: polls() == 0, 2.0, message="the long poll to be cancelled")

    def test_a_put_racing_a_revoke_leaves_no_key(self, store: EtcdV2Store, prefix: str) -> None:
        lease = store.grant(30)
        real_call = store._http.call

        def revoke_during_the_put(operation: str, *args: Any, **kwargs: Any) -> Any:
            answer = real_call(operation, *args, **kwargs)
            if operation == "put" and args[0] == "PUT":
                store.revoke(lease.id)  # as dispose() on another thread
            return answer

        store._http.call = revoke_during_the_put  # type: ignore[method-assign]
        with pytest.raises(LeaseNotFound):
            store.put(f"{prefix}/k", b"v", lease=lease.id)
        store._http.call = real_call  # type: ignore[method-assign]
        assert store.get(f"{prefix}/k") is None

    def test_a_dead_endpoint_fails_over(self, etcd: EmbeddedEtcd, prefix: str) -> None:
        dead = "http://127.0.0.1:1"  # nothing listens there
        settings = Settings(endpoints=(parse_endpoint(dead), parse_endpoint(etcd.endpoint)),
                            timeout=2.0)
        with EtcdV2Store(settings) as store:
            store.put(f"{prefix}/k", b"v")
            kv = store.get(f"{prefix}/k")
            assert kv is not None and kv.value == b"v"

    def test_health_reports_an_unreachable_member(self, prefix: str) -> None:
        states: list[HealthState] = []
        with v2_store("http://127.0.0.1:1", timeout=1.0) as store:
            store.health.subscribe(lambda health: states.append(health.state))
            with pytest.raises(StoreUnavailable):
                store.get(f"{prefix}/k")
        store._health._settle()  # closed: every change delivered, on health's own thread
        assert states[0] is HealthState.CONNECTING
        assert HealthState.RECONNECTING in states or HealthState.CONNECTING in states[1:]
        assert states[-1] is HealthState.CLOSED


def test_a_key_that_is_a_directory_is_not_a_permission_problem(store: EtcdV2Store,
                                                                 prefix: str) -> None:
    """etcd v2 answers HTTP 403 for "Not a file" (102) and "Directory not empty" (108), never
    for a permission (v2 auth answers 401): writing a key that someone made a directory is a
    data conflict, not a DENIED connection."""
    health: list[Any] = []
    store.health.subscribe(health.append)
    store.put(f"{prefix}/services/svc/u1/child", b"v")
    with pytest.raises(StoreError) as caught:
        store.put(f"{prefix}/services/svc/u1", b"v")
    assert not isinstance(caught.value, PermissionDenied)
    assert not caught.value.permanent
    assert "Not a file" in str(caught.value)
    assert health[-1].state is HealthState.CONNECTED
