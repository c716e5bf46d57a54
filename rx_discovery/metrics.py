"""Metrics through the OpenTelemetry API (the ``otel`` extra): what discovery is doing.

Instruments (meter ``rx_discovery``; attributes in brackets):

==========================================  =========  ====================================
``rx_discovery.hosts``                      gauge      hosts of a service watched now [service]
``rx_discovery.registration.status``        counter    status changes [service, status]
``rx_discovery.registration.reregister``    histogram  seconds from LOST to REGISTERED [service]
``rx_discovery.keepalive.duration``         histogram  seconds of one keepalive round trip
                                                       (a batch of leases of one TTL)
``rx_discovery.watch.reconnects``           counter    watches reopened after a failure [stream]
``rx_discovery.watch.resumes``              counter    watches that delivered again after
                                                       reconnecting (no event lost) [stream]
``rx_discovery.watch.resyncs``              counter    prefix re-read after a compaction [stream]
``rx_discovery.skipped``                    counter    malformed values skipped [stream]
``rx_discovery.balancer.picks``             counter    hosts picked [service, host]
``rx_discovery.balancer.ejections``         counter    hosts ejected [service, host]
==========================================  =========  ====================================

``stream`` names the watched prefix as the logs do (``hosts of api``, ``service api``);
``host`` is the host's uuid.

The application chooses where they go (an SDK ``MeterProvider`` with an exporter, e.g. the
Prometheus reader: see the README); by default the global provider is used. Without
``opentelemetry-api`` installed every call below is a no-op (nothing is imported, and the
balancer's picker is not even wrapped).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from rx_discovery._shared import Stoppable
    from rx_discovery.model import Host
    from rx_discovery.registration import Registration, RegistrationStatus
    from rx_discovery.sync import Change

__all__ = ["configure", "enabled"]

_T = TypeVar("_T")

try:
    from opentelemetry import metrics as _otel
except ImportError:  # the otel extra is not installed: every instrument is a no-op
    _otel = None  # type: ignore[assignment]


_INSTRUMENTS = (  # attribute, kind, name, unit, description
    ("status", "counter", "rx_discovery.registration.status", "{change}",
     "registration status changes"),
    ("reregister", "histogram", "rx_discovery.registration.reregister", "s",
     "seconds from LOST to REGISTERED again"),
    ("keepalive", "histogram", "rx_discovery.keepalive.duration", "s",
     "round trip of one keepalive batch"),
    ("reconnects", "counter", "rx_discovery.watch.reconnects", "{reconnect}",
     "watches reopened after a failure"),
    ("resumes", "counter", "rx_discovery.watch.resumes", "{resume}",
     "watches that delivered again after reconnecting"),
    ("resyncs", "counter", "rx_discovery.watch.resyncs", "{resync}",
     "prefixes re-read after a compaction"),
    ("skipped", "counter", "rx_discovery.skipped", "{value}", "malformed values skipped"),
    ("picks", "counter", "rx_discovery.balancer.picks", "{pick}", "hosts picked"),
    ("ejections", "counter", "rx_discovery.balancer.ejections", "{ejection}",
     "hosts ejected"),
)


class _Watched:
    """One running sync of a service's hosts, in the ``hosts`` gauge while it runs."""

    __slots__ = ("count", "service")

    def __init__(self, service: str) -> None:
        self.service = service
        self.count: int | None = None  # None until its first state is known


_watched: dict[_Watched, None] = {}  # insertion-ordered set of the running syncs
_watched_lock = threading.Lock()


def _forget_watched_in_child() -> None:
    """A forked child runs none of its parent's syncs: their counts, frozen at the fork, must
    not be reported there."""
    global _watched, _watched_lock
    _watched, _watched_lock = {}, threading.Lock()


os.register_at_fork(after_in_child=_forget_watched_in_child)


def _observe_hosts(provider: Any) -> Iterator[Any]:
    """The ``hosts`` gauge's points for ``provider`` (None: the global one), on the exporter's
    thread: one per watched service whose state is known, while it is the provider in use (a
    provider that :func:`configure` replaced keeps the callback, and must not get them any
    more; configured again, its meter keeps the instrument and callback it made first)."""
    if _on is None or _on.provider is not provider:
        return
    with _watched_lock:
        counts = {w.service: w.count for w in _watched if w.count is not None}
    for service, count in counts.items():
        yield _otel.Observation(count, {"service": service})


