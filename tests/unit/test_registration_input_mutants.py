"""What registration survivors of the mutation run still let through (issue 17): the texts and
boundaries of the checks ``register()`` makes before any I/O, and the pace of its retries
(README: "0.2 s doubling to ttl/3, at most 5 s"; after a permanent refusal 30 s doubling to
60 s). Server-free: the memory store on a TestScheduler, jitter pinned to its upper bound."""

from __future__ import annotations

import itertools
import random
import re
from typing import Any

import pytest
from reactivex.testing import TestScheduler

from rx_discovery import Discovery, Host, PermissionDenied, StoreUnavailable
from rx_discovery.keys import Keyspace
from rx_discovery.model import Service
from rx_discovery.registration import (
    MAX_WRITE_BYTES,
    check_write_sizes,
    checked_host,
    prepare_host,
    validate_ttl,
)
from rx_discovery.store.memory import MemoryStore
from rx_discovery.testing import make_host

# --- validate_ttl ---------------------------------------------------------------------------


def test_a_ttl_of_one_second_is_the_least_accepted() -> None:
    assert validate_ttl(1) == 1.0 and isinstance(validate_ttl(1), float)
    assert validate_ttl(2.5) == 2.5
    with pytest.raises(ValueError) as below:
        validate_ttl(0.999)
    assert str(below.value) == "ttl must be at least 1 second (and finite), got 0.999"
    with pytest.raises(ValueError) as infinite:
        validate_ttl(float("inf"))
    assert str(infinite.value) == "ttl must be at least 1 second (and finite), got inf"


@pytest.mark.parametrize(("ttl", "kind"), [(True, "bool"), ("5", "str"), (None, "NoneType"),
                                           (float("nan"), "float")])
def test_a_ttl_that_is_not_a_number_says_what_it_got(ttl: object, kind: str) -> None:
    with pytest.raises(ValueError) as error:
        validate_ttl(ttl)
    assert str(error.value) == f"ttl must be a number of seconds, got {kind}"


# --- prepare_host ---------------------------------------------------------------------------


def test_prepare_host_refuses_what_is_not_a_host_by_type() -> None:
    with pytest.raises(ValueError) as error:
        prepare_host("api", "node-1:80")  # type: ignore[arg-type]
    assert str(error.value) == "host must be a rx_discovery.Host, got str"


def test_prepare_host_fills_in_the_go_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTNAME", "box-7")
    private = prepare_host("api", Host(hostname="node-1.example.com", ports={"http": "80"}))
    assert private.service_name == "api"
    assert private.private_hostname == "node-1.example.com"  # not public: its hostname
    assert private.private_ports == {"http": "80"}  # none given: the ports
    assert re.fullmatch(r"[0-9a-f-]{36}-node-1\.example\.com", private.uuid), private.uuid
    public = prepare_host("api", Host(hostname="api.example.com", ports={"http": "80"},
                                      public=True, private_ports={"http": "8080"}))
    assert public.private_hostname == "box-7"  # public: this machine's name
    assert public.private_ports == {"http": "8080"}  # given: kept
    assert public.uuid.endswith("-box-7")
    given = prepare_host("api", make_host(3))
    assert given.uuid == make_host(3).uuid  # a uuid given is kept


# --- check_write_sizes: etcd's request limit, exactly ----------------------------------------


def _padded(key: str, size: int) -> Host:
    """A host whose key and JSON take exactly ``size`` bytes (padding in its hostname)."""
    host = Host(hostname="h", ports={"http": "80"}, uuid="u")
    base = len(key.encode()) + len(host.to_json().encode()) - 1
    return Host(hostname="h" * (size - base), ports={"http": "80"}, uuid="u")


def test_a_write_of_exactly_the_limit_passes_and_one_byte_more_is_refused() -> None:
    key, service_key = "/services/api/u", "/services_infos/api"
    service = Service(name="api")
    fits = _padded(key, MAX_WRITE_BYTES)
    assert len(key) + len(fits.to_json().encode()) == MAX_WRITE_BYTES
    check_write_sizes(key, fits, service_key, service)
    over = _padded(key, MAX_WRITE_BYTES + 1)
    with pytest.raises(ValueError) as error:
        check_write_sizes(key, over, service_key, service)
    field = len(f'"{over.hostname}"')
    assert str(error.value) == (
        f"the host is too large to register: its key and JSON take {MAX_WRITE_BYTES + 1} "
        f"bytes, over etcd's request limit ({MAX_WRITE_BYTES} bytes with the envelope's "
        f"margin); its largest field is 'hostname' ({field} bytes)")


