"""One-shot queries: ``Discovery.get(service).all() / first() / one() / url() / service()``."""

from __future__ import annotations

from rx_discovery._errors import MalformedValue, NoHostFound, ServiceNotFound
from rx_discovery.hostset import HostSet
from rx_discovery.keys import Keyspace
from rx_discovery.model import Host, Service, decode_host, decode_service
from rx_discovery.store import Store

__all__ = ["ServiceQuery"]


class ServiceQuery:
    """The hosts and service document of one service, read from the store on first use.

    Each method raises the Go package's errors: ``ServiceNotFound`` when nothing at all is
    stored for the service, ``NoHostFound`` when its service key exists but no host is
    registered, ``NoHostFoundOnShard`` when hosts exist but none on the asked shard.
    Store errors (``StoreUnavailable``...) propagate. Calls block on the caller's thread.
    """

    def __init__(self, store: Store, keyspace: Keyspace, service: str,
                 shard: str | None = None) -> None:
        self._store = store
        self._keyspace = keyspace
        self.service_name = service
        self.shard = shard
        self._hosts: HostSet | None = None
        self._service: Service | None = None

    def _load(self) -> HostSet:
        if self._hosts is None:
            snapshot = self._store.get_prefix(self._keyspace.hosts_prefix(self.service_name))
            hosts: dict[str, Host] = {}
            for kv in snapshot.items:
                uuid = self._keyspace.uuid_of(self.service_name, kv.key)
                if uuid is None:
                    continue
                try:
                    hosts[uuid] = decode_host(kv.value, kv.key)
                except MalformedValue:
                    continue  # skipped, as the streams do
            stored = self._store.get(self._keyspace.service_key(self.service_name))
            if stored is not None:
                try:
                    self._service = decode_service(stored.value, stored.key)
                except MalformedValue:
                    self._service = None
            if not hosts and stored is None:
                raise ServiceNotFound(f"service {self.service_name!r} not found")
            self._hosts = HostSet(self.service_name, hosts, snapshot.revision)
        return self._hosts

    def hosts(self) -> HostSet:
        """Every host of the service (of the shard, when one was asked)."""
        hosts = self._load()
        if self.shard is not None:
            return hosts.require_shard(self.shard)
        if not hosts:
            raise NoHostFound(f"no host registered for service {self.service_name!r}")
        return hosts

    def all(self) -> list[Host]:
        """Every host, in key order."""
        return list(self.hosts().values())

    def first(self) -> Host:
        """The first host in key order."""
        return self.hosts().first()

    def one(self) -> Host:
        """A random host."""
        return self.hosts().one()

    def service(self) -> Service:
        """The service document.

        Raises:
            ServiceNotFound: no service key (or an unreadable one).
        """
        self._load()
        if self._service is None:
            raise ServiceNotFound(f"service {self.service_name!r} has no service information")
        return self._service

    def url(self, scheme: str | None = None, path: str = "") -> str:
        """A URL of the service: a public service's own hostname and ports; otherwise the
        private URL of a random host."""
        self._load()
        if self._service is not None and self._service.public and self._service.hostname:
            return self._service.url(scheme, path)
        return self.hosts().url(scheme, path)
