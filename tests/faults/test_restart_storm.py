"""kill -9 and restart the only etcd member five times under load.

20 registrations are held while a churn thread registers and disposes other hosts of the same
service. After each recovery: every held registration is back (key present, lease TTL > 0)
within ttl + slack; every subscriber's latest state equals what etcd holds; and the changes
each subscriber saw are exactly etcd's history since its first snapshot (no gap, no repeat,
revisions strictly increasing, replay reproduces the truth).
"""

from __future__ import annotations

import time

import etcd3
from faultkit import (
    Churn,
    assert_gap_free,
    healthy_stream,
    host,
    live_lease,
    raw_client,
    replay_events,
    subscribe,
    truth,
)
from helpers import wait_until

from rx_discovery import Discovery
from rx_discovery.embedded import EmbeddedEtcd

SERVICE = "svc"
PREFIX = f"/services/{SERVICE}/"
TTL = 3
SLACK = 4  # restart of the gRPC connection, backoff, a loaded 2-core machine
HELD = 20
KILLS = 5


def test_kill_and_restart_five_times_loses_nothing() -> None:
    with EmbeddedEtcd(name="storm") as server, \
            Discovery(server.endpoint, timeout=2) as holder, \
            Discovery(server.endpoint, timeout=1) as churner, \
            Discovery(server.endpoint, timeout=2) as watcher_a, \
            Discovery(server.endpoint, timeout=2) as watcher_b:
        changes_a = subscribe(watcher_a.changes(SERVICE))
        sets_a = subscribe(watcher_a.hosts(SERVICE))
        changes_b = subscribe(watcher_b.changes(SERVICE))
        wait_until(lambda: changes_a.items and sets_a.items and changes_b.items,
                   message="first snapshots")
        events_b = subscribe(watcher_b.events(SERVICE))
        start_b = changes_b.items[0].items

        held = [holder.register(SERVICE, host(f"held-{n}"), ttl=TTL) for n in range(HELD)]
        for registration in held:
            registration.wait(10)
        churn = Churn(churner, SERVICE, ttl=TTL).start()
        try:
            for cycle in range(KILLS):
                busy = churn.operations
                wait_until(lambda b=busy: churn.operations >= b + 10, timeout=10,
                           message="churn running before the kill")
                server.kill()
                server.restart()
                recovered = time.monotonic()
                raw = raw_client(server.endpoint)
                try:
                    def all_back(raw: etcd3.Etcd3Client = raw) -> bool:
                        return all(r.ready and live_lease(raw, r.key) for r in held)

                    wait_until(all_back, timeout=TTL + SLACK, interval=0.1,
                               message=f"every held registration back (cycle {cycle})")
                    assert time.monotonic() - recovered <= TTL + SLACK

                    churn.pause()  # the truth settles: at most one ttl of stale churn leases

                    def converged(raw: etcd3.Etcd3Client = raw) -> bool:
                        now = set(truth(raw, PREFIX))
                        return (set(sets_a.items[-1]) == now
                                and set(changes_b.items[-1].items) == now
                                and set(replay_events(start_b, events_b.items)) == now)

                    wait_until(converged, timeout=TTL + SLACK, interval=0.1,
                               message=f"subscribers equal to etcd (cycle {cycle})")
                finally:
                    raw.close()
                # churn registrations still retrying in the background may land meanwhile:
                # the replay is compared with etcd at the revision the history ends
                for recorder in (changes_a, changes_b):
                    assert_gap_free(recorder, server.endpoint, PREFIX)
                assert all(map(healthy_stream, (changes_a, sets_a, changes_b, events_b)))
                churn.resume()
        finally:
            churn.stop()
        assert not churn.errors, churn.errors
        assert churn.operations > KILLS * 10
        # the history checked was not trivial: churn hosts came and went in every cycle
        churn_seen = {uuid for change in changes_a.items for uuid in change.added
                      if "churn-" in uuid}
        assert len(churn_seen) >= KILLS, len(churn_seen)
        assert {r.uuid for r in held} <= set(sets_a.items[-1])
