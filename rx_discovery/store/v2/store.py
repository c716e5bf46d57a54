"""The :class:`~rx_discovery.store.Store` port on etcd's v2 keys API, the Go package's protocol.

- Revisions are etcd's v2 index: ``X-Etcd-Index`` for reads, ``modifiedIndex`` for writes and
  events. Each write is its own index (v2 has no transactions).
- v2 has no leases: they are emulated here. :meth:`EtcdV2Store.grant` returns a local id; a
  put under it writes the key with ``ttl=``; :meth:`~EtcdV2Store.keepalive` refreshes every key
  of the lease with ``PUT ?ttl=T&refresh=true&prevExist=true`` (no value, so watchers see no
  change) and raises :class:`~rx_discovery.LeaseNotFound` when a key is gone (expired during
  an outage, deleted by someone), so the registration registers again; revoke deletes the
  keys. A lease without keys lives ``ttl`` seconds past its last refresh, as on v3.
- v2 is a tree: a key cannot be both a value and a directory, and keys whose last segment
  starts with ``_`` are hidden from listings.

Threads: calls block the caller's thread (up to ``Settings.timeout`` per endpoint tried);
watch long polls run on one event-loop thread, and every watch delivers on one delivery
thread.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import reactivex
from reactivex import abc
from reactivex.disposable import Disposable

from rx_discovery._errors import AuthenticationFailed, LeaseNotFound, StoreUnavailable
from rx_discovery.config import Settings
from rx_discovery.health import Health, HealthTracker
from rx_discovery.store import KeyValue, Lease, Snapshot, WatchResponse
from rx_discovery.store.v2.http import KEY_NOT_FOUND, V2Http
from rx_discovery.store.v2.watch import Watch, WatchLoop, directory_of

__all__ = ["EtcdV2Store"]

_MIN_TTL = 2  # as etcd v3 grants leases: at least 2 s
_REFRESHES_IN_FLIGHT = 16
"""Key refreshes of one keepalive batch sent at once: v2 refreshes each key with its own PUT;
one after another, a batch costs a round trip per key, and a few hundred keys (or a slow link)
outgrow ttl/3, so keys expire between refreshes."""


@dataclass
class _Lease:
    ttl: int
    deadline: float  # time.monotonic() after which a lease without keys has expired
    keys: set[str] = field(default_factory=set)


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every key (not directory) under a v2 node, depth first."""
    if node.get("dir"):
        for child in node.get("nodes") or ():
            yield from _nodes(child)
    else:
        yield node


