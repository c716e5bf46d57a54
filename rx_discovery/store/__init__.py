"""The one port to a key-value store with revisions, leases and watches.

Two adapters implement it: :mod:`rx_discovery.store.etcd` (a real etcd v3 cluster; the only
module that imports ``etcd3``/``grpc``) and :mod:`rx_discovery.store.memory` (in memory, on a
reactivex scheduler, for tests). Everything above this package talks to :class:`Store` only.

Calls are synchronous: the etcd adapter blocks on the network (with a deadline) and raises
:class:`~rx_discovery.StoreUnavailable` when it cannot reach a member; the memory store
answers at once. Retrying is the caller's job (see ``rx_discovery._retry``), so both adapters
stay thin and behave the same.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import reactivex

from rx_discovery.health import Health

__all__ = ["EventType", "KeyValue", "Lease", "Snapshot", "Store", "WatchEvent", "WatchResponse",
           "read_prefixes"]


class KeyValue(NamedTuple):
    """One stored key, as etcd's ``mvccpb.KeyValue`` (a named tuple: one is built per key
    read, so construction must be cheap)."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The result of a prefix read: every key under the prefix at ``revision``."""

    revision: int
    items: tuple[KeyValue, ...]


class EventType(enum.Enum):
    """Kind of a watch event."""

    PUT = "put"
    DELETE = "delete"


class WatchEvent(NamedTuple):
    """One change of one key. For a DELETE, ``value`` is empty and ``mod_revision`` is the
    revision of the deletion. (A named tuple: one is built per event.)"""

    type: EventType
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WatchResponse:
    """One batch of events from a watch: one or more whole revisions (a transaction is never
    split across responses), in order; ``revision`` is the revision of the last event.

    ``events`` may be empty: a progress notification, saying that nothing under the prefix
    changed up to ``revision`` (the store's revision).
    """

    revision: int
    events: tuple[WatchEvent, ...]


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease."""

    id: int
    ttl: int


@runtime_checkable
class Store(Protocol):
    """What rx-discovery needs from a key-value store.

    Every method may raise :class:`~rx_discovery.StoreUnavailable` (retry later) or
    :class:`~rx_discovery.AuthenticationFailed`; lease methods may raise
    :class:`~rx_discovery.LeaseNotFound`.
    """

    def get_prefix(self, prefix: str) -> Snapshot:
        """Every key starting with ``prefix``, sorted by key, and the store's revision."""
        ...

    def get(self, key: str) -> KeyValue | None:
        """One key, or None."""
        ...

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write ``key``; attach it to ``lease`` when not 0. Returns the new revision.

        Raises:
            LeaseNotFound: ``lease`` does not exist (expired or revoked).
        """
        ...

    def delete(self, key: str) -> int:
        """Delete ``key`` if present. Returns the store's revision after the call."""
        ...

    def grant(self, ttl: int) -> Lease:
        """Grant a lease of ``ttl`` seconds (the store may round it up, as etcd does to 2)."""
        ...

    def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; returns its remaining TTL in seconds.

        Raises:
            LeaseNotFound: the lease expired or was revoked.
        """
        ...

    def revoke(self, lease: int) -> None:
        """Revoke ``lease``, deleting its keys at once. A missing lease is not an error."""
        ...

    def watch(self, prefix: str, start_revision: int, *, exact: bool = False
              ) -> reactivex.Observable[WatchResponse]:
        """Every change under ``prefix`` from ``start_revision`` on, in revision order; with
        ``exact``, the changes of the key ``prefix`` alone (a service key must not see
        ``/services_infos/{name}-x``).

        The observable is cold: each subscription opens its own watch; disposing it cancels the
        watch. It never completes on its own; it fails with
        :class:`~rx_discovery.RevisionCompacted` when ``start_revision`` was compacted and with
        :class:`~rx_discovery.StoreUnavailable` when the connection is lost. Events are emitted
        on the adapter's own thread (the etcd adapter's watch reader thread; the memory store's
        scheduler).
        """
        ...

    @property
    def health(self) -> reactivex.Observable[Health]:
        """The connection state: the current :class:`~rx_discovery.health.Health` at once, then
        every change (see :class:`~rx_discovery.health.HealthTracker`), outside every lock."""
        ...

    def close(self) -> None:
        """Release connections and cancel watches (health becomes CLOSED). Idempotent."""
        ...


def read_prefixes(store: Store, prefixes: Sequence[str]) -> list[Snapshot]:
    """:meth:`Store.get_prefix` of each prefix, in order: in bulk when the store has a
    ``get_prefixes`` (etcd: many ranges in one transaction, one round trip, one revision),
    else one read after the other (each snapshot has its own revision).

    Raises:
        StoreError: as ``get_prefix``; a bulk read fails as a whole.
    """
    bulk = getattr(store, "get_prefixes", None)
    if bulk is not None:
        snapshots: list[Snapshot] = bulk(prefixes)
        return snapshots
    return [store.get_prefix(prefix) for prefix in prefixes]
