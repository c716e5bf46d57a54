"""The httpx transports' rules, server-free: the inner transport is an httpx.MockTransport that
plays the hosts (answers, refuses connections, drops them), on the in-memory store driven by a
TestScheduler."""

from __future__ import annotations

import asyncio
import base64
import collections
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from helpers import slow_reads
from reactivex.testing import TestScheduler

from rx_discovery import Discovery, Host
from rx_discovery.http import AsyncDiscoveryTransport, DiscoveryTransport


class Hosts:
    """A MockTransport handler: which address got each request; addresses in ``refusing``
    refuse connections, those in ``dropping`` drop them after the request was sent."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []
        self.refusing: set[str] = set()
        self.dropping: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        address = f"{request.url.host}:{request.url.port}"
        if address in self.refusing:
            raise httpx.ConnectError("connection refused", request=request)
        # as sent (the transport gives the caller's request back as it was afterwards)
        self.seen.append(httpx.Request(request.method, request.url, headers=request.headers))
        if request.url.path == "/redirect":  # relative, as most frameworks send them
            return httpx.Response(302, headers={"Location": "/after-redirect"})
        if address in self.dropping:
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        if request.url.path == "/fail":
            return httpx.Response(503, text=address)
        if request.url.path == "/stream":   # a body read after the headers, as on a network
            return httpx.Response(200, stream=Body([address.encode()]))
        return httpx.Response(200, text=address)

    def addresses(self) -> collections.Counter[str]:
        return collections.Counter(f"{r.url.host}:{r.url.port}" for r in self.seen)


class Body(httpx.SyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Any:
        return iter(self.chunks)


@pytest.fixture
def backends() -> Hosts:
    return Hosts()


def node(n: int, **fields: Any) -> Host:
    """Host n: private 10.0.0.n:8080 (http) / 8443 (https), public node-n.example.com:80."""
    values: dict[str, Any] = {
        "ports": {"http": "80", "https": "443"}, "private_hostname": f"10.0.0.{n}",
        "private_ports": {"http": "8080", "https": "8443"}, "uuid": f"uuid-{n}"}
    values.update(fields)
    return Host(hostname=f"node-{n}.example.com", **values)


def client(scheduler: TestScheduler, discovery: Discovery, backends: Hosts,
           *hosts: Host, service: str = "api", **options: Any) -> httpx.Client:
    for host in hosts:
        discovery.register(service, host, ttl=5)
    transport = DiscoveryTransport(discovery, transport=httpx.MockTransport(backends),
                                   balancer_options={"scheduler": scheduler}, **options)
    http = httpx.Client(transport=transport)
    transport.router.balancer(service)   # subscribe now, so that the first set arrives
    scheduler.advance_by(1)
    return http


def test_requests_reach_every_live_host_on_its_private_address(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends, node(1), node(2), node(3))
    for _ in range(30):
        assert http.get("http://api/v1/items?q=1").status_code == 200
    assert backends.addresses() == {"10.0.0.1:8080": 10, "10.0.0.2:8080": 10,
                                    "10.0.0.3:8080": 10}
    first = backends.seen[0]
    assert first.url.path == "/v1/items" and first.url.query == b"q=1"
    assert first.headers["Host"] == f"{first.url.host}:8080"
    assert "authorization" not in first.headers


def test_the_scheme_picks_the_port_and_public_is_an_option(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends, node(1), address="public")
    http.get("https://api/")
    http.get("http://api/")
    assert [(str(r.url), r.headers["Host"]) for r in backends.seen] == [
        ("https://node-1.example.com/", "node-1.example.com"),
        ("http://node-1.example.com/", "node-1.example.com")]


def test_an_address_function_overrides_the_rule(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends, node(1),
                  address=lambda host, scheme: ("::1", 9000))
    http.get("http://api/x")
    assert str(backends.seen[0].url) == "http://[::1]:9000/x"
    assert backends.seen[0].headers["Host"] == "[::1]:9000"


def test_host_credentials_become_basic_auth_unless_the_request_has_its_own(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends, node(1, user="u", password="s3cr:t"))
    http.get("http://api/")
    http.get("http://api/", headers={"Authorization": "Bearer mine"})
    expected = "Basic " + base64.b64encode(b"u:s3cr:t").decode()
    assert [r.headers["Authorization"] for r in backends.seen] == [expected, "Bearer mine"]
    assert "s3cr" not in str(backends.seen[0].url)


def test_names_that_are_not_services_pass_through_untouched(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends, node(1))
    for url in ("http://example.com/a", "http://localhost/b", "http://api:8000/c",
                "http://127.0.0.1/d", "http://[::1]/e"):
        http.get(url)
    assert [str(r.url) for r in backends.seen] == [
        "http://example.com/a", "http://localhost/b", "http://api:8000/c",
        "http://127.0.0.1/d", "http://[::1]/e"]


def test_an_allow_list_or_a_suffix_says_which_names_are_services(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    listed = client(scheduler, discovery, backends, node(1), services=["api"])
    listed.get("http://api/")
    listed.get("http://other/")
    suffixed = client(scheduler, discovery, backends, suffix=".svc")
    suffixed.get("http://api.svc/")
    suffixed.get("http://api/")
    assert [str(r.url) for r in backends.seen] == [
        "http://10.0.0.1:8080/", "http://other/", "http://10.0.0.1:8080/", "http://api/"]


def test_a_refused_connection_is_retried_on_another_host_which_is_ejected(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends, node(1), node(2), node(3))
    backends.refusing.add("10.0.0.2:8080")
    for _ in range(30):
        assert http.post("http://api/", content=b"x").status_code == 200  # even POST
    counts = backends.addresses()
    assert "10.0.0.2:8080" not in counts and sum(counts.values()) == 30
    balancer = http._transport.router.balancer("api")  # type: ignore[attr-defined]
    assert balancer.ejected == {"uuid-2"}


def test_a_dropped_connection_is_retried_for_idempotent_methods_only(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends, node(1), node(2))
    backends.dropping.add("10.0.0.1:8080")
    gets = [http.get("http://api/").text for _ in range(4)]
    assert set(gets) == {"10.0.0.2:8080"}
    backends.seen.clear()
    http._transport.router.balancer("api").close()  # type: ignore[attr-defined]
    http = client(scheduler, discovery, backends, service="api")
    posts = 0
    for _ in range(6):
        try:
            http.post("http://api/", content=b"x")
        except httpx.RemoteProtocolError:
            posts += 1
    assert posts >= 1   # the POST to the dropping host failed rather than being sent twice
    assert [r.method for r in backends.seen].count("POST") == 6


def test_retry_after_send_always_retries_posts(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends, node(1), node(2), retry_after_send="always")
    backends.dropping.add("10.0.0.1:8080")
    assert {http.post("http://api/", content=b"x").text for _ in range(4)} == {"10.0.0.2:8080"}


def test_http_errors_are_answers_returned_as_they_are(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends, node(1), node(2))
    assert [http.get("http://api/fail").status_code for _ in range(4)] == [503] * 4
    assert len(backends.seen) == 4   # not retried
    assert http._transport.router.balancer("api").ejected == frozenset()  # type: ignore[attr-defined]


def test_when_every_host_refuses_the_last_error_is_raised(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends, node(1), node(2))
    backends.refusing.update({"10.0.0.1:8080", "10.0.0.2:8080"})
    with pytest.raises(httpx.ConnectError, match="refused"):
        http.get("http://api/")


def test_a_service_without_hosts_is_a_connect_error(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends)
    with pytest.raises(httpx.ConnectError, match="no host registered for service 'api'"):
        http.get("http://api/")


def test_hosts_without_the_scheme_port_are_skipped(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends, node(1),
                  node(2, private_ports={"https": "8443"}, ports={"https": "443"}))
    assert {http.get("http://api/").text for _ in range(6)} == {"10.0.0.1:8080"}


def test_responses_count_in_flight_until_closed(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends, node(1), policy="least_requests")
    balancer = http._transport.router.balancer("api")  # type: ignore[attr-defined]
    with http.stream("GET", "http://api/stream") as response:
        assert balancer.in_flight == {"uuid-1": 1}
        response.read()
    assert balancer.in_flight == {}


@pytest.mark.parametrize(("options", "field"), [
    ({"retries": -1}, "retries"), ({"retry_after_send": "sometimes"}, "retry_after_send"),
    ({"address": "internal"}, "address"), ({"suffix": "svc"}, "suffix"),
    ({"policy": "sticky"}, "policy"), ({"services": "api"}, "services"),
    ({"services": ["api"], "suffix": ".svc"}, "services or suffix"),
])
def test_bad_options_fail_at_once(discovery: Discovery, options: dict[str, Any],
                                  field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DiscoveryTransport(discovery, **options)


def test_async_transport_follows_the_same_rules(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    for n in (1, 2, 3):
        discovery.register("api", node(n), ttl=5)

    async def handler(request: httpx.Request) -> httpx.Response:
        return backends(request)

    transport = AsyncDiscoveryTransport(discovery, transport=httpx.MockTransport(handler),
                                        balancer_options={"scheduler": scheduler})
    transport.router.balancer("api")
    scheduler.advance_by(1)
    backends.refusing.add("10.0.0.3:8080")

    async def calls(fetch: Callable[[str], Any]) -> list[int]:
        return [(await fetch("http://api/")).status_code for _ in range(20)]

    async def main() -> list[int]:
        async with httpx.AsyncClient(transport=transport) as http:
            return await calls(http.get)

    assert asyncio.run(main()) == [200] * 20
    assert set(backends.addresses()) == {"10.0.0.1:8080", "10.0.0.2:8080"}


def test_the_first_request_waits_for_the_first_host_set(discovery: Discovery) -> None:
    # etcd unreachable and an idle TestScheduler: no first state, the wait ends with a clear
    # error
    discovery.store.disconnect()  # type: ignore[attr-defined]
    transport = DiscoveryTransport(discovery, transport=httpx.MockTransport(Hosts()),
                                   balancer_options={"wait": 0.05})
    with pytest.raises(httpx.ConnectError, match=r"arrived within 0\.05 s"):
        httpx.Client(transport=transport).get("http://api/")


@pytest.mark.parametrize("hostname", ["10.0.0.7", "node-1.internal", "::1", "fe80::1:2",
                                      "Node-1.Internal", "bücher.example", "[::2]"])
@pytest.mark.parametrize(("scheme", "port"), [("http", 80), ("http", 8080), ("https", 443)])
@pytest.mark.parametrize("url", ["{}://svc/", "{}://svc/a%20b/c?x=1&y=%2F#frag", "{}://svc"])
def test_the_fast_url_rewrite_gives_what_copy_with_gives(
        discovery: Discovery, hostname: str, scheme: str, port: int, url: str) -> None:
    from rx_discovery.http._httpx import _retarget
    from rx_discovery.http._routing import Router

    router = Router(discovery, address=lambda host, scheme: (hostname, port))
    target = router.target(node(1), scheme)
    service_url = httpx.URL(url.format(scheme))
    fast = _retarget(service_url, target)
    slow = service_url.copy_with(host=hostname.strip("[]"), port=port)
    assert (str(fast), fast.host, fast.port, fast.raw_path, fast.netloc) == \
        (str(slow), slow.host, slow.port, slow.raw_path, slow.netloc)
    assert target.host_header == slow.netloc.decode()


def test_the_first_async_request_waits_for_the_hosts_off_the_loop(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    # the host is stored, but etcd is unreachable when the first request comes: its first
    # read fails, and the host set arrives only once the loop runs the deliverer
    store = discovery.store
    store.put("/services/api/uuid-1", node(1, service_name="api").to_json().encode())
    store.disconnect()  # type: ignore[attr-defined]

    async def handler(request: httpx.Request) -> httpx.Response:
        return backends(request)

    async def main() -> str:
        async def deliver() -> None:   # the first host set comes only if the loop runs
            for _ in range(20):
                await asyncio.sleep(0.01)
            store.reconnect()  # type: ignore[attr-defined]
            scheduler.advance_by(1)

        deliverer = asyncio.get_running_loop().create_task(deliver())
        transport = AsyncDiscoveryTransport(discovery, transport=httpx.MockTransport(handler),
                                            balancer_options={"wait": 5})
        async with httpx.AsyncClient(transport=transport) as http:
            text = (await http.get("http://api/")).text
        await deliverer
        return text

    assert asyncio.run(main()) == "10.0.0.1:8080"


def test_a_target_never_shows_the_credentials(discovery: Discovery) -> None:
    from rx_discovery.http._routing import Router

    target = Router(discovery).target(node(1, user="u", password="s3cret"), "http")
    assert target.authorization is not None
    assert "s3cret" not in repr(target) and target.authorization not in repr(target)



async def longest_loop_gap(request: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``await request()`` while a ticker measures the loop: its result (or the exception
    it raised) and the longest time the loop did not run."""
    import time

    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.get_running_loop().create_task(tick())
    while len(gaps) < 2:   # the ticker runs before the request starts
        await asyncio.sleep(0.01)
    try:
        outcome: Any = await request()
    except Exception as error:
        outcome = error
    count = len(gaps)
    while len(gaps) < count + 2:   # the tick after the request ends measures its gap
        await asyncio.sleep(0.01)
    ticker.cancel()
    return outcome, max(gaps)


