"""The only etcd member frozen (SIGSTOP), then thawed (SIGCONT).

A frozen server keeps its TCP connections open but answers nothing: only deadlines and gRPC
keepalive reveal it. The registration must notice within its keepalive budget (no refresh for
a whole ttl, each call bounded by the Discovery's timeout) and report LOST, then recover to
REGISTERED after the resume; a put made by another client right after the resume is seen, and
the watcher's changes are exactly etcd's history (nothing lost while frozen).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from faultkit import (
    assert_gap_free,
    healthy_stream,
    host,
    live_lease,
    raw_client,
    subscribe,
    truth,
)
from helpers import wait_until

from rx_discovery import Discovery, RegistrationStatus, _runtime
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.health import HealthState

SERVICE = "svc"
PREFIX = f"/services/{SERVICE}/"
TTL = 3
TIMEOUT = 2.0  # the Discovery's per-call deadline
SLACK = 3.0


def test_pause_is_noticed_and_resume_recovers() -> None:
    with EmbeddedEtcd(name="frozen") as server, \
            Discovery(server.endpoint, timeout=TIMEOUT) as registrar, \
            Discovery(server.endpoint, timeout=TIMEOUT) as watcher:
        changes = subscribe(watcher.changes(SERVICE))
        events = subscribe(watcher.events(SERVICE))
        wait_until(lambda: changes.items, message="first snapshot")
        registration = registrar.register(SERVICE, host(1), ttl=TTL).wait(10)
        statuses = subscribe(registration.status)
        wait_until(lambda: ("new", registration.uuid) in [(e.kind, e.uuid) for e in events.items])
        registrar_health = subscribe(registrar.health)
        watcher_health = subscribe(watcher.health)
        assert registrar_health.items[-1].state is HealthState.CONNECTED
        assert watcher_health.items[-1].state is HealthState.CONNECTED

        server.pause()
        paused = time.monotonic()
        # the last refresh was at most ttl/3 ago; the registration gives up on it after a whole
        # ttl without one, and each blocked call ends after TIMEOUT
        wait_until(lambda: RegistrationStatus.LOST in statuses.items,
                   timeout=TTL + TIMEOUT + SLACK, message="LOST while etcd is frozen")
        noticed = time.monotonic() - paused
        assert noticed <= TTL + TIMEOUT + SLACK
        assert not registration.ready
        # health says so: the registrar's keepalives time out; the watcher, which only
        # watches, learns it from gRPC keepalive (6 s ping + 2 s timeout)
        wait_until(lambda: registrar_health.items[-1].state in (  # (on the health thread)
            HealthState.RECONNECTING, HealthState.UNAVAILABLE), timeout=5,
            message="the registrar's health says etcd is not answering")
        wait_until(lambda: watcher_health.items[-1].state in (
            HealthState.RECONNECTING, HealthState.UNAVAILABLE), timeout=8 + SLACK + TIMEOUT,
            message="the watcher's health after its stream broke")

        server.resume()
        raw = raw_client(server.endpoint)
        try:
            manual = host("manual", uuid="manual-1")
            raw.put(PREFIX + "manual-1", manual.to_json())  # right after the resume
            wait_until(lambda: ("new", "manual-1") in [(e.kind, e.uuid) for e in events.items],
                       timeout=10, message="the put made right after the resume")
            wait_until(lambda: statuses.items[-1] is RegistrationStatus.REGISTERED, timeout=10,
                       message="REGISTERED again after the resume")
            lost_at = statuses.items.index(RegistrationStatus.LOST)
            assert statuses.items[lost_at:] == [RegistrationStatus.LOST,
                                                RegistrationStatus.REGISTERED]
            wait_until(lambda: live_lease(raw, registration.key), timeout=5)
            wait_until(lambda: set(changes.items[-1].items) == set(truth(raw, PREFIX)),
                       timeout=10, message="watcher equal to etcd")
        finally:
            raw.close()
        state = assert_gap_free(changes, server.endpoint, PREFIX)
        assert set(state) == {registration.uuid, "manual-1"}
        assert healthy_stream(changes) and healthy_stream(events)
        for health in (registrar_health, watcher_health):
            wait_until(lambda h=health: h.items[-1].state is HealthState.CONNECTED, timeout=10,
                       message="CONNECTED after the resume")


def test_close_while_a_registration_is_blocked_on_a_frozen_server_is_quiet(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    finished = threading.Event()  # the first background _register has returned (or raised)
    guard = _runtime._guard

    def watching_guard(action: Callable[[], None]) -> None:
        try:
            guard(action)
        finally:
            if getattr(action, "__name__", "") == "_register":
                finished.set()

    monkeypatch.setattr(_runtime, "_guard", watching_guard)
    with EmbeddedEtcd(name="frozen-close") as server:
        discovery = Discovery(server.endpoint, timeout=TIMEOUT)
        in_flight = threading.Event()
        read = discovery.store.get_prefix

        def signalling_read(prefix: str) -> Any:
            in_flight.set()
            return read(prefix)

        # a registration first reads its service's hosts, then grants and puts
        monkeypatch.setattr(discovery.store, "get_prefix", signalling_read)
        server.pause()  # the read connects, then waits for an answer that never comes
        try:
            registration = discovery.register(SERVICE, host(1), ttl=TTL)
            assert in_flight.wait(5), "the registration's first call never started"
            started = time.monotonic()
            discovery.close()
            assert time.monotonic() - started < TIMEOUT + 1
            assert registration.current_status is RegistrationStatus.DISPOSED
            assert finished.wait(TIMEOUT + 1), "the blocked registration never ended"
        finally:
            server.resume()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