class EtcdV2Store:
    """:class:`~rx_discovery.store.Store` over etcd's v2 keys API (httpx).

    Construction does no I/O. Every method is thread-safe.

    Threads: :meth:`watch` notifications are emitted on the store's one delivery thread.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._health = HealthTracker("etcd v2", own_thread=True)
        self._http = V2Http(settings, self._health)
        self._watches = WatchLoop(self._http)
        self._lock = threading.Lock()
        self._leases: dict[int, _Lease] = {}
        self._lease_of: dict[str, int] = {}
        self._ids = itertools.count(secrets.randbits(48) + 1)
        self._active: set[Watch] = set()
        self._refreshers: ThreadPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        endpoints = ",".join(e.url for e in self._settings.endpoints)
        return f"<EtcdV2Store {endpoints}{' closed' if self._closed else ''}>"

    # -- key-value ----------------------------------------------------------------------------

    def _key_value(self, node: dict[str, Any]) -> KeyValue:
        key = str(node["key"])
        modified = int(node.get("modifiedIndex", 0))
        created = int(node.get("createdIndex", modified))
        lease = self._lease_of.get(key, 0) if "expiration" in node else 0
        return KeyValue(key, str(node.get("value", "")).encode("utf-8", "surrogateescape"),
                        created, modified, 1 if created == modified else 0, lease)

    def get_prefix(self, prefix: str) -> Snapshot:
        """Every key starting with ``prefix``, sorted, and the v2 index of the read (one
        recursive GET of the directory holding them).

        Raises:
            StoreUnavailable: no endpoint answered within the timeout.
            AuthenticationFailed, PermissionDenied: refused.
        """
        answer = self._http.call("get_prefix", "GET", directory_of(prefix),
                                 params={"recursive": "true", "sorted": "true"},
                                 missing_ok=True)
        node = answer.body.get("node")
        items = [] if not node or answer.status >= 400 else [
            self._key_value(n) for n in _nodes(node) if str(n.get("key", "")).startswith(prefix)]
        items.sort(key=lambda kv: kv.key)
        return Snapshot(revision=answer.index, items=tuple(items))

    def get(self, key: str) -> KeyValue | None:
        """One key, or None (absent, or a directory)."""
        answer = self._http.call("get", "GET", key, missing_ok=True)
        node = answer.body.get("node")
        if answer.status >= 400 or not node or node.get("dir"):
            return None
        return self._key_value(node)

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write ``key`` (with the lease's TTL when ``lease`` is not 0; without one, any TTL
        is removed). Returns its ``modifiedIndex``.

        Raises:
            LeaseNotFound: ``lease`` expired or was revoked.
            ValueError: ``value`` is not UTF-8 (v2 stores text), before any I/O.
            StoreUnavailable, AuthenticationFailed...: as :meth:`get_prefix`.
        """
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"put {key}: etcd's v2 API stores text; the value is not "
                             "UTF-8") from None
        params: dict[str, str] = {}
        if lease:
            params["ttl"] = str(self._live_lease(lease, "put").ttl)
        answer = self._http.call("put", "PUT", key, params=params, form={"value": text})
        with self._lock:
            self._detach(key)
            entry = self._leases.get(lease) if lease else None
            if entry is not None:
                entry.keys.add(key)
                self._lease_of[key] = lease
        if lease and entry is None:  # revoked while we wrote: the key must not outlive it
            self._http.call("put", "DELETE", key, missing_ok=True)
            raise LeaseNotFound(f"put: lease {lease:x} was revoked meanwhile")
        return int(answer.body["node"]["modifiedIndex"])

    def delete(self, key: str) -> int:
        """Delete ``key`` if present. Returns the index of the deletion, else the current one."""
        with self._lock:
            self._detach(key)
        answer = self._http.call("delete", "DELETE", key, missing_ok=True)
        if answer.error_code == KEY_NOT_FOUND:
            return answer.index
        return int(answer.body["node"]["modifiedIndex"])

    # -- leases (emulated) --------------------------------------------------------------------

    def grant(self, ttl: int) -> Lease:
        """A local lease of ``ttl`` seconds (at least 2); no I/O."""
        ttl = max(_MIN_TTL, int(ttl))
        with self._lock:
            lease = next(self._ids)
            self._leases[lease] = _Lease(ttl, time.monotonic() + ttl)
        return Lease(id=lease, ttl=ttl)

    def keepalive(self, lease: int) -> int:
        """Refresh the TTL of every key of ``lease`` (no change event); returns the TTL.

        Raises:
            LeaseNotFound: the lease is unknown, or one of its keys is gone (the lease is
                then dropped: its other keys expire by themselves).
            StoreUnavailable, AuthenticationFailed...: as :meth:`get_prefix`.
        """
        entry = self._live_lease(lease, "keepalive")
        params = {"ttl": str(entry.ttl), "refresh": "true", "prevExist": "true"}
        with self._lock:
            keys = sorted(entry.keys)
        for key in keys:
            answer = self._http.call("keepalive", "PUT", key, params=params, missing_ok=True)
            if answer.error_code == KEY_NOT_FOUND:
                self._drop(lease)
                raise LeaseNotFound(f"keepalive: lease {lease:x}: its key {key} is gone")
        entry.deadline = time.monotonic() + entry.ttl
        return entry.ttl

    def keepalive_many(self, leases: Sequence[int]) -> dict[int, Exception | None]:
        """Refresh many leases, up to ``_REFRESHES_IN_FLIGHT`` key refreshes at once. Used by
        the lease keeper. Once etcd is found unreachable, the refreshes not started yet fail
        with the same error at once (they would only wait for timeouts).

        Returns:
            ``lease -> None`` when refreshed, else the error (LeaseNotFound, StoreUnavailable...).
        """
        unreachable: list[Exception] = []

        def refresh(lease: int) -> Exception | None:
            if unreachable:
                return unreachable[0]
            try:
                self.keepalive(lease)
            except (LeaseNotFound, AuthenticationFailed) as error:
                return error
            except Exception as error:
                unreachable.append(error)
                return error
            return None

        with self._lock:
            if self._refreshers is None and not self._closed:
                self._refreshers = ThreadPoolExecutor(
                    _REFRESHES_IN_FLIGHT, thread_name_prefix="rx-discovery-v2-keepalive")
            refreshers = self._refreshers
        try:
            if refreshers is None:
                raise RuntimeError("closed")
            return dict(zip(leases, refreshers.map(refresh, leases), strict=True))
        except (RuntimeError, CancelledError):  # closed meanwhile: the pool takes no more work
            return dict.fromkeys(leases, StoreUnavailable("keepalive: the store is closed"))

    def revoke(self, lease: int) -> None:
        """Delete the keys of ``lease`` and forget it. A missing lease is not an error."""
        for key in self._drop(lease):
            self._http.call("revoke", "DELETE", key, missing_ok=True)

    def _live_lease(self, lease: int, operation: str) -> _Lease:
        with self._lock:
            entry = self._leases.get(lease)
            if entry is not None and not entry.keys and time.monotonic() > entry.deadline:
                self._leases.pop(lease)
                entry = None
        if entry is None:
            raise LeaseNotFound(f"{operation}: lease {lease:x} not found (expired or revoked)")
        return entry

    def _drop(self, lease: int) -> list[str]:
        with self._lock:
            entry = self._leases.pop(lease, None)
            keys = sorted(entry.keys) if entry is not None else []
            for key in keys:
                self._lease_of.pop(key, None)
        return keys

    def _detach(self, key: str) -> None:
        """Under the lock: ``key`` no longer belongs to a lease."""
        old = self._lease_of.pop(key, None)
        if old is not None and old in self._leases:
            self._leases[old].keys.discard(key)

    # -- watch --------------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, *, exact: bool = False
              ) -> reactivex.Observable[WatchResponse]:
        """Changes under ``prefix`` from index ``start_revision`` on (0: from now), one event
        per response, by long polls of the directory holding the prefix; with ``exact``, the
        changes of the key ``prefix`` alone, by long polls of that key.

        Emits an empty response (progress) for an event of that directory outside the prefix.
        Fails with :class:`~rx_discovery.RevisionCompacted` when ``start_revision`` is older
        than etcd's last 1,000 events (or a directory of the prefix vanished), with
        :class:`~rx_discovery.StoreUnavailable` when the member is lost; never completes.

        Threads: every subscription delivers on the store's one delivery thread, in order.
        """
        def subscribe(observer: abc.ObserverBase[WatchResponse],
                      scheduler: abc.SchedulerBase | None = None) -> abc.DisposableBase:
            watch = Watch(self._http, self._watches, prefix, start_revision, observer, exact)
            with self._lock:
                self._active.add(watch)
            watch.start()

            def dispose() -> None:
                with self._lock:
                    self._active.discard(watch)
                watch.dispose()

            return Disposable(dispose)

        return reactivex.create(subscribe)

    @property
    def health(self) -> reactivex.Observable[Health]:
        """The connection state, from the outcome of every call and poll."""
        return self._health.observable

    def close(self) -> None:
        """Cancel every watch and close the connections (leases are left to expire).
        Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watches, self._active = list(self._active), set()
            refreshers, self._refreshers = self._refreshers, None
        if refreshers is not None:
            refreshers.shutdown(wait=False, cancel_futures=True)
        for watch in watches:
            watch.dispose()
        self._watches.close()
        self._health.closed()

    def __enter__(self) -> EtcdV2Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
