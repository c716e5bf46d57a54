"""``Discovery(api="v2")`` on real etcd servers: healing registrations, resync after etcd's v2
history moved past a watcher, TLS with in-memory PEM, basic auth, health."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import trustme
from helpers import Recorder, wait_until

from rx_discovery import Discovery, Host, RegistrationStatus
from rx_discovery._errors import AuthenticationFailed, ConfigError, StoreError, StoreUnavailable
from rx_discovery.config import Settings, parse_endpoint
from rx_discovery.embedded import EmbeddedEtcd, EmbeddedEtcdCluster, TLSFiles
from rx_discovery.health import HealthState
from rx_discovery.store.v2 import EtcdV2Store
from rx_discovery.store.v2.http import POLLS_PER_CLIENT
from rx_discovery.testing import TcpProxy

ROOT, ROOT_PASSWORD = "root", "r00t-pw-v2"
SVC, SVC_PASSWORD = "svc", "svc-pw-v2-secret"


def host(n: int) -> Host:
    return Host(hostname=f"h{n}.dev", ports={"http": str(8000 + n)})


def direct(etcd: EmbeddedEtcd) -> EtcdV2Store:
    return EtcdV2Store(Settings(endpoints=(parse_endpoint(etcd.endpoint),)))


def statuses(registration: object) -> Recorder:
    recorder = Recorder()
    registration.status.subscribe(recorder.on_next)  # type: ignore[attr-defined]
    return recorder


def test_discovery_api_v2_uses_the_v2_store(etcd: EmbeddedEtcd,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with Discovery(etcd.endpoint, api="v2") as discovery:
        assert isinstance(discovery.store, EtcdV2Store)
    monkeypatch.setenv("ETCD_HOSTS", etcd.endpoint)
    monkeypatch.setenv("ETCD_API", "v2")
    with Discovery.from_env() as discovery:
        assert isinstance(discovery.store, EtcdV2Store)


def test_a_registration_heals_when_its_key_is_deleted(etcd: EmbeddedEtcd,
                                                      unique_prefix: str) -> None:
    with Discovery(etcd.endpoint, api="v2", prefix=unique_prefix) as discovery:
        registration = discovery.register("svc", host(1), ttl=3).wait(10)
        seen = statuses(registration)
        other = direct(etcd)
        try:
            other.delete(registration.key)
            wait_until(lambda: seen.items[-2:] == [RegistrationStatus.LOST,
                                                  RegistrationStatus.REGISTERED], 10.0,
                       message="LOST then REGISTERED")
            assert other.get(registration.key) is not None
        finally:
            other.close()


def test_a_registration_heals_after_its_key_expired_in_an_outage(
        etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    with (TcpProxy(etcd.client_port) as proxy,
          Discovery(proxy.endpoint, api="v2", prefix=unique_prefix, timeout=1) as discovery):
        registration = discovery.register("svc", host(1), ttl=2).wait(10)
        seen = statuses(registration)
        other = direct(etcd)
        try:
            proxy.cut()
            wait_until(lambda: other.get(registration.key) is None, 10.0,
                       message="the key to expire")
            proxy.restore()
            wait_until(lambda: seen.items[-1] is RegistrationStatus.REGISTERED
                       and RegistrationStatus.LOST in seen.items, 15.0,
                       message="LOST then REGISTERED")
            wait_until(lambda: other.get(registration.key) is not None, 5.0,
                       message="the key back")
        finally:
            other.close()


def test_hosts_resync_when_the_watch_fell_out_of_etcds_history(
        etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    """A watcher cut off while > 1,000 events happen gets "event index cleared" when it
    comes back: it re-reads and emits the difference (a host gone, a host come)."""
    with (TcpProxy(etcd.client_port) as proxy,
          Discovery(proxy.endpoint, api="v2", prefix=unique_prefix, timeout=1) as watcher,
          Discovery(etcd.endpoint, api="v2", prefix=unique_prefix) as writer):
        gone = writer.register("svc", host(1), ttl=30).wait(10)
        sets = Recorder()
        watcher.hosts("svc").subscribe(sets.on_next)
        wait_until(lambda: sets.items and gone.uuid in sets.items[-1], 10.0,
                   message="the first host")
        proxy.cut()
        gone.dispose()
        came = writer.register("svc", host(2), ttl=30).wait(10)
        churn = direct(etcd)
        try:
            for n in range(1010):
                churn.put(f"{unique_prefix}/churn", str(n).encode())
        finally:
            churn.close()
        proxy.restore()
        wait_until(lambda: set(sets.items[-1]) == {came.uuid}, 15.0, message="the resync")
        came.dispose()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes | str]:
    folder = tmp_path_factory.mktemp("pki-v2")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("rx-discovery-client")
    files = {"ca": ca.cert_pem, "cert": server.cert_chain_pems[0],
             "key": server.private_key_pem}
    paths: dict[str, bytes | str] = {}
    for name, blob in files.items():
        blob.write_to_path(str(folder / f"{name}.pem"))
        paths[name] = str(folder / f"{name}.pem")
    paths.update(ca_pem=ca.cert_pem.bytes(), client_cert=client.cert_chain_pems[0].bytes(),
                 client_key=client.private_key_pem.bytes())
    return paths


def test_tls_with_client_certificates_from_memory(pki: dict[str, bytes | str],
                                                  unique_prefix: str) -> None:
    tls = TLSFiles(str(pki["cert"]), str(pki["key"]), str(pki["ca"]))
    with EmbeddedEtcd(name="v2-mtls", tls=tls) as server:
        with Discovery(server.endpoint, api="v2", prefix=unique_prefix,
                       ca_cert=pki["ca_pem"], client_cert=pki["client_cert"],
                       client_key=pki["client_key"]) as discovery:  # type: ignore[arg-type]
            registration = discovery.register("svc", host(1), ttl=5).wait(10)
            assert [h.uuid for h in discovery.get("svc").all()] == [registration.uuid]
        # TLS material makes it TLS, whatever the scheme written (as on v3)
        plain_scheme = server.endpoint.replace("https://", "http://")
        with Discovery(plain_scheme, api="v2", prefix=unique_prefix, ca_cert=pki["ca_pem"],
                       client_cert=pki["client_cert"],
                       client_key=pki["client_key"]) as discovery:  # type: ignore[arg-type]
            assert discovery.get("svc").service().name == "svc"  # the service key, read
        # PEM that is not PEM: refused when the settings are made, before any connection
        with pytest.raises(ConfigError, match="ca_cert"):
            Discovery(server.endpoint, api="v2", prefix=unique_prefix,
                      ca_cert=b"not a certificate")
        # no client certificate: refused for good, and health says so
        with Discovery(server.endpoint, api="v2", prefix=unique_prefix,
                       ca_cert=pki["ca_pem"]) as refused:  # type: ignore[arg-type]
            health = Recorder()
            refused.store.health.subscribe(health.on_next)
            with pytest.raises(StoreError) as caught:
                refused.store.get(f"{unique_prefix}/x")
            assert caught.value.permanent
            refused.store._health._settle()  # health reaches observers on its own thread
            assert health.items[-1].state is HealthState.DENIED


@pytest.fixture(scope="module")
def v2_auth() -> Iterator[EmbeddedEtcd]:
    """An etcd with v2 authentication on: user ``svc`` may use /services* only; the guest
    role (anonymous requests) may do nothing."""
    with EmbeddedEtcd(name="v2-auth") as server:
        url, root = server.endpoint, (ROOT, ROOT_PASSWORD)
        for method, path, body, auth in (
                ("PUT", "/v2/auth/users/root", {"user": ROOT, "password": ROOT_PASSWORD}, None),
                ("PUT", "/v2/auth/enable", None, None),
                ("PUT", "/v2/auth/roles/guest", {"role": "guest", "revoke": {"kv": {
                    "read": ["/*"], "write": ["/*"]}}}, root),
                ("PUT", "/v2/auth/roles/discovery", {"role": "discovery", "permissions": {
                    "kv": {"read": ["/services/*", "/services_infos/*"],
                           "write": ["/services/*", "/services_infos/*"]}}}, root),
                ("PUT", "/v2/auth/users/svc", {"user": SVC, "password": SVC_PASSWORD,
                                               "roles": ["discovery"]}, root)):
            answer = httpx.request(method, url + path, json=body, auth=auth)
            assert answer.status_code < 300, (path, answer.text)
        yield server


def test_basic_auth(v2_auth: EmbeddedEtcd, caplog: pytest.LogCaptureFixture) -> None:
    with Discovery(v2_auth.endpoint, api="v2", user=SVC, password=SVC_PASSWORD) as discovery:
        registration = discovery.register("svc", host(1), ttl=5).wait(10)
        assert [h.uuid for h in discovery.get("svc").all()] == [registration.uuid]
    assert "basic auth over plain HTTP" in caplog.text
    assert SVC_PASSWORD not in caplog.text
    settings = Settings(endpoints=(parse_endpoint(v2_auth.endpoint),), api="v2")
    allowed = dataclasses.replace(settings, user=SVC, password=SVC_PASSWORD)
    with EtcdV2Store(allowed) as store, pytest.raises(AuthenticationFailed):
        store.put("/elsewhere/x", b"v")  # no permission there: v2 answers 401 too
    for wrong in (dataclasses.replace(settings, user=SVC, password="not-" + SVC_PASSWORD),
                  settings):  # a wrong password; none at all (the guest role may do nothing)
        with EtcdV2Store(wrong) as store:
            health = Recorder()
            store.health.subscribe(health.on_next)
            with pytest.raises(AuthenticationFailed) as caught:
                store.get("/services/svc")
            assert SVC_PASSWORD not in str(caught.value)
            store._health._settle()  # health reaches observers on its own thread
            assert health.items[-1].state is HealthState.DENIED
            assert SVC_PASSWORD not in str(health.items[-1])


def test_cli_api_v2_lists_v2_hosts(etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    store = direct(etcd)
    try:
        store.put(f"{unique_prefix}/services/gosvc/u1",
                  b'{"name":"go.dev","service_name":"gosvc","ports":{"http":"80"},"uuid":"u1"}')
    finally:
        store.close()
    env = {**os.environ, "ETCD_HOSTS": etcd.endpoint, "ETCD_PREFIX": unique_prefix}
    listed = {}
    for api in ("v2", "v3"):
        done = subprocess.run([sys.executable, "-m", "rx_discovery", "ls", "--json", "--api", api],
                              env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        listed[api] = [s["name"] for s in json.loads(done.stdout)["services"]]
    assert listed == {"v2": ["gosvc"], "v3": []}  # two stores inside one etcd


def test_a_frozen_member_ends_the_watch_as_unavailable(unique_prefix: str) -> None:
    """An idle long poll is closed after max(10 s, 2x timeout) and the member is asked for
    /health: a frozen one fails the watch (the sync then reopens it, failing over)."""
    with EmbeddedEtcd(name="v2-frozen") as server:
        store = EtcdV2Store(Settings(endpoints=(parse_endpoint(server.endpoint),), timeout=1))
        errors = Recorder()
        try:
            store.watch(f"{unique_prefix}/", 0).subscribe(on_error=errors.on_next)
            server.pause()
            wait_until(lambda: errors.items, 3 * 11.0, message="the watch to fail")
            assert isinstance(errors.items[0], StoreUnavailable)
        finally:
            server.resume()
            store.close()


def test_streams_resume_after_a_restart(unique_prefix: str) -> None:
    with (EmbeddedEtcd(name="v2-restart") as server,
          Discovery(server.endpoint, api="v2", prefix=unique_prefix, timeout=1) as watcher,
          Discovery(server.endpoint, api="v2", prefix=unique_prefix, timeout=1) as writer):
        sets, new = Recorder(), Recorder()
        watcher.hosts("svc").subscribe(sets.on_next)
        watcher.subscribe_new("svc").subscribe(new.on_next)
        wait_until(lambda: sets.items, 10.0, message="the first state")  # then it is new
        first = writer.register("svc", host(1), ttl=10).wait(10)
        wait_until(lambda: [h.uuid for h in new.items] == [first.uuid], 10.0,
                   message="the first host")
        server.restart()
        second = writer.register("svc", host(2), ttl=10).wait(15)
        wait_until(lambda: [h.uuid for h in new.items] == [first.uuid, second.uuid], 15.0,
                   message="the host registered after the restart, once")
        assert set(sets.items[-1]) == {first.uuid, second.uuid}


def test_an_etcd_without_v2_is_reported_not_retried_in_silence(unique_prefix: str) -> None:
    with (EmbeddedEtcd(name="v2-off", extra_args=["--enable-v2=false"]) as server,
          Discovery(server.endpoint, api="v2", prefix=unique_prefix) as discovery):
        health = Recorder()
        discovery.store.health.subscribe(health.on_next)
        with pytest.raises(StoreError) as caught:
            discovery.get("svc").all()
        assert caught.value.permanent and "--enable-v2=true" in str(caught.value)
        discovery.store._health._settle()  # health reaches observers on its own thread
        assert health.items[-1].state is HealthState.DENIED


def test_a_cut_watcher_resumes_without_losing_or_repeating(etcd: EmbeddedEtcd,
                                                          unique_prefix: str) -> None:
    with (TcpProxy(etcd.client_port) as proxy,
          Discovery(proxy.endpoint, api="v2", prefix=unique_prefix, timeout=1) as watcher,
          Discovery(etcd.endpoint, api="v2", prefix=unique_prefix) as writer):
        new, down = Recorder(), Recorder()
        sets = Recorder()
        watcher.hosts("svc").subscribe(sets.on_next)
        watcher.subscribe_new("svc").subscribe(new.on_next)
        watcher.subscribe_down("svc").subscribe(down.on_next)
        wait_until(lambda: sets.items, 10.0, message="the first state")
        proxy.cut()
        came = [writer.register("svc", host(n), ttl=30).wait(10) for n in range(3)]
        came[0].dispose()  # came and went during the gap
        proxy.restore()
        wait_until(lambda: len(new.items) == 3 and len(down.items) == 1, 15.0,
                   message="the gap's events")
        assert sorted(h.uuid for h in new.items) == sorted(r.uuid for r in came)
        assert down.items == [came[0].uuid]
        marker = writer.register("svc", host(9), ttl=30).wait(10)
        wait_until(lambda: len(new.items) == 4, 10.0, message="a later host")
        assert new.items[-1].uuid == marker.uuid and len(down.items) == 1


def test_close_deletes_the_keys_and_ends_every_thread(etcd: EmbeddedEtcd,
                                                     unique_prefix: str) -> None:
    def v2_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("rx-discovery-v2")}

    before = v2_threads()  # of stores other tests left open
    discovery = Discovery(etcd.endpoint, api="v2", prefix=unique_prefix)
    registrations = [discovery.register("svc", host(n), ttl=30) for n in range(3)]
    for registration in registrations:
        registration.wait(10)
    sets = Recorder()
    discovery.hosts("svc").subscribe(sets.on_next)
    wait_until(lambda: sets.items and len(sets.items[-1]) == 3, 10.0, message="3 hosts")
    assert v2_threads() - before
    discovery.close()
    other = direct(etcd)
    try:
        assert [other.get(r.key) for r in registrations] == [None] * 3  # at once, not a TTL
    finally:
        other.close()
    wait_until(lambda: not v2_threads() - before, 5.0, message="the v2 threads to end")


def test_streams_and_registrations_fail_over_when_a_member_dies(unique_prefix: str) -> None:
    """Three members; the watcher and registrar both start on m0, which is killed: calls and
    long polls move to the next member, the registration keeps its key, streams go on."""
    with EmbeddedEtcdCluster(3) as cluster:
        endpoints = cluster.endpoints
        with (Discovery(endpoints, api="v2", prefix=unique_prefix, timeout=1) as watcher,
              Discovery(endpoints, api="v2", prefix=unique_prefix, timeout=1) as writer):
            new, sets = Recorder(), Recorder()
            watcher.hosts("svc").subscribe(sets.on_next)
            watcher.subscribe_new("svc").subscribe(new.on_next)
            wait_until(lambda: sets.items, 10.0, message="the first state")  # then it is new
            kept = writer.register("svc", host(1), ttl=5).wait(10)
            seen = statuses(kept)
            wait_until(lambda: len(new.items) == 1, 10.0, message="the first host")
            cluster.members[0].kill()
            later = writer.register("svc", host(2), ttl=5).wait(15)
            wait_until(lambda: [h.uuid for h in new.items] == [kept.uuid, later.uuid], 15.0,
                       message="the host registered after the kill, once")
            survivor = EtcdV2Store(Settings(endpoints=tuple(
                parse_endpoint(e) for e in endpoints[1:])))
            try:
                for _ in range(3):  # over a TTL: the first registration was kept alive
                    assert survivor.get(kept.key) is not None
                    time.sleep(2)
            finally:
                survivor.close()
            assert RegistrationStatus.LOST not in seen.items


class SlowLink:
    """A TCP proxy that holds every chunk from the client ``delay`` seconds before passing it
    on: a link with a long round trip (etcd in another region)."""

    def __init__(self, target_port: int, delay: float) -> None:
        import socket

        self._socket = socket
        self._target, self._delay = target_port, delay
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._open: list[object] = [self._server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = self._socket.create_connection(("127.0.0.1", self._target))
            self._open += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, self._delay),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, 0.0),
                             daemon=True).start()

    @staticmethod
    def _pipe(source: object, sink: object, delay: float) -> None:
        try:
            while chunk := source.recv(65536):  # type: ignore[attr-defined]
                time.sleep(delay)
                sink.sendall(chunk)  # type: ignore[attr-defined]
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        for end in self._open:
            with contextlib.suppress(OSError):
                end.close()  # type: ignore[attr-defined]


def test_many_registrations_stay_alive_over_a_slow_link(etcd: EmbeddedEtcd,
                                                        unique_prefix: str) -> None:
    """v2 has no lease to refresh in one request: each key is refreshed by its own PUT. Done
    one after another, 30 keys over a link of 0.2 s take 6 s, twice the 3 s TTL, so every key
    expires between refreshes (LOST, REGISTERED, for ever). The refreshes of a batch must
    overlap."""
    link = SlowLink(etcd.client_port, delay=0.2)
    try:
        with Discovery(link.endpoint, api="v2", prefix=unique_prefix, timeout=5) as discovery:
            registrations = [discovery.register("svc", host(n), ttl=3) for n in range(30)]
            for registration in registrations:
                registration.wait(60)
            seen = [statuses(r) for r in registrations]
            other = direct(etcd)
            try:
                for _ in range(4):  # two TTLs: every key is refreshed in time
                    time.sleep(1.5)
                    missing = [r.key for r in registrations if other.get(r.key) is None]
                    assert not missing, f"{len(missing)} keys expired"
            finally:
                other.close()
            assert all(RegistrationStatus.LOST not in s.items for s in seen)
    finally:
        link.close()


def test_an_idle_watch_does_not_resync_when_etcd_moves_on_elsewhere(
        etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    """etcd keeps its last 1,000 events. A watch of an idle service waits from the index
    after its last event; when > 1,000 writes happen elsewhere meanwhile and the idle poll is
    reopened, etcd answers "event index cleared" and the watcher re-reads the prefix, though
    its open poll proved nothing of its own changed. An idle poll must stay open while the
    member is probed."""
    polls: list[str] = []
    probes: list[str] = []

    class Polls(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "wait=true" in record.getMessage():
                polls.append(record.getMessage())
            if "/health" in record.getMessage():
                probes.append(record.getMessage())

    handler = Polls()
    httpx_log = logging.getLogger("httpx")
    level = httpx_log.level
    httpx_log.addHandler(handler)
    httpx_log.setLevel(logging.INFO)
    try:
        with (Discovery(etcd.endpoint, api="v2", prefix=unique_prefix, timeout=1) as watcher,
              Discovery(etcd.endpoint, api="v2", prefix=unique_prefix) as writer):
            store = watcher.store
            reads = []
            read = store.get_prefix
            store.get_prefix = lambda prefix: (reads.append(prefix), read(prefix))[1]  # type: ignore[method-assign]
            sets = Recorder()
            watcher.hosts("svc").subscribe(sets.on_next)
            wait_until(lambda: sets.items, 10.0, message="the first state")
            wait_until(lambda: polls, 10.0, message="the first poll")
            first_reads = len(reads)
            churn = direct(etcd)
            try:
                for n in range(1010):
                    churn.put(f"{unique_prefix}-elsewhere/churn", str(n).encode())
            finally:
                churn.close()
            probed = len(probes)
            wait_until(lambda: len(probes) > probed, 30.0, message="the idle poll probed")
            came = writer.register("svc", host(1), ttl=30).wait(10)
            wait_until(lambda: came.uuid in sets.items[-1], 15.0, message="the new host")
            assert len(reads) == first_reads, "the idle watch re-read the prefix"
    finally:
        httpx_log.removeHandler(handler)
        httpx_log.setLevel(level)


def test_a_uuid_that_v2_would_hide_is_refused_before_any_io() -> None:
    """etcd's v2 API hides keys whose last segment starts with ``_`` from listings: such a
    host registered "successfully" but no query or stream ever saw it (NoHostFound)."""
    with (Discovery("http://127.0.0.1:9", api="v2") as discovery,  # nothing listens there
          pytest.raises(ValueError, match=r"Host\.uuid")):
        discovery.register("svc", Host(hostname="h.dev", ports={"http": "80"}, uuid="_hidden"))
    with Discovery("http://127.0.0.1:9") as discovery:  # v3 has no such rule
        discovery.register("svc", Host(hostname="h.dev", ports={"http": "80"},
                                       uuid="_hidden")).dispose()


def test_a_poll_client_no_watch_uses_is_closed(etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    """Watches share poll clients by the dozen; the last watch of one to go closes it, or
    its idle keep-alive connections would stay open for as long as the store."""
    store = EtcdV2Store(Settings(endpoints=(parse_endpoint(etcd.endpoint),), timeout=2.0))
    try:
        watches = [store.watch(f"{unique_prefix}/{i}/", 0).subscribe()
                   for i in range(POLLS_PER_CLIENT + 1)]
        wait_until(lambda: len(store._http.poll_clients()) == 2, 10,
                   message="two poll clients")
        clients = store._http.poll_clients()
        for watch in watches[:-1]:
            watch.dispose()
        wait_until(lambda: len(store._http.poll_clients()) == 1, 10,
                   message="a client released")
        closed = [client for client in clients if client not in store._http.poll_clients()]
        wait_until(lambda: closed[0].is_closed, 10, message="the released client closed")
        assert not store._http.poll_clients()[0].is_closed
    finally:
        store.close()


def test_closing_a_store_with_many_busy_watches_ends_every_poll(etcd: EmbeddedEtcd,
                                                                 unique_prefix: str) -> None:
    """Cancelling a poll closes its connection (~3 ms each under load, ~1 s for 150): close()
    must wait for all of them, not stop the loop after the call timeout with polls still
    pending (each then printed "Task was destroyed but it is pending!" at exit)."""
    before = set(threading.enumerate())
    store = EtcdV2Store(Settings(endpoints=(parse_endpoint(etcd.endpoint),), timeout=2.0))
    prefix = f"{unique_prefix}/many/"
    start = store.get_prefix(prefix).revision + 1
    seen: list[object] = []
    for _ in range(150):
        store.watch(prefix, start).subscribe(on_next=seen.append)
    store.put(prefix + "k", b"v")  # every poll answers, and a new one is opened
    wait_until(lambda: len(seen) >= 150, 30, message="every watch saw the put")
    # one delivery thread for every watch of the store (it was one each: 1,000 threads for
    # a gateway watching 1,000 services), and one for the polls
    v2_threads = {t for t in set(threading.enumerate()) - before
                  if t.name.startswith("rx-discovery-v2")}
    assert {t.name for t in v2_threads} == {"rx-discovery-v2-watches",
                                            "rx-discovery-v2-delivery"}, len(v2_threads)
    # httpcore scans every connection of a pool (a socket poll each) when a request starts
    # or ends: 150 polls on one client stalled the loop for seconds (ConnectTimeout)
    pools = [len(client._transport._pool.connections)  # type: ignore[attr-defined]
             for client in store._http.poll_clients()]
    assert len(pools) >= 150 // POLLS_PER_CLIENT
    assert max(pools) <= POLLS_PER_CLIENT + 1, pools  # its polls, and a probe
    loop = store._watches._loop
    assert loop is not None
    # a short call timeout must not cut the shutdown short
    store._http._settings = dataclasses.replace(store._http._settings, timeout=0.01)
    store.close()
    wait_until(loop.is_closed, 10, message="the watch loop closed")
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    assert not pending, f"{len(pending)} polls left pending"
    for thread in v2_threads:
        thread.join(10)
        assert not thread.is_alive(), thread.name


def test_watches_share_one_delivery_thread_and_an_observer_that_raises_ends_its_own_alone(
        etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    store = direct(etcd)
    try:
        prefix = f"{unique_prefix}/shared/"
        start = store.get_prefix(prefix).revision + 1
        good, errors, threads = Recorder(), Recorder(), set()

        def raises(_response: object) -> None:
            threads.add(threading.current_thread().name)
            raise RuntimeError("an observer's bug")

        def keeps(response: object) -> None:
            threads.add(threading.current_thread().name)
            good.on_next(response)

        store.watch(prefix, start).subscribe(on_next=raises, on_error=errors.on_next)
        disposed = Recorder()
        store.watch(prefix, start).subscribe(on_next=disposed.on_next).dispose()
        store.watch(prefix, start).subscribe(on_next=keeps)
        store.put(prefix + "a", b"1")
        wait_until(lambda: len(good.items) == 1 and errors.items, 10)
        store.put(prefix + "b", b"2")
        wait_until(lambda: len(good.items) == 2, 10, message="the other watch goes on")
        assert [type(e).__name__ for e in errors.items] == ["StoreUnavailable"]
        assert threads == {"rx-discovery-v2-delivery"}
        assert not disposed.items
    finally:
        store.close()
    late = Recorder()
    store.watch(prefix, start).subscribe(on_next=late.on_next, on_error=late.on_error)
    assert late.error is not None and "closed" in str(late.error)  # at once, not lost
