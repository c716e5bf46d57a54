"""The keyspace layout shared with the Go package.

``{prefix}/services/{service}/{uuid}`` holds a host (leased); ``{prefix}/services_infos/{service}``
holds the service (no lease). The prefix is "" by default, or e.g. "/prod".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rx_discovery.model import validate_key_segment, validate_service_name

if TYPE_CHECKING:
    from rx_discovery.config import Settings

__all__ = ["Keyspace", "validate_service_name"]


def _normalize_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string, got {type(prefix).__name__}")
    # each part will be a segment of every key: refuse what cannot be one; empty ones are
    # dropped, as etcd's v2 API drops them from the keys it stores ("/x//y" is "/x/y")
    segments = [validate_key_segment("prefix", segment)
                for segment in prefix.split("/") if segment]
    return "".join(f"/{segment}" for segment in segments)


@dataclass(frozen=True)
class Keyspace:
    """Builds and parses the keys of one deployment (one prefix).

    ``hides_underscore``: the store is etcd's v2 API, which hides a key whose segment starts
    with ``_`` from listings and from watches on its parent directory."""

    prefix: str = ""
    hides_underscore: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", _normalize_prefix(self.prefix))

    @classmethod
    def of(cls, settings: Settings) -> Keyspace:
        """The keyspace of a Discovery on ``settings`` (its prefix, on its API)."""
        return cls(settings.prefix, hides_underscore=settings.api == "v2")

    def check_listed(self, field_name: str, segment: str) -> str:
        """Return ``segment`` if a key holding it as a segment is seen by listings and
        watches of the store.

        Raises:
            ValueError: it starts with ``_`` on etcd's v2 API, naming ``field_name``.
        """
        if self.hides_underscore and segment.startswith("_"):
            raise ValueError(f"{field_name} must not start with '_' on etcd's v2 API, which "
                             f"hides such keys from listings and watches: {segment!r}")
        return segment

    @property
    def services_root(self) -> str:
        """Prefix of every host key: ``{prefix}/services/``."""
        return f"{self.prefix}/services/"

    @property
    def infos_root(self) -> str:
        """Prefix of every service key: ``{prefix}/services_infos/``."""
        return f"{self.prefix}/services_infos/"

    def hosts_prefix(self, service: str) -> str:
        """Prefix of the host keys of one service (ends with ``/``)."""
        return f"{self.prefix}/services/{service}/"

    def host_key(self, service: str, uuid: str) -> str:
        """Key of one host."""
        return f"{self.prefix}/services/{service}/{uuid}"

    def service_key(self, service: str) -> str:
        """Key of the service document."""
        return f"{self.prefix}/services_infos/{service}"

    def uuid_of(self, service: str, key: str) -> str | None:
        """The uuid of a host key of ``service``; None when the key is not one (extra path
        segments, another service, empty uuid)."""
        return uuid_after(self.hosts_prefix(service), key)

    def service_of(self, key: str) -> str | None:
        """The service name of a host or service key, None for any other key."""
        for root in (self.services_root, self.infos_root):
            if key.startswith(root):
                name = key[len(root):].split("/", 1)[0]
                return name or None
        return None


def uuid_after(hosts_prefix: str, key: str) -> str | None:
    """The uuid of a host key under ``hosts_prefix`` (see :meth:`Keyspace.uuid_of`)."""
    if not key.startswith(hosts_prefix):
        return None
    uuid = key[len(hosts_prefix):]
    return uuid if uuid and "/" not in uuid else None
