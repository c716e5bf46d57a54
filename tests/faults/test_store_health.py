"""What ``health`` shows for each fault of the etcd store, on real etcd processes.

CONNECTING before the first answer, CONNECTED, RECONNECTING on transient failures of calls,
watch streams and keepalives, UNAVAILABLE after a while, DENIED for permanent refusals (see
also tests/faults/test_security.py: wrong password, RBAC, untrusted certificate), CLOSED.
The README's Operations table lists the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from faultkit import subscribe
from helpers import wait_until

from rx_discovery._errors import RequestTooLarge, StoreError, StoreUnavailable
from rx_discovery.config import Settings
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.health import HealthState
from rx_discovery.store.etcd import EtcdStore

UNAVAILABLE_AFTER = 1.0


@pytest.fixture
def server() -> Iterator[EmbeddedEtcd]:
    with EmbeddedEtcd(name="health") as etcd:
        yield etcd


def store_on(endpoint: str) -> EtcdStore:
    store = EtcdStore(Settings.build(endpoint, timeout=1))
    store._health._unavailable_after = UNAVAILABLE_AFTER  # seconds, instead of 10
    return store


def watch_health(store: EtcdStore) -> Any:
    """A recorder of ``store.health`` that :func:`state` and :func:`states` settle first:
    health reaches observers on a thread of its own."""
    recorder = subscribe(store.health)
    recorder.store = store
    return recorder


def state(recorder: Any) -> HealthState:
    recorder.store._health._settle()
    return recorder.items[-1].state  # type: ignore[no-any-return]


def states(recorder: Any) -> list[HealthState]:
    """The states in order, repeats (a new reason) folded."""
    recorder.store._health._settle()
    out: list[HealthState] = []
    for health in recorder.items:
        if not out or out[-1] is not health.state:
            out.append(health.state)
    return out


def fails(call: Callable[[], object]) -> StoreError:
    try:
        call()
    except StoreError as error:
        return error
    raise AssertionError("the call succeeded")


def test_calls_connecting_connected_reconnecting_unavailable_connected_closed(
        server: EmbeddedEtcd) -> None:
    store = store_on(server.endpoint)
    health = watch_health(store)
    assert states(health) == [HealthState.CONNECTING]  # no I/O yet
    store.put("/h/a", b"1")
    assert state(health) is HealthState.CONNECTED
    server.kill()
    assert isinstance(fails(lambda: store.get("/h/a")), StoreUnavailable)
    assert state(health) is HealthState.RECONNECTING
    assert health.items[-1].reason  # why, for people
    wait_until(lambda: isinstance(fails(lambda: store.get("/h/a")), StoreUnavailable)
               and state(health) is HealthState.UNAVAILABLE, timeout=UNAVAILABLE_AFTER + 10,
               interval=0.2, message="UNAVAILABLE after failing for a while")
    server.restart()
    wait_until(lambda: served(store), timeout=10, interval=0.1)
    assert state(health) is HealthState.CONNECTED
    store.close()
    assert states(health) == [HealthState.CONNECTING, HealthState.CONNECTED,
                              HealthState.RECONNECTING, HealthState.UNAVAILABLE,
                              HealthState.CONNECTED, HealthState.CLOSED]
    assert health.completed


def served(store: EtcdStore) -> bool:
    try:
        store.get("/h/a")
    except StoreUnavailable:
        return False
    return True


def test_watches_alone_report_health(server: EmbeddedEtcd) -> None:
    """No unary call at all: the watch stream's creation and failures drive health."""
    store = store_on(server.endpoint)
    health = watch_health(store)
    watch = subscribe(store.watch("/w/", 1))
    wait_until(lambda: state(health) is HealthState.CONNECTED, timeout=10,
               message="CONNECTED once the watch is created")
    server.kill()
    wait_until(lambda: watch.error is not None, timeout=10)
    assert state(health) is HealthState.RECONNECTING

    def rewatch() -> bool:
        """Watch again, as a sync retries, and see the failure reported."""
        subscribe(store.watch("/w/", 1))
        return state(health) is HealthState.UNAVAILABLE

    wait_until(rewatch, timeout=UNAVAILABLE_AFTER + 10, interval=0.3,
               message="UNAVAILABLE from failing watches")
    server.restart()
    again = subscribe(store.watch("/w/", 1))
    wait_until(lambda: state(health) is HealthState.CONNECTED or again.error is not None,
               timeout=10)
    assert again.error is None
    store.close()
    assert states(health)[-1] is HealthState.CLOSED


