"""What a watched service that never changes costs a process (issue 12), on the memory store.

The etcd side (one shared watch stream, so no thread per service) is measured by
tests/integration/test_etcd_watch_mux.py and ``python -m bench --only scale``.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import tracemalloc

import pytest
from reactivex.testing import TestScheduler

from rx_discovery import Discovery, HostSet
from rx_discovery.catalog import Catalog
from rx_discovery.testing import make_host

SERVICES = 300
# Measured 5.5 KB per service (a HostSet of one host included); 11.7 KB before the subscription
# layers were trimmed (an empty deque per subscriber, two reactivex subscription layers).
BYTES_PER_SERVICE = 10_000


@pytest.mark.slow
def test_an_idle_watched_service_costs_less_than_ten_kilobytes(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    for index in range(SERVICES):
        host = make_host(index)
        discovery.store.put(f"/services/s{index}/{host.uuid}", host.to_json().encode())
    subscriptions = [discovery.hosts("warm-up").subscribe(lambda _: None)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        subscriptions += [discovery.hosts(f"s{index}").subscribe(lambda _: None)
                          for index in range(SERVICES)]
        scheduler.advance_by(1)
        gc.collect()
        per_service = (tracemalloc.get_traced_memory()[0] - before) / SERVICES
    finally:
        tracemalloc.stop()
    assert per_service < BYTES_PER_SERVICE, per_service
    for subscription in subscriptions:
        subscription.dispose()


def test_a_watched_host_shares_its_uuid_with_its_id_and_its_service_name_with_the_stream(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    """Per host kept, one uuid string and no service name of its own (both built at run time
    here, so that no interning can make them the same objects by chance)."""
    service = "".join(["s", "vc"])
    for index in (1, 2):  # one read by the first read, one by the watch
        host = make_host(index, uuid="".join(["uuid-", str(index)]), service_name="svc")
        discovery.store.put(f"/services/svc/{host.uuid}", host.to_json().encode())
        if index == 1:
            sets: list[HostSet] = []
            subscription = discovery.hosts(service).subscribe(sets.append)
            scheduler.advance_by(1)
    scheduler.advance_by(1)
    assert len(sets[-1]) == 2
    for uuid, host in sets[-1].items():
        assert host.uuid is uuid
        assert host.service_name is service
    subscription.dispose()


def test_a_catalog_host_shares_its_uuid_with_its_id_in_the_first_catalog_and_after(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    """As a service's own stream: one uuid string per host kept by the catalog, whether the
    host came with the first catalog or a change after it (uuids built at run time)."""
    def put(index: int) -> None:
        host = make_host(index, uuid="".join(["uuid-", str(index)]), service_name="svc")
        discovery.store.put(f"/services/svc/{host.uuid}", host.to_json().encode())

    put(1)
    catalogs: list[Catalog] = []
    subscription = discovery.catalog().subscribe(catalogs.append)
    scheduler.advance_by(1)
    first = catalogs[-1].hosts("svc")
    put(2)
    scheduler.advance_by(1)
    after = catalogs[-1].hosts("svc")
    assert len(first) == 1 and len(after) == 2
    for uuid, host in (*after.items(), *first.items()):
        assert host.uuid is uuid, uuid
    subscription.dispose()


def test_a_process_that_only_watches_never_imports_what_only_writing_or_html_needs() -> None:
    """dataclasses-json with marshmallow (~2.7 MB and ~5,000 objects each full garbage
    collection walks), ``html`` (~0.5 MB of entities), ``unicodedata`` and h2 (~1.4 MB and
    ~1,700 objects) are imported when first needed: an encode, a notebook view, a non-ASCII
    key, a lease keepalive. Run in a fresh interpreter."""
    script = textwrap.dedent("""
        import sys
        from reactivex.testing import TestScheduler
        from rx_discovery import Discovery, Host
        scheduler = TestScheduler()
        discovery = Discovery.in_memory(scheduler)
        text = b'{"name":"n","service_name":"svc","ports":{"http":"80"},"uuid":"u-1"}'
        discovery.store.put("/services/svc/u-1", text)
        sets = []
        discovery.hosts("svc").subscribe(sets.append)
        scheduler.advance_by(1)
        assert sets[-1]["u-1"] == Host.from_json(text), sets
        Discovery(endpoints=["http://127.0.0.1:9"]).close()  # an etcd store: no I/O made
        late = {"dataclasses_json", "marshmallow", "html", "unicodedata", "h2"} & set(
            sys.modules)
        print(sorted(late))
        assert sets[-1]["u-1"].to_json() == text.decode()  # then it is imported, and works
        sets[-1]._repr_html_()
        print(sorted({"dataclasses_json", "html"} & set(sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "['dataclasses_json', 'html']"], out
