"""Keyspace layout and settings from keywords / environment."""

from __future__ import annotations

import base64
import select
import socket
from pathlib import Path
from typing import Any

import pytest
import trustme
from helpers import wait_until
from hypothesis import given
from hypothesis import strategies as st

from rx_discovery import ConfigError, Discovery, DiscoveryError
from rx_discovery.config import Settings
from rx_discovery.keys import Keyspace, validate_service_name
from rx_discovery.store.etcd import EtcdStore

# real TLS material: Settings checks that it loads
_CA = trustme.CA()
_CLIENT = _CA.issue_cert("rx-discovery-client")
CA_PEM = _CA.cert_pem.bytes()
CERT_PEM = _CLIENT.cert_chain_pems[0].bytes()
KEY_PEM = _CLIENT.private_key_pem.bytes()


def test_keys_without_and_with_prefix() -> None:
    assert Keyspace().host_key("svc", "u-1") == "/services/svc/u-1"
    assert Keyspace().service_key("svc") == "/services_infos/svc"
    prod = Keyspace("prod/")
    assert prod.host_key("svc", "u") == "/prod/services/svc/u"
    assert prod.service_key("svc") == "/prod/services_infos/svc"
    assert prod.hosts_prefix("svc") == "/prod/services/svc/"


def test_parse_keys_back() -> None:
    keys = Keyspace("/p")
    assert keys.uuid_of("svc", "/p/services/svc/u-1") == "u-1"
    assert keys.uuid_of("svc", "/p/services/svc/u-1/extra") is None
    assert keys.uuid_of("svc", "/p/services/svc2/u-1") is None
    assert keys.uuid_of("svc", "/p/services/svc/") is None
    assert keys.service_of("/p/services_infos/svc") == "svc"
    assert keys.service_of("/p/services/svc/u") == "svc"
    assert keys.service_of("/other") is None


@pytest.mark.parametrize("name", ["", "a/b", " a", "a b", "a\n", 3, None])
def test_bad_service_names(name: object) -> None:
    with pytest.raises(ValueError):
        validate_service_name(name)


def test_settings_from_env_hosts_prefix_and_failover_list() -> None:
    settings = Settings.from_env({"ETCD_HOSTS": "http://a:1, https://b:2", "ETCD_HOST": "x:9",
                                  "ETCD_PREFIX": "/prod"})
    assert [e.url for e in settings.endpoints] == ["http://a:1", "https://b:2"]
    assert settings.prefix == "/prod"
    assert Settings.from_env({"ETCD_HOST": "c:3"}).endpoints[0].url == "http://c:3"
    assert Settings.from_env({}).endpoints[0].url == "http://127.0.0.1:2379"


def test_settings_tls_in_memory_and_files(tmp_path: object) -> None:
    pem = CA_PEM
    env = {"ETCD_TLS_INMEMORY": "true", "ETCD_CACERT": base64.b64encode(pem).decode()}
    assert Settings.from_env(env).ca_cert == pem
    with pytest.raises(ConfigError, match="ETCD_CACERT"):
        Settings.from_env({"ETCD_CACERT": "/nonexistent/ca.pem"})
    with pytest.raises(ConfigError, match="ETCD_TLS_CERT: not valid base64"):
        Settings.from_env({"ETCD_TLS_INMEMORY": "true", "ETCD_TLS_CERT": "%%%",
                           "ETCD_TLS_KEY": "AAAA"})


def test_config_errors_name_the_variable_never_the_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ETCD_PASSWORD": "hunter2"})
    assert "ETCD_USER" in str(caught.value) and "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="ETCD_HOSTS"):
        Settings.from_env({"ETCD_HOSTS": "ftp://x:1"})
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ETCD_HOSTS": "http://user:hunter2@x:1"})
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="key"):
        Settings.build(client_cert=b"cert")


def test_settings_repr_hides_secrets() -> None:
    settings = Settings.build("http://a:1", user="u", password="hunter2", client_cert=CERT_PEM,
                              client_key=KEY_PEM)
    key_line = KEY_PEM.decode().splitlines()[1]
    assert "hunter2" not in repr(settings) and key_line not in repr(settings)


