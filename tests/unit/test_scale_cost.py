"""What a watched service that never changes costs a process (issue 12), on the memory store.

The etcd side (one shared watch stream, so no thread per service) is measured by
tests/integration/test_etcd_watch_mux.py and ``python -m bench --only scale``.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from reactivex.testing import TestScheduler

from rx_discovery import Discovery
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
