"""Host, Service and Credentials: the values stored in etcd, and their wire format.

dataclasses-json defines the wire format (field names, omit-when-empty) and encodes it;
:func:`decode_host` / :func:`decode_service` are the validated fast decode path used on every
watch event (dataclasses-json decoding costs ~175 us a value; this one, on orjson, ~4 us, about
what ``json.loads`` alone costs). A test proves both decoders agree on every field.

dataclasses-json is imported when first used (an encode, ``to_dict``, ``from_dict``,
``schema``): with marshmallow it adds ~2.7 MB and ~5,000 objects, which every full garbage
collection walks, to a process that only watches (issue 12's peak RSS and burst CPU).
"""

from __future__ import annotations

import functools
import ipaddress
import random
import re
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from rx_discovery._errors import MalformedValue, UnknownScheme
from rx_discovery._orjson import orjson

if TYPE_CHECKING:
    from dataclasses_json import DataClassJsonMixin

__all__ = ["Credentials", "Host", "Service", "decode_host", "decode_service",
           "validate_host_for_registration", "validate_host_name", "validate_key_segment",
           "validate_service_name"]

Ports = dict[str, str]

# Field metadata for dataclasses-json, in the mapping its config() returns (documented: "you
# can also manually specify the dataclass_json configuration mapping"), written here rather
# than by config() so that it holds from import, before dataclasses-json is: a user's own
# dataclass_json class holding a Host reads it directly (tests/unit/test_model_wire_metadata.py).
_NAMED_NAME: dict[str, Any] = {  # Host.hostname is "name" in JSON
    "dataclasses_json": {"letter_case": lambda _name: "name"}}
_OMIT_EMPTY: dict[str, Any] = {"dataclasses_json": {"exclude": lambda value: not value}}
_NIL_WHEN_EMPTY: dict[str, Any] = {  # Host.ports: always written, and no ports are `null`
    "dataclasses_json": {"encoder": lambda ports: ports or None}}  # (Go's nil map)


@functools.cache
def _dataclasses_json() -> type[DataClassJsonMixin]:
    """dataclasses-json's mixin, imported on first use, with Host and Service registered as
    its (virtual) subclasses: its marshmallow schema of a user's class holding a Host nests
    the Host's schema only for one, and ``isinstance(host, DataClassJsonMixin)`` holds, as
    when they inherited it. Also run at import when dataclasses-json is loaded already (see
    the end of the module). Once: each ``register`` invalidates every ABC's caches."""
    from dataclasses_json import DataClassJsonMixin

    DataClassJsonMixin.register(Host)
    DataClassJsonMixin.register(Service)
    return DataClassJsonMixin


# Go's encoding/json escapes these so that JSON can be embedded in HTML; we write the same bytes.
_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
               ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _omit(default: Any = "", *, secret: bool = False) -> Any:
    return field(default=default, metadata=_OMIT_EMPTY, repr=not secret)


def _omit_ports() -> Any:
    return field(default_factory=dict, metadata=_OMIT_EMPTY)


def _go_json(document: _WireDocument) -> str:
    text = _dataclasses_json().to_json(document,  # type: ignore[arg-type]
                                       separators=(",", ":"), ensure_ascii=False)
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


def _sorted_ports(owner: str, name: str, ports: object, *, empty_ok: bool = False) -> Ports:
    """Validate a ports mapping and return it with sorted keys (Go writes map keys sorted);
    ``empty_ok``: empty names and ports are kept (as read: Go writes what it was given)."""
    if type(ports) is not dict and not isinstance(ports, Mapping):
        raise ValueError(f"{owner}.{name} must be a mapping of str to str, "
                         f"got {type(ports).__name__}")
    for port_name, port in ports.items():
        if not isinstance(port_name, str) or not (port_name or empty_ok):
            raise ValueError(f"{owner}.{name} keys must be non-empty strings, got {port_name!r}")
        if not isinstance(port, str) or not (port or empty_ok):
            raise ValueError(f"{owner}.{name}[{port_name!r}] must be a non-empty string "
                             f"(write \"80\", not 80), got {type(port).__name__}")
    if len(ports) < 2:
        return dict(ports)
    return dict(sorted(ports.items()))