def test_discovery_construction_does_no_io_and_survives_no_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener that accepts nothing stands in for etcd: constructing a Discovery, creating
    (unsubscribed) streams and queries, and closing it leave no connection in its backlog and
    never open the store's client; the same listener then sees the first real call."""
    opened: list[str] = []
    original = EtcdStore._get_client

    def counting(self: EtcdStore) -> Any:
        opened.append("client")
        return original(self)

    monkeypatch.setattr(EtcdStore, "_get_client", counting)
    with socket.create_server(("127.0.0.1", 0), backlog=16) as listener:
        listener.setblocking(False)
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"

        def connections() -> int:
            readable, _, _ = select.select([listener], [], [], 0)
            return len(readable)

        with Discovery(endpoint, timeout=0.5) as discovery:
            discovery.hosts("svc"), discovery.subscribe_new("svc"), discovery.get("svc")
            discovery.credentials("svc"), discovery.health
        assert connections() == 0, "constructing or closing a Discovery connected to etcd"
        assert opened == []
        # the positive control: a real call reaches the listener (and times out: it never
        # answers), so the check above can fail
        with Discovery(endpoint, timeout=0.5) as discovery:
            with pytest.raises(DiscoveryError):
                discovery.get("svc").all()
            assert opened
            wait_until(lambda: connections() > 0, timeout=10)
    # Nothing listens on port 1: creating the Discovery must neither fail nor block.
    with Discovery("http://127.0.0.1:1", timeout=0.5) as discovery:
        assert "127.0.0.1:1" in repr(discovery)


def test_ipv6_endpoints_keep_their_brackets() -> None:
    settings = Settings.from_env({"ETCD_HOSTS": "http://[::1]:2379,https://[fd00::2]:4001,[::2]"})
    assert [e.url for e in settings.endpoints] == [
        "http://[::1]:2379", "https://[fd00::2]:4001", "http://[::2]:2379"]
    assert settings.endpoints[0].host == "::1"
    assert settings.endpoints[0].netloc == "[::1]:2379"  # the gRPC target
    assert Settings.build("http://10.0.0.1:1").endpoints[0].netloc == "10.0.0.1:1"


@pytest.mark.parametrize("endpoint", ["http://a:2379/v3", "http://a:2379/v2/keys",
                                      "http://a:2379?x=1", "http://a:2379/#f"])
def test_endpoint_paths_are_refused(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="without a path"):
        Settings.build(endpoint)
    with pytest.raises(ConfigError, match="ETCD_HOSTS"):
        Settings.from_env({"ETCD_HOSTS": endpoint})
    assert Settings.build("http://a:2379/").endpoints[0].url == "http://a:2379"


@pytest.mark.parametrize("spelling", ["true", "TRUE", "1", "yes", "Yes", "on", " on "])
def test_tls_inmemory_truthy_spellings(spelling: str) -> None:
    pem = CA_PEM
    env = {"ETCD_TLS_INMEMORY": spelling, "ETCD_CACERT": base64.b64encode(pem).decode()}
    assert Settings.from_env(env).ca_cert == pem


@pytest.mark.parametrize("spelling", ["false", "0", "no", "off", "OFF", ""])
def test_tls_inmemory_falsy_spellings_read_files(spelling: str, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(CA_PEM)
    env = {"ETCD_TLS_INMEMORY": spelling, "ETCD_CACERT": str(ca)}
    assert Settings.from_env(env).ca_cert == CA_PEM


@pytest.mark.parametrize("spelling", ["y", "enabled", "2", "truee"])
def test_tls_inmemory_other_spellings_are_refused(spelling: str) -> None:
    with pytest.raises(ConfigError, match="ETCD_TLS_INMEMORY"):
        Settings.from_env({"ETCD_TLS_INMEMORY": spelling})


def test_credentials_without_tls_are_refused_before_any_io() -> None:
    with pytest.raises(ConfigError, match="needs TLS") as caught:
        Settings.build("http://a:2379", user="u", password="hunter2")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match="needs TLS"):
        Settings.from_env({"ETCD_HOSTS": "http://a:1", "ETCD_USER": "u",
                           "ETCD_PASSWORD": "hunter2"})
    # TLS by scheme or by a CA: accepted
    assert Settings.build("https://a:2379", user="u", password="p").user == "u"
    assert Settings.build("http://a:2379", user="u", password="p", ca_cert=CA_PEM).tls
    # v2 sends HTTP basic auth: the v2 store decides (no gRPC token involved)
    assert Settings.build("http://a:2379", user="u", password="p", api="v2").api == "v2"


