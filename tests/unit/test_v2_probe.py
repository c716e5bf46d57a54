"""The v2 watch's idle probe (``/health?serializable=true``) on the answers a member, or a
proxy in front of it, can give: which ones end the poll (the watch fails over) and which keep
it open. Server-free: httpx's MockTransport answers."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from rx_discovery._errors import StoreUnavailable
from rx_discovery.config import Settings, parse_endpoint
from rx_discovery.health import HealthTracker
from rx_discovery.store.v2.http import V2Http
from rx_discovery.store.v2.watch import Watch

ENDPOINT = parse_endpoint("http://etcd-a:2379")


def probe(status: int, body: bytes, content_type: str = "application/json") -> None:
    """Run the probe against an answer of ``status`` and ``body``."""
    http = V2Http(Settings(endpoints=(ENDPOINT,)), HealthTracker("t", unavailable_after=3600))
    watch = Watch.__new__(Watch)
    watch._http = http

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/health"
        return httpx.Response(status, content=body, headers={"Content-Type": content_type})

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            await watch._probe(client, ENDPOINT)

    asyncio.run(run())


def test_a_healthy_member_and_a_cluster_wide_alarm_keep_the_poll_open() -> None:
    probe(200, b'{"health":"true","reason":""}')
    # NOSPACE: every member says so; moving elsewhere would not help
    probe(503, b'{"health":"false","reason":"ALARM NOSPACE"}')


def test_a_member_without_a_leader_ends_the_poll() -> None:
    with pytest.raises(StoreUnavailable, match="no leader"):
        probe(503, b'{"health":"false","reason":"RAFT NO LEADER"}')


@pytest.mark.parametrize("body", [
    # etcd 3.5.1 just cut off: its quorum read times out before it notices the leader is gone
    # (and it ignores serializable=true); an etcd without reasons (3.4) says only "false"
    b'{"health":"false","reason":"QGET ERROR: request timed out"}',
    b'{"health":"false"}',
])
def test_a_member_unhealthy_for_any_reason_but_an_alarm_ends_the_poll(body: bytes) -> None:
    with pytest.raises(StoreUnavailable, match="cut off"):
        probe(503, body)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_proxy_saying_the_member_is_unavailable_ends_the_poll(status: int) -> None:
    """A proxy in front of a frozen member answers the probe itself (503 from a health-checked
    pool, 502/504): not etcd's health document, so no reason to think the member is fine."""
    with pytest.raises(StoreUnavailable):
        probe(status, b"<html><body><h1>503 Service Unavailable</h1></body></html>",
              "text/html")
