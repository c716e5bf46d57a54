"""Python (``Discovery(api="v2")``) and the real Go etcd-discovery package on one etcd.

Each test uses its own service name on the session's etcd. Go's TTL is fixed at 5 s
(refreshed every 4 s), so a SIGKILLed Go host goes down within ~5 s; the deadlines below give
it three times that.
"""

from __future__ import annotations

import json
import time

import pytest
from helpers import Recorder, wait_until

from rx_discovery import Discovery, Host, ServiceNotFound
from rx_discovery.model import Service
from rx_discovery.registration import prepare_host, service_document

GO_TTL = 5.0
DOWN_DEADLINE = 3 * GO_TTL


def watch(discovery: Discovery, name: str) -> tuple[Recorder, Recorder, Recorder]:
    """hosts/subscribe_new/subscribe_down of ``name``, once the stream read its first state
    (so that what registers next is new to it)."""
    hosts, new, down = Recorder(), Recorder(), Recorder()
    hosts.subscription = discovery.hosts(name).subscribe(hosts.on_next, hosts.on_error)
    new.subscription = discovery.subscribe_new(name).subscribe(new.on_next, new.on_error)
    down.subscription = discovery.subscribe_down(name).subscribe(down.on_next, down.on_error)
    wait_until(lambda: hosts.items, 10.0, message="the first host set")
    return hosts, new, down


# -- Go registers, Python watches ---------------------------------------------------------


def test_a_go_host_is_new_in_python_then_down_after_sigkill(go, v2, service_name):
    hosts, new, down = watch(v2, service_name)
    peer = go.register(service_name, "go-host.dev", "http=80,https=443",
                       "--private-hostname", "go-node.internal")
    uuid = peer.registered["uuid"]

    wait_until(lambda: [h.uuid for h in new.items] == [uuid], 10.0, message="new in Python")
    wait_until(lambda: uuid in hosts.items[-1], 10.0, message="the host in hosts()")
    [host] = v2.get(service_name).all()
    assert (host.uuid, host.hostname, host.ports, host.private_hostname) == (
        uuid, "go-host.dev", {"http": "80", "https": "443"}, "go-node.internal")

    peer.kill()  # nothing deletes the key: etcd expires it within Go's TTL
    wait_until(lambda: down.items == [uuid], DOWN_DEADLINE, message="down after the TTL")
    assert uuid not in hosts.items[-1]
    assert new.error is None and down.error is None and hosts.error is None


def test_a_go_host_stopped_gracefully_goes_down(go, v2, service_name):
    _, new, down = watch(v2, service_name)
    peer = go.register(service_name, "go-host.dev", "8080")
    uuid = peer.registered["uuid"]
    wait_until(lambda: [h.uuid for h in new.items] == [uuid], 10.0, message="new in Python")
    peer.stop()
    # Go deletes with its cancelled context, so the key may linger one TTL: down either way
    stopped = peer.next_event("stopped")
    wait_until(lambda: down.items == [uuid], DOWN_DEADLINE, message="down after the stop")
    assert stopped["reason"] == "stdin closed"


# -- Python registers, Go watches ---------------------------------------------------------


def test_a_python_host_is_seen_by_go_get_and_watch(go, v2, service_name):
    watcher = go.watch(service_name)
    host = Host(hostname="py-host.dev", ports={"http": "8080", "https": "8443"},
                private_hostname="py-node.internal", shard="shard-1")
    registration = v2.register(service_name, host, ttl=30).wait(10)

    seen = watcher.next_event("new", uuid=registration.uuid)
    assert seen["host"]["name"] == "py-host.dev"
    answer = go.get(service_name)
    assert [h["uuid"] for h in answer["all"]] == [registration.uuid]
    assert answer["url"] == "http://py-host.dev:8080"
    assert answer["service"] == {"name": service_name, "critical": False}

    registration.dispose()  # deletes the key at once: no waiting for its 30 s TTL
    watcher.next_event("down", timeout=10.0, uuid=registration.uuid)
    assert go.get(service_name).get("all_error_kind") == "NoHostFound"


def test_a_python_host_outlives_go_ttl_while_kept_alive(go, v2, service_name):
    """Python's TTL refreshes (refresh=true, no value) keep the key; Go sees no change."""
    watcher = go.watch(service_name)
    registration = v2.register(service_name, Host(hostname="py.dev", ports={"http": "1"}),
                               ttl=2).wait(10)
    watcher.next_event("new", uuid=registration.uuid)
    time.sleep(3 * 2)  # three TTLs
    assert [h["uuid"] for h in go.get(service_name)["all"]] == [registration.uuid]
    assert [e["event"] for e in watcher.seen] == ["ready", "new"]
    registration.dispose()


# -- the same bytes, the same URLs ----------------------------------------------------------


def test_keys_and_values_are_byte_identical(go, v2, service_name):
    peer = go.register(service_name, "pub.example.dev", "http=80,https=443",
                       "--user", "alice", "--password", "s3cr3t", "--public", "--critical",
                       "--private-hostname", "node-7.internal", "--private-ports", "http=8080",
                       "--shard", "shard-0")
    registered = peer.registered
    uuid = registered["uuid"]
    ours = prepare_host(service_name, Host(
        hostname="pub.example.dev", ports={"http": "80", "https": "443"}, user="alice",
        password="s3cr3t", public=True, critical=True, private_hostname="node-7.internal",
        private_ports={"http": "8080"}, shard="shard-0", uuid=uuid))
    assert registered["key"] == v2.keyspace.host_key(service_name, uuid)
    assert registered["service_key"] == v2.keyspace.service_key(service_name)
    assert ours.to_json() == registered["value"]
    assert Host.from_json(registered["value"]).to_json() == registered["value"]
    assert service_document(service_name, ours).to_json() == registered["service_value"]
    stored = v2.store.get(registered["key"])
    assert stored is not None and stored.value == registered["value"].encode()

    # the other way: what Python stores, Go decodes and re-encodes to the same bytes
    python_name = service_name + "-py"
    registration = v2.register(python_name, Host(
        hostname="py.example.dev", ports={"http": "81"}, private_hostname="py-node",
        private_ports={"http": "8181"}, shard="s", critical=True), ttl=5).wait(10)
    python_value = v2.store.get(registration.key)
    assert python_value is not None
    answer = go.get(python_name)
    assert json.dumps(answer["all"][0], separators=(",", ":")).encode() == python_value.value


