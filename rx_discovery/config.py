"""Discovery settings, from keywords or from the environment.

Secrets (password, private key) never appear in a repr or an error message: errors name the
setting or the environment variable, not its value.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
import ssl
import tempfile
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from rx_discovery._errors import ConfigError

__all__ = ["Api", "DEFAULT_ENDPOINT", "Endpoint", "Settings", "load_cert_chain", "parse_flag"]

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"

Api = Literal["v3", "v2"]
"""Which etcd API the store speaks: v3 (gRPC, leases) or v2 (HTTP keys API, the Go
package's)."""

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


@dataclass(frozen=True)
class Endpoint:
    """One etcd member address."""

    host: str
    """The host name or address, without brackets (``::1`` for IPv6)."""
    port: int
    secure: bool

    @property
    def netloc(self) -> str:
        """``host:port``, with an IPv6 address in brackets (``[::1]:2379``): a gRPC target."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.netloc}"


def _shown(endpoint: str) -> str:
    """``endpoint`` as an error message may quote it: without what may hold a secret (the
    user:password before an ``@``, a query, a fragment)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        scheme, rest = "", scheme
    rest = rest.rpartition("@")[2]
    for mark in "?#":
        if mark in rest:
            rest = rest.split(mark, 1)[0] + mark + "..."
    return f"{scheme}{sep}{'...@' if '@' in endpoint else ''}{rest}"


def parse_endpoint(text: str, source: str = "endpoints") -> Endpoint:
    """Parse ``http://host:port``, ``https://host:port`` or ``host:port`` (plain HTTP).

    Raises:
        ConfigError: naming ``source``.
    """
    raw = text.strip()
    if not raw:
        raise ConfigError(f"{source}: empty endpoint")
    shown = _shown(raw)
    if any(ch.isspace() or not ch.isprintable() for ch in raw):
        # urlsplit would drop tabs and newlines silently, and a space is no host
        raise ConfigError(f"{source}: endpoint {shown!r} contains whitespace or control "
                          "characters")
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parsed = urllib.parse.urlsplit(raw)
        port = parsed.port
    except ValueError:
        raise ConfigError(f"{source}: invalid endpoint {shown!r}") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"{source}: endpoint {shown!r} must be http(s)://host:port")
    if parsed.username or parsed.password:
        raise ConfigError(f"{source}: put credentials in user/password (ETCD_USER, "
                          "ETCD_PASSWORD), not in the endpoint URL")
    if port == 0:
        raise ConfigError(f"{source}: endpoint {shown!r} has port 0")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        # etcd's gRPC API has no path: "http://host:2379/v3" would be used as host:port only.
        raise ConfigError(f"{source}: endpoint {shown!r} must be http(s)://host:port, "
                          "without a path")
    host = _dialable(parsed.hostname, bracketed="[" in parsed.netloc)
    if host is None:
        raise ConfigError(f"{source}: endpoint {shown!r} has no valid host name or address")
    return Endpoint(host, 2379 if port is None else port, parsed.scheme == "https")


_HOST_NAME = re.compile(r"[a-z0-9_.-]+", re.IGNORECASE)


