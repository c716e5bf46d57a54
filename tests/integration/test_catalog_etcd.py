"""Discovery.catalog() on a real etcd (issue 12): one watch for the whole deployment."""

from __future__ import annotations

import threading

from helpers import Recorder, wait_until

from rx_discovery import Discovery
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.testing import make_host

WATCHERS = "etcd_debugging_mvcc_watcher_total"


def test_catalog_of_many_services_is_one_watch_and_follows_every_change(
        unique_prefix: str) -> None:
    # an etcd of its own, so that its watcher count holds only these two clients' watches
    with EmbeddedEtcd(name="catalog") as etcd, \
            Discovery(etcd.endpoint, prefix=unique_prefix) as writer, \
            Discovery(etcd.endpoint, prefix=unique_prefix) as reader:
        regs = [writer.register(f"svc-{i}", make_host(i), ttl=5) for i in range(30)]
        for registration in regs:
            registration.wait(10)
        reader.store.get("/warm-up")  # type: ignore[attr-defined]
        threads = threading.active_count()
        catalogs = Recorder()
        catalogs.subscription = reader.catalog().subscribe(catalogs)
        # subscribe() returned with the current catalog delivered
        first = catalogs.items[0]
        assert sorted(first) == sorted(f"svc-{i}" for i in range(30))
        assert all(list(first[f"svc-{i}"].hosts) == [regs[i].uuid] for i in range(30))
        assert all(first[f"svc-{i}"].service is not None for i in range(30))
        # etcd holds exactly the watches of the two clients (the writer's registrations
        # come and go with their groups), and the reader's whole catalog is one of them
        wait_until(lambda: reader.store._watches.count == 1  # type: ignore[attr-defined]
                   and etcd.metric(WATCHERS) == 1 + writer.store._watches.count,  # type: ignore[attr-defined]
                   timeout=10, message="one etcd watch for the catalog")
        extra = writer.register("svc-3", make_host(99), ttl=5).wait(10)
        regs[5].dispose()
        wait_until(lambda: set(catalogs.items[-1]["svc-3"].hosts) == {regs[3].uuid, extra.uuid}
                   and not catalogs.items[-1]["svc-5"].hosts, timeout=10)
        last = catalogs.items[-1]
        assert last["svc-5"].service is not None  # the service key stays (no lease)
        assert last.revision == reader.store.get_prefix("/").revision  # type: ignore[attr-defined]
        assert threading.active_count() - threads <= 3
        assert reader.store._watches.count == 1  # type: ignore[attr-defined]
        assert catalogs.error is None
        # the one-shot read agrees
        once = reader.read_catalog()
        assert {name: set(q.host_set()) for name, q in once.items()} == {
            name: set(entry.hosts) for name, entry in last.items()}
        catalogs.subscription.dispose()
        wait_until(lambda: reader.store._watches.count == 0,  # type: ignore[attr-defined]
                   timeout=5, message="the watch cancelled with the last subscriber")
