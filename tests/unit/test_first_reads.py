"""First reads in bulk (issue 12): services subscribed together are read together.

A store with ``get_prefixes`` (etcd's: many ranges in one transaction) is modelled by a
memory store that counts its bulk and single reads; everything runs on a TestScheduler.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from reactivex.testing import TestScheduler
from test_streams_marble import uuids

from rx_discovery import Discovery, PermissionDenied, StoreError, StoreUnavailable
from rx_discovery._first_reads import _BATCH
from rx_discovery.store import Snapshot
from rx_discovery.store.memory import MemoryStore
from rx_discovery.testing import make_host, record


def put(store: Any, n: int, service: str) -> None:
    store.put(f"/services/{service}/uuid-{n}", make_host(n).to_json().encode())


class BulkStore(MemoryStore):
    """A memory store that reads many prefixes in one call, as etcd's transaction does,
    and counts the calls; ``denied`` prefixes are refused (a whole bulk read with them)."""

    def __init__(self, scheduler: TestScheduler) -> None:
        super().__init__(scheduler)
        self.bulk: list[int] = []  # the size of each bulk read
        self.single: list[str] = []  # the prefix of each read alone
        self.denied: set[str] = set()
        self.bulk_error: Exception | None = None

    def get_prefix(self, prefix: str) -> Snapshot:
        self.single.append(prefix)
        if prefix in self.denied:
            raise PermissionDenied(f"read {prefix} refused")
        return super().get_prefix(prefix)

    def get_prefixes(self, prefixes: Sequence[str]) -> list[Snapshot]:
        self.bulk.append(len(prefixes))
        if self.bulk_error is not None:
            raise self.bulk_error
        if self.denied.intersection(prefixes):
            raise PermissionDenied("a range of the transaction was refused")
        return [MemoryStore.get_prefix(self, prefix) for prefix in prefixes]


def services(count: int) -> list[str]:
    return [f"s{n}" for n in range(count)]


def test_services_subscribed_together_are_read_in_few_bulk_reads() -> None:
    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    for n, name in enumerate(services(200)):
        put(store, n, name)
    discovery = Discovery(store=store)
    sets = [record(discovery.hosts(name), scheduler) for name in services(200)]
    assert all(not s.items for s in sets)  # subscribe() did not read
    scheduler.advance_to(1)
    assert [uuids(s.items[0]) for s in sets] == [[f"uuid-{n}"] for n in range(200)]
    assert store.single == []  # no service read alone
    assert sum(store.bulk) == 200 and len(store.bulk) <= -(-200 // _BATCH) + 1
    assert store.watch_count == 200  # each watch opened from its own read's revision
    put(store, 1000, "s7")
    scheduler.advance_to(2)
    assert uuids(sets[7].items[-1]) == ["uuid-1000", "uuid-7"]
    assert len(sets[6].items) == 1


def test_a_refused_service_does_not_hold_back_the_others_and_is_reported_alone() -> None:
    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    for n, name in enumerate(services(5)):
        put(store, n, name)
    store.denied.add("/services/s3/")
    discovery = Discovery(store=store)
    sets = [record(discovery.hosts(name), scheduler) for name in services(5)]
    scheduler.advance_to(0.5)
    # the bulk read failed as a whole; each service was read alone at once: four loaded
    assert [len(s.items) for s in sets] == [1, 1, 1, 0, 1]
    assert sets[3].error is None  # a refusal is retried slowly, not an end of the stream
    scheduler.advance_to(30)  # retried slowly (1 s doubling), not every 0.5 s
    assert 2 <= store.single.count("/services/s3/") <= 6
    store.denied.clear()  # an operator grants the permission: the stream heals
    scheduler.advance_to(120)
    assert uuids(sets[3].items[0]) == ["uuid-3"]


def test_a_failed_bulk_read_leaves_each_service_to_its_own_retry() -> None:
    # a bulk read refused for a reason of its own (a store that takes no transaction of
    # ranges, as etcd shims may): each service reads alone. (An unreachable store rests the
    # whole queue instead: see the test of services subscribed while it is unreachable.)
    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    put(store, 1, "a")
    store.bulk_error = StoreError("get_prefixes: UNKNOWN unsupported transaction")
    discovery = Discovery(store=store)
    first = record(discovery.hosts("a"), scheduler)
    store.disconnect()
    scheduler.advance_to(1)
    assert first.items == [] and first.error is None
    store.reconnect()  # each service retries on its own backoff, and loads
    scheduler.advance_to(5)
    assert [uuids(s) for s in first.items] == [["uuid-1"]]


def test_a_service_disposed_before_its_turn_is_not_read_nor_watched() -> None:
    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    discovery = Discovery(store=store)
    kept = record(discovery.hosts("kept"), scheduler)
    record(discovery.hosts("gone"), scheduler).dispose()
    gc.collect()
    scheduler.advance_to(1)
    assert "/services/gone/" not in store.single and sum(store.bulk) == 1
    assert store.watch_count == 1
    assert [uuids(s) for s in kept.items] == [[]]


def test_a_subscriber_that_reads_first_takes_over_from_a_pending_bulk_read() -> None:
    # hosts() asks for a bulk read; subscribe_new, whose subscribe() must know the current
    # hosts before it returns, reads them at once: the bulk read that comes later is dropped,
    # so nobody gets the first state twice and no existing host is new
    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    put(store, 1, "api")
    discovery = Discovery(store=store)
    sets = record(discovery.hosts("api"), scheduler)
    news = record(discovery.subscribe_new("api"), scheduler)
    assert store.single == ["/services/api/"]
    assert [uuids(s) for s in sets.items] == [["uuid-1"]]  # delivered by that read
    scheduler.advance_to(1)
    put(store, 2, "api")
    scheduler.advance_to(2)
    assert [uuids(s) for s in sets.items] == [["uuid-1"], ["uuid-1", "uuid-2"]]
    assert [h.uuid for h in news.items] == ["uuid-2"]
    assert store.bulk == [] and store.watch_count == 1


def test_an_observer_that_raises_on_its_first_set_stops_no_other_first_set() -> None:
    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    for n, name in enumerate(services(3)):
        put(store, n, name)
    discovery = Discovery(store=store)

    def explode(_: object) -> None:
        raise RuntimeError("observer bug")

    discovery.hosts("s0").subscribe(explode, lambda _e: None)
    others = [record(discovery.hosts(name), scheduler) for name in ("s1", "s2")]
    scheduler.advance_to(1)
    assert [len(s.items) for s in others] == [1, 1]


def test_first_sets_are_delivered_on_no_thread_that_holds_a_library_lock() -> None:
    # the bulk worker enqueues under each sync's lock and delivers after: an observer that
    # subscribes to another service from its on_next must not dead-lock
    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    put(store, 1, "a")
    put(store, 2, "b")
    discovery = Discovery(store=store)
    nested: list[Any] = []
    held: list[bool] = []

    def on_first(hosts: Any) -> None:
        sync = discovery._hosts_sync("a")._sync
        lock = getattr(getattr(sync, "_sync", sync), "_lock", None)
        held.append(lock is not None and _held_elsewhere(lock))
        if not nested:
            nested.append(record(discovery.hosts("b"), scheduler))

    discovery.hosts("a").subscribe(on_first)
    scheduler.advance_to(1)
    assert held == [False]
    assert [uuids(s) for s in nested[0].items] == [["uuid-2"]]


def _held_elsewhere(lock: Any) -> bool:
    """True when ``lock`` (an RLock) is held by this thread (a library lock around user code)."""
    owned: bool = lock._is_owned()
    return owned


def test_thread_safety_of_requests_from_many_threads() -> None:
    # requests from many subscribing threads at once: every service loads exactly once
    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    for n, name in enumerate(services(64)):
        put(store, n, name)
    discovery = Discovery(store=store)
    recorders: list[Any] = [None] * 64
    threads = [threading.Thread(target=lambda n=n: recorders.__setitem__(
        n, record(discovery.hosts(f"s{n}"), scheduler))) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    scheduler.advance_to(1)
    assert [len(r.items) for r in recorders] == [1] * 64
    assert sum(store.bulk) == 64


def test_subscribers_that_do_not_wait_share_the_first_snapshot_as_their_initial_state() -> None:
    # hosts() subscribers take the first state read in bulk as a state (initial), the one
    # snapshot object shared by all (not a copy per subscriber marking every host added)
    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    put(store, 1, "api")
    discovery = Discovery(store=store)
    shared = discovery._hosts_sync("api")
    firsts: list[Any] = []
    for _ in range(2):
        shared.observe().subscribe(firsts.append)
    scheduler.advance_to(1)
    assert len(firsts) == 2 and firsts[0] is firsts[1]
    assert firsts[0].initial and not firsts[0].added


# -- review (issue 12): windows of a request that waits for its bulk read ----------------------

def test_a_subscription_not_held_by_its_caller_still_gets_its_first_set_after_a_gc() -> None:
    # ``hosts(name).subscribe(on_next)`` without keeping the disposable is ordinary Rx (the
    # TcpProxy docstring does it): the stream lives while it has a subscriber. While its
    # first read waits for a bulk read, only the request refers to the sync: a weak one let
    # a garbage collection drop the sync, and the subscriber never got anything
    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    put(store, 1, "api")
    discovery = Discovery(store=store)
    sets: list[Any] = []
    discovery.hosts("api").subscribe(sets.append)  # the disposable is not kept
    gc.collect()
    scheduler.advance_to(1)
    assert [uuids(s) for s in sets] == [["uuid-1"]]
    put(store, 2, "api")  # and it stays watched
    scheduler.advance_to(2)
    assert [uuids(s) for s in sets] == [["uuid-1"], ["uuid-1", "uuid-2"]]


def test_a_service_subscribed_from_a_first_set_observer_gets_its_set_during_subscribe() -> None:
    # first sets read in bulk are delivered one after the other on one thread; an observer of
    # one that subscribes another service and waits for its first set (a balancer's pick())
    # would wait for a delivery queued behind itself: on that thread, subscribe() reads the
    # new service's set at once, as it did before bulk reads (see the etcd test with a
    # balancer in tests/integration/test_discovery_etcd.py)
    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    put(store, 1, "a")
    put(store, 2, "b")
    put(store, 3, "c")
    discovery = Discovery(store=store)
    during: dict[str, list[Any]] = {}
    keep: list[Any] = []

    def on_first(_: Any) -> None:
        if during:
            return
        b_sets = record(discovery.hosts("b"), scheduler)  # not watched yet
        during["b"] = list(b_sets.items)
        c_sets = record(discovery.hosts("c"), scheduler)  # watched, not read yet
        during["c"] = list(c_sets.items)
        keep.extend((b_sets, c_sets))

    store.denied.add("/services/c/")
    keep.append(record(discovery.hosts("c"), scheduler))
    scheduler.advance_to(0.1)  # c refused: watched, its read retried later (after 0.5 s+)
    store.denied.clear()
    discovery.hosts("a").subscribe(on_first)
    scheduler.advance_to(0.2)
    assert [uuids(s) for s in during["b"]] == [["uuid-2"]]
    assert [uuids(s) for s in during["c"]] == [["uuid-3"]]


def unreachable(count: int) -> tuple[TestScheduler, BulkStore, Discovery]:
    """A Discovery on a store holding one host for each of ``count`` services, unreachable."""
    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    for n, name in enumerate(services(count)):
        put(store, n, name)
    store.disconnect()
    return scheduler, store, Discovery(store=store)


def ten_seconds_down_then_back(scheduler: TestScheduler, store: BulkStore) -> None:
    """Ten seconds unreachable cost at most 60 reads; back, everything waiting is read within
    one backoff (0.5 s at most), in bulk (a few small reads to start)."""
    scheduler.advance_to(scheduler.clock + 10)
    calls_while_down = len(store.bulk) + len(store.single)
    assert calls_while_down <= 60, calls_while_down
    store.single.clear()
    store.bulk.clear()
    store.reconnect()
    scheduler.advance_to(scheduler.clock + 1)
    assert len(store.single) + len(store.bulk) <= 12


def test_services_subscribed_while_the_store_is_unreachable_retry_together_and_load_in_bulk(
        ) -> None:
    # a gateway started before etcd: each service's first read failed alone and retried
    # alone every 0.5 s or so, for ever (2,000 services: ~1,100 failed calls and a whole
    # core per second on etcd), and when etcd came, each was read alone: one round trip
    # each. A failed bulk read now rests the queue, with one backoff for all of it.
    scheduler, store, discovery = unreachable(200)
    health = record(discovery.health, scheduler)
    sets = [record(discovery.hosts(name), scheduler) for name in services(200)]
    ten_seconds_down_then_back(scheduler, store)
    assert health.items[-2].state.name in ("RECONNECTING", "UNAVAILABLE")
    assert [[uuids(hosts) for hosts in s.items] for s in sets] == [
        [[f"uuid-{n}"]] for n in range(200)]  # nothing while down, then the one first set
    assert all(s.error is None for s in sets)


def test_streams_whose_subscribe_read_failed_retry_together_too() -> None:
    # events(), subscribe_new()... read in subscribe(); when that read fails (etcd down),
    # their retries joined no bulk read: each retried alone every 0.5 s or so, for ever
    scheduler, store, discovery = unreachable(200)
    news = [record(discovery.subscribe_new(name), scheduler) for name in services(200)]
    assert len(store.single) == 200  # each read once in its subscribe()
    store.single.clear()
    ten_seconds_down_then_back(scheduler, store)
    assert store.watch_count == 200
    put(store, 1000, "s7")  # the first read found uuid-7: new to a subscriber that never saw it
    scheduler.advance_to(12)
    assert [h.uuid for h in news[7].items] == ["uuid-7", "uuid-1000"]
    assert all(s.error is None for s in news)


# -- FirstReads alone: its workers, its rests, its delivery flag (mutation triage) ---------------

class _Steps:
    """An I/O scheduler whose tasks the test runs one at a time (reads never overlap here,
    so what tells the workers apart is how many tasks are scheduled)."""

    def __init__(self) -> None:
        self.tasks: list[Any] = []

    def schedule(self, action: Any, state: Any = None) -> Any:
        self.tasks.append(action)
        from reactivex.disposable import Disposable
        return Disposable()

    def run_next(self) -> None:
        self.tasks.pop(0)(self, None)


class _Reader:
    def __init__(self, n: int, timer: Any) -> None:
        self.prefix = f"/services/s{n}/"
        self.timer = timer
        self.installed: Snapshot | None = None
        self.alone: list[Exception] = []
        self.stopped = False

    @property
    def wants_first_read(self) -> bool:
        return self.installed is None and not self.stopped

    def install_first(self, snapshot: Snapshot) -> None:
        self.installed = snapshot

    def read_alone(self, error: Exception) -> None:
        self.alone.append(error)

    def flush_now(self) -> None:
        pass


class _Prefixes:
    """A store of bulk reads: the first ``failures`` fail with ``error`` (an outage unless
    told); records each batch."""

    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or StoreUnavailable("etcd went away")
        self.batches: list[int] = []

    def get_prefixes(self, prefixes: Sequence[str]) -> list[Snapshot]:
        self.batches.append(len(prefixes))
        if self.failures:
            self.failures -= 1
            raise self.error
        return [Snapshot(1, ()) for _ in prefixes]


def _first_reads(store: Any) -> tuple[Any, _Steps, TestScheduler]:
    from rx_discovery._first_reads import FirstReads
    from rx_discovery._runtime import Runtime

    timer, steps = TestScheduler(), _Steps()
    return FirstReads(store, Runtime(timer, steps)), steps, timer  # type: ignore[arg-type]


def test_at_most_two_workers_read_and_both_can_start_again_once_they_ended() -> None:
    reads, steps, timer = _first_reads(_Prefixes())
    readers = [_Reader(n, timer) for n in range(200)]
    for reader in readers:
        reads.request(reader)
    assert len(steps.tasks) == 2  # two workers, whatever waits
    steps.run_next()  # one worker reads everything, 64 at a time, and starts no third
    assert len(steps.tasks) == 1 and all(r.installed for r in readers)
    steps.run_next()
    assert steps.tasks == []
    more = [_Reader(n, timer) for n in range(200, 202)]
    for reader in more:
        reads.request(reader)
    assert len(steps.tasks) == 2  # both ended: two may start again


def test_a_request_queued_while_the_workers_were_leaving_is_read() -> None:
    # both workers found the queue empty and are on their way out (still counted): a request
    # then only queues, so the first of them to leave must start another worker, or the
    # request waits for ever. Worker A's way out runs worker B whole, and B's queues the request
    reads, steps, timer = _first_reads(_Prefixes())
    first, second, late = (_Reader(n, timer) for n in range(3))
    reads.request(first)
    reads.request(second)  # two workers scheduled: A, then B
    original = reads._read_batch
    empty = [0]

    def read_batch() -> bool:
        found = original()
        if not found:
            empty[0] += 1
            if empty[0] == 1:  # A leaves: B runs now, inside A's way out
                steps.run_next()
            elif empty[0] == 2:  # B leaves too: both still counted
                reads.request(late)
        return found

    reads._read_batch = read_batch  # type: ignore[method-assign]
    steps.run_next()  # A
    for _ in range(5):
        if steps.tasks:
            steps.run_next()
    assert late.installed is not None


def test_an_outage_halves_the_batch_until_one_then_success_doubles_it() -> None:
    reads, steps, timer = _first_reads(_Prefixes(failures=4))
    readers = [_Reader(n, timer) for n in range(7)]
    reads.request(readers[0])  # one worker starts; the rest queue before it runs
    for reader in readers[1:]:
        reads._waiting.append(reader)
    for _ in range(40):
        while steps.tasks:
            steps.run_next()
        timer.advance_by(1.0)  # each rest: one backoff of at most 0.5 s
    assert reads._store.batches == [7, 3, 1, 1, 1, 2, 4][:len(reads._store.batches)]
    assert reads._store.batches == [7, 3, 1, 1, 1, 2, 4]
    assert all(r.installed for r in readers) and not any(r.alone for r in readers)


def test_after_a_rest_one_worker_reads_then_a_second_joins_but_no_third() -> None:
    reads, steps, timer = _first_reads(_Prefixes(failures=1))
    readers = [_Reader(n, timer) for n in range(3)]
    for reader in readers:
        reads.request(reader)  # two workers; the third request queues
    while steps.tasks:
        steps.run_next()  # the batch of three fails: the queue rests, both workers leave
    assert reads._store.batches == [3] and not any(r.installed for r in readers)
    timer.advance_by(1.0)  # the rest ends: one worker reads one, then a second joins
    steps.run_next()  # the first worker's turn: it reads on (2), the second is scheduled
    assert reads._store.batches == [3, 1, 2] and all(r.installed for r in readers)
    assert len(steps.tasks) == 1  # the second worker, started by the first success
    steps.run_next()
    for reader in (_Reader(n, timer) for n in range(10, 13)):
        reads.request(reader)
    assert len(steps.tasks) == 2  # the workers were counted right: two, not a third


def test_a_first_set_delivered_inside_another_keeps_the_outer_delivery_flagged() -> None:
    from rx_discovery._first_reads import _FlushAll, delivering_first_sets

    seen: list[bool] = []

    class Inner:
        def flush_now(self) -> None:
            seen.append(delivering_first_sets())

    class Outer:
        def flush_now(self) -> None:
            _FlushAll([Inner()])()  # a delivery made inline, inside this one
            seen.append(delivering_first_sets())

    _FlushAll([Outer()])()
    assert seen == [True, True]
    assert not delivering_first_sets()


@pytest.mark.parametrize("error, own_timer", [
    (PermissionDenied("a range of the transaction was refused"), False),
    (StoreUnavailable("etcd went away"), True),  # streams that time their own retries
], ids=["refused", "unreachable-own-timer"])
def test_a_batch_handed_to_reads_alone_does_not_end_the_workers_turn(
        error: Exception, own_timer: bool) -> None:
    # a batch whose syncs each read alone (refused, or unreachable for streams with a
    # scheduler of their own: nothing rests) is done with: the worker goes on with the next
    # batch in the same turn, as after a success, instead of leaving and queueing a new
    # turn on the I/O pool behind registrations and keepalives for each batch
    reads, steps, timer = _first_reads(_Prefixes(failures=1, error=error))
    own = TestScheduler() if own_timer else timer
    alone = [_Reader(n, own) for n in range(_BATCH)]
    last = _Reader(_BATCH, timer)
    reads.request(alone[0])
    for reader in [*alone[1:], last]:
        reads._waiting.append(reader)
    steps.run_next()
    assert reads._store.batches == [_BATCH, 1]
    assert all(r.alone and r.installed is None for r in alone) and last.installed is not None
    assert steps.tasks == []  # one turn read both batches: nothing left to run


def test_a_subscriber_that_reads_while_the_bulk_read_is_in_flight_keeps_its_newer_state(
        ) -> None:
    # the bulk read took the sync; before its answer is installed, subscribe_new (which
    # reads at once) read a newer state and started watching from it. The older bulk
    # snapshot must be dropped: installed as a re-read, it took a host registered in between
    # away (down, and a set without it) and the watch brought it back as new
    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    put(store, 1, "api")
    discovery = Discovery(store=store)
    sets = record(discovery.hosts("api"), scheduler)
    later: list[Any] = []
    bulk_read = store.get_prefixes

    def read_then_a_subscriber_reads_first(prefixes: Sequence[str]) -> list[Snapshot]:
        snapshots = bulk_read(prefixes)  # uuid-1 only
        put(store, 2, "api")
        later.append(record(discovery.subscribe_down("api"), scheduler))  # reads uuid-1, 2
        later.append(record(discovery.subscribe_new("api"), scheduler))
        return snapshots

    store.get_prefixes = read_then_a_subscriber_reads_first  # type: ignore[method-assign]
    scheduler.advance_to(1)
    downs, news = later
    assert [uuids(s) for s in sets.items] == [["uuid-1", "uuid-2"]]
    assert downs.items == [] and news.items == []
    assert store.watch_count == 1


def test_a_codec_bug_in_a_bulk_first_state_reads_that_prefix_alone_soon_and_spares_the_rest(
        ) -> None:
    # the first state of /a/ was read in bulk, but installing it raised (a codec bug, not a
    # malformed value): /a/ reads again alone after the short backoff, and /b/, read in the
    # same batch, gets its first state at once all the same
    from test_sync_mutants import flaky_codec

    from rx_discovery._first_reads import FirstReads
    from rx_discovery._runtime import Runtime
    from rx_discovery.sync import Change, PrefixSync

    scheduler = TestScheduler()
    store = BulkStore(scheduler)
    store.put("/a/x", b"v1")
    store.put("/b/y", b"v2")
    runtime = Runtime(scheduler, scheduler)
    reads = FirstReads(store, runtime)
    codec = flaky_codec([b"v1"])  # raises once, on /a/'s value
    changes: dict[str, list[tuple[float, Change[bytes]]]] = {"/a/": [], "/b/": []}
    for prefix in changes:
        PrefixSync(store, prefix, codec, runtime,
                   lambda change, prefix=prefix: changes[prefix].append(
                       (scheduler.clock, change)),
                   lambda _: None, prefix, first_reads=reads).start()
    scheduler.advance_to(0.01)
    assert store.bulk == [2]
    assert [(t, dict(c.items)) for t, c in changes["/b/"]] == [(0, {"y": b"v2"})]
    assert changes["/a/"] == []
    scheduler.advance_to(1)
    assert store.single == ["/a/"]  # read again alone, once
    assert [dict(c.items) for _, c in changes["/a/"]] == [{"x": b"v1"}]
    assert changes["/a/"][0][0] <= 0.06  # after the transient backoff (<= 50 ms)


def test_a_bulk_read_cut_by_close_is_neither_logged_nor_retried(
        caplog: pytest.LogCaptureFixture) -> None:
    # close() stops every sync, then closes the channel under the read in flight, which fails
    # as an outage: no sync wants the read any more, so there is nothing to rest for, and an
    # INFO line "first reads of N services failed (Channel closed); retrying" was noise
    class _ClosedUnderTheRead(_Prefixes):
        def get_prefixes(self, prefixes: Sequence[str]) -> list[Snapshot]:
            for reader in readers:
                reader.stopped = True
            raise StoreUnavailable("Channel closed!")

    reads, steps, timer = _first_reads(_ClosedUnderTheRead())
    readers = [_Reader(n, timer) for n in range(3)]
    caplog.set_level(logging.DEBUG, logger="rx_discovery._first_reads")
    for reader in readers:
        reads.request(reader)
    while steps.tasks:
        steps.run_next()
    assert not reads._resting and not reads._waiting
    assert not [r for r in caplog.records if r.levelno >= logging.INFO], caplog.text
    timer.advance_by(60.0)
    assert not steps.tasks  # no worker woken to read for nobody
