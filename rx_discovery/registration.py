"""Registration: a host held under a lease, kept alive, healed, and revoked on dispose.

Lifecycle (reported on :attr:`Registration.status`)::

    REGISTERING --grant+put, service key--> REGISTERED --keepalive every ttl/3--> REGISTERED
         ^  (retry with jittered backoff)              |  lease gone, key deleted, or no
         |                                             v  refresh for a whole ttl
         +---------------------------------------- LOST
    REGISTERING/LOST --permanent error (denied, too large)--> FAILED --(retried slowly)--> ...
    any state --dispose()--> DISPOSED (lease revoked: the host key vanishes at once)

With ``healthy=`` (readiness gating, see :meth:`Registration._on_health`)::

    WITHDRAWN (nothing written before the first True) --True--> REGISTERING --> ...
    any state but DISPOSED --False--> WITHDRAWN (lease revoked at once: the key vanishes)

Background work runs on the Discovery's I/O scheduler; delays (keepalive period, backoff)
are measured on the registration's ``scheduler``, so a ``TestScheduler`` drives them.

Status and credentials reach observers through :class:`~rx_discovery._serial.SerialSubject`:
a state change enqueues under the registration's lock and the value is delivered after the
lock is released, on a delivery thread of the Discovery (not an I/O thread: observers that
block, e.g. waiting for their peers, would starve the library's work), never on the store's
watch thread nor inside the lease keeper's refresh. Recovery is always scheduled
before anything is emitted, so an observer that raises or blocks cannot stop healing.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import math
import os
import socket
import threading
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

import reactivex
from reactivex import abc, operators
from reactivex.disposable import Disposable, SerialDisposable, SingleAssignmentDisposable

from rx_discovery import metrics
from rx_discovery._errors import (
    LeaseNotFound,
    RegistrationError,
    StoreError,
)
from rx_discovery._keeper import LeaseKeeper
from rx_discovery._lifecycle import (
    check_fork,
    fork_generation,
    not_picklable,
    validate_drain,
    wait_on,
)
from rx_discovery._runtime import Backoff, Runtime
from rx_discovery._serial import SerialSubject
from rx_discovery._shared import SharedSync
from rx_discovery.hostset import escape_html
from rx_discovery.keys import Keyspace
from rx_discovery.model import (
    Credentials,
    Host,
    Service,
    validate_host_for_registration,
    validate_host_name,
    validate_key_segment,
    validate_service_name,
)
from rx_discovery.store import Store
from rx_discovery.sync import Change

__all__ = ["MAX_WRITE_BYTES", "Registration", "RegistrationStatus", "ServiceGroup",
           "check_write_sizes", "prepare_host", "service_document", "validate_ttl"]

log = logging.getLogger("rx_discovery")


class RegistrationStatus(enum.Enum):
    """Where a registration stands.

    REGISTERING: first attempts (transient failures are retried with backoff);
    REGISTERED: the host key and the service key are stored and the lease kept alive;
    LOST: the lease or the key was lost, registering again;
    FAILED: etcd refused the registration for a reason retrying will not fix by itself
    (authentication, permission, a value over its request limit): retried slowly, see
    :attr:`Registration.reason`; REGISTERED again once it works;
    WITHDRAWN: the registration is gated by a health observable (``register(...,
    healthy=)``) whose latest value is not True (or which failed): the host key is removed
    and nothing is written until it is True again; :attr:`Registration.reason` says why;
    DISPOSED: disposed (the last status; the stream completes).
    """

    REGISTERING = "registering"
    REGISTERED = "registered"
    LOST = "lost"
    FAILED = "failed"
    WITHDRAWN = "withdrawn"
    DISPOSED = "disposed"


def validate_ttl(ttl: object) -> float:
    """Return ``ttl`` as a float if it is a number of seconds >= 1.

    Raises:
        ValueError: otherwise.
    """
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or math.isnan(ttl):
        raise ValueError(f"ttl must be a number of seconds, got {type(ttl).__name__}")
    if ttl < 1 or math.isinf(ttl):
        raise ValueError(f"ttl must be at least 1 second (and finite), got {ttl}")
    return float(ttl)


def _machine_hostname() -> str:
    return os.environ.get("HOSTNAME") or socket.gethostname()


def prepare_host(service: str, host: Host) -> Host:
    """The host as it will be stored: the Go package's registration defaults filled in.

    ``service_name`` is the service; a non-public host without a private hostname uses its
    hostname; an empty private hostname becomes this machine's name; empty private ports
    become the ports; the uuid is ``{uuid4}-{private_hostname}`` (unless already set).

    Raises:
        ValueError: a field register() cannot write (see
            :func:`~rx_discovery.model.validate_host_for_registration`), before any I/O.
    """
    if not isinstance(host, Host):
        raise ValueError(f"host must be a rx_discovery.Host, got {type(host).__name__}")
    validate_host_for_registration(host)
    private_hostname = host.private_hostname
    if not host.public and not private_hostname:
        private_hostname = host.hostname
    if not private_hostname:
        private_hostname = validate_host_name(
            "Host.private_hostname (this machine's name, from the HOSTNAME environment "
            "variable or socket.gethostname())", _machine_hostname())
    uuid = host.uuid or validate_key_segment("Host.uuid (derived from private_hostname)",
                                             f"{uuidlib.uuid4()}-{private_hostname}")
    return dataclasses.replace(
        host,
        service_name=service,
        private_hostname=private_hostname,
        private_ports=host.private_ports or host.ports,
        uuid=uuid,
    )


MAX_WRITE_BYTES = 1_572_864 - 4_096
"""The most a key and its value may take in one put: etcd's default request limit
(``--max-request-bytes``, 1.5 MiB) less a margin for the request's envelope."""


