"""How the etcd store reaches etcd, without a server: proxy rules as grpcio's, one trust
configuration for the gRPC channels and the keepalive connection, watch fragments."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import pytest
import trustme
from etcd3.etcdrpc import rpc_pb2

from rx_discovery._errors import (
    AuthenticationFailed,
    LeaseNotFound,
    PermissionDenied,
    RequestTooLarge,
    StoreError,
    StoreUnavailable,
)
from rx_discovery.config import Settings
from rx_discovery.store.etcd._client import grpc_proxy_applies
from rx_discovery.store.etcd._codec import (
    is_fragment,
    watch_cancel_request,
    watch_create_request,
)
from rx_discovery.store.etcd._errors import MisconfiguredEndpoint, _from_status, _TokenExpired
from rx_discovery.store.etcd._keepalive import _ssl_context, grpc_roots_file


@pytest.mark.parametrize(("env", "host", "proxied"), [
    ({}, "etcd.internal", False),
    ({"https_proxy": "http://proxy:3128"}, "etcd.internal", True),
    ({"http_proxy": "http://proxy:3128"}, "10.0.0.5", True),
    ({"grpc_proxy": "http://proxy:3128"}, "etcd.internal", True),
    ({"grpc_proxy": "", "https_proxy": "http://proxy:3128"}, "etcd.internal", False),
    ({"HTTPS_PROXY": "http://proxy:3128"}, "etcd.internal", False),  # lowercase only
    ({"https_proxy": "http://p:1", "no_proxy": "internal"}, "etcd.INTERNAL", False),
    ({"https_proxy": "http://p:1", "no_proxy": "other, .internal"}, "etcd.internal", False),
    ({"https_proxy": "http://p:1", "no_proxy": "other"}, "etcd.internal", True),
    ({"https_proxy": "http://p:1", "no_proxy": "*"}, "etcd.internal", False),
    ({"https_proxy": "http://p:1", "no_proxy": "10.0.0.0/8"}, "10.1.2.3", False),
    ({"https_proxy": "http://p:1", "no_proxy": "10.0.0.0/8"}, "192.168.1.1", True),
    ({"https_proxy": "http://p:1", "no_proxy": "::1/128"}, "::1", False),
    ({"https_proxy": "http://p:1", "no_grpc_proxy": "x", "no_proxy": "internal"},
     "etcd.internal", True),  # no_grpc_proxy takes precedence over no_proxy
])
def test_proxy_rules_are_grpcs(env: dict[str, str], host: str, proxied: bool) -> None:
    assert grpc_proxy_applies(host, env) is proxied


def _subjects(context: ssl.SSLContext) -> set[str]:
    return {str(cert.get("subject")) for cert in context.get_ca_certs()}


def test_keepalive_tls_trusts_grpcs_roots_not_the_system_store(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", raising=False)
    roots = Path(grpc_roots_file())
    assert roots.is_file() and "grpc" in str(roots)
    expected = ssl.create_default_context(cafile=str(roots))
    context = _ssl_context(Settings.build("https://etcd:2379"))
    assert _subjects(context) == _subjects(expected) and _subjects(context)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_keepalive_tls_honours_grpc_default_ssl_roots_file_path(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = trustme.CA()
    path = tmp_path / "roots.pem"
    ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", str(path))
    context = _ssl_context(Settings.build("https://etcd:2379"))
    assert len(context.get_ca_certs()) == 1
    assert _subjects(context) == _subjects(ssl.create_default_context(cafile=str(path)))
    # an explicit CA wins, as for the gRPC channels
    other = trustme.CA()
    explicit = _ssl_context(Settings.build("https://etcd:2379", ca_cert=other.cert_pem.bytes()))
    assert _subjects(explicit) != _subjects(context) and len(explicit.get_ca_certs()) == 1


def test_watches_ask_for_fragments_and_fragments_are_recognised() -> None:
    encoded = watch_create_request(b"/a", b"/b", 7, watch_id=300)
    request = rpc_pb2.WatchRequest.FromString(encoded)
    create = request.create_request
    assert (create.key, create.range_end, create.start_revision) == (b"/a", b"/b", 7)
    assert create.progress_notify
    # fragment = true, watch_id = 300: fields of etcd 3.4+ that this protobuf does not know
    assert create.SerializeToString().endswith(bytes([8 << 3, 1, 7 << 3]) + bytes([172, 2]))
    cancel = rpc_pb2.WatchRequest.FromString(watch_cancel_request(300))
    assert cancel.cancel_request.watch_id == 300 and not cancel.HasField("create_request")
    whole = rpc_pb2.WatchResponse(watch_id=1)
    assert not is_fragment(whole)
    part = rpc_pb2.WatchResponse.FromString(whole.SerializeToString() + bytes([7 << 3, 1]))
    assert is_fragment(part)
    last = rpc_pb2.WatchResponse.FromString(whole.SerializeToString() + bytes([7 << 3, 0]))
    assert not is_fragment(last)


@pytest.mark.parametrize(("code", "details", "kind", "permanent"), [
    ("UNAVAILABLE", "connection refused", StoreUnavailable, False),
    ("DEADLINE_EXCEEDED", "", StoreUnavailable, False),
    ("UNAVAILABLE", "etcdserver: no leader", StoreUnavailable, False),
    ("UNAVAILABLE", "Handshake read failed (Socket closed)", StoreUnavailable, False),
    ("UNAVAILABLE", "TLS handshake failed: UNEXPECTED_EOF_WHILE_READING", StoreUnavailable,
     False),
    ("UNAVAILABLE", "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
     "CERTIFICATE_VERIFY_FAILED", MisconfiguredEndpoint, True),
    ("UNAVAILABLE", "TLS handshake failed: CERTIFICATE_VERIFY_FAILED", MisconfiguredEndpoint,
     True),
    ("UNAVAILABLE", "Ssl handshake failed: SSLV3_ALERT_BAD_CERTIFICATE", MisconfiguredEndpoint,
     True),
    ("UNAVAILABLE", "Trying to connect an http1.x server (HTTP status 400)",
     MisconfiguredEndpoint, True),
    ("UNIMPLEMENTED", "unknown service etcdserverpb.KV", MisconfiguredEndpoint, True),
    ("UNIMPLEMENTED", "HTTP status 404", MisconfiguredEndpoint, True),
    ("INVALID_ARGUMENT", "etcdserver: request is too large", RequestTooLarge, True),
    ("RESOURCE_EXHAUSTED", "grpc: received message larger than max (3000011 vs. 2097152)",
     RequestTooLarge, True),
    ("PERMISSION_DENIED", "etcdserver: permission denied", PermissionDenied, True),
    ("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password",
     AuthenticationFailed, True),
    ("UNAUTHENTICATED", "etcdserver: invalid auth token", _TokenExpired, False),
    ("NOT_FOUND", "etcdserver: requested lease not found", LeaseNotFound, False),
    ("FAILED_PRECONDITION", "etcdserver: revision of auth store is old", StoreError, False),
])
def test_grpc_statuses_map_to_the_library_errors(code: str, details: str, kind: type,
                                                 permanent: bool) -> None:
    error = _from_status(getattr(grpc.StatusCode, code), details, "op")
    assert type(error) is kind, repr(error)
    assert error.permanent is permanent
    assert str(error).startswith("op: ")
