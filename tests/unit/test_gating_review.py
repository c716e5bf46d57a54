"""Review of readiness gating (issue 15): what ``reason`` says while withdrawn."""

from __future__ import annotations

from reactivex.testing import TestScheduler
from test_lifecycle_marble import PutHook, at, emitting, gated

from rx_discovery import RegistrationStatus, StoreUnavailable


class FailingPut(PutHook):
    """A host put that fails (etcd unreachable) after running ``during_put``."""

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        if key.startswith("/services/") and self.during_put is not None:
            hook, self.during_put = self.during_put, None
            hook()
            raise StoreUnavailable("put: connection refused")
        return super().put(key, value, lease)


def test_a_write_failing_after_the_withdrawal_leaves_the_reason_withdrawn() -> None:
    """False arrives while the first write is in flight; that write then fails. The status is
    WITHDRAWN: its reason must say so, not the error of a write nobody wants any more."""
    scheduler = TestScheduler()
    store = FailingPut(scheduler)
    healthy, registration = gated(store)
    store.during_put = emitting(healthy, scheduler, False)
    at(scheduler, 1, lambda: healthy.on_next(True))
    scheduler.advance_to(60)
    assert store.during_put is None  # the scenario happened
    assert registration.current_status is RegistrationStatus.WITHDRAWN
    assert registration.reason == "withdrawn: not healthy"
