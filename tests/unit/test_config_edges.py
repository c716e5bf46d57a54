"""Settings edge cases found in review (secrets in endpoint URLs, base64, duplicates)."""

from __future__ import annotations

import base64
import textwrap

import pytest

from rx_discovery import ConfigError
from rx_discovery.config import Settings


@pytest.mark.parametrize("endpoint", [
    "http://user:hunter2@x:99999",        # port out of range
    "http://user:hunter2@x:-1",
    "grpc://user:hunter2@x:2379",         # not http(s)
    "http://user:hunter2@:2379",          # no host
    "http://user:hunter2@[::1:2379",      # unbalanced bracket
    "http://x:2379/?password=hunter2",    # a query
    "http://x:2379/#hunter2",
])
def test_an_endpoint_refused_for_any_reason_never_shows_its_credentials(endpoint: str) -> None:
    for build in (lambda: Settings.from_env({"ETCD_HOSTS": endpoint}),
                  lambda: Settings.build(endpoint)):
        with pytest.raises(ConfigError) as caught:
            build()
        assert "hunter2" not in str(caught.value), str(caught.value)
        assert "hunter2" not in repr(caught.value)


def test_tls_in_memory_accepts_base64_wrapped_in_lines_as_go_does() -> None:
    # GNU base64 (and openssl base64) wrap at 76/64 columns; Go's base64.StdEncoding, which the
    # Go package decodes ETCD_TLS_INMEMORY values with, skips \r and \n.
    pem = _pki()[0]
    encoded = base64.b64encode(pem).decode()
    for newline in ("\n", "\r\n"):
        wrapped = newline.join(textwrap.wrap(encoded, 76)) + newline
        env = {"ETCD_TLS_INMEMORY": "true", "ETCD_CACERT": wrapped}
        assert Settings.from_env(env).ca_cert == pem
    with pytest.raises(ConfigError, match="ETCD_CACERT: not valid base64"):
        Settings.from_env({"ETCD_TLS_INMEMORY": "true", "ETCD_CACERT": encoded[:40] + " x"})
    with pytest.raises(ConfigError, match="ETCD_CACERT"):  # base64, but not a certificate
        Settings.from_env({"ETCD_TLS_INMEMORY": "true",
                           "ETCD_CACERT": base64.b64encode(b"A" * 300).decode()})


def test_duplicate_endpoints_are_one_member() -> None:
    # python3-etcd3 keys its endpoints by host:port: a duplicate would be an endpoint the
    # client never uses, whose channel is opened and never marked failed.
    settings = Settings.from_env({"ETCD_HOSTS": "http://a:1,a:1, http://a:1/,http://b:2"})
    assert [e.url for e in settings.endpoints] == ["http://a:1", "http://b:2"]
    assert [e.url for e in Settings.build(["http://a:1", "http://a:1"]).endpoints] == [
        "http://a:1"]


@pytest.mark.parametrize("endpoint", [
    "http://a b:2379",        # a space: no such host, retried for ever as 'unavailable'
    "http://a\tb:2379",       # urlsplit drops tabs and newlines: this became host "ab"
    "http://a\nb:2379",
    "http://a%20b:2379",      # percent-encoding has no meaning in a gRPC target
    "http://[v1.x]:2379",     # an IPvFuture literal lost its brackets
    "http://[127.0.0.1]:2379",
    "http://a\x00b:2379",
    "http://a/b:2379",
])
def test_a_host_that_cannot_be_dialled_is_refused_before_any_io(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="ETCD_HOSTS"):
        Settings.from_env({"ETCD_HOSTS": endpoint})
    with pytest.raises(ConfigError, match="endpoints"):
        Settings.build([endpoint])


def test_hosts_that_can_be_dialled() -> None:
    hosts = "http://etcd-0.etcd_svc.local:1,http://[::ffff:127.0.0.1]:2,http://ëtcd:3,10.0.0.1:4"
    assert [e.host for e in Settings.from_env({"ETCD_HOSTS": hosts}).endpoints] == [
        "etcd-0.etcd_svc.local", "::ffff:127.0.0.1", "xn--tcd-ima", "10.0.0.1"]


def _pki() -> tuple[bytes, bytes, bytes]:
    import trustme

    ca = trustme.CA()
    client = ca.issue_cert("client")
    return (ca.cert_pem.bytes(), client.cert_chain_pems[0].bytes(),
            client.private_key_pem.bytes())


@pytest.mark.parametrize("field", ["ca_cert", "client_cert", "client_key"])
def test_pem_material_that_does_not_parse_is_refused_before_any_io(field: str) -> None:
    """A CA that is not a certificate made every call fail with "Failed to create security
    handshaker", retried for ever as 'unavailable'; the field is named, its content never."""
    ca, cert, key = _pki()
    good = {"ca_cert": ca, "client_cert": cert, "client_key": key}
    secret = key.decode().splitlines()[1]
    for bad in (b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                secret.encode()):
        with pytest.raises(ConfigError, match=field) as caught:
            Settings.build("https://127.0.0.1:2379", **{**good, field: bad})
        assert secret not in str(caught.value) and secret not in repr(caught.value)
    Settings.build("https://127.0.0.1:2379", **good)  # the good material passes


def test_a_client_certificate_and_a_key_that_do_not_match_are_refused() -> None:
    ca, cert, _ = _pki()
    _, _, other_key = _pki()
    with pytest.raises(ConfigError, match="client_key"):
        Settings.build("https://127.0.0.1:2379", ca_cert=ca, client_cert=cert,
                       client_key=other_key)
