"""What the surviving mutants of ``rx_discovery/store/memory.py`` (issue 17) would break: the
memory store is a product feature with etcd's semantics, so each test states one of them.
Virtual time on a TestScheduler (or a scheduler the test steps by hand); the equivalent
mutants are listed with their reasons in docs/mutants-memory.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from helpers import wait_until
from reactivex.disposable import Disposable
from reactivex.scheduler import EventLoopScheduler
from reactivex.testing import TestScheduler

from rx_discovery._errors import LeaseNotFound, StoreUnavailable
from rx_discovery.store import WatchResponse
from rx_discovery.store.memory import MemoryStore
from rx_discovery.testing import record


def test_a_watch_from_a_future_revision_gets_nothing_before_that_revision(
        scheduler: TestScheduler) -> None:
    # etcd sends a watcher only events at or after its start revision (its ``minRev``). Found
    # by the sync.py mutant that watched from revision + 2: the memory store delivered the
    # revision before the start to it, so no test could see the gap it makes on etcd.
    store = MemoryStore(scheduler)
    responses = record(store.watch("/k/", store.revision + 2), scheduler)
    store.put("/k/a", b"1")  # revision 2: before the start
    store.put("/k/b", b"2")  # revision 3: the start
    scheduler.advance_to(1)
    assert [r.revision for r in responses.items] == [3]


class _Pool:
    """A scheduler that runs nothing until the test says so, in the order the test picks: a
    thread pool may run two queued actions at once, and this lets a test run one while another
    is in the middle of its work. Its clock stands still."""

    def __init__(self) -> None:
        self.pending: list[Callable[..., Any]] = []
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def schedule(self, action: Callable[..., Any], state: Any = None) -> Disposable:
        self.pending.append(action)
        return Disposable()

    def run_pending(self) -> None:
        while self.pending:
            self.pending.pop(0)(self, None)


def test_a_watch_is_delivered_by_one_task_at_a_time_even_on_a_thread_pool() -> None:
    # Writes queued while a delivery is pending join it: a second delivery task for the same
    # watch could run on another pool thread at the same time and call on_next concurrently
    # (out of order, against the Rx contract). Kills ``_Watch.offer 2``.
    pool = _Pool()
    store = MemoryStore(pool)  # type: ignore[arg-type]
    seen: list[int] = []
    busy = False

    def on_next(response: WatchResponse) -> None:
        nonlocal busy
        assert not busy, f"revision {response.revision} delivered during another on_next"
        busy = True
        seen.append(response.revision)
        pool.run_pending()  # another pool thread runs whatever is queued now
        busy = False

    store.watch("/k/", 0).subscribe(on_next)
    store.put("/k/a", b"1")
    store.put("/k/b", b"2")
    assert len(pool.pending) == 1
    pool.run_pending()
    assert seen == [2, 3]


def test_connected_is_false_between_disconnect_and_reconnect(scheduler: TestScheduler) -> None:
    # ``disconnect 1``: ``_connected = None`` made ``connected`` None.
    store = MemoryStore(scheduler)
    assert store.connected is True
    store.disconnect()
    assert store.connected is False
    store.reconnect()
    assert store.connected is True


def test_closing_a_store_leaves_the_scheduler_it_was_given_running() -> None:
    # Only a private scheduler is the store's to stop (``close 5``: ``or`` for ``and``
    # disposed the caller's EventLoopScheduler too).
    given = EventLoopScheduler()
    try:
        store = MemoryStore(given)
        store.put("/k", b"v")
        store.close()
        ran = threading.Event()
        given.schedule(lambda *_: ran.set())
        assert ran.wait(5), "the caller's scheduler no longer runs actions"
    finally:
        given.dispose()


def test_closing_a_store_stops_its_private_scheduler_thread() -> None:
    # ``__init__ 1, 2``: a store that does not know the scheduler is its own leaves the thread
    # running after close (one leaked thread per store a test suite makes).
    store = MemoryStore()
    threads: list[threading.Thread] = []
    store.watch("/k", 0).subscribe(lambda _: threads.append(threading.current_thread()))
    store.put("/k", b"v")
    wait_until(lambda: threads, message="the delivery")
    store.close()
    threads[0].join(5)
    assert not threads[0].is_alive()


def test_a_store_never_compacted_reports_compact_revision_0(scheduler: TestScheduler) -> None:
    # ``__init__ 11`` (``_compacted = 1``): etcd's compact revision is 0 before any compaction.
    store = MemoryStore(scheduler)
    assert store.compact_revision == 0
    store.put("/k", b"v")
    store.compact()
    assert store.compact_revision == 2


def test_the_repr_tells_the_state(scheduler: TestScheduler) -> None:
    # ``__repr__ 1-10`` (no test read it): what a debugger or a log line shows of the store.
    store = MemoryStore(scheduler)
    assert repr(store) == "<MemoryStore revision=1 keys=0 leases=0 watches=0>"
    lease = store.grant(5)
    store.put("/a", b"1", lease.id)
    store.put("/b", b"2")
    store.watch("/", 0).subscribe()
    assert repr(store) == "<MemoryStore revision=3 keys=2 leases=1 watches=1>"
    store.disconnect()
    assert repr(store) == "<MemoryStore revision=3 keys=2 leases=1 watches=0 disconnected>"
    store.close()
    assert repr(store) == (
        "<MemoryStore revision=3 keys=2 leases=1 watches=0 disconnected closed>")
    store.reconnect()
    assert repr(store) == "<MemoryStore revision=3 keys=2 leases=1 watches=0 closed>"


def test_errors_say_what_failed_and_why(scheduler: TestScheduler) -> None:
    # The texts a test author reads when a fault switch fires: the lease (in hex, as etcd's
    # tools print it), the reason a watch was lost, the revision refused. Kills ``keepalive 8``,
    # ``expire_lease 4``, ``compact 6``, ``disconnect 4-10``, ``restart 6-8``,
    # ``_fail_watches 3``, ``_open 4-6``, ``put 3, 4, 5, 25``, ``_check_available 1-7``.
    store = MemoryStore(scheduler)
    lease = store.grant(5)
    store.revoke(lease.id)
    for call in (store.keepalive, store.expire_lease, lambda id: store.put("/k", b"v", id)):
        with pytest.raises(LeaseNotFound, match=f"^lease {lease.id:x} not found$"):
            call(lease.id)
    with pytest.raises(ValueError, match=r"^key must not be empty$"):
        store.put("", b"v")
    with pytest.raises(ValueError, match=r"^revision 5 is in the future \(now 1\)$"):
        store.compact(5)

    health = record(store.health, scheduler)
    restarted = record(store.watch("/", 0), scheduler)
    store.restart()
    disconnected = record(store.watch("/", 0), scheduler)
    store.disconnect()
    refused = record(store.watch("/", 0), scheduler)
    scheduler.advance_to(1)
    assert [str(r.error) for r in (restarted, disconnected, refused)] == [
        "watch lost: server restarted", "watch lost: disconnected",
        "store is closed or disconnected"]
    assert health.items[-1].reason == "disconnected (MemoryStore.disconnect)"
    with pytest.raises(StoreUnavailable, match=r"^store is disconnected$"):
        store.get("/k")
    store.close()
    with pytest.raises(StoreUnavailable, match=r"^store is closed$"):
        store.get("/k")
