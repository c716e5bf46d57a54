"""Registration outcomes that surviving mutants of ``registration.py`` got wrong (issue 17).

Each test asserts what a user sees (status, reason, keys and leases in the store, credentials,
timings) in virtual time on a TestScheduler with the in-memory store; the mutants each one
kills are named in its docstring (``mutmut run 'rx_discovery.registration.*NAME*'``). The
mutants that cannot change behaviour are listed in ``docs/mutants-registration.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from typing import Any

import pytest
import reactivex
from helpers import wait_until
from reactivex.subject import BehaviorSubject
from reactivex.testing import TestScheduler
from test_registration_marble import at, run_due_now, stored_host, wipe

from rx_discovery import (
    AuthenticationFailed,
    Credentials,
    Discovery,
    Host,
    PermissionDenied,
    Registration,
    RegistrationError,
    RegistrationStatus,
    StoreUnavailable,
)
from rx_discovery.model import Service
from rx_discovery.store.memory import MemoryStore
from rx_discovery.testing import make_host, record

DB_KEY = "/services_infos/db"


def public(n: int, user: str, password: str) -> Host:
    return make_host(n, public=True, user=user, password=password, private_hostname="node")


def rotate(store: MemoryStore, user: str, password: str) -> None:
    """Another host of ``db`` writes new credentials into the service key."""
    current = Service.from_json(store.get(DB_KEY).value)
    store.put(DB_KEY, dataclasses.replace(current, user=user, password=password)
              .to_json().encode())


class Hooked(MemoryStore):
    """A memory store whose calls can be watched or made to fail, per operation."""

    def __init__(self, scheduler: TestScheduler) -> None:
        super().__init__(scheduler)
        self.clock = scheduler
        self.on_grant: Any = None  # called inside grant(), before it grants
        self.before_host_put: Any = None  # called once inside a host put, before the write
        self.after_host_put: Any = None  # called once inside a host put, after the write
        self.during_service_put: Any = None  # called once inside a service key put, after it
        self.service_puts = 0
        self.host_put_error: Exception | None = None  # raised by host puts instead
        self.service_put_error: Exception | None = None  # raised by service key puts instead
        self.keepalive_error: Exception | None = None  # raised by keepalives instead
        self.answers_lost = False  # keepalives refresh the lease, then keepalive_error
        self.keepalives: list[tuple[float, int]] = []  # (time, lease)
        self.revoke_error: Exception | None = None  # raised by revokes instead

    def grant(self, ttl: int) -> Any:
        if self.on_grant is not None:
            self.on_grant()
        return super().grant(ttl)

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        if key.startswith("/services/") and self.before_host_put is not None:
            hook, self.before_host_put = self.before_host_put, None
            hook()
        if key.startswith("/services/") and self.host_put_error is not None:
            raise self.host_put_error
        if key.startswith("/services/") and self.after_host_put is not None:
            hook, self.after_host_put = self.after_host_put, None
            revision = super().put(key, value, lease)
            hook()
            return revision
        if key.startswith("/services_infos/") and self.service_put_error is not None:
            raise self.service_put_error
        revision = super().put(key, value, lease)
        if key.startswith("/services_infos/"):
            self.service_puts += 1
            hook, self.during_service_put = self.during_service_put, None
            if hook is not None:
                hook()
        return revision

    def revoke(self, lease: int) -> None:
        if self.revoke_error is not None:
            raise self.revoke_error
        super().revoke(lease)

    def keepalive(self, lease: int) -> int:
        self.keepalives.append((self.clock.clock, lease))
        if self.keepalive_error is None:
            return super().keepalive(lease)
        if self.answers_lost:
            super().keepalive(lease)
        raise self.keepalive_error


def _waits(thread: threading.Thread) -> bool:
    """True while ``thread`` waits on a condition (blocked in ``Condition.wait``)."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "wait":
            return True
        frame = frame.f_back
    return False


def refuse_grants() -> None:
    """A ``Hooked.on_grant`` for an etcd that cannot be reached."""
    raise StoreUnavailable("grant: connection refused")


def reasons_while_registering_again(store: Hooked, registration: Registration
                                    ) -> list[tuple[RegistrationStatus, str]]:
    """(status, reason) as a user reading them sees them while the registration grants its
    next lease (the heal in flight)."""
    seen: list[tuple[RegistrationStatus, str]] = []
    store.on_grant = lambda: seen.append((registration.current_status, registration.reason))
    return seen


# --- why a registration was lost: LOST's reason, read while it heals -------------------------

def test_a_deleted_key_is_lost_with_the_reason_its_key_was_deleted(
        scheduler: TestScheduler) -> None:
    """Mutants: the LOST reason dropped (``_enter(LOST, None)``) or changed."""
    store = Hooked(scheduler)
    registration = Discovery(store=store).register("api", make_host(1), ttl=6)
    scheduler.advance_to(1)
    seen = reasons_while_registering_again(store, registration)
    at(scheduler, 3, lambda: store.delete(registration.key))
    scheduler.advance_to(4)
    assert seen == [(RegistrationStatus.LOST, "lost: its key was deleted")]
    assert registration.ready and registration.reason == ""


def test_a_key_deleted_before_its_put_returned_is_lost_with_the_reason_it_was_deleted(
        scheduler: TestScheduler) -> None:
    """Mutants: the LOST reason of a deletion the watch delivered while the put was in
    flight (None, changed)."""
    store = Hooked(scheduler)
    registration = Discovery(store=store).register("api", make_host(1), ttl=6)

    seen: list[tuple[RegistrationStatus, str]] = []

    def deleted_at_once() -> None:
        store.delete(registration.key)
        run_due_now(scheduler)  # the watch delivers it before the put returns
        store.on_grant = lambda: seen.append((registration.current_status,
                                              registration.reason))  # the heal's grant

    store.after_host_put = deleted_at_once
    scheduler.advance_to(1)
    assert seen == [(RegistrationStatus.LOST, "lost: its key was deleted")]
    assert registration.ready


