"""Keys and watch events between etcd's protobuf messages and the Store port's types."""

from __future__ import annotations

from typing import Any

from etcd3.etcdrpc import kv_pb2

from rx_discovery.store import EventType, KeyValue, WatchEvent, WatchResponse

_DELETE = kv_pb2.Event.DELETE


def _encode(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """``(key, range_end)`` selecting every key that starts with ``prefix`` (as etcd's Go
    client: the empty prefix selects every key)."""
    start = _encode(prefix)
    if not start:
        return b"\x00", b"\x00"
    end = bytearray(start)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return start, b"\x00"  # no upper bound
    end[-1] += 1
    return start, bytes(end)


def _key_value(kv: Any) -> KeyValue:
    # positional: this runs once per key of every read (10,000 for a big service)
    return KeyValue(kv.key.decode("utf-8", "surrogateescape"), kv.value, kv.create_revision,
                    kv.mod_revision, kv.version, kv.lease)


_EVENT_TYPES = {_DELETE: EventType.DELETE}


def _watch_response(events: Any) -> WatchResponse:
    """One etcd watch response as one :class:`WatchResponse`: etcd packs many whole revisions
    into a response when a watch catches up on history; keeping them together lets the sync
    apply a burst as one change instead of one per revision. ``revision`` is the last event's
    (the header's may be ahead of what was delivered)."""
    kinds, put = _EVENT_TYPES, EventType.PUT
    converted = tuple(
        WatchEvent(kinds.get(event.type, put), kv.key.decode("utf-8", "surrogateescape"),
                   kv.value, kv.mod_revision, kv.create_revision, kv.version, kv.lease)
        for event in events for kv in (event.kv,))
    return WatchResponse(revision=converted[-1].mod_revision, events=converted)
