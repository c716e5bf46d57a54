"""Helpers of the fault tests: raw etcd access (the truth), recorders, and the gap-free check.

The truth is always read with a raw client (python3-etcd3 or its generated gRPC stubs), never
through rx-discovery. ``assert_gap_free`` compares what a subscriber of
``Discovery.changes(service)`` saw with etcd's own history of the service's prefix, replayed
from the subscriber's first snapshot: same revisions, same hosts added/updated/removed, in the
same order, nothing missing and nothing repeated.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import etcd3
import grpc
from etcd3.etcdrpc import kv_pb2
from helpers import Recorder, wait_until

from rx_discovery import Change, Host

# A raw client must reconnect at once after a restart and must not share a subchannel (and its
# backoff) with the library's clients (ETCD-CLIENT-NOTES.md, item 9).
RAW_GRPC_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def address(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def raw_client(endpoint: str, **kwargs: Any) -> etcd3.Etcd3Client:
    """A fresh python3-etcd3 client (build one after each restart: a client marks its only
    endpoint failed after one UNAVAILABLE)."""
    host, port = address(endpoint)
    return etcd3.client(host=host, port=port, timeout=5, grpc_options=RAW_GRPC_OPTIONS,
                        **kwargs)


def host(n: int | str, **fields: Any) -> Host:
    return Host(hostname=f"host-{n}.test", ports={"http": "8080"}, **fields)


def subscribe(observable: Any) -> Recorder:
    recorder = Recorder()
    recorder.subscription = observable.subscribe(recorder)
    return recorder


def healthy_stream(recorder: Recorder) -> bool:
    return recorder.error is None and not recorder.completed


# -- the truth --------------------------------------------------------------------------------

def truth(raw: etcd3.Etcd3Client, prefix: str, revision: int | None = None
          ) -> dict[str, tuple[bytes, int]]:
    """``uuid -> (value, lease id)`` of every key directly under ``prefix`` (now, or as of
    ``revision``)."""
    found: dict[str, tuple[bytes, int]] = {}
    extra = {} if revision is None else {"revision": revision}
    for value, meta in raw.get_prefix(prefix, **extra):
        found[meta.key.decode()[len(prefix):]] = (value, meta.lease_id)
    return found


def live_lease(raw: etcd3.Etcd3Client, key: str) -> bool:
    """True when ``key`` exists and its lease has TTL > 0."""
    value, meta = raw.get(key)
    if value is None or not meta.lease_id:
        return False
    return bool(raw.get_lease_info(meta.lease_id).TTL > 0)


def history(endpoint: str, prefix: str, start_revision: int, timeout: float = 10.0
            ) -> tuple[list[tuple[int, list[tuple[str, bytes | None]]]], int]:
    """etcd's history of ``prefix`` from ``start_revision`` to now, as
    ``[(revision, [(key, value or None for a delete), ...]), ...]``, and "now" (a revision).

    Read over a raw gRPC watch (generated stubs). To know where "now" is, a sentinel key just
    outside ``prefix`` (``prefix`` without its trailing ``/`` + ``~sentinel``) is written first
    and the watch covers both.
    """
    raw = raw_client(endpoint)
    try:
        sentinel = prefix.rstrip("/") + "~sentinel"
        end = raw.put(sentinel, b"x").header.revision
    finally:
        raw.close()
    root = prefix.rstrip("/")
    range_end = root[:-1] + chr(ord(root[-1]) + 1)
    host, port = address(endpoint)
    channel = grpc.insecure_channel(f"{host}:{port}", options=RAW_GRPC_OPTIONS)
    requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
    requests.put(etcd3.etcdrpc.WatchRequest(create_request=etcd3.etcdrpc.WatchCreateRequest(
        key=root.encode(), range_end=range_end.encode(), start_revision=start_revision)))

    def request_stream() -> Iterator[Any]:
        while (request := requests.get()) is not None:
            yield request

    call = etcd3.etcdrpc.WatchStub(channel).Watch(request_stream(), timeout=timeout)
    by_revision: dict[int, list[tuple[str, bytes | None]]] = {}
    try:
        for response in call:
            assert response.compact_revision == 0, "history compacted: cannot check gaps"
            done = False
            for event in response.events:
                key = event.kv.key.decode()
                revision = event.kv.mod_revision
                if key == sentinel and revision >= end:
                    done = True
                if key.startswith(prefix):
                    value = None if event.type == kv_pb2.Event.DELETE else bytes(event.kv.value)
                    by_revision.setdefault(revision, []).append((key[len(prefix):], value))
            if done:
                break
    finally:
        call.cancel()
        requests.put(None)
        channel.close()
    return sorted(by_revision.items()), end


# -- the gap-free check -----------------------------------------------------------------------

Step = tuple[int, tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def steps_of(changes: Sequence[Change[Host]]) -> list[Step]:
    """``(revision, added, updated, removed)`` of each change after the first snapshot."""
    return [(c.revision, tuple(sorted(c.added)), tuple(sorted(c.updated)),
             tuple(sorted((c.removed or {}).keys()))) for c in changes[1:]]


def replay(changes: Sequence[Change[Host]]) -> dict[str, Host]:
    """Replay the changes over the first snapshot, checking every step: revisions strictly
    increase, an added host was absent, an updated or removed one was present, and the state
    after each step is exactly the state the change carries. Returns the final state."""
    assert changes, "no snapshot received"
    first = changes[0]
    assert first.initial, "the first change must be the snapshot"
    state = dict(first.items)
    last = first.revision
    for change in changes[1:]:
        assert not change.initial, f"a second snapshot at revision {change.revision}"
        assert change.revision > last, f"revision {change.revision} after {last}"
        last = change.revision
        for uuid in change.added:
            assert uuid not in state, f"{uuid} added twice (revision {change.revision})"
            state[uuid] = change.items[uuid]
        for uuid in change.updated:
            assert uuid in state, f"{uuid} updated but unknown (revision {change.revision})"
            state[uuid] = change.items[uuid]
        for uuid in change.removed or {}:
            assert uuid in state, f"{uuid} removed but unknown (revision {change.revision})"
            del state[uuid]
        assert state == dict(change.items), f"state diverged at revision {change.revision}"
    return state


def expected_steps(initial: Mapping[str, Host],
                   events: list[tuple[int, list[tuple[str, bytes | None]]]]) -> list[Step]:
    """The steps a gap-free subscriber must see, computed from etcd's history."""
    state = dict(initial)
    steps: list[Step] = []
    for revision, batch in events:
        before = dict(state)
        for uuid, value in batch:
            if value is None:
                state.pop(uuid, None)
            else:
                state[uuid] = Host.from_json(value)
        touched = {uuid for uuid, _ in batch}
        added = tuple(sorted(u for u in touched if u in state and u not in before))
        updated = tuple(sorted(u for u in touched
                               if u in state and u in before and state[u] != before[u]))
        removed = tuple(sorted(u for u in touched if u in before and u not in state))
        if added or updated or removed:
            steps.append((revision, added, updated, removed))
    return steps