def test_a_lease_gone_at_a_refresh_is_lost_with_the_reason_the_lease_expired(
        scheduler: TestScheduler) -> None:
    """Mutants: ``_keepalive_failed``'s LeaseNotFound reason (None, changed)."""
    store = Hooked(scheduler)
    registration = Discovery(store=store).register("api", make_host(1), ttl=6)
    scheduler.advance_to(1)
    seen = reasons_while_registering_again(store, registration)
    at(scheduler, 3, lambda: wipe(store))  # no watch event: the refresh at 4 finds out
    scheduler.advance_to(5)
    assert seen == [(RegistrationStatus.LOST, "lost: the lease expired or was revoked")]
    assert registration.ready


def test_keepalives_failing_from_the_first_are_lost_a_ttl_after_the_put(
        scheduler: TestScheduler) -> None:
    """Mutant: no time recorded for the put (``_last_refresh = None``): the first failed
    refresh raised in its task and the loss was never seen."""
    store = Hooked(scheduler)
    store.answers_lost = True
    store.keepalive_error = StoreUnavailable("timeout")
    registration = Discovery(store=store).register("api", make_host(1), ttl=6)
    statuses = record(registration.status, scheduler)
    scheduler.advance_to(6.5)  # refreshes at 2, 4, 6 fail; registered at 0
    assert [t for t, status in statuses.values if status is RegistrationStatus.LOST] == [6.0]


def test_keepalives_failing_for_a_whole_ttl_are_lost_exactly_a_ttl_after_the_last_refresh(
        scheduler: TestScheduler) -> None:
    """Mutants: ``>=`` made ``>`` (LOST one refresh later, 2 s past the ttl), and the reason
    dropped or changed. The refreshes reach etcd but their answers are lost: the lease and
    the key stay, only the registration's own count tells it is lost."""
    store = Hooked(scheduler)
    store.answers_lost = True
    registration = Discovery(store=store).register("api", make_host(1), ttl=6)
    statuses = record(registration.status, scheduler)
    scheduler.advance_to(1)  # refreshed at 2, 4, 6...
    seen = reasons_while_registering_again(store, registration)
    at(scheduler, 5, lambda: setattr(store, "keepalive_error", StoreUnavailable("timeout")))
    scheduler.advance_to(12.5)  # refreshes at 6, 8, 10, 12 fail; the last worked at 4
    assert (10.0, RegistrationStatus.LOST) in statuses.values
    assert [t for t, status in statuses.values if status is RegistrationStatus.LOST] == [10.0]
    assert seen[0] == (RegistrationStatus.LOST, "lost: no keepalive for 6s")


def test_a_lease_gone_at_a_credential_rewrite_is_lost_with_the_reason_the_lease_expired(
        scheduler: TestScheduler) -> None:
    """Mutants: ``_rewrite_host``'s LeaseNotFound reason (None, changed)."""
    store = Hooked(scheduler)
    discovery = Discovery(store=store)
    registration = discovery.register("db", public(1, "u1", "p1"), ttl=30)
    scheduler.advance_to(1)
    seen = reasons_while_registering_again(store, registration)

    def lose_the_lease_then_rotate() -> None:
        service = store.get(DB_KEY).value
        wipe(store)  # the lease is gone, nobody is told
        store.put(DB_KEY, service)
        rotate(store, "u2", "p2")

    at(scheduler, 3, lose_the_lease_then_rotate)
    scheduler.advance_to(4)
    assert seen == [(RegistrationStatus.LOST, "lost: the lease expired or was revoked")]
    assert registration.ready
    assert stored_host(store, registration.key).credentials == Credentials("u2", "p2")


# --- credential rewrites: under the lease, never while withdrawn, retried, the latest wins ----

def test_a_credential_rewrite_keeps_the_host_key_under_its_lease(
        scheduler: TestScheduler) -> None:
    """Mutants: the rewrite's put without the lease (``None`` or left out): the key would
    outlive dispose() and a crash."""
    store = Hooked(scheduler)
    discovery = Discovery(store=store)
    registration = discovery.register("db", public(1, "u1", "p1"), ttl=6)
    scheduler.advance_to(1)
    lease = store.get(registration.key).lease
    at(scheduler, 2, lambda: rotate(store, "u2", "p2"))
    scheduler.advance_to(3)
    stored = store.get(registration.key)
    assert stored.lease == lease
    assert Host.from_json(stored.value).credentials == Credentials("u2", "p2")
    registration.dispose()
    assert store.get(registration.key) is None


def test_a_withdrawn_host_adopts_rotated_credentials_without_writing_its_key(
        scheduler: TestScheduler) -> None:
    """Mutants: ``_rewrite_host``'s guard weakened (``or`` for ``and``, ``lease != 1``): a
    withdrawn host (no lease) would write its key back, without a lease, for ever."""
    store = Hooked(scheduler)
    discovery = Discovery(store=store)
    healthy = BehaviorSubject(True)
    registration = discovery.register("db", public(1, "u1", "p1"), ttl=6, healthy=healthy)
    scheduler.advance_to(1)
    assert registration.ready
    at(scheduler, 2, lambda: healthy.on_next(False))
    at(scheduler, 3, lambda: rotate(store, "u2", "p2"))
    scheduler.advance_to(10)
    assert registration.current_status is RegistrationStatus.WITHDRAWN
    assert store.get(registration.key) is None
    assert registration.host.credentials == Credentials("u2", "p2")
    at(scheduler, 11, lambda: healthy.on_next(True))
    scheduler.advance_to(12)
    assert registration.ready
    assert stored_host(store, registration.key).credentials == Credentials("u2", "p2")


