"""How streams deliver: outside every library lock, nothing lost at the start, nothing repeated,
after close, and what each surviving mutant of the core (issue 17) would break. Marble tests:
one TestScheduler drives the whole Discovery on the memory store; one unit is one second.
"""

from __future__ import annotations

import gc
import threading
from typing import Any

import pytest
import reactivex
from reactivex import operators
from reactivex.scheduler import ImmediateScheduler
from reactivex.testing import TestScheduler
from test_streams_marble import at, uuids

from rx_discovery import (
    Credentials,
    Discovery,
    HostSet,
    PermissionDenied,
    Service,
    StoreUnavailable,
)
from rx_discovery._runtime import Runtime
from rx_discovery.store import WatchResponse
from rx_discovery.store.memory import MemoryStore
from rx_discovery.sync import Change, Codec, PrefixSync
from rx_discovery.testing import make_host, record


def put(store: Any, n: int, service: str = "api") -> None:
    store.put(f"/services/{service}/uuid-{n}", make_host(n).to_json().encode())


def on_other_thread(action: Any) -> None:
    """Run ``action`` on another thread and wait for it (a dead-lock fails, not hangs)."""
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "dead-locked: user code ran under a library lock"


# --- issue 11 §1: user code outside every library lock; a raising observer stops nothing ---

