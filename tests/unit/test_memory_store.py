"""MemoryStore behaviour that only a virtual clock can pin down: exact expiry times, faults,
delivery order. Everything runs on a TestScheduler; one virtual second is 1.0 on its clock.

Calls are made from actions scheduled at a virtual time (``at``), so that what they trigger is
recorded at that time, as in marble tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactivex.testing import TestScheduler
from reactivex.testing.mockobserver import MockObserver

from rx_discovery._errors import LeaseNotFound, RevisionCompacted, StoreUnavailable
from rx_discovery.store import EventType, Store, WatchEvent, WatchResponse
from rx_discovery.store.memory import MemoryStore


@pytest.fixture
def scheduler() -> TestScheduler:
    return TestScheduler()


@pytest.fixture
def store(scheduler: TestScheduler) -> MemoryStore:
    return MemoryStore(scheduler)


def at(scheduler: TestScheduler, time: float, call: Callable[[], Any]) -> list[Any]:
    """Run ``call`` at virtual ``time``; the returned list receives its result or exception."""
    outcome: list[Any] = []

    def action(*_: Any) -> None:
        try:
            outcome.append(call())
        except Exception as error:
            outcome.append(error)

    scheduler.schedule_absolute(time, action)
    return outcome


def record(
    scheduler: TestScheduler, store: MemoryStore, prefix: str, start_revision: int = 0
) -> MockObserver[WatchResponse]:
    observer: MockObserver[WatchResponse] = scheduler.create_observer()
    store.watch(prefix, start_revision).subscribe(observer)
    return observer


def timeline(observer: MockObserver[WatchResponse]) -> list[tuple[float, Any]]:
    """(time, response or exception) of every notification received."""
    return [
        (m.time, m.value.value if m.value.kind == "N" else m.value.exception)  # type: ignore[attr-defined]
        for m in observer.messages
    ]


def deleted(revision: int, *keys: str) -> WatchResponse:
    return WatchResponse(
        revision, tuple(WatchEvent(EventType.DELETE, k, b"", revision) for k in keys)
    )


def test_is_a_store(store: MemoryStore) -> None:
    assert isinstance(store, Store)
    assert store.revision == 1  # an empty etcd is at revision 1


# ---------------------------------------------------------------- lease expiry


def test_lease_expires_at_exactly_grant_time_plus_ttl(
    scheduler: TestScheduler, store: MemoryStore
) -> None:
    lease = at(scheduler, 10, lambda: store.grant(5))
    at(scheduler, 10, lambda: store.put("/k/a", b"1", lease[0].id))
    at(scheduler, 10, lambda: store.put("/k/b", b"2", lease[0].id))
    observer = record(scheduler, store, "/k/")

    scheduler.advance_to(14.999)
    assert store.keys() == ["/k/a", "/k/b"]
    assert store.leases == {lease[0].id: pytest.approx(0.001)}

    scheduler.advance_to(15)
    assert store.keys() == []
    assert store.leases == {}
    assert store.revision == 4  # two puts, then one revision for the whole expiry
    assert timeline(observer)[-1] == (15.0, deleted(4, "/k/a", "/k/b"))


def test_grant_rounds_ttl_up_to_two_seconds(scheduler: TestScheduler, store: MemoryStore) -> None:
    lease = at(scheduler, 10, lambda: store.grant(1))
    at(scheduler, 10, lambda: store.put("/k", b"v", lease[0].id))
    observer = record(scheduler, store, "/k")
    scheduler.advance_to(20)
    assert lease[0].ttl == 2
    assert timeline(observer)[-1] == (12.0, deleted(3, "/k"))


def test_keepalive_postpones_expiry(scheduler: TestScheduler, store: MemoryStore) -> None:
    lease = at(scheduler, 10, lambda: store.grant(5))
    at(scheduler, 10, lambda: store.put("/k", b"v", lease[0].id))
    ttl = at(scheduler, 13, lambda: store.keepalive(lease[0].id))
    observer = record(scheduler, store, "/k")

    scheduler.advance_to(17)
    assert ttl == [5]
    assert store.keys() == ["/k"]
    scheduler.advance_to(30)
    assert [(t, r.events[0].type) for t, r in timeline(observer)] == [
        (10.0, EventType.PUT),
        (18.0, EventType.DELETE),
    ]


def test_lease_is_gone_at_its_deadline_whichever_runs_first(
    scheduler: TestScheduler, store: MemoryStore
) -> None:
    lease = at(scheduler, 0, lambda: store.grant(5))
    at(scheduler, 0, lambda: store.put("/k", b"v", lease[0].id))
    # Scheduled before the expiry timer reaches its turn at t=5, yet already too late.
    late_keepalive = at(scheduler, 5, lambda: store.keepalive(lease[0].id))
    late_put = at(scheduler, 5, lambda: store.put("/other", b"v", lease[0].id))
    observer = record(scheduler, store, "/")
    scheduler.advance_to(10)
    assert isinstance(late_keepalive[0], LeaseNotFound)
    assert isinstance(late_put[0], LeaseNotFound)
    assert store.keys() == []
    assert timeline(observer)[-1] == (5.0, deleted(3, "/k"))


def test_keepalive_and_put_of_unknown_lease_raise(store: MemoryStore) -> None:
    with pytest.raises(LeaseNotFound):
        store.keepalive(12345)
    with pytest.raises(LeaseNotFound):
        store.put("/k", b"v", 12345)
    with pytest.raises(LeaseNotFound):
        store.expire_lease(12345)
    store.revoke(12345)  # not an error, as in etcd
    assert store.revision == 1


def test_revoke_deletes_keys_in_one_revision(scheduler: TestScheduler, store: MemoryStore) -> None:
    lease = at(scheduler, 1, lambda: store.grant(60))
    for key in ("/k/c", "/k/a", "/k/b"):
        at(scheduler, 1, lambda key=key: store.put(key, b"v", lease[0].id))
    at(scheduler, 2, lambda: store.revoke(lease[0].id))
    observer = record(scheduler, store, "/k/")
    scheduler.advance_to(3)
    assert timeline(observer)[-1] == (2.0, deleted(5, "/k/a", "/k/b", "/k/c"))
    assert store.leases == {}


def test_lease_without_keys_expires_without_a_revision(
    scheduler: TestScheduler, store: MemoryStore
) -> None:
    at(scheduler, 0, lambda: store.grant(2))
    scheduler.advance_to(5)
    assert store.leases == {}
    assert store.revision == 1


def test_put_without_lease_detaches_the_key(scheduler: TestScheduler, store: MemoryStore) -> None:
    lease = at(scheduler, 0, lambda: store.grant(5))
    at(scheduler, 0, lambda: store.put("/k", b"v1", lease[0].id))
    at(scheduler, 1, lambda: store.put("/k", b"v2"))
    scheduler.advance_to(10)
    kv = store.dump()["/k"]
    assert (kv.value, kv.lease, kv.version) == (b"v2", 0, 2)


def test_expire_lease_acts_now(scheduler: TestScheduler, store: MemoryStore) -> None:
    lease = at(scheduler, 0, lambda: store.grant(60))
    at(scheduler, 0, lambda: store.put("/k", b"v", lease[0].id))
    at(scheduler, 3, lambda: store.expire_lease(lease[0].id))
    observer = record(scheduler, store, "/k")
    scheduler.advance_to(4)
    assert timeline(observer)[-1] == (3.0, deleted(3, "/k"))
    with pytest.raises(LeaseNotFound):
        store.keepalive(lease[0].id)


# ---------------------------------------------------------------- faults


def test_disconnect_fails_calls_and_watches_while_leases_tick(
    scheduler: TestScheduler, store: MemoryStore
) -> None:
    lease = at(scheduler, 0, lambda: store.grant(5))
    at(scheduler, 0, lambda: store.put("/k", b"v", lease[0].id))
    active = record(scheduler, store, "/k")
    at(scheduler, 2, store.disconnect)
    late: list[MockObserver[WatchResponse]] = []
    at(scheduler, 3, lambda: late.append(record(scheduler, store, "/k")))
    scheduler.advance_to(4)

    assert [type(item) for _, item in timeline(active)] == [WatchResponse, StoreUnavailable]
    assert timeline(active)[-1][0] == 2.0
    assert [(t, type(item)) for t, item in timeline(late[0])] == [(3.0, StoreUnavailable)]
    assert store.watch_count == 0
    for call in (
        lambda: store.get_prefix("/"),
        lambda: store.get("/k"),
        lambda: store.put("/k", b"v"),
        lambda: store.delete("/k"),
        lambda: store.grant(5),
        lambda: store.keepalive(lease[0].id),
        lambda: store.revoke(lease[0].id),
    ):
        with pytest.raises(StoreUnavailable):
            call()

    scheduler.advance_to(5)  # server time goes on: the lease expires unrefreshed
    assert store.keys() == []
    store.reconnect()
    assert store.get_prefix("/").revision == 3
    with pytest.raises(LeaseNotFound):
        store.keepalive(lease[0].id)
    # A watch resuming after the outage replays what happened during it.
    resumed = record(scheduler, store, "/k", start_revision=3)
    scheduler.advance_to(6)
    assert timeline(resumed) == [(5.0, deleted(3, "/k"))]


def test_new_watch_fails_asynchronously_when_disconnected(
    scheduler: TestScheduler, store: MemoryStore
) -> None:
    store.disconnect()
    observer = record(scheduler, store, "/")
    assert observer.messages == []  # not inside subscribe
    scheduler.advance_to(1)
    assert [type(item) for _, item in timeline(observer)] == [StoreUnavailable]


def test_restart_drops_watches_keeps_data_and_renews_leases(
    scheduler: TestScheduler, store: MemoryStore
) -> None:
    lease = at(scheduler, 10, lambda: store.grant(5))
    at(scheduler, 10, lambda: store.put("/k", b"v", lease[0].id))
    observer = record(scheduler, store, "/k")
    at(scheduler, 14, store.restart)
    scheduler.advance_to(14.5)

    assert isinstance(timeline(observer)[-1][1], StoreUnavailable)
    assert store.watch_count == 0
    assert store.get("/k") is not None  # calls keep working
    scheduler.advance_to(18.5)
    assert store.keys() == ["/k"]  # would have expired at 15 without the renewal
    scheduler.advance_to(19)
    assert store.keys() == []


# ---------------------------------------------------------------- delivery


def test_delivery_is_asynchronous_and_ordered_without_reentrancy(
    scheduler: TestScheduler, store: MemoryStore
) -> None:
    seen: list[int] = []
    depth = 0
    writing = False

    def on_next(response: WatchResponse) -> None:
        nonlocal depth
        assert not writing, "delivered inside put()"
        depth += 1
        assert depth == 1, "re-entered"
        seen.append(response.revision)
        if len(seen) < 5:
            write(f"/k/{len(seen)}")  # writing from on_next must not re-enter on_next
        depth -= 1

    def write(key: str) -> None:
        nonlocal writing
        writing = True
        store.put(key, b"v")
        writing = False

    store.watch("/k/", 0).subscribe(on_next)
    at(scheduler, 1, lambda: write("/k/0"))
    scheduler.advance_to(2)
    assert seen == [2, 3, 4, 5, 6]


def test_nothing_is_emitted_after_dispose(scheduler: TestScheduler, store: MemoryStore) -> None:
    observer: MockObserver[WatchResponse] = scheduler.create_observer()
    subscription = store.watch("/k", 0).subscribe(observer)
    store.put("/k", b"v")  # queued for delivery, not delivered yet
    subscription.dispose()
    scheduler.advance_to(1)
    assert observer.messages == []
    assert store.watch_count == 0


def test_dispose_from_on_next_stops_the_rest_of_the_batch(
    scheduler: TestScheduler, store: MemoryStore
) -> None:
    store.put("/k", b"1")
    store.put("/k", b"2")
    seen: list[int] = []

    def on_next(response: WatchResponse) -> None:
        seen.append(response.revision)
        subscription.dispose()

    subscription = store.watch("/k", 1).subscribe(on_next)
    scheduler.advance_to(1)
    assert seen == [2]


def test_watch_count_counts_active_subscriptions(
    scheduler: TestScheduler, store: MemoryStore
) -> None:
    first = store.watch("/a", 0).subscribe()
    second = store.watch("/b", 0).subscribe()
    assert store.watch_count == 2
    first.dispose()
    first.dispose()
    assert store.watch_count == 1
    second.dispose()
    assert store.watch_count == 0


def test_responses_group_events_of_a_revision_per_prefix(
    scheduler: TestScheduler, store: MemoryStore
) -> None:
    lease = store.grant(10)
    for key in ("/a/1", "/b/1", "/a/2"):
        store.put(key, b"v", lease.id)
    observer = record(scheduler, store, "/a/", start_revision=5)
    at(scheduler, 1, lambda: store.revoke(lease.id))
    scheduler.advance_to(2)
    assert timeline(observer) == [(1.0, deleted(5, "/a/1", "/a/2"))]


# ---------------------------------------------------------------- compaction


def test_compaction(scheduler: TestScheduler, store: MemoryStore) -> None:
    for value in (b"2", b"3", b"4", b"5"):
        store.put("/k", value)
    store.compact(4)
    too_old = record(scheduler, store, "/k", start_revision=3)
    oldest = record(scheduler, store, "/k", start_revision=4)
    from_now = record(scheduler, store, "/k", start_revision=0)
    scheduler.advance_to(1)

    [(_, error)] = timeline(too_old)
    assert isinstance(error, RevisionCompacted)
    assert error.compact_revision == 4
    assert [response.revision for _, response in timeline(oldest)] == [4, 5]
    assert timeline(from_now) == []

    store.compact(2)  # older than the last compaction: nothing to do
    assert store.compact_revision == 4
    store.compact()
    assert store.compact_revision == 5
    with pytest.raises(ValueError):
        store.compact(6)


def test_history_survives_until_compaction(scheduler: TestScheduler, store: MemoryStore) -> None:
    store.put("/k", b"1")
    store.delete("/k")
    store.delete("/k")  # missing: no revision
    observer = record(scheduler, store, "/k", start_revision=1)
    scheduler.advance_to(1)
    assert [(r.revision, r.events[0].type) for _, r in timeline(observer)] == [
        (2, EventType.PUT),
        (3, EventType.DELETE),
    ]


# ---------------------------------------------------------------- lifecycle


def test_close_cancels_watches_and_fails_calls(
    scheduler: TestScheduler, store: MemoryStore
) -> None:
    observer = record(scheduler, store, "/k")
    store.put("/k", b"v")
    store.close()
    store.close()
    scheduler.advance_to(1)
    assert observer.messages == []
    with pytest.raises(StoreUnavailable):
        store.get("/k")


def test_private_scheduler_runs_on_a_daemon_thread() -> None:
    store = MemoryStore()
    delivered = threading.Event()
    threads: list[threading.Thread] = []

    def on_next(_: WatchResponse) -> None:
        threads.append(threading.current_thread())
        delivered.set()

    store.watch("/k", 0).subscribe(on_next)
    store.put("/k", b"v")
    assert delivered.wait(5)
    assert threads[0] is not threading.current_thread()
    assert threads[0].daemon
    store.close()


def test_exposes_its_scheduler(scheduler: TestScheduler, store: MemoryStore) -> None:
    assert store.scheduler is scheduler


def test_concurrent_writers_get_sequential_revisions_delivered_in_order(
    scheduler: TestScheduler, store: MemoryStore
) -> None:
    observer = record(scheduler, store, "/k/")
    revisions: list[int] = []

    def writer(n: int) -> None:
        for i in range(200):
            revisions.append(store.put(f"/k/{n}", str(i).encode()))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    scheduler.advance_to(1)

    assert sorted(revisions) == list(range(2, 802))
    delivered = [response.revision for _, response in timeline(observer)]
    assert delivered == list(range(2, 802))
    assert {kv.version for kv in store.dump().values()} == {200}


_writes = st.lists(
    st.tuples(st.sampled_from(["put", "delete"]), st.sampled_from(["/k/a", "/k/b", "/x"])),
    max_size=30,
)


@given(_writes)
def test_replaying_history_rebuilds_the_state(writes: list[tuple[str, str]]) -> None:
    scheduler = TestScheduler()
    store = MemoryStore(scheduler)
    model: dict[str, bytes] = {}
    effective = 0  # deleting a missing key is no write
    for n, (operation, key) in enumerate(writes):
        effective += operation == "put" or key in model
        if operation == "put":
            store.put(key, str(n).encode())
            model[key] = str(n).encode()
        else:
            store.delete(key)
            model.pop(key, None)
    observer = record(scheduler, store, "/k/", start_revision=1)
    scheduler.advance_to(1)

    replayed: dict[str, bytes] = {}
    for _, response in timeline(observer):
        for event in response.events:
            if event.type is EventType.PUT:
                replayed[event.key] = event.value
            else:
                del replayed[event.key]
    assert replayed == {k: v for k, v in model.items() if k.startswith("/k/")}
    assert {k: kv.value for k, kv in store.dump().items()} == model
    assert store.get_prefix("").revision == 1 + effective
