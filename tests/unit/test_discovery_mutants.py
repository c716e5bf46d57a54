"""What the surviving mutants of ``rx_discovery/discovery.py`` (issue 17) would break: each
stream's ``scheduler`` and ``observe_on``, completion and errors of the derived streams, event
payloads, credentials emitted only when they change, from_env's overrides, the repr. Marble
tests on the memory store (one unit: one second); equivalent mutants are listed in
docs/mutants-core.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import reactivex
from reactivex.testing import TestScheduler
from test_streams_marble import at

from rx_discovery import Discovery, StoreUnavailable
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
    scheduler.advance_to(30)  # the Discovery's timer runs; every retry waits on ``retries``
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
