"""Through an HTTP CONNECT proxy: grpcio honours ``grpc_proxy``/``https_proxy``/``no_proxy``,
and the lease keepalives must go the same way (the store's own HTTP/2 keepalive connection
connects directly, so for a proxied endpoint the store refreshes over grpcio instead).

The endpoint's host name resolves nowhere (``.invalid``): only the proxy can reach etcd, so a
keepalive that went direct would fail.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from rx_discovery._errors import LeaseNotFound
from rx_discovery.config import Settings
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.store.etcd import EtcdStore


class ConnectProxy:
    """A minimal HTTP CONNECT proxy that sends every tunnel to one port on loopback and
    records the targets it was asked for."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.asked: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            request += chunk
        head, _, rest = request.partition(b"\r\n\r\n")
        method, target = head.split(b" ")[:2]
        assert method == b"CONNECT"
        self.asked.append(target.decode())
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if rest:
            upstream.sendall(rest)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            sock.close()


@pytest.fixture
def proxy(etcd: EmbeddedEtcd) -> Iterator[ConnectProxy]:
    server = ConnectProxy(etcd.client_port)
    yield server
    server.close()


def test_keepalives_go_through_the_proxy_as_calls_do(
        proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("grpc_proxy", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("no_grpc_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with EtcdStore(Settings.build("http://etcd-behind-proxy.invalid:2379", timeout=5)) as store:
        lease = store.grant(20).id
        store.put("/proxied/k", b"v", lease=lease)
        assert store.keepalive(lease) == 20
        refreshed = store.keepalive_many([lease, lease + 1])
        assert refreshed[lease] is None and isinstance(refreshed[lease + 1], LeaseNotFound)
        kv = store.get("/proxied/k")
        assert kv is not None and kv.lease == lease
    assert proxy.asked and set(proxy.asked) == {"etcd-behind-proxy.invalid:2379"}