def test_keepalives_alone_report_health(server: EmbeddedEtcd) -> None:
    store = store_on(server.endpoint)
    lease = store.grant(30).id
    health = watch_health(store)
    assert store.keepalive_many([lease]) == {lease: None}
    server.kill()
    outcome = store.keepalive_many([lease])[lease]
    assert isinstance(outcome, StoreUnavailable)
    assert state(health) is HealthState.RECONNECTING
    server.restart()
    wait_until(lambda: store.keepalive_many([lease]) == {lease: None}, timeout=10,
               interval=0.2)
    assert state(health) is HealthState.CONNECTED
    store.close()


def test_a_value_over_the_request_limit_is_denied_for_its_key(server: EmbeddedEtcd) -> None:
    store = store_on(server.endpoint)
    health = watch_health(store)
    store.put("/big/ok", b"1")
    for size in (1_600_000, 3_000_000):  # etcd's limit (1.5 MiB), gRPC's server limit (2 MiB)
        error = fails(lambda size=size: store.put("/big/value", b"x" * size))  # type: ignore[misc]
        assert isinstance(error, RequestTooLarge) and error.permanent, repr(error)
    assert state(health) is HealthState.DENIED
    store.get("/big/ok")  # served elsewhere: the denial of /big/value stands
    assert state(health) is HealthState.DENIED
    store.put("/big/value", b"small")  # served where it was denied
    assert state(health) is HealthState.CONNECTED
    store.close()


def test_an_endpoint_that_is_not_etcd_is_denied(server: EmbeddedEtcd) -> None:
    """The metrics port answers HTTP/1: calls and keepalives say "not an etcd endpoint"."""
    store = store_on(server.metrics_url)
    health = watch_health(store)
    for call in (lambda: store.get("/k"), lambda: store.keepalive(1)):
        error = fails(call)
        assert error.permanent and "not an etcd endpoint" in str(error), repr(error)
    assert state(health) is HealthState.DENIED
    assert "not an etcd endpoint" in health.items[-1].reason
    store.close()


def test_etcd_down_from_the_start_is_connecting_then_unavailable() -> None:
    never = EmbeddedEtcd(name="never")  # never started: its port is free
    store = store_on(never.endpoint)
    health = watch_health(store)
    assert isinstance(fails(lambda: store.get("/k")), StoreUnavailable)
    assert state(health) is HealthState.CONNECTING
    assert health.items[-1].reason  # why: the last failure
    wait_until(lambda: isinstance(fails(lambda: store.get("/k")), StoreUnavailable)
               and state(health) is HealthState.UNAVAILABLE, timeout=UNAVAILABLE_AFTER + 10,
               interval=0.2, message="UNAVAILABLE after failing for a while")
    assert states(health) == [HealthState.CONNECTING, HealthState.UNAVAILABLE]
    store.close()


def test_a_grpc_server_without_etcds_services_is_denied() -> None:
    """An HTTP/2 gRPC server that is not etcd (wrong port, another service): UNIMPLEMENTED for
    calls, keepalives and watches alike, reported as a configuration error, not retried as
    'unavailable'."""
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        store = store_on(f"http://127.0.0.1:{port}")
        health = watch_health(store)
        for call in (lambda: store.get("/k"), lambda: store.keepalive(1),
                     lambda: store.grant(5)):
            error = fails(call)
            assert error.permanent and "not an etcd endpoint" in str(error), repr(error)
        watch = subscribe(store.watch("/k/", 1))
        wait_until(lambda: watch.error is not None, timeout=10)
        assert getattr(watch.error, "permanent", False), repr(watch.error)
        assert state(health) is HealthState.DENIED
        assert "not an etcd endpoint" in health.items[-1].reason
        store.close()
    finally:
        server.stop(None)



def test_a_health_observer_that_blocks_holds_no_library_thread(server: EmbeddedEtcd) -> None:
    """A user's health observer doing slow work (an alert over HTTP that hangs) ran on the
    thread that saw the change: here a call, which then blocked far beyond its timeout; the
    same happens to a watch reader (its stream is not reopened meanwhile) and to the lease
    keeper's thread (every keepalive of that TTL stops, and the leases expire)."""
    import threading
    import time

    release = threading.Event()
    store = store_on(server.endpoint)  # timeout 1 s
    try:
        store.health.subscribe(lambda health: health.state is HealthState.CONNECTED
                               and release.wait(10))
        started = time.monotonic()
        store.get("/k")  # the first answer: CONNECTING -> CONNECTED
        assert time.monotonic() - started < 1 + 2, "the call waited for a user's observer"
    finally:
        release.set()
        store.close()