def test_a_refused_credential_rewrite_is_reported_failed_and_retried_until_it_works(
        scheduler: TestScheduler) -> None:
    """Mutants: ``_rewrite_host``'s retry given no error (a refusal not seen as permanent),
    no action, no lease, or a changed ``what`` (the reason)."""
    store = Hooked(scheduler)
    discovery = Discovery(store=store)
    registration = discovery.register("db", public(1, "u1", "p1"), ttl=6)
    statuses = record(registration.status, scheduler)
    scheduler.advance_to(1)
    store.host_put_error = PermissionDenied("put: permission denied")
    at(scheduler, 2, lambda: rotate(store, "u2", "p2"))
    scheduler.advance_to(3)
    assert registration.current_status is RegistrationStatus.FAILED
    assert registration.reason == ("credential update failed "
                                   "(PermissionDenied: put: permission denied)")
    assert stored_host(store, registration.key).credentials == Credentials("u1", "p1")
    store.host_put_error = None
    scheduler.advance_to(70)  # retried within 30-60 s
    assert stored_host(store, registration.key).credentials == Credentials("u2", "p2")
    assert statuses.items[-1] is RegistrationStatus.REGISTERED
    assert registration.ready and registration.reason == ""
    registration.dispose()
    assert registration.reason == ""  # REGISTERED entered with no reason


def test_a_credential_rewrite_that_works_does_not_end_a_failed_state_of_refused_refreshes(
        scheduler: TestScheduler) -> None:
    """Mutants: the rewrite's recovery condition weakened (``or``): a rewrite that worked
    reported REGISTERED while the keepalives were still refused."""
    store = Hooked(scheduler)
    registration = Discovery(store=store).register("db", public(1, "u1", "p1"), ttl=30)
    scheduler.advance_to(1)
    at(scheduler, 5, lambda: setattr(store, "keepalive_error",
                                     AuthenticationFailed("keepalive: token expired")))
    scheduler.advance_to(11)  # the refresh at 10 is refused
    assert registration.current_status is RegistrationStatus.FAILED
    at(scheduler, 12, lambda: rotate(store, "u2", "p2"))
    scheduler.advance_to(13)
    assert stored_host(store, registration.key).credentials == Credentials("u2", "p2")
    assert registration.current_status is RegistrationStatus.FAILED
    assert registration.reason.startswith("keepalive failed (AuthenticationFailed")


def test_a_failed_credential_rewrite_is_retried_with_the_registration_backoff(
        scheduler: TestScheduler) -> None:
    """Mutants: ``_rewrite_host``'s retry broken (no action, wrong arguments)."""
    store = Hooked(scheduler)
    discovery = Discovery(store=store)
    registration = discovery.register("db", public(1, "u1", "p1"), ttl=6)
    scheduler.advance_to(1)
    store.host_put_error = StoreUnavailable("put: connection reset")
    at(scheduler, 2, lambda: rotate(store, "u2", "p2"))
    at(scheduler, 2.05, lambda: setattr(store, "host_put_error", None))
    scheduler.advance_to(2.3)  # the first retry comes within 0.1-0.2 s
    assert stored_host(store, registration.key).credentials == Credentials("u2", "p2")
    assert registration.ready


def test_credentials_rotated_during_a_rewrite_are_written_next(
        scheduler: TestScheduler) -> None:
    """Mutants: ``_rewrite_host`` not writing again when the credentials changed during its
    put (``again`` None, ``!=`` for ``==``, ``run(None)``): the rewrite for the newer ones
    (started by the watch meanwhile) landed first, the older put last: the key kept them."""
    store = Hooked(scheduler)
    discovery = Discovery(store=store)
    registration = discovery.register("db", public(1, "u1", "p1"), ttl=6)
    credentials = record(registration.credentials, scheduler)
    scheduler.advance_to(1)

    def rotate_twice() -> None:
        def again() -> None:
            rotate(store, "u3", "p3")
            run_due_now(scheduler)  # the watch delivers it while the rewrite is in flight

        store.before_host_put = again
        rotate(store, "u2", "p2")

    at(scheduler, 2, rotate_twice)
    scheduler.advance_to(3)
    assert stored_host(store, registration.key).credentials == Credentials("u3", "p3")
    assert registration.host.credentials == Credentials("u3", "p3")
    assert credentials.items[-1] == Credentials("u3", "p3")


def test_a_healing_host_does_not_write_its_key_under_the_lost_lease(
        scheduler: TestScheduler) -> None:
    """Mutant: ``_rewrite_host``'s guard ``... and not registering`` made ``or``: a rotation
    while the host heals (its grants failing) wrote the key back under the lease it lost, while
    the status said LOST."""
    store = Hooked(scheduler)
    discovery = Discovery(store=store)
    registration = discovery.register("db", public(1, "u1", "p1"), ttl=30)
    scheduler.advance_to(1)

    def lose_the_key() -> None:
        store.on_grant = refuse_grants
        store.delete(registration.key)

    at(scheduler, 2, lose_the_key)
    at(scheduler, 3, lambda: rotate(store, "u2", "p2"))
    scheduler.advance_to(10)
    assert registration.current_status is RegistrationStatus.LOST
    assert store.get(registration.key) is None
    store.on_grant = None
    scheduler.advance_to(20)
    assert registration.ready
    stored = store.get(registration.key)
    assert Host.from_json(stored.value).credentials == Credentials("u2", "p2")
    assert list(store.leases) == [stored.lease]


