"""Keys and watch events between etcd's protobuf messages and the Store port's types."""

from __future__ import annotations

from typing import Any

from etcd3.etcdrpc import kv_pb2, rpc_pb2
from google.protobuf import unknown_fields  # type: ignore[import-untyped]

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


# python3-etcd3's generated messages predate etcd 3.4's watch fragmentation: the request flag
# (WatchCreateRequest.fragment = 8) is appended as raw bytes, and the answer's
# (WatchResponse.fragment = 7) is read from the unknown fields, which protobuf keeps.
# The same holds for the client-chosen watch id (WatchCreateRequest.watch_id = 7, etcd 3.4+).
_FRAGMENT_FLAG = bytes([8 << 3, 1])  # field 8, varint, true
_WATCH_ID_TAG = bytes([7 << 3])  # field 7, varint
# WatchRequest's create_request (field 1) and cancel_request (field 2), length-delimited
_CREATE_REQUEST_TAG = bytes([1 << 3 | 2])
_CANCEL_REQUEST_TAG = bytes([2 << 3 | 2])
_RESPONSE_FRAGMENT_FIELD = 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def watch_create_request(key: bytes, range_end: bytes, start_revision: int,
                         watch_id: int = 0) -> bytes:
    """A serialized ``WatchRequest`` creating a watch of ``[key, range_end)`` from
    ``start_revision``, with progress notifications, and fragmented answers: etcd then splits
    a response larger than its request limit (1.5 MiB) into fragments instead of sending one
    huge message.

    ``watch_id`` (> 0) names the watch on its stream: etcd then answers every response of it,
    its refusal included, with that id (with ids chosen by the server, a refused creation
    carries no id, and only the order of the answers tells which watch it was).

    Bytes, not a message: thousands of watches created at once (services subscribed together)
    wait in the stream's queue as ~60-byte strings; as protobuf messages, each with an arena
    of its own, they left ~0.8 KB of heap per watch behind after they were sent."""
    create: bytes = rpc_pb2.WatchCreateRequest(key=key, range_end=range_end,
                                               start_revision=start_revision,
                                               progress_notify=True).SerializeToString()
    create += _FRAGMENT_FLAG + (_WATCH_ID_TAG + _varint(watch_id) if watch_id else b"")
    return _CREATE_REQUEST_TAG + _varint(len(create)) + create


def watch_cancel_request(watch_id: int) -> bytes:
    """A serialized ``WatchRequest`` cancelling the watch ``watch_id`` of its stream."""
    cancel: bytes = rpc_pb2.WatchCancelRequest(watch_id=watch_id).SerializeToString()
    return _CANCEL_REQUEST_TAG + _varint(len(cancel)) + cancel


def is_fragment(response: Any) -> bool:
    """True when a watch response is a fragment, to be joined with the ones that follow it up
    to the first that is not."""
    return any(field.field_number == _RESPONSE_FRAGMENT_FIELD and field.data
               for field in unknown_fields.UnknownFieldSet(response))
