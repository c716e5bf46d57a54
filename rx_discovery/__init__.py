"""rx-discovery: service discovery over etcd v3 as ReactiveX observables.

A Python re-creation of the Go package ``etcd-discovery``: hosts register under a service name
with a leased key; other processes watch them as hot, shared Observables.
"""

from __future__ import annotations

# First, before the slow imports: a Ctrl-C while the CLI starts exits quietly with 130.
import rx_discovery._cli_start  # noqa: F401

# isort: split
import os
import threading
from typing import Any

import reactivex

from rx_discovery._errors import (
    AuthenticationFailed,
    ConfigError,
    DiscoveryError,
    LeaseNotFound,
    MalformedValue,
    NoHostFound,
    NoHostFoundOnShard,
    PermissionDenied,
    QueryError,
    RegistrationError,
    RequestTooLarge,
    RevisionCompacted,
    ServiceNotFound,
    StoreError,
    StoreUnavailable,
    UnknownScheme,
)
from rx_discovery.discovery import Discovery
from rx_discovery.health import Health, HealthState
from rx_discovery.hostset import HostEvent, HostSet
from rx_discovery.model import Credentials, Host, Service
from rx_discovery.query import ServiceQuery
from rx_discovery.registration import Registration, RegistrationStatus
from rx_discovery.sync import Change, Diagnostic

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "Change",
    "ConfigError",
    "Credentials",
    "Diagnostic",
    "Discovery",
    "DiscoveryError",
    "Health",
    "HealthState",
    "Host",
    "HostEvent",
    "HostSet",
    "LeaseNotFound",
    "MalformedValue",
    "NoHostFound",
    "NoHostFoundOnShard",
    "PermissionDenied",
    "QueryError",
    "Registration",
    "RegistrationError",
    "RegistrationStatus",
    "RequestTooLarge",
    "RevisionCompacted",
    "Service",
    "ServiceNotFound",
    "ServiceQuery",
    "StoreError",
    "StoreUnavailable",
    "UnknownScheme",
    "credentials",
    "default",
    "get",
    "hosts",
    "register",
    "subscribe_down",
    "subscribe_new",
]

_default: Discovery | None = None
_default_lock = threading.Lock()


def _forget_default_in_child() -> None:
    """A forked child makes its own default Discovery (the parent's cannot work there: see
    :class:`~rx_discovery.lifecycle.UsedAfterFork`); the lock may have been held at the fork."""
    global _default, _default_lock
    _default, _default_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_default_in_child)


def default() -> Discovery:
    """The process-wide Discovery used by the module-level shortcuts, created on first use
    with :meth:`Discovery.from_env` (in a forked child: again, a Discovery of its own)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Discovery.from_env()
        return _default


def register(service: str, host: Host, ttl: float = 5.0, **kwargs: Any) -> Registration:
    """:meth:`Discovery.register` on the :func:`default` Discovery."""
    return default().register(service, host, ttl, **kwargs)


def get(service: str, shard: str | None = None) -> ServiceQuery:
    """:meth:`Discovery.get` on the :func:`default` Discovery."""
    return default().get(service, shard)


def hosts(service: str, **kwargs: Any) -> reactivex.Observable[HostSet]:
    """:meth:`Discovery.hosts` on the :func:`default` Discovery."""
    return default().hosts(service, **kwargs)


def subscribe_new(service: str, **kwargs: Any) -> reactivex.Observable[Host]:
    """:meth:`Discovery.subscribe_new` on the :func:`default` Discovery."""
    return default().subscribe_new(service, **kwargs)


def subscribe_down(service: str, **kwargs: Any) -> reactivex.Observable[str]:
    """:meth:`Discovery.subscribe_down` on the :func:`default` Discovery."""
    return default().subscribe_down(service, **kwargs)


def credentials(service: str, **kwargs: Any) -> reactivex.Observable[Credentials]:
    """:meth:`Discovery.credentials` on the :func:`default` Discovery."""
    return default().credentials(service, **kwargs)