def test_a_rewrite_that_fails_after_the_lease_was_lost_leaves_the_healing_retry_alone(
        scheduler: TestScheduler) -> None:
    """Mutants: ``_rewrite_host``'s retry not tied to its lease (``None``, left out): its
    retry replaced the retry of the registration healing meanwhile, which never came."""
    store = Hooked(scheduler)
    discovery = Discovery(store=store)
    registration = discovery.register("db", public(1, "u1", "p1"), ttl=30)
    statuses = record(registration.status, scheduler)
    scheduler.advance_to(1)

    def lose_the_key_and_fail() -> None:
        store.on_grant = refuse_grants
        store.delete(registration.key)
        run_due_now(scheduler)  # the watch tells it; the heal's grant fails, its retry waits
        store.host_put_error = StoreUnavailable("put: connection reset")

    def rotate_during_the_loss() -> None:
        store.before_host_put = lose_the_key_and_fail
        rotate(store, "u2", "p2")

    at(scheduler, 2, rotate_during_the_loss)
    at(scheduler, 5, lambda: (setattr(store, "on_grant", None),
                              setattr(store, "host_put_error", None)))
    scheduler.advance_to(20)
    assert registration.ready
    assert stored_host(store, registration.key).credentials == Credentials("u2", "p2")
    assert statuses.items[-2:] == [RegistrationStatus.LOST, RegistrationStatus.REGISTERED]


# --- FAILED: the reason names the refused operation; recovery leaves no stale reason ----------

def test_refused_keepalives_say_so_and_leave_no_reason_once_they_work_again(
        scheduler: TestScheduler) -> None:
    """Mutants: ``_keepalive_failed``'s ``what`` (None, changed), ``_failed`` storing no
    reason, and ``_keepalive_recovered`` not clearing the reason (left to the dispose)."""
    store = Hooked(scheduler)
    registration = Discovery(store=store).register("api", make_host(1), ttl=9)  # every 3 s
    at(scheduler, 5, lambda: setattr(store, "keepalive_error",
                                     AuthenticationFailed("keepalive: token expired")))
    at(scheduler, 7, lambda: setattr(store, "keepalive_error", None))
    scheduler.advance_to(8)
    assert registration.current_status is RegistrationStatus.FAILED
    assert registration.reason == ("keepalive failed "
                                   "(AuthenticationFailed: keepalive: token expired)")
    scheduler.advance_to(10)
    assert registration.ready
    registration.dispose()
    assert registration.current_status is RegistrationStatus.DISPOSED
    assert registration.reason == ""


def test_a_refused_service_key_write_says_so(scheduler: TestScheduler) -> None:
    """Mutants: ``_service_failed``'s ``what`` (None, changed)."""
    store = Hooked(scheduler)
    store.service_put_error = PermissionDenied("put: permission denied")
    registration = Discovery(store=store).register("api", make_host(1), ttl=6)
    scheduler.advance_to(1)
    assert registration.current_status is RegistrationStatus.FAILED
    assert registration.reason == ("service key write failed "
                                   "(PermissionDenied: put: permission denied)")
    assert store.get(registration.key) is not None  # the host key stays, kept alive
    store.service_put_error = None
    scheduler.advance_to(70)
    assert registration.ready and store.get("/services_infos/api") is not None


def test_refused_keepalives_recover_even_after_a_transient_write_failure_meanwhile(
        scheduler: TestScheduler) -> None:
    """Mutant: a transient failure's retry also forgetting that FAILED came from refused
    refreshes (``refused is None``): the rewrite that worked then ended FAILED, while the
    refreshes were still refused."""
    store = Hooked(scheduler)
    registration = Discovery(store=store).register("db", public(1, "u1", "p1"), ttl=9)
    statuses = record(registration.status, scheduler)
    at(scheduler, 5, lambda: setattr(store, "keepalive_error",
                                     AuthenticationFailed("keepalive: token expired")))
    at(scheduler, 7, lambda: (setattr(store, "host_put_error", StoreUnavailable("reset")),
                              rotate(store, "u2", "p2")))  # its rewrite fails, is retried
    at(scheduler, 7.5, lambda: setattr(store, "host_put_error", None))
    scheduler.advance_to(8.5)  # the rewrite worked; the refreshes are still refused
    assert stored_host(store, registration.key).credentials == Credentials("u2", "p2")
    assert registration.current_status is RegistrationStatus.FAILED
    store.keepalive_error = None
    scheduler.advance_to(10)
    assert registration.ready
    assert statuses.items == [RegistrationStatus.REGISTERING, RegistrationStatus.REGISTERED,
                              RegistrationStatus.FAILED, RegistrationStatus.REGISTERED]
    assert stored_host(store, registration.key).credentials == Credentials("u2", "p2")


# --- health gating: reasons, and the waits that end at once ----------------------------------

def test_a_failed_health_observable_is_withdrawn_with_its_error_named(
        scheduler: TestScheduler) -> None:
    """Mutants: the error's type left out of WITHDRAWN's reason (``type(None)``), or the
    error of a health observable whose subscribe raises dropped (``_on_health_error(None)``).
    """
    discovery = Discovery.in_memory(scheduler)

    class Unsubscribable(reactivex.Observable[bool]):
        def subscribe(self, *_: Any, **__: Any) -> Any:
            raise ValueError("no probe configured")

    failing = discovery.register("api", make_host(1),
                                 healthy=reactivex.throw(OSError("probe crashed")))
    unsubscribable = discovery.register("api", make_host(2), healthy=Unsubscribable())
    scheduler.advance_to(1)
    assert failing.reason == "withdrawn: the health observable failed (OSError: probe crashed)"
    assert unsubscribable.reason == ("withdrawn: the health observable failed "
                                     "(ValueError: no probe configured)")
    for registration in (failing, unsubscribable):
        assert registration.current_status is RegistrationStatus.WITHDRAWN


