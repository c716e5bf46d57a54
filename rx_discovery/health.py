"""The connection state of a store, as users see it on :attr:`Discovery.health`.

A stream that emits nothing can mean "nothing changed" or "etcd is gone" or "etcd refuses us
for good": ``health`` tells them apart. Store adapters feed a :class:`HealthTracker` from the
outcome of their calls; it emits a :class:`Health` only when the state or reason changes,
outside every library lock: on a thread of its own for the etcd stores, on the reporting
thread for the memory store.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass, field

import reactivex
from reactivex import abc, operators

from rx_discovery._serial import SerialSubject, SerialThread

__all__ = ["Health", "HealthState", "HealthTracker"]

log = logging.getLogger(__name__)


class HealthState(enum.Enum):
    """Where the connection to the store stands."""

    CONNECTING = "connecting"
    """Nothing has answered yet (just created, or etcd not up yet)."""
    CONNECTED = "connected"
    """The last call reached a member and was served."""
    RECONNECTING = "reconnecting"
    """It was connected; calls fail with transient errors and are retried with backoff."""
    UNAVAILABLE = "unavailable"
    """No member has answered for a while (see :attr:`HealthTracker.unavailable_after`)."""
    DENIED = "denied"
    """etcd refuses us for a reason retrying will not fix by itself: wrong credentials, a
    missing permission, a TLS certificate it does not trust, or not an etcd endpoint. Retried
    slowly, so fixing it on the server side heals."""
    CLOSED = "closed"
    """The Discovery was closed."""


@dataclass(frozen=True)
class Health:
    """One state of the connection.

    Attributes:
        state: the state.
        reason: why, for people (never a secret: no password, token or key material).
        endpoint: the member concerned, when one is (``http://host:port``), else "".
        since: ``time.time()`` when this state began.
    """

    state: HealthState
    reason: str = ""
    endpoint: str = ""
    since: float = field(default_factory=time.time, compare=False)

    def __str__(self) -> str:
        where = f" ({self.endpoint})" if self.endpoint else ""
        return f"{self.state.name}{where}" + (f": {self.reason}" if self.reason else "")


_ALARMING = frozenset({HealthState.DENIED, HealthState.UNAVAILABLE})


class HealthTracker:
    """Turns call outcomes into :class:`Health` changes (a store adapter owns one).

    Args:
        label: names it in log lines.
        unavailable_after: seconds of failures (never served meanwhile) after which
            RECONNECTING (or CONNECTING) becomes UNAVAILABLE.
        own_thread: deliver to observers on a thread of the tracker's own (started on the
            first change), not on the thread that saw the change: a store reports from a
            caller, a watch reader or the lease keeper, and a user's observer that blocks
            (an alert over HTTP that hangs) must hold none of them. False (the memory
            store): on the reporting thread, so a TestScheduler sees every change at once.
    """

    def __init__(self, label: str = "store", unavailable_after: float = 10.0, *,
                 own_thread: bool = False) -> None:
        self._label = label
        self._deliverer = SerialThread(f"rx-discovery-{label}-health") if own_thread else None
        self._lock = threading.Lock()
        self._current = Health(HealthState.CONNECTING)
        self._failing_since: float | None = None
        # scope -> (reason, endpoint) of each denial not yet cleared by a success there
        self._denials: dict[str, tuple[str, str]] = {}
        self._unavailable_after = unavailable_after
        self._subject: SerialSubject[Health] = SerialSubject(
            f"{label} health", replay=True, initial=self._current, has_initial=True)

    @property
    def current(self) -> Health:
        return self._current

    @property
    def observable(self) -> reactivex.Observable[Health]:
        """The current health at once, then every change; after :meth:`closed`, CLOSED and
        the completion."""
        def current_or_live(_scheduler: abc.SchedulerBase | None) -> reactivex.Observable[Health]:
            if self._current.state is HealthState.CLOSED:  # the subject replays no value then
                return reactivex.just(self._current)
            return self._subject.observe()

        return reactivex.defer(current_or_live).pipe(operators.distinct_until_changed())

    def connected(self, endpoint: str = "", scope: str = "") -> None:
        """A call was served (on ``scope``: the key or prefix it concerned, "" for none).

        It clears the connection-wide denials (scope "": a login, TLS) and those of its own
        scope; the state stays DENIED while another scope's denial stands (a permission
        missing on one prefix is not healed by a read elsewhere succeeding).
        """
        if (self._current.state is HealthState.CONNECTED and self._failing_since is None
                and not self._denials):
            return  # the common case, on every call: no lock
        with self._lock:
            self._failing_since = None
            if self._denials:
                self._denials.pop(scope, None)
                self._denials.pop("", None)
            denial = next(reversed(self._denials.values()), None)
            if denial is None and self._current.state is HealthState.CONNECTED:
                return
            health = (Health(HealthState.DENIED, *denial) if denial is not None
                      else Health(HealthState.CONNECTED, "", endpoint))
            changed = self._change(health)
        self._announce(health, changed)

    def failed(self, reason: str, endpoint: str = "") -> None:
        """A call failed with a transient error."""
        now = time.monotonic()
        with self._lock:
            if self._current.state is HealthState.CLOSED:
                return
            if self._failing_since is None:
                self._failing_since = now
            if now - self._failing_since >= self._unavailable_after:
                state = HealthState.UNAVAILABLE
            elif self._current.state in (HealthState.CONNECTED, HealthState.RECONNECTING):
                state = HealthState.RECONNECTING
            else:
                state = self._current.state
                if state is HealthState.DENIED:  # a transient failure after a denial
                    state = HealthState.RECONNECTING
            # decided and set under one lock: a call served on another thread in between
            # would otherwise be overwritten by this older failure
            health = Health(state, reason, endpoint)
            changed = self._change(health)
        self._announce(health, changed)

    def denied(self, reason: str, endpoint: str = "", scope: str = "") -> None:
        """A call failed with a permanent error (see :attr:`HealthState.DENIED`); it stands
        until a call on the same ``scope`` (or, for scope "", any call) is served."""
        health = Health(HealthState.DENIED, reason, endpoint)
        with self._lock:
            self._denials.pop(scope, None)
            self._denials[scope] = (reason, endpoint)
            changed = self._change(health)
        self._announce(health, changed)

    def closed(self) -> None:
        self._set(Health(HealthState.CLOSED))
        self._subject.enqueue_completed()
        self._flush()
        if self._deliverer is not None:
            self._deliverer.stop()

    def _set(self, health: Health) -> None:
        with self._lock:
            changed = self._change(health)
        self._announce(health, changed)

    def _change(self, health: Health) -> bool | None:
        """Make ``health`` current (call under the lock). None when nothing changed, else
        whether the state did (a new reason alone is enqueued, not logged)."""
        old = self._current
        if old.state is HealthState.CLOSED:
            return None
        if (old.state, old.reason, old.endpoint) == (health.state, health.reason,
                                                     health.endpoint):
            return None
        self._current = health
        self._subject.enqueue(health)
        return old.state is not health.state

    def _announce(self, health: Health, changed: bool | None) -> None:
        """Log and deliver what :meth:`_change` made current (outside the lock)."""
        if changed is None:
            return
        if changed:  # once per change, not per failed call
            level = logging.WARNING if health.state in _ALARMING else logging.INFO
            log.log(level, "%s: %s", self._label, health)
        self._flush()

    def _settle(self, timeout: float = 10.0) -> None:
        """Wait until every change reported so far has reached the observers (tests)."""
        if self._deliverer is not None:
            self._deliverer.settle(timeout)

    def _flush(self) -> None:
        if self._deliverer is None:
            self._subject.flush()
        else:
            self._deliverer.submit(self._subject.flush)