@pytest.mark.slow
def test_the_async_transport_never_blocks_the_loop_when_no_host_set_comes(
        discovery: Discovery, backends: Hosts) -> None:
    # etcd is unreachable and stays so: the request must fail after the wait, and the loop
    # must run all along (the pick after the threaded wait must not wait again on the loop)
    discovery.store.disconnect()  # type: ignore[attr-defined]
    wait = 1.5

    async def main() -> tuple[Any, float]:
        transport = AsyncDiscoveryTransport(discovery, transport=httpx.MockTransport(backends),
                                            balancer_options={"wait": wait})
        async with httpx.AsyncClient(transport=transport) as http:
            return await longest_loop_gap(lambda: http.get("http://api/"))

    error, gap = asyncio.run(main())
    assert isinstance(error, httpx.ConnectError) and "'api'" in str(error)
    assert gap < wait / 2   # a loop blocked by the pick would show one gap of the whole wait


@pytest.mark.slow
def test_the_first_async_request_does_not_read_etcd_on_the_loop(backends: Hosts) -> None:
    # etcd answers, slowly: the first request's subscription reads the hosts at once, and
    # that read must not run on the event loop (a store on real time: hosts() reads in the
    # background, on the store's own thread)
    discovery = Discovery.in_memory()
    store = discovery.store
    store.put("/services/api/uuid-1", node(1, service_name="api").to_json().encode())
    slow = 1.5
    slow_reads(store, slow)   # this test's own store: nothing to undo

    async def main() -> tuple[Any, float]:
        transport = AsyncDiscoveryTransport(discovery, transport=httpx.MockTransport(backends),
                                            balancer_options={"wait": 10})
        async with httpx.AsyncClient(transport=transport) as http:
            return await longest_loop_gap(lambda: http.get("http://api/"))

    try:
        response, gap = asyncio.run(main())
    finally:
        discovery.close()
    assert response.text == "10.0.0.1:8080"
    assert gap < slow / 2   # a read on the loop would show one gap of the whole read


