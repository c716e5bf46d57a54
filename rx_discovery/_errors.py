"""Every exception rx-discovery raises, in one hierarchy.

::

    DiscoveryError
    ├── ConfigError (ValueError)         bad settings; names the variable, never its value
    ├── UnknownScheme (ValueError)       Host.url() asked for a port the host does not have
    ├── MalformedValue (ValueError)      a stored value that is not a valid host/service
    ├── QueryError
    │   ├── ServiceNotFound              nothing stored for the service
    │   ├── NoHostFound                  service key exists, no host registered
    │   └── NoHostFoundOnShard           hosts exist, none on the asked shard
    ├── RegistrationError                a registration could not be made (wait() raises it)
    └── StoreError                       failures of the key-value store
        ├── StoreUnavailable             connection lost, timeout, server down (retried)
        ├── RevisionCompacted            a watch asked for a revision already compacted
        ├── LeaseNotFound                the lease expired or was revoked
        ├── AuthenticationFailed         wrong user/password (permanent)
        ├── PermissionDenied             the user lacks a permission (RBAC) (permanent)
        └── RequestTooLarge (ValueError) a value over etcd's request size limit (permanent)

``StoreError.permanent`` tells the errors that retrying will not fix by itself: they are
reported (``Discovery.health``, ``Registration.status``, diagnostics), and retried only slowly.
"""

from __future__ import annotations


class DiscoveryError(Exception):
    """Base class of every error raised by rx-discovery."""


class ConfigError(DiscoveryError, ValueError):
    """A setting (keyword or environment variable) is invalid or missing."""


class UnknownScheme(DiscoveryError, ValueError):
    """The host has no port for the asked scheme (nor http/https when none is asked)."""


class MalformedValue(DiscoveryError, ValueError):
    """A value read from the store is not a valid host or service document.

    Attributes:
        key: the store key the value was read from ("" when decoded without a key).
        reason: what is wrong with it (never the value itself: it may hold a password).
    """

    def __init__(self, reason: str, key: str = "") -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}" if key else reason)


class QueryError(DiscoveryError):
    """A one-shot query found nothing to return."""


class ServiceNotFound(QueryError):
    """Nothing at all is stored for the service."""


class NoHostFound(QueryError):
    """The service is known but no host is registered."""


class NoHostFoundOnShard(NoHostFound):
    """Hosts are registered, but none on the asked shard."""


class RegistrationError(DiscoveryError):
    """A registration could not be made, or was disposed before it was."""


class StoreError(DiscoveryError):
    """The key-value store failed.

    Attributes:
        permanent: retrying will not fix it by itself (credentials, permissions, limits).
    """

    permanent = False


class StoreUnavailable(StoreError):
    """The store cannot be reached (connection lost, timeout): retried with backoff."""


class RevisionCompacted(StoreError):
    """A watch asked for a revision that was compacted away.

    Attributes:
        compact_revision: the oldest revision still available.
    """

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"required revision has been compacted (oldest is {compact_revision})")


class LeaseNotFound(StoreError):
    """The lease is gone: it expired or was revoked."""


class AuthenticationFailed(StoreError):
    """The store refused the credentials (or, before PermissionDenied existed, a
    permission: kept as its base so that old ``except`` clauses still catch both)."""

    permanent = True


class PermissionDenied(AuthenticationFailed):
    """The user is known but lacks a permission on the key or range (etcd RBAC)."""


class RequestTooLarge(StoreError, ValueError):
    """A request over the store's size limit (etcd: ``--max-request-bytes``, 1.5 MiB)."""

    permanent = True
