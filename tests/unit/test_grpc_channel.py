"""gRPC channel pieces that need no server: targets, arguments, no-host errors."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import wait_until
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