def test_a_host_without_ports_is_written_as_go_writes_it(go, v2, service_name):
    """Go writes a nil map as ``"ports":null`` (needs the "model" branch's fix)."""
    peer = go.register(service_name, "noports.dev", "-", "--private-hostname", "n")
    ours = prepare_host(service_name, Host(hostname="noports.dev", ports={},
                                           private_hostname="n", uuid=peer.registered["uuid"]))
    assert ours.to_json() == peer.registered["value"]


def test_urls_agree_with_go(go, v2, service_name):
    public = service_name + "-pub"
    go.register(public, "pub.dev", "http=80,https=443", "--public", "--user", "u",
                "--password", "p", "--private-hostname", "pub-node", "--private-ports",
                "http=8080")
    private = service_name + "-priv"
    go.register(private, "priv.dev", "http=81", "--private-hostname", "priv-node",
                "--private-ports", "http=9090")
    for name in (public, private):
        for scheme in ("http", "https"):
            answer = go.get(name, "--scheme", scheme, "--path", "/x")
            query = v2.get(name)
            host = query.first()
            if "url" in answer and name == public:  # private: see the test below
                assert query.url(scheme, "/x") == answer["url"], (name, scheme)
            if "first_url" in answer:
                assert host.url(scheme, "/x") == answer["first_url"], (name, scheme)
            if "first_private_url" in answer:
                assert host.private_url(scheme, "/x") == answer["first_private_url"], (
                    name, scheme)


def test_private_url_falls_back_to_url_as_go(go, v2, service_name):
    """A host without a private hostname (Go's Register always sets one, so it is written
    here by hand): Go's PrivateURL is URL(), public ports included (needs the "model"
    branch's fix)."""
    value = {"name": "pub.dev", "service_name": service_name, "ports": {"http": "80"},
             "private_ports": {"http": "8080"}, "uuid": "u-1"}
    v2.store.put(v2.keyspace.host_key(service_name, "u-1"), json.dumps(value).encode())
    answer = go.get(service_name, "--scheme", "http")
    host = v2.get(service_name).first()
    assert answer["first_private_url"] == answer["first_url"] == "http://pub.dev:80"
    assert host.private_url("http") == answer["first_private_url"]


def test_url_of_a_non_public_service_is_a_hosts_public_url_as_go(go, v2, service_name):
    """Needs the "model" branch's fix (get(name).url() of a non-public service)."""
    go.register(service_name, "priv.dev", "http=81", "--private-hostname", "priv-node",
                "--private-ports", "http=9090")
    answer = go.get(service_name, "--scheme", "http")
    assert v2.get(service_name).url("http") == answer["url"]


# -- credential sync ----------------------------------------------------------------------


def test_go_newcomer_credentials_are_adopted_by_python(go, v2, service_name):
    registration = v2.register(service_name, Host(
        hostname="py.dev", ports={"http": "80"}, public=True, user="old", password="old-pw"),
        ttl=5).wait(10)
    adopted = Recorder()
    registration.credentials.subscribe(adopted.on_next)
    go.register(service_name, "go.dev", "http=80", "--public", "--user", "new",
                "--password", "new-pw")
    wait_until(lambda: adopted.items and adopted.items[-1].user == "new", 10.0,
               message="Python to adopt the Go newcomer's credentials")
    assert adopted.items[-1].password == "new-pw"

    def host_key_rewritten() -> bool:
        kv = v2.store.get(registration.key)
        return kv is not None and Host.from_json(kv.value).user == "new"

    wait_until(host_key_rewritten, 10.0, message="the Python host key rewritten")
    service = v2.store.get(v2.keyspace.service_key(service_name))
    assert service is not None and Service.from_json(service.value).user == "new"


def test_python_newcomer_credentials_are_adopted_by_go(go, v2, service_name):
    """Needs the "reg" branch's fix (a newcomer writes its credentials; others adopt)."""
    peer = go.register(service_name, "go.dev", "http=80", "--public", "--user", "old",
                       "--password", "old-pw")
    peer.next_event("credentials", user="old")
    v2.register(service_name, Host(hostname="py.dev", ports={"http": "80"}, public=True,
                                   user="new", password="new-pw"), ttl=5).wait(10)
    peer.next_event("credentials", timeout=10.0, user="new", password="new-pw")
    service = v2.store.get(v2.keyspace.service_key(service_name))
    assert service is not None and Service.from_json(service.value).user == "new"


# -- v3 ------------------------------------------------------------------------------------


def test_on_v3_go_and_python_do_not_meet(go, v2, etcd, service_name):
    """etcd keeps v2 and v3 data apart: why api="v2" exists."""
    go.register(service_name, "go.dev", "8080")
    assert len(v2.get(service_name).all()) == 1
    with Discovery(etcd.endpoint) as v3:
        with pytest.raises(ServiceNotFound):
            v3.get(service_name).all()
        v3.register(service_name, Host(hostname="py.dev", ports={"http": "1"}), ttl=5).wait(10)
        assert [h["name"] for h in go.get(service_name)["all"]] == ["go.dev"]
