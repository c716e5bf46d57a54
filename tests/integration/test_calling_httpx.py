"""httpx clients on DiscoveryTransport / AsyncDiscoveryTransport against 3 real HTTP servers,
each registered by its own process on a real etcd: one is SIGKILLed, one stops gracefully, and
no request fails."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from calling import SERVICE, Backend, backend_factory, graceful_scenario, sigkill_scenario
from helpers import wait_until

from rx_discovery import Discovery
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.http import AsyncDiscoveryTransport, DiscoveryTransport

__all__ = ["backend_factory"]  # a fixture

URL = f"http://{SERVICE}/work"
# long ejections: a dead host tried twice would be a host not ejected at its first failure
BALANCER = {"eject_base": 60.0, "eject_max": 60.0, "wait": 10.0}


class Failures(collections.Counter[int]):
    """Failed attempts per port, counted by the wrappers below."""


class CountingTransport(httpx.BaseTransport):
    def __init__(self, failures: Failures) -> None:
        self.inner, self.failures = httpx.HTTPTransport(), failures

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return self.inner.handle_request(request)
        except httpx.TransportError:
            self.failures[request.url.port or 0] += 1
            raise

    def close(self) -> None:
        self.inner.close()


class AsyncCountingTransport(httpx.AsyncBaseTransport):
    def __init__(self, failures: Failures) -> None:
        self.inner, self.failures = httpx.AsyncHTTPTransport(), failures

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self.inner.handle_async_request(request)
        except httpx.TransportError:
            self.failures[request.url.port or 0] += 1
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def discovery(etcd: EmbeddedEtcd, unique_prefix: str) -> Iterator[Discovery]:
    with Discovery(endpoints=[etcd.endpoint], prefix=unique_prefix) as d:
        yield d


Client = tuple[DiscoveryTransport | AsyncDiscoveryTransport, Callable[[], str], Failures]


@pytest.fixture(params=["sync", "asyncio"])
def client(request: pytest.FixtureRequest, discovery: Discovery) -> Iterator[Client]:
    failures = Failures()
    if request.param == "sync":
        transport = DiscoveryTransport(discovery, transport=CountingTransport(failures),
                                       balancer_options=BALANCER)
        with httpx.Client(transport=transport, timeout=10) as http:
            yield transport, lambda: http.get(URL).raise_for_status().text, failures
        return
    # the async client on an asyncio loop in its own thread; the scenario calls it in turn
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    async_transport = AsyncDiscoveryTransport(
        discovery, transport=AsyncCountingTransport(failures), balancer_options=BALANCER)
    http = httpx.AsyncClient(transport=async_transport, timeout=10)

    async def get() -> str:
        return (await http.get(URL)).raise_for_status().text

    def send() -> str:
        return asyncio.run_coroutine_threadsafe(get(), loop).result(timeout=30)

    try:
        yield async_transport, send, failures
    finally:
        asyncio.run_coroutine_threadsafe(http.aclose(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.mark.timeout(120)
def test_sigkilled_host_costs_no_request(client: Client,
                                         backend_factory: Callable[..., list[Backend]]) -> None:
    transport, send, failures = client
    backends = backend_factory(3, "--ttl", "3")
    balancer = transport.router.balancer(SERVICE)
    sigkill_scenario(backends, balancer, send, lambda port: failures[port])


@pytest.mark.timeout(120)
def test_graceful_stop_costs_no_request(client: Client,
                                        backend_factory: Callable[..., list[Backend]]) -> None:
    transport, send, failures = client
    backends = backend_factory(3, "--ttl", "3", "--drain", "1.5")
    balancer = transport.router.balancer(SERVICE)
    graceful_scenario(backends, balancer, send, lambda port: failures[port])


def test_requests_carry_the_target_host_header(
        discovery: Discovery, backend_factory: Callable[..., list[Backend]]) -> None:
    backends = backend_factory(1)
    with httpx.Client(transport=DiscoveryTransport(discovery)) as http:
        response = http.get(f"http://{SERVICE}/")
    assert response.text == "b0"
    assert response.headers["X-Seen-Host"] == f"127.0.0.1:{backends[0].port}"
    assert str(response.request.url) == f"http://{SERVICE}/"  # the caller's, as it was
    assert response.extensions["rx_discovery.host"].uuid == backends[0].uuid  # who answered


def test_a_relative_redirect_goes_through_the_service_again(
        discovery: Discovery, backend_factory: Callable[..., list[Backend]]) -> None:
    backends = backend_factory(2)
    transport = DiscoveryTransport(discovery)
    with httpx.Client(transport=transport, follow_redirects=True, timeout=10) as http:
        balancer = transport.router.balancer(SERVICE)
        wait_until(lambda: balancer.hosts is not None and len(balancer.hosts) == 2,
                   message="both hosts known")
        response = http.get(f"http://{SERVICE}/redirect")
    assert response.status_code == 200
    assert str(response.url) == f"http://{SERVICE}/after-redirect"
    answered = {r.extensions["rx_discovery.host"].uuid for r in (*response.history, response)}
    assert answered == {b.uuid for b in backends}  # round robin: the redirect was balanced


def test_other_names_pass_through(discovery: Discovery,
                                  backend_factory: Callable[..., list[Backend]]) -> None:
    backends = backend_factory(1)
    with httpx.Client(transport=DiscoveryTransport(discovery)) as http:
        assert http.get(f"http://127.0.0.1:{backends[0].port}/x").text == "b0"
