"""rx_discovery.testing.TcpProxy: forwards until cut(), drops and turns away connections while
cut, forwards again after restore(); and its documented example against a real etcd."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from helpers import wait_until

from rx_discovery import Discovery, HostSet
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.testing import TcpProxy, make_host


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A plain TCP echo server on loopback (one thread per connection)."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=2)


def echoes(sock: socket.socket, data: bytes) -> bool:
    """True when ``data`` comes back; False when the connection is closed or reset."""
    try:
        sock.sendall(data)
        received = b""
        while len(received) < len(data):
            chunk = sock.recv(4096)
            if not chunk:
                return False
            received += chunk
    except (ConnectionResetError, BrokenPipeError):
        return False
    return received == data


def test_cut_drops_connections_and_refuses_new_ones_until_restored(echo_port: int) -> None:
    with TcpProxy(echo_port) as proxy:
        assert proxy.endpoint == f"http://127.0.0.1:{proxy.port}"
        first, second = connect(proxy.port), connect(proxy.port)
        assert echoes(first, b"ping") and echoes(second, b"ping")

        proxy.cut()
        assert not echoes(first, b"lost") and not echoes(second, b"lost")
        during = connect(proxy.port)  # the port still listens: accepted, then closed at once
        assert not echoes(during, b"lost")

        proxy.restore()
        after = connect(proxy.port)
        assert echoes(after, b"pong")
        assert not echoes(first, b"still lost")  # dropped connections stay dropped

        proxy.cut()  # works again after a restore
        assert not echoes(after, b"lost")
        for sock in (first, second, during, after):
            sock.close()
    with pytest.raises(ConnectionRefusedError):  # closed: nothing listens any more
        connect(proxy.port)


def test_a_connection_to_a_target_that_is_down_is_closed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with TcpProxy(port) as proxy, connect(proxy.port) as sock:
        assert not echoes(sock, b"anyone?")



def test_documented_example_a_cut_watcher_misses_nothing(etcd: EmbeddedEtcd,
                                                        unique_prefix: str) -> None:
    with (TcpProxy(etcd.client_port) as proxy,
          Discovery(etcd.endpoint, prefix=unique_prefix) as writer,
          Discovery(proxy.endpoint, prefix=unique_prefix, timeout=1) as watcher):
        sets: list[HostSet] = []
        watcher.hosts("api").subscribe(sets.append)
        wait_until(lambda: sets, message="first set")
        proxy.cut()
        writer.register("api", make_host(1)).wait(5)
        assert "uuid-1" not in sets[-1]
        proxy.restore()
        wait_until(lambda: "uuid-1" in sets[-1], timeout=10, message="uuid-1 after restore")