def check_write_sizes(host_key: str, host: Host, service_key: str, service: Service) -> None:
    """Check, before any I/O, that each put a registration makes fits in one etcd request.

    Raises:
        ValueError: naming the largest field of the document that does not fit (never its
            value).
    """
    for what, key, document in (("host", host_key, host), ("service document", service_key,
                                                              service)):
        size = len(key.encode()) + len(document.to_json().encode())
        if size > MAX_WRITE_BYTES:
            fields = {name: len(json.dumps(value)) for name, value
                      in json.loads(document.to_json()).items()}
            largest = max(fields, key=lambda name: fields[name])
            largest_bytes = fields[largest]
            if isinstance(document, Host) and largest == "name":
                largest = "hostname"  # the Python field of Go's "name"
            raise ValueError(
                f"the {what} is too large to register: its key and JSON take {size} bytes, "
                f"over etcd's request limit ({MAX_WRITE_BYTES} bytes with the envelope's "
                f"margin); its largest field is {largest!r} ({largest_bytes} bytes)")


def checked_host(keyspace: Keyspace, service: str, host: Host) -> Host:
    """The host as it will be stored (:func:`prepare_host`), once every check that
    ``register()`` makes before any I/O has passed (the CLI makes them before connecting).

    Raises:
        ValueError: a bad service name or host, or a write over etcd's request limit.
    """
    name = keyspace.check_listed("service name", validate_service_name(service))
    stored = prepare_host(name, host)
    keyspace.check_listed("Host.uuid", stored.uuid)
    check_write_sizes(keyspace.host_key(name, stored.uuid), stored, keyspace.service_key(name),
                      service_document(name, stored))
    return stored


def service_document(service: str, host: Host) -> Service:
    """The service key's content for a registered host (public hosts publish their address
    and credentials)."""
    if host.public:
        return Service(service, critical=host.critical, public=True, hostname=host.hostname,
                       ports=host.ports, user=host.user, password=host.password)
    return Service(service, critical=host.critical)


_SERVICE_WRITE_INTERVAL = 0.05
"""Seconds between two writes of a service key by one group: a burst of registrations shares
one write per interval instead of writing once per round trip."""

_NOT_HEALTHY_YET = "withdrawn: waiting for the health observable's first True"
_NOT_HEALTHY = "withdrawn: not healthy"

_DISPOSE_TIMEOUT = 10.0
"""Default seconds :meth:`Registration.dispose` waits for a registration write in flight."""


