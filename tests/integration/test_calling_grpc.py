"""gRPC channels that follow a service, against 3 real gRPC servers (generic handlers, no
generated code), each registered by its own process on a real etcd: one SIGKILLed, one
stopped gracefully; sync and grpc.aio."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from calling import SERVICE, Backend, backend_factory, graceful_scenario, sigkill_scenario
from helpers import wait_until

from rx_discovery import Discovery, NoHostFound
from rx_discovery.balance import Balancer
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.grpc import AioDiscoveryChannel, DiscoveryChannel

__all__ = ["backend_factory"]  # a fixture

METHOD = "/test.Echo/Name"


@pytest.fixture
def discovery(etcd: EmbeddedEtcd, unique_prefix: str) -> Iterator[Discovery]:
    with Discovery(endpoints=[etcd.endpoint], prefix=unique_prefix) as d:
        yield d


@pytest.fixture
def follower(discovery: Discovery) -> Iterator[Balancer]:
    """The service's host set, as the scenarios watch it."""
    with discovery.balancer(SERVICE) as balancer:
        yield balancer


Caller = tuple[Callable[[], str], Callable[[], Any]]


@pytest.fixture(params=["sync", "asyncio"])
def caller(request: pytest.FixtureRequest, discovery: Discovery) -> Iterator[Caller]:
    """``(send, channel)``: one call of /test.Echo/Name; the channel object."""
    if request.param == "sync":
        with DiscoveryChannel(discovery, SERVICE, drain=2.0) as channel:
            name = channel.unary_unary(METHOD)
            yield (lambda: name(b"", timeout=10).decode()), (lambda: channel)
        return
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def make() -> AioDiscoveryChannel:
        return AioDiscoveryChannel(discovery, SERVICE, drain=2.0)

    aio = asyncio.run_coroutine_threadsafe(make(), loop).result(timeout=10)
    name = aio.unary_unary(METHOD)

    async def call() -> str:
        if not aio.target:
            await aio.wait_ready()
        return (await name(b"", timeout=10)).decode()  # type: ignore[no-any-return]

    try:
        yield (lambda: asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=30),
               lambda: aio)
    finally:
        asyncio.run_coroutine_threadsafe(aio.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def grpc_backends(factory: Callable[..., list[Backend]], *flags: str) -> list[Backend]:
    return factory(3, "--grpc", "--ttl", "3", *flags)


@pytest.mark.timeout(120)
def test_sigkilled_host_costs_no_call(caller: Caller, follower: Balancer,
                                      backend_factory: Callable[..., list[Backend]]) -> None:
    send, _ = caller
    backends = grpc_backends(backend_factory)
    # gRPC's round_robin skips the dead address by itself (its attempts are not ours to
    # count): what matters is that no call fails and traffic stays even
    sigkill_scenario(backends, follower, send, None)


@pytest.mark.timeout(120)
def test_graceful_stop_costs_no_call(caller: Caller, follower: Balancer,
                                     backend_factory: Callable[..., list[Backend]]) -> None:
    send, channel = caller
    backends = grpc_backends(backend_factory, "--drain", "1.5")
    graceful_scenario(backends, follower, send, None)
    live = sorted(f"127.0.0.1:{b.port}" for b in backends[1:])
    wait_until(lambda: channel().target == "ipv4:" + ",".join(live),
               message="the channel rebuilt on the two live hosts")


def test_old_channels_are_closed_after_a_rebuild(
        discovery: Discovery, backend_factory: Callable[..., list[Backend]]) -> None:
    with DiscoveryChannel(discovery, SERVICE) as channel:
        grpc_backends(backend_factory)
        wait_until(lambda: (channel.target or "").count(",") == 2, message="3 hosts")
        name = channel.unary_unary(METHOD)
        assert name(b"", timeout=10) in {b"b0", b"b1", b"b2"}
        grpc_backends(backend_factory)
        wait_until(lambda: (channel.target or "").count(",") == 5, message="6 hosts")
        assert name(b"", timeout=10)
        wait_until(lambda: len(channel._generations) == 1, message="old channels closed")


def test_a_call_in_flight_on_a_replaced_channel_finishes(
        discovery: Discovery, backend_factory: Callable[..., list[Backend]]) -> None:
    with DiscoveryChannel(discovery, SERVICE, drain=30) as channel:
        backend_factory(1, "--grpc")
        # registered; the channel follows once the watch delivers it (an empty set is "no
        # host", at once, by design)
        wait_until(lambda: channel.target, message="the channel on the first host")
        future = channel.unary_unary("/test.Echo/Slow").future(b"1.5", timeout=20)
        old = channel._current
        backend_factory(1, "--grpc")     # a second host: the channel is rebuilt
        wait_until(lambda: channel._current is not old, message="a rebuild")
        assert old is not None and old.retired and not old.closed
        assert future.result(timeout=20) == b"b0"   # not cancelled by the rebuild
        wait_until(lambda: old.closed, message="the old channel closed once idle")


def test_no_host_is_a_clear_error(discovery: Discovery) -> None:
    with DiscoveryChannel(discovery, "nobody", wait=10) as channel, \
            pytest.raises(NoHostFound, match="no host of service 'nobody'"):
        channel.unary_unary(METHOD)(b"")


def test_a_module_named_grpc_in_the_package_does_not_shadow_grpcio() -> None:
    import rx_discovery.grpc
    import rx_discovery.store.etcd as etcd_store

    assert grpc.insecure_channel is not None and hasattr(grpc, "aio")
    assert rx_discovery.grpc.grpc is grpc
    assert getattr(etcd_store, "grpc", grpc) is grpc


RETRY_UNAVAILABLE = json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": {
    "maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s", "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"]}}]})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("retry", [False, True])