@pytest.mark.slow
def test_many_async_requests_while_etcd_is_down_fail_after_the_wait_not_in_turns(
        discovery: Discovery, backends: Hosts) -> None:
    # 200 requests at once while etcd is down: each must fail after about `wait`, not queue
    # for the worker threads (anyio lends 40 at a time: 5 rounds of `wait`)
    import time

    discovery.store.disconnect()  # type: ignore[attr-defined]
    wait = 1.0

    async def main() -> tuple[list[object], float]:
        transport = AsyncDiscoveryTransport(discovery, transport=httpx.MockTransport(backends),
                                            balancer_options={"wait": wait})
        async with httpx.AsyncClient(transport=transport) as http:
            started = time.monotonic()
            outcomes = await asyncio.gather(*(http.get("http://api/") for _ in range(200)),
                                            return_exceptions=True)
            return outcomes, time.monotonic() - started

    outcomes, took = asyncio.run(main())
    assert all(isinstance(outcome, httpx.ConnectError) for outcome in outcomes)
    assert took < 3 * wait, took


def test_a_cancelled_async_request_is_counted_out_and_ejects_nothing(
        scheduler: TestScheduler, discovery: Discovery) -> None:
    discovery.register("api", node(1), ttl=5)
    discovery.register("api", node(2), ttl=5)

    async def main() -> tuple[dict[str, int], frozenset[str]]:
        sent = asyncio.Event()

        async def never_answers(request: httpx.Request) -> httpx.Response:
            sent.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        transport = AsyncDiscoveryTransport(discovery, transport=httpx.MockTransport(
            never_answers), policy="least_requests", balancer_options={"scheduler": scheduler})
        balancer = transport.router.balancer("api")
        scheduler.advance_by(1)
        async with httpx.AsyncClient(transport=transport) as http:
            task = asyncio.get_running_loop().create_task(http.get("http://api/"))
            await sent.wait()
            assert sum(balancer.in_flight.values()) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return balancer.in_flight, balancer.ejected

    assert asyncio.run(main()) == ({}, frozenset())


