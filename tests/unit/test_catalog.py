"""Discovery.catalog(): the whole deployment from one watch, in virtual time (issue 12).

One unit of virtual time is one second; the in-memory store has etcd's semantics (revisions,
leases, compaction, disconnects).
"""

from __future__ import annotations

from reactivex.testing import TestScheduler

from rx_discovery import Discovery, Host
from rx_discovery.catalog import Catalog
from rx_discovery.testing import make_host, record


def at(scheduler: TestScheduler, time: float, action: object) -> None:
    scheduler.schedule_absolute(time, lambda *_: action())  # type: ignore[operator]


def view(catalog: Catalog) -> dict[str, tuple[list[str], str | None]]:
    """``name -> (sorted uuids, service document's name or None)``."""
    return {name: (sorted(entry.hosts), entry.service.name if entry.service else None)
            for name, entry in sorted(catalog.items())}


def put_host(discovery: Discovery, service: str, host: Host) -> int:
    key = discovery.keyspace.host_key(service, host.uuid)
    return discovery.store.put(key, host.to_json().encode())


def test_current_catalog_at_once_then_every_change_from_one_watch(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    api = discovery.register("api", make_host(1))
    scheduler.advance_to(1)
    watches = store.watch_count  # type: ignore[attr-defined]  # the registration's own
    catalogs = record(discovery.catalog(), scheduler)
    assert store.watch_count == watches + 1  # type: ignore[attr-defined]
    regs = {}
    at(scheduler, 10, lambda: regs.setdefault("db", discovery.register("db", make_host(2))))
    at(scheduler, 20, lambda: regs.setdefault("api", discovery.register("api", make_host(3))))
    at(scheduler, 30, lambda: api.dispose())
    at(scheduler, 40, lambda: regs["db"].dispose())
    scheduler.advance_to(50)
    # a registration writes its host key, then its service key: each is one revision
    seen = [(t, view(c)) for t, c in catalogs.values]
    assert seen[0] == (1.0, {"api": (["uuid-1"], "api")})
    final = seen[-1][1]
    assert final == {"api": (["uuid-3"], "api"), "db": ([], "db")}
    assert {"api": (["uuid-1", "uuid-3"], "api"), "db": (["uuid-2"], "db")} in [v for _, v in seen]
    revisions = [c.revision for c in catalogs.items]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
    assert catalogs.items[-1].revision == store.revision  # type: ignore[attr-defined]
    assert catalogs.items[-1].changed == ("db",)
    assert catalogs.items[0].changed == ("api",)


def test_unchanged_services_keep_their_entry_and_changed_names_are_given(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    for index in range(3):
        put_host(discovery, f"s{index}", make_host(index))
    catalogs = record(discovery.catalog(), scheduler)
    first = catalogs.items[-1]
    put_host(discovery, "s1", make_host(7))
    scheduler.advance_to(1)
    second = catalogs.items[-1]
    assert second.changed == ("s1",)
    assert second["s0"] is first["s0"] and second["s2"] is first["s2"]
    assert sorted(second["s1"].hosts) == ["uuid-1", "uuid-7"]
    assert second["s1"].hosts.revision == second.revision
    assert sorted(first["s1"].hosts) == ["uuid-1"]  # values are immutable
    assert second.hosts("missing") == {} and "missing" not in second


def test_shared_by_subscribers_and_a_late_one_gets_the_current_catalog(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    first = record(discovery.catalog(), scheduler)
    put_host(discovery, "api", make_host(1))
    scheduler.advance_to(1)
    late = record(discovery.catalog(), scheduler)
    assert store.watch_count == 1  # type: ignore[attr-defined]
    assert [view(c) for c in late.items] == [{"api": (["uuid-1"], None)}]
    assert [view(c) for c in first.items] == [{}, {"api": (["uuid-1"], None)}]
    first.dispose()
    late.dispose()
    assert store.watch_count == 0  # type: ignore[attr-defined]


def test_gap_free_through_a_disconnect_and_a_compaction(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    store = discovery.store
    put_host(discovery, "api", make_host(1))
    catalogs = record(discovery.catalog(), scheduler)
    at(scheduler, 10, store.disconnect)  # type: ignore[attr-defined]
    # while disconnected (written through the store's other side): a host comes and goes,
    # another comes
    at(scheduler, 11, store.reconnect)  # type: ignore[attr-defined]
    at(scheduler, 11, lambda: put_host(discovery, "api", make_host(2)))
    at(scheduler, 11, lambda: put_host(discovery, "db", make_host(3)))
    at(scheduler, 11, lambda: store.delete(discovery.keyspace.host_key("api", "uuid-1")))
    at(scheduler, 11, store.compact)  # type: ignore[attr-defined]
    scheduler.advance_to(30)
    assert view(catalogs.items[-1]) == {"api": (["uuid-2"], None), "db": (["uuid-3"], None)}
    assert catalogs.items[-1].revision == store.revision  # type: ignore[attr-defined]
    assert not any(n.kind == "E" for _, n in catalogs.messages)


def test_malformed_values_are_skipped_and_reported(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    diagnostics = record(discovery.diagnostics, scheduler)
    catalogs = record(discovery.catalog(), scheduler)
    store = discovery.store
    store.put("/services/api/bad", b"{not json")
    store.put("/services/api/extra/segment", make_host(1).to_json().encode())
    store.put("/servicesX/other", b"ignored")
    store.put("/services_infos/api", b'{"name":"api","critical":false}')
    put_host(discovery, "api", make_host(2))
    scheduler.advance_to(1)
    assert view(catalogs.items[-1]) == {"api": (["uuid-2"], "api")}
    assert sorted(d.key for d in diagnostics.items) == [
        "/services/api/bad", "/services/api/extra/segment"]


def test_prefix_namespaces_the_catalog(scheduler: TestScheduler) -> None:
    discovery = Discovery.in_memory(scheduler, prefix="/prod")
    discovery.store.put("/services/api/uuid-9", make_host(9).to_json().encode())
    put_host(discovery, "api", make_host(1))
    catalogs = record(discovery.catalog(), scheduler)
    assert [view(c) for c in catalogs.items] == [{"api": (["uuid-1"], None)}]


def test_after_close_a_catalog_fails_at_once(scheduler: TestScheduler,
                                             discovery: Discovery) -> None:
    live = record(discovery.catalog(), scheduler)
    discovery.close()
    assert live.messages[-1][1].kind == "C"
    late = record(discovery.catalog(), scheduler)
    assert late.messages[0][1].kind == "E"