def _dialable(host: str, bracketed: bool) -> str | None:
    """``host`` as gRPC dials it: an IP address (IPv6 in brackets only), or a DNS name in
    ASCII (an internationalised one in its IDNA form); None when it is neither."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if bracketed:
        return host if isinstance(address, ipaddress.IPv6Address) else None
    if address is not None:
        return host
    if host.isascii():  # the idna codec's own rule for ASCII, without its import (~0.4 MB:
        # unicodedata, stringprep) in every process that names etcd by a DNS name
        labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
        ascii_host = host if all(0 < len(label) < 64 for label in labels) else ""
    else:
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return ascii_host if _HOST_NAME.fullmatch(ascii_host) else None


@dataclass(frozen=True)
class Settings:
    """How to reach etcd. Built by :class:`~rx_discovery.Discovery` from its keywords or by
    :meth:`from_env`; PEM material is held in memory as bytes.

    Attributes:
        endpoints: one or more members; calls fail over between them.
        prefix: keyspace prefix ("" or e.g. "/prod").
        ca_cert, client_cert, client_key: PEM bytes (None: not used).
        user, password: etcd authentication (over v3, TLS is required: gRPC refuses to
            send the auth token over plain text).
        timeout: deadline of one call, in seconds.
        api: "v3" (the default) or "v2" (etcd's v2 keys API, the Go package's).
    """

    endpoints: tuple[Endpoint, ...] = (parse_endpoint(DEFAULT_ENDPOINT),)
    prefix: str = ""
    ca_cert: bytes | None = field(default=None, repr=False)
    client_cert: bytes | None = field(default=None, repr=False)
    client_key: bytes | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 5.0
    api: Api = "v3"

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ConfigError("endpoints: at least one etcd endpoint is needed")
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigError("client TLS needs both a certificate and a key "
                              "(ETCD_TLS_CERT and ETCD_TLS_KEY)")
        if (self.user is None) != (self.password is None):
            raise ConfigError("etcd authentication needs both a user and a password "
                              "(ETCD_USER and ETCD_PASSWORD)")
        if (isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float))
                or not 0 < self.timeout < math.inf):
            raise ConfigError("timeout must be a positive, finite number of seconds")
        if self.api not in get_args(Api):
            raise ConfigError(f"api must be one of {', '.join(get_args(Api))} (ETCD_API)")
        _check_pem(self.ca_cert, self.client_cert, self.client_key)
        if self.api == "v3" and self.user is not None and not self.tls:
            # gRPC sends per-call credentials only over TLS: every call would fail, retried.
            raise ConfigError("etcd authentication (user/password) needs TLS: use https:// "
                              "endpoints or set ca_cert (ETCD_CACERT)")

    @property
    def tls(self) -> bool:
        """True when the connection uses TLS (a CA, a client cert or an https endpoint)."""
        return (self.ca_cert is not None or self.client_cert is not None
                or any(e.secure for e in self.endpoints))

    @classmethod
    def build(cls, endpoints: str | Sequence[str] | None = None, *, prefix: str = "",
              ca_cert: str | bytes | None = None, client_cert: str | bytes | None = None,
              client_key: str | bytes | None = None, user: str | None = None,
              password: str | None = None, timeout: float = 5.0, api: Api = "v3") -> Settings:
        """Settings from keyword arguments. PEM arguments are file paths (str) or PEM bytes.

        Raises:
            ConfigError: a setting is invalid (the message names it, never a secret).
        """
        if endpoints is None:
            endpoints = [DEFAULT_ENDPOINT]
        elif isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        elif not (isinstance(endpoints, (list, tuple))
                  and all(isinstance(e, str) for e in endpoints)):
            raise ConfigError("endpoints must be a string or a list of strings")
        parsed = _unique(parse_endpoint(e) for e in endpoints if e.strip())
        return cls(endpoints=parsed, prefix=_prefix(prefix, "prefix"),
                   ca_cert=_pem(ca_cert, "ca_cert"), client_cert=_pem(client_cert, "client_cert"),
                   client_key=_pem(client_key, "client_key"), user=user or None,
                   password=password or None, timeout=timeout, api=api)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``ETCD_HOSTS`` (comma list) or ``ETCD_HOST``, ``ETCD_CACERT``,
        ``ETCD_TLS_CERT``, ``ETCD_TLS_KEY`` (file paths, or base64 PEM when
        ``ETCD_TLS_INMEMORY`` is true: true/false, 1/0, yes/no, on/off), ``ETCD_USER``,
        ``ETCD_PASSWORD``, ``ETCD_PREFIX``, ``ETCD_API`` (v3 or v2).

        Raises:
            ConfigError: naming the variable, never its value when it is a secret.
        """
        env = os.environ if environ is None else environ
        hosts_var = "ETCD_HOSTS" if env.get("ETCD_HOSTS") else "ETCD_HOST"
        raw_hosts = env.get(hosts_var) or DEFAULT_ENDPOINT
        endpoints = _unique(parse_endpoint(h, hosts_var) for h in raw_hosts.split(",")
                            if h.strip())
        if not endpoints:
            raise ConfigError(f"{hosts_var}: no endpoint in it")
        in_memory = parse_flag(env.get("ETCD_TLS_INMEMORY", ""), "ETCD_TLS_INMEMORY")
        api = env.get("ETCD_API", "").strip().lower() or "v3"
        if api not in get_args(Api):
            raise ConfigError(f"ETCD_API must be one of {', '.join(get_args(Api))}")

        def pem(var: str) -> bytes | None:
            value = env.get(var)
            if not value:
                return None
            if in_memory:
                try:
                    # line breaks skipped, as Go's decoder (the Go package's) does: `base64`
                    # and `openssl base64` wrap their output
                    return base64.b64decode(value.replace("\r", "").replace("\n", "").strip(),
                                            validate=True)
                except (binascii.Error, ValueError):
                    raise ConfigError(f"{var}: not valid base64 (ETCD_TLS_INMEMORY=true)") from None
            return _read_file(value, var)

        user = env.get("ETCD_USER") or None
        password = env.get("ETCD_PASSWORD") or None
        if password is not None and user is None:
            raise ConfigError("ETCD_PASSWORD is set but ETCD_USER is not")
        if user is not None and password is None:
            raise ConfigError("ETCD_USER is set but ETCD_PASSWORD is not")
        return cls(endpoints=endpoints, prefix=_prefix(env.get("ETCD_PREFIX", ""), "ETCD_PREFIX"),
                   ca_cert=pem("ETCD_CACERT"), client_cert=pem("ETCD_TLS_CERT"),
                   client_key=pem("ETCD_TLS_KEY"), user=user, password=password,
                   api=api)  # type: ignore[arg-type]  # checked against Api above


