"""HTTPS through DiscoveryTransport: the client connects to the host's address, sends that
name as SNI and in the Host header, and verifies the certificate for it (a real TLS server
with a test CA; the hosts are on an in-memory store: no etcd needed for this rule)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import trustme

from rx_discovery import Discovery, Host
from rx_discovery.http import DiscoveryTransport


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        body = self.headers.get("Host", "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_server(ca: trustme.CA) -> Iterator[tuple[int, list[str | None]]]:
    """A TLS server whose certificate names only ``localhost``; records the SNI it got."""
    server_names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)

    def record(sock: Any, name: str | None, ctx: Any) -> None:
        server_names.append(name)

    context.sni_callback = record
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], server_names
    server.shutdown()
    server.server_close()


def client(ca: trustme.CA, *hosts: Host) -> httpx.Client:
    discovery = Discovery.in_memory()
    for host in hosts:
        discovery.register("secure", host, ttl=5).wait(5)
    verify = ssl.create_default_context()
    ca.configure_trust(verify)
    return httpx.Client(transport=DiscoveryTransport(discovery, verify=verify), timeout=10)


def test_https_verifies_the_certificate_for_the_address_and_sends_it_as_sni(
        ca: trustme.CA, https_server: tuple[int, list[str | None]]) -> None:
    port, server_names = https_server
    host = Host(hostname="localhost", ports={"https": str(port)})
    with client(ca, host) as http:
        response = http.get("https://secure/")
    assert response.status_code == 200
    assert response.text == f"localhost:{port}"        # the Host header
    assert server_names[-1] == "localhost"              # SNI


def test_a_certificate_for_another_name_fails_then_another_host_is_used(
        ca: trustme.CA, https_server: tuple[int, list[str | None]]) -> None:
    port, _ = https_server
    wrong = Host(hostname="127.0.0.1", ports={"https": str(port)}, uuid="a-wrong")
    with client(ca, wrong) as http, pytest.raises(httpx.ConnectError, match="certificate"):
        http.get("https://secure/")
    right = Host(hostname="localhost", ports={"https": str(port)}, uuid="b-right")
    with client(ca, wrong, right) as http:
        assert all(http.get("https://secure/").text == f"localhost:{port}" for _ in range(4))


def test_the_requests_adapter_verifies_and_sends_sni_for_the_address_too(
        ca: trustme.CA, https_server: tuple[int, list[str | None]]) -> None:
    import requests

    from rx_discovery.http.requests import DiscoveryAdapter

    port, server_names = https_server
    discovery = Discovery.in_memory()
    discovery.register("secure", Host(hostname="localhost", ports={"https": str(port)}),
                       ttl=5).wait(5)
    with ca.cert_pem.tempfile() as ca_file, requests.Session() as session:
        session.mount("https://", DiscoveryAdapter(discovery))
        response = session.get("https://secure/", verify=ca_file, timeout=10)
    assert response.status_code == 200
    assert response.text == f"localhost:{port}"        # the Host header
    assert server_names[-1] == "localhost"              # SNI
    discovery.close()