def test_api_setting() -> None:
    assert Settings.build().api == "v3"
    assert Settings.from_env({}).api == "v3"
    assert Settings.from_env({"ETCD_API": "v2"}).api == "v2"
    assert Settings.from_env({"ETCD_API": "V3"}).api == "v3"
    with pytest.raises(ConfigError, match="ETCD_API"):
        Settings.from_env({"ETCD_API": "v4"})
    with pytest.raises(ConfigError, match="api"):
        Settings.build(api="v4")  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["/a\udc80", "/a\x00", "/a\u200bb", "/./x", "/a/../b"])
def test_a_prefix_that_cannot_be_in_a_key_is_refused_before_any_io(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Keyspace(prefix)
    with pytest.raises(ValueError, match="prefix"):
        Discovery.in_memory(prefix=prefix)


@pytest.mark.parametrize("name", ["a\udc80", "\ud800", "a\u200eb", ".", ".."])
def test_service_names_that_cannot_be_a_key_segment(name: str) -> None:
    with pytest.raises(ValueError, match="service name"):
        validate_service_name(name)


@pytest.mark.parametrize(("prefix", "normal"), [
    ("x//y", "/x/y"), ("//x", "/x"), ("/x//", "/x"), ("///", ""), ("/a/b", "/a/b")])
def test_empty_segments_of_a_prefix_are_dropped(prefix: str, normal: str) -> None:
    # etcd's v2 API cleans key paths ("/x//y/services/s/u" is stored as "/x/y/services/s/u"):
    # with the empty segment kept, every host read back would match no key of the keyspace
    keyspace = Keyspace(prefix)
    assert keyspace.prefix == normal
    key = keyspace.host_key("svc", "u-1")
    assert "//" not in key
    assert keyspace.service_of(key) == "svc" and keyspace.uuid_of("svc", key) == "u-1"


_KEY_B64 = base64.b64encode(b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANsecretkeymaterial\n"
                            b"-----END PRIVATE KEY-----\n").decode()


@pytest.mark.parametrize("make", [
    lambda: Settings.from_env({"ETCD_HOSTS": "https://127.0.0.1:2379",
                               "ETCD_TLS_CERT": "/etc/hostname", "ETCD_TLS_KEY": _KEY_B64}),
    lambda: Settings.build("https://127.0.0.1:2379", client_cert="/etc/hostname",
                           client_key=base64.b64decode(_KEY_B64).decode()),  # str, not bytes
])
def test_a_private_key_given_where_a_path_is_expected_is_not_echoed(make: Any) -> None:
    """A base64 key in ETCD_TLS_KEY without ETCD_TLS_INMEMORY=true (or PEM text where a path
    or bytes are expected) is refused without printing the key back as a "file name"."""
    with pytest.raises(ConfigError) as caught:
        make()
    message = str(caught.value)
    assert "secretkeymaterial" not in message and _KEY_B64 not in message
    assert "ETCD_TLS_KEY" in message or "client_key" in message


def _dialable_by_idna(host: str) -> str | None:
    """What config._dialable did for a DNS name before (the idna codec for every name)."""
    import re

    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return ascii_host if re.fullmatch(r"[a-z0-9_.-]+", ascii_host, re.IGNORECASE) else None


@given(st.text(alphabet=st.sampled_from("ab-_.0Z"), max_size=140)
       | st.lists(st.text(alphabet="ab", min_size=0, max_size=66), max_size=4).map(".".join)
       | st.text(max_size=20).filter(str.isascii))
def test_an_ascii_host_name_is_dialable_exactly_as_the_idna_codec_says(host: str) -> None:
    # ASCII names skip the idna codec (its import is ~0.4 MB): same answer, label rules too
    from rx_discovery.config import _dialable

    if host.strip("0123456789.:") == "":
        return  # an IP address: answered before the name rules
    assert _dialable(host, bracketed=False) == _dialable_by_idna(host)


def test_a_dns_endpoint_does_not_load_the_idna_codec() -> None:
    import subprocess
    import sys

    script = ("import sys; from rx_discovery.config import parse_endpoint; "
              "parse_endpoint('http://etcd-1.example.com:2379'); "
              "print(sorted({'encodings.idna', 'unicodedata', 'stringprep'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "[]"
