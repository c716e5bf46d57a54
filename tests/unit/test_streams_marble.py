"""The library's stream and registration semantics as marble tests, in virtual time.

Every test runs the whole Discovery on the in-memory store driven by a TestScheduler: one unit
of virtual time is one second; nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from reactivex import operators
from reactivex.testing import TestScheduler

from rx_discovery import Credentials, Discovery, Host, HostSet, RegistrationStatus
from rx_discovery.testing import crash, make_host, record


def at(scheduler: TestScheduler, time: float, action: object) -> None:
    scheduler.schedule_absolute(time, lambda *_: action())  # type: ignore[operator]


def uuids(hosts: HostSet) -> list[str]:
    return sorted(hosts)


def test_hosts_starts_with_the_current_set_then_each_change(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    sets = record(discovery.hosts("api"), scheduler)
    regs = {}
    at(scheduler, 10, lambda: regs.setdefault(1, discovery.register("api", make_host(1))))
    at(scheduler, 20, lambda: regs.setdefault(2, discovery.register("api", make_host(2))))
    at(scheduler, 30, lambda: regs[1].dispose())
    scheduler.advance_to(40)
    assert [(t, uuids(s)) for t, s in sets.values] == [
        (0.0, []), (10.0, ["uuid-1"]), (20.0, ["uuid-1", "uuid-2"]), (30.0, ["uuid-2"])]
    revisions = [s.revision for s in sets.items]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)


def test_new_and_down_agree_with_hosts(scheduler: TestScheduler, discovery: Discovery) -> None:
    news = record(discovery.subscribe_new("api"), scheduler)
    downs = record(discovery.subscribe_down("api"), scheduler)
    regs = {}
    at(scheduler, 5, lambda: regs.setdefault(1, discovery.register("api", make_host(1))))
    at(scheduler, 15, lambda: regs[1].dispose())
    scheduler.advance_to(30)
    assert [(t, h.uuid) for t, h in news.values] == [(5.0, "uuid-1")]
    assert downs.values == [(15.0, "uuid-1")]


def test_crashed_host_goes_down_when_its_lease_expires(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    downs = record(discovery.subscribe_down("api"), scheduler)
    regs = {}
    # ttl 6: keepalives every 2 s (12, 14, ... 50); crash at 51 -> lease expires at 50 + 6
    at(scheduler, 10, lambda: regs.setdefault(1, discovery.register("api", make_host(1), ttl=6)))
    at(scheduler, 51, lambda: crash(regs[1]))
    scheduler.advance_to(100)
    assert downs.values == [(56.0, "uuid-1")]


def test_one_watch_shared_by_every_subscriber_and_cancelled_by_the_last(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    first = record(discovery.hosts("api"), scheduler)
    second = record(discovery.subscribe_new("api"), scheduler)
    third = record(discovery.subscribe_down("api"), scheduler)
    scheduler.advance_to(1)
    assert store.watch_count == 1  # type: ignore[attr-defined]
    store.put("/services/api/uuid-1", make_host(1).to_json().encode())
    scheduler.advance_to(2)
    late = record(discovery.hosts("api"), scheduler)
    assert [uuids(s) for s in late.items] == [["uuid-1"]]  # the current set, at once
    assert store.watch_count == 1  # type: ignore[attr-defined]
    for recorder in (first, second, third, late):
        recorder.dispose()
    assert store.watch_count == 0  # type: ignore[attr-defined]
    again = record(discovery.hosts("api"), scheduler)
    scheduler.advance_to(3)
    assert store.watch_count == 1  # type: ignore[attr-defined]
    assert [uuids(s) for s in again.items] == [["uuid-1"]]


def test_resume_after_a_lost_connection_loses_and_repeats_nothing(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    events = record(discovery.events("api"), scheduler)
    sets = record(discovery.hosts("api"), scheduler)
    scheduler.advance_to(1)
    put = lambda n: store.put(f"/services/api/uuid-{n}",  # noqa: E731
                              make_host(n).to_json().encode())
    at(scheduler, 2, lambda: put(1))
    at(scheduler, 3, store.restart)  # the watch drops; data stays
    at(scheduler, 3, lambda: put(2))  # written while the watch is down
    at(scheduler, 3, lambda: store.delete("/services/api/uuid-1"))
    at(scheduler, 8, lambda: put(3))
    scheduler.advance_to(20)
    assert [(e.kind, e.uuid) for e in events.items] == [
        ("new", "uuid-1"), ("new", "uuid-2"), ("down", "uuid-1"), ("new", "uuid-3")]
    revisions = [e.revision for e in events.items]
    assert revisions == sorted(set(revisions))
    assert uuids(sets.items[-1]) == ["uuid-2", "uuid-3"]
    assert store.watch_count == 1  # type: ignore[attr-defined]


def test_compaction_during_the_gap_emits_the_difference(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    put = lambda n: store.put(f"/services/api/uuid-{n}",  # noqa: E731
                              make_host(n).to_json().encode())
    put(1)
    put(2)
    events = record(discovery.events("api"), scheduler)
    sets = record(discovery.hosts("api"), scheduler)
    scheduler.advance_to(1)

    def gap() -> None:
        store.restart()
        put(3)
        store.delete("/services/api/uuid-1")
        put(4)
        store.delete("/services/api/uuid-4")  # came and went: invisible, not reported
        store.compact()

    at(scheduler, 2, gap)
    scheduler.advance_to(30)
    assert sorted((e.kind, e.uuid) for e in events.items) == [("down", "uuid-1"),
                                                              ("new", "uuid-3")]
    assert all(e.resync for e in events.items)
    assert uuids(sets.items[-1]) == ["uuid-2", "uuid-3"]
    assert sets.items[-1].revision == store.revision  # type: ignore[attr-defined]


def test_malformed_value_is_skipped_and_reported(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    problems = record(discovery.diagnostics, scheduler)
    sets = record(discovery.hosts("api"), scheduler)
    scheduler.advance_to(1)
    store.put("/services/api/uuid-1", make_host(1).to_json().encode())
    store.put("/services/api/bad", b'{"name": "x", "password": "hunter2", "ports": 1}')
    store.put("/services/api/uuid-1/extra", make_host(9).to_json().encode())
    store.put("/services/api/uuid-2", make_host(2).to_json().encode())
    scheduler.advance_to(2)
    assert uuids(sets.items[-1]) == ["uuid-1", "uuid-2"]
    assert [p.key for p in problems.items] == ["/services/api/bad",
                                               "/services/api/uuid-1/extra"]
    assert all("hunter2" not in str(p) for p in problems.items)
    assert sets.error is None and not sets.completed


def test_registration_heals_after_its_lease_is_revoked(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    registration = discovery.register("api", make_host(1), ttl=5)
    statuses = record(registration.status, scheduler)
    scheduler.advance_to(1)
    events = record(discovery.events("api"), scheduler)
    lease = store.get(registration.key).lease  # type: ignore[union-attr]
    at(scheduler, 10, lambda: store.revoke(lease))
    scheduler.advance_to(20)
    assert statuses.items == [RegistrationStatus.REGISTERING, RegistrationStatus.REGISTERED,
                                           RegistrationStatus.LOST,
                                           RegistrationStatus.REGISTERED]
    assert [(e.kind, e.uuid) for e in events.items] == [("down", "uuid-1"), ("new", "uuid-1")]
    stored = store.get(registration.key)
    assert stored is not None and stored.lease not in (0, lease)


def test_registration_heals_after_its_key_is_deleted(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    registration = discovery.register("api", make_host(1), ttl=5)
    statuses = record(registration.status, scheduler)
    at(scheduler, 10, lambda: store.delete(registration.key))
    scheduler.advance_to(20)
    assert statuses.items[-2:] == [RegistrationStatus.LOST, RegistrationStatus.REGISTERED]
    assert store.get(registration.key) is not None


def test_registration_survives_an_outage_longer_than_its_ttl(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    registration = discovery.register("api", make_host(1), ttl=5)
    statuses = record(registration.status, scheduler)
    scheduler.advance_to(1)
    events = record(discovery.events("api"), scheduler)
    at(scheduler, 10, store.disconnect)  # type: ignore[attr-defined]
    at(scheduler, 30, store.reconnect)  # type: ignore[attr-defined]
    scheduler.advance_to(60)
    lost_at = [t for t, s in statuses.values if s is RegistrationStatus.LOST]
    back_at = [t for t, s in statuses.values if s is RegistrationStatus.REGISTERED]
    assert len(lost_at) == 1 and 10 < lost_at[0] <= 10 + 5 + 5 / 3
    assert back_at[-1] > 30 and back_at[-1] <= 30 + 5.0  # within the longest backoff
    assert [(e.kind, e.uuid) for e in events.items] == [("down", "uuid-1"), ("new", "uuid-1")]
    assert registration.ready


def test_registration_while_the_store_is_down_retries_with_backoff_until_it_is_up(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    store.disconnect()  # type: ignore[attr-defined]
    registration = discovery.register("api", make_host(1), ttl=5)
    scheduler.advance_to(600)  # ten minutes of virtual time
    assert not registration.ready
    store.reconnect()  # type: ignore[attr-defined]
    scheduler.advance_to(606)
    assert registration.ready and store.get(registration.key) is not None


def test_an_hour_of_keepalives_never_lets_the_lease_expire(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    registration = discovery.register("api", make_host(1), ttl=3)
    downs = record(discovery.subscribe_down("api"), scheduler)
    scheduler.advance_to(3600)
    assert downs.items == [] and registration.ready


def test_dispose_revokes_at_once_and_is_idempotent(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    registration = discovery.register("api", make_host(1))
    statuses = record(registration.status, scheduler)
    scheduler.advance_to(1)
    registration.dispose()
    registration.dispose()
    assert discovery.store.get(registration.key) is None
    assert statuses.items[-1] is RegistrationStatus.DISPOSED and statuses.completed


def test_credentials_change_propagates_to_every_public_registration(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    public = dict(public=True, user="u1", password="p1", private_hostname="node")
    one = discovery.register("db", make_host(1, **public))
    two = discovery.register("db", make_host(2, **public))
    creds = record(one.credentials, scheduler)
    service_creds = record(discovery.credentials("db"), scheduler)
    scheduler.advance_to(1)
    service = discovery.get("db").service()
    rotated = dataclasses.replace(service, user="u2", password="p2")
    at(scheduler, 5, lambda: store.put("/services_infos/db", rotated.to_json().encode()))
    scheduler.advance_to(10)
    assert creds.items == [Credentials("u1", "p1"), Credentials("u2", "p2")]
    assert service_creds.items[-1] == Credentials("u2", "p2")
    for registration in (one, two):
        stored = Host.from_json(store.get(registration.key).value)  # type: ignore[union-attr]
        assert (stored.user, stored.password) == ("u2", "p2")
        assert registration.host.credentials == Credentials("u2", "p2")


def test_debounced_host_count_pipeline(scheduler: TestScheduler, discovery: Discovery) -> None:
    counts = record(discovery.hosts("api").pipe(
        operators.map(len), operators.debounce(1.0, scheduler=scheduler)), scheduler)
    for n in range(1, 4):  # three hosts within half a second: one debounced value
        at(scheduler, 10 + n / 10, lambda n=n: discovery.register("api", make_host(n)))
    scheduler.advance_to(20)
    assert counts.values == [(1.0, 0), (11.3, 3)]


def test_close_completes_streams_and_disposes_registrations(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    registration = discovery.register("api", make_host(1))
    sets = record(discovery.hosts("api"), scheduler)
    scheduler.advance_to(1)
    discovery.close()
    assert sets.completed
    assert registration.current_status is RegistrationStatus.DISPOSED


def test_leases_of_one_ttl_are_refreshed_together_and_the_service_key_written_once(
        scheduler: TestScheduler) -> None:
    from rx_discovery.store.memory import MemoryStore

    calls: list[tuple[float, str]] = []

    class Counting(MemoryStore):
        def keepalive(self, lease: int) -> int:
            calls.append((scheduler.clock, "keepalive"))
            return super().keepalive(lease)

        def put(self, key: str, value: bytes, lease: int = 0) -> int:
            calls.append((scheduler.clock, key))
            return super().put(key, value, lease)

    discovery = Discovery(store=Counting(scheduler))
    for n in range(50):
        at(scheduler, 1 + n / 100, lambda n=n: discovery.register("api", make_host(n), ttl=3))
    scheduler.advance_to(10.5)
    keepalive_times = sorted({t for t, what in calls if what == "keepalive"})
    assert keepalive_times == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]  # every ttl/3
    assert sum(1 for _, what in calls if what == "keepalive") == 50 * len(keepalive_times)
    assert sum(1 for _, what in calls if what == "/services_infos/api") == 1


def test_a_refresh_that_fails_for_less_than_the_ttl_keeps_the_registration(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    registration = discovery.register("api", make_host(1), ttl=6)
    statuses = record(registration.status, scheduler)
    at(scheduler, 9, store.disconnect)  # type: ignore[attr-defined]
    at(scheduler, 11, store.reconnect)  # the refresh at 10 failed; the one at 12 is in time
    scheduler.advance_to(30)
    assert RegistrationStatus.LOST not in statuses.items
    assert registration.ready
    assert store.get(registration.key) is not None  # type: ignore[attr-defined]


def _counting_store(scheduler: TestScheduler, fail_service_puts: int = 0) -> tuple[
        object, list[tuple[float, str]]]:
    """A memory store that records its puts and grants (and fails the first
    ``fail_service_puts`` writes of a service key)."""
    from rx_discovery import StoreUnavailable
    from rx_discovery.store.memory import MemoryStore

    calls: list[tuple[float, str]] = []
    failures = [fail_service_puts]

    class Counting(MemoryStore):
        def put(self, key: str, value: bytes, lease: int = 0) -> int:
            calls.append((scheduler.clock, key))
            if key.startswith("/services_infos/") and failures[0] > 0:
                failures[0] -= 1
                raise StoreUnavailable("put: injected failure")
            return super().put(key, value, lease)

        def grant(self, ttl: int) -> Any:
            calls.append((scheduler.clock, "grant"))
            return super().grant(ttl)

    return Counting(scheduler), calls


def test_a_burst_of_registrations_shares_service_key_writes_and_the_last_document_wins(
        scheduler: TestScheduler) -> None:
    store, calls = _counting_store(scheduler)
    discovery = Discovery(store=store)  # type: ignore[arg-type]
    # the service document alternates (critical or not): each registration asks for its own
    registrations = []
    for n in range(50):
        at(scheduler, 1, lambda n=n: registrations.append(
            discovery.register("api", make_host(n, critical=n % 2 == 1), ttl=3)))
    scheduler.advance_to(5)
    assert all(r.ready for r in registrations)
    writes = [t for t, what in calls if what == "/services_infos/api"]
    assert 1 <= len(writes) <= 3, writes  # not one per registration
    assert all(b - a >= 0.05 - 1e-9 for a, b in itertools.pairwise(writes))
    stored = discovery.get("api").service()
    assert stored.critical is registrations[-1].host.critical  # the last request won


def test_a_failed_service_key_write_is_retried_and_the_lease_is_kept(
        scheduler: TestScheduler) -> None:
    store, calls = _counting_store(scheduler, fail_service_puts=2)
    discovery = Discovery(store=store)  # type: ignore[arg-type]
    registration = discovery.register("api", make_host(1), ttl=5)
    statuses = record(registration.status, scheduler)
    scheduler.advance_to(0.01)
    assert not registration.ready  # REGISTERED only once the service key is written
    assert discovery.store.get(registration.key) is not None  # the host key is there
    scheduler.advance_to(30)
    assert registration.ready
    assert statuses.items == [RegistrationStatus.REGISTERING, RegistrationStatus.REGISTERED]
    assert sum(1 for _, what in calls if what == "grant") == 1  # the same lease throughout
    assert sum(1 for _, what in calls if what == "/services_infos/api") == 3
    assert discovery.get("api").service().name == "api"
