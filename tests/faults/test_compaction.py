"""Compaction (physical) and defragmentation while a watcher is cut off from etcd.

The watcher cannot resume from its last revision + 1 (compacted away): it re-reads the prefix
and emits the difference of the gap as ordinary changes flagged ``resync``: hosts that appeared
are ``new``, vanished ones ``down``, changed ones ``update``; a host that came and went within
the gap is not invented. The stream then goes on live (no ``resync`` flag).
"""

from __future__ import annotations

import dataclasses

from faultkit import healthy_stream, host, raw_client, replay, subscribe, truth
from helpers import wait_until

from rx_discovery import Discovery, RegistrationStatus
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.testing import TcpProxy

SERVICE = "svc"
PREFIX = f"/services/{SERVICE}/"


def kinds(recorder: object) -> set[tuple[str, str]]:
    return {(e.kind, e.uuid) for e in recorder.items}  # type: ignore[attr-defined]


def test_compaction_and_defrag_during_an_outage_resync_the_difference() -> None:
    with EmbeddedEtcd(name="compaction") as server, \
            TcpProxy(server.client_port) as proxy, \
            Discovery(server.endpoint) as writer, \
            Discovery(proxy.endpoint, timeout=2) as watcher:
        raw = raw_client(server.endpoint)
        try:
            stays = writer.register(SERVICE, host("stays")).wait(10)
            goes = writer.register(SERVICE, host("goes")).wait(10)
            changer = host("changer", uuid="changer")
            raw.put(PREFIX + "changer", changer.to_json())

            changes = subscribe(watcher.changes(SERVICE))
            events = subscribe(watcher.events(SERVICE))
            sets = subscribe(watcher.hosts(SERVICE))
            wait_until(lambda: changes.items and sets.items, message="first snapshot")
            assert set(changes.items[0].items) == {stays.uuid, goes.uuid, "changer"}

            proxy.cut()  # the watcher loses its network; the writer does not
            goes.dispose()
            newcomer = writer.register(SERVICE, host("newcomer")).wait(10)
            transient = writer.register(SERVICE, host("transient")).wait(10)
            transient.dispose()
            raw.put(PREFIX + "changer",
                    dataclasses.replace(changer, ports={"http": "9999"}).to_json())
            revision = raw.put("/unrelated", b"x").header.revision
            raw.compact(revision, physical=True)
            raw.defragment()
            assert raw.get(stays.key)[0] is not None  # defragment kept the data
            proxy.restore()

            gap = {("down", goes.uuid), ("new", newcomer.uuid), ("update", "changer")}
            wait_until(lambda: kinds(events) == gap, timeout=15,
                       message="the gap's difference")
            assert all(e.resync for e in events.items)
            resyncs = [c for c in changes.items[1:] if c.resync]
            assert len(resyncs) == 1 and resyncs[0].revision >= revision
            assert sets.items[-1]["changer"].ports == {"http": "9999"}
            assert set(sets.items[-1]) == set(truth(raw, PREFIX)) == {
                stays.uuid, newcomer.uuid, "changer"}

            # the watch goes on live after the resync
            late = writer.register(SERVICE, host("late")).wait(10)
            wait_until(lambda: ("new", late.uuid) in kinds(events), timeout=5)
            assert not events.items[-1].resync
            assert set(replay(changes.items)) == set(truth(raw, PREFIX))
            assert stays.current_status is RegistrationStatus.REGISTERED
        finally:
            raw.close()
        assert all(map(healthy_stream, (changes, events, sets)))
