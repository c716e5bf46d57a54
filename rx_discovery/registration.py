"""Registration: a host held under a lease, kept alive, healed, and revoked on dispose.

Lifecycle (reported on :attr:`Registration.status`)::

    REGISTERING --grant+put, service key--> REGISTERED --keepalive every ttl/3--> REGISTERED
         ^  (retry with jittered backoff)              |  lease gone, key deleted, or no
         |                                             v  refresh for a whole ttl
         +---------------------------------------- LOST
    any state --dispose()--> DISPOSED (lease revoked: the host key vanishes at once)

Background work runs on the Discovery's I/O scheduler; delays (keepalive period, backoff)
are measured on the registration's ``scheduler``, so a ``TestScheduler`` drives them.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import html
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
from reactivex.disposable import SerialDisposable
from reactivex.subject import BehaviorSubject

from rx_discovery._errors import (
    AuthenticationFailed,
    LeaseNotFound,
    RegistrationError,
)
from rx_discovery._keeper import LeaseKeeper
from rx_discovery._runtime import Backoff, Runtime
from rx_discovery._shared import SharedSync
from rx_discovery.keys import Keyspace
from rx_discovery.model import (
    Credentials,
    Host,
    Service,
    validate_host_for_registration,
    validate_host_name,
    validate_key_segment,
)
from rx_discovery.store import Store
from rx_discovery.sync import Change

__all__ = ["Registration", "RegistrationStatus", "ServiceGroup", "prepare_host", "service_document",
           "validate_ttl"]

log = logging.getLogger("rx_discovery")


class RegistrationStatus(enum.Enum):
    """Where a registration stands."""

    REGISTERING = "registering"
    REGISTERED = "registered"
    LOST = "lost"
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


class ServiceGroup:
    """The registrations of one service held by a Discovery.

    They share one subscription to the service's host changes (a registration whose key is
    deleted heals) and, when one is public, one to its service key (credential sync): a change
    costs a dictionary lookup, not one callback per registration.

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
        self._watching_services = False
        # Service key writes, one at a time: the next serves every request waiting when it starts
        self._document: Service | None = None  # the latest asked for (or seen stored)
        self._stored = False  # the key holds _document
        self._waiting: list[tuple[Registration, int]] = []  # (who, lease) until the next write
        self._writer = False  # a write is running or scheduled
        self._next_write = -math.inf  # no write before (one interval after the last one)
        self._revision = 0  # of our last write: older service changes are our own echoes

    def add(self, registration: Registration) -> None:
        with self._lock:
            first = not self._members
            self._members[registration.uuid] = registration
            public = registration.host.public and not self._watching_services
            self._watching_services |= public
        # outside the lock: a subscription may deliver the current state at once
        if first:
            self._keep(self._hosts.observe().subscribe(on_next=self._on_hosts))
        if public:
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
            self._watching_services, self._document, self._stored = False, None, False
        for subscription in subscriptions:
            subscription.dispose()

    def write_service(self, registration: Registration, lease: int, document: Service,
                      force: bool) -> None:
        """Ask for ``document`` to be stored for ``registration`` (holding ``lease``).

        Without ``force``, a document already stored needs no write (a registration that
        heals forces: the key may have been deleted). ``registration._service_written(lease)``
        is called once it is stored (at once if it already is), ``_service_failed(lease,
        error)`` if the write failed (the registration asks again later). When a write is
        due, it runs now, on the caller's thread.
        """
        runtime = registration._runtime
        with self._lock:
            if force or document != self._document:
                self._document, self._stored = document, False
            stored = self._stored
            start = not stored and not self._writer
            if not stored:
                self._waiting.append((registration, lease))
                self._writer = True
            delay = self._delay(runtime) if start else 0.0
        if stored:
            registration._service_written(lease)
        elif start and delay > 0:
            runtime.after(delay, lambda: self._write(runtime))
        elif start:
            self._write(runtime)

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
        if document is not None:  # None: the group emptied, nobody waits
            try:
                revision = self._store.put(self._service_key, document.to_json().encode())
            except Exception as failure:
                error = failure
        with self._lock:
            if error is None and document is not None:
                self._revision = max(self._revision, revision)
                self._stored |= document is self._document  # not replaced meanwhile
            again = self._writer = bool(self._waiting)
            delay = self._delay(runtime)
        for registration, lease in answered:
            try:
                if error is None:
                    registration._service_written(lease)
                else:
                    registration._service_failed(lease, error)
            except Exception:  # e.g. a status observer raised: the others must still be told
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
        if change.initial or not change.removed:
            return
        members = self._members
        for uuid in change.removed:
            registration = members.get(uuid)
            if registration is not None:
                registration._on_removed(change.revision)

    def _on_services(self, change: Change[Service]) -> None:
        with self._lock:
            if change.revision > self._revision and not self._writer:
                for service in change.items.values():
                    self._document, self._stored = service, True  # stored by another host
            members = list(self._members.values())
        for service in change.items.values():
            for registration in members:
                registration._on_service(service)


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
                 on_disposed: Callable[[Registration], None] | None = None) -> None:
        self.service = service
        self.ttl = ttl
        self._host = host
        self.uuid = host.uuid
        self.key = keyspace.host_key(service, host.uuid)
        self._service_key = keyspace.service_key(service)
        self._store = store
        self._runtime = runtime
        self._lock = threading.Condition(threading.RLock())
        self._lease = 0
        self._lease_ttl = 0  # as granted (etcd grants at least 2 s)
        self._ever = False  # registered at least once: later registrations rewrite everything
        # From start (or a loss) to the host put: a loss signalled meanwhile is already being
        # repaired, unless our key is deleted after that put (_removed_revision).
        self._registering = True
        self._removed_revision = 0
        self._keeping: abc.DisposableBase | None = None  # the keeper's hold on our lease
        self._put_revision = 0  # revision of our last host put; older deletions are stale
        self._last_refresh = 0.0
        self._last_error: Exception | None = None
        self._disposed = False
        self._backoff = Backoff(initial=0.2, maximum=min(5.0, max(1.0, ttl / 3)))
        self._pending = SerialDisposable()
        self._status: BehaviorSubject[RegistrationStatus] = BehaviorSubject(
            RegistrationStatus.REGISTERING)
        self._credentials: BehaviorSubject[Credentials] = BehaviorSubject(host.credentials)
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
        return self._status.value is RegistrationStatus.REGISTERED

    @property
    def current_status(self) -> RegistrationStatus:
        """The status now."""
        return self._status.value

    @property
    def status(self) -> reactivex.Observable[RegistrationStatus]:
        """The current status, then every change; completes after DISPOSED.

        Emits on the Discovery's I/O thread (or the caller's, on dispose).
        """
        return self._status.pipe(operators.distinct_until_changed())

    @property
    def credentials(self) -> reactivex.Observable[Credentials]:
        """The host's current credentials, then each change written to the service key by
        another host of a public service (the host key is rewritten with them)."""
        return self._credentials.pipe(operators.distinct_until_changed())

    def wait(self, timeout: float | None = None) -> Registration:
        """Block until the host is first registered; returns the registration.

        Raises:
            RegistrationError: not registered within ``timeout`` seconds (the message says the
                last error), disposed first, or refused by etcd (authentication/permission).
        """
        with self._lock:
            ok = self._lock.wait_for(self._settled, timeout)
            if self._disposed:
                raise RegistrationError(f"registration of {self.service!r} was disposed")
            if isinstance(self._last_error, AuthenticationFailed) and not self.ready:
                raise RegistrationError(
                    f"registration of {self.service!r} refused: {self._last_error}")
            if not ok:
                raise RegistrationError(
                    f"registration of {self.service!r} not done after {timeout}s"
                    + (f" (last error: {type(self._last_error).__name__}: {self._last_error})"
                       if self._last_error else ""))
        return self

    def dispose(self) -> None:
        """Stop keeping the host alive and revoke its lease, so its key vanishes at once.

        Idempotent. If etcd cannot be reached the lease expires by itself after ``ttl``.
        """
        self._stop(revoke=True)

    def _stop(self, revoke: bool) -> None:
        """Dispose; without ``revoke`` the process behaves as if it crashed (the lease is left
        to expire), which :func:`rx_discovery.testing.crash` uses."""
        with self._lock:
            if self._disposed:
                return
            self._disposed = True
            lease, self._lease = self._lease, 0
            keeping, self._keeping = self._keeping, None
            self._lock.notify_all()
        self._pending.dispose()
        if keeping is not None:
            keeping.dispose()
        self._group.remove(self)
        if self._on_disposed is not None:
            self._on_disposed(self)
        if lease and revoke:
            try:
                self._store.revoke(lease)
            except Exception as error:
                log.warning("%s: could not revoke lease on dispose (%s); the key expires in "
                            "%ss", self._label, type(error).__name__, self.ttl)
        log.info("%s: disposed", self._label)
        self._status.on_next(RegistrationStatus.DISPOSED)
        self._status.on_completed()
        self._credentials.on_completed()

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
        return (f"<b>Registration</b> of <code>{html.escape(self.service)}</code> "
                f"as <code>{html.escape(host.hostname)}</code> "
                f"(uuid <code>{html.escape(self.uuid)}</code>, ttl {self.ttl:g}s): "
                f"<b>{self.current_status.name}</b>")

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return f"registration {self.service}/{self.uuid}"

    def _settled(self) -> bool:
        return (self._disposed or self.ready
                or isinstance(self._last_error, AuthenticationFailed))

    def start(self) -> None:
        """Begin registering in the background (called by Discovery.register)."""
        self._group.add(self)
        self._pending.disposable = self._runtime.run(self._register)

    def _set_status(self, status: RegistrationStatus) -> None:
        with self._lock:
            if self._disposed:
                return
            self._status.on_next(status)
            self._lock.notify_all()

    def _failed(self, error: Exception, what: str) -> float:
        with self._lock:
            self._last_error = error
            self._lock.notify_all()
        delay = self._backoff.next()
        log.log(logging.INFO if self._backoff.attempt == 1 else logging.DEBUG,
                "%s: %s failed (%s: %s); retrying in %.2fs", self._label, what,
                type(error).__name__, error, delay)
        return delay

    def _register(self) -> None:
        if self._disposed:
            return
        host, old_lease, renewing = self._host, self._lease, self._lease != 0 or self._ever
        try:
            self._group.ensure_loaded()
            lease = self._store.grant(math.ceil(self.ttl))
            revision = self._store.put(self.key, host.to_json().encode(), lease.id)
        except Exception as error:
            if not self._disposed:
                self._pending.disposable = self._runtime.after(
                    self._failed(error, "register"), self._register)
            return
        with self._lock:
            if self._disposed:
                self._revoke_quietly(lease.id)
                return
            self._lease, self._put_revision, self._ever = lease.id, revision, True
            self._lease_ttl, self._registering = lease.ttl, False
            self._last_refresh = self._runtime.now()
            self._keeping = self._keeper.keep(
                lease.id, lease.ttl, functools.partial(self._on_keepalive, lease.id))
        if old_lease:
            self._revoke_quietly(old_lease)
        if self._removed_revision > revision:  # the watch saw it before we saw our put
            self._lost("its key was deleted")
            return
        self._write_service(lease.id, renewing)

    def _write_service(self, lease: int, force: bool) -> None:
        """Ask the group to store our service document; REGISTERED once it is."""
        if not self._disposed and lease == self._lease:
            self._group.write_service(self, lease, service_document(self.service, self._host),
                                      force)

    def _service_written(self, lease: int) -> None:
        """The service key holds our document (or a later one), written after we asked."""
        with self._lock:
            if self._disposed or lease != self._lease:
                return  # disposed, or registering again with another lease
            self._last_error = None
            self._backoff.reset()
        log.info("%s: registered (lease %x, ttl %ss)", self._label, lease, self._lease_ttl)
        self._set_status(RegistrationStatus.REGISTERED)

    def _service_failed(self, lease: int, error: Exception) -> None:
        """The service key write failed: ask again after a backoff (the host key and its
        lease stay, kept alive)."""
        if self._disposed or lease != self._lease:
            return
        self._pending.disposable = self._runtime.after(
            self._failed(error, "service key write"), lambda: self._write_service(lease, True))

    def _on_keepalive(self, lease: int, error: Exception | None) -> None:
        """The outcome of a refresh of ``lease`` (on the I/O scheduler)."""
        if self._disposed or lease != self._lease:
            return  # an answer for a lease we replaced
        if error is None:
            with self._lock:
                self._last_refresh, self._last_error = self._runtime.now(), None
        elif isinstance(error, LeaseNotFound):
            self._lost("the lease expired or was revoked")
        else:
            self._failed(error, "keepalive")
            if self._runtime.now() - self._last_refresh >= self.ttl:
                self._lost(f"no keepalive for {self.ttl:g}s")

    def _lost(self, reason: str) -> None:
        with self._lock:
            if self._disposed or self._registering:
                return  # already registering again
            self._registering = True
            keeping, self._keeping = self._keeping, None
        if keeping is not None:
            keeping.dispose()
        log.info("%s: lost (%s); registering again", self._label, reason)
        self._set_status(RegistrationStatus.LOST)
        self._pending.disposable = self._runtime.run(self._register)

    def _revoke_quietly(self, lease: int) -> None:
        try:
            self._store.revoke(lease)
        except Exception:  # the lease expires by itself
            log.debug("%s: could not revoke old lease %x", self._label, lease)

    # --- what others write --------------------------------------------------------------

    def _on_removed(self, revision: int) -> None:
        """Our key was deleted (on the watch thread): unless it is an old deletion, we lost it
        behind our back (key deleted, lease revoked or expired): register again."""
        self._removed_revision = max(self._removed_revision, revision)
        if revision > self._put_revision and not self._registering:
            self._lost("its key was deleted")

    def _on_service(self, service: Service) -> None:
        """Credential synchronisation: adopt credentials another host wrote."""
        if not service.public or not self._host.public or self._disposed:
            return
        credentials = service.credentials
        if credentials == self._host.credentials:
            return
        self._host = dataclasses.replace(self._host, user=credentials.user,
                                         password=credentials.password)
        log.info("%s: credentials changed by another host; rewriting the host key", self._label)
        self._credentials.on_next(credentials)
        self._pending_rewrite()

    def _pending_rewrite(self) -> None:
        def rewrite() -> None:
            lease = self._lease
            if self._disposed or not lease:
                return  # a later registration writes the current host anyway
            try:
                self._put_revision = self._store.put(self.key, self._host.to_json().encode(),
                                                     lease)
            except LeaseNotFound:
                self._lost("the lease expired or was revoked")
            except Exception as error:
                self._runtime.after(self._failed(error, "credential update"), rewrite)

        self._runtime.run(rewrite)