def assert_gap_free(recorder: Recorder, endpoint: str, prefix: str,
                    timeout: float = 15.0) -> dict[str, Host]:
    """The changes ``recorder`` saw are exactly etcd's history of ``prefix`` since its first
    snapshot (waiting up to ``timeout`` for the subscriber to catch up with "now"), and
    replaying them up to "now" reproduces what etcd holds at that revision. Returns the
    replayed state."""
    assert healthy_stream(recorder), f"stream ended: {recorder.error!r}"
    changes = recorder.items
    first = changes[0]
    events, end = history(endpoint, prefix, first.revision + 1)
    expected = expected_steps(first.items, events)
    last_revision = expected[-1][0] if expected else first.revision

    def caught_up() -> bool:
        return bool(recorder.items[-1].revision >= last_revision)

    wait_until(caught_up, timeout=timeout, message=f"the subscriber reaching revision "
               f"{last_revision}")
    changes = recorder.items
    seen = [step for step in steps_of(changes) if step[0] <= last_revision]
    assert seen == expected, _diff_steps(seen, expected)
    replay(changes)  # every step consistent, to the last one seen
    state = replay([c for c in changes if c.revision <= end])
    raw = raw_client(endpoint)
    try:
        held = {uuid: Host.from_json(value)
                for uuid, (value, _) in truth(raw, prefix, revision=end).items()}
    finally:
        raw.close()
    assert state == held, f"replay differs from etcd at revision {end}"
    return state


def _diff_steps(seen: list[Step], expected: list[Step]) -> str:
    missing = [s for s in expected if s not in seen]
    extra = [s for s in seen if s not in expected]
    return f"changes differ from etcd's history: missing {missing[:5]}, unexpected {extra[:5]}"


class Churn:
    """A thread that registers and disposes hosts of ``service`` continuously: at most
    ``live`` at once, one operation every ``period`` seconds. :meth:`pause` parks it between
    two operations (returns once parked); :meth:`resume` lets it go on."""

    def __init__(self, discovery: Any, service: str, ttl: float, live: int = 4,
                 period: float = 0.05) -> None:
        self._discovery = discovery
        self._service = service
        self._ttl = ttl
        self._live_max = live
        self._period = period
        self._run = threading.Event()
        self._run.set()
        self._parked = threading.Event()
        self._stop = threading.Event()
        self.live: list[Any] = []
        self.operations = 0
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._loop, name="churn", daemon=True)

    def start(self) -> Churn:
        self._thread.start()
        return self

    def _loop(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                if not self._run.is_set():
                    self._parked.set()
                    self._run.wait(0.05)
                    continue
                self._parked.clear()
                if len(self.live) < self._live_max:
                    n += 1
                    self.live.append(self._discovery.register(
                        self._service, host(f"churn-{n}"), ttl=self._ttl))
                else:
                    self.live.pop(0).dispose()
                self.operations += 1
                self._stop.wait(self._period)
        except BaseException as error:  # reported by the test
            self.errors.append(error)

    def pause(self) -> None:
        self._run.clear()
        wait_until(self._parked.is_set, timeout=15, message="the churn thread parked")

    def resume(self) -> None:
        self._parked.clear()
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()
        self._thread.join(15)


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


def replay_events(initial: Mapping[str, Host], events: Sequence[Any]) -> dict[str, Host]:
    """Replay ``Discovery.events`` (HostEvent) over a snapshot, checking each one: revisions
    never decrease, ``new`` only for an absent host, ``down``/``update`` only for a present
    one. Returns the final state."""
    state = dict(initial)
    last = 0
    for event in events:
        assert event.revision >= last, f"event at revision {event.revision} after {last}"
        last = event.revision
        if event.kind == "new":
            assert event.uuid not in state, f"new {event.uuid} twice (revision {last})"
            state[event.uuid] = event.host
        elif event.kind == "update":
            assert event.uuid in state, f"update of unknown {event.uuid} (revision {last})"
            state[event.uuid] = event.host
        else:
            assert event.kind == "down", event.kind
            assert event.uuid in state, f"down of unknown {event.uuid} (revision {last})"
            del state[event.uuid]
    return state


def last(recorder: Recorder) -> Any:
    """The latest item of ``recorder`` (an empty dict before the first one)."""
    items = recorder.items
    return items[-1] if items else {}
