"""``python -m bench --only memory`` measures the HostSet that a service's stream keeps: built
the way the sync builds it, or its bytes per host are not ours."""

from __future__ import annotations

from reactivex.testing import TestScheduler

from bench.common import host_value
from bench.memory import ours_host_set
from rx_discovery import Discovery, HostSet


def test_the_memory_benchmark_builds_the_host_set_a_stream_keeps(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    service = "".join(["bi", "g"])  # built at run time: not an interned literal
    stored = [(f"/services/big/{uuid}", value)
              for uuid, value in (host_value("big", index) for index in range(3))]
    for key, value in stored:
        discovery.store.put(key, value)
    sets: list[HostSet] = []
    subscription = discovery.hosts(service).subscribe(sets.append)
    scheduler.advance_by(1)
    kept, built = sets[-1], ours_host_set(service, stored)
    assert dict(built) == dict(kept) and len(built) == 3
    for hosts in (kept, built):  # the same strings shared, as the stream shares them
        for uuid, host in hosts.items():
            assert host.uuid is uuid
            assert host.service_name is service
    subscription.dispose()