def test_a_healthy_host_registering_again_says_why(scheduler: TestScheduler) -> None:
    """Mutants: REGISTERING's reason on resume dropped (the stale "withdrawn: not healthy"
    stayed) or changed."""
    store = Hooked(scheduler)
    healthy = BehaviorSubject(True)
    registration = Discovery(store=store).register("api", make_host(1), healthy=healthy)
    scheduler.advance_to(1)
    at(scheduler, 2, lambda: healthy.on_next(False))
    scheduler.advance_to(3)
    assert registration.reason == "withdrawn: not healthy"
    seen = reasons_while_registering_again(store, registration)
    at(scheduler, 4, lambda: healthy.on_next(True))
    scheduler.advance_to(5)
    assert seen == [(RegistrationStatus.REGISTERING, "healthy: registering")]
    assert registration.ready


def test_a_wait_ends_at_once_when_the_health_observable_fails(
        scheduler: TestScheduler) -> None:
    """Mutant: ``_settled`` ignoring a withdrawal for good (``and`` for ``or``): wait() sat
    out its whole timeout."""
    discovery = Discovery.in_memory(scheduler)
    health: BehaviorSubject[bool] = BehaviorSubject(False)
    registration = discovery.register("api", make_host(1), healthy=health)
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            registration.wait(timeout=600)
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    wait_until(lambda: _waits(thread), message="wait() blocks")
    health.on_error(OSError("probe crashed"))
    scheduler.advance_to(1)
    thread.join(10)  # bound for the failure case only: the wait ends at once
    assert not thread.is_alive()
    assert len(outcome) == 1 and "withdrawn for good" in str(outcome[0])


def test_disposing_a_withdrawn_registration_returns_at_once_with_no_warning(
        scheduler: TestScheduler, caplog: pytest.LogCaptureFixture) -> None:
    """Mutants: ``_withdraw`` leaving a lease id behind (``1``: dispose revokes a lease that
    never was, which fails while etcd is unreachable: a WARNING) or marking the withdrawal as
    still running (``None``, ``1``: dispose waits its timeout for it, then warns)."""
    store = Hooked(scheduler)
    healthy = BehaviorSubject(True)
    registration = Discovery(store=store).register("api", make_host(1), healthy=healthy)
    scheduler.advance_to(1)
    at(scheduler, 2, lambda: healthy.on_next(False))
    scheduler.advance_to(3)
    assert store.get(registration.key) is None and store.leases == {}
    store.revoke_error = StoreUnavailable("revoke: connection refused")  # nothing to revoke
    with caplog.at_level(logging.INFO, "rx_discovery"):
        registration.dispose(timeout=1)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert registration.current_status is RegistrationStatus.DISPOSED


def test_a_healed_registration_stops_refreshing_the_lease_it_lost(
        scheduler: TestScheduler) -> None:
    """Mutant: ``_lost`` not releasing the keeper's hold on the old lease: refreshes of a
    revoked lease went on."""
    store = Hooked(scheduler)
    registration = Discovery(store=store).register("api", make_host(1), ttl=6)
    scheduler.advance_to(1)
    old = store.get(registration.key).lease
    at(scheduler, 3, lambda: store.delete(registration.key))
    scheduler.advance_to(4)
    new = store.get(registration.key).lease
    assert new != old
    scheduler.advance_to(20)
    assert [lease for time, lease in store.keepalives if time > 4] == [new] * 8


def test_a_registration_retrying_says_its_last_error_and_wait_names_it(
        scheduler: TestScheduler) -> None:
    """Mutants: ``_failed`` not storing the reason of a transient failure, and wait()'s
    timeout message leaving the last error out (``and False``) or adding one that is not
    there (``or True``, ``"XXXX"``)."""
    store = Hooked(scheduler)
    store.on_grant = refuse_grants
    registration = Discovery(store=store).register("api", make_host(1), ttl=6)
    with pytest.raises(RegistrationError) as early:
        registration.wait(timeout=0)  # before the first attempt: no error yet
    assert str(early.value) == "registration of 'api' not done after 0s"
    scheduler.advance_to(1)
    assert registration.current_status is RegistrationStatus.REGISTERING
    assert registration.reason == "register failed (StoreUnavailable: grant: connection refused)"
    with pytest.raises(RegistrationError) as late:
        registration.wait(timeout=0)
    assert str(late.value) == ("registration of 'api' not done after 0s (last error: "
                               "register failed (StoreUnavailable: grant: connection refused))")


# --- what a user reads: reprs and error messages ------------------------------------------------

def test_a_registration_shows_itself_in_a_notebook(scheduler: TestScheduler) -> None:
    """Mutants (no test ran them): ``_repr_pretty_`` and ``_repr_html_``."""
    registration = Discovery.in_memory(scheduler).register("api", make_host(1), ttl=6)
    scheduler.advance_to(1)
    printed: list[str] = []

    class Printer:
        def text(self, text: str) -> None:
            printed.append(text)

    registration._repr_pretty_(Printer(), False)
    assert printed == [repr(registration)] == [
        "Registration('api', uuid='uuid-1', status=REGISTERED)"]
    assert registration._repr_html_() == (
        "<b>Registration</b> of <code>api</code> as <code>host-1.test</code> "
        "(uuid <code>uuid-1</code>, ttl 6s): <b>REGISTERED</b>")