# --- what register() accepts (checked before any I/O) ----------------------------------
#
# Reading is lenient (a host that Go registered is shown whatever its fields hold); these rules
# are for what this library writes, so that every key it writes can be read back as a host key
# and every URL it builds has one meaning:
#
# - a host name (``hostname``, ``private_hostname``) is an RFC 1123 name (dot-separated labels
#   of 1-63 letters, digits, ``-`` and ``_``, not starting or ending with ``-``; 253 characters
#   at most; one trailing dot allowed; IDNs in their ``xn--`` form), which includes IPv4
#   addresses, or an IPv6 address, bare (``::1``) or in brackets (``[::1]``), without a zone;
# - a key segment (service name, uuid) is non-empty and holds no ``/``, whitespace, control or
#   format characters; ``.`` and ``..`` are refused (etcd's v2 API cleans them out of paths);
# - a port name is a URL scheme (a letter, then letters, digits, ``+``, ``-``, ``.``; ``_``
#   also allowed) and a port is a decimal number from 1 to 65535, as a string (Go stores
#   strings and pastes them into URLs as they are);
# - no string holds a lone surrogate (it cannot be encoded as UTF-8, so the write would fail).
# Errors name the field and never show the user or password.

_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", re.ASCII)
_PORT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9+._-]*", re.ASCII)
_PORT_NUMBER = re.compile(r"[0-9]{1,5}", re.ASCII)
_SECRET_FIELDS = frozenset({"user", "password"})
_ASCII_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")  # ASCII has no format characters


def _check_unicode(field_name: str, value: str, *, secret: bool = False) -> None:
    """Refuse a lone surrogate (``value.encode()`` would fail at write time).

    The error is raised outside the ``except`` block: the UnicodeEncodeError holds the whole
    value, and error reporters print an exception's ``__context__`` (even after ``from
    None``)."""
    try:
        value.encode("utf-8")
        return
    except UnicodeEncodeError:
        pass
    shown = "" if secret else f": {value!r}"
    raise ValueError(f"{field_name} is not valid Unicode (it holds a lone surrogate, "
                     f"which cannot be encoded as UTF-8){shown}")


def _ipv6(text: str) -> bool:
    if "%" in text:  # a zone names an interface of one machine: no use to another
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def validate_host_name(field_name: str, value: str) -> str:
    """Return ``value`` if it is a host name or an IP address literal (rules above).

    Raises:
        ValueError: otherwise, naming ``field_name``.
    """
    _check_unicode(field_name, value)
    if value.startswith("[") and value.endswith("]"):
        valid = _ipv6(value[1:-1])
    elif ":" in value:
        valid = _ipv6(value)
    else:
        name = value[:-1] if value.endswith(".") else value
        valid = 0 < len(name) <= 253 and all(_LABEL.fullmatch(label)
                                             for label in name.split("."))
    if not valid:
        raise ValueError(
            f"{field_name} must be a host name (RFC 1123: dot-separated labels of letters, "
            "digits, '-' and '_'), an IPv4 address or an IPv6 address (bare or in brackets), "
            f"got {value!r}{_idn_hint(value)}")
    return value


def _idn_hint(value: str) -> str:
    """For an internationalised name, its ``xn--`` form to write instead."""
    if value.isascii():
        return ""
    try:
        return f" (an IDN is written in its xn-- form: {value.encode('idna').decode()!r})"
    except UnicodeError:
        return ""


def validate_key_segment(field_name: str, value: object) -> str:
    """Return ``value`` if it can be one segment of an etcd key (rules above).

    Raises:
        ValueError: otherwise, naming ``field_name``.
    """
    if not isinstance(value, str):
        raise ValueError(f"{field_name} must be a string, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{field_name} must not be empty")
    _check_unicode(field_name, value)
    if "/" in value or value in (".", ".."):
        raise ValueError(f"{field_name} must not contain '/' nor be '.' or '..': {value!r}")
    if _ASCII_SPACE_OR_CONTROL.search(value) if value.isascii() else _has_space_or_control(value):
        raise ValueError(f"{field_name} must not contain whitespace or control characters: "
                         f"{value!r}")
    return value


def _has_space_or_control(value: str) -> bool:
    import unicodedata  # here: ~0.3 MB that a process naming its services in ASCII never needs

    return any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in value)


def validate_service_name(name: object) -> str:
    """Return ``name`` if it is a usable service name (a key segment, rules above).

    Raises:
        ValueError: otherwise.
    """
    return validate_key_segment("service name", name)


