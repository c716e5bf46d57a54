"""A 3-member cluster loses its leader (kill -9), then gets it back.

Registrations keep their keys (or heal), watches keep delivering (a host registered after the
kill is seen within seconds), and every change seen before, during and after the failover is
exactly etcd's history (no event lost or repeated).
"""

from __future__ import annotations

from faultkit import assert_gap_free, healthy_stream, host, live_lease, raw_client, subscribe, truth
from helpers import wait_until

from rx_discovery import Discovery
from rx_discovery.embedded import EmbeddedEtcdCluster

SERVICE = "svc"
PREFIX = f"/services/{SERVICE}/"
TTL = 3
SEEN_WITHIN = 8.0  # "a few seconds": election + failover of the watch + a loaded machine


def test_leader_killed_and_brought_back() -> None:
    with EmbeddedEtcdCluster(3) as cluster:
        first = cluster.leader()
        # the leader first: both clients talk to it, so its death forces a failover
        endpoints = [first.endpoint] + [m.endpoint for m in cluster.members if m is not first]
        with Discovery(endpoints, timeout=2) as registrar, \
                Discovery(endpoints, timeout=2) as watcher:
            run(cluster, registrar, watcher)


def run(cluster: EmbeddedEtcdCluster, registrar: Discovery, watcher: Discovery) -> None:
    """The scenario, on clients that talk to the (first) leader first."""
    changes = subscribe(watcher.changes(SERVICE))
    sets = subscribe(watcher.hosts(SERVICE))
    news = subscribe(watcher.subscribe_new(SERVICE))
    wait_until(lambda: changes.items and sets.items, message="first snapshot")
    before = [registrar.register(SERVICE, host(f"before-{n}"), ttl=TTL) for n in range(5)]
    for registration in before:
        registration.wait(10)
    wait_until(lambda: {r.uuid for r in before} <= set(sets.items[-1]))

    leader = cluster.leader()  # the same one, unless an election happened meanwhile
    survivor = next(m for m in cluster.members if m is not leader)
    leader.kill()

    after = registrar.register(SERVICE, host("after-kill"), ttl=TTL)
    wait_until(lambda: after.uuid in {h.uuid for h in news.items}, timeout=SEEN_WITHIN,
               message="a host registered after the kill seen by the watcher")
    raw = raw_client(survivor.endpoint)
    try:
        wait_until(lambda: all(r.ready and live_lease(raw, r.key) for r in [*before, after]),
                   timeout=TTL + 5, interval=0.1,
                   message="registrations keep (or heal) their keys")
        wait_until(lambda: set(sets.items[-1]) == set(truth(raw, PREFIX)), timeout=TTL + 5)
    finally:
        raw.close()
    assert_gap_free(changes, survivor.endpoint, PREFIX)

    leader.restart()
    cluster.wait_ready()
    cluster.leader()
    back = registrar.register(SERVICE, host("leader-back"), ttl=TTL)
    before[0].dispose()
    wait_until(lambda: back.uuid in {h.uuid for h in news.items}
               and before[0].uuid not in sets.items[-1], timeout=SEEN_WITHIN,
               message="changes after the leader came back")
    # the restarted member has caught up: its history is the same
    state = assert_gap_free(changes, leader.endpoint, PREFIX)
    raw = raw_client(leader.endpoint)
    try:
        wait_until(lambda: set(truth(raw, PREFIX)) == set(state) == set(sets.items[-1]))
    finally:
        raw.close()
    assert {r.uuid for r in [*before[1:], after, back]} == set(state)
    assert all(map(healthy_stream, (changes, sets, news)))
