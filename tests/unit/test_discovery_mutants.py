"""What the surviving mutants of ``rx_discovery/discovery.py`` (issue 17) would break: each
stream's ``scheduler`` and ``observe_on``, completion and errors of the derived streams, event
payloads, credentials emitted only when they change, from_env's overrides, the repr. Marble
tests on the memory store (one unit: one second); equivalent mutants are listed in
docs/mutants-core.md.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import re
import sys
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import reactivex
import trustme
from helpers import wait_until
from reactivex.subject import Subject
from reactivex.testing import TestScheduler
from test_lifecycle_marble import due
from test_registration_mutants import Hooked, dispose_during_the_first_write
from test_streams_marble import at

from rx_discovery import ConfigError, Discovery, RegistrationStatus, StoreUnavailable, _lifecycle
from rx_discovery.lifecycle import UsedAfterFork
from rx_discovery.store.memory import MemoryStore
from rx_discovery.testing import make_host, record


def put(store: Any, n: int, **fields: Any) -> None:
    store.put(f"/services/api/uuid-{n}", make_host(n, **fields).to_json().encode())


class CountingReads(MemoryStore):
    reads = 0
    fail = False

    def get_prefix(self, prefix: str) -> Any:
        self.reads += 1
        if self.fail:
            raise StoreUnavailable("reads fail")
        return super().get_prefix(prefix)


STREAMS: dict[str, Callable[[Discovery, TestScheduler], reactivex.Observable[Any]]] = {
    "subscribe_new": lambda d, s: d.subscribe_new("api", scheduler=s),
    "subscribe_down": lambda d, s: d.subscribe_down("api", scheduler=s),
    "services": lambda d, s: d.services("api", scheduler=s),
    "credentials": lambda d, s: d.credentials("api", scheduler=s),
    "catalog": lambda d, s: d.catalog(scheduler=s),
}


@pytest.mark.parametrize("stream", sorted(STREAMS))
def test_each_streams_scheduler_times_the_retries_of_the_watch_it_starts(
        scheduler: TestScheduler, stream: str) -> None:
    # mutants: subscribe_new / subscribe_down / services / credentials / catalog pass None
    # (or nothing) on as the scheduler: retries timed on the Discovery's timer
    store = CountingReads(scheduler)
    store.fail = True
    retries = TestScheduler()
    record(STREAMS[stream](Discovery(store=store), retries), scheduler)
    assert_retries_wait_on(retries, scheduler, store)


def assert_retries_wait_on(retries: TestScheduler, scheduler: TestScheduler,
                           store: CountingReads) -> None:
    """The reads of ``store`` (failing) are retried on ``retries``' clock alone."""
    scheduler.advance_to(30)  # the store's clock runs; every retry waits on ``retries``
    reads = store.reads
    assert reads <= 2  # the read at subscribe, and the one it hands to the background
    retries.advance_to(30)
    scheduler.advance_to(31)
    assert store.reads > reads