def _validate_ports(field_name: str, ports: Mapping[str, str]) -> None:
    for port_name, port in ports.items():
        _check_unicode(f"{field_name} key", port_name)
        if not _PORT_NAME.fullmatch(port_name):
            raise ValueError(f"{field_name} key must be a URL scheme (a letter, then letters, "
                             f"digits, '+', '-', '.' or '_'), got {port_name!r}")
        _check_unicode(f"{field_name}[{port_name!r}]", port)
        if not _PORT_NUMBER.fullmatch(port) or not 1 <= int(port) <= 65535:
            raise ValueError(f"{field_name}[{port_name!r}] must be a port number from 1 to "
                             f"65535 written as a string, got {port!r}")


def validate_host_for_registration(host: Host) -> None:
    """Check every field of ``host`` that register() will write (rules above).

    Raises:
        ValueError: the first field that breaks a rule, named (``Host.hostname``...); the
            user and password are never shown.
    """
    validate_host_name("Host.hostname", host.hostname)
    if host.private_hostname:
        validate_host_name("Host.private_hostname", host.private_hostname)
    if host.uuid:
        validate_key_segment("Host.uuid", host.uuid)
    for name in ("service_name", "user", "password", "shard"):
        _check_unicode(f"Host.{name}", getattr(host, name), secret=name in _SECRET_FIELDS)
    _validate_ports("Host.ports", host.ports)
    _validate_ports("Host.private_ports", host.private_ports)


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
    if user:  # "user:password@" even when the password is empty, as Go writes it
        _check_unicode("user", user, secret=True)  # before quote() puts it in an error
        _check_unicode("password", password, secret=True)
        auth = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@"
    suffix = "/" + path.lstrip("/") if path else ""
    if ":" in hostname and not hostname.startswith("["):  # a bare IPv6 literal
        hostname = f"[{hostname}]"
    return f"{scheme}://{auth}{hostname}:{port}{suffix}"


@dataclass(frozen=True)
class Credentials:
    """User and password of a service. The repr hides the password."""

    user: str = ""
    password: str = field(default="", repr=False)

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password={'***' if self.password else ''!r})"


D = TypeVar("D", bound="_WireDocument")