def _check_pem(ca_cert: bytes | None, client_cert: bytes | None,
               client_key: bytes | None) -> None:
    """Refuse TLS material that does not load (gRPC would fail every connection with
    "Failed to create security handshaker", which looks like a network fault). Errors name the
    setting, never its content.

    Raises:
        ConfigError: naming ca_cert, client_cert or client_key.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for value, name, var in ((ca_cert, "ca_cert", "ETCD_CACERT"),
                             (client_cert, "client_cert", "ETCD_TLS_CERT")):
        if value is None:
            continue
        try:
            context.load_verify_locations(cadata=value.decode("ascii"))
        except (ssl.SSLError, ValueError):  # UnicodeDecodeError is a ValueError
            raise ConfigError(f"{name} ({var}) is not a PEM certificate") from None
    if client_cert is not None and client_key is not None:
        try:
            load_cert_chain(context, client_cert, client_key)
        except (ssl.SSLError, ValueError, OSError):
            raise ConfigError("client_key (ETCD_TLS_KEY) is not an unencrypted PEM private key "
                              "of client_cert (ETCD_TLS_CERT)") from None


def load_cert_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """Load a client certificate and its key from memory (an encrypted key is refused: no
    prompt for its passphrase). The ssl module reads them from a path
    only: an anonymous in-memory file where Linux has them, else a private temporary file
    removed at once."""
    pem = cert + b"\n" + key
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("rx-discovery-client-cert", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}", password="")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="rx-discovery-") as folder:
        path = os.path.join(folder, "client.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(pem)
        context.load_cert_chain(path, password="")


def _unique(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    """``endpoints`` without repeats (python3-etcd3 keys its endpoints by host:port: a repeat
    would open a channel that no call uses)."""
    return tuple(dict.fromkeys(endpoints))


def parse_flag(value: str, source: str) -> bool:
    """A boolean setting: true/false, 1/0, yes/no, on/off (any case; empty is false).

    Raises:
        ConfigError: naming ``source``, for any other spelling.
    """
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{source} must be true or false (also 1/0, yes/no, on/off)")


def _prefix(value: str, source: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{source} must be a string")
    if any(ch.isspace() for ch in value):
        raise ConfigError(f"{source} must not contain whitespace")
    return value


# Sources whose value may be a private key pasted where a path was expected: never echoed.
_SECRET_SOURCES = ("ETCD_TLS_KEY", "client_key")


def _read_file(path: str, source: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        if source in _SECRET_SOURCES:
            raise ConfigError(f"{source}: cannot read the file it names ({error.strerror}); a "
                              "key itself goes in bytes, or base64 with ETCD_TLS_INMEMORY=true"
                              ) from None
        raise ConfigError(f"{source}: cannot read file {path!r} ({error.strerror})") from None


def _pem(value: str | bytes | None, source: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{source} must be a file path or PEM bytes")
    return _read_file(value, source)