class ServiceGroup:
    """The registrations of one service held by a Discovery.

    They share one subscription to the service's host changes (a registration whose key is
    deleted heals) and one to its service key (credential sync; a deleted service key is
    written again): a change costs a dictionary lookup, not one callback per registration.
    Both callbacks run on the store's watch thread and only record what they saw: the work
    (and every call into user code) is handed off to the I/O scheduler.

    They also share the writes of the service key. A registration that wrote its host key asks
    for its service document to be stored and is told (``_service_written``) once a write that
    started after its request succeeded; each write stores the latest document asked for, so
    the last request wins, as if each registration had written its own. Writes are at least
    ``_SERVICE_WRITE_INTERVAL`` apart (on the asking registration's scheduler), one at a time:
    a request that finds no write running or scheduled makes one (on its own thread when one
    is due, else scheduled), and the requests that come meanwhile wait for the next, without
    holding a thread, so a burst of registrations shares a few writes. A document already
    stored (by the group or, as seen on the watch, by another host) is not written again
    unless forced.

    Credential sync, as the Go package: a registration's own service key write wins (it
    ignores what the key held before), and a registered host adopts the credentials of every
    later public document written by others (a non-public document changes nobody's
    credentials: a deliberate difference, Go wipes them).

    Args:
        store: where the service key is written.
        service_key: the service key.
        hosts: the service's shared host sync.
        services: the service's shared service-key changes.
    """

    def __init__(self, store: Store, service_key: str, hosts: SharedSync[Host],
                 services: reactivex.Observable[Change[Service]]) -> None:
        self._store = store
        self._service_key = service_key
        self._hosts = hosts
        self._services = services
        self._lock = threading.Lock()
        self._members: dict[str, Registration] = {}  # read without the lock by the watch
        self._subscriptions: list[abc.DisposableBase] = []
        # Service key writes, one at a time: the next serves every request waiting when it starts
        self._document: Service | None = None  # the latest asked for (or seen stored)
        self._stored = False  # the key holds _document
        self._stored_revision = 0  # since when (our write, or another's seen on the watch)
        self._waiting: list[tuple[Registration, int]] = []  # (who, lease) until the next write
        self._writer = False  # a write is running or scheduled
        self._next_write = -math.inf  # no write before (one interval after the last one)
        self._revision = 0  # of our last write: older service changes are our own echoes
        self._seen: tuple[int, Service | None] = (0, None)  # the latest service change seen

    def add(self, registration: Registration) -> None:
        with self._lock:
            first = not self._members
            self._members[registration.uuid] = registration
        # outside the lock: a subscription may deliver the current state at once
        if first:
            self._keep(self._hosts.observe().subscribe(on_next=self._on_hosts))
            self._keep(self._services.subscribe(on_next=self._on_services))

    def ensure_loaded(self) -> None:
        """Have the service's host changes read their first state before a registration
        writes its key, so that its put reaches every stream of the service as a change (a
        stream whose first read came after the put would see the host neither come nor go).

        Raises:
            StoreError: the read failed.
        """
        self._hosts.ensure_loaded()

    def remove(self, registration: Registration) -> None:
        with self._lock:
            self._members.pop(registration.uuid, None)
            self._waiting = [w for w in self._waiting if w[0] is not registration]
            if self._members:
                return
            subscriptions, self._subscriptions = self._subscriptions, []
            self._document, self._stored, self._seen = None, False, (0, None)
        for subscription in subscriptions:
            subscription.dispose()

    def write_service(self, registration: Registration, lease: int, document: Service,
                      force: bool) -> None:
        """Ask for ``document`` to be stored for ``registration`` (holding ``lease``).

        Without ``force``, a document already stored needs no write (a registration that
        heals forces: the key may have been deleted). ``registration._service_written(lease,
        revision, stored, seen)`` is called once it is stored (at once if it already is),
        ``_service_failed(lease, error)`` if the write failed (the registration asks again
        later). When a write is due, it runs now, on the caller's thread.
        """
        runtime = registration._runtime
        with self._lock:
            if force or document != self._document:
                self._document, self._stored = document, False
            stored = self._stored
            answer = (self._stored_revision, self._document, self._seen_after(
                self._stored_revision))
            start = not stored and not self._writer
            if not stored:
                self._waiting.append((registration, lease))
                self._writer = True
            delay = self._delay(runtime) if start else 0.0
        if stored:
            registration._service_written(lease, *answer)
        elif start and delay > 0:
            runtime.after(delay, lambda: self._write(runtime))
        elif start:
            self._write(runtime)

    def _seen_after(self, revision: int) -> Service | None:
        """The document another host wrote after ``revision``, if the watch saw one."""
        seen_revision, seen = self._seen
        return seen if seen_revision > revision else None

    def _delay(self, runtime: Runtime) -> float:
        """Seconds until the next write may start, on ``runtime``'s clock (clamped to one
        interval: registrations of a group may use clocks that disagree)."""
        return min(max(self._next_write - runtime.now(), 0.0), _SERVICE_WRITE_INTERVAL)

    def _write(self, runtime: Runtime) -> None:
        """Store the latest document and answer the requests waiting for it (``_writer`` is
        set); the requests made meanwhile get the next write."""
        with self._lock:
            document, answered, self._waiting = self._document, self._waiting, []
            self._next_write = runtime.now() + _SERVICE_WRITE_INTERVAL
        error: Exception | None = None
        revision = 0
        if document is not None:  # None: the group emptied, nobody waits
            try:
                revision = self._store.put(self._service_key, document.to_json().encode())
            except Exception as failure:
                error = failure
        with self._lock:
            if error is None and document is not None:
                self._revision = max(self._revision, revision)
                if document is self._document:  # not replaced meanwhile
                    self._stored, self._stored_revision = True, revision
            again = self._writer = bool(self._waiting)
            delay = self._delay(runtime)
            seen = self._seen_after(revision)
        for registration, lease in answered:
            try:
                if error is not None:
                    registration._service_failed(lease, error)
                elif document is not None:
                    registration._service_written(lease, revision, document, seen)
            except Exception:  # a bug must not leave the others waiting
                log.exception("%s: could not complete the registration", registration._label)
        if again:
            runtime.after(delay, lambda: self._write(runtime))

    def _keep(self, subscription: abc.DisposableBase) -> None:
        with self._lock:
            if self._members:
                self._subscriptions.append(subscription)
                return
        subscription.dispose()  # the group emptied meanwhile

    def _on_hosts(self, change: Change[Host]) -> None:
        """On the watch thread: tell the members whose key was deleted (they hand off)."""
        if change.initial or not change.removed:
            return
        members = self._members
        for uuid in change.removed:
            registration = members.get(uuid)
            if registration is not None:
                registration._on_removed(change.revision)

    def _on_services(self, change: Change[Service]) -> None:
        """On the watch thread: remember what the service key holds; members adopt the
        credentials of a later write by others; a deletion after our write is repaired."""
        document = next(iter(change.items.values()), None)
        with self._lock:
            self._seen = max(self._seen, (change.revision, document), key=lambda s: s[0])
            deleted = (document is None and self._stored
                       and change.revision > self._stored_revision)
            if deleted:
                self._stored = False
            elif (document is not None and change.revision > self._revision
                  and not self._writer):
                self._document, self._stored = document, True  # stored by another host
                self._stored_revision = change.revision
            members = list(self._members.values())
        for registration in members:
            if deleted:
                registration._service_deleted()
            elif document is not None:
                registration._on_service(document, change.revision)


