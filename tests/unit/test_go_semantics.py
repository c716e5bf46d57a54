"""URLs and JSON exactly as the Go package v8.0.0 gives them (issue 11 section 7).

Each expected string was read off the Go source (``service/host.go`` ``URL``/``PrivateURL``,
``service/service.go`` ``Service.URL``, ``encoding/json`` on ``Host``) and confirmed with the
Go package itself (``interop-go get`` on an etcd with ``--enable-v2=true``, the same keys
written through ``/v2/keys``), which printed, for the cases below:

- no private hostname: ``first_private_url`` ``http://u:p@pub.dev:80/x`` (= ``first_url``);
- non-public service: ``url`` ``http://10.0.0.7:80/v1`` (``first_private_url`` is
  ``http://node.internal:8080/v1``);
- public service, ``--shard b``: ``url`` ``http://u:p@b.example.com:80/x``; without a shard:
  ``http://u:p@www.example.com:80/x``;
- a host registered without ports: ``{"name":"h","service_name":"d","ports":null,...}``;
- hosts but no service key: ``service`` ``{"name":"e","critical":false}``, no error;
- a user without password: ``http://u:@::1:80``.

The deliberate differences (listed in the README) are percent-encoded credentials, a ``/``
between port and path, brackets around a bare IPv6 literal, and no scheme meaning http then
https on a public service too (Go: ``unknown scheme``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from reactivex.testing import TestScheduler

from rx_discovery import Discovery, Host, NoHostFoundOnShard, Service, UnknownScheme
from rx_discovery.hostset import HostSet

PUBLIC_PORTS = {"http": "80", "https": "443"}
PRIVATE_PORTS = {"http": "8080"}


@pytest.fixture
def discovery() -> Iterator[Discovery]:
    with Discovery.in_memory(TestScheduler()) as found:
        yield found


def _put_host(discovery: Discovery, service: str, host: Host) -> None:
    discovery.store.put(discovery.keyspace.host_key(service, host.uuid), host.to_json().encode())


def _put_service(discovery: Discovery, service: Service) -> None:
    discovery.store.put(discovery.keyspace.service_key(service.name),
                        service.to_json().encode())


def test_private_url_without_private_hostname_is_the_public_url() -> None:
    # Go: PrivateURL falls back to URL() -- the public hostname AND the public ports
    host = Host(hostname="pub.dev", ports=PUBLIC_PORTS, private_ports=PRIVATE_PORTS, user="u",
                password="p")
    assert host.private_url() == "http://u:p@pub.dev:80"
    assert host.private_url("https", "/x") == "https://u:p@pub.dev:443/x"
    assert host.private_url() == host.url()


def test_private_url_uses_only_the_private_ports() -> None:
    # Go: with a private hostname, the port comes from PrivatePorts alone
    host = Host(hostname="pub.dev", ports=PUBLIC_PORTS, private_hostname="node.internal",
                private_ports=PRIVATE_PORTS)
    assert host.private_url() == "http://node.internal:8080"
    with pytest.raises(UnknownScheme):
        host.private_url("https")  # a public port only: Go says ErrUnknownScheme
    with pytest.raises(UnknownScheme):
        Host(hostname="pub.dev", ports=PUBLIC_PORTS, private_hostname="n").private_url()


def test_get_url_of_a_non_public_service_is_a_host_public_url(discovery: Discovery) -> None:
    host = Host(hostname="10.0.0.7", service_name="api", ports=PUBLIC_PORTS,
                private_hostname="node.internal", private_ports=PRIVATE_PORTS, uuid="u-1")
    _put_host(discovery, "api", host)
    _put_service(discovery, Service("api"))
    assert discovery.get("api").url("http", "/v1") == "http://10.0.0.7:80/v1"
    assert discovery.get("api").url() == "http://10.0.0.7:80"
    # with no service key at all (hosts of an old Go version), the same
    _put_host(discovery, "old", host)
    assert discovery.get("old").url("https") == "https://10.0.0.7:443"


def test_get_url_of_a_public_service_is_the_service_key_address(discovery: Discovery) -> None:
    _put_host(discovery, "web", Host(hostname="10.0.0.7", ports={"http": "8000"}, uuid="u-1",
                                     shard="a"))
    _put_service(discovery, Service("web", public=True, hostname="www.example.com",
                                    ports=PUBLIC_PORTS, user="u", password="p"))
    assert discovery.get("web").url("https", "/x") == "https://u:p@www.example.com:443/x"


def test_get_url_on_a_shard_is_a_host_of_that_shard(discovery: Discovery) -> None:
    # Go: "If a shard is requested, always resolve the URL from a host in that shard"
    for shard in ("a", "b"):
        _put_host(discovery, "web", Host(hostname=f"{shard}.example.com", ports=PUBLIC_PORTS,
                                         private_hostname=f"{shard}.internal",
                                         private_ports=PRIVATE_PORTS, shard=shard,
                                         uuid=f"u-{shard}", public=True, user="u",
                                         password="p"))
    _put_service(discovery, Service("web", public=True, hostname="www.example.com",
                                    ports=PUBLIC_PORTS, user="u", password="p"))
    for _ in range(10):  # a random host of the shard: always the one of shard b
        assert discovery.get("web", shard="b").url("http", "/x") == "http://u:p@b.example.com:80/x"
    with pytest.raises(NoHostFoundOnShard):
        discovery.get("web", shard="c").url("http")


def test_host_set_url_is_a_random_host_public_url() -> None:
    host = Host(hostname="10.0.0.7", ports=PUBLIC_PORTS, private_hostname="node.internal",
                private_ports=PRIVATE_PORTS, uuid="u-1")
    assert HostSet("api", [host]).url("http", "/v1") == "http://10.0.0.7:80/v1"


def test_a_host_without_ports_writes_null_as_go_does() -> None:
    # Go's json.Marshal of a nil Ports map (field `json:"ports"`, no omitempty)
    host = Host(hostname="h", service_name="s")
    assert host.to_json() == '{"name":"h","service_name":"s","ports":null}'
    assert Host.from_json(host.to_json()) == host
    assert Host.from_json('{"name":"h","service_name":"s","ports":{}}') == host
    assert Host.from_dict({"name": "h", "service_name": "s", "ports": None}) == host
    assert Host(hostname="h", ports={"http": "80"}).to_json() == (
        '{"name":"h","service_name":"","ports":{"http":"80"}}')
    # private_ports and the service's ports are `omitempty`: left out, never null
    assert Service("s").to_json() == '{"name":"s","critical":false}'


def test_bare_ipv6_literals_are_bracketed_in_urls() -> None:
    host = Host(hostname="::1", ports={"http": "80"}, private_hostname="fd00::7",
                private_ports={"http": "8080"})
    assert host.url() == "http://[::1]:80"
    assert host.private_url() == "http://[fd00::7]:8080"
    assert Host(hostname="[::1]", ports={"http": "80"}).url() == "http://[::1]:80"


def test_a_user_without_password_is_written_as_go_does() -> None:
    assert Host(hostname="h", ports={"http": "80"}, user="u").url() == "http://u:@h:80"
    assert Host(hostname="h", ports={"http": "80"}, user="u@x").url() == "http://u%40x:@h:80"


def test_service_of_hosts_without_a_service_key_is_just_its_name(discovery: Discovery) -> None:
    # Go's Get: "If the service is not found, we won't render an error but will return a
    # service with minimal information" (old versions wrote no /services_infos/ key)
    _put_host(discovery, "old", Host(hostname="h", ports={"http": "80"}, uuid="u-1"))
    assert discovery.get("old").service() == Service("old")


# What the Go package v8.0.0 writes for hosts it accepts without complaint: ``Register`` with
# ``Hostname: ""`` (a private host that relies on the machine's name: Go sets
# ``PrivateHostname`` to it and leaves ``name`` empty), and ports whose number is empty.
# Go reads them back as hosts (``json.Unmarshal`` only); so must rx-discovery, in every stream.
GO_HOST_WITHOUT_HOSTNAME = (b'{"name":"","service_name":"g","ports":{"http":"80"},'
                            b'"private_hostname":"node-1","private_ports":{"http":"80"},'
                            b'"uuid":"u1-node-1"}')
GO_HOST_WITH_EMPTY_PORT = (b'{"name":"h","service_name":"g","ports":{"":"81","http":""},'
                           b'"private_hostname":"h","private_ports":{"http":""},'
                           b'"uuid":"u2-h"}')


@pytest.mark.parametrize("value", [GO_HOST_WITHOUT_HOSTNAME, GO_HOST_WITH_EMPTY_PORT],
                         ids=["empty-name", "empty-port"])
def test_hosts_that_go_registers_are_read_back_not_dropped(value: bytes) -> None:
    from rx_discovery.model import decode_host

    host = decode_host(value, "/services/g/u")
    assert host.to_json().encode() == value  # and written back byte for byte
    scheduler = TestScheduler()
    with Discovery.in_memory(scheduler) as discovery:
        discovery.store.put(f"/services/g/{host.uuid}", value)
        assert [h.uuid for h in discovery.get("g").all()] == [host.uuid]


def test_a_go_host_without_hostname_has_go_urls() -> None:
    from rx_discovery.model import decode_host

    host = decode_host(GO_HOST_WITHOUT_HOSTNAME)
    assert host.private_url("http", "/x") == "http://node-1:80/x"
    assert host.url("http") == "http://:80"  # what Go's URL prints for it


def test_a_go_service_key_with_an_empty_port_is_read() -> None:
    # Go's Register of a public host with Ports{"http": ""} writes this service key; Go reads
    # it back (json.Unmarshal only), so an empty port must not make it unreadable
    from rx_discovery.model import decode_service

    value = (b'{"name":"s","critical":false,"hostname":"h","ports":{"":"81","http":""},'
             b'"public":true}')
    service = decode_service(value, "/services_infos/s")
    assert service.ports == {"": "81", "http": ""} and service.public
    assert service.to_json().encode() == value


def test_query_errors_are_go_s(discovery: Discovery) -> None:
    from rx_discovery import NoHostFound, ServiceNotFound

    keyspace, store = discovery.keyspace, discovery.store
    for method in ("all", "first", "one", "url"):
        with pytest.raises(ServiceNotFound):
            getattr(discovery.get("none"), method)()
    with pytest.raises(ServiceNotFound):
        discovery.get("none").service()
    store.put(keyspace.service_key("known"), Service("known").to_json().encode())
    for method in ("all", "first", "one", "url"):
        with pytest.raises(NoHostFound) as caught:
            getattr(discovery.get("known"), method)()
        assert not isinstance(caught.value, NoHostFoundOnShard)
        with pytest.raises(NoHostFound) as caught:  # no host at all: not "none on the shard"
            getattr(discovery.get("known", shard="a"), method)()
        assert not isinstance(caught.value, NoHostFoundOnShard)
    assert discovery.get("known").service() == Service("known")
    store.put(keyspace.host_key("known", "u-1"),
              Host(hostname="h", ports=PUBLIC_PORTS, uuid="u-1", shard="b").to_json().encode())
    for method in ("all", "first", "one", "url"):
        with pytest.raises(NoHostFoundOnShard):
            getattr(discovery.get("known", shard="a"), method)()
    # something is stored for "junk" (a value nobody can read): not "service not found"
    store.put(keyspace.host_key("junk", "u-2"), b"not json")
    with pytest.raises(NoHostFound) as caught:
        discovery.get("junk").all()
    assert not isinstance(caught.value, ServiceNotFound)


def test_all_is_in_key_order_as_documented(discovery: Discovery) -> None:
    uuids = [f"{n:03d}-{chr(97 + n % 26)}" for n in range(60)]
    shuffled = uuids[::7] + [u for u in uuids if u not in uuids[::7]]
    for uuid in reversed(shuffled):
        discovery.store.put(discovery.keyspace.host_key("many", uuid),
                            Host(hostname="h", ports=PUBLIC_PORTS, uuid=uuid).to_json().encode())
    assert [h.uuid for h in discovery.get("many").all()] == sorted(uuids)
    assert discovery.get("many").first().uuid == min(uuids)
