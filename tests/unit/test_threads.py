"""Subscribing, disposing and resubscribing from many threads at once is safe."""

from __future__ import annotations

import threading

from helpers import wait_until

from rx_discovery import Discovery, HostSet
from rx_discovery.testing import make_host


def test_concurrent_subscribe_dispose_keeps_exactly_one_watch() -> None:
    with Discovery.in_memory() as discovery:
        store = discovery.store
        anchor: list[HostSet] = []
        keep = discovery.hosts("api").subscribe(anchor.append)
        wait_until(lambda: anchor, message="first snapshot")
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def churn() -> None:
            try:
                start.wait()
                for _ in range(200):
                    got: list[HostSet] = []
                    subscription = discovery.hosts("api").subscribe(got.append)
                    assert got, "a late subscriber gets the current set at once"
                    subscription.dispose()
            except BaseException as error:  # reported to the main thread
                errors.append(error)

        threads = [threading.Thread(target=churn) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads), "dead-locked (or 30 s of churn)"
        assert errors == []
        assert store.watch_count == 1  # type: ignore[attr-defined]
        keep.dispose()
        wait_until(lambda: store.watch_count == 0, message="the watch cancelled")


def test_concurrent_first_subscribers_share_one_watch() -> None:
    with Discovery.in_memory() as discovery:
        store = discovery.store
        store.put("/services/api/uuid-1", make_host(1).to_json().encode())
        start = threading.Barrier(8)
        received: list[list[HostSet]] = [[] for _ in range(8)]
        subscriptions = []
        lock = threading.Lock()

        def subscribe(i: int) -> None:
            start.wait()
            subscription = discovery.hosts("api").subscribe(received[i].append)
            with lock:
                subscriptions.append(subscription)

        threads = [threading.Thread(target=subscribe, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert not any(t.is_alive() for t in threads), "a first subscriber dead-locked"
        wait_until(lambda: all(received), message="every subscriber got the set")
        assert store.watch_count == 1  # type: ignore[attr-defined]
        assert all(sorted(r[0]) == ["uuid-1"] for r in received)
        for subscription in subscriptions:
            subscription.dispose()
        wait_until(lambda: store.watch_count == 0)


def test_late_joiners_on_many_threads_see_no_gap_and_no_repeat() -> None:
    with Discovery.in_memory() as discovery:
        store = discovery.store
        writes = 200
        received: list[list[HostSet]] = [[] for _ in range(6)]
        subscriptions = []

        def join(i: int) -> None:
            for n in range(i * 5):  # joining at different moments of the writes
                store.put(f"/services/api/warm-{i}-{n}", make_host(n).to_json().encode())
            subscriptions.append(discovery.hosts("api").subscribe(received[i].append))

        threads = [threading.Thread(target=join, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for n in range(writes):
            store.put(f"/services/api/uuid-{n}", make_host(n).to_json().encode())
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads)
        total = 200 + sum(i * 5 for i in range(6))
        wait_until(lambda: all(r and len(r[-1]) == total for r in received),
                   message="every subscriber caught up")
        for sets in received:
            sizes = [len(s) for s in sets]
            assert sizes == list(range(sizes[0], total + 1))  # one host per step: no gap
            revisions = [s.revision for s in sets]
            assert revisions == sorted(set(revisions))  # in order, no repeat
        for subscription in subscriptions:
            subscription.dispose()