class _WireDocument:
    """What Host and Service share: Go-compatible encoding, validated decoding, credentials,
    and dataclasses-json's ``to_dict``/``from_dict``/``schema`` (what ``DataClassJsonMixin``
    gives, without importing it before it is used)."""

    user: str
    password: str
    dataclass_json_config = None  # read by dataclasses-json (not a field: not annotated)

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

    @classmethod
    def from_dict(cls: type[D], kvs: Any, *, infer_missing: Any = False) -> D:
        """Build from a decoded JSON object; a ``null`` field is its zero value, as in Go
        (e.g. ``"ports":null``, what Go writes for a host without ports)."""
        if isinstance(kvs, dict):
            kvs = {name: value for name, value in kvs.items() if value is not None}
        from_dict = _dataclasses_json().from_dict.__func__  # type: ignore[attr-defined]
        return from_dict(cls, kvs, infer_missing=infer_missing)  # type: ignore[no-any-return]

    def to_dict(self, encode_json: bool = False) -> dict[str, Any]:
        """The fields as JSON names and values (dataclasses-json's ``to_dict``)."""
        return _dataclasses_json().to_dict(self, encode_json)  # type: ignore[arg-type]

    @classmethod
    def schema(cls, **kwargs: Any) -> Any:
        """dataclasses-json's marshmallow schema of this class."""
        return _dataclasses_json().schema.__func__(cls, **kwargs)  # type: ignore[attr-defined]

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

    Any string is accepted here (a host read from etcd is shown whatever Go stored);
    ``register()`` also requires a host name or IP literal, ports 1-65535 and more (see
    :func:`validate_host_for_registration`).

    Raises:
        ValueError: a field has the wrong type, the hostname is empty or a port is not a
            non-empty string.
    """

    hostname: str = field(metadata=_NAMED_NAME)
    _: KW_ONLY
    service_name: str = ""
    ports: Ports = field(default_factory=dict, metadata=_NIL_WHEN_EMPTY)
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
        object.__setattr__(self, "ports", _sorted_ports(
            "Host", "ports", {} if self.ports is None else self.ports))  # null: Go's nil map
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
        """The URL on the private hostname and private ports; exactly :meth:`url` (public
        hostname and ports) when there is no private hostname, as the Go package's
        ``PrivateURL``.

        Raises:
            UnknownScheme: no private port for that scheme (the public ports are not tried).
        """
        if not self.private_hostname:
            return self.url(scheme, path)
        return _url(scheme, path, self.private_hostname, self.private_ports, self.user,
                    self.password)

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


def _parse(data: str | bytes | bytearray, key: str, kind: str) -> dict[str, Any]:
    """The JSON object in ``data``.

    Raises:
        MalformedValue: not UTF-8, not JSON, or not an object.
    """
    try:
        # orjson: 3x faster than json.loads, and strict as Go (UTF-8 only, no BOM, no NaN)
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        reason = error.args[0]
        if "UTF-8" in reason or "surrogate" in reason:
            raise MalformedValue(f"{kind} value is not valid UTF-8", key) from None
        raise MalformedValue(f"{kind} value is not JSON ({reason[:60]})", key) from None
    except RecursionError:
        raise MalformedValue(f"{kind} value is nested too deeply", key) from None
    if document.__class__ is not dict:
        raise MalformedValue(f"{kind} value is a JSON {type(document).__name__}, "
                             "not an object", key)
    return document


def _wrong_type(kind: str, json_name: str, expected: type, value: object,
                key: str) -> MalformedValue:
    return MalformedValue(f"{kind} field {json_name!r} must be a JSON "
                          f"{'string' if expected is str else expected.__name__}, "
                          f"not {type(value).__name__}", key)


def _decode(data: str | bytes | bytearray, key: str, kind: str,
            fields: dict[str, tuple[str, Any]], build: Callable[[dict[str, Any]], Any]) -> Any:
    document = _parse(data, key, kind)
    values: dict[str, Any] = {}
    for json_name, value in document.items():
        spec = fields.get(json_name)
        if spec is None or value is None:  # unknown, or null: Go leaves the zero value
            continue
        attribute, expected = spec
        if type(value) is not expected:
            raise _wrong_type(kind, json_name, expected, value, key)
        values[attribute] = value
    try:
        return build(values)
    except (TypeError, ValueError) as error:
        raise MalformedValue(str(error) or f"invalid {kind}", key) from None


def decode_host(data: str | bytes | bytearray, key: str = "", service: str = "") -> Host:
    """Decode host JSON read from the store.

    Args:
        data: the raw value.
        key: the store key, named in the error.
        service: the service the host is read for: its ``service_name``, when equal, is this
            string (one object for every host of the service), else an interned copy.

    Raises:
        MalformedValue: not JSON, not an object, a field of the wrong type, or no ``name``.
            The message never contains the value.
    """
    return _build_host(_parse(data, key, "host"), key, service)


def host_id(uuid: str, host: Host) -> str:
    """The id to keep ``host`` under, given the uuid of its key: the host's own uuid string
    when they are equal, so that a cache keeps one string per host, not two (a decoded
    host's uuid is not interned: a unique string per host would grow the interpreter's
    table)."""
    return host.uuid if host.uuid == uuid else uuid


def _interned_ports(name: str, ports: dict[str, Any]) -> Ports:
    """Validated ports, sorted (as Go writes them), as a new dict whose strings are shared
    with every other host that has the same ports: a cached host set holds a handful of
    distinct port strings, not six per host. The hosts of a service nearly always have the
    same ports, so the validated result is remembered (the last one is compared first)."""
    global _PORTS_LAST
    last_read, last_ports = _PORTS_LAST
    if ports == last_read:
        return dict(last_ports)
    signature = tuple(ports.items())
    try:
        known = _PORTS_SEEN.get(signature)
    except TypeError:  # an unhashable port: not a string, as the check below reports
        known = None
    if known is None:
        for port_name, port in signature:
            if type(port_name) is not str or type(port) is not str:  # "" is read, as Go does
                _sorted_ports("Host", name, ports)  # raises the precise error
        known = {sys.intern(port_name): sys.intern(port) for port_name, port in sorted(signature)}
        if len(_PORTS_SEEN) >= 4096:  # bounded: forget everything, it refills at once
            _PORTS_SEEN.clear()
        _PORTS_SEEN[signature] = known
    _PORTS_LAST = (dict(ports), known)  # replaced whole: readers on other threads see a pair
    return dict(known)  # the caller's own dict: nobody can change another host's ports


# ports already validated: their items as read -> the sorted, interned dict to copy
_PORTS_SEEN: dict[tuple[tuple[Any, Any], ...], Ports] = {}
_PORTS_LAST: tuple[dict[str, Any], Ports] = ({}, {})


def _build_host(document: dict[str, Any], key: str, service: str = "") -> Host:
    """A validated Host read straight from its JSON object, without ``__init__`` (the hot
    path of every watch event; half the cost of a validation pass then ``Host()``).

    Each field is type-checked as Go would (null is the zero value; unknown fields are
    ignored), and the Host is built for the cache: repeated strings are shared (the service
    name with ``service``, ports and shards interned) and equal values share one object
    (``private_*`` with ``hostname``/``ports``).
    Only fields that differ from their default are set: an unset one reads the class attribute
    that ``dataclass`` leaves for a plain default (each ``object.__setattr__`` costs ~0.2 us).
    They are set in field order, so that CPython keeps them inline in the object (~250 bytes
    less than a ``__dict__``); a test checks both.
    """
    get = document.get
    hostname = get("name")
    if hostname.__class__ is not str:
        if hostname is None:
            raise MalformedValue("host field 'name' is missing", key)
        raise _wrong_type("host", "name", str, hostname, key)
    # an empty name is read: Go registers a host with Hostname "" (a private host named by
    # its machine's name, in private_hostname) and lists it
    # unrolled: this runs for every host of every watch event
    service_name, user, password = get("service_name"), get("user"), get("password")
    private_hostname, shard, uuid = get("private_hostname"), get("shard"), get("uuid")
    public, critical = get("public"), get("critical")
    ports, private_ports = get("ports"), get("private_ports")
    if ((service_name is not None and service_name.__class__ is not str)
            or (user is not None and user.__class__ is not str)
            or (password is not None and password.__class__ is not str)
            or (private_hostname is not None and private_hostname.__class__ is not str)
            or (shard is not None and shard.__class__ is not str)
            or (uuid is not None and uuid.__class__ is not str)
            or (public is not None and public.__class__ is not bool)
            or (critical is not None and critical.__class__ is not bool)
            or (ports is not None and ports.__class__ is not dict)
            or (private_ports is not None and private_ports.__class__ is not dict)):
        raise _first_wrong_type(document, key)
    try:
        ports = {} if ports is None else _interned_ports("ports", ports)
        if private_ports is None:
            private_ports = {}
        elif private_ports == ports:
            private_ports = ports
        else:
            private_ports = _interned_ports("private_ports", private_ports)
    except ValueError as error:
        raise MalformedValue(str(error), key) from None

    host = object.__new__(Host)
    put = object.__setattr__  # Host is frozen
    put(host, "hostname", hostname)
    if service_name:
        put(host, "service_name",
            service if service_name == service else sys.intern(service_name))
    put(host, "ports", ports)
    if user:
        put(host, "user", user)
    if password:
        put(host, "password", password)
    if public:
        put(host, "public", True)
    if private_hostname:
        put(host, "private_hostname",
            hostname if private_hostname == hostname else private_hostname)
    put(host, "private_ports", private_ports)
    if critical:
        put(host, "critical", True)
    if shard:
        put(host, "shard", sys.intern(shard))
    if uuid:
        put(host, "uuid", uuid)  # unique: shared with its id by the caller, not interned
    return host


def _first_wrong_type(document: dict[str, Any], key: str) -> MalformedValue:
    """The error for the first host field of the wrong type (the slow path)."""
    for json_name, (_attribute, expected) in _HOST_FIELDS.items():
        value = document.get(json_name)
        if value is not None and type(value) is not expected:
            return _wrong_type("host", json_name, expected, value, key)
    raise AssertionError("no field of the wrong type")  # pragma: no cover
_NO_PORTS: dict[str, Any] = {}


def decode_service(data: str | bytes | bytearray, key: str = "") -> Service:
    """Decode service JSON read from the store (see :func:`decode_host`)."""
    return _decode(data, key, "service", _SERVICE_FIELDS, _build_service)  # type: ignore[no-any-return]


def _build_service(values: dict[str, Any]) -> Service:
    if "name" not in values:
        raise ValueError("service field 'name' is missing")
    ports = _sorted_ports("Service", "ports", values.pop("ports", {}), empty_ok=True)
    service = Service(**values)
    object.__setattr__(service, "ports", ports)  # Service() refuses empty ports; Go writes them
    return service


_DECODERS: dict[type[Any], Callable[[str | bytes | bytearray, str], Any]] = {
    Host: decode_host, Service: decode_service}


def pick(hosts: list[Host]) -> Host:
    """A random host of a non-empty list (used by ``one()`` and ``url()``)."""
    return random.choice(hosts)


if "dataclasses_json" in sys.modules:  # imported before this module (isort's order)
    _dataclasses_json()
