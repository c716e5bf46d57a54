"""Host, Service and Credentials: the values stored in etcd, and their wire format.

dataclasses-json defines the wire format (field names, omit-when-empty) and encodes it;
:func:`decode_host` / :func:`decode_service` are the validated fast decode path used on every
watch event (dataclasses-json decoding costs ~175 us a value, ``json.loads`` ~2 us). A test
proves both decoders agree on every field.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypeVar

from dataclasses_json import DataClassJsonMixin, config

from rx_discovery._errors import MalformedValue, UnknownScheme

__all__ = ["Credentials", "Host", "Service", "decode_host", "decode_service"]

Ports = dict[str, str]

_OMIT_EMPTY: dict[str, Any] = config(exclude=lambda value: not value)

# Go's encoding/json escapes these so that JSON can be embedded in HTML; we write the same bytes.
_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
               ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _omit(default: Any = "", *, secret: bool = False) -> Any:
    return field(default=default, metadata=_OMIT_EMPTY, repr=not secret)


def _omit_ports() -> Any:
    return field(default_factory=dict, metadata=_OMIT_EMPTY)


def _go_json(mixin: DataClassJsonMixin) -> str:
    text = DataClassJsonMixin.to_json(mixin, separators=(",", ":"), ensure_ascii=False)
    for char, escape in _GO_ESCAPES:
        if char in text:
            text = text.replace(char, escape)
    return text


def _check_str(owner: str, name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{owner}.{name} must be a string, got {type(value).__name__}")


def _check_bool(owner: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be a bool, got {type(value).__name__}")


def _sorted_ports(owner: str, name: str, ports: object) -> Ports:
    """Validate a ports mapping and return it with sorted keys (Go writes map keys sorted)."""
    if type(ports) is not dict and not isinstance(ports, Mapping):
        raise ValueError(f"{owner}.{name} must be a mapping of str to str, "
                         f"got {type(ports).__name__}")
    for port_name, port in ports.items():
        if not isinstance(port_name, str) or not port_name:
            raise ValueError(f"{owner}.{name} keys must be non-empty strings, got {port_name!r}")
        if not isinstance(port, str) or not port:
            raise ValueError(f"{owner}.{name}[{port_name!r}] must be a non-empty string "
                             f"(write \"80\", not 80), got {type(port).__name__}")
    if len(ports) < 2:
        return dict(ports)
    return dict(sorted(ports.items()))


def _url(scheme: str | None, path: str, hostname: str, ports: Mapping[str, str],
         user: str, password: str) -> str:
    if not isinstance(path, str):
        raise ValueError(f"path must be a string, got {type(path).__name__}")
    if scheme is not None and not isinstance(scheme, str):
        raise ValueError(f"scheme must be a string or None, got {type(scheme).__name__}")
    if scheme is None or scheme == "":
        scheme = "http" if "http" in ports else "https"
    port = ports.get(scheme)
    if port is None:
        known = ", ".join(sorted(ports)) or "none"
        raise UnknownScheme(f"no port for scheme {scheme!r} (ports: {known})")
    auth = ""
    if user:
        auth = urllib.parse.quote(user, safe="")
        if password:
            auth += ":" + urllib.parse.quote(password, safe="")
        auth += "@"
    suffix = "/" + path.lstrip("/") if path else ""
    return f"{scheme}://{auth}{hostname}:{port}{suffix}"


@dataclass(frozen=True)
class Credentials:
    """User and password of a service. The repr hides the password."""

    user: str = ""
    password: str = field(default="", repr=False)

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password={'***' if self.password else ''!r})"


D = TypeVar("D", bound="_WireDocument")


class _WireDocument(DataClassJsonMixin):
    """What Host and Service share: Go-compatible encoding, validated decoding, credentials."""

    user: str
    password: str

    def to_json(self, *args: Any, **kwargs: Any) -> str:
        """The compact JSON that Go's ``encoding/json`` writes for this value."""
        return _go_json(self)

    @classmethod
    def from_json(cls: type[D], s: str | bytes | bytearray, *args: Any, **kwargs: Any) -> D:
        """Decode and validate JSON read from etcd; unknown fields are ignored.

        Raises:
            MalformedValue: the text is not a valid document of this kind.
        """
        return _DECODERS[cls](s, "")  # type: ignore[no-any-return]

    @property
    def credentials(self) -> Credentials:
        """The user and password."""
        return Credentials(self.user, self.password)


