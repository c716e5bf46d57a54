"""TLS with client certificates, etcd authentication over TLS, and secrets kept out of sight.

Two real servers, with a CA and certificates from trustme:

- ``mtls``: TLS requiring a client certificate signed by the CA;
- ``auth``: TLS (no client certificate) with etcd authentication enabled, a ``root`` user and a
  user ``svc`` whose role may only touch ``/services/`` and ``/services_infos/``; simple auth
  tokens live ``TOKEN_TTL`` seconds.

Every test collects the log records of every logger at DEBUG (rx_discovery, etcd3, grpc...),
what was written to stdout/stderr, and the text and repr of every exception and object it met,
and asserts that no password, no auth token the library used, and no private key text appears.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import etcd3
import grpc
import pytest
import trustme
from faultkit import address, healthy_stream, host, last, subscribe
from helpers import wait_until

from rx_discovery import (
    AuthenticationFailed,
    Credentials,
    Discovery,
    DiscoveryError,
    Host,
    RegistrationError,
    RegistrationStatus,
)
from rx_discovery._errors import PermissionDenied
from rx_discovery.config import Settings
from rx_discovery.embedded import EmbeddedEtcd, TLSFiles, etcd_binary
from rx_discovery.health import HealthState
from rx_discovery.store.etcd import EtcdStore
from rx_discovery.testing import TcpProxy

TOKEN_TTL = 2
ROOT_PASSWORD = "root-Pw-5f2a91"
SVC_PASSWORD = "svc-Pw-8c3e17"
ROTATED_PASSWORD = "rotated-Pw-2b7d40"
NEW_ROTATED_PASSWORD = "rotated-Pw-new-91ac3e"
WRONG_PASSWORD = "wrong-Pw-e40b6d"
HOST_PASSWORD = "host-Pw-1-3f9e0a"
NEW_HOST_PASSWORD = "host-Pw-2-77c1d2"
# what a user needs to read in the error to understand a refused client certificate
TLS_REFUSED = re.compile(r"(tls|ssl) handshake failed.*(bad_certificate|certificate)", re.I)
PASSWORDS = (ROOT_PASSWORD, SVC_PASSWORD, ROTATED_PASSWORD, NEW_ROTATED_PASSWORD,
             WRONG_PASSWORD, HOST_PASSWORD, NEW_HOST_PASSWORD)


@dataclass
class Pki:
    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str
    client_key_pem: bytes = field(repr=False)

    def pem(self, name: str) -> bytes:
        return Path(getattr(self, name)).read_bytes()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("rx-discovery-client")
    paths = {name: str(folder / f"{name}.pem") for name in
             ("ca", "cert", "key", "client_cert", "client_key")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.cert_chain_pems[0].write_to_path(paths["cert"])
    server.private_key_pem.write_to_path(paths["key"])
    client.cert_chain_pems[0].write_to_path(paths["client_cert"])
    client.private_key_pem.write_to_path(paths["client_key"])
    return Pki(**paths, client_key_pem=client.private_key_pem.bytes())


@pytest.fixture(scope="module")
def mtls(pki: Pki) -> Iterator[EmbeddedEtcd]:
    with EmbeddedEtcd(name="mtls", tls=TLSFiles(pki.cert, pki.key, pki.ca)) as server:
        yield server


def etcdctl(server: EmbeddedEtcd, pki: Pki, *args: str, user: str | None = None,
            stdin: str | None = None, check: bool = True) -> None:
    command = [etcd_binary("etcdctl"), "--endpoints", server.endpoint, "--cacert", pki.ca]
    if user:
        command += ["--user", user]
    done = subprocess.run(command + list(args), capture_output=True, text=True, input=stdin,
                          timeout=30, check=False)
    assert done.returncode == 0 or not check, f"etcdctl {args[:2]} failed: {done.stderr[:300]}"


@pytest.fixture(scope="module")
def auth(pki: Pki) -> Iterator[EmbeddedEtcd]:
    tls = TLSFiles(pki.cert, pki.key, pki.ca, client_cert_auth=False)
    with EmbeddedEtcd(name="auth", tls=tls, auth_token_ttl=TOKEN_TTL) as server:
        etcdctl(server, pki, "user", "add", "root", "--new-user-password", ROOT_PASSWORD)
        etcdctl(server, pki, "user", "grant-role", "root", "root")
        etcdctl(server, pki, "role", "add", "discovery")
        for prefix in ("/services/", "/services_infos/"):
            etcdctl(server, pki, "role", "grant-permission", "discovery", "readwrite", prefix,
                    "--prefix=true")
        for user, password in (("svc", SVC_PASSWORD), ("rotating", ROTATED_PASSWORD)):
            etcdctl(server, pki, "user", "add", user, "--new-user-password", password)
            etcdctl(server, pki, "user", "grant-role", user, "discovery")
        etcdctl(server, pki, "auth", "enable")
        yield server


def root_client(server: EmbeddedEtcd, pki: Pki) -> etcd3.Etcd3Client:
    hostname, port = address(server.endpoint)
    return etcd3.client(host=hostname, port=port, ca_cert=pki.ca, user="root",
                        password=ROOT_PASSWORD, timeout=5)


class Leaks:
    """Collects what a scenario showed (logs, output, exceptions, reprs) and the secrets it
    must never show (passwords, private key, every auth token the library obtained)."""

    def __init__(self, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
                 pki: Pki) -> None:
        self._caplog = caplog
        self._capfd = capfd
        self.texts: list[str] = []
        self.tokens: set[str] = set()
        key_lines = [line for line in pki.client_key_pem.decode().splitlines()
                     if len(line) >= 16 and not line.startswith("-----")]
        self.secrets: set[str] = {*PASSWORDS, *key_lines,
                                  base64.b64encode(pki.client_key_pem).decode()[:40]}

    def error(self, error: BaseException) -> BaseException:
        """Remember an exception: its text, repr, traceback, and those of its causes."""
        seen: set[int] = set()
        current: BaseException | None = error
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            self.texts += [str(current), repr(current), *traceback.format_exception(current)]
            current = current.__cause__ or current.__context__
        return error

    def show(self, *objects: Any) -> None:
        """Remember what a user would see of these objects (repr, str, HTML)."""
        for obj in objects:
            self.texts += [repr(obj), str(obj)]
            if hasattr(obj, "_repr_html_"):
                self.texts.append(obj._repr_html_())

    def check(self, expect_tokens: bool = True) -> None:
        if expect_tokens:
            assert self.tokens, "no auth token was captured: the check would prove nothing"
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        records = self._caplog.records
        assert records, "nothing was logged: the capture is not working"
        logged = [formatter.format(record) for record in records]
        out, err = self._capfd.readouterr()
        haystack = [*logged, out, err, *self.texts]
        for secret in self.secrets | self.tokens:
            leaks = [text[:200] for text in haystack if secret in text]
            assert not leaks, f"a secret ({len(secret)} chars) leaked: {leaks[:3]}"


@pytest.fixture
def leaks(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], pki: Pki,
          monkeypatch: pytest.MonkeyPatch) -> Leaks:
    caplog.set_level(logging.DEBUG)
    for name in ("rx_discovery", "rx_discovery.store.etcd", "etcd3", "grpc", "grpc._channel",
                 "grpc._cython", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    found = Leaks(caplog, capfd, pki)
    original = EtcdStore._get_client

    def recording(self: EtcdStore) -> Any:
        client = original(self)
        for name, value in getattr(client, "metadata", None) or ():
            if name == "token" and value:
                found.tokens.add(value)
        return client

    monkeypatch.setattr(EtcdStore, "_get_client", recording)
    return found


# --- TLS with client certificates ----------------------------------------------------------


def test_client_certificate_register_and_watch(mtls: EmbeddedEtcd, pki: Pki,
                                               leaks: Leaks) -> None:
    for material in ({"ca_cert": pki.ca, "client_cert": pki.client_cert,
                      "client_key": pki.client_key},
                     {"ca_cert": pki.pem("ca"), "client_cert": pki.pem("client_cert"),
                      "client_key": pki.pem("client_key")}):
        with Discovery(mtls.endpoint, timeout=3, **material) as discovery:
            sets = subscribe(discovery.hosts("web"))
            registration = discovery.register("web", host("tls")).wait(10)
            wait_until(lambda r=registration, s=sets: r.uuid in last(s), timeout=5)
            assert discovery.get("web").first().hostname == "host-tls.test"
            lease = discovery.store.grant(30).id  # the keepalive stream's own TLS connection
            assert discovery.store.keepalive(lease) == 30
            discovery.store.revoke(lease)
            leaks.show(discovery, discovery.settings, discovery.store, registration,
                       last(sets))
            assert healthy_stream(sets)
            registration.dispose()
    leaks.check(expect_tokens=False)


def test_without_client_certificate_fails_clearly_within_the_timeout(
        mtls: EmbeddedEtcd, pki: Pki, leaks: Leaks) -> None:
    timeout = 2.0
    with Discovery(mtls.endpoint, ca_cert=pki.ca, timeout=timeout) as discovery:
        started = time.monotonic()
        with pytest.raises(DiscoveryError) as query:
            discovery.get("web").all()
        assert time.monotonic() - started < timeout + 2
        assert TLS_REFUSED.search(str(query.value)), str(query.value)
        leaks.error(query.value)
        registration = discovery.register("web", host("no-cert"))
        started = time.monotonic()
        with pytest.raises(RegistrationError) as waited:
            registration.wait(timeout=3)
        assert time.monotonic() - started < 3 + 1
        leaks.error(waited.value)
        # a refused handshake is permanent: wait() says so at once instead of timing out
        assert "refused" in str(waited.value) and "not done after" not in str(waited.value)
        assert registration.current_status is RegistrationStatus.FAILED
        assert TLS_REFUSED.search(str(waited.value)), str(waited.value)
        assert not registration.ready
    leaks.check(expect_tokens=False)


def test_tls_in_memory_from_env(mtls: EmbeddedEtcd, pki: Pki, leaks: Leaks,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCD_HOSTS", mtls.endpoint)
    monkeypatch.setenv("ETCD_TLS_INMEMORY", "true")
    for var, name in (("ETCD_CACERT", "ca"), ("ETCD_TLS_CERT", "client_cert"),
                      ("ETCD_TLS_KEY", "client_key")):
        value = base64.b64encode(pki.pem(name)).decode()
        monkeypatch.setenv(var, value)
        if name == "client_key":
            leaks.secrets.add(value[-60:])
    for var in ("ETCD_HOST", "ETCD_USER", "ETCD_PASSWORD", "ETCD_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    with Discovery.from_env() as discovery:
        assert discovery.settings.client_key == pki.client_key_pem
        sets = subscribe(discovery.hosts("env"))
        registration = discovery.register("env", host("env")).wait(10)
        wait_until(lambda: registration.uuid in last(sets), timeout=5)
        leaks.show(discovery, discovery.settings, registration)
    leaks.check(expect_tokens=False)


# --- authentication over TLS ---------------------------------------------------------------


def test_scoped_user_works_and_is_denied_outside_its_prefixes(
        auth: EmbeddedEtcd, pki: Pki, leaks: Leaks) -> None:
    with Discovery(auth.endpoint, ca_cert=pki.ca, user="svc", password=SVC_PASSWORD,
                   timeout=3) as discovery:
        sets = subscribe(discovery.hosts("api"))
        registration = discovery.register("api", host("api")).wait(10)
        wait_until(lambda: registration.uuid in last(sets), timeout=5)
        assert discovery.get("api").first().uuid == registration.uuid
        leaks.show(discovery, discovery.settings, registration, last(sets))
    with Discovery(auth.endpoint, ca_cert=pki.ca, user="svc", password=SVC_PASSWORD,
                   timeout=3, prefix="/elsewhere") as outside:
        with pytest.raises(AuthenticationFailed) as denied:
            outside.get("api").all()
        assert "permission denied" in str(denied.value)
        with pytest.raises(RegistrationError) as refused:
            outside.register("api", host("outside")).wait(10)
        assert "permission denied" in str(refused.value)
        leaks.error(denied.value)
        leaks.error(refused.value)
    raw = root_client(auth, pki)
    try:
        assert not list(raw.get_prefix("/elsewhere/"))  # nothing was written there
    finally:
        raw.close()
    leaks.check()


def test_wrong_password_is_a_clear_authentication_error(
        auth: EmbeddedEtcd, pki: Pki, leaks: Leaks) -> None:
    with Discovery(auth.endpoint, ca_cert=pki.ca, user="svc", password=SVC_PASSWORD,
                   timeout=3) as good:
        good.get("api")  # a good login, so that the check has a token to look for
        with pytest.raises(DiscoveryError):
            good.get("nothing-here").all()
    with Discovery(auth.endpoint, ca_cert=pki.ca, user="svc", password=WRONG_PASSWORD,
                   timeout=3) as discovery:
        started = time.monotonic()
        with pytest.raises(RegistrationError) as refused:
            discovery.register("api", host("wrong")).wait(10)
        assert time.monotonic() - started < 3
        assert "authentication failed" in str(refused.value)
        with pytest.raises(AuthenticationFailed) as query:
            discovery.get("api").all()
        leaks.error(refused.value)
        leaks.error(query.value)
        leaks.show(discovery, discovery.settings, discovery.store)
    leaks.check()


def probe_token(server: EmbeddedEtcd, pki: Pki) -> tuple[grpc.Channel, str]:
    """A token of user svc obtained now over the raw gRPC stubs, then left idle."""
    hostname, port = address(server.endpoint)
    channel = grpc.secure_channel(f"{hostname}:{port}",
                                  grpc.ssl_channel_credentials(pki.pem("ca")))
    answer = etcd3.etcdrpc.AuthStub(channel).Authenticate(
        etcd3.etcdrpc.AuthenticateRequest(name="svc", password=SVC_PASSWORD), timeout=5)
    return channel, answer.token


def token_rejected(channel: grpc.Channel, token: str) -> bool:
    try:
        etcd3.etcdrpc.KVStub(channel).Range(etcd3.etcdrpc.RangeRequest(key=b"/services/x"),
                                            metadata=(("token", token),), timeout=5)
    except grpc.RpcError as error:
        return "invalid auth token" in (error.details() or "")
    return False


def test_expired_token_is_renewed_transparently(auth: EmbeddedEtcd, pki: Pki,
                                                leaks: Leaks) -> None:
    with Discovery(auth.endpoint, ca_cert=pki.ca, user="svc", password=SVC_PASSWORD,
                   timeout=3) as discovery:
        sets = subscribe(discovery.hosts("renew"))
        registration = discovery.register("renew", host("renew-1"), ttl=3).wait(10)
        statuses = subscribe(registration.status)
        wait_until(lambda: registration.uuid in last(sets), timeout=5)
        channel, token = probe_token(auth, pki)
        leaks.tokens.add(token)
        try:
            logins = len(leaks.tokens)
            # let every idle token expire: the probe, left idle, proves the server dropped it
            expired_at = time.monotonic() + TOKEN_TTL + 1.0
            wait_until(lambda: time.monotonic() > expired_at, timeout=TOKEN_TTL + 2)
            assert token_rejected(channel, token), "the server did not expire idle tokens"
        finally:
            channel.close()
        second = discovery.register("renew", host("renew-2"), ttl=3).wait(10)
        wait_until(lambda: second.uuid in last(sets), timeout=5,
                   message="the watch opened before the expiry still delivers")
        assert len(leaks.tokens) > logins, "the library logged in again"
        others = subscribe(discovery.hosts("renew-other"))  # a stream started after the expiry
        wait_until(lambda: others.items, timeout=5)

        auth.restart()  # every simple token is lost with the server's memory
        third = discovery.register("renew", host("renew-3"), ttl=3).wait(15)
        wait_until(lambda: third.uuid in last(sets), timeout=10,
                   message="the watch resumed with a fresh token after the restart")
        wait_until(lambda: registration.ready, timeout=10)
        assert statuses.items[0] is RegistrationStatus.REGISTERED
        assert set(last(sets)) == {registration.uuid, second.uuid, third.uuid}
        assert all(map(healthy_stream, (sets, others, statuses)))
    leaks.check()


def test_full_scenario_never_shows_a_secret(auth: EmbeddedEtcd, pki: Pki,
                                            leaks: Leaks) -> None:
    """Register (a public host with credentials), watch, fail a login, rotate the service's
    credentials and the etcd user's password; nothing secret in any log, output, error or
    repr."""
    raw = root_client(auth, pki)
    try:
        with Discovery(auth.endpoint, ca_cert=pki.ca, user="rotating",
                       password=ROTATED_PASSWORD, timeout=3) as discovery:
            public = Host(hostname="db.example.com", ports={"pg": "5432"}, public=True,
                          user="app", password=HOST_PASSWORD, private_hostname="db-1")
            registration = discovery.register("db", public).wait(10)
            credentials = subscribe(registration.credentials)
            watched = subscribe(discovery.credentials("db"))
            sets = subscribe(discovery.hosts("db"))
            events = subscribe(discovery.events("db"))
            wait_until(lambda: sets.items and registration.uuid in last(sets), timeout=5)

            # another party rotates the service's credentials
            service = discovery.get("db").service()
            raw.put("/services_infos/db", service.to_json().replace(HOST_PASSWORD,
                                                                    NEW_HOST_PASSWORD))
            wait_until(lambda: credentials.items[-1:] == [Credentials("app", NEW_HOST_PASSWORD)],
                       timeout=5)
            wait_until(lambda: watched.items[-1:] == [Credentials("app", NEW_HOST_PASSWORD)],
                       timeout=5)
            wait_until(lambda: last(sets)[registration.uuid].password == NEW_HOST_PASSWORD,
                       timeout=5, message="the host key rewritten with the new credentials")

            # a login with a wrong password
            with Discovery(auth.endpoint, ca_cert=pki.ca, user="rotating",
                           password=WRONG_PASSWORD, timeout=3) as wrong:
                with pytest.raises(RegistrationError) as refused:
                    wrong.register("db", public).wait(10)
                leaks.error(refused.value)
                leaks.show(wrong, wrong.settings, wrong.store)

            # the etcd password of the user is rotated: a client with the new one works,
            # the old one is refused (clearly, without showing either)
            etcdctl(auth, pki, "user", "passwd", "rotating", "--interactive=false",
                    user=f"root:{ROOT_PASSWORD}", stdin=NEW_ROTATED_PASSWORD + "\n")
            with Discovery(auth.endpoint, ca_cert=pki.ca, user="rotating",
                           password=NEW_ROTATED_PASSWORD, timeout=3) as rotated:
                assert rotated.get("db").first().uuid == registration.uuid
                leaks.show(rotated, rotated.settings)
            with pytest.raises(AuthenticationFailed) as stale:
                discovery.get("db").all()
            leaks.error(stale.value)
            leaks.show(discovery, discovery.settings, discovery.store, registration,
                       registration.host, last(sets), last(sets).first(),
                       *credentials.items, *watched.items, *events.items, service)
    finally:
        raw.close()
    leaks.check()


# --- permanent refusals: reported on health, not retried at the transient pace -------------


def states(recorder: Any) -> list[HealthState]:
    return [health.state for health in recorder.items]


def authenticate_rpcs(server: EmbeddedEtcd) -> float:
    return server.metric("grpc_server_handled_total", grpc_method="Authenticate")


def test_wrong_password_logs_in_once_at_a_time_with_backoff(
        auth: EmbeddedEtcd, pki: Pki, leaks: Leaks) -> None:
    """5 streams and 5 callers with a wrong password: before, every failed call logged in
    again (67 Authenticate RPCs in 5 s, bcrypt on the server); now one login at a time, and
    a refusal is remembered 1 s, 2 s, 4 s...: at most 4 logins in 5 s."""
    before = authenticate_rpcs(auth)
    with Discovery(auth.endpoint, ca_cert=pki.ca, user="svc", password=WRONG_PASSWORD,
                   timeout=3) as discovery:
        health = subscribe(discovery.health)
        streams = [subscribe(discovery.hosts(f"storm-{n}")) for n in range(5)]
        refused: list[BaseException] = []
        deadline = time.monotonic() + 5

        def caller() -> None:
            while time.monotonic() < deadline:
                try:
                    discovery.store.get("/services/storm/x")
                except AuthenticationFailed as error:
                    refused.append(error)
                time.sleep(0.05)

        threads = [threading.Thread(target=caller) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
            assert not thread.is_alive()
        logins = authenticate_rpcs(auth) - before
        assert 1 <= logins <= 4, f"{logins:g} logins in 5 s"
        assert len(refused) > 50  # every call failed at once, with the remembered refusal
        assert all(isinstance(error, AuthenticationFailed) and error.permanent
                   for error in refused)
        discovery.store._health._settle()  # health reaches observers on its own thread
        assert health.items[-1].state is HealthState.DENIED
        assert "authentication failed" in health.items[-1].reason
        assert all(map(healthy_stream, streams))
        leaks.show(*health.items, discovery.store)
        leaks.error(refused[-1])
    discovery.store._health._settle()
    assert states(health)[-1] is HealthState.CLOSED
    leaks.check(expect_tokens=False)


def test_permission_denied_is_its_own_error_and_reported_on_health(
        auth: EmbeddedEtcd, pki: Pki, leaks: Leaks) -> None:
    settings = Settings.build(auth.endpoint, ca_cert=pki.ca, user="svc", password=SVC_PASSWORD,
                              timeout=3)
    with EtcdStore(settings) as store:
        health = subscribe(store.health)
        assert states(health) == [HealthState.CONNECTING]
        store.get_prefix("/services/")
        wait_until(lambda: states(health)[-1] is HealthState.CONNECTED)
        with pytest.raises(PermissionDenied) as read:
            store.get_prefix("/forbidden/")
        assert read.value.permanent and "permission denied" in str(read.value)
        wait_until(lambda: states(health)[-1] is HealthState.DENIED)
        with pytest.raises(PermissionDenied):
            store.put("/forbidden/k", b"v")
        # a call served elsewhere does not hide the denial
        store.get_prefix("/services/")
        store._health._settle()
        assert states(health)[-1] is HealthState.DENIED, health.items
        # a watch of a forbidden prefix: refused again after a fresh login -> PermissionDenied
        denied = subscribe(store.watch("/forbidden/", 1))
        wait_until(lambda: denied.error is not None, timeout=10)
        assert isinstance(denied.error, PermissionDenied), repr(denied.error)
        # served where it was denied (the permission granted): CONNECTED again
        etcdctl(auth, pki, "role", "grant-permission", "discovery", "readwrite", "/forbidden/",
                "--prefix=true", user=f"root:{ROOT_PASSWORD}")
        try:
            wait_until(succeeds(lambda: store.get_prefix("/forbidden/")), timeout=10)
            store.put("/forbidden/k", b"v")
            wait_until(lambda: states(health)[-1] is HealthState.CONNECTED, timeout=5)
        finally:
            etcdctl(auth, pki, "role", "revoke-permission", "discovery", "/forbidden/",
                    "--prefix=true", user=f"root:{ROOT_PASSWORD}")
        leaks.show(*health.items)
        leaks.error(read.value)
    leaks.check()


def succeeds(call: Any) -> Any:
    def attempt() -> bool:
        try:
            call()
        except AuthenticationFailed:
            return False
        return True
    return attempt


def test_untrusted_server_certificate_is_denied_not_failed_over(
        mtls: EmbeddedEtcd, pki: Pki, leaks: Leaks) -> None:
    """A CA that does not sign the server's certificate: a configuration error (DENIED,
    permanent) for calls and for the keepalive connection alike."""
    other_ca = trustme.CA().cert_pem.bytes()
    settings = Settings.build(mtls.endpoint, ca_cert=other_ca, client_cert=pki.client_cert,
                              client_key=pki.client_key, timeout=3)
    with EtcdStore(settings) as store:
        health = subscribe(store.health)
        with pytest.raises(DiscoveryError) as call:
            store.get("/k")
        assert getattr(call.value, "permanent", False), repr(call.value)
        assert "TLS handshake failed" in str(call.value)
        wait_until(lambda: states(health)[-1] is HealthState.DENIED)
        assert "TLS" in health.items[-1].reason
        # the keepalive connection trusts the same CA: refused the same way, not failed over
        with pytest.raises(DiscoveryError) as keepalive:
            store.keepalive(1)
        assert getattr(keepalive.value, "permanent", False), repr(keepalive.value)
        assert "TLS handshake failed" in str(keepalive.value)
        assert not any(endpoint.is_failed() for endpoint in store._endpoints or ())
        leaks.error(call.value)
        leaks.error(keepalive.value)
    leaks.check(expect_tokens=False)


ROOTS_SCRIPT = """
import sys
from rx_discovery.config import Settings
from rx_discovery.store.etcd import EtcdStore

