"""A network outage longer than the ttl between the registering process and etcd.

etcd itself stays up (a restarted server renews every lease's TTL, so only a cut network makes
a lease expire): the lease expires on the server, a watcher with its own direct connection sees
the host go down; the registration reports LOST, and after the network comes back it
re-registers (REGISTERED, a new lease) and the watcher sees the host come back.
"""

from __future__ import annotations

from faultkit import assert_gap_free, healthy_stream, host, live_lease, raw_client, subscribe
from helpers import wait_until

from rx_discovery import Discovery, RegistrationStatus
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.testing import TcpProxy

SERVICE = "svc"
PREFIX = f"/services/{SERVICE}/"
TTL = 2  # etcd's minimum
SLACK = 4.0


def test_outage_longer_than_the_ttl_re_registers() -> None:
    with EmbeddedEtcd(name="lease-lost") as server, \
            TcpProxy(server.client_port) as proxy, \
            Discovery(proxy.endpoint, timeout=1) as registrar, \
            Discovery(server.endpoint, timeout=2) as watcher:
        changes = subscribe(watcher.changes(SERVICE))
        events = subscribe(watcher.events(SERVICE))
        wait_until(lambda: changes.items, message="first snapshot")
        registration = registrar.register(SERVICE, host(1), ttl=TTL).wait(10)
        statuses = subscribe(registration.status)
        raw = raw_client(server.endpoint)
        try:
            first_lease = raw.get(registration.key)[1].lease_id
            wait_until(lambda: [(e.kind, e.uuid) for e in events.items]
                       == [("new", registration.uuid)])

            proxy.cut()
            wait_until(lambda: [(e.kind, e.uuid) for e in events.items][-1:]
                       == [("down", registration.uuid)], timeout=TTL + SLACK,
                       message="the watcher sees the host down when its lease expires")
            assert raw.get(registration.key)[0] is None
            wait_until(lambda: RegistrationStatus.LOST in statuses.items, timeout=TTL + SLACK,
                       message="the registration reports LOST")

            proxy.restore()
            wait_until(lambda: statuses.items[-1] is RegistrationStatus.REGISTERED,
                       timeout=10, message="REGISTERED after the network is back")
            assert statuses.items == [RegistrationStatus.REGISTERED, RegistrationStatus.LOST,
                                      RegistrationStatus.REGISTERED]
            wait_until(lambda: [(e.kind, e.uuid) for e in events.items]
                       == [("new", registration.uuid), ("down", registration.uuid),
                           ("new", registration.uuid)], timeout=5,
                       message="the watcher sees down then new")
            assert live_lease(raw, registration.key)
            assert raw.get(registration.key)[1].lease_id != first_lease
        finally:
            raw.close()
        assert_gap_free(changes, server.endpoint, PREFIX)
        assert healthy_stream(changes) and healthy_stream(events)
