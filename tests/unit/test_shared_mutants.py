"""What the surviving mutants of ``rx_discovery/_shared.py`` and ``rx_discovery/_serial.py``
(issue 17) would break: the first state of a subscriber that joined unseen, whose scheduler
times the retries, no read on register()'s thread, nothing left running after an interrupted
subscribe, and SerialSubject's hot, per-observer delivery. Marble tests on the memory store
(one unit: one second); equivalent mutants are listed in docs/mutants-core.md.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import Recorder
from reactivex import Observer
from reactivex.testing import TestScheduler
from test_streams_marble import at, uuids

from rx_discovery import Discovery, StoreUnavailable
from rx_discovery._serial import SerialSubject
from rx_discovery.store.memory import MemoryStore
from rx_discovery.testing import make_host, record


def put(store: Any, n: int) -> None:
    store.put(f"/services/api/uuid-{n}", make_host(n).to_json().encode())


# --- _shared.py --------------------------------------------------------------------------

def test_hosts_found_after_an_unseen_start_are_new_resync_events_at_the_reads_revision(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutants: the unseen first state's change at revision None, or not flagged ``resync``
    # (None, False, left out) (_shared.py _Joiner.enqueue)
    store: Any = discovery.store
    put(store, 1)
    store.disconnect()
    events = record(discovery.events("api"), scheduler)  # the first read fails
    sets = record(discovery.hosts("api"), scheduler)
    at(scheduler, 5, store.reconnect)
    scheduler.advance_to(10)
    assert [(e.kind, e.uuid, e.revision, e.resync) for e in events.items] == [
        ("new", "uuid-1", store.revision, True)]
    assert [(uuids(s), s.revision) for s in sets.items] == [(["uuid-1"], store.revision)]


@pytest.mark.parametrize("stream", ["hosts", "events"])
def test_the_subscribers_scheduler_times_the_retries_of_the_watch_it_starts(
        scheduler: TestScheduler, stream: str) -> None:
    # mutants: observe / observe_mapped / _subscribe pass None instead of ``scheduler`` (the
    # retries timed on the Discovery's timer, not the one the subscriber gave)
    store = MemoryStore(scheduler)
    put(store, 1)
    store.disconnect()
    retries = TestScheduler()
    seen = record(getattr(Discovery(store=store), stream)("api", scheduler=retries), scheduler)
    scheduler.advance_to(1)  # the background read failed too: its retry is timed
    store.reconnect()
    scheduler.advance_to(30)  # the Discovery's timer runs; the retry waits on ``retries``
    assert seen.items == []
    retries.advance_to(1)
    scheduler.advance_to(31)
    assert len(seen.items) == 1


class CountingReads(MemoryStore):
    reads = 0
    fail = False

    def get_prefix(self, prefix: str) -> Any:
        self.reads += 1
        if self.fail:
            raise StoreUnavailable("reads fail")
        return super().get_prefix(prefix)


def test_register_reads_nothing_on_the_callers_thread(scheduler: TestScheduler) -> None:
    # mutants: observe's ``wait`` default True; ``wait or not loaded`` (_shared.py): the
    # registration's own subscription would read the service key during register()
    store = CountingReads(scheduler)
    discovery = Discovery(store=store)
    registration = discovery.register("api", make_host(1))
    assert store.reads == 0  # register() returns at once: the reads are in the background
    scheduler.advance_to(1)
    assert store.keys("/services/api/") == [registration.key]


def test_register_reads_nothing_on_the_callers_thread_while_a_stream_is_not_loaded(
        scheduler: TestScheduler) -> None:
    # mutant: ``wait or not loaded`` (_shared.py _subscribe): joining a stream whose first
    # read has not succeeded yet, the registration's subscription would read on its thread
    store = CountingReads(scheduler)
    store.fail = True
    discovery = Discovery(store=store)
    record(discovery.services("api"), scheduler)
    record(discovery.hosts("api"), scheduler)  # both fail to read: retried in the background
    reads = store.reads
    discovery.register("api", make_host(1))
    assert store.reads == reads


def test_a_subscribe_interrupted_during_its_first_read_holds_no_watch_for_later_ones(
        scheduler: TestScheduler) -> None:
    # mutant: _unsubscribe(None, inner) when interrupted (_shared.py _subscribe): the dead
    # subscriber stays a member, so the watch outlives every real subscriber
    class InterruptedRead(MemoryStore):
        interrupt = True

        def get_prefix(self, prefix: str) -> Any:
            if self.interrupt:
                self.interrupt = False
                raise KeyboardInterrupt
            return super().get_prefix(prefix)

    store = InterruptedRead(scheduler)
    discovery = Discovery(store=store)
    with pytest.raises(KeyboardInterrupt):  # (changes(): its subscribe() reads first)
        discovery.changes("api").subscribe()
    later = record(discovery.hosts("api"), scheduler)
    scheduler.advance_to(1)
    assert store.watch_count == 1
    assert later.subscription is not None
    later.subscription.dispose()
    assert store.watch_count == 0


# --- _serial.py --------------------------------------------------------------------------

def test_diagnostics_are_hot_a_late_subscriber_gets_no_earlier_problem(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutant: ``replay or has_latest`` (_serial.py attach): a subject without replay would
    # replay its latest value to a new observer
    record(discovery.hosts("api"), scheduler)
    at(scheduler, 1, lambda: discovery.store.put("/services/api/bad", b"{"))
    scheduler.advance_to(2)
    late = record(discovery.diagnostics, scheduler)
    scheduler.advance_to(3)
    assert late.items == []


def test_a_disposed_observer_gets_nothing_more_and_the_others_go_on() -> None:
    # mutants: attach returns Disposable(None); _unsubscribe keeps only the disposed one
    subject: SerialSubject[int] = SerialSubject("t")
    kept: list[int] = []
    gone: list[int] = []
    subject.observe().subscribe(kept.append)
    subscription = subject.observe().subscribe(gone.append)
    subject.on_next(1)
    subscription.dispose()
    subject.on_next(2)
    assert kept == [1, 2] and gone == [1]


def test_an_observer_attached_itself_gets_nothing_once_disposed() -> None:
    # mutant: attach returns Disposable(None) (observe() hides it: reactivex detaches a
    # disposed subscription; the library attaches its own observers with attach())
    subject: SerialSubject[int] = SerialSubject("t")
    seen: list[int] = []
    subject.attach(Observer(seen.append)).dispose()
    subject.on_next(1)
    assert seen == []


def test_values_queued_for_an_observer_that_unsubscribes_are_dropped_for_it_alone() -> None:
    # mutant: _unsubscribe keeps the queued values for the disposed observer only
    subject: SerialSubject[int] = SerialSubject("t")
    first: list[int] = []
    second: list[int] = []
    subscriptions: list[Any] = []

    def first_observer(value: int) -> None:
        first.append(value)
        subscriptions[1].dispose()  # while 2 and 3 are queued for both

    subscriptions.append(subject.observe().subscribe(first_observer))
    subscriptions.append(subject.observe().subscribe(second.append))
    subject.enqueue(1)
    subject.enqueue(2)
    subject.enqueue(3)
    subject.flush()
    assert first == [1, 2, 3]
    assert second == []  # reactivex detaches a disposed subscription at once


# --- the fresh run after the per-service memory trimming ----------------------------------

def test_subscribing_to_a_closed_discoverys_hosts_fails_as_reactivex_would(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutants: _Subscribable.subscribe's test of an observer that ended (``is_stopped`` read
    # from None or under another name; getattr given no name): the error of a subscribe
    # reaches ``on_error``, any observer's; with no ``on_error`` given it is raised, as
    # reactivex's default ``on_error`` does
    discovery.close()
    errors: list[Exception] = []
    discovery.hosts("api").subscribe(lambda _: None, errors.append)
    assert [str(e) for e in errors] == ["this Discovery is closed"]
    plain = Recorder()  # an observer object without ``is_stopped``
    discovery.hosts("api").subscribe(plain)
    assert isinstance(plain.error, RuntimeError)
    with pytest.raises(RuntimeError, match=r"^this Discovery is closed$"):
        discovery.hosts("api").subscribe(lambda _: None)


def test_an_on_error_that_raises_during_subscribe_is_called_once(discovery: Discovery) -> None:
    """Rx calls on_error at most once. An observer object (no ``is_stopped``) whose on_error
    raises, subscribing to a closed Discovery, got on_error a second time with its own
    exception (mutants ``_Subscribable.subscribe 27, 30, 31`` told the two apart)."""

    class Raising:
        def __init__(self) -> None:
            self.errors: list[Exception] = []

        def on_next(self, value: object) -> None:
            pass

        def on_error(self, error: Exception) -> None:
            self.errors.append(error)
            raise KeyError("from on_error")

        def on_completed(self) -> None:
            pass

    discovery.close()
    observer = Raising()
    with pytest.raises(KeyError, match="from on_error"):
        discovery.hosts("api").subscribe(observer)  # type: ignore[arg-type]
    assert [type(e) for e in observer.errors] == [RuntimeError]
