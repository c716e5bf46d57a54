"""Review of readiness gating (issue 15): what ``reason`` says while withdrawn."""

from __future__ import annotations

from typing import Any

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


def test_wait_raises_at_once_once_the_health_observable_failed_or_completed_false() -> None:
    """A failed health observable withdraws the host until disposed, and one that completed
    on False never changes again: wait() cannot succeed, so it must not block (for ever,
    without a timeout)."""
    from reactivex.subject import Subject

    from rx_discovery import Discovery, RegistrationError
    from rx_discovery.store.memory import MemoryStore
    from rx_discovery.testing import make_host

    scheduler = TestScheduler()
    discovery = Discovery(store=MemoryStore(scheduler))
    failing: Subject[bool] = Subject()
    ended: Subject[bool] = Subject()
    one = discovery.register("api", make_host(1), healthy=failing)
    two = discovery.register("api", make_host(2), healthy=ended)
    failing.on_next(True)
    ended.on_next(True)
    scheduler.advance_to(1)
    failing.on_error(OSError("probe broke"))
    ended.on_next(False)
    ended.on_completed()
    scheduler.advance_to(2)
    for registration, why in ((one, "probe broke"), (two, "completed")):
        try:
            registration.wait(timeout=3.0)  # the failing version blocks, then says "not done"
        except RegistrationError as error:
            assert why in str(error) and "not done" not in str(error), error
        else:
            raise AssertionError("wait() returned while withdrawn for good")


def test_the_async_wait_also_raises_once_withdrawn_for_good() -> None:
    """rx_discovery.aio's wait has "the same outcomes as Registration.wait"."""
    import asyncio

    from reactivex.subject import Subject

    from rx_discovery import Discovery, RegistrationError, aio
    from rx_discovery.testing import make_host

    failing: Subject[bool] = Subject()
    discovery = Discovery.in_memory()
    try:
        registration = discovery.register("api", make_host(1), healthy=failing)
        failing.on_error(OSError("probe broke"))

        async def wait() -> str:
            try:
                await aio.wait(registration, timeout=3.0)
            except RegistrationError as error:
                return str(error)
            return "registered"

        outcome = asyncio.run(wait())
        assert "probe broke" in outcome and "not done" not in outcome, outcome
    finally:
        discovery.close()


def test_a_health_subscription_whose_dispose_raises_does_not_stop_dispose_or_close() -> None:
    """User code (the health observable's disposal) that raises must not leave the key
    registered nor stop Discovery.close from disposing the other registrations."""
    import reactivex
    from reactivex.disposable import Disposable

    from rx_discovery import Discovery
    from rx_discovery.testing import make_host

    def broken_dispose() -> None:
        raise RuntimeError("user dispose broke")

    def subscribe(observer: Any, _scheduler: Any = None) -> Any:
        observer.on_next(True)
        return Disposable(broken_dispose)

    scheduler = TestScheduler()
    store = PutHook(scheduler)
    discovery = Discovery(store=store)
    one = discovery.register("api", make_host(1), healthy=reactivex.create(subscribe))
    two = discovery.register("api", make_host(2))
    scheduler.advance_to(5)
    assert one.ready and two.ready
    discovery.close()
    assert len(store.revoked_at) == 2  # both leases revoked: both keys gone at once
    assert one.current_status is RegistrationStatus.DISPOSED
    assert two.current_status is RegistrationStatus.DISPOSED
