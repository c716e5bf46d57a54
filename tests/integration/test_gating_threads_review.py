"""Review (issue 15): the status changes of readiness gating (REGISTERING, WITHDRAWN) reach
observers on the delivery threads, as every other status does, never on an I/O thread (an
observer that blocks there would hold a thread the library's own work needs)."""

from __future__ import annotations

import threading

from helpers import wait_until
from reactivex.subject import Subject

from rx_discovery import Discovery, Host, RegistrationStatus
from rx_discovery.embedded import EmbeddedEtcd

S = RegistrationStatus


def test_gating_statuses_are_delivered_on_the_delivery_threads(
        etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    with Discovery(etcd.endpoint, prefix=unique_prefix) as discovery:
        healthy: Subject[bool] = Subject()
        seen: list[tuple[RegistrationStatus, threading.Thread]] = []
        registration = discovery.register("api", Host(hostname="gated", ports={"http": "1"}),
                                          healthy=healthy)
        registration.status.subscribe(lambda s: seen.append((s, threading.current_thread())))
        healthy.on_next(True)
        registration.wait(20)
        healthy.on_next(False)
        wait_until(lambda: registration.current_status is S.WITHDRAWN, 20.0, 0.01, "withdrawn")
        wait_until(lambda: seen[-1][0] is S.WITHDRAWN, 20.0, 0.01, "WITHDRAWN delivered")
        delivery = set(discovery._delivery_io.executor._threads)  # type: ignore[attr-defined]
        io = set(discovery._runtime.io.executor._threads)  # type: ignore[attr-defined]
        late = [(s.name, t.name) for s, t in seen[1:]]  # after the initial replay
        assert [s for s, _ in late] == ["REGISTERING", "REGISTERED", "WITHDRAWN"], late
        for status, thread in seen[1:]:
            assert thread in delivery and thread not in io, (status, thread)
