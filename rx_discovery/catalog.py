"""The whole deployment as one value: every service's hosts and service document.

``Discovery.catalog()`` keeps it from **one** etcd watch, of the range that holds both
``{prefix}/services/`` (hosts) and ``{prefix}/services_infos/`` (service documents): their
common prefix ``{prefix}/services``, whose other keys (``/servicesX``) the codec ignores. The
watch is a :class:`~rx_discovery.sync.PrefixSync` shared by every subscriber (gap-free, resumed
after reconnects, resynced after compaction, like a service's own streams); each subscriber
folds the shared changes into :class:`Catalog` values, in O(changed keys x log n) per change.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import reactivex
from immutables import Map
from reactivex import operators

from rx_discovery._errors import MalformedValue
from rx_discovery.hostset import HostSet
from rx_discovery.keys import Keyspace
from rx_discovery.model import Host, Service, decode_host, decode_service, host_id
from rx_discovery.sync import Change, Codec

__all__ = ["Catalog", "CatalogEntry", "catalog_codec", "catalog_prefix", "catalog_stream"]

Item = Host | Service


class CatalogEntry(NamedTuple):
    """One service of a :class:`Catalog`: its hosts (possibly none) and its service document
    (None while no service key is stored, or when it does not decode)."""

    hosts: HostSet
    service: Service | None


class Catalog(Mapping[str, CatalogEntry]):
    """Every service that has hosts or a service key, as of etcd :attr:`revision`: an
    immutable mapping ``service name -> CatalogEntry(hosts, service)``.

    Attributes:
        revision: the etcd revision the catalog reflects.
        changed: the names of the services whose entry this value changed (added, updated or
            removed; every name for a first catalog), sorted.

    Successive catalogs share their structure: an entry that did not change is the same
    object (its ``hosts.revision`` is the revision of the change that last touched it).
    Services iterate in no particular order; ``sorted(catalog)`` lists them by name.
    """

    __slots__ = ("_entries", "changed", "revision")

    def __init__(self, entries: Map[str, CatalogEntry], revision: int,
                 changed: tuple[str, ...] = ()) -> None:
        self._entries = entries
        self.revision = revision
        self.changed = changed

    def __getitem__(self, name: str) -> CatalogEntry:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def hosts(self, name: str) -> HostSet:
        """The hosts of ``name`` (an empty set when the service is not in the catalog)."""
        entry = self._entries.get(name)
        return entry.hosts if entry is not None else HostSet(name, (), self.revision)

    def __repr__(self) -> str:
        names = sorted(self._entries)
        shown = ", ".join(f"{name}: {len(self._entries[name].hosts)}" for name in names[:5])
        more = f", ... {len(names) - 5} more" if len(names) > 5 else ""
        return f"Catalog(revision={self.revision}, {len(names)} services {{{shown}{more}}})"


def catalog_prefix(keyspace: Keyspace) -> str:
    """The one watched range: the common prefix of host keys and service keys."""
    return f"{keyspace.prefix}/services"


def catalog_codec(keyspace: Keyspace) -> Codec[Item]:
    """Ids are the keys themselves; host keys decode to :class:`Host`, service keys to
    :class:`Service`; other keys under the range are ignored."""
    hosts_root, infos_root = keyspace.services_root, keyspace.infos_root

    def ident(key: str) -> str | None:
        if key.startswith(hosts_root):
            service, _, uuid = key[len(hosts_root):].partition("/")
            if not service:
                return None
            if not uuid or "/" in uuid:
                raise MalformedValue("not a host key (extra path segments or no uuid)", key)
            return key
        if key.startswith(infos_root):
            name = key[len(infos_root):]
            return key if name and "/" not in name else None
        return None

    def decode(key: str, value: bytes) -> Item:
        if key.startswith(hosts_root):
            return decode_host(value, key)
        return decode_service(value, key)

    return Codec(ident, decode)


class _Folder:
    """Folds one subscriber's changes of the catalog range into :class:`Catalog` values."""

    def __init__(self, keyspace: Keyspace) -> None:
        self._hosts_root = keyspace.services_root
        self._infos_root = keyspace.infos_root
        self._entries: Map[str, CatalogEntry] = Map()

    def _split(self, key: str) -> tuple[str, str | None]:
        """``(service, uuid)`` of a host key, ``(service, None)`` of a service key."""
        if key.startswith(self._hosts_root):
            service, _, uuid = key[len(self._hosts_root):].partition("/")
            return service, uuid
        return key[len(self._infos_root):], None

    def apply(self, change: Change[Item]) -> Catalog:
        if change.initial:
            return self._first(change)
        keys = (*change.added, *change.updated)
        removed: Mapping[str, Item] = change.removed or {}
        touched: dict[str, tuple[dict[str, Host | None], list[Service | None]]] = {}
        for key in keys:
            service, uuid = self._split(key)
            hosts, document = touched.setdefault(service, ({}, []))
            item = change.items[key]
            if uuid is None:
                document[:] = [item]  # type: ignore[list-item]
            else:
                hosts[host_id(uuid, item)] = item  # type: ignore[arg-type,assignment]
        for key in removed:
            service, uuid = self._split(key)
            hosts, document = touched.setdefault(service, ({}, []))
            if uuid is None:
                document[:] = [None]
            else:
                hosts[uuid] = None
        entries = self._entries.mutate()
        for service, (hosts, document) in touched.items():
            before = entries.get(service)
            host_map = before.hosts._hosts if before is not None else Map()
            if hosts:
                mutable = host_map.mutate()
                for uuid, host in hosts.items():
                    if host is None:
                        mutable.pop(uuid, None)
                    else:
                        mutable[uuid] = host
                host_map = mutable.finish()
            stored = document[0] if document else (before.service if before else None)
            if not host_map and stored is None:
                entries.pop(service, None)
                continue
            entries[service] = CatalogEntry(
                HostSet._wrap(service, host_map, change.revision) if hosts or before is None
                else before.hosts, stored)
        self._entries = entries.finish()
        return Catalog(self._entries, change.revision, tuple(sorted(touched)))


    def _first(self, change: Change[Item]) -> Catalog:
        """The whole state at once: grouped in plain dicts, each map built in one go (3x
        faster than one insertion at a time, for 30,000 keys)."""
        hosts_root, skip = self._hosts_root, len(self._hosts_root)
        hosts: dict[str, dict[str, Host]] = {}
        documents: dict[str, Service] = {}
        for key, item in change.items.items():
            if key.startswith(hosts_root):
                service, _, uuid = key[skip:].partition("/")
                group = hosts.get(service)
                if group is None:
                    group = hosts[service] = {}
                group[host_id(uuid, item)] = item  # type: ignore[arg-type,assignment]
            else:
                documents[key[len(self._infos_root):]] = item  # type: ignore[assignment]
        revision = change.revision
        empty: Map[str, Host] = Map()
        self._entries = Map({
            name: CatalogEntry(HostSet._wrap(name, Map(hosts[name]) if name in hosts else empty,
                                             revision), documents.get(name))
            for name in (*hosts, *(name for name in documents if name not in hosts))})
        return Catalog(self._entries, revision, tuple(sorted(self._entries)))


def catalog_stream(changes: reactivex.Observable[Change[Item]], keyspace: Keyspace
                   ) -> reactivex.Observable[Catalog]:
    """Each subscriber's changes folded into catalogs (a fold of its own: a subscriber that
    joins late starts from the current state)."""
    return reactivex.defer(lambda _: changes.pipe(operators.map(_Folder(keyspace).apply)))
