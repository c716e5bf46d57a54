"""One-shot queries: ``Discovery.get(service).all() / first() / one() / url() / service()`` and
``Discovery.read_catalog()`` (every service at once)."""

from __future__ import annotations

from rx_discovery._errors import MalformedValue, NoHostFound, ServiceNotFound
from rx_discovery.hostset import HostSet
from rx_discovery.keys import Keyspace
from rx_discovery.model import Host, Service, decode_host, decode_service
from rx_discovery.store import Store

__all__ = ["ServiceQuery", "read_catalog"]


class ServiceQuery:
    """The hosts and service document of one service, read from the store on first use.

    Each method raises the Go package's errors: ``ServiceNotFound`` when nothing at all is
    stored for the service, ``NoHostFound`` when its service key exists but no host is
    registered, ``NoHostFoundOnShard`` when hosts exist but none on the asked shard.
    Store errors (``StoreUnavailable``...) propagate. Calls block on the caller's thread.
    Malformed stored values are skipped, as the streams skip them.
    """

    def __init__(self, store: Store, keyspace: Keyspace, service: str,
                 shard: str | None = None) -> None:
        self._store = store
        self._keyspace = keyspace
        self.service_name = service
        self.shard = shard
        self._hosts: HostSet | None = None
        self._service: Service | None = None

    def _loaded(self, hosts: HostSet, service: Service | None) -> ServiceQuery:
        self._hosts, self._service = hosts, service
        return self

    def _load(self) -> HostSet:
        if self._hosts is None:
            found = read_catalog(self._store, self._keyspace, self.service_name)
            if self.service_name not in found:
                raise ServiceNotFound(f"service {self.service_name!r} not found")
            other = found[self.service_name]
            self._hosts, self._service = other._hosts, other._service
        assert self._hosts is not None
        return self._hosts

    def host_set(self) -> HostSet:
        """Every host of the service, possibly none (never raises ``NoHostFound``)."""
        hosts = self._load()
        return hosts if self.shard is None else hosts.on_shard(self.shard)

    def hosts(self) -> HostSet:
        """Every host of the service (of the shard, when one was asked)."""
        hosts = self._load()
        if self.shard is not None:
            return hosts.require_shard(self.shard)
        if not hosts:
            raise NoHostFound(f"no host registered for service {self.service_name!r}")
        return hosts

    def all(self) -> list[Host]:
        """Every host, in key order (the smallest uuid first, as :meth:`first`)."""
        return self.hosts()._sorted()

    def first(self) -> Host:
        """The first host in key order."""
        return self.hosts().first()

    def one(self) -> Host:
        """A random host."""
        return self.hosts().one()

    def service(self) -> Service:
        """The service document; for hosts registered without one (old versions of the Go
        package wrote none) or with an unreadable one, a ``Service`` holding only the name,
        as the Go package's ``Get(name).Service()`` gives.

        Raises:
            ServiceNotFound: nothing at all is stored for the service.
        """
        self._load()
        return self._service or Service(self.service_name)

    def url(self, scheme: str | None = None, path: str = "") -> str:
        """A URL of the service, as the Go package's ``Service.URL``: a public service's own
        address (hostname and ports of its service key); otherwise, or when a shard was
        asked (the service key is shared by all shards), the public URL of a random host
        (of that shard).

        Raises:
            ServiceNotFound, NoHostFound, NoHostFoundOnShard: as :meth:`hosts`.
            UnknownScheme: no port for ``scheme``.
        """
        self._load()
        service = self._service
        if self.shard is None and service is not None and service.public and service.hostname:
            return service.url(scheme, path)
        return self.hosts().url(scheme, path)

    def __repr__(self) -> str:
        shard = f", shard={self.shard!r}" if self.shard else ""
        return f"ServiceQuery({self.service_name!r}{shard})"


def read_catalog(store: Store, keyspace: Keyspace,
                 service: str | None = None) -> dict[str, ServiceQuery]:
    """Every service with something stored (or just ``service``), read in two calls, as
    loaded queries keyed by name, sorted by name."""
    snapshot = store.get_prefix(keyspace.hosts_prefix(service) if service
                                else keyspace.services_root)
    hosts: dict[str, dict[str, Host]] = {}
    for kv in snapshot.items:
        name = keyspace.service_of(kv.key)
        uuid = None if name is None else keyspace.uuid_of(name, kv.key)
        if name is None or uuid is None:
            continue
        found = hosts.setdefault(name, {})  # known, even if no value can be read
        try:
            found[uuid] = decode_host(kv.value, kv.key)
        except MalformedValue:
            continue
    if service:
        one = store.get(keyspace.service_key(service))
        infos = [] if one is None else [one]
    else:
        infos = list(store.get_prefix(keyspace.infos_root).items)
    services: dict[str, Service | None] = {}
    for kv in infos:
        name = keyspace.service_of(kv.key)
        if name is None or kv.key != keyspace.service_key(name):
            continue
        try:
            services[name] = decode_service(kv.value, kv.key)
        except MalformedValue:
            services[name] = None
    return {name: ServiceQuery(store, keyspace, name)._loaded(
                HostSet(name, hosts.get(name, {}), snapshot.revision), services.get(name))
            for name in sorted(set(hosts) | set(services))}
