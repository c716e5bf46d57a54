"""The public surface: exactly the exported names, one error hierarchy, no I/O on bad input."""

from __future__ import annotations

import pytest
from reactivex.testing import TestScheduler

import rx_discovery
from rx_discovery import (
    ConfigError,
    Discovery,
    DiscoveryError,
    Host,
    MalformedValue,
    NoHostFound,
    NoHostFoundOnShard,
    RegistrationError,
    ServiceNotFound,
    UnknownScheme,
)
from rx_discovery.store.memory import MemoryStore

PUBLIC = {
    "AuthenticationFailed", "Change", "ConfigError", "Credentials", "Diagnostic", "Discovery",
    "DiscoveryError", "Health", "HealthState", "Host", "HostEvent", "HostSet", "LeaseNotFound",
    "MalformedValue", "NoHostFound", "NoHostFoundOnShard", "PermissionDenied", "QueryError",
    "Registration", "RegistrationError", "RegistrationStatus", "RequestTooLarge",
    "RevisionCompacted", "Service", "ServiceNotFound", "ServiceQuery", "StoreError",
    "StoreUnavailable", "UnknownScheme", "credentials", "default", "get", "hosts", "register",
    "subscribe_down", "subscribe_new",
}


def test_exported_names_are_exactly_the_public_ones() -> None:
    assert set(rx_discovery.__all__) == PUBLIC
    assert rx_discovery.__all__ == sorted(rx_discovery.__all__)
    public_attributes = {name for name in dir(rx_discovery)
                         if not name.startswith("_") and not _is_module(name)}
    assert public_attributes - {"annotations", "threading", "reactivex", "Any"} == PUBLIC


def _is_module(name: str) -> bool:
    return type(getattr(rx_discovery, name)).__name__ == "module"


def test_one_error_hierarchy() -> None:
    for error in (ConfigError, MalformedValue, NoHostFound, NoHostFoundOnShard,
                  RegistrationError, ServiceNotFound, UnknownScheme):
        assert issubclass(error, DiscoveryError)
    for error in (ConfigError, MalformedValue, UnknownScheme):
        assert issubclass(error, ValueError)
    assert issubclass(NoHostFoundOnShard, NoHostFound)


class CountingStore(MemoryStore):
    """A memory store that counts every call, to prove bad input never reaches the store."""

    calls = 0

    def __getattribute__(self, name: str) -> object:
        if name in {"get_prefix", "get", "put", "delete", "grant", "keepalive", "revoke",
                    "watch"}:
            type(self).calls += 1
        return super().__getattribute__(name)


@pytest.mark.parametrize("call", [
    lambda d: d.register("", Host(hostname="h")),
    lambda d: d.register("a/b", Host(hostname="h")),
    lambda d: d.register("svc", Host(hostname="h"), ttl=0.5),
    lambda d: d.register("svc", Host(hostname="h"), ttl="5"),
    lambda d: d.register("svc", {"hostname": "h"}),
    lambda d: d.hosts(""),
    lambda d: d.subscribe_new("a/b"),
    lambda d: d.subscribe_down(None),
    lambda d: d.credentials(" x"),
    lambda d: d.events(""),
    lambda d: d.get(""),
    lambda d: d.get("svc", shard=""),
])
def test_bad_arguments_raise_before_any_io(call: object) -> None:
    store = CountingStore(TestScheduler())
    CountingStore.calls = 0
    discovery = Discovery(store=store)
    with pytest.raises(ValueError):
        call(discovery)  # type: ignore[operator]
    assert CountingStore.calls == 0


def test_module_shortcuts_use_one_lazy_discovery_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rx_discovery, "_default", None)
    monkeypatch.setenv("ETCD_HOSTS", "http://127.0.0.1:1")
    monkeypatch.setenv("ETCD_PREFIX", "/shortcut")
    first = rx_discovery.default()
    try:
        assert first is rx_discovery.default()
        assert first.keyspace.prefix == "/shortcut"
        assert first.settings.endpoints[0].port == 1
    finally:
        first.close()