def test_a_registration_says_what_cannot_be_pickled_or_used_after_fork(
        scheduler: TestScheduler, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutants: the object named in the pickling and fork errors (None, changed)."""
    import pickle

    from rx_discovery import _lifecycle
    from rx_discovery.lifecycle import UsedAfterFork

    registration = Discovery.in_memory(scheduler).register("api", make_host(1))
    with pytest.raises(TypeError, match=r"^a Registration cannot be sent to another process"):
        pickle.dumps(registration)
    monkeypatch.setattr(_lifecycle, "_generation", _lifecycle.fork_generation() + 1)  # a fork
    for use in (registration.wait, registration.dispose, lambda: registration.status,
                lambda: registration.credentials):
        with pytest.raises(UsedAfterFork, match=r"^this Registration was created before"):
            use()


def test_wait_says_a_health_observable_completed_on_false_withdraws_for_good(
        scheduler: TestScheduler) -> None:
    """Mutants: wait()'s message for a health observable that completed (changed)."""
    registration = Discovery.in_memory(scheduler).register(
        "api", make_host(1), healthy=reactivex.of(True, False))
    scheduler.advance_to(1)
    with pytest.raises(RegistrationError) as raised:
        registration.wait(timeout=0)
    assert str(raised.value) == ("registration of 'api' withdrawn for good: "
                                 "its health observable completed, its last value not True")


# --- dispose: bounded waits, from any thread ---------------------------------------------------

def test_a_second_dispose_on_another_thread_returns_at_once(scheduler: TestScheduler) -> None:
    """Mutant: a dispose that finds the registration disposed by another thread waiting for
    a condition that never holds (its whole timeout)."""
    registration = Discovery.in_memory(scheduler).register("api", make_host(1))
    scheduler.advance_to(1)
    registration.dispose()  # on this thread, which outlives the other (thread ids are reused)
    second = threading.Thread(target=registration.dispose, kwargs={"timeout": 600},
                              daemon=True)
    second.start()
    second.join(10)  # bound for the failure case only: it returns at once
    assert not second.is_alive()


def dispose_during_the_first_write(scheduler: TestScheduler, store: Hooked,
                                   registration: Registration, *timeouts: float
                                   ) -> list[bool]:
    """Dispose ``registration`` on one thread per timeout while its first write is in flight
    (each thread starts once the one before waits); returns, for each, whether it was still
    waiting 10 s later, with the write still in flight. Then the write completes."""
    disposers = [threading.Thread(target=registration.dispose, kwargs={"timeout": timeout},
                                  daemon=True) for timeout in timeouts]
    still_waiting: list[bool] = []

    def dispose_meanwhile() -> None:
        for disposer in disposers:
            disposer.start()
            wait_until(lambda d=disposer: _waits(d), message="dispose() waits")
        for disposer in disposers[-1:] if len(disposers) > 1 else disposers:
            disposer.join(10)  # bound for the failure case only: it waits its timeout
        still_waiting.extend(disposer.is_alive() for disposer in disposers)

    store.before_host_put = dispose_meanwhile
    scheduler.advance_to(1)
    for disposer in disposers:
        disposer.join(10)
    assert not any(disposer.is_alive() for disposer in disposers)
    return still_waiting


def test_dispose_waits_for_a_write_in_flight_no_longer_than_its_timeout(
        scheduler: TestScheduler, caplog: pytest.LogCaptureFixture) -> None:
    """Mutants: dispose()'s ``timeout`` not passed on (None: no limit; left out: 10 s) to its
    wait for the write in flight, and the warning for a write still running not given (``if
    finished``)."""
    store = Hooked(scheduler)
    registration = Discovery(store=store).register("api", make_host(1), ttl=30)
    with caplog.at_level(logging.WARNING, "rx_discovery"):
        assert dispose_during_the_first_write(scheduler, store, registration, 0.2) == [False]
    assert "a registration write still runs after 0.2s" in caplog.text
    assert store.get(registration.key) is None and store.leases == {}  # revoked by the write


def test_a_dispose_waiting_for_another_dispose_waits_no_longer_than_its_timeout(
        scheduler: TestScheduler) -> None:
    """Mutants: the second dispose's wait for the first not bounded by its ``timeout``."""
    store = Hooked(scheduler)
    registration = Discovery(store=store).register("api", make_host(1), ttl=30)
    # the first waits for the write (up to 600 s), the second for the first (up to 0.2 s)
    assert dispose_during_the_first_write(scheduler, store, registration, 600, 0.2) == [
        True, False]
    assert store.get(registration.key) is None and store.leases == {}


# --- the service group ---------------------------------------------------------------------------

def test_the_last_registration_disposed_closes_the_services_watches(
        scheduler: TestScheduler) -> None:
    """Mutant: the group not forgetting a disposed member (``pop(None)``): it never emptied,
    and the watches of its service stayed open."""
    store = Hooked(scheduler)
    discovery = Discovery(store=store)
    registrations = [discovery.register("api", make_host(n)) for n in (1, 2)]
    scheduler.advance_to(1)
    assert store.watch_count > 0
    for registration in registrations:
        registration.dispose()
    scheduler.advance_to(2)
    assert store.watch_count == 0


def test_a_member_disposed_while_another_waits_for_the_service_write_leaves_it_served(
        scheduler: TestScheduler) -> None:
    """Mutants: ``ServiceGroup.remove`` dropping the others' requests (``is`` for ``is not``)
    or all of them (``None``): the member still waiting was never REGISTERED, a later
    service key repair never written."""
    store = Hooked(scheduler)
    discovery = Discovery(store=store)
    first = discovery.register("api", make_host(1))
    second = discovery.register("api", make_host(2, critical=True))  # another document
    scheduler.advance_to(0.01)  # the first's service write is done, the second's is due later
    assert first.ready and not second.ready
    first.dispose()
    scheduler.advance_to(1)
    assert second.ready
    at(scheduler, 2, lambda: store.delete("/services_infos/api"))
    scheduler.advance_to(3)
    assert store.get("/services_infos/api") is not None


def test_a_request_made_during_a_service_key_write_is_served_by_the_next(
        scheduler: TestScheduler) -> None:
    """Mutants: ``ServiceGroup._write`` not scheduling the next write for the requests made
    while it ran (``again`` None/False, its delay or action broken): that registration was
    never REGISTERED."""
    store = Hooked(scheduler)
    discovery = Discovery(store=store)
    later: list[Registration] = []

    def another_registers_meanwhile() -> None:
        later.append(discovery.register("api", make_host(2, critical=True)))
        run_due_now(scheduler)  # its attempt asks the group while our write runs

    store.during_service_put = another_registers_meanwhile
    first = discovery.register("api", make_host(1))
    scheduler.advance_to(1)
    assert first.ready and later[0].ready
    assert Service.from_json(store.get("/services_infos/api").value).critical


def test_a_failed_service_key_write_is_not_taken_for_stored(scheduler: TestScheduler) -> None:
    """Mutants: ``ServiceGroup._write`` recording a failed write as stored (``or`` for
    ``and``, ``is not None``): a second registration of the same document was REGISTERED at
    once, though the service key was never written."""
    store = Hooked(scheduler)
    store.service_put_error = StoreUnavailable("put: connection reset")
    discovery = Discovery(store=store)
    first = discovery.register("api", make_host(1))
    scheduler.advance_to(0.01)
    second = discovery.register("api", make_host(2))
    scheduler.advance_to(5)
    assert store.get("/services_infos/api") is None
    assert not first.ready and not second.ready
    store.service_put_error = None
    scheduler.advance_to(10)
    assert first.ready and second.ready


def test_hosts_served_by_one_service_key_write_all_store_the_credentials_it_wrote(
        scheduler: TestScheduler) -> None:
    """Mutants: ``_service_written`` not rewriting the host key when the write that served it
    stored another member's credentials (``changed = None``, ``run(None)``)."""
    store = Hooked(scheduler)
    discovery = Discovery(store=store)
    registrations = [discovery.register("db", public(n, f"u{n}", f"p{n}")) for n in (1, 2, 3)]
    scheduler.advance_to(1)  # 1 writes at once; 2 and 3 share the next write, which stores 3's
    for registration in registrations:
        assert registration.ready
        assert registration.host.credentials == Credentials("u3", "p3")
        assert stored_host(store, registration.key).credentials == Credentials("u3", "p3")


def test_a_registration_disposed_after_it_worked_has_no_reason(
        scheduler: TestScheduler) -> None:
    """Mutants: REGISTERED entered with a reason (None: the last error's stays; "XXXX"),
    seen once disposed."""
    store = Hooked(scheduler)
    store.on_grant = refuse_grants
    registration = Discovery(store=store).register("api", make_host(1))
    scheduler.advance_to(1)
    assert registration.reason.startswith("register failed")
    store.on_grant = None
    scheduler.advance_to(10)
    assert registration.ready
    registration.dispose()
    assert registration.reason == ""


def test_a_service_document_another_host_stored_is_not_written_again(
        scheduler: TestScheduler) -> None:
    """Mutants: ``ServiceGroup._on_services`` not taking the document another host stored
    as stored (its conditions or flag changed): every registration wrote it again."""
    store = Hooked(scheduler)
    Discovery(store=store).register("api", make_host(1))
    scheduler.advance_to(1)
    assert store.service_puts == 1
    other = Discovery(store=store)
    other.hosts("api").subscribe()  # this process follows the service already
    scheduler.advance_to(2)
    second = other.register("api", make_host(2))  # the same document
    scheduler.advance_to(3)
    assert second.ready
    assert store.service_puts == 1


def test_a_failed_host_put_says_so_and_leaks_no_lease(scheduler: TestScheduler) -> None:
    """Mutants: the lease of a failed put not revoked (``None``: one leaked per attempt), and
    that failure's reason (None, changed)."""
    store = Hooked(scheduler)
    store.host_put_error = StoreUnavailable("put: connection reset")
    registration = Discovery(store=store).register("api", make_host(1), ttl=6)
    scheduler.advance_to(5)  # several attempts
    assert registration.reason == "register failed (StoreUnavailable: put: connection reset)"
    assert store.leases == {}
    store.host_put_error = None
    scheduler.advance_to(10)
    assert registration.ready and len(store.leases) == 1


def test_a_host_healthy_again_rewrites_a_service_key_lost_while_it_was_withdrawn(
        scheduler: TestScheduler) -> None:
    """Mutant: ``renewing`` only with a lease held (``and``): a registration resumed after a
    withdrawal (no lease) did not force its service key write, and the key lost meanwhile
    without a watch event stayed missing while it said REGISTERED."""
    store = Hooked(scheduler)
    healthy = BehaviorSubject(True)
    registration = Discovery(store=store).register("api", make_host(1), healthy=healthy)
    scheduler.advance_to(1)
    at(scheduler, 2, lambda: healthy.on_next(False))
    at(scheduler, 3, lambda: wipe(store))  # the service key is lost, nobody is told
    at(scheduler, 4, lambda: healthy.on_next(True))
    scheduler.advance_to(5)
    assert registration.ready
    assert store.get("/services_infos/api") is not None


def test_credentials_another_host_writes_while_our_service_write_is_in_flight_are_adopted(
        scheduler: TestScheduler) -> None:
    """Mutants: the document the watch saw written by another host after our write, before
    it returned, dropped (``seen`` None, ``_seen_after`` never, ``_adopt(None)``, ``=``/``&=``
    for ``|=``): our host kept its own credentials while the service key held the newer."""
    store = Hooked(scheduler)
    discovery = Discovery(store=store)

    def another_host_writes_meanwhile() -> None:
        rotate(store, "u2", "p2")
        run_due_now(scheduler)  # the watch delivers it before our put returns

    store.during_service_put = another_host_writes_meanwhile
    registration = discovery.register("db", public(1, "u1", "p1"))
    scheduler.advance_to(1)
    assert registration.ready
    assert registration.host.credentials == Credentials("u2", "p2")
    assert stored_host(store, registration.key).credentials == Credentials("u2", "p2")


def test_credentials_adopted_while_a_heal_writes_the_host_key_are_written_next(
        scheduler: TestScheduler) -> None:
    """Mutant: ``_register_once`` not rewriting the host key when credentials were adopted
    during its put (``changed = None``): the healed key kept the old ones for good."""
    store = Hooked(scheduler)
    registration = Discovery(store=store).register("db", public(1, "u1", "p1"), ttl=30)
    scheduler.advance_to(1)

    def rotate_during_the_heal() -> None:
        def rotate_now() -> None:
            rotate(store, "u2", "p2")
            run_due_now(scheduler)  # the watch delivers it while the heal's put is in flight

        store.before_host_put = rotate_now
        store.delete(registration.key)

    at(scheduler, 2, rotate_during_the_heal)
    scheduler.advance_to(3)
    assert registration.ready
    assert registration.host.credentials == Credentials("u2", "p2")
    assert stored_host(store, registration.key).credentials == Credentials("u2", "p2")


@pytest.mark.parametrize("delivered", ["during the grant", "after the put"])
def test_the_deletion_of_a_previous_incarnations_key_is_not_taken_for_a_loss(
        scheduler: TestScheduler, delivered: str) -> None:
    """A crashed process left our key (same uuid) under its lease; that lease is revoked
    while we register. Mutants: ``_registering`` False before the first put (the deletion
    seen during the grant), and ``_check_removed``'s ``or`` for ``and`` (the deletion, older
    than our put, seen after it): both reported LOST and registered twice."""
    store = Hooked(scheduler)
    stale = store.grant(30)
    store.put("/services/api/uuid-1", make_host(1).to_json().encode(), stale.id)
    discovery = Discovery(store=store)
    discovery.hosts("api").subscribe()  # the service's hosts are loaded, the stale key too
    scheduler.advance_to(1)

    def revoke_the_stale_lease() -> None:
        store.on_grant = None
        store.revoke(stale.id)
        if delivered == "during the grant":
            run_due_now(scheduler)

    store.on_grant = revoke_the_stale_lease
    registration = discovery.register("api", make_host(1), ttl=6)
    statuses = record(registration.status, scheduler)
    scheduler.advance_to(2)
    assert statuses.items == [RegistrationStatus.REGISTERING, RegistrationStatus.REGISTERED]
    assert registration.ready and len(store.leases) == 1


def test_disposing_a_gated_registration_that_never_wrote_returns_at_once(
        scheduler: TestScheduler, caplog: pytest.LogCaptureFixture) -> None:
    """Mutant: no write in flight recorded as ``None`` instead of 0 (``_in_flight``): dispose
    took it for a write of another thread, waited its whole timeout and warned."""
    registration = Discovery.in_memory(scheduler).register(
        "api", make_host(1), healthy=BehaviorSubject(False))
    scheduler.advance_to(1)
    with caplog.at_level(logging.WARNING, "rx_discovery"):
        registration.dispose(timeout=1)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert registration.current_status is RegistrationStatus.DISPOSED


def test_a_health_observable_that_completes_without_a_value_withdraws_for_good(
        scheduler: TestScheduler) -> None:
    """Mutant: the latest health value taken for True before any came (``_gate_wanted``):
    wait() kept waiting for a value that will never come."""
    registration = Discovery.in_memory(scheduler).register(
        "api", make_host(1), healthy=reactivex.empty())
    scheduler.advance_to(1)
    with pytest.raises(RegistrationError, match="withdrawn for good"):
        registration.wait(timeout=0)
    assert registration.current_status is RegistrationStatus.WITHDRAWN


def test_a_credential_rewrite_that_works_does_not_end_a_failed_state_of_a_refused_service_key(
        scheduler: TestScheduler) -> None:
    """FAILED because the service document was refused: a host key rewrite that works (new
    credentials adopted meanwhile) says nothing about the service document, still refused."""
    store = Hooked(scheduler)
    registration = Discovery(store=store).register("db", public(1, "u1", "p1"), ttl=30)
    scheduler.advance_to(1)
    assert registration.ready
    store.service_put_error = PermissionDenied("put: permission denied")
    at(scheduler, 2, lambda: store.delete(registration.key))  # lost: the heal rewrites both
    scheduler.advance_to(4)
    assert registration.current_status is RegistrationStatus.FAILED, registration.reason
    reason = registration.reason
    assert "PermissionDenied" in reason

    def rotate_past_the_refusal() -> None:  # another host may write it: its permissions
        current = Service.from_json(store.get(DB_KEY).value)
        MemoryStore.put(store, DB_KEY, dataclasses.replace(current, user="u2", password="p2")
                        .to_json().encode())

    at(scheduler, 5, rotate_past_the_refusal)
    scheduler.advance_to(6)
    assert stored_host(store, registration.key).credentials == Credentials("u2", "p2")
    assert registration.current_status is RegistrationStatus.FAILED
    assert registration.reason == reason


def test_disposing_a_lost_registration_while_it_heals_returns_at_once(
        scheduler: TestScheduler) -> None:
    """Mutant: ``_stop 21`` (``or`` for ``and`` in the live-key test): a lost registration
    keeps its old lease id while it registers again, and was taken for live: dispose waited
    the whole drain for clients of a host key that is gone."""
    store = Hooked(scheduler)
    registration = Discovery(store=store).register("api", make_host(1), ttl=6)
    scheduler.advance_to(1)
    store.on_grant = refuse_grants  # the heal cannot get a new lease
    at(scheduler, 2, lambda: store.delete(registration.key))
    scheduler.advance_to(3)
    assert registration.current_status is RegistrationStatus.LOST
    assert store.get(registration.key) is None
    disposer = threading.Thread(target=lambda: registration.dispose(drain=30.0), daemon=True)
    disposer.start()
    disposer.join(10)  # nothing advances the clock: a drain would block until the deadline
    assert not disposer.is_alive(), "disposing a lost registration drained"
    assert registration.current_status is RegistrationStatus.DISPOSED