@dataclass(frozen=True)
class Host(_WireDocument):
    """One registered instance of a service: the value of ``/services/{service}/{uuid}``.

    Attributes carry the JSON field names, except the JSON ``name``, which is ``hostname``.
    Instances are immutable; use :func:`dataclasses.replace` to derive a changed copy. Ports are
    kept sorted by name. The repr never shows the password.

    Raises:
        ValueError: a field has the wrong type, the hostname is empty or a port is not a
            non-empty string.
    """

    hostname: str = field(metadata=config(field_name="name"))
    _: KW_ONLY
    service_name: str = ""
    ports: Ports = field(default_factory=dict)
    user: str = _omit()
    password: str = _omit(secret=True)
    public: bool = _omit(False)
    private_hostname: str = _omit()
    private_ports: Ports = _omit_ports()
    critical: bool = _omit(False)
    shard: str = _omit()
    uuid: str = _omit()

    def __post_init__(self) -> None:
        for name in ("hostname", "service_name", "user", "password", "private_hostname",
                     "shard", "uuid"):
            _check_str("Host", name, getattr(self, name))
        if not self.hostname:
            raise ValueError("Host.hostname must not be empty")
        _check_bool("Host", "public", self.public)
        _check_bool("Host", "critical", self.critical)
        object.__setattr__(self, "ports", _sorted_ports("Host", "ports", self.ports))
        object.__setattr__(self, "private_ports",
                           _sorted_ports("Host", "private_ports", self.private_ports))

    def url(self, scheme: str | None = None, path: str = "") -> str:
        """The public URL, e.g. ``http://u:p@public-domain.dev:80/path``.

        Args:
            scheme: a key of ``ports``; None tries ``http`` then ``https``.
            path: appended after a single ``/``.

        Raises:
            UnknownScheme: no port for that scheme.
        """
        return _url(scheme, path, self.hostname, self.ports, self.user, self.password)

    def private_url(self, scheme: str | None = None, path: str = "") -> str:
        """The URL on the private hostname and private ports (as :meth:`url` otherwise)."""
        return _url(scheme, path, self.private_hostname or self.hostname,
                    self.private_ports or self.ports, self.user, self.password)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def _repr_html_(self) -> str:
        from rx_discovery.hostset import hosts_html

        return hosts_html([self])


@dataclass(frozen=True)
class Service(_WireDocument):
    """What ``/services_infos/{service}`` holds about a service. The repr hides the password."""

    name: str
    _: KW_ONLY
    critical: bool = False
    hostname: str = _omit()
    user: str = _omit()
    password: str = _omit(secret=True)
    ports: Ports = _omit_ports()
    public: bool = _omit(False)

    def __post_init__(self) -> None:
        for name in ("name", "hostname", "user", "password"):
            _check_str("Service", name, getattr(self, name))
        if not self.name:
            raise ValueError("Service.name must not be empty")
        _check_bool("Service", "critical", self.critical)
        _check_bool("Service", "public", self.public)
        object.__setattr__(self, "ports", _sorted_ports("Service", "ports", self.ports))

    def url(self, scheme: str | None = None, path: str = "") -> str:
        """The public URL of a public service (its hostname and ports)."""
        return _url(scheme, path, self.hostname, self.ports, self.user, self.password)


# --- fast, validated decoding -------------------------------------------------------------

_HOST_FIELDS: dict[str, tuple[str, Any]] = {
    # json name: (attribute, expected type)
    "name": ("hostname", str), "service_name": ("service_name", str), "ports": ("ports", dict),
    "user": ("user", str), "password": ("password", str), "public": ("public", bool),
    "private_hostname": ("private_hostname", str), "private_ports": ("private_ports", dict),
    "critical": ("critical", bool), "shard": ("shard", str), "uuid": ("uuid", str),
}
_SERVICE_FIELDS: dict[str, tuple[str, Any]] = {
    "name": ("name", str), "critical": ("critical", bool), "hostname": ("hostname", str),
    "user": ("user", str), "password": ("password", str), "ports": ("ports", dict),
    "public": ("public", bool),
}


