"""Discovery: the facade users hold. Streams, registrations and queries of one keyspace.

Data flows one way: store -> :mod:`rx_discovery.sync` (snapshot, watch, resume) ->
:mod:`rx_discovery._shared` (one watch per service, shared) -> the streams below -> user.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

import reactivex
from reactivex import abc, operators
from reactivex.scheduler import EventLoopScheduler, NewThreadScheduler

from rx_discovery import metrics
from rx_discovery._errors import ConfigError, MalformedValue
from rx_discovery._first_reads import FirstReads
from rx_discovery._keeper import LeaseKeeper
from rx_discovery._lifecycle import (
    check_fork,
    fork_generation,
    not_picklable,
    validate_drain,
    wait_on,
)
from rx_discovery._runtime import PoolScheduler, Runtime
from rx_discovery._serial import SerialSubject
from rx_discovery._shared import SharedSync, Stoppable
from rx_discovery._shelf import Shelf
from rx_discovery.catalog import Catalog, catalog_codec, catalog_prefix, catalog_stream
from rx_discovery.config import Api, Settings
from rx_discovery.health import Health
from rx_discovery.hostset import HostEvent, HostSet
from rx_discovery.keys import Keyspace, uuid_after, validate_service_name
from rx_discovery.model import (
    Credentials,
    Host,
    Service,
    decode_host,
    decode_service,
    host_id,
)
from rx_discovery.query import ServiceQuery, read_catalog
from rx_discovery.registration import (
    Registration,
    ServiceGroup,
    checked_host,
    validate_ttl,
)
from rx_discovery.store import Store
from rx_discovery.sync import Change, Codec, Diagnostic, KeyCodec, PrefixSync

if TYPE_CHECKING:
    from rx_discovery.balance import Balancer

__all__ = ["Discovery"]

log = logging.getLogger("rx_discovery")

T = TypeVar("T")
V = TypeVar("V")


class Discovery:
    """Service discovery on one etcd cluster (or an in-memory store) and one key prefix.

    Creating it does no network I/O and never fails because etcd is down: registrations and
    streams catch up when etcd appears. Use it as a context manager, or call :meth:`close`.

    Args:
        endpoints: etcd members (``http://host:port``, comma-separated string or list);
            default ``http://127.0.0.1:2379``. Calls fail over between them.
        prefix: keyspace prefix ("" or e.g. "/prod").
        ca_cert, client_cert, client_key: TLS material, file paths or PEM bytes.
        user, password: etcd authentication (the server needs TLS for it).
        timeout: deadline of one etcd call, in seconds.
        api: "v3" (default), or "v2": etcd's v2 keys API, to share services with the Go
            etcd-discovery package (``ETCD_API`` for :meth:`from_env`).
        scheduler: times keepalives, backoff and retries (default: one timer thread).
        store: use this store instead of etcd (see :meth:`in_memory`).

    Raises:
        ConfigError: a setting is invalid (no secret is ever in the message).
    """

    def __init__(self, endpoints: str | Sequence[str] | None = None, *, prefix: str = "",
                 ca_cert: str | bytes | None = None, client_cert: str | bytes | None = None,
                 client_key: str | bytes | None = None, user: str | None = None,
                 password: str | None = None, timeout: float = 5.0, api: Api = "v3",
                 scheduler: abc.SchedulerBase | None = None, store: Store | None = None,
                 settings: Settings | None = None) -> None:
        if settings is None:
            settings = Settings.build(endpoints, prefix=prefix, ca_cert=ca_cert,
                                      client_cert=client_cert, client_key=client_key,
                                      user=user, password=password, timeout=timeout,
                                      api=api)
        self.settings = settings
        self.keyspace = Keyspace.of(settings)
        self._owned: list[Callable[[], None]] = []
        if store is None and settings.api == "v2":
            try:
                from rx_discovery.store.v2 import EtcdV2Store
            except ImportError as missing:
                raise ConfigError("api='v2' needs httpx: pip install 'rx-discovery[v2]'"
                                  ) from missing
            store = EtcdV2Store(settings)
        elif store is None:
            from rx_discovery.store.etcd import EtcdStore

            store = EtcdStore(settings)
        # A store with a scheduler of its own (the memory store) runs everything on it, so
        # a TestScheduler drives it all; etcd calls block, so they get a thread pool.
        io: abc.SchedulerBase | None = getattr(store, "scheduler", None)
        default_timer: abc.SchedulerBase | None = io
        delivery: abc.SchedulerBase | None = None
        keepalive_io: abc.SchedulerBase | None = io
        delivery_io: abc.SchedulerBase | None = io
        first_delivery: abc.SchedulerBase | None = None
        if io is None:
            pool = PoolScheduler(8)
            loop = EventLoopScheduler()
            self._owned += [loop.dispose, pool.shutdown]
            # what background reads found goes to observers on a thread of its own (rare:
            # a first read after a failure, a resync after compaction), not on a pool worker
            io, default_timer, delivery = pool, loop, NewThreadScheduler()
            # Keepalive batches get threads of their own: user observers run on the I/O pool
            # and, if enough of them block, would stop every lease's refresh.
            keepalive_io = PoolScheduler(2)
            # Registrations call their status and credentials observers on threads of their
            # own too: observers that wait for their peers would starve the I/O pool.
            delivery_io = PoolScheduler(8)
            # First states read in bulk reach their subscribers on one thread of their own,
            # which ends when idle (thousands of services subscribed at once: one thread, not
            # one per batch)
            first_delivery = EventLoopScheduler(exit_if_empty=True)
            self._owned += [keepalive_io.shutdown, delivery_io.shutdown, first_delivery.dispose]
        self.store = store
        self._runtime = Runtime(scheduler or default_timer or io, io, delivery)
        self._keepalive_io = keepalive_io or io
        self._delivery_io = delivery_io or io
        self._first_reads = FirstReads(store, Runtime(self._runtime.timer, io, first_delivery))
        self._lock = threading.Lock()
        # Weak: a service's SharedSync lives as long as something uses it (a subscription, a
        # stream object, a registration's group) and is released after, so that watching
        # many services over time does not grow these for ever.
        self._host_syncs: weakref.WeakValueDictionary[str, SharedSync[Host]] = (
            weakref.WeakValueDictionary())
        self._service_syncs: weakref.WeakValueDictionary[str, SharedSync[Service]] = (
            weakref.WeakValueDictionary())
        # the one catalog sync (key ""), weak as the others
        self._catalog_syncs: weakref.WeakValueDictionary[str, SharedSync[Host | Service]] = (
            weakref.WeakValueDictionary())
        self._registrations: dict[str, Registration] = {}  # by host key: one each
        # held while a registration uses them (released with the last one)
        self._groups: Shelf[str, ServiceGroup] = Shelf()
        self._keepers: Shelf[abc.SchedulerBase, LeaseKeeper] = Shelf()
        self._diagnostics: SerialSubject[Diagnostic] = SerialSubject("diagnostics")
        self._closed = False
        self._fork_generation = fork_generation()

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_env(cls, *, prefix: str | None = None, timeout: float | None = None,
                 scheduler: abc.SchedulerBase | None = None) -> Discovery:
        """A Discovery configured from ``ETCD_*`` environment variables (see the README);
        ``prefix`` and ``timeout``, when given, override ``ETCD_PREFIX`` and the default.

        Raises:
            ConfigError: naming the variable at fault.
        """
        settings = Settings.from_env()
        overrides: dict[str, Any] = {}
        if prefix is not None:
            overrides["prefix"] = prefix
        if timeout is not None:
            overrides["timeout"] = timeout
        return cls(settings=dataclasses.replace(settings, **overrides), scheduler=scheduler)

    @classmethod
    def in_memory(cls, scheduler: abc.SchedulerBase | None = None, *,
                  prefix: str = "") -> Discovery:
        """A Discovery on an in-memory store with etcd's semantics, driven by ``scheduler``
        (e.g. ``reactivex.testing.TestScheduler`` for marble tests; default: a private event
        loop thread). Its store is :attr:`store` (a :class:`~rx_discovery.testing.MemoryStore`
        with fault switches)."""
        from rx_discovery.store.memory import MemoryStore

        return cls(store=MemoryStore(scheduler), prefix=prefix)

    def __enter__(self) -> Discovery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = ("memory" if self._runtime.io is getattr(self.store, "scheduler", None)
                 else ",".join(e.url for e in self.settings.endpoints))
        return f"Discovery({where}, prefix={self.keyspace.prefix!r})"

    def close(self, timeout: float = 10.0, *, drain: float = 0.0) -> None:
        """Dispose every registration (revoking their leases, waiting up to ``timeout``
        seconds in all for the writes in flight), complete every stream, release the client.
        Idempotent. A stream subscribed afterwards fails at once with
        ``RuntimeError("this Discovery is closed")``.

        ``drain``: after the keys are removed, wait this many seconds (on the Discovery's
        timer) before closing the streams and the client, so that clients move away while
        the process still serves (see :meth:`Registration.dispose`); only when a
        registration's host key was live (written and kept alive: not withdrawn nor lost).

        In a process forked after the Discovery was made this does nothing (the client
        belongs to the parent; grpcio is not fork-safe).

        Raises:
            ValueError: ``drain`` is not a finite number >= 0.
        """
        seconds = validate_drain(drain)
        if self._fork_generation != fork_generation():
            return  # the parent's: nothing of it may be touched here
        with self._lock:
            if self._closed:
                return
            self._closed = True
            registrations = list(self._registrations.values())
            syncs: list[SharedSync[Any]] = [*self._host_syncs.values(),
                                            *self._service_syncs.values(),
                                            *self._catalog_syncs.values()]
        for registration in registrations:  # all stop at once: none starts a new write
            registration._cancel()
        deadline = time.monotonic() + timeout
        live = False  # a host key removed was live (decided as each is removed)
        for registration in registrations:  # then each waits for its write in flight
            live |= registration._stop(revoke=True,
                                       timeout=max(0.0, deadline - time.monotonic()))
        if live:
            wait_on(self._runtime.timer, seconds)
        for sync in syncs:
            sync.close()
        self._diagnostics.on_completed()
        self.store.close()
        for release in self._owned:
            release()

    def __reduce__(self) -> Any:
        raise not_picklable("a Discovery")

    def _check_fork(self) -> None:
        """Raise :class:`~rx_discovery.lifecycle.UsedAfterFork` in a process forked after
        this Discovery was made."""
        check_fork(self._fork_generation, "this Discovery")

    # --- streams ------------------------------------------------------------------------

    @property
    def health(self) -> reactivex.Observable[Health]:
        """The connection state of the store: the current
        :class:`~rx_discovery.health.Health` at once, then every change (CONNECTING,
        CONNECTED, RECONNECTING, UNAVAILABLE, DENIED with a reason that never holds a secret,
        CLOSED). On etcd (v3 and v2) it emits on a health thread of the store's own, so an
        observer that blocks holds no call, watch or keepalive; on the memory store, on the
        thread that saw the change (its scheduler). Never under a library lock."""
        self._check_fork()
        return self.store.health

    @property
    def diagnostics(self) -> reactivex.Observable[Diagnostic]:
        """Every malformed value skipped by a stream (key, reason, revision; never the value).

        Hot: only problems found after you subscribe. Also logged at WARNING. Emitted on the
        thread of the stream that found it, after the stream's own emissions and outside
        every library lock; an observer that raises is logged and never stops the stream.
        Raises UsedAfterFork in a process forked after the Discovery was made.
        """
        self._check_fork()
        return self._diagnostics.observe()

    def changes(self, service: str, *, scheduler: abc.SchedulerBase | None = None
                ) -> reactivex.Observable[Change[Host]]:
        """The raw shared change stream of a service's hosts (``Change[Host]``); the other
        streams derive from it.

        ``subscribe()`` returns once the service's current state is known: the first
        subscriber of a service reads it on its own thread (bounded by the call timeout), so
        that every change after ``subscribe()`` returns is delivered. When that read fails
        (etcd unreachable), the first state read later (in the background, with backoff)
        comes as a change that adds every host in it (``initial`` False), since any of them
        may have registered after you subscribed.

        Emits on the store's watch thread (or the subscriber's thread for the first read; on
        etcd, a thread of its own for a read retried in the background), one change at a time,
        in revision order, outside every library lock. After :meth:`close`, fails at once
        with ``RuntimeError``."""
        self._check_fork()
        return self._hosts_sync(validate_service_name(service)).observe(
            scheduler, wait=True, guard=self._check_fork)

    def hosts(self, service: str, *, scheduler: abc.SchedulerBase | None = None,
              observe_on: abc.SchedulerBase | None = None) -> reactivex.Observable[HostSet]:
        """The current set of hosts of ``service`` first, then a new set on every change.

        Hot and shared: every subscriber of this service's host streams (this one,
        :meth:`events`, :meth:`subscribe_new`, :meth:`subscribe_down`) shares one etcd watch,
        cancelled when the last one disposes. Gap-free across reconnects and compaction.
        An empty set means "no host registered"; nothing is emitted before the first read.

        ``subscribe()`` does not wait for etcd: when the service's set is known already, it
        is delivered during ``subscribe()``; otherwise it is read in the
        background, in bulk with the other services subscribed at about the same time (on
        etcd, up to 64 services per transaction: a gateway subscribing thousands of services
        pays tens of round trips, not thousands), and delivered as soon as it arrives, on a
        delivery thread of the Discovery's own (on the memory store, its scheduler). Later
        sets come on the store's watch thread. ``observe_on`` moves all of them. (In an
        observer of a first set read in bulk, ``subscribe()`` reads at once, on that
        thread: the first sets after it wait for that observer.)

        Args:
            service: the service name.
            scheduler: times the watch's retries if this subscription starts it.
            observe_on: deliver on this scheduler instead of the store's watch thread.
        """
        self._check_fork()
        name = validate_service_name(service)
        stream = self._hosts_sync(name).observe_mapped(_ToHostSet(name), scheduler,
                                                       guard=self._check_fork)
        return _deliver(stream, observe_on)

    def events(self, service: str, *, scheduler: abc.SchedulerBase | None = None,
               observe_on: abc.SchedulerBase | None = None) -> reactivex.Observable[HostEvent]:
        """Each host that comes up (``new``), goes down (``down``) or changes (``update``)
        after ``subscribe()`` returned; none is lost (see :meth:`changes`: when etcd is
        unreachable at subscribe time, the hosts of the first successful read come as
        ``new``). Shares the watch of :meth:`hosts`; emits on its thread unless
        ``observe_on`` is given."""
        return _deliver(self._expand(service, scheduler, _events), observe_on)

    def subscribe_new(self, service: str, *, scheduler: abc.SchedulerBase | None = None,
                      observe_on: abc.SchedulerBase | None = None) -> reactivex.Observable[Host]:
        """Each host whose key is created after ``subscribe()`` returned, none lost.

        ``subscribe()`` reads the current hosts first (bounded by the call timeout): hosts
        registered before it returns are not new. If that read fails (etcd unreachable), every
        host found by the first successful read is delivered as new, since you never saw it.
        Shares the watch of :meth:`hosts`; emits on its thread unless ``observe_on`` is
        given."""
        return _deliver(self._expand(service, scheduler, _added), observe_on)

    def subscribe_down(self, service: str, *, scheduler: abc.SchedulerBase | None = None,
                       observe_on: abc.SchedulerBase | None = None) -> reactivex.Observable[str]:
        """The uuid of each host whose key is deleted or expires after ``subscribe()``
        returned (read first as :meth:`subscribe_new` does). Shares the watch of
        :meth:`hosts`; emits on its thread unless ``observe_on`` is given."""
        return _deliver(self._expand(service, scheduler, _removed), observe_on)

    def _expand(self, service: str, scheduler: abc.SchedulerBase | None,
                expand: Callable[[Change[Host]], Iterable[T]]) -> reactivex.Observable[T]:
        return _expanded(self.changes(service, scheduler=scheduler), expand, service)

    def services(self, service: str, *, scheduler: abc.SchedulerBase | None = None
                 ) -> reactivex.Observable[Service]:
        """The service document of ``service`` (current, then each change); nothing while no
        service key exists. Hot and shared like :meth:`hosts`, on a second etcd watch (of
        the service key alone) shared by every :meth:`services` and :meth:`credentials`
        subscriber of the service. As :meth:`hosts`, ``subscribe()`` does not wait for etcd:
        the first read is made in bulk with the other services subscribed together."""
        self._check_fork()
        name = validate_service_name(service)
        return _expanded(self._service_sync(name).observe(scheduler, guard=self._check_fork),
                         _values, name)

    def credentials(self, service: str, *, scheduler: abc.SchedulerBase | None = None,
                    observe_on: abc.SchedulerBase | None = None
                    ) -> reactivex.Observable[Credentials]:
        """The service's credentials (from its service key): current, then each change.
        Shares the watch of :meth:`services`."""
        stream: reactivex.Observable[Credentials] = self.services(
            service, scheduler=scheduler).pipe(
            operators.map(_credentials_of), operators.distinct_until_changed())
        return _deliver(stream, observe_on)

    # --- registrations and queries ------------------------------------------------------

    def register(self, service: str, host: Host, ttl: float = 5.0, *,
                 scheduler: abc.SchedulerBase | None = None,
                 healthy: abc.ObservableBase[bool] | None = None) -> Registration:
        """Register ``host`` under ``service`` and keep it registered until disposed.

        Returns at once; the lease grant and puts happen in the background, retried with
        jittered backoff while etcd is unreachable, for ever. ``reg.wait()`` blocks until
        the first success.

        Args:
            service: the service name (no ``/``).
            host: the host; the Go package's defaults are filled in (see ``reg.host``).
            ttl: lease TTL in seconds (>= 1; etcd grants at least 2); keepalive every ttl/3.
            scheduler: times keepalives and backoff (default: the Discovery's).
            healthy: readiness gating: an Observable of bool (e.g.
                :func:`rx_discovery.lifecycle.http_probe`); the host is registered only while
                its latest value is True. Nothing is written before the first True; on False
                the lease is revoked at once (the key vanishes) and ``status`` is WITHDRAWN
                (``reason`` says why) until True again. If it fails, the host is withdrawn
                until disposed (``reason`` holds the error); if it completes, its last value
                holds. Subscribed on this thread during ``register()``; its values are handled
                on an I/O thread, never under a library lock.

        Raises:
            ValueError: a bad service name, host or ttl, or a host whose key or JSON (or the
                service document) would not fit in one etcd request (1.5 MiB); before any
                I/O, naming the field, never its value; or a host uuid this Discovery
                holds registered already under ``service`` (its key would be shared).
            RuntimeError: the Discovery is closed.
            UsedAfterFork: this process was forked after the Discovery was made.
        """
        self._check_fork()
        if healthy is not None and not isinstance(healthy, abc.ObservableBase):
            raise ValueError(f"healthy must be an Observable of bool (or None), got "
                             f"{type(healthy).__name__}")
        name = validate_service_name(service)
        seconds = validate_ttl(ttl)
        stored = checked_host(self.keyspace, name, host)
        service_key = self.keyspace.service_key(name)
        if self._closed:
            raise RuntimeError("this Discovery is closed")
        with self._lock:
            if self._holds(self.keyspace.host_key(name, stored.uuid)):  # before any I/O
                self._refuse_held(name, stored)
        runtime = self._runtime.with_timer(scheduler)
        hosts, services = self._hosts_sync(name), self._service_sync(name).observe()
        group = self._groups.take(name, lambda: ServiceGroup(self.store, service_key, hosts,
                                                             services))
        keeper = self._keepers.take(runtime.timer, lambda: LeaseKeeper(
            self.store, Runtime(runtime.timer, self._keepalive_io)))
        registration = Registration(self.store, self.keyspace, name, stored, seconds, runtime,
                                    group, keeper, on_disposed=self._forget, healthy=healthy,
                                    delivery=self._delivery_io)
        with self._lock:  # under the lock close() takes its list with: it sees us, or we it;
            closed = self._closed  # and checked again: two calls cannot both pass
            clash = self._holds(registration.key)
            if not (closed or clash):
                self._registrations[registration.key] = registration
        if closed or clash:
            self._release(registration)  # gives back the group and keeper it took
            if closed:
                raise RuntimeError("this Discovery is closed")
            self._refuse_held(name, stored)
        registration.start()
        return registration

    def balancer(self, service: str, policy: str = "round_robin", *, shard: str | None = None,
                 scheduler: abc.SchedulerBase | None = None, **options: Any) -> Balancer:
        """A :class:`~rx_discovery.balance.Balancer` that picks live hosts of ``service``
        (``"round_robin"``, ``"random"`` or ``"least_requests"``) from its latest host set,
        with no I/O per pick; ``options``: ``wait``, ``eject_base``, ``eject_max``.
        ``scheduler`` times ejections (default: the Discovery's). Close it when done.

        Raises:
            ValueError: a bad service name, policy, shard or option (before any I/O).
        """
        from rx_discovery.balance import Balancer

        name = validate_service_name(service)
        return Balancer(self.hosts(name, scheduler=scheduler), name, policy=policy, shard=shard,
                        scheduler=scheduler or self._runtime.timer, **options)

    def _holds(self, key: str) -> bool:
        """Whether a live registration of this Discovery holds ``key`` (under ``_lock``)."""
        return key in self._registrations

    @staticmethod
    def _refuse_held(service: str, host: Host) -> NoReturn:
        """Two registrations of one key: disposing either would delete the other's."""
        raise ValueError(f"Host.uuid {host.uuid!r} is already registered for {service!r} by "
                         "this Discovery (a host read back keeps its uuid: "
                         "dataclasses.replace(host, uuid='') derives a new one)")

    def _forget(self, registration: Registration) -> None:
        """A registration was disposed: release what only it used."""
        with self._lock:
            if self._registrations.get(registration.key) is registration:
                del self._registrations[registration.key]
        self._release(registration)

    def _release(self, registration: Registration) -> None:
        self._groups.give_back(registration.service)
        self._keepers.give_back(registration._runtime.timer)

    def get(self, service: str, shard: str | None = None) -> ServiceQuery:
        """A one-shot query of ``service`` (of one shard when given); reads on first use.

        Raises:
            ValueError: a bad service name or shard.
        """
        self._check_fork()
        name = validate_service_name(service)
        if shard is not None and (not isinstance(shard, str) or not shard):
            raise ValueError("shard must be a non-empty string or None")
        return ServiceQuery(self.store, self.keyspace, name, shard)

    def read_catalog(self, service: str | None = None) -> dict[str, ServiceQuery]:
        """Every service that has hosts or a service key (or only ``service``), read at once,
        as loaded queries keyed by name (sorted). Blocks on the caller's thread. (For a live
        view, subscribe to :meth:`catalog`.)

        Raises:
            ValueError: a bad service name.
        """
        self._check_fork()
        return read_catalog(self.store, self.keyspace,
                            None if service is None else validate_service_name(service))

    def catalog(self, *, scheduler: abc.SchedulerBase | None = None,
                observe_on: abc.SchedulerBase | None = None) -> reactivex.Observable[Catalog]:
        """The whole deployment: a :class:`~rx_discovery.catalog.Catalog` (``service name ->
        (HostSet, Service | None)``, revision-stamped) at once, then a new one on every change.

        One etcd watch for every service (of the range holding ``/services/`` and
        ``/services_infos/``), hot and shared by every catalog subscriber, gap-free across
        reconnects and compaction like :meth:`hosts`; ``subscribe()`` returns once the
        current catalog is known (read on the caller's thread when it starts the watch; when
        etcd is unreachable then, see :meth:`changes`). Malformed values are skipped and
        reported on :attr:`diagnostics`. Emits on the store's watch thread unless
        ``observe_on`` is given, one catalog at a time, outside every library lock.
        """
        shared = self._shared(self._catalog_syncs, "", catalog_prefix(self.keyspace),
                              catalog_codec(self.keyspace), "catalog", exact=False)
        return _deliver(catalog_stream(shared.observe(scheduler, wait=True), self.keyspace),
                        observe_on)

    # --- shared syncs -------------------------------------------------------------------

    def _hosts_sync(self, service: str) -> SharedSync[Host]:
        prefix = self.keyspace.hosts_prefix(service)
        codec = _HostCodec(prefix, service)
        return self._shared(self._host_syncs, service, prefix, codec, f"hosts of {service}",
                            exact=False)

    def _service_sync(self, service: str) -> SharedSync[Service]:
        key_of_service = self.keyspace.service_key(service)
        codec = Codec(lambda key: service if key == key_of_service else None,
                      lambda key, value: decode_service(value, key))
        return self._shared(self._service_syncs, service, key_of_service, codec,
                            f"service {service}", exact=True)

    def _shared(self, cache: weakref.WeakValueDictionary[str, SharedSync[T]], service: str,
                prefix: str, codec: KeyCodec[T], label: str, exact: bool) -> SharedSync[T]:
        with self._lock:
            shared = None if self._closed else cache.get(service)
            if shared is None:
                shared = SharedSync(_SyncFactory(self, service, prefix, codec, label, exact),
                                    label)
                if not self._closed:
                    cache[service] = shared
        if self._closed:
            shared.close()  # its subscribers fail at once
        return shared


class _SyncFactory(Generic[T]):
    """Starts the PrefixSync of a SharedSync (a slotted object, not nested closures: it is
    kept for every watched service)."""

    __slots__ = ("_codec", "_discovery", "_exact", "_label", "_prefix", "_service")

    def __init__(self, discovery: Discovery, service: str, prefix: str, codec: KeyCodec[T],
                 label: str, exact: bool) -> None:
        self._discovery, self._service, self._prefix = discovery, service, prefix
        self._codec, self._label, self._exact = codec, label, exact

    def __call__(self, publish: Callable[[Change[T]], None], flush: Callable[[], None],
                 timer: abc.SchedulerBase | None) -> Stoppable:
        discovery = self._discovery
        diagnostics = discovery._diagnostics

        def build(publish: Callable[[Change[T]], None]) -> PrefixSync[T]:
            return PrefixSync(discovery.store, self._prefix, self._codec,
                              discovery._runtime.with_timer(timer), publish,
                              diagnostics.enqueue, self._label, _FlushBoth(flush, diagnostics),
                              exact=self._exact, first_reads=discovery._first_reads)

        if self._exact:
            return build(publish)
        return metrics.counting_hosts(self._service, build, publish)  # a service's hosts


class _FlushBoth:
    """A sync's flush: its subscribers' values, then the diagnostics it found."""

    __slots__ = ("_diagnostics", "_flush")

    def __init__(self, flush: Callable[[], None], diagnostics: SerialSubject[Diagnostic]
                 ) -> None:
        self._flush = flush
        self._diagnostics = diagnostics

    def __call__(self) -> None:
        self._flush()
        self._diagnostics.flush()


class _HostCodec(KeyCodec[Host]):
    """The codec of a service's hosts: a key's uuid (as :meth:`Keyspace.uuid_of`, with the
    hosts prefix made once, not once per event) and its host, in one call on every watch
    event. The host shares its strings with what the sync keeps: its uuid is the id's object,
    its service name the service's. (Not by interning them: each unique string then takes an
    entry in the interpreter's table, which is resized, old and new side by side, as
    thousands of services are watched: more than the copies it saves.)"""

    __slots__ = ("_head", "_service")

    def __init__(self, head: str, service: str) -> None:
        self._head = head  # the service's hosts prefix
        self._service = service

    def ident(self, key: str) -> str:
        uuid = uuid_after(self._head, key)
        if uuid is None:
            raise MalformedValue("not a host key (extra path segments or no uuid)", key)
        return uuid

    def entry(self, key: str, value: bytes) -> tuple[str, Host]:
        uuid = self.ident(key)
        host = decode_host(value, key, self._service)
        return host_id(uuid, host), host


class _ToHostSet:
    """A service's change as the :class:`HostSet` that :meth:`Discovery.hosts` emits."""

    __slots__ = ("_service",)

    def __init__(self, service: str) -> None:
        self._service = service

    def __call__(self, change: Change[Host]) -> HostSet:
        return HostSet._wrap(self._service, change.items, change.revision)


def _expanded(changes: reactivex.Observable[Change[V]], expand: Callable[[Change[V]], Iterable[T]],
              service: str) -> reactivex.Observable[T]:
    """The items ``expand`` derives from each change, emitted synchronously on the thread of
    the change. (``flat_map`` would build an Observable per change and subscriber: ~50x the
    cost per subscriber per event; and it turns an exception raised by the observer into
    ``on_error``, ending the stream.) An observer that raises on one item is logged, still
    gets the others and keeps its subscription."""

    def subscribe(observer: abc.ObserverBase[T],
                  _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        emit = _guarded(observer, service)

        def on_next(change: Change[V]) -> None:
            for item in expand(change):
                emit(item)  # one that raises is logged: go on with the next item

        return changes.subscribe(on_next, observer.on_error, observer.on_completed)

    return reactivex.create(subscribe)


def _events(change: Change[Host]) -> list[HostEvent]:
    """The events of a change; none for a first snapshot (nothing happened, it was there)."""
    if change.initial:
        return []
    events = [HostEvent("new", uuid, change.items[uuid], change.revision, change.resync)
              for uuid in change.added]
    events += [HostEvent("update", uuid, change.items[uuid], change.revision, change.resync)
               for uuid in change.updated]
    events += [HostEvent("down", uuid, host, change.revision, change.resync)
               for uuid, host in (change.removed or {}).items()]
    return events


def _added(change: Change[Host]) -> list[Host]:
    return [] if change.initial else [change.items[uuid] for uuid in change.added]


def _removed(change: Change[Host]) -> list[str]:
    return [] if change.initial else list(change.removed or ())


def _values(change: Change[Service]) -> list[Service]:
    return list(change.items.values())


def _credentials_of(service: Service) -> Credentials:
    return service.credentials


def _deliver(stream: reactivex.Observable[T], observe_on: abc.SchedulerBase | None
             ) -> reactivex.Observable[T]:
    """``stream`` delivered on ``observe_on`` (when given), where an observer that raises is
    logged and keeps its subscription, as on the watch thread: the exception must not end
    the subscription nor escape into that scheduler (an EventLoopScheduler's thread dies of
    it, and with it every stream delivered there)."""
    if observe_on is None:
        return stream
    moved = stream.pipe(operators.observe_on(observe_on))

    def subscribe(observer: abc.ObserverBase[T],
                  _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        return moved.subscribe(_guarded(observer, "observe_on"), observer.on_error,
                               observer.on_completed)

    return reactivex.create(subscribe)


def _guarded(observer: abc.ObserverBase[T], label: str) -> Callable[[T], None]:
    """``observer.on_next``, logging what it raises (user code) instead of letting it end
    the subscription or escape into the library's thread or the user's scheduler."""
    emit = observer.on_next

    def on_next(value: T) -> None:
        try:
            emit(value)
        except Exception:
            log.exception("%s: an observer raised; it keeps its subscription", label)

    return on_next