def test_a_streamed_response_closed_unread_is_counted_out(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    http = client(scheduler, discovery, backends, node(1), policy="least_requests")
    balancer = http._transport.router.balancer("api")  # type: ignore[attr-defined]
    with http.stream("GET", "http://api/stream"):
        assert balancer.in_flight == {"uuid-1": 1}
    assert balancer.in_flight == {} and balancer.ejected == frozenset()


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_the_first_request_fails_within_the_wait_when_etcd_does_not_answer(
        discovery: Discovery, backends: Hosts, flavour: str) -> None:
    # etcd unreachable without refusing (a lost route): its read takes the call timeout, then
    # fails. The documented bound of a request waiting for the first host set is `wait`,
    # counted from the request, not `wait` after that read
    import time

    discovery.store.disconnect()  # type: ignore[attr-defined]
    slow_reads(discovery.store, 2.0)
    wait = 2.0

    def sync() -> object:
        transport = DiscoveryTransport(discovery, transport=httpx.MockTransport(backends),
                                       balancer_options={"wait": wait})
        with httpx.Client(transport=transport) as http:
            try:
                return http.get("http://api/")
            except httpx.ConnectError as error:
                return error

    async def run_async() -> object:
        transport = AsyncDiscoveryTransport(discovery, transport=httpx.MockTransport(backends),
                                            balancer_options={"wait": wait})
        async with httpx.AsyncClient(transport=transport) as http:
            try:
                return await http.get("http://api/")
            except httpx.ConnectError as error:
                return error

    started = time.monotonic()
    outcome = sync() if flavour == "sync" else asyncio.run(run_async())
    took = time.monotonic() - started
    assert isinstance(outcome, httpx.ConnectError), outcome
    assert f"within {wait:g} s" in str(outcome)
    assert took < wait + 1.0, took   # the read and then a whole wait: 2 * wait


def test_a_relative_redirect_goes_through_the_service_again(
        scheduler: TestScheduler, discovery: Discovery, backends: Hosts) -> None:
    """The caller's request keeps its service URL, so httpx resolves a relative Location
    against ``http://api/``: the redirect is balanced (and retried) like any request, with
    the credentials of the host it goes to, not those of the host that redirected."""
    http = client(scheduler, discovery, backends, node(1, user="one", password="pw1"),
                  node(2, user="two", password="pw2"))
    response = http.get("http://api/redirect", follow_redirects=True)
    assert response.status_code == 200
    assert str(response.url) == "http://api/after-redirect"
    assert [str(r.url) for r in response.history] == ["http://api/redirect"]
    first, second = backends.seen
    assert {first.url.host, second.url.host} == {"10.0.0.1", "10.0.0.2"}  # round robin
    for sent in backends.seen:
        user = {"10.0.0.1": "one:pw1", "10.0.0.2": "two:pw2"}[str(sent.url.host)]
        assert sent.headers["Authorization"] == (
            "Basic " + base64.b64encode(user.encode()).decode())
        assert sent.headers["Host"] == f"{sent.url.host}:8080"
    assert response.extensions["rx_discovery.host"].uuid in ("uuid-1", "uuid-2")
    assert response.extensions["rx_discovery.host"].private_hostname == second.url.host