def test_the_catalog_is_delivered_on_its_observe_on_scheduler(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutant: catalog() ignores ``observe_on``
    elsewhere = TestScheduler()
    catalogs = record(discovery.catalog(observe_on=elsewhere), scheduler)
    scheduler.advance_to(1)
    assert catalogs.items == []
    elsewhere.advance_to(1)
    assert len(catalogs.items) == 1


def test_derived_streams_complete_on_close_and_fail_when_subscribed_after(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutants: _expanded passes on_error / on_completed on as None (or not at all)
    streams = {"events": lambda: discovery.events("api"),
               "new": lambda: discovery.subscribe_new("api"),
               "down": lambda: discovery.subscribe_down("api"),
               "services": lambda: discovery.services("api")}
    open_ones = {name: record(make(), scheduler) for name, make in streams.items()}
    scheduler.advance_to(1)
    discovery.close()
    assert all(r.completed for r in open_ones.values())
    after = {name: record(make(), scheduler) for name, make in streams.items()}
    assert all(isinstance(r.error, RuntimeError) for r in after.values())


def test_new_events_carry_the_host_and_updates_found_by_a_resync_say_so(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutants: HostEvent("new", uuid, None, ...); the update's ``resync`` None / left out
    store: Any = discovery.store
    put(store, 1)
    events = record(discovery.events("api"), scheduler)
    at(scheduler, 1, lambda: put(store, 2))

    def compacted_gap() -> None:
        store.restart()
        put(store, 1, user="changed")
        store.put("/services/other/x", b"{}")  # a later revision, then compaction:
        store.compact()  # the update is found by re-reading the prefix

    at(scheduler, 2, compacted_gap)
    scheduler.advance_to(10)
    assert [(e.kind, e.uuid, e.host.hostname, e.resync) for e in events.items] == [
        ("new", "uuid-2", "host-2.test", False), ("update", "uuid-1", "host-1.test", True)]
    assert events.items[-1].host.user == "changed"


def test_credentials_are_emitted_only_when_they_change(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutant: credentials() without distinct_until_changed
    store: Any = discovery.store
    credentials = record(discovery.credentials("api"), scheduler)
    at(scheduler, 1, lambda: store.put(
        "/services_infos/api", b'{"name":"api","critical":false,"user":"u","password":"p"}'))
    at(scheduler, 2, lambda: store.put(  # the service document changes, its credentials not
        "/services_infos/api", b'{"name":"api","critical":true,"user":"u","password":"p"}'))
    scheduler.advance_to(3)
    assert [(c.user, c.password) for c in credentials.items] == [("u", "p")]


def test_from_env_applies_the_prefix_and_timeout_given(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    # mutants: from_env's overrides set to None, under another key, or not applied
    monkeypatch.setenv("ETCD_HOSTS", "http://127.0.0.1:1")
    monkeypatch.setenv("ETCD_PREFIX", "/from-env")
    discovery = Discovery.from_env(prefix="/given", timeout=2.5)
    try:
        assert (discovery.settings.prefix, discovery.settings.timeout) == ("/given", 2.5)
    finally:
        discovery.close()


def test_the_repr_says_where_the_store_is(scheduler: TestScheduler) -> None:
    # mutants: __repr__'s "memory" test or text, and the endpoints' separator
    assert repr(Discovery.in_memory(scheduler, prefix="/p")) == "Discovery(memory, prefix='/p')"
    etcd = Discovery(["http://10.0.0.1:2379", "http://10.0.0.2:2379"])
    try:
        assert repr(etcd) == ("Discovery(http://10.0.0.1:2379,http://10.0.0.2:2379, "
                              "prefix='')")
    finally:
        etcd.close()


def test_register_defaults_to_a_five_second_ttl(scheduler: TestScheduler,
                                               discovery: Discovery) -> None:
    # mutant: register's ttl default 6.0
    discovery.register("api", make_host(1))
    scheduler.advance_to(0.001)
    leases = discovery.store.leases  # type: ignore[attr-defined]
    assert [round(left) for left in leases.values()] == [5]


def test_a_registrations_keepalives_run_on_the_scheduler_it_was_given(
        scheduler: TestScheduler) -> None:
    # mutant: register() times the registration on the Discovery's timer, not ``scheduler``
    class CountingKeepalives(MemoryStore):
        keepalives = 0

        def keepalive(self, lease: int) -> int:
            self.keepalives += 1
            return super().keepalive(lease)

    store = CountingKeepalives(scheduler)
    own = TestScheduler()
    Discovery(store=store).register("api", make_host(1), ttl=6, scheduler=own)
    scheduler.advance_to(20)  # the Discovery's timer runs; the registration's stands still
    assert store.keepalives == 0
    own.advance_to(2)  # ttl / 3
    scheduler.advance_to(21)
    assert store.keepalives == 1


def test_observe_on_streams_complete_on_close_and_fail_when_subscribed_after(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutants: _deliver passes on_error / on_completed on as None (or not at all)
    elsewhere = TestScheduler()
    hosts = record(discovery.hosts("api", observe_on=elsewhere), scheduler)
    scheduler.advance_to(1)
    discovery.close()
    late = record(discovery.hosts("api", observe_on=elsewhere), scheduler)
    elsewhere.advance_to(1)
    assert hosts.completed
    assert isinstance(late.error, RuntimeError)


def test_each_service_has_its_own_service_document(scheduler: TestScheduler,
                                                   discovery: Discovery) -> None:
    # mutants: the service syncs cached under None (every service sharing the first one's);
    # any key read under the service key's prefix taken for the service's own
    store: Any = discovery.store
    store.put("/services_infos/api2", b'{"name":"api2","critical":true}')
    api = record(discovery.services("api"), scheduler)
    api2 = record(discovery.services("api2"), scheduler)
    scheduler.advance_to(1)
    assert api.items == []  # /services_infos/api2 starts with /services_infos/api
    assert [s.name for s in api2.items] == ["api2"]


def test_the_constructor_passes_the_timeout_on() -> None:
    # mutants: __init__'s timeout default 6.0; the timeout not passed on
    default = Discovery(["http://127.0.0.1:1"])
    given = Discovery(["http://127.0.0.1:1"], timeout=2.5)
    try:
        assert (default.settings.timeout, given.settings.timeout) == (5.0, 2.5)
    finally:
        default.close()
        given.close()


def test_api_v2_builds_the_v2_store() -> None:
    # mutants: ``store is not None and api == "v2"``, the "v2" text changed (an etcd v3 store)
    pytest.importorskip("httpx")
    from rx_discovery.store.v2 import EtcdV2Store

    discovery = Discovery(["http://127.0.0.1:1"], api="v2")
    try:
        assert isinstance(discovery.store, EtcdV2Store)
    finally:
        discovery.close()


# --- the second triage (the fresh run after the per-service memory trimming) ---------------

_CA = trustme.CA()
_CLIENT = _CA.issue_cert("rx-discovery-client")


def test_the_constructor_passes_the_tls_material_and_the_login_on() -> None:
    # mutants: ca_cert / client_cert / client_key / user / password passed on as None or
    # not at all (etcd would be reached without TLS or without logging in)
    ca, cert, key = (_CA.cert_pem.bytes(), _CLIENT.cert_chain_pems[0].bytes(),
                     _CLIENT.private_key_pem.bytes())
    discovery = Discovery("https://127.0.0.1:1", ca_cert=ca, client_cert=cert, client_key=key,
                          user="u", password="p")
    try:
        settings = discovery.settings
        assert (settings.ca_cert, settings.client_cert, settings.client_key) == (ca, cert, key)
        assert (settings.user, settings.password) == ("u", "p")
    finally:
        discovery.close()


def test_api_v2_without_httpx_says_which_extra_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # mutants: the ConfigError's text (None, changed)
    monkeypatch.setitem(sys.modules, "rx_discovery.store.v2", None)  # import fails
    with pytest.raises(ConfigError) as raised:
        Discovery("http://127.0.0.1:1", api="v2")
    assert str(raised.value) == "api='v2' needs httpx: pip install 'rx-discovery[v2]'"


def test_a_discovery_says_it_cannot_be_pickled_nor_used_after_fork(
        scheduler: TestScheduler, monkeypatch: pytest.MonkeyPatch) -> None:
    # mutants: the object named in the pickling and fork errors (None, changed)
    discovery = Discovery.in_memory(scheduler)
    with pytest.raises(TypeError, match=r"^a Discovery cannot be sent to another process"):
        pickle.dumps(discovery)
    monkeypatch.setattr(_lifecycle, "_generation", _lifecycle.fork_generation() + 1)  # a fork
    for use in (lambda: discovery.health, lambda: discovery.get("api"),
                lambda: discovery.register("api", make_host(1))):
        with pytest.raises(UsedAfterFork, match=r"^this Discovery was created before"):
            use()


def test_registers_refusals_say_what_is_wrong(scheduler: TestScheduler,
                                             discovery: Discovery) -> None:
    # mutants: the texts of register()'s and get()'s errors (the type of a bad ``healthy``,
    # the closed Discovery, the service named in a clash, the shard's rule)
    with pytest.raises(ValueError, match=r"^healthy must be an Observable of bool \(or None\), "
                                         r"got int$"):
        discovery.register("api", make_host(1), healthy=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^shard must be a non-empty string or None$"):
        discovery.get("api", shard="")
    discovery.register("api", make_host(1))
    with pytest.raises(ValueError) as raised:
        discovery.register("api", make_host(1))
    assert str(raised.value) == (
        "Host.uuid 'uuid-1' is already registered for 'api' by this Discovery (a host read back "
        "keeps its uuid: dataclasses.replace(host, uuid='') derives a new one)")
    discovery.close()
    with pytest.raises(RuntimeError, match=r"^this Discovery is closed$"):
        discovery.register("api", make_host(2))


def test_the_clash_check_before_io_looks_at_the_hosts_own_key(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutants: the key checked before any I/O built with the service or the uuid None: a
    # service named "None", or a host whose uuid is "None", would make later keys clash
    discovery.register("None", make_host(1))
    discovery.register("api", make_host(1))  # the same uuid under another service
    discovery.register("api", dataclasses.replace(make_host(2), uuid="None"))
    discovery.register("api", make_host(3))
    scheduler.advance_to(1)
    assert sorted(discovery.store.keys("/services/")) == [  # type: ignore[attr-defined]
        "/services/None/uuid-1", "/services/api/None", "/services/api/uuid-1",
        "/services/api/uuid-3"]


def in_the_window(discovery: Discovery, action: Callable[[], None]) -> None:
    """Run ``action`` once, inside the next register() call, after its checks made before
    any I/O and before it takes the lock to add the registration: what another thread's
    register() or close() landing in that window does."""
    build = discovery._hosts_sync

    def hosts_sync(service: str) -> Any:
        del discovery._hosts_sync  # once: the instance's attribute hid the method
        action()
        return build(service)

    discovery._hosts_sync = hosts_sync  # type: ignore[method-assign]


def test_a_registration_of_the_same_key_made_meanwhile_is_kept_and_the_later_refused(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutants: the clash check under the lock always passes (clash None, the key None, ``and``
    # for ``or``: the later registration replaces the earlier in the Discovery's books, so
    # close() no longer revokes it), or refuses with the service or host None
    store: Any = discovery.store
    first: list[Any] = []
    in_the_window(discovery, lambda: first.append(discovery.register("api", make_host(1))))
    with pytest.raises(ValueError, match=r"^Host.uuid 'uuid-1' is already registered for "
                                         r"'api' by this Discovery"):
        discovery.register("api", make_host(1))
    scheduler.advance_to(1)
    assert first[0].ready and store.keys("/services/") == ["/services/api/uuid-1"]
    discovery.close()
    assert store.keys("/services/") == []  # close() revoked the one registered


def test_a_close_made_meanwhile_refuses_the_registration(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutants: the text of the RuntimeError raised when close() lands after the first check
    in_the_window(discovery, discovery.close)
    with pytest.raises(RuntimeError, match=r"^this Discovery is closed$"):
        discovery.register("api", make_host(1))
    scheduler.advance_to(1)
    assert discovery.store.keys("/services/") == []  # type: ignore[attr-defined]


def test_a_key_with_extra_segments_is_reported_as_not_a_host_key(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    # mutants: _HostIdent's reason (changed, or the key given as the reason)
    problems = record(discovery.diagnostics, scheduler)
    record(discovery.hosts("api"), scheduler)
    at(scheduler, 1, lambda: discovery.store.put(  # type: ignore[attr-defined]
        "/services/api/uuid-1/extra", make_host(1).to_json().encode()))
    scheduler.advance_to(2)
    assert [(p.key, p.reason) for p in problems.items] == [
        ("/services/api/uuid-1/extra", "not a host key (extra path segments or no uuid)")]


def test_a_balancers_scheduler_times_the_retries_of_the_watch_it_starts(
        scheduler: TestScheduler) -> None:
    # mutants: balancer() subscribes to hosts without its ``scheduler``
    store = CountingReads(scheduler)
    store.fail = True
    retries = TestScheduler()
    balancer = Discovery(store=store).balancer("api", scheduler=retries)
    assert_retries_wait_on(retries, scheduler, store)
    balancer.close()


def test_the_constructors_scheduler_times_the_retries_on_a_store_with_a_scheduler(
        scheduler: TestScheduler) -> None:
    # mutant: ``scheduler and default_timer or io`` (the store's scheduler, not the one given)
    store = CountingReads(scheduler)
    store.fail = True
    timer = TestScheduler()
    record(Discovery(store=store, scheduler=timer).hosts("api"), scheduler)
    assert_retries_wait_on(timer, scheduler, store)


def test_close_drains_when_the_first_registration_is_live_and_a_later_one_withdrawn(
        scheduler: TestScheduler) -> None:
    # mutant: close() keeps only the last registration's answer (``=`` for ``|=``)
    discovery = Discovery.in_memory(scheduler)
    live = discovery.register("api", make_host(1), ttl=30)
    discovery.register("api", make_host(2), ttl=30, healthy=Subject())  # never healthy
    scheduler.advance_to(10)
    assert live.ready
    closer = threading.Thread(target=lambda: discovery.close(drain=3.0), daemon=True)
    closer.start()
    wait_until(lambda: due(scheduler, 13.0) or not closer.is_alive(),
               message="the drain started")
    assert closer.is_alive(), "close() revoked a live host key without a drain"
    scheduler.advance_to(13.0)
    closer.join(10)
    assert not closer.is_alive()


class WithoutScheduler:
    """A memory store that hides its scheduler: a Discovery on it takes the etcd path (its own
    I/O pools, timer thread and delivery threads), with no server."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name == "scheduler":
            raise AttributeError(name)
        return getattr(self._store, name)


def io_threads(since: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t not in since and t.name.startswith("rx-discovery-io")]


class KeepaliveThreads(CountingReads):
    keepalives_on: list[threading.Thread]

    def keepalive(self, lease: int) -> int:
        self.keepalives_on.append(threading.current_thread())
        return super().keepalive(lease)


@pytest.mark.slow
def test_on_the_etcd_path_a_background_read_delivers_on_a_thread_of_its_own() -> None:
    # mutants: the Discovery's timer is its I/O pool (``default_timer and io``: a PoolScheduler
    # cannot time a retry), background reads deliver on an I/O worker (delivery None),
    # registrations deliver their status and refresh their leases on I/O workers (the delivery
    # or keepalive pool None or ``and io``), close() leaves the I/O pool and the timer running
    # (``_owned =`` forgets them)
    before = set(threading.enumerate())
    store = KeepaliveThreads()  # its own event loop: real time
    store.keepalives_on = []
    store.fail = True
    discovery = Discovery(store=WithoutScheduler(store))  # type: ignore[arg-type]
    delivered_on: list[threading.Thread] = []
    discovery.hosts("api").subscribe(lambda _: delivered_on.append(threading.current_thread()))
    store.fail = False  # the read at subscribe failed: retried in the background
    wait_until(lambda: delivered_on, message="the background read's host set")
    assert not delivered_on[0].name.startswith("rx-discovery-io"), delivered_on[0].name
    healthy: Subject[bool] = Subject()
    registration = discovery.register("api", make_host(1), healthy=healthy)
    status_on: list[tuple[Any, threading.Thread]] = []
    registration.status.subscribe(
        lambda status: status_on.append((status, threading.current_thread())))
    healthy.on_next(True)  # the REGISTERED that follows is delivered by a library thread
    wait_until(lambda: status_on[-1][0] is RegistrationStatus.REGISTERED, message="registered")
    io = discovery._runtime.io.executor._threads  # type: ignore[attr-defined]
    assert status_on[-1][1] not in io, "status delivered on an I/O worker"
    wait_until(lambda: store.keepalives_on, message="a keepalive (ttl / 3: 1.7 s)")
    assert store.keepalives_on[0] not in io, "a keepalive made on an I/O worker"
    discovery.close()
    wait_until(lambda: not io_threads(before), message="the I/O threads end after close()")


def test_close_waits_for_a_write_in_flight_no_longer_than_its_timeout(
        scheduler: TestScheduler, caplog: pytest.LogCaptureFixture) -> None:
    # mutants: close()'s registrations wait for their write in flight without a bound (None,
    # ``deadline + time.monotonic()``), 10 s (the timeout left out) or at least 1 s
    store = Hooked(scheduler)
    discovery = Discovery(store=store)
    registration = discovery.register("api", make_host(1), ttl=30)
    closing = SimpleNamespace(dispose=lambda timeout: discovery.close(timeout=timeout))
    with caplog.at_level(logging.WARNING, "rx_discovery"):
        assert dispose_during_the_first_write(scheduler, store, closing, 0.2) == [False]
    assert re.search(r"a registration write still runs after 0\.\d+s", caplog.text)
    assert registration.current_status is RegistrationStatus.DISPOSED


def test_from_env_passes_the_scheduler_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # mutants: from_env's ``scheduler`` not passed on (the retries timed on the Discovery's
    # own timer thread)
    monkeypatch.setenv("ETCD_HOSTS", "http://127.0.0.1:1")  # nothing listens: reads fail
    timer = TestScheduler()
    discovery = Discovery.from_env(timeout=0.5, scheduler=timer)
    try:
        discovery.hosts("api").subscribe()
        wait_until(lambda: timer._queue.items, message="a retry timed on the scheduler given")
    finally:
        discovery.close()


def test_read_catalog_reads_every_service_of_the_prefix_or_the_one_named(
        scheduler: TestScheduler) -> None:
    # mutants: read_catalog() passes None as the store or keyspace, or passes the service
    # name on wrongly (None, always, never, or unchecked)
    discovery = Discovery.in_memory(scheduler, prefix="/p")
    store: Any = discovery.store
    for service, n in (("api", 1), ("api", 2), ("web", 3)):
        store.put(f"/p/services/{service}/uuid-{n}", make_host(n).to_json().encode())
    store.put("/services/other/uuid-4", make_host(4).to_json().encode())  # not under /p
    everything = discovery.read_catalog()
    assert {name: sorted(h.uuid for h in query.all()) for name, query in everything.items()} == {
        "api": ["uuid-1", "uuid-2"], "web": ["uuid-3"]}
    assert list(discovery.read_catalog("web")) == ["web"]
    with pytest.raises(ValueError, match="service"):
        discovery.read_catalog("a/b")
