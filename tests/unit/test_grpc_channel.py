"""gRPC channel pieces that need no server: targets, arguments, no-host errors."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import slow_reads, wait_until
from reactivex.testing import TestScheduler

from rx_discovery import Discovery, Host, NoHostFound
from rx_discovery.grpc import DiscoveryChannel, target_of


def test_targets_are_ipv4_lists_or_ipv6_with_mapped_ipv4() -> None:
    assert target_of([("10.0.0.1", 50051), ("10.0.0.2", 50052)]) == \
        "ipv4:10.0.0.1:50051,10.0.0.2:50052"
    assert target_of([("::1", 1), ("10.0.0.2", 2)]) == "ipv6:[::1]:1,[::ffff:10.0.0.2]:2"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"port": ""}, "port"), ({"address": "internal"}, "address"), ({"shard": ""}, "shard"),
    ({"drain": -1}, "drain"), ({"wait": "soon"}, "wait"),
])
def test_bad_arguments_fail_at_once(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DiscoveryChannel(Discovery.in_memory(TestScheduler()), "api", **kwargs)


def test_the_channel_targets_the_hosts_with_the_port_and_follows_them() -> None:
    scheduler = TestScheduler()
    discovery = Discovery.in_memory(scheduler)
    with DiscoveryChannel(discovery, "api", wait=0) as channel:
        with pytest.raises(NoHostFound, match="arrived within"):
            channel.unary_unary("/x.Y/Z")(b"")
        a = discovery.register("api", Host(hostname="10.0.0.1", ports={"grpc": "7"}), ttl=5)
        discovery.register("api", Host(hostname="10.0.0.2", ports={"http": "8"}), ttl=5)
        discovery.register("api", Host(hostname="h", private_hostname="10.0.0.3",
                                       ports={"grpc": "1"}, private_ports={"grpc": "9"}), ttl=5)
        scheduler.advance_by(1)
        # sets are handled on the channel's own thread: wait for it (no etcd, no server)
        wait_until(lambda: channel.target == "ipv4:10.0.0.1:7,10.0.0.3:9", timeout=10)
        a.dispose()
        scheduler.advance_by(1)
        wait_until(lambda: channel.target == "ipv4:10.0.0.3:9", timeout=10)


@pytest.mark.slow
def test_creating_an_aio_channel_does_not_read_etcd_on_the_loop() -> None:
    # AioDiscoveryChannel is created on the event loop; subscribing to the hosts reads them
    # from etcd at once, and with a slow etcd that read must not block the loop
    import asyncio
    import time

    from rx_discovery.grpc import AioDiscoveryChannel

    # a store on real time: hosts() reads in the background, on the store's own thread
    discovery = Discovery.in_memory()
    store = discovery.store
    store.put("/services/api/u1", Host(hostname="10.0.0.1", ports={"grpc": "7"},
                                       service_name="api", uuid="u1").to_json().encode())
    slow = 1.5
    slow_reads(store, slow)   # this test's own store: nothing to undo

    async def main() -> tuple[str | None, float]:
        started = time.monotonic()
        channel = AioDiscoveryChannel(discovery, "api", wait=10)
        blocked = time.monotonic() - started   # how long the constructor held the loop
        async with channel:
            return channel.target, blocked

    try:
        target, blocked = asyncio.run(main())
    finally:
        discovery.close()
    assert target == "ipv4:10.0.0.1:7"
    assert blocked < slow / 2
