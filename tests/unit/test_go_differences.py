"""The README's "Differences from the Go package" table: one test per row, on the memory store
in virtual time. (What Go does in each case is quoted from its source, v8.0.0, and was seen with
``interop-go``; see ``test_go_semantics.py``.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from reactivex.testing import TestScheduler

from rx_discovery import Credentials, Discovery, Host, HostSet, RegistrationStatus, Service

PORTS = {"http": "80", "https": "443"}


@pytest.fixture
def scheduler() -> TestScheduler:
    return TestScheduler()


@pytest.fixture
def discovery(scheduler: TestScheduler) -> Iterator[Discovery]:
    with Discovery.in_memory(scheduler) as found:
        yield found


def test_credentials_are_percent_encoded_in_urls() -> None:
    # Go: fmt.Sprintf("%s://%s:%s@%s:%s%s", scheme, h.User, h.Password, ...) -> "p@ss/" breaks
    host = Host(hostname="h", ports=PORTS, user="me@corp", password="p@ss/:#")
    assert host.url() == "http://me%40corp:p%40ss%2F%3A%23@h:80"
    # the README's example: Go's "http://me@corp:p@ss/@h:80" points at host "ss"
    assert Host(hostname="h", ports=PORTS, user="me@corp", password="p@ss/").url() == (
        "http://me%40corp:p%40ss%2F@h:80")


def test_first_is_the_smallest_uuid() -> None:
    # Go: hosts[0] of an unsorted v2 listing
    hosts = [Host(hostname=f"h{n}", ports=PORTS, uuid=f"{n}-uuid") for n in (3, 1, 2)]
    assert HostSet("s", hosts).first().uuid == "1-uuid"
    assert HostSet("s", list(reversed(hosts))).first().uuid == "1-uuid"


def test_a_slash_separates_port_and_path() -> None:
    # Go pastes the path after the port: path "x" gives "http://h:80x"
    host = Host(hostname="h", ports=PORTS)
    assert host.url(path="x") == "http://h:80/x"
    assert host.url(path="/x") == "http://h:80/x"
    assert host.url() == "http://h:80"


def test_no_scheme_on_a_public_service_is_http_then_https(discovery: Discovery) -> None:
    # Go: Service.URL looks up s.Ports[""] -> ErrUnknownScheme
    discovery.store.put(discovery.keyspace.service_key("web"), Service(
        "web", public=True, hostname="www.example.com", ports=PORTS).to_json().encode())
    discovery.store.put(discovery.keyspace.host_key("web", "u-1"),
                        Host(hostname="h", ports=PORTS, uuid="u-1").to_json().encode())
    assert discovery.get("web").url() == "http://www.example.com:80"


def test_dispose_deletes_the_key_at_once(scheduler: TestScheduler,
                                         discovery: Discovery) -> None:
    # Go deletes with the cancelled context: the delete fails, the key lingers until its TTL
    registration = discovery.register("api", Host(hostname="h", ports=PORTS), ttl=5)
    scheduler.advance_to(1)
    assert discovery.store.get(registration.key) is not None
    registration.dispose()
    assert discovery.store.get(registration.key) is None  # no virtual time has passed


def test_a_non_public_host_does_not_wipe_public_credentials(scheduler: TestScheduler,
                                                           discovery: Discovery) -> None:
    # Go: the newcomer writes {"name":..,"critical":false} to the service key; the public
    # hosts' watchers adopt its empty user and password and rewrite their host keys with them
    public = discovery.register("db", Host(hostname="db.example.com", ports=PORTS,
                                           public=True, user="admin", password="s3cret"))
    scheduler.advance_to(5)
    private = discovery.register("db", Host(hostname="10.0.0.9", ports=PORTS))
    scheduler.advance_to(20)
    assert private.ready and public.ready
    assert public.host.credentials == Credentials("admin", "s3cret")
    stored = discovery.store.get(public.key)
    assert stored is not None
    assert Host.from_json(stored.value).password == "s3cret"
    assert Host.from_json(stored.value).user == "admin"
    statuses: list[RegistrationStatus] = []
    public.status.subscribe(statuses.append)
    assert statuses == [RegistrationStatus.REGISTERED]


def test_a_bare_ipv6_hostname_is_bracketed() -> None:
    # Go pastes it raw: "http://::1:80"
    assert Host(hostname="::1", ports=PORTS).url() == "http://[::1]:80"
    assert Host(hostname="h", ports=PORTS, private_hostname="fd00::7",
                private_ports={"http": "8080"}).private_url() == "http://[fd00::7]:8080"


def test_register_refuses_what_go_stores(discovery: Discovery) -> None:
    # Go stores anything, the Go README's own example port "80443" included
    with pytest.raises(ValueError, match="private_ports"):
        discovery.register("api", Host(hostname="h", ports=PORTS,
                                       private_ports={"https": "80443"}))


def test_an_explicit_uuid_is_kept_and_one_key_is_held_once(scheduler: TestScheduler,
                                                          discovery: Discovery) -> None:
    # Go's Register always derives a new uuid; rx-discovery keeps one given in Host.uuid (a
    # stable name). So registering a host read back (reg.host, a stream's host) again would
    # share its key: disposing either deletes the other's. register() refuses that.
    first = discovery.register("api", Host(hostname="h", ports=PORTS, uuid="fixed-1"))
    scheduler.advance_to(1)
    assert first.uuid == "fixed-1" and first.ready
    with pytest.raises(ValueError, match="uuid"):
        discovery.register("api", first.host)
    scheduler.advance_to(2)
    assert discovery.store.get(first.key) is not None and first.ready
    other = discovery.register("web", first.host)  # another service: another key
    first.dispose()
    again = discovery.register("api", first.host)  # free again once disposed
    scheduler.advance_to(3)
    assert again.ready and other.ready