def test_a_service_document_over_the_limit_is_named_with_its_largest_field() -> None:
    host = make_host(1)
    service = Service(name="api", user="u", password="p" * MAX_WRITE_BYTES, public=True)
    with pytest.raises(ValueError) as error:
        check_write_sizes("/services/api/x", host, "/services_infos/api", service)
    message = str(error.value)
    assert message.startswith("the service document is too large to register")
    assert "its largest field is 'password'" in message
    assert "ppp" not in message  # never the value


# --- checked_host on etcd's v2 API: names that listings would hide ------------------------------


def test_checked_host_names_the_field_v2_would_hide() -> None:
    v2 = Keyspace("", hides_underscore=True)
    with pytest.raises(ValueError) as service:
        checked_host(v2, "_api", make_host(1))
    assert str(service.value).startswith("service name must not start with '_' on etcd's v2")
    with pytest.raises(ValueError) as uuid:
        checked_host(v2, "api", make_host(1, uuid="_hidden"))
    assert str(uuid.value).startswith("Host.uuid must not start with '_' on etcd's v2")
    stored = checked_host(v2, "api", make_host(1))
    assert stored.service_name == "api" and stored.uuid == make_host(1).uuid


# --- the pace of the registration's retries ---------------------------------------------------


class Ceiling(random.Random):
    """Jitter that always draws the upper bound: each delay is exactly its ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class RefusedGrants(MemoryStore):
    """Grants fail with ``error`` ``failures`` times; records when each was asked for."""

    def __init__(self, scheduler: TestScheduler, error: Exception, failures: int) -> None:
        super().__init__(scheduler)
        self.error, self.failures, self.asked = error, failures, []  # type: ignore[var-annotated]
        self.clock = scheduler

    def grant(self, ttl: int) -> Any:
        self.asked.append(round(self.clock.clock, 3))
        if len(self.asked) <= self.failures:
            raise self.error
        return super().grant(ttl)


def delays(asked: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(asked)]


@pytest.mark.parametrize(("ttl", "expected"), [
    (30, [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]),  # at most 5 s
    (6, [0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]),  # ttl/3
    (2, [0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]),  # never under 1 s of cap
])
def test_a_transient_failure_is_retried_from_0_2_s_doubling_to_ttl_over_3_at_most_5_s(
        monkeypatch: pytest.MonkeyPatch, ttl: int, expected: list[float]) -> None:
    monkeypatch.setattr("rx_discovery._runtime._RNG", Ceiling())
    scheduler = TestScheduler()
    store = RefusedGrants(scheduler, StoreUnavailable("grant: connection refused"), 7)
    registration = Discovery(store=store).register("api", make_host(1), ttl=ttl)
    scheduler.advance_to(60)
    assert delays(store.asked) == expected
    assert registration.ready


def test_a_permanent_refusal_is_retried_from_30_s_doubling_to_60_s(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rx_discovery._runtime._RNG", Ceiling())
    scheduler = TestScheduler()
    store = RefusedGrants(scheduler, PermissionDenied("grant: permission denied"), 4)
    registration = Discovery(store=store).register("api", make_host(1), ttl=30)
    scheduler.advance_to(400)
    assert delays(store.asked) == [30.0, 60.0, 60.0, 60.0]
    assert registration.ready


def test_a_bad_machine_name_is_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    """A public host without a private hostname takes this machine's name: when that is not a
    usable name, the error says where it came from."""
    monkeypatch.setenv("HOSTNAME", "bad name!")
    with pytest.raises(ValueError) as error:
        prepare_host("api", Host(hostname="api.example.com", ports={"http": "80"},
                                 public=True))
    assert str(error.value).startswith(
        "Host.private_hostname (this machine's name, from the HOSTNAME environment variable "
        "or socket.gethostname())"), str(error.value)


def test_the_size_check_counts_the_real_host_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit counts the key as it will be written (service name and uuid in it): one byte
    over with the real key is refused, though a shorter key would fit."""
    keyspace, service = Keyspace(""), "a" * 40
    stored = checked_host(keyspace, service, make_host(1))
    size = (len(keyspace.host_key(service, stored.uuid).encode())
            + len(stored.to_json().encode()))
    monkeypatch.setattr("rx_discovery.registration.MAX_WRITE_BYTES", size)
    checked_host(keyspace, service, make_host(1))  # exactly at the limit
    monkeypatch.setattr("rx_discovery.registration.MAX_WRITE_BYTES", size - 1)
    with pytest.raises(ValueError, match=f"the host is too large.* take {size} bytes"):
        checked_host(keyspace, service, make_host(1))