class Registration(abc.DisposableBase):
    """A host registered under a service, held until disposed.

    Created by :meth:`Discovery.register`, which returns at once; the work goes on in the
    background (on the Discovery's I/O threads) and never gives up until disposed.
    Use it as a context manager, or call :meth:`dispose`.

    Attributes:
        service: the service name.
        uuid: the host's uuid (last segment of its key).
        key: the host key in the store.
        ttl: the lease TTL in seconds.
    """

    def __init__(self, store: Store, keyspace: Keyspace, service: str, host: Host, ttl: float,
                 runtime: Runtime, group: ServiceGroup, keeper: LeaseKeeper,
                 on_disposed: Callable[[Registration], None] | None = None,
                 healthy: abc.ObservableBase[bool] | None = None,
                 delivery: abc.SchedulerBase | None = None) -> None:
        self.service = service
        self.ttl = ttl
        self._host = host
        self.uuid = host.uuid
        self.key = keyspace.host_key(service, host.uuid)
        self._service_key = keyspace.service_key(service)
        self._store = store
        self._runtime = runtime
        # where status and credentials observers are called from library threads: not the
        # I/O threads, which observers that block (waiting for their peers) would starve
        self._delivery = runtime if delivery is None else Runtime(runtime.timer, delivery)
        self._lock = threading.Condition(threading.RLock())
        self._lease = 0
        self._lease_ttl = 0  # as granted (etcd grants at least 2 s)
        self._ever = False  # registered at least once: later registrations rewrite everything
        # From start (or a loss) to the host put: a loss signalled meanwhile is already being
        # repaired, unless our key is deleted after that put (_removed_revision).
        self._registering = True
        self._removed_revision = 0  # the latest deletion of our key the watch saw
        self._in_flight = 0  # thread id of a registration write running (dispose waits for it)
        self._keeping: abc.DisposableBase | None = None  # the keeper's hold on our lease
        self._put_revision = 0  # revision of our last host put; older deletions are stale
        self._service_revision = 0  # of the service key write that served us (0: none yet)
        self._last_refresh = 0.0
        # Readiness gating (healthy=): writes happen only while the gate is open
        self._healthy = healthy
        self._health = SingleAssignmentDisposable()  # our subscription to it
        self._gate_open = healthy is None  # the latest health value applied
        self._gate_wanted = False  # the latest health value received
        self._gate_applying = False  # an _apply_gate task runs or is scheduled
        self._gate_aborted = False  # a write in flight revoked its lease: the gate closed
        self._health_failure = ""  # the health observable failed: withdrawn for good
        self._health_ended = False  # the health observable completed: its last value holds
        self._withdrawing = 0  # thread id of a withdrawal revoking its lease (dispose waits)
        self._fork_generation = fork_generation()
        self._state = (RegistrationStatus.REGISTERING if healthy is None
                       else RegistrationStatus.WITHDRAWN)
        self._reason = "" if healthy is None else _NOT_HEALTHY_YET
        self._refused_refresh = False  # FAILED because keepalives were refused (not a write)
        self._refused_write = ""  # what the write refused last was (a FAILED it caused)
        self._disposed = False  # no more work (set first by dispose or Discovery.close)
        self._stopped = False  # dispose's steps are done or under way
        self._stopper = 0  # the thread doing them (a dispose from its observers must not wait)
        self._backoff = Backoff(initial=0.2, maximum=min(5.0, max(1.0, ttl / 3)))
        self._slow = Backoff(initial=30.0, maximum=60.0)  # after a permanent error
        self._pending = SerialDisposable()
        label = f"registration {service}/{host.uuid}"
        self._status: SerialSubject[RegistrationStatus] = SerialSubject(
            f"{label} status", replay=True, initial=self._state, has_initial=True)
        self._credentials: SerialSubject[Credentials] = SerialSubject(
            f"{label} credentials", replay=True, initial=host.credentials, has_initial=True)
        self._group = group
        self._keeper = keeper
        self._on_disposed = on_disposed

    # --- public -------------------------------------------------------------------------

    @property
    def host(self) -> Host:
        """The host as stored (defaults filled in, credentials kept in sync)."""
        return self._host

    @property
    def ready(self) -> bool:
        """True while the host key is known to be registered (non-blocking)."""
        return self._state is RegistrationStatus.REGISTERED

    @property
    def current_status(self) -> RegistrationStatus:
        """The status now."""
        return self._state

    @property
    def reason(self) -> str:
        """Why the registration is not REGISTERED, as the last error says (its type and
        message, never a secret); "" while registered or before any error."""
        return "" if self._state is RegistrationStatus.REGISTERED else self._reason

    @property
    def status(self) -> reactivex.Observable[RegistrationStatus]:
        """The current status, then every change; completes after DISPOSED.

        Emits on a delivery thread of the Discovery (or the caller's, on dispose), outside every
        library lock, one value at a time; an observer that raises is logged and changes
        nothing else.

        Raises:
            UsedAfterFork: in a process forked after the registration was made.
        """
        check_fork(self._fork_generation, "this Registration")
        return self._status.observe().pipe(operators.distinct_until_changed())

    @property
    def credentials(self) -> reactivex.Observable[Credentials]:
        """The host's current credentials, then each change written to the service key by
        another host of a public service (the host key is rewritten with them first).
        Emits on a delivery thread, outside every library lock; completes after DISPOSED.
        Raises UsedAfterFork in a process forked after the registration was made."""
        check_fork(self._fork_generation, "this Registration")
        return self._credentials.observe().pipe(operators.distinct_until_changed())

    def wait(self, timeout: float | None = None) -> Registration:
        """Block until the host is first registered; returns the registration.

        Raises:
            RegistrationError: not registered within ``timeout`` seconds (the message says the
                last error), disposed first, refused by etcd (FAILED: authentication,
                permission, request size; the message says why), or withdrawn for good (the
                health observable failed, or completed on False: at once, not after
                ``timeout``). While merely withdrawn (not healthy now) it keeps waiting.
            UsedAfterFork: in a process forked after the registration was made (nothing
                keeps it registered there).
        """
        check_fork(self._fork_generation, "this Registration")
        with self._lock:
            ok = self._lock.wait_for(self._settled, timeout)
            if self._disposed:
                raise RegistrationError(f"registration of {self.service!r} was disposed")
            if self._state is RegistrationStatus.FAILED:
                raise RegistrationError(
                    f"registration of {self.service!r} refused: {self._reason}")
            if self._withdrawn_for_good():
                raise RegistrationError(
                    f"registration of {self.service!r} withdrawn for good: "
                    + (self._health_failure
                       or "its health observable completed, its last value not True"))
            if not ok:
                raise RegistrationError(
                    f"registration of {self.service!r} not done after {timeout}s"
                    + (f" (last error: {self._reason})" if self._reason else ""))
        return self

    def dispose(self, timeout: float | None = _DISPOSE_TIMEOUT, *, drain: float = 0.0) -> None:
        """Stop keeping the host alive and revoke its lease, so its key vanishes at once.

        A registration write in flight is waited for (up to ``timeout`` seconds, None: no
        limit) and its lease revoked, so the key does not appear after this returns. Idempotent.
        If etcd cannot be reached the lease expires by itself after ``ttl`` (logged at
        WARNING).

        ``drain``: once the key is removed, block ``drain`` more seconds before returning, so
        that clients see the host go and move away while this process still serves the
        requests in flight (graceful shutdown). Measured on the registration's scheduler (a
        ``TestScheduler`` counts it in virtual time: then call this from another thread than
        the one advancing the clock). Only the call that disposes waits, and only when the host
        key was live (written and kept alive, whatever the status says); a registration
        already disposed, withdrawn or lost returns at once.

        Raises:
            ValueError: ``drain`` is not a finite number >= 0 (before anything is done).
            UsedAfterFork: called in a process forked after the registration was made.
        """
        seconds = validate_drain(drain)
        check_fork(self._fork_generation, "this Registration")
        if self._stop(revoke=True, timeout=timeout):
            wait_on(self._runtime.timer, seconds)

    def _cancel(self) -> None:
        """Stop every background step now (without waiting): a write in flight revokes its
        own lease when it returns. :meth:`Discovery.close` cancels them all, then disposes."""
        with self._lock:
            self._disposed = True
            self._lock.notify_all()
        self._pending.dispose()
        try:
            self._health.dispose()  # outside the lock: it may call the user's observable
        except Exception:  # user code: it must not stop a dispose (nor close) half way
            log.exception("%s: disposing the subscription to its health observable failed",
                          self._label)

    def _stop(self, revoke: bool, timeout: float | None = _DISPOSE_TIMEOUT) -> bool:
        """Dispose; without ``revoke`` the process behaves as if it crashed (the lease is left
        to expire), which :func:`rx_discovery.testing.crash` uses. Returns whether this call
        removed a live host key (one clients may be using: a drain waits for them).

        Live is decided when the lease is taken, under the lock, not from the status: the
        host key is written and kept alive from the put on, while the status may still say
        REGISTERING (the service document is being written) or FAILED (it was refused, or a
        refresh was); a withdrawn registration holds no lease, a lost one is registering
        again (its old key is gone), and a write in flight revokes its own lease."""
        self._cancel()
        with self._lock:
            if self._stopped:  # another dispose (or close) is under way: it revokes, wait
                if self._stopper != threading.get_ident():
                    self._lock.wait_for(lambda: self._state is RegistrationStatus.DISPOSED,
                                        timeout)
                return False
            self._stopped, self._stopper = True, threading.get_ident()
            finished = True
            if self._writing():
                finished = self._lock.wait_for(lambda: not self._writing(), timeout)
            live = self._lease != 0 and not self._registering
            lease, self._lease = self._lease, 0
            keeping, self._keeping = self._keeping, None
        if not finished:
            log.warning("%s: a registration write still runs after %ss; if it stores the key, "
                        "its lease is revoked when it returns", self._label, timeout)
        if keeping is not None:
            keeping.dispose()
        self._group.remove(self)
        if self._on_disposed is not None:
            self._on_disposed(self)
        if lease and revoke:
            self._revoke(lease, "on dispose")
        log.info("%s: disposed", self._label)
        with self._lock:
            self._enter(RegistrationStatus.DISPOSED, None)
            self._status.enqueue_completed()
            self._credentials.enqueue_completed()
        self._flush()
        return live

    def __reduce__(self) -> Any:
        raise not_picklable("a Registration")

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return (f"Registration({self.service!r}, uuid={self.uuid!r}, "
                f"status={self.current_status.name})")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def _repr_html_(self) -> str:
        host = self._host
        return (f"<b>Registration</b> of <code>{escape_html(self.service)}</code> "
                f"as <code>{escape_html(host.hostname)}</code> "
                f"(uuid <code>{escape_html(self.uuid)}</code>, ttl {self.ttl:g}s): "
                f"<b>{self.current_status.name}</b>")

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return f"registration {self.service}/{self.uuid}"

    def _settled(self) -> bool:
        return self._disposed or self._withdrawn_for_good() or self._state in (
            RegistrationStatus.REGISTERED, RegistrationStatus.FAILED)

    def _withdrawn_for_good(self) -> bool:
        """Under the lock: the health observable failed, or completed on False (or before
        any value): nothing will register the host again."""
        return bool(self._health_failure) or (self._health_ended and not self._gate_wanted)

    def start(self) -> None:
        """Begin registering in the background (called by Discovery.register)."""
        self._group.add(self)
        if self._healthy is not None:  # gated: registers on the first True
            self._follow_health(self._healthy)
            return
        # Not kept in _pending: _register may fail and schedule its retry there before run()
        # returns (on another thread, or inline); a dispose before it runs makes it a no-op.
        self._runtime.run(self._register)

    def _flush(self) -> None:
        """Deliver the queued status and credentials (never under a library lock)."""
        self._status.flush()
        self._credentials.flush()

    def _deliver(self) -> None:
        """Deliver the queued status and credentials in a task of its own, on the delivery
        threads (from a library thread: it must neither wait for observers nor lend them a
        thread the library's own work needs)."""
        self._delivery.run(self._flush)

    def _set_status(self, status: RegistrationStatus, reason: str | None = None) -> None:
        """Change the status (and reason) and deliver it (always handed off, see
        :meth:`_deliver`)."""
        with self._lock:
            if self._disposed or not self._gate_open:  # withdrawn: WITHDRAWN stays
                return
            self._enter(status, reason)
        self._deliver()

    def _enter(self, status: RegistrationStatus, reason: str | None) -> None:
        """Under the lock: the new state, queued for the status observers."""
        if status is not self._state:  # a change (the observers see changes only too)
            metrics.registration_status(self, status)
        self._state = status
        if reason is not None:
            self._reason = reason
        self._status.enqueue(status)
        self._lock.notify_all()

    def _failed(self, error: Exception, what: str) -> tuple[float, str | None]:
        """Record a failure; returns the delay before trying again and, for a permanent
        error (``StoreError.permanent``, retried only slowly), the reason to report as FAILED
        once the retry is scheduled."""
        permanent = isinstance(error, StoreError) and error.permanent
        reason = f"{what} failed ({type(error).__name__}: {error})"
        with self._lock:
            if self._gate_open:  # withdrawn: the reason says why (a write nobody wants failed)
                self._reason = reason
            self._lock.notify_all()
        backoff = self._slow if permanent else self._backoff
        delay = backoff.next()
        log.log(logging.WARNING if permanent else
                logging.INFO if backoff.attempt == 1 else logging.DEBUG,
                "%s: %s; retrying in %.2fs", self._label, reason, delay)
        return delay, reason if permanent else None

    def _retry_later(self, error: Exception, what: str, action: Callable[[], None],
                     lease: int = 0) -> None:
        """Try ``action`` again after the backoff ``error`` calls for; then report FAILED if
        the error is permanent. With ``lease``, ``action`` repairs the writes of that lease:
        it is dropped once the registration is registering again (it would replace, in
        ``_pending``, the retry of that registration)."""
        if lease and self._stale(lease):
            return
        delay, refused = self._failed(error, what)
        with self._lock:
            if lease and self._stale(lease):
                return
            if not self._disposed:
                self._pending.disposable = self._runtime.after(delay, action)
            if refused is not None:  # only this write's success ends this FAILED
                self._refused_refresh = False
                self._refused_write = what
        if refused is not None:
            self._set_status(RegistrationStatus.FAILED, refused)

    def _register(self) -> None:
        with self._lock:
            if self._disposed or not self._gate_open:
                return  # disposed, or withdrawn (not healthy): _resume starts again
            self._in_flight = threading.get_ident()
        try:
            follow_up = self._register_once()
        finally:
            with self._lock:
                self._in_flight = 0
                # the gate closed during the write (which revoked its lease) and opened
                # again before it returned: _resume left the new attempt to us
                again = self._gate_aborted and self._gate_open and not self._disposed
                self._gate_aborted = False
                self._lock.notify_all()
        follow_up()  # after the write is no longer in flight: it may call user code
        if again:
            self._runtime.run(self._register)

    def _register_once(self) -> Callable[[], None]:
        """Grant a lease and put the host key; returns what to do next (outside the
        in-flight window)."""
        host, old_lease, renewing = self._host, self._lease, self._lease != 0 or self._ever
        try:
            self._group.ensure_loaded()
            lease = self._store.grant(math.ceil(self.ttl))
        except Exception as error:
            return functools.partial(self._retry_later, error, "register", self._register)
        try:
            revision = self._store.put(self.key, host.to_json().encode(), lease.id)
        except Exception as error:
            self._revoke(lease.id, "after a failed put")  # else one lease leaks per attempt
            return functools.partial(self._retry_later, error, "register", self._register)
        with self._lock:
            disposed = self._disposed or not self._gate_open
            self._gate_aborted = not self._disposed and not self._gate_open
            if not disposed:
                self._lease, self._put_revision, self._ever = lease.id, revision, True
                self._lease_ttl, self._registering = lease.ttl, False
                self._last_refresh = self._runtime.now()
                self._keeping = self._keeper.keep(
                    lease.id, lease.ttl, functools.partial(self._on_keepalive, lease.id))
                changed = self._host is not host  # credentials adopted meanwhile
        if disposed:  # disposed (dispose waits for this revoke) or withdrawn during the put
            self._revoke(lease.id, "of a registration disposed or withdrawn while written")
            return _nothing
        if old_lease:
            self._revoke(old_lease, "replaced", quiet=True)
        if self._removed_revision > revision:  # the watch saw it before we saw our put
            return functools.partial(self._lost, "its key was deleted")
        if changed:
            self._runtime.run(self._rewrite_host)
        return functools.partial(self._write_service, lease.id, renewing)

    def _write_service(self, lease: int, force: bool) -> None:
        """Ask the group to store our service document; REGISTERED once it is."""
        if not self._stale(lease):
            self._group.write_service(self, lease, service_document(self.service, self._host),
                                      force)

    def _service_written(self, lease: int, revision: int, stored: Service,
                         seen: Service | None) -> None:
        """The service key holds ``stored`` (our document or a later one of the same write),
        written at ``revision`` after we asked; ``seen``: what another host wrote after that,
        as the watch already told. Adopt their credentials (Go: the last writer wins)."""
        with self._lock:
            if self._stale(lease):
                return  # disposed, or registering again (the lease may be gone)
            self._service_revision = max(self._service_revision, revision)
            changed = self._adopt(stored)
            if seen is not None:
                changed |= self._adopt(seen)
            self._backoff.reset()
            self._slow.reset()
        if changed:
            self._runtime.run(self._rewrite_host)
        log.info("%s: registered (lease %x, ttl %ss)", self._label, lease, self._lease_ttl)
        # the group tells the others of its write after us: our observers must not delay them
        self._set_status(RegistrationStatus.REGISTERED, "")

    def _service_failed(self, lease: int, error: Exception) -> None:
        """The service key write failed: ask again after a backoff (the host key and its
        lease stay, kept alive)."""
        self._retry_later(error, "service key write",
                          lambda: self._write_service(lease, True), lease)

    def _stale(self, lease: int) -> bool:
        """True when work for ``lease`` is moot: disposed, registering again (``lease`` is
        lost even while it is still ``_lease``), or another lease holds the key."""
        return self._disposed or self._registering or lease != self._lease

    def _on_keepalive(self, lease: int, error: Exception | None) -> None:
        """The outcome of a refresh of ``lease``, told by the keeper inside its batch: only
        record it; anything more (and every emission) runs in a task of its own."""
        if self._disposed or lease != self._lease:
            return  # an answer for a lease we replaced
        if error is None:
            with self._lock:
                self._last_refresh = self._runtime.now()
                recovered = (self._state is RegistrationStatus.FAILED and not self._registering
                             and self._refused_refresh)
            if recovered:  # refused refreshes work again
                self._runtime.run(lambda: self._keepalive_recovered(lease))
        else:
            self._runtime.run(lambda: self._keepalive_failed(lease, error))

    def _keepalive_recovered(self, lease: int) -> None:
        with self._lock:
            recovered = (lease == self._lease and not self._registering
                         and self._state is RegistrationStatus.FAILED and self._refused_refresh)
            self._refused_refresh = False
        if recovered:
            self._set_status(RegistrationStatus.REGISTERED, "")

    def _keepalive_failed(self, lease: int, error: Exception) -> None:
        if self._stale(lease):  # a lease already lost: the registration in flight replaces it
            return
        if isinstance(error, LeaseNotFound):
            self._lost("the lease expired or was revoked")
            return
        _, refused = self._failed(error, "keepalive")
        if self._runtime.now() - self._last_refresh >= self.ttl:
            self._lost(f"no keepalive for {self.ttl:g}s")
        elif refused is not None:
            with self._lock:
                self._refused_refresh = True  # a refresh that works again ends this FAILED
            self._set_status(RegistrationStatus.FAILED, refused)

    def _lost(self, reason: str) -> None:
        """Register again (scheduled first), then deliver LOST."""
        with self._lock:
            if self._disposed or self._registering:
                return  # already registering again
            self._registering = True
            keeping, self._keeping = self._keeping, None
            self._pending.disposable = Disposable()  # a retry of the old lease's writes
            self._enter(RegistrationStatus.LOST, f"lost: {reason}")  # before the new attempt
        self._runtime.run(self._register)  # not in _pending: see start()
        if keeping is not None:
            keeping.dispose()
        log.info("%s: lost (%s); registering again", self._label, reason)
        self._deliver()  # once the recovery is scheduled

    def _revoke(self, lease: int, why: str, quiet: bool = False) -> None:
        """Revoke ``lease``; a failure is logged at WARNING (the key stays until the lease
        expires), or at DEBUG when ``quiet`` (an old lease, usually gone already)."""
        try:
            self._store.revoke(lease)
        except Exception as error:
            log.log(logging.DEBUG if quiet else logging.WARNING,
                    "%s: could not revoke lease %x %s (%s); its key expires within %ss",
                    self._label, lease, why, type(error).__name__, self.ttl)

    # --- readiness gating (register(..., healthy=)) -------------------------------------

    def _writing(self) -> bool:
        """Under the lock: a registration write or a withdrawal's revoke runs on another
        thread (dispose waits for it: the key must be gone when dispose returns)."""
        me = threading.get_ident()
        return (self._in_flight not in (0, me)) or (self._withdrawing not in (0, me))

    def _follow_health(self, healthy: abc.ObservableBase[bool]) -> None:
        """Subscribe to the health observable (on the caller's thread, holding no lock: the
        observable is user code and may emit at once)."""
        try:
            subscription = healthy.subscribe(on_next=self._on_health,
                                             on_error=self._on_health_error,
                                             on_completed=self._on_health_completed)
        except Exception as error:  # a broken observable is reported like its error
            self._on_health_error(error)
            return
        self._health.disposable = subscription  # disposed at once if we were disposed

    def _on_health(self, value: bool) -> None:
        """A health value (on the observable's thread): record the latest and hand off; the
        latest value wins, applied in order by one task at a time."""
        self._gate_changed(bool(value), "")

    def _on_health_error(self, error: Exception) -> None:
        """The health observable failed: withdraw for good (until disposed) and say why."""
        log.warning("%s: its health observable failed (%s: %s); withdrawn until disposed",
                    self._label, type(error).__name__, error)
        self._gate_changed(False, f"withdrawn: the health observable failed "
                                  f"({type(error).__name__}: {error})")

    def _on_health_completed(self) -> None:
        """The health observable completed: its last value holds (until disposed)."""
        log.info("%s: its health observable completed; its last value holds", self._label)
        with self._lock:
            self._health_ended = True
            self._lock.notify_all()  # wait() gives up if that value is False

    def _gate_changed(self, healthy: bool, failure: str) -> None:
        with self._lock:
            if self._disposed or self._health_failure:
                return
            self._gate_wanted, self._health_failure = healthy, failure
            self._lock.notify_all()  # wait() gives up on a failure
            start = not self._gate_applying
            self._gate_applying = True
        if start:
            self._runtime.run(self._apply_gate)

    def _apply_gate(self) -> None:
        """Open or close the gate until it matches the latest health value (on an I/O
        thread; one such task at a time)."""
        while True:
            with self._lock:
                wanted, failure = self._gate_wanted, self._health_failure
                done = self._disposed or (wanted == self._gate_open and (
                    not failure or self._reason == failure))
                if done:
                    self._gate_applying = False
                    return
            if wanted:
                self._resume()
            else:
                self._withdraw(failure or _NOT_HEALTHY)

    def _withdraw(self, reason: str) -> None:
        """Close the gate: stop keeping the lease and revoke it (the key vanishes at once);
        WITHDRAWN once it is done. A write in flight revokes its own lease when it returns."""
        with self._lock:
            if self._disposed:
                return
            self._gate_open = False
            lease, self._lease = self._lease, 0
            keeping, self._keeping = self._keeping, None
            self._registering = True  # deletions of our key are ours; no healing
            self._pending.disposable = Disposable()  # a retry or keepalive step scheduled
            self._withdrawing = threading.get_ident()
        try:
            if keeping is not None:
                keeping.dispose()
            if lease:
                self._revoke(lease, "on withdrawal")
        finally:
            with self._lock:
                self._withdrawing = 0
                self._lock.notify_all()
        log.info("%s: withdrawn (%s)", self._label, reason)
        with self._lock:
            if self._disposed:
                return
            self._enter(RegistrationStatus.WITHDRAWN, reason)
        self._deliver()  # on the delivery threads: this is an I/O thread

    def _resume(self) -> None:
        """Open the gate: REGISTERING, and register (unless a write is still in flight: it
        registers again when it returns, see :meth:`_register`)."""
        with self._lock:
            if self._disposed:
                return
            self._gate_open = True
            self._pending.disposable = Disposable()
            self._enter(RegistrationStatus.REGISTERING, "healthy: registering")
            start = not self._in_flight
        if start:
            self._runtime.run(self._register)
        log.info("%s: healthy; registering", self._label)
        self._deliver()  # on the delivery threads: this is an I/O thread

    # --- what others write --------------------------------------------------------------

    def _on_removed(self, revision: int) -> None:
        """Our key was deleted (on the watch thread): remember it and hand off."""
        self._removed_revision = max(self._removed_revision, revision)
        self._runtime.run(lambda: self._check_removed(revision))

    def _check_removed(self, revision: int) -> None:
        """Unless it is an old deletion (or a registration write in flight will see it), we
        lost our key behind our back (key deleted, lease revoked or expired): register again."""
        if revision > self._put_revision and not self._registering:
            self._lost("its key was deleted")

    def _service_deleted(self) -> None:
        """The service key was deleted (on the watch thread): a registered host writes it
        again (a registering one will anyway)."""
        lease = self._lease
        if lease and not self._registering and not self._disposed:
            self._runtime.run(lambda: self._write_service(lease, True))

    def _on_service(self, service: Service, revision: int) -> None:
        """Credential synchronisation (on the watch thread): adopt the credentials another
        host wrote after our own service key write; the rewrite and the emission hand off."""
        with self._lock:
            if (self._disposed or not self._service_revision
                    or revision <= self._service_revision):
                return  # not written yet (our write wins), or older than our write
            changed = self._adopt(service)
        if changed:
            log.info("%s: credentials changed by another host; rewriting the host key",
                     self._label)
            self._runtime.run(self._rewrite_host)

    def _adopt(self, service: Service) -> bool:
        """Take the credentials of a public ``service`` document (under the lock); queue them
        for the credentials observers. True if they changed."""
        if not service.public or not self._host.public:
            return False
        credentials = service.credentials
        if credentials == self._host.credentials:
            return False
        self._host = dataclasses.replace(self._host, user=credentials.user,
                                         password=credentials.password)
        self._credentials.enqueue(credentials)
        return True

    def _rewrite_host(self) -> None:
        """Store the current host under the current lease (on an I/O thread), then deliver
        the credentials queued."""
        with self._lock:
            lease, host = self._lease, self._host
            write = not self._disposed and lease != 0 and not self._registering
        if write:
            try:
                revision = self._store.put(self.key, host.to_json().encode(), lease)
            except LeaseNotFound:
                self._lost("the lease expired or was revoked")
            except Exception as error:
                self._retry_later(error, _CREDENTIAL_UPDATE, self._rewrite_host, lease)
            else:
                with self._lock:
                    self._put_revision = max(self._put_revision, revision)
                    again = self._host is not host and lease == self._lease
                    # FAILED by this write's refusal (not a refused refresh, nor the service
                    # document's): it works again
                    recovered = (self._state is RegistrationStatus.FAILED
                                 and not self._refused_refresh
                                 and self._refused_write == _CREDENTIAL_UPDATE
                                 and not self._stale(lease))
                    if recovered:
                        self._backoff.reset()
                        self._slow.reset()
                if again:
                    self._runtime.run(self._rewrite_host)
                if recovered:
                    self._set_status(RegistrationStatus.REGISTERED, "")
        # else: the registration in flight writes the current host
        self._deliver()


_CREDENTIAL_UPDATE = "credential update"


def _nothing() -> None:
    pass