endpoint, cert, key = sys.argv[1:4]
with EtcdStore(Settings.build(endpoint, client_cert=cert, client_key=key, timeout=5)) as store:
    store.put("/roots/k", b"v")
    lease = store.grant(10).id
    print("keepalive", store.keepalive(lease))
"""


def test_without_a_ca_calls_and_keepalives_trust_the_same_roots(mtls: EmbeddedEtcd,
                                                                pki: Pki) -> None:
    """No ``ca_cert``: grpcio trusts GRPC_DEFAULT_SSL_ROOTS_FILE_PATH (here: the test CA), and
    so must the keepalive connection (it trusted Python's system store: calls worked, every
    keepalive failed with CERTIFICATE_VERIFY_FAILED). In a fresh interpreter: grpcio reads the
    variable once per process."""
    env = {**os.environ, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": pki.ca}
    done = subprocess.run([sys.executable, "-P", "-c", ROOTS_SCRIPT, mtls.endpoint, pki.client_cert,
                           pki.client_key], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.strip() == "keepalive 10"


def test_login_fails_over_from_a_member_that_is_down(auth: EmbeddedEtcd, pki: Pki,
                                                     leaks: Leaks,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """python3-etcd3 logs in from its constructor, on an endpoint drawn at random, without
    marking it failed when it does not answer: with auth on, a member down made every login
    that drew it fail, again and again, while a live member was there. Here the draw always
    picks the dead member: the login must fail over to the live one."""
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        dead = f"https://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(sys.modules["etcd3.client"].random, "choice", lambda labels: labels[0])
    settings = Settings.build([dead, auth.endpoint], ca_cert=pki.ca, user="svc",
                              password=SVC_PASSWORD, timeout=3)
    with EtcdStore(settings) as store:
        outcomes: list[str] = []
        for _ in range(5):
            try:
                store.get("/services/login-failover/x")
                outcomes.append("served")
                break
            except DiscoveryError as error:
                outcomes.append(type(error).__name__)
                leaks.error(error)
        assert outcomes[-1] == "served", outcomes
        assert len(outcomes) == 1, outcomes  # the failed-over login served the first call
    leaks.check()



def test_a_watch_denied_by_rbac_does_not_log_in_again_on_every_retry(
        auth: EmbeddedEtcd, pki: Pki, leaks: Leaks) -> None:
    """A stream whose read permission is revoked, then whose connection drops: the right
    password, so logins succeed, but each reopening of the refused watch dropped the client
    and logged in again (bcrypt on the server): a login storm through another door."""
    grant = ("role", "grant-permission", "discovery", "read", "/rbac-storm/", "--prefix=true")
    etcdctl(auth, pki, *grant, user=f"root:{ROOT_PASSWORD}")
    with TcpProxy(address(auth.endpoint)[1]) as proxy:
        try:
            with Discovery(f"https://127.0.0.1:{proxy.port}", prefix="/rbac-storm",
                           ca_cert=pki.ca, user="svc", password=SVC_PASSWORD,
                           timeout=3) as discovery:
                health = subscribe(discovery.health)
                stream = subscribe(discovery.hosts("x"))
                wait_until(lambda: stream.items, timeout=10)
                etcdctl(auth, pki, "role", "revoke-permission", "discovery", "/rbac-storm/",
                        "--prefix=true", user=f"root:{ROOT_PASSWORD}")
                before = authenticate_rpcs(auth)
                proxy.cut()  # the watch must be reopened, and is now refused
                proxy.restore()
                wait_until(lambda: states(health)[-1] is HealthState.DENIED, timeout=10)
                time.sleep(5)  # the measured window: logins while the denial stands
                logins = authenticate_rpcs(auth) - before
                assert healthy_stream(stream)
                assert logins <= 3, f"{logins:g} logins in 5 s for one denied stream"
                leaks.show(*health.items)
        finally:
            etcdctl(auth, pki, "role", "revoke-permission", "discovery", "/rbac-storm/",
                    "--prefix=true", user=f"root:{ROOT_PASSWORD}", check=False)
    leaks.check()


def test_a_watch_opened_with_an_expired_token_logs_in_again_and_delivers(
        auth: EmbeddedEtcd, pki: Pki, leaks: Leaks) -> None:
    """etcd refuses a watch with an expired token as "permission denied", as it refuses a
    missing permission: the store must still tell the two apart (log in again for the first)."""
    settings = Settings.build(auth.endpoint, ca_cert=pki.ca, user="svc", password=SVC_PASSWORD,
                              timeout=3)
    with EtcdStore(settings) as store:
        revision = store.get_prefix("/services/expired-watch/").revision
        logins = len(leaks.tokens)
        idle_until = time.monotonic() + TOKEN_TTL + 1.5  # the token, left idle, expires
        wait_until(lambda: time.monotonic() > idle_until, timeout=TOKEN_TTL + 3)
        events = subscribe(store.watch("/services/expired-watch/", revision + 1))
        root = root_client(auth, pki)
        try:
            wait_until(lambda: len(leaks.tokens) > logins, timeout=10,
                       message="the watch logged in again")
            root.put("/services/expired-watch/a", b"1")
            wait_until(lambda: events.items, timeout=10)
        finally:
            root.close()
        assert healthy_stream(events), repr(events.error)
    leaks.check()


def test_credentials_given_before_auth_is_enabled_work_before_and_after(
        pki: Pki, leaks: Leaks) -> None:
    """Rolling out etcd auth: clients get their credentials first, then auth is enabled. etcd's
    Go client ignores "authentication is not enabled" at login and logs in when a call says
    "user name is empty"; python3-etcd3 raised, so every call was refused for good (DENIED) by
    a server that would serve it."""
    tls = TLSFiles(pki.cert, pki.key, pki.ca, client_cert_auth=False)
    with EmbeddedEtcd(name="auth-later", tls=tls) as server:
        etcdctl(server, pki, "user", "add", "root", "--new-user-password", ROOT_PASSWORD)
        etcdctl(server, pki, "user", "grant-role", "root", "root")
        etcdctl(server, pki, "user", "add", "svc", "--new-user-password", SVC_PASSWORD)
        etcdctl(server, pki, "user", "grant-role", "svc", "root")
        settings = Settings.build(server.endpoint, ca_cert=pki.ca, user="svc",
                                  password=SVC_PASSWORD, timeout=3)
        with EtcdStore(settings) as store:
            health = subscribe(store.health)
            store.put("/services/later/a", b"1")  # auth not enabled yet: served
            events = subscribe(store.watch("/services/later/", store.get_prefix(
                "/services/later/").revision + 1))
            etcdctl(server, pki, "auth", "enable")
            store.put("/services/later/b", b"2")  # auth enabled: a login, then served
            assert store.get("/services/later/b") is not None
            wait_until(lambda: events.items, timeout=10)
            assert healthy_stream(events)
            store._health._settle()
            assert HealthState.DENIED not in states(health), health.items
            assert leaks.tokens, "the store logged in once auth was enabled"
            leaks.show(*health.items, store)
    leaks.check()


def test_a_refused_login_stays_denied_while_old_watches_still_deliver(
        auth: EmbeddedEtcd, pki: Pki, leaks: Leaks) -> None:
    """The password rotated while running: every call is refused (the login fails), yet the
    watches opened before keep delivering. Each delivery cleared the denial: health flapped
    DENIED/CONNECTED while nothing could log in."""
    old, new = "flap-Pw-old-6d1e", "flap-Pw-new-0b93"
    leaks.secrets.update((old, new))
    root = f"root:{ROOT_PASSWORD}"
    etcdctl(auth, pki, "user", "add", "flapper", "--new-user-password", old, user=root)
    etcdctl(auth, pki, "user", "grant-role", "flapper", "discovery", user=root)
    raw = root_client(auth, pki)
    try:
        settings = Settings.build(auth.endpoint, ca_cert=pki.ca, user="flapper", password=old,
                                  timeout=3)
        with EtcdStore(settings) as store:
            health = subscribe(store.health)
            revision = store.put("/services/flap/a", b"1")
            events = subscribe(store.watch("/services/flap/", revision + 1))
            etcdctl(auth, pki, "user", "passwd", "flapper", "--interactive=false", user=root,
                    stdin=new + "\n")
            wait_until(succeeds_not(lambda: store.get("/services/flap/a")),
                       timeout=TOKEN_TTL + 10, message="the old password is refused")
            assert store._health.current.state is HealthState.DENIED
            raw.put("/services/flap/b", b"2")  # the watch opened before still delivers
            wait_until(lambda: len(events.items) >= 1, timeout=10)
            raw.put("/services/flap/c", b"3")
            wait_until(lambda: len(events.items) >= 2, timeout=10)
            assert store._health.current.state is HealthState.DENIED, store._health.current
            leaks.show(*health.items)
    finally:
        raw.close()
        etcdctl(auth, pki, "user", "delete", "flapper", user=root, check=False)
    leaks.check()


def succeeds_not(call: Any) -> Any:
    succeeded = succeeds(call)
    return lambda: not succeeded()


@pytest.mark.xfail(strict=True, reason="a denial is scoped to its key or prefix and cleared "
                   "only by a success there: nothing tells the store that the stream which "
                   "asked was disposed (see the review report)")
def test_a_denial_ends_when_the_stream_that_met_it_is_disposed(
        auth: EmbeddedEtcd, pki: Pki, leaks: Leaks) -> None:
    """A stream on a prefix the user may not read: DENIED, rightly. Once that stream is
    disposed nothing is denied any more, yet health stayed DENIED for good."""
    with Discovery(auth.endpoint, prefix="/forbidden", ca_cert=pki.ca, user="svc",
                   password=SVC_PASSWORD, timeout=3) as discovery:
        stream = discovery.hosts("gone").subscribe(lambda _sets: None)
        wait_until(lambda: discovery.store._health.current.state is HealthState.DENIED,
                   timeout=10)
        stream.dispose()
        discovery.store.get("/services/allowed")  # served: nothing is denied any more
        wait_until(lambda: discovery.store._health.current.state is HealthState.CONNECTED,
                   timeout=10, message="health still DENIED after the stream was disposed")
    leaks.check()


def test_a_service_refused_in_a_bulk_first_read_holds_back_no_other(
        auth: EmbeddedEtcd, pki: Pki, leaks: Leaks) -> None:
    """hosts() of services subscribed together are read in one transaction; etcd refuses a
    transaction with one forbidden range as a whole. The allowed services still get their
    first sets, and the refusal is reported for the forbidden service's prefix alone."""
    root = f"root:{ROOT_PASSWORD}"
    password = "narrow-Pw-77d0c1"
    leaks.secrets.add(password)
    etcdctl(auth, pki, "role", "add", "narrow", user=root)
    etcdctl(auth, pki, "role", "grant-permission", "narrow", "read", "/services/open-",
            "--prefix=true", user=root)
    etcdctl(auth, pki, "user", "add", "narrow", "--new-user-password", password, user=root)
    etcdctl(auth, pki, "user", "grant-role", "narrow", "narrow", user=root)
    writer = root_client(auth, pki)
    try:
        for name in ("open-a", "open-b", "closed"):
            writer.put(f"/services/{name}/u-{name}",
                       host(name, service_name=name, uuid=f"u-{name}").to_json())
        discovery = Discovery(endpoints=[auth.endpoint], ca_cert=pki.ca, user="narrow",
                              password=password, timeout=3)
        with discovery:
            health = subscribe(discovery.health)
            sets = {name: subscribe(discovery.hosts(name))
                    for name in ("open-a", "closed", "open-b")}
            wait_until(lambda: sets["open-a"].items and sets["open-b"].items, timeout=15)
            assert [list(s.items[0]) for s in (sets["open-a"], sets["open-b"])] == [
                ["u-open-a"], ["u-open-b"]]
            wait_until(lambda: states(health)[-1] is HealthState.DENIED, timeout=10)
            # by the forbidden service's own read, for its prefix alone (not by the bulk read)
            assert health.items[-1].reason.startswith("get_prefix: "), health.items[-1]
            assert list(discovery.store._health._denials) == ["/services/closed/"]
            assert sets["closed"].items == [] and sets["closed"].error is None
            leaks.show(*health.items)
    finally:
        etcdctl(auth, pki, "user", "delete", "narrow", user=root, check=False)
        etcdctl(auth, pki, "role", "delete", "narrow", user=root, check=False)
    leaks.check()