def test_an_observer_may_wait_for_a_thread_that_subscribes_to_the_same_service(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    seen: list[list[str]] = []

    def on_set(hosts: HostSet) -> None:
        if len(hosts) == 1:  # on the change: another thread joins the same stream
            on_other_thread(lambda: discovery.hosts("api").subscribe(
                lambda late: seen.append(uuids(late))).dispose())

    sets = record(discovery.hosts("api"), scheduler)
    discovery.hosts("api").subscribe(on_set)
    at(scheduler, 1, lambda: put(discovery.store, 1))
    scheduler.advance_to(2)
    assert seen == [["uuid-1"]]
    assert [uuids(s) for s in sets.items] == [[], ["uuid-1"]]


def test_a_diagnostics_observer_may_wait_for_a_thread_that_subscribes(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    seen: list[list[str]] = []
    discovery.diagnostics.subscribe(lambda _: on_other_thread(
        lambda: discovery.hosts("api").subscribe(lambda s: seen.append(uuids(s))).dispose()))
    sets = record(discovery.hosts("api"), scheduler)
    at(scheduler, 1, lambda: discovery.store.put("/services/api/bad", b"{"))
    at(scheduler, 2, lambda: put(discovery.store, 1))
    scheduler.advance_to(3)
    assert seen == [[]]
    assert [uuids(s) for s in sets.items] == [[], ["uuid-1"]]


def test_a_raising_diagnostics_observer_does_not_stop_the_stream(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    store.put("/services/api/bad", b"not json")
    put(store, 1)

    def explode(_: object) -> None:
        raise RuntimeError("user bug")

    discovery.diagnostics.subscribe(explode)
    sets = record(discovery.hosts("api"), scheduler)
    at(scheduler, 5, lambda: put(store, 2))
    scheduler.advance_to(10)
    assert [(t, uuids(s)) for t, s in sets.values] == [
        (0.0, ["uuid-1"]), (5.0, ["uuid-1", "uuid-2"])]


def test_a_raising_observer_does_not_stop_the_others(  # mutant: _shared.py ~109
        scheduler: TestScheduler, discovery: Discovery) -> None:
    def explode(_: object) -> None:
        raise RuntimeError("user bug")

    discovery.hosts("api").subscribe(explode)
    news = record(discovery.subscribe_new("api"), scheduler)
    sets = record(discovery.hosts("api"), scheduler)
    for n in (1, 2):
        at(scheduler, n, lambda n=n: put(discovery.store, n))
    scheduler.advance_to(5)
    assert [h.uuid for h in news.items] == ["uuid-1", "uuid-2"]
    assert [uuids(s) for s in sets.items] == [[], ["uuid-1"], ["uuid-1", "uuid-2"]]


def test_an_observer_that_raises_on_one_host_still_gets_the_others(
        scheduler: TestScheduler) -> None:
    store = ReadFailingStore(scheduler)
    store.reads_fail = True
    discovery = Discovery(store=store)
    got: list[str] = []

    def picky(host: Any) -> None:
        got.append(host.uuid)
        if host.uuid == "uuid-1":
            raise RuntimeError("user bug")

    discovery.subscribe_new("api").subscribe(picky)
    for n in (1, 2, 3):  # found together by the first read that works
        put(store, n)
    at(scheduler, 1, lambda: setattr(store, "reads_fail", False))
    scheduler.advance_to(5)
    assert got == ["uuid-1", "uuid-2", "uuid-3"]


def test_a_raising_services_or_credentials_observer_keeps_its_subscription(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store

    def service(user: str) -> bytes:
        return Service(name="api", critical=False, public=True, hostname="h", user=user,
                       password="p").to_json().encode()

    store.put("/services_infos/api", service("a"))
    users: list[str] = []
    names: list[str] = []
    errors: list[Exception] = []

    def on_credentials(credentials: Credentials) -> None:
        users.append(credentials.user)
        raise RuntimeError("user bug")

    def on_service(document: Service) -> None:
        names.append(document.user)
        raise RuntimeError("user bug")

    discovery.credentials("api").subscribe(on_credentials, errors.append)
    discovery.services("api").subscribe(on_service, errors.append)
    for n, user in enumerate("bc", start=1):
        at(scheduler, n, lambda user=user: store.put("/services_infos/api", service(user)))
    scheduler.advance_to(5)
    assert users == ["a", "b", "c"]
    assert names == ["a", "b", "c"]
    assert errors == []


def test_an_observer_may_subscribe_to_another_service_inside_on_next(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    inner: dict[str, Any] = {}

    def on_new(_: object) -> None:
        if "other" not in inner:
            inner["other"] = record(discovery.subscribe_new("other"), scheduler)
            put(discovery.store, 7, service="other")  # right after subscribe() returned

    discovery.subscribe_new("api").subscribe(on_new)
    at(scheduler, 1, lambda: put(discovery.store, 1))
    scheduler.advance_to(3)
    assert [h.uuid for h in inner["other"].items] == ["uuid-7"]


def test_a_late_joiner_gets_the_current_state_then_every_change_no_gap_no_repeat(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    record(discovery.hosts("api"), scheduler)
    late: dict[str, Any] = {}

    def join_inside_delivery(hosts: HostSet) -> None:
        if len(hosts) == 1 and "events" not in late:  # inside another observer's on_next
            late["events"] = record(discovery.events("api"), scheduler)
            late["sets"] = record(discovery.hosts("api"), scheduler)

    discovery.hosts("api").subscribe(join_inside_delivery)
    at(scheduler, 1, lambda: put(store, 1))
    at(scheduler, 2, lambda: put(store, 2))
    scheduler.advance_to(3)
    assert [uuids(s) for s in late["sets"].items] == [["uuid-1"], ["uuid-1", "uuid-2"]]
    assert [(e.kind, e.uuid) for e in late["events"].items] == [("new", "uuid-2")]


# --- issue 11 §2: no event lost at the start of a stream ---

def test_a_host_written_right_after_subscribe_returned_is_new(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    put(store, 1)  # there before: not new
    news = record(discovery.subscribe_new("api"), scheduler)
    events = record(discovery.events("api"), scheduler)
    put(store, 2)  # before the scheduler ran anything
    store.delete("/services/api/uuid-1")
    scheduler.advance_to(1)
    assert [h.uuid for h in news.items] == ["uuid-2"]
    assert [(e.kind, e.uuid) for e in events.items] == [("new", "uuid-2"), ("down", "uuid-1")]


def test_subscribed_while_the_store_is_down_hosts_of_the_first_read_are_new(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store: Any = discovery.store
    put(store, 9, service="other")
    store.disconnect()
    news = record(discovery.subscribe_new("api"), scheduler)
    sets = record(discovery.hosts("api"), scheduler)

    def come_back() -> None:
        store.reconnect()
        for n in (1, 2, 3):  # before the stream's next read
            put(store, n)

    at(scheduler, 5, come_back)
    at(scheduler, 8, lambda: put(store, 4))
    scheduler.advance_to(10)
    assert [h.uuid for h in news.items] == ["uuid-1", "uuid-2", "uuid-3", "uuid-4"]
    assert uuids(sets.items[-1]) == ["uuid-1", "uuid-2", "uuid-3", "uuid-4"]


# --- issue 11 §4 and §8 ---

def test_a_stream_subscribed_after_close_fails_at_once(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    made_before = discovery.hosts("api")
    discovery.close()
    for stream in (made_before, discovery.hosts("api"), discovery.subscribe_new("other"),
                   discovery.credentials("api")):
        recorder = record(stream, scheduler)
        assert recorder.error is not None, stream
        assert isinstance(recorder.error, RuntimeError) and "closed" in str(recorder.error)


class SpyStore(MemoryStore):
    """Counts the watch responses delivered per watched key or prefix."""

    def __init__(self, scheduler: TestScheduler) -> None:
        super().__init__(scheduler)
        self.responses: dict[str, int] = {}

    def watch(self, prefix: str, start_revision: int, **kwargs: Any
              ) -> reactivex.Observable[WatchResponse]:
        def count(_: WatchResponse) -> None:
            self.responses[prefix] = self.responses.get(prefix, 0) + 1

        return super().watch(prefix, start_revision, **kwargs).pipe(
            operators.do_action(count))


def test_the_service_key_watch_sees_that_key_alone(scheduler: TestScheduler) -> None:
    store = SpyStore(scheduler)
    discovery = Discovery(store=store)
    documents = record(discovery.services("api"), scheduler)
    at(scheduler, 1, lambda: store.put("/services_infos/api-x", b'{"name":"api-x"}'))
    at(scheduler, 2, lambda: store.put("/services_infos/api", b'{"name":"api"}'))
    scheduler.advance_to(3)
    assert [s.name for s in documents.items] == ["api"]
    assert store.responses == {"/services_infos/api": 1}


def test_per_service_syncs_are_released_when_unused(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    for n in range(20):
        for stream in (discovery.hosts(f"s{n}"), discovery.credentials(f"s{n}")):
            record(stream, scheduler).dispose()
    del stream  # the last stream object would keep its sync (as it should)
    kept = discovery.hosts("kept")
    subscription = record(kept, scheduler)
    # the first reads (in the background) open the watches; the syncs disposed before their
    # turn are held by their request until then (a live one must not be dropped meanwhile)
    scheduler.advance_to(1)
    gc.collect()
    assert list(discovery._host_syncs) == ["kept"]
    assert list(discovery._service_syncs) == []
    assert discovery.store.watch_count == 1  # type: ignore[attr-defined]
    subscription.dispose()
    again = record(kept, scheduler)  # an unused stream object is reused: still one watch
    record(discovery.subscribe_new("kept"), scheduler)
    assert discovery.store.watch_count == 1  # type: ignore[attr-defined]
    assert again.items and again.error is None


def test_host_streams_share_one_watch_and_the_service_key_a_second(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    for stream in (discovery.hosts("api"), discovery.events("api"),
                   discovery.subscribe_new("api"), discovery.subscribe_down("api"),
                   discovery.hosts("api")):
        record(stream, scheduler)
    scheduler.advance_to(1)
    assert discovery.store.watch_count == 1  # type: ignore[attr-defined]
    for stream in (discovery.credentials("api"), discovery.services("api"),
                   discovery.credentials("api")):
        record(stream, scheduler)
    scheduler.advance_to(2)
    assert discovery.store.watch_count == 2  # type: ignore[attr-defined]


# --- issue 17: a test for each surviving mutant of the stream core ---

class ReplayingStore(MemoryStore):
    """A store whose watches re-send every revision from the start (an overlap)."""

    def watch(self, prefix: str, start_revision: int, **kwargs: Any
              ) -> reactivex.Observable[WatchResponse]:
        return super().watch(prefix, 1, **kwargs)


def test_revisions_sent_again_are_not_applied_again(scheduler: TestScheduler) -> None:
    store = ReplayingStore(scheduler)  # mutant: overlap filter removed (sync.py ~219)
    discovery = Discovery(store=store)
    events = record(discovery.events("api"), scheduler)
    at(scheduler, 1, lambda: put(store, 1))
    at(scheduler, 2, lambda: store.delete("/services/api/uuid-1"))
    at(scheduler, 3, store.restart)  # the watch reopens, and gets everything again
    at(scheduler, 5, lambda: put(store, 2))
    scheduler.advance_to(10)
    assert [(e.kind, e.uuid) for e in events.items] == [
        ("new", "uuid-1"), ("down", "uuid-1"), ("new", "uuid-2")]


def test_a_write_that_changes_nothing_emits_nothing(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    sets = record(discovery.hosts("api"), scheduler)  # mutant: emit always (sync.py ~257)
    at(scheduler, 1, lambda: put(discovery.store, 1))
    at(scheduler, 2, lambda: put(discovery.store, 1))  # the same value again
    at(scheduler, 3, lambda: discovery.store.put("/services/api/x/y", b"{"))  # not a host
    scheduler.advance_to(5)
    assert [(t, uuids(s)) for t, s in sets.values] == [(0.0, []), (1.0, ["uuid-1"])]


class ProgressStore(MemoryStore):
    """A store whose watches first send a progress notification: nothing changed up to the
    revision before the first one watched."""

    def watch(self, prefix: str, start_revision: int, **kwargs: Any
              ) -> reactivex.Observable[WatchResponse]:
        progress = reactivex.of(WatchResponse(revision=start_revision - 1, events=()))
        return reactivex.concat(progress, super().watch(prefix, start_revision, **kwargs))


def test_a_progress_notification_does_not_skip_the_next_revision(
        scheduler: TestScheduler) -> None:
    store = ProgressStore(scheduler)  # mutant: revision = R + 1 (sync.py ~216)
    discovery = Discovery(store=store)
    news = record(discovery.subscribe_new("api"), scheduler)

    def gap() -> None:
        store.restart()
        put(store, 1)  # the first revision after the notified one

    at(scheduler, 2, gap)
    scheduler.advance_to(10)
    assert [h.uuid for h in news.items] == ["uuid-1"]


def test_a_watch_resumes_within_half_a_second_of_the_store_coming_back(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store: Any = discovery.store  # mutant: retry cap 30 s (sync.py ~132); README: 0.5 s
    news = record(discovery.subscribe_new("api"), scheduler)
    at(scheduler, 1, store.disconnect)

    def come_back() -> None:
        store.reconnect()
        put(store, 1)

    at(scheduler, 120, come_back)
    scheduler.advance_to(200)
    assert len(news.values) == 1
    assert 120 < news.values[0][0] <= 120.5


class ReadFailingStore(MemoryStore):
    """Reads fail while ``reads_fail``; writes work."""

    reads_fail = False

    def get_prefix(self, prefix: str) -> Any:
        if self.reads_fail:
            raise StoreUnavailable("reads fail")
        return super().get_prefix(prefix)


def test_a_registration_made_while_reads_fail_still_heals(scheduler: TestScheduler) -> None:
    store = ReadFailingStore(scheduler)  # mutant: ensure_loaded does nothing (_shared ~71)
    store.reads_fail = True
    discovery = Discovery(store=store)
    registration = discovery.register("api", make_host(1), ttl=30)
    at(scheduler, 5, lambda: store.delete(registration.key))  # by someone, during the outage
    at(scheduler, 10, lambda: setattr(store, "reads_fail", False))
    at(scheduler, 20, lambda: store.delete(registration.key))
    scheduler.advance_to(40)
    assert store.keys("/services/api/") == [registration.key]


def test_observe_on_delivers_on_the_given_scheduler(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    elsewhere = TestScheduler()  # mutant: observe_on ignored (discovery.py ~392)
    streams = {"hosts": discovery.hosts("api", observe_on=elsewhere),
               "events": discovery.events("api", observe_on=elsewhere),
               "new": discovery.subscribe_new("api", observe_on=elsewhere),
               "down": discovery.subscribe_down("api", observe_on=elsewhere),
               "credentials": discovery.credentials("api", observe_on=elsewhere)}
    recorders = {name: record(stream, scheduler) for name, stream in streams.items()}
    scheduler.advance_to(1)
    put(discovery.store, 1)
    discovery.store.delete("/services/api/uuid-1")
    discovery.store.put("/services_infos/api", b'{"name":"api","critical":false}')
    scheduler.advance_to(5)
    assert all(not r.items for r in recorders.values())
    elsewhere.advance_to(1)
    assert all(r.items for r in recorders.values())


def test_an_observer_that_raises_on_the_observe_on_scheduler_keeps_its_subscription(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # The exception used to escape into the observe_on scheduler: it ended the
    # subscription and stopped that scheduler (an EventLoopScheduler's thread died, and
    # with it every other stream delivered there).
    elsewhere = TestScheduler()
    got: list[str] = []

    def explode(host: Any) -> None:
        got.append(host.uuid)
        raise RuntimeError("user bug")

    discovery.subscribe_new("api", observe_on=elsewhere).subscribe(explode)
    others = record(discovery.subscribe_new("api", observe_on=elsewhere), elsewhere)
    for n in (1, 2):
        at(scheduler, n, lambda n=n: put(discovery.store, n))
        scheduler.advance_to(n)
        elsewhere.advance_to(n)
    assert got == ["uuid-1", "uuid-2"]
    assert [h.uuid for h in others.items] == ["uuid-1", "uuid-2"]


def test_a_malformed_value_is_reported_once_however_often_it_is_read(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store: Any = discovery.store  # mutant: re-reported on every re-read (sync.py ~306)
    problems = record(discovery.diagnostics, scheduler)
    record(discovery.hosts("api"), scheduler)
    at(scheduler, 1, lambda: store.put("/services/api/bad", b"{"))

    def compacted_gap() -> None:
        store.restart()
        put(store, 1, service="other")  # newer revisions elsewhere, then compaction:
        put(store, 2, service="other")
        store.compact()  # the stream must re-read its prefix

    for time in (2, 4):
        at(scheduler, time, compacted_gap)
    scheduler.advance_to(10)
    assert [p.key for p in problems.items] == ["/services/api/bad"]


class DeniedStore(MemoryStore):
    """Reads of the hosts of ``api`` are refused (etcd RBAC) while ``denied``; counts them."""

    denied = True
    reads = 0

    def get_prefix(self, prefix: str) -> Any:
        if prefix == "/services/api/":
            self.reads += 1
            if self.denied:
                raise PermissionDenied("permission denied")
        return super().get_prefix(prefix)


def test_a_permanent_error_is_retried_slowly_and_heals_once_allowed(
        scheduler: TestScheduler) -> None:
    store = DeniedStore(scheduler)
    put(store, 1)
    sets = record(Discovery(store=store).hosts("api"), scheduler)
    scheduler.advance_to(120)
    # retried (a permission granted later heals), but not every 0.5 s for ever: ~1 s doubling
    # to 60 s, as a refused login (about 240 reads at the transient pace)
    assert 3 <= store.reads <= 10
    store.denied = False
    scheduler.advance_to(181)
    assert [(uuids(s)) for s in sets.items] == [["uuid-1"]]


class PausedWatchStore(MemoryStore):
    """The first watch pauses (``opening`` set) until ``resume`` is set, which the next read
    does (a joiner that reads first waits for the paused one: it must not dead-lock)."""

    def __init__(self, scheduler: TestScheduler) -> None:
        super().__init__(scheduler)
        self.opening, self.resume = threading.Event(), threading.Event()

    def get_prefix(self, prefix: str) -> Any:
        if self.opening.is_set():
            self.resume.set()
        return super().get_prefix(prefix)

    def watch(self, prefix: str, start_revision: int, **kwargs: Any) -> Any:
        if not self.opening.is_set():
            self.opening.set()
            assert self.resume.wait(5)
        return super().watch(prefix, start_revision, **kwargs)


def test_joining_while_the_first_read_opens_its_watch_sees_no_existing_host_as_new(
        scheduler: TestScheduler) -> None:
    store = PausedWatchStore(scheduler)
    put(store, 1)
    discovery = Discovery(store=store)
    # (changes(): its subscribe() reads first, on its own thread)
    first = threading.Thread(target=lambda: discovery.changes("api").subscribe(), daemon=True)
    first.start()  # reads the hosts, then opens the watch (paused) before publishing them
    assert store.opening.wait(5)
    news: list[str] = []
    sets: list[list[str]] = []

    def join() -> None:  # while the first subscriber's watch is being opened
        discovery.subscribe_new("api").subscribe(lambda host: news.append(host.uuid))
        discovery.hosts("api").subscribe(lambda hosts: sets.append(uuids(hosts)))
        store.resume.set()

    on_other_thread(join)
    first.join(5)
    assert not first.is_alive()
    at(scheduler, 1, lambda: put(store, 2))
    scheduler.advance_to(2)
    assert news == ["uuid-2"]  # uuid-1 was there before subscribe() returned: not new
    assert sets == [["uuid-1"], ["uuid-1", "uuid-2"]]


def test_a_background_read_that_fails_at_once_is_still_retried(
        scheduler: TestScheduler) -> None:
    # An I/O worker may run the first background read, fail (etcd refuses connections at
    # once) and schedule its retry before start() has recorded the read as pending: recording
    # it then cancelled the retry, and the stream never loaded (1 of 8 streams on etcd).
    # ImmediateScheduler runs the read inside start(), which makes that order certain.
    store = MemoryStore(scheduler)
    put(store, 1)
    store.disconnect()
    changes: list[Change[Any]] = []
    sync: PrefixSync[Any] = PrefixSync(
        store, "/services/api/", Codec(lambda key: key, lambda _key, value: value),
        Runtime(scheduler, ImmediateScheduler()), changes.append, lambda _: None, "api")
    sync.start()
    store.reconnect()
    scheduler.advance_to(10)
    assert [sorted(c.items) for c in changes] == [["/services/api/uuid-1"]]


class InterruptedReadStore(MemoryStore):
    """The next read is interrupted (Ctrl-C in a notebook while subscribe() waits for etcd)."""

    interrupt = True

    def get_prefix(self, prefix: str) -> Any:
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        return super().get_prefix(prefix)


def test_a_subscribe_interrupted_during_its_first_read_leaves_nothing_running(
        scheduler: TestScheduler) -> None:
    store = InterruptedReadStore(scheduler)
    discovery = Discovery(store=store)
    interrupted: list[object] = []
    with pytest.raises(KeyboardInterrupt):  # (changes(): its subscribe() reads first)
        discovery.changes("api").subscribe(interrupted.append)
    scheduler.advance_to(1)
    assert store.watch_count == 0  # no watch left behind for a subscription nobody holds
    sets = record(discovery.hosts("api"), scheduler)  # the next subscriber starts afresh
    at(scheduler, 2, lambda: put(store, 1))
    scheduler.advance_to(3)
    assert [uuids(s) for s in sets.items] == [[], ["uuid-1"]]
    assert interrupted == []  # the interrupted observer gets nothing


def test_a_registration_that_loads_the_hosts_runs_no_observer_on_its_io_worker(
        scheduler: TestScheduler) -> None:
    # A registration reads its service's hosts first (ensure_loaded) on an I/O worker; when
    # that read is the stream's first (etcd was down when the stream was subscribed), the
    # observers' deliveries must be handed off, as after a background read.
    delivery = TestScheduler()  # stands for etcd's delivery threads
    store = ReadFailingStore(scheduler)
    put(store, 1)
    store.reads_fail = True
    discovery = Discovery(store=store)
    discovery._runtime = Runtime(scheduler, scheduler, delivery)
    got: list[list[str]] = []
    discovery.hosts("api").subscribe(lambda hosts: got.append(uuids(hosts)))
    store.reads_fail = False
    discovery._hosts_sync("api").ensure_loaded()  # as a registration does, on its worker
    assert got == []
    delivery.advance_to(1)
    assert got == [["uuid-1"]]