def _decode(data: str | bytes | bytearray, key: str, kind: str,
            fields: dict[str, tuple[str, Any]], build: Callable[..., Any]) -> Any:
    try:
        # decode ourselves: json.loads would guess UTF-16/32 from a BOM; etcd values are UTF-8
        document = json.loads(data if isinstance(data, str) else data.decode("utf-8"))
    except UnicodeDecodeError:
        raise MalformedValue(f"{kind} value is not valid UTF-8", key) from None
    except ValueError as error:
        raise MalformedValue(f"{kind} value is not JSON ({error.args[0][:60]})", key) from None
    except RecursionError:
        raise MalformedValue(f"{kind} value is nested too deeply", key) from None
    if not isinstance(document, dict):
        raise MalformedValue(f"{kind} value is a JSON {type(document).__name__}, "
                             "not an object", key)
    kwargs: dict[str, Any] = {}
    for json_name, value in document.items():
        spec = fields.get(json_name)
        if spec is None or value is None:  # unknown, or null: Go leaves the zero value
            continue
        attribute, expected = spec
        if type(value) is not expected:
            raise MalformedValue(f"{kind} field {json_name!r} must be a JSON "
                                 f"{'string' if expected is str else expected.__name__}, "
                                 f"not {type(value).__name__}", key)
        kwargs[attribute] = value
    try:
        return build(**kwargs)
    except (TypeError, ValueError) as error:
        raise MalformedValue(str(error) or f"invalid {kind}", key) from None


def decode_host(data: str | bytes | bytearray, key: str = "") -> Host:
    """Decode host JSON read from the store.

    Args:
        data: the raw value.
        key: the store key, named in the error.

    Raises:
        MalformedValue: not JSON, not an object, a field of the wrong type, or no ``name``.
            The message never contains the value.
    """
    return _decode(data, key, "host", _HOST_FIELDS, _build_host)  # type: ignore[no-any-return]


def _build_host(**values: Any) -> Host:
    """A validated Host without running ``__post_init__`` again: the decode loop already
    checked every type, so only emptiness and ports are left (half the cost of ``Host()``)."""
    if "hostname" not in values:
        raise ValueError("host field 'name' is missing")
    if not values["hostname"]:
        raise ValueError("host field 'name' must not be empty")
    ports = _sorted_ports("Host", "ports", values.get("ports", {}))
    private = values.get("private_ports")
    # the usual case (private ports == ports) shares one dict: a cached host set of 10,000
    # hosts is a third smaller
    private = {} if private is None else ports if private == ports else _sorted_ports(
        "Host", "private_ports", private)
    host = object.__new__(Host)
    attributes = host.__dict__
    attributes.update(_HOST_DEFAULTS)
    attributes.update(values)
    attributes["ports"], attributes["private_ports"] = ports, private
    if "service_name" in values:
        attributes["service_name"] = sys.intern(values["service_name"])
    return host


_HOST_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(Host) if f.default is not dataclasses.MISSING}


def decode_service(data: str | bytes | bytearray, key: str = "") -> Service:
    """Decode service JSON read from the store (see :func:`decode_host`)."""
    return _decode(data, key, "service", _SERVICE_FIELDS, _build_service)  # type: ignore[no-any-return]


def _build_service(**kwargs: Any) -> Service:
    if "name" not in kwargs:
        raise ValueError("service field 'name' is missing")
    return Service(**kwargs)


_DECODERS: dict[type[Any], Callable[[str | bytes | bytearray, str], Any]] = {
    Host: decode_host, Service: decode_service}


def pick(hosts: list[Host]) -> Host:
    """A random host of a non-empty list (used by ``one()`` and ``url()``)."""
    return random.choice(hosts)