def test_calls_in_flight_on_a_sigkilled_server(
        discovery: Discovery, backend_factory: Callable[..., list[Backend]],
        retry: bool) -> None:
    # what the README says of calls in flight when a server is SIGKILLed: they fail with
    # UNAVAILABLE (gRPC cannot know whether the server ran them), unless the caller declares
    # its methods retryable with a retryPolicy in the channel's service config
    options = [("grpc.service_config", RETRY_UNAVAILABLE)] if retry else []
    with DiscoveryChannel(discovery, SERVICE, options=options) as channel:
        backends = grpc_backends(backend_factory)
        wait_until(lambda: (channel.target or "").count(",") == 2, message="3 hosts")
        slow = channel.unary_unary("/test.Echo/Slow")
        wait_until(lambda: {slow(b"0", timeout=10) for _ in range(6)} ==
                   {b"b0", b"b1", b"b2"}, message="every backend answering")
        futures = [slow.future(b"3", timeout=30) for _ in range(6)]
        time.sleep(1.0)   # the calls reach the servers (one that has not is retried by gRPC)
        backends[0].process.kill()
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=60).decode())
            except grpc.RpcError as error:
                outcomes.append(error.code().name)
    if retry:   # those on b0 were retried on the live ones
        assert set(outcomes) <= {"b1", "b2"}, outcomes
    else:       # those on b0 failed (one not sent yet by the kill would have been retried)
        assert set(outcomes) <= {"b1", "b2", "UNAVAILABLE"}, outcomes


def test_multicallables_of_one_method_keep_their_own_serializers(
        discovery: Discovery, backend_factory: Callable[..., list[Backend]]) -> None:
    # two stubs may call the same method with different (de)serializers: each must get its
    # own, not the one of whichever was called first on the underlying channel
    with DiscoveryChannel(discovery, SERVICE) as channel:
        backend_factory(1, "--grpc")
        wait_until(lambda: channel.target, message="the channel on the host")
        raw = channel.unary_unary(METHOD)
        text = channel.unary_unary(METHOD, response_deserializer=lambda data: data.decode())
        assert raw(b"", timeout=10) == b"b0"
        assert text(b"", timeout=10) == "b0"


def test_aio_multicallables_of_one_method_keep_their_own_serializers(
        discovery: Discovery, backend_factory: Callable[..., list[Backend]]) -> None:
    backend_factory(1, "--grpc")

    async def main() -> tuple[Any, Any]:
        async with AioDiscoveryChannel(discovery, SERVICE) as channel:
            raw = channel.unary_unary(METHOD)
            text = channel.unary_unary(METHOD,
                                       response_deserializer=lambda data: data.decode())
            return await raw(b"", timeout=10), await text(b"", timeout=10)

    assert asyncio.run(main()) == (b"b0", "b0")
