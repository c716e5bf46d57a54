"""What register() refuses before any I/O: host names, ports, uuids and names that cannot be
stored or read back (issue 11 section 5). The rules are in ``rx_discovery.model``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from reactivex.testing import TestScheduler

from rx_discovery import Discovery, Host
from rx_discovery.model import validate_host_name
from rx_discovery.registration import prepare_host
from rx_discovery.store.memory import MemoryStore

_IO = ("get_prefix", "get", "put", "delete", "grant", "keepalive", "revoke", "watch")


class RecordingStore(MemoryStore):
    """A memory store that records every I/O call made to it."""

    def __init__(self, scheduler: TestScheduler) -> None:
        super().__init__(scheduler)
        self.calls: list[str] = []
        for name in _IO:
            original = getattr(self, name)

            def recorded(*args: Any, _name: str = name, _original: Any = original) -> Any:
                self.calls.append(_name)
                return _original(*args)

            setattr(self, name, recorded)


@pytest.fixture
def discovery() -> Iterator[Discovery]:
    scheduler = TestScheduler()
    with Discovery(store=RecordingStore(scheduler)) as found:
        yield found


def _refused(discovery: Discovery, service: str, host: Host, field: str) -> ValueError:
    """register() raises a ValueError naming ``field``, and the store was never used."""
    store = discovery.store
    assert isinstance(store, RecordingStore)
    with pytest.raises(ValueError) as caught:
        discovery.register(service, host)
    assert field in str(caught.value), str(caught.value)
    assert store.calls == [], f"the store was used before refusing: {store.calls}"
    return caught.value


BAD_HOSTNAMES = [
    "a/b", "/", "host/with/path", "<b>x</b>", "a b", " h", "h ", "h\n", "h\t", "h\x00",
    "h\x7f", "h\u00a0", "caf\u00e9.example", "h\udc80", "a..b", ".a", "a" * 64 + ".dev",
    ("a" * 60 + ".") * 5, "h:80", "http://h", "u@h", "h?x", "h#x", "[::1", "[1.2.3.4]",
    "[zz::1]", "::g", "-h-", "fe80::1%eth0", "fe80::1%a/b", "..", ".",
]


@pytest.mark.parametrize("hostname", BAD_HOSTNAMES)
def test_register_refuses_a_hostname_that_is_no_host_name(discovery: Discovery,
                                                           hostname: str) -> None:
    _refused(discovery, "svc", Host(hostname=hostname, ports={"http": "80"}), "hostname")


@pytest.mark.parametrize("hostname", BAD_HOSTNAMES)
def test_register_refuses_such_a_private_hostname(discovery: Discovery, hostname: str) -> None:
    host = Host(hostname="h", ports={"http": "80"}, private_hostname=hostname)
    _refused(discovery, "svc", host, "private_hostname")


GOOD_HOSTNAMES = [
    "h", "public-domain.dev", "node-1.internal.dev", "node-1.internal.dev.", "10.0.0.7",
    "localhost", "my_container", "A-B.Example.COM", "::1", "[::1]",
    "[2001:db8::7]", "xn--caf-dma.example", "a" * 63 + ".dev", "1.2.3.4",
]


@pytest.mark.parametrize("hostname", GOOD_HOSTNAMES)
def test_register_accepts_host_names_and_ip_literals(hostname: str) -> None:
    assert validate_host_name("Host.hostname", hostname) == hostname
    stored = prepare_host("svc", Host(hostname=hostname, ports={"http": "80"}))
    assert stored.uuid.endswith("-" + hostname) and "/" not in stored.uuid


def test_the_derived_uuid_is_checked_like_an_explicit_one(
        discovery: Discovery, monkeypatch: pytest.MonkeyPatch) -> None:
    # a public host without a private hostname takes this machine's name into its uuid
    monkeypatch.setenv("HOSTNAME", "box/1")
    error = _refused(discovery, "svc", Host(hostname="h", ports={"http": "80"}, public=True),
                     "private_hostname")
    assert "HOSTNAME" in str(error)


@pytest.mark.parametrize("uuid", ["a/b", "a b", "a\n", "\udc80", "x\x00", "."])
def test_register_refuses_an_explicit_uuid_that_is_no_key_segment(discovery: Discovery,
                                                                  uuid: str) -> None:
    _refused(discovery, "svc", Host(hostname="h", ports={"http": "80"}, uuid=uuid), "uuid")


@pytest.mark.parametrize(("ports", "field"), [
    ({"http": "abc"}, "ports"), ({"http": "99999"}, "ports"), ({"http": "-1"}, "ports"),
    ({"http": "0"}, "ports"), ({"http": "65536"}, "ports"), ({"http": "+80"}, "ports"),
    ({"http": " 80"}, "ports"), ({"http": "8 0"}, "ports"), ({"http": "\u0668\u0660"}, "ports"),
    ({"http": "80.0"}, "ports"), ({"ht tp": "80"}, "ports"), ({" http": "80"}, "ports"),
    ({"http\n": "80"}, "ports"), ({"a/b": "80"}, "ports"), ({"h:": "80"}, "ports"),
    ({"\udc80": "80"}, "ports"), ({"http": "8\udc80"}, "ports"),
])
def test_register_refuses_ports_that_are_no_port_numbers(discovery: Discovery,
                                                          ports: dict[str, str],
                                                          field: str) -> None:
    _refused(discovery, "svc", Host(hostname="h", ports=ports), f"Host.{field}")
    _refused(discovery, "svc", Host(hostname="h", ports={"http": "80"}, private_ports=ports),
             f"Host.private_{field}")


def test_register_accepts_every_port_from_1_to_65535_and_scheme_like_names() -> None:
    host = Host(hostname="h", ports={"http": "1", "https": "65535", "grpc+tls": "8443",
                                     "h2c": "080", "admin_api": "9000", "x.y-z": "7"})
    assert prepare_host("svc", host).ports == host.ports


@pytest.mark.parametrize("field", ["user", "password", "shard", "hostname",
                                   "private_hostname"])
def test_lone_surrogates_are_refused_before_any_io(discovery: Discovery, field: str) -> None:
    values: dict[str, Any] = {"hostname": "h", "ports": {"http": "80"}, field: "x\udc80y"}
    error = _refused(discovery, "svc", Host(**values), field)
    if field == "password":
        assert "x\udc80y" not in str(error) and "\\udc80" not in str(error)


def test_a_lone_surrogate_in_the_service_name_is_refused(discovery: Discovery) -> None:
    _refused(discovery, "svc\udc80", Host(hostname="h", ports={"http": "80"}), "service name")
    with pytest.raises(ValueError, match="service name"):
        discovery.hosts("svc\ud800")


def test_a_bad_password_is_named_never_shown(discovery: Discovery) -> None:
    secret = "hunter2\udcff"
    error = _refused(discovery, "svc",
                     Host(hostname="h", ports={"http": "80"}, user="u", password=secret),
                     "password")
    assert "hunter2" not in str(error) and "hunter2" not in repr(error)


def test_reading_keeps_what_go_may_write() -> None:
    """The rules are for registering: a host read from etcd with a name or port Go accepted
    is still a Host (streams never drop a host that Go registered)."""
    host = Host.from_json('{"name":"a b","ports":{"http":"abc"}}')
    assert host.hostname == "a b" and host.ports == {"http": "abc"}


@pytest.mark.parametrize(("flags", "field"), [
    (["--hostname", "a/b", "--port", "http=80"], "Host.hostname"),
    (["--hostname", "h", "--port", "http=99999"], "--port"),  # refused by the CLI's parser
    (["--hostname", "h", "--port", "http=80", "--private-hostname", "<b>x</b>"],
     "Host.private_hostname"),
])
def test_cli_register_refuses_a_bad_host_before_connecting(
        flags: list[str], field: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from rx_discovery import cli
    from rx_discovery.cli import register

    def no_connection(*args: object) -> Discovery:
        raise AssertionError("connected before refusing the host")

    monkeypatch.setattr(register, "_connected", no_connection)
    assert cli.main(["register", "svc", *flags, "--endpoints", "http://127.0.0.1:1"]) == 2
    assert field in capsys.readouterr().err
