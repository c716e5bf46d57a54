"""The requests adapter against 3 real HTTP servers, each registered by its own process on a
real etcd: routing, credentials, pass-through, one server SIGKILLed, one stopped gracefully."""

from __future__ import annotations

import base64
import collections
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import requests.adapters
from calling import SERVICE, Backend, backend_factory, graceful_scenario, sigkill_scenario
from helpers import wait_until

from rx_discovery import Discovery, Host
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.http.requests import DiscoveryAdapter

__all__ = ["backend_factory"]  # a fixture

URL = f"http://{SERVICE}/work"
BALANCER = {"eject_base": 60.0, "eject_max": 60.0, "wait": 10.0}


class CountingAdapter(requests.adapters.HTTPAdapter):
    """Counts the failed attempts per port (below DiscoveryAdapter in the MRO)."""

    failures: collections.Counter[int]

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
             ) -> requests.Response:
        try:
            return super().send(request, *args, **kwargs)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):
            self.failures[urllib.parse.urlsplit(request.url).port or 0] += 1
            raise


class CountingDiscoveryAdapter(DiscoveryAdapter, CountingAdapter):
    pass


@pytest.fixture
def discovery(etcd: EmbeddedEtcd, unique_prefix: str) -> Iterator[Discovery]:
    with Discovery(endpoints=[etcd.endpoint], prefix=unique_prefix) as d:
        yield d


@pytest.fixture
def session(discovery: Discovery) -> Iterator[tuple[requests.Session, CountingDiscoveryAdapter]]:
    adapter = CountingDiscoveryAdapter(discovery, balancer_options=BALANCER)
    adapter.failures = collections.Counter()
    with requests.Session() as session:
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        yield session, adapter


def sender(session: requests.Session) -> Callable[[], str]:
    def send() -> str:
        response = session.get(URL, timeout=10)
        response.raise_for_status()
        return response.text

    return send


@pytest.mark.timeout(120)
def test_sigkilled_host_costs_no_request(
        session: tuple[requests.Session, CountingDiscoveryAdapter],
        backend_factory: Callable[..., list[Backend]]) -> None:
    http, adapter = session
    backends = backend_factory(3, "--ttl", "3")
    sigkill_scenario(backends, adapter.router.balancer(SERVICE), sender(http),
                     lambda port: adapter.failures[port])


@pytest.mark.timeout(120)
def test_graceful_stop_costs_no_request(
        session: tuple[requests.Session, CountingDiscoveryAdapter],
        backend_factory: Callable[..., list[Backend]]) -> None:
    http, adapter = session
    backends = backend_factory(3, "--ttl", "3", "--drain", "1.5")
    graceful_scenario(backends, adapter.router.balancer(SERVICE), sender(http),
                      lambda port: adapter.failures[port])


def test_host_header_credentials_and_pass_through(
        discovery: Discovery, session: tuple[requests.Session, CountingDiscoveryAdapter],
        backend_factory: Callable[..., list[Backend]]) -> None:
    http, _ = session
    backend = backend_factory(1)[0]
    response = http.get(f"http://{SERVICE}/x", timeout=10)
    assert response.text == "b0"
    assert response.headers["X-Seen-Host"] == f"127.0.0.1:{backend.port}"
    assert response.headers["X-Seen-Auth"] == ""
    # the caller's request (a redirect joins with it; X-Seen-Host says where it went)
    assert response.request.url == response.url == f"http://{SERVICE}/x"
    # a plain URL goes through untouched
    assert http.get(f"http://127.0.0.1:{backend.port}/", timeout=10).text == "b0"
    # a host with credentials: basic auth (another service, registered here)
    host = Host(hostname="127.0.0.1", ports={"http": str(backend.port)}, user="u",
                password="p@ss")
    with discovery.register("secured", host, ttl=5) as registration:
        registration.wait(timeout=10)
        seen = http.get("http://secured/", timeout=10).headers["X-Seen-Auth"]
    assert seen == "Basic " + base64.b64encode(b"u:p@ss").decode()


def test_a_service_with_no_host_is_a_connection_error(
        session: tuple[requests.Session, CountingDiscoveryAdapter]) -> None:
    http, _ = session
    with pytest.raises(requests.exceptions.ConnectionError, match="no host registered"):
        http.get("http://nobody/", timeout=10)




def test_a_relative_redirect_goes_through_the_service_again(
        session: tuple[requests.Session, CountingDiscoveryAdapter],
        backend_factory: Callable[..., list[Backend]]) -> None:
    """requests joins a relative Location with ``response.url``: the service URL, so the
    redirected request is balanced (round robin: the other host) like any other."""
    http, adapter = session
    backends = backend_factory(2)
    balancer = adapter.router.balancer(SERVICE)
    wait_until(lambda: balancer.hosts is not None and len(balancer.hosts) == 2,
               message="both hosts known")
    response = http.get(f"http://{SERVICE}/redirect", timeout=10)
    assert response.status_code == 200
    assert response.url == f"http://{SERVICE}/after-redirect"
    assert [r.url for r in response.history] == [f"http://{SERVICE}/redirect"]
    names = {response.history[0].headers["X-Name"], response.text}
    assert names == {b.name for b in backends}  # one each: the redirect was balanced


def test_a_relative_redirect_keeps_the_callers_authorization(
        session: tuple[requests.Session, CountingDiscoveryAdapter],
        backend_factory: Callable[..., list[Backend]]) -> None:
    """requests strips ``Authorization`` from a redirect to another hostname than the one of
    ``response.request``: that must be the service (the redirect stays on it), not the host
    that answered, or the caller's credentials (``auth=``, a header) are lost on the way."""
    http, _ = session
    backend_factory(1)
    response = http.get(f"http://{SERVICE}/redirect", timeout=10,
                        headers={"Authorization": "Bearer caller-token"})
    assert response.status_code == 200 and len(response.history) == 1
    assert response.headers["X-Seen-Auth"] == "Bearer caller-token"
    assert response.request.url == f"http://{SERVICE}/after-redirect"
