"""Metrics through the OpenTelemetry API (the ``otel`` extra): what discovery is doing.

Instruments (meter ``rx_discovery``; attributes in brackets):

==========================================  =========  ====================================
``rx_discovery.hosts``                      gauge      hosts of a watched service [service]
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

import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
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
    ("hosts", "gauge", "rx_discovery.hosts", "{host}", "hosts of a watched service"),
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


class _Instruments:
    """The instruments of :data:`_INSTRUMENTS`, made by one meter."""

    hosts: Any
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
        meter = (provider.get_meter("rx_discovery") if provider is not None
                 else _otel.get_meter("rx_discovery"))
        for attribute, kind, name, unit, description in _INSTRUMENTS:
            create = getattr(meter, f"create_{kind}", None)
            # opentelemetry-api < 1.23 (pinned by another package) has no synchronous gauge:
            # that instrument is then a no-op, the import and the others still work
            setattr(self, attribute, _NoOp() if create is None else create(
                name, unit=unit, description=description))


class _NoOp:
    """An instrument the installed opentelemetry-api cannot make."""

    def set(self, *_args: object, **_kwargs: object) -> None:
        pass


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

def counting_hosts(service: str, publish: Callable[[Change[_T]], None]
                   ) -> Callable[[Change[_T]], None]:
    """``publish`` of a service's host changes, also setting its ``hosts`` gauge."""
    if _on is None:
        return publish
    return _CountingHosts(service, publish)


class _CountingHosts:
    """:func:`counting_hosts`' wrapper: slotted, as one is kept per watched service."""

    __slots__ = ("_publish", "_service")

    def __init__(self, service: str, publish: Callable[[Change[Any]], None]) -> None:
        self._service = service
        self._publish = publish

    def __call__(self, change: Change[Any]) -> None:
        if _on is not None:
            _on.hosts.set(len(change.items), {"service": self._service})
        self._publish(change)


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