class _Instruments:
    """The instruments of :data:`_INSTRUMENTS`, made by one meter."""

    provider: Any
    status: Any
    reregister: Any
    keepalive: Any
    reconnects: Any
    resumes: Any
    resyncs: Any
    skipped: Any
    picks: Any
    ejections: Any

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        meter = (provider.get_meter("rx_discovery") if provider is not None
                 else _otel.get_meter("rx_discovery"))
        # observed at each collection from the services watched then: a service nobody
        # watches any more is no longer reported (a synchronous gauge would keep its last
        # value for ever)
        meter.create_observable_gauge("rx_discovery.hosts",
                                      callbacks=[lambda _options: _observe_hosts(provider)],
                                      unit="{host}", description="hosts of a watched service")
        for attribute, kind, name, unit, description in _INSTRUMENTS:
            # counters and histograms: in every opentelemetry-api 1.x (the synchronous gauge
            # of >= 1.23 is no longer used, so an older pinned API works as well)
            setattr(self, attribute, getattr(meter, f"create_{kind}")(
                name, unit=unit, description=description))


_on: _Instruments | None = None if _otel is None else _Instruments(None)
_lost_at: weakref.WeakKeyDictionary[Registration, float] = weakref.WeakKeyDictionary()
_lost_lock = threading.Lock()  # registrations change status on many threads


def enabled() -> bool:
    """True when ``opentelemetry-api`` is installed (the instruments record)."""
    return _on is not None


def configure(meter_provider: Any = None) -> None:
    """Record on ``meter_provider`` (an OpenTelemetry ``MeterProvider``) instead of the global
    one (None: the global one again); what runs already switches at once.

    Raises:
        RuntimeError: ``opentelemetry-api`` is not installed.
    """
    global _on
    if _otel is None:
        raise RuntimeError("metrics need the otel extra: pip install 'rx-discovery[otel]'")
    _on = _Instruments(meter_provider)


# --- the calls the library makes (each a no-op without OpenTelemetry) -----------------------

class _Counted:
    """A service's hosts sync whose host count the ``hosts`` gauge reports while it runs
    (slotted: one is kept per watched service)."""

    __slots__ = ("_publish", "_stopped", "_sync", "_watched")

    def __init__(self, service: str, build: Callable[[Callable[[Change[_T]], None]], Stoppable],
                 publish: Callable[[Change[_T]], None]) -> None:
        self._watched = _Watched(service)
        self._publish = publish
        self._stopped = False
        self._sync = build(self._count)

    def _count(self, change: Change[Any]) -> None:
        self._watched.count = len(change.items)
        self._publish(change)

    @property
    def loaded(self) -> bool:
        return self._sync.loaded

    def start(self, block: bool = False) -> None:
        with _watched_lock:
            # a close() can stop the sync before its first subscriber starts it (outside the
            # shared lock): it must not enter the set after its stop took it out
            if not self._stopped:
                _watched[self._watched] = None
        self._sync.start(block)

    def stop(self) -> None:
        with _watched_lock:
            self._stopped = True
            _watched.pop(self._watched, None)
        self._sync.stop()

    def ensure_loaded(self, hand_off: bool = False) -> None:
        self._sync.ensure_loaded(hand_off)


def counting_hosts(service: str, build: Callable[[Callable[[Change[_T]], None]], Stoppable],
                   publish: Callable[[Change[_T]], None]) -> Stoppable:
    """The sync ``build(publish)`` makes for a service's hosts, counted in the ``hosts`` gauge
    from its start to its stop (the sync itself without OpenTelemetry)."""
    if _on is None:
        return build(publish)
    return _Counted(service, build, publish)


def registration_status(registration: Registration, status: RegistrationStatus) -> None:
    """A registration entered ``status`` (LOST starts the re-registration clock)."""
    if _on is None:
        return
    service = registration.service
    _on.status.add(1, {"service": service, "status": status.name})
    if status.name == "LOST":
        with _lost_lock:
            _lost_at.setdefault(registration, registration._runtime.now())
    elif status.name in ("REGISTERED", "WITHDRAWN", "DISPOSED"):
        with _lost_lock:
            lost = _lost_at.pop(registration, None)
        if lost is not None and status.name == "REGISTERED":
            _on.reregister.record(registration._runtime.now() - lost, {"service": service})


@contextmanager
def timed_keepalive() -> Iterator[None]:
    """Around one keepalive round trip (real time: a network measure)."""
    if _on is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        if _on is not None:
            _on.keepalive.record(time.perf_counter() - start)


def stream_event(counter: str, stream: str) -> None:
    """Count one event of a watched ``stream``: ``counter`` is ``reconnects``, ``resumes``,
    ``resyncs`` or ``skipped``."""
    if _on is not None:
        getattr(_on, counter).add(1, {"stream": stream})


def counting_picks(service: str, choose: Callable[[Sequence[Host]], Host]
                   ) -> Callable[[Sequence[Host]], Host]:
    """A balancer's picker, also counting each pick per host (unwrapped without OTel)."""
    if _on is None:
        return choose

    def counted(candidates: Sequence[Host]) -> Host:
        host = choose(candidates)
        if _on is not None:
            _on.picks.add(1, {"service": service, "host": host.uuid})
        return host

    return counted


def host_ejected(service: str, host: Host) -> None:
    if _on is not None:
        _on.ejections.add(1, {"service": service, "host": host.uuid})
