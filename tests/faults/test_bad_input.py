"""Bad input: malformed values in etcd, and bad arguments to every public entry point.

Malformed values written by a raw client under ``{prefix}/services/<name>/`` never kill a
stream (no error, no completion); each is reported once on ``Discovery.diagnostics`` (by key,
never quoting the value); valid hosts around them arrive; one-shot queries skip them too.

Bad arguments raise ``ValueError`` (``ConfigError`` is one) before any I/O: the Discovery
points at an endpoint where nothing listens, the call must return well under the timeout, and
the store's only door to the network (``EtcdStore._get_client``) must never have been opened.
"""

from __future__ import annotations

import base64
import collections
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from faultkit import healthy_stream, host, last, raw_client, subscribe
from helpers import wait_until

import rx_discovery
from rx_discovery import (
    ConfigError,
    Discovery,
    DiscoveryError,
    Host,
    HostSet,
    Service,
    UnknownScheme,
)
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.store.etcd import EtcdStore

SERVICE = "svc"

# key suffix under /services/svc/ -> value; none of these is a usable host
MALFORMED: dict[str, bytes] = {
    "not-json": b"not json at all",
    "empty-value": b"",
    "json-list": b"[1, 2, 3]",
    "json-string": b'"a string"',
    "json-null": b"null",
    "json-number": b"42",
    "name-not-a-string": b'{"name": 5, "ports": {"http": "80"}}',
    "port-not-a-string": b'{"name": "h", "ports": {"http": 80}}',
    "ports-a-list": b'{"name": "h", "ports": ["80"]}',
    "public-a-string": b'{"name": "h", "public": "yes"}',
    "critical-a-number": b'{"name": "h", "critical": 1}',
    "nan-port": b'{"name": "h", "ports": {"http": NaN}}',
    "missing-name": b'{"ports": {"http": "80"}}',
    "empty-object": b"{}",
    "empty-name": b'{"name": ""}',
    "one-mebibyte": b"[" + b"0," * ((1 << 20) // 2 - 1) + b"0]",
    "invalid-utf8": b'{"name": "\xff\xfe"}',
    "utf8-bom": b'\xef\xbb\xbf{"name": "h"}',
    "deeply-nested": b'{"name": "h", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    # valid host JSON under keys that are not host keys
    "extra/path/segments": b'{"name": "h", "ports": {"http": "80"}}',
    "": b'{"name": "h", "ports": {"http": "80"}}',  # the key is the prefix itself
}


@pytest.fixture
def discovery(etcd: EmbeddedEtcd, unique_prefix: str) -> Iterator[Discovery]:
    with Discovery(etcd.endpoint, prefix=unique_prefix) as d:
        yield d


def test_malformed_values_never_kill_a_stream_and_are_reported_once(
        etcd: EmbeddedEtcd, discovery: Discovery, unique_prefix: str) -> None:
    root = f"{unique_prefix}/services/{SERVICE}/"
    raw = raw_client(etcd.endpoint)
    try:
        corpus = list(MALFORMED.items())
        half = len(corpus) // 2
        valid: list[str] = []

        def write(items: list[tuple[str, bytes]], tag: str) -> None:
            for n, (suffix, value) in enumerate(items):  # valid, bad, valid, bad...
                uuid = f"valid-{tag}-{n}"
                raw.put(root + uuid, host(uuid, uuid=uuid).to_json())
                valid.append(uuid)
                raw.put(root + suffix, value)
            uuid = f"valid-{tag}-last"
            raw.put(root + uuid, host(uuid, uuid=uuid).to_json())
            valid.append(uuid)

        write(corpus[:half], "snapshot")  # read by the first snapshot
        problems = subscribe(discovery.diagnostics)
        streams = {
            "hosts": subscribe(discovery.hosts(SERVICE)),
            "changes": subscribe(discovery.changes(SERVICE)),
            "events": subscribe(discovery.events(SERVICE)),
            "new": subscribe(discovery.subscribe_new(SERVICE)),
            "down": subscribe(discovery.subscribe_down(SERVICE)),
        }
        wait_until(lambda: streams["hosts"].items, message="first snapshot")
        live_from = len(valid)
        write(corpus[half:], "watch")  # delivered by the watch
        wait_until(lambda: set(streams["hosts"].items[-1]) == set(valid), timeout=10,
                   message="every valid host")
        wait_until(lambda: len(problems.items) >= len(MALFORMED), timeout=10,
                   message="every malformed value reported")

        # a second subscriber joins the running stream: nothing is decoded (or reported) again
        late = subscribe(discovery.hosts(SERVICE))
        assert set(late.items[0]) == set(valid)
        # deleting a bad value is no event; replacing it with a valid host is one
        raw.delete(root + "not-json")
        raw.put(root + "json-list", host("fixed", uuid="json-list").to_json())
        valid.append("json-list")
        wait_until(lambda: set(streams["hosts"].items[-1]) == set(valid), timeout=10)

        reported = collections.Counter(p.key for p in problems.items)
        assert reported == collections.Counter(root + suffix for suffix in MALFORMED)
        for problem in problems.items:
            assert problem.revision > 0 and problem.reason
            assert len(problem.reason) < 200 and "not json at all" not in problem.reason
        assert [h.uuid for h in streams["new"].items] == [*valid[live_from:]]
        assert streams["down"].items == []
        assert all(e.kind == "new" for e in streams["events"].items)
        for name, recorder in {**streams, "late": late, "diagnostics": problems}.items():
            assert healthy_stream(recorder), f"{name} ended: {recorder.error!r}"
        assert {h.uuid for h in discovery.get(SERVICE).all()} == set(valid)
    finally:
        raw.delete_prefix(unique_prefix)  # the session's etcd is shared
        raw.close()


def test_a_host_overwritten_with_garbage_is_gone_from_streams_as_from_queries(
        etcd: EmbeddedEtcd, discovery: Discovery, unique_prefix: str) -> None:
    root = f"{unique_prefix}/services/{SERVICE}/"
    raw = raw_client(etcd.endpoint)
    try:
        sets = subscribe(discovery.hosts(SERVICE))
        problems = subscribe(discovery.diagnostics)
        for uuid in ("a", "b"):
            raw.put(root + uuid, host(uuid, uuid=uuid).to_json())
        wait_until(lambda: set(last(sets)) == {"a", "b"})
        raw.put(root + "a", b"garbage")
        wait_until(lambda: [p.key for p in problems.items] == [root + "a"])
        assert {h.uuid for h in discovery.get(SERVICE).all()} == {"b"}
        raw.put(root + "c", host("c", uuid="c").to_json())  # a later change, to sync on
        wait_until(lambda: "c" in last(sets))
        assert set(last(sets)) == {"b", "c"}, "the stream still holds the garbage host"
        assert healthy_stream(sets)
    finally:
        raw.delete_prefix(unique_prefix)
        raw.close()


# --- bad arguments -----------------------------------------------------------------------

NOWHERE = "http://127.0.0.1:1"  # nothing listens there
TIMEOUT = 10.0
# A call that waited on etcd would take the timeout; anything well under it never waited (the
# real proof is that EtcdStore._get_client was never called). Half the timeout is 10x what a
# refusal takes on a loaded 2-core machine, so this bound cannot flake.
FAST = TIMEOUT / 2
GOOD = Host(hostname="h", ports={"http": "80"})


def _pipe_fd() -> int:
    """A readable pipe holding some bytes: a file descriptor is not a path."""
    read, write = os.pipe()
    os.write(write, b"not a certificate")
    os.close(write)
    return read


Case = Callable[[Discovery], Any]

CASES: list[Any] = [
    # Discovery(...) / from_env
    pytest.param(lambda d: Discovery([]), id="Discovery-no-endpoint"),
    pytest.param(lambda d: Discovery(" , "), id="Discovery-blank-endpoints"),
    pytest.param(lambda d: Discovery("ftp://127.0.0.1:1"), id="Discovery-scheme"),
    pytest.param(lambda d: Discovery("http://127.0.0.1:99999"), id="Discovery-port-range"),
    pytest.param(lambda d: Discovery("http://127.0.0.1:port"), id="Discovery-port-text"),
    pytest.param(lambda d: Discovery("http://"), id="Discovery-no-host"),
    pytest.param(lambda d: Discovery("http://u:p@127.0.0.1:1"), id="Discovery-creds-in-url"),
    pytest.param(lambda d: Discovery([42]), id="Discovery-endpoint-int"),  # type: ignore[list-item]
    pytest.param(lambda d: Discovery(42), id="Discovery-endpoints-int"),  # type: ignore[arg-type]
    pytest.param(lambda d: Discovery("http://127.0.0.1:0"), id="Discovery-port-zero"),
    pytest.param(lambda d: Discovery(NOWHERE, timeout=0), id="Discovery-timeout-zero"),
    pytest.param(lambda d: Discovery(NOWHERE, timeout=-1), id="Discovery-timeout-negative"),
    pytest.param(lambda d: Discovery(NOWHERE, timeout=math.nan), id="Discovery-timeout-nan"),
    pytest.param(lambda d: Discovery(NOWHERE, timeout="5"), id="Discovery-timeout-str"),  # type: ignore[arg-type]
    pytest.param(lambda d: Discovery(NOWHERE, timeout=math.inf), id="Discovery-timeout-inf"),
    pytest.param(lambda d: Discovery(NOWHERE, prefix="a b"), id="Discovery-prefix-space"),
    pytest.param(lambda d: Discovery(NOWHERE, prefix=5), id="Discovery-prefix-int"),  # type: ignore[arg-type]
    pytest.param(lambda d: Discovery(NOWHERE, user="svc"), id="Discovery-user-no-password"),
    pytest.param(lambda d: Discovery(NOWHERE, password="secret"),
                 id="Discovery-password-no-user"),
    pytest.param(lambda d: Discovery(NOWHERE, client_cert=b"cert"), id="Discovery-cert-no-key"),
    pytest.param(lambda d: Discovery(NOWHERE, ca_cert="/nonexistent/ca.pem"),
                 id="Discovery-ca-missing-file"),
    pytest.param(lambda d: Discovery(NOWHERE, ca_cert=_pipe_fd()), id="Discovery-ca-fd"),  # type: ignore[arg-type]
    pytest.param(lambda d: Discovery.in_memory(prefix="a b"), id="in_memory-prefix"),
    pytest.param(lambda d: _from_env(ETCD_HOSTS="ftp://x:1"), id="from_env-hosts"),
    pytest.param(lambda d: _from_env(ETCD_TLS_INMEMORY="maybe"), id="from_env-inmemory"),
    pytest.param(lambda d: _from_env(ETCD_TLS_INMEMORY="true", ETCD_CACERT="%%not base64%%"),
                 id="from_env-base64"),
    pytest.param(lambda d: _from_env(ETCD_CACERT="/nonexistent/ca.pem"), id="from_env-ca-file"),
    pytest.param(lambda d: _from_env(ETCD_USER="svc"), id="from_env-user-no-password"),
    pytest.param(lambda d: _from_env(ETCD_PASSWORD="secret"), id="from_env-password-no-user"),
    pytest.param(lambda d: _from_env(ETCD_PREFIX="a b"), id="from_env-prefix"),
    # register
    pytest.param(lambda d: d.register("", GOOD), id="register-service-empty"),
    pytest.param(lambda d: d.register("a/b", GOOD), id="register-service-slash"),
    pytest.param(lambda d: d.register(" svc", GOOD), id="register-service-space"),
    pytest.param(lambda d: d.register("s\x00", GOOD), id="register-service-nul"),
    pytest.param(lambda d: d.register(5, GOOD), id="register-service-int"),  # type: ignore[arg-type]
    pytest.param(lambda d: d.register(None, GOOD), id="register-service-none"),  # type: ignore[arg-type]
    pytest.param(lambda d: d.register("svc", None), id="register-host-none"),  # type: ignore[arg-type]
    pytest.param(lambda d: d.register("svc", {"name": "h"}), id="register-host-dict"),  # type: ignore[arg-type]
    pytest.param(lambda d: d.register("svc", Host(hostname="h", uuid="a/b")),
                 id="register-uuid-slash"),
    # what register() cannot write or read back (issue 11 section 5), refused before any I/O
    *[pytest.param(lambda d, field=field, value=value: d.register(
        "svc", Host(**{"hostname": "h", "ports": {"http": "80"}, field: value})),
        id=f"register-{field}-{label}")
      for field, label, value in (
          ("hostname", "slash", "a/b"), ("hostname", "html", "<b>x</b>"),
          ("hostname", "space", "a b"), ("hostname", "newline", "h\n"),
          ("hostname", "surrogate", "h\udc80"), ("private_hostname", "slash", "a/b"),
          ("private_hostname", "tab", "a\tb"), ("user", "surrogate", "u\udc80"),
          ("password", "surrogate", "p\udc80"), ("shard", "surrogate", "s\udc80"),
          ("uuid", "space", "a b"), ("uuid", "surrogate", "\udc80"),
          ("ports", "abc", {"http": "abc"}), ("ports", "99999", {"http": "99999"}),
          ("ports", "minus-one", {"http": "-1"}), ("ports", "key-space", {"ht tp": "80"}),
          ("private_ports", "zero", {"http": "0"}))],
    pytest.param(lambda d: d.register("svc\udc80", GOOD), id="register-service-surrogate"),
    pytest.param(lambda d: d.register("svc", GOOD, ttl=0), id="register-ttl-zero"),
    pytest.param(lambda d: d.register("svc", GOOD, ttl=0.5), id="register-ttl-half"),
    pytest.param(lambda d: d.register("svc", GOOD, ttl=-5), id="register-ttl-negative"),
    pytest.param(lambda d: d.register("svc", GOOD, ttl=math.nan), id="register-ttl-nan"),
    pytest.param(lambda d: d.register("svc", GOOD, ttl=math.inf), id="register-ttl-inf"),
    pytest.param(lambda d: d.register("svc", GOOD, ttl="5"), id="register-ttl-str"),  # type: ignore[arg-type]
    pytest.param(lambda d: d.register("svc", GOOD, ttl=True), id="register-ttl-bool"),
    # streams and queries
    *[pytest.param(lambda d, m=method, n=name: getattr(d, m)(n), id=f"{method}-{label}")
      for method in ("hosts", "subscribe_new", "subscribe_down", "credentials", "events",
                     "changes", "services", "get")
      for label, name in (("empty", ""), ("slash", "a/b"), ("int", 5), ("none", None),
                          ("newline", "svc\n"))],
    pytest.param(lambda d: d.get("svc", shard=""), id="get-shard-empty"),
    pytest.param(lambda d: d.get("svc", shard=5), id="get-shard-int"),  # type: ignore[arg-type]
    # Host, Service and URLs
    pytest.param(lambda d: Host(hostname=""), id="Host-hostname-empty"),
    pytest.param(lambda d: Host(hostname=5), id="Host-hostname-int"),  # type: ignore[arg-type]
    pytest.param(lambda d: Host(hostname=None), id="Host-hostname-none"),  # type: ignore[arg-type]
    pytest.param(lambda d: Host(hostname="h", ports={"http": 80}), id="Host-port-int"),  # type: ignore[dict-item]
    pytest.param(lambda d: Host(hostname="h", ports={"": "80"}), id="Host-port-name-empty"),
    pytest.param(lambda d: Host(hostname="h", ports={"http": ""}), id="Host-port-empty"),
    pytest.param(lambda d: Host(hostname="h", ports="80"), id="Host-ports-str"),  # type: ignore[arg-type]
    pytest.param(lambda d: Host(hostname="h", private_ports={"http": 80}),  # type: ignore[dict-item]
                 id="Host-private-port-int"),
    pytest.param(lambda d: Host(hostname="h", public="yes"), id="Host-public-str"),  # type: ignore[arg-type]
    pytest.param(lambda d: Host(hostname="h", critical=1), id="Host-critical-int"),  # type: ignore[arg-type]
    pytest.param(lambda d: Host(hostname="h", user=5), id="Host-user-int"),  # type: ignore[arg-type]
    pytest.param(lambda d: Host(hostname="h", password=5), id="Host-password-int"),  # type: ignore[arg-type]
    pytest.param(lambda d: Host(hostname="h", shard=5), id="Host-shard-int"),  # type: ignore[arg-type]
    pytest.param(lambda d: Host(hostname="h", uuid=5), id="Host-uuid-int"),  # type: ignore[arg-type]
    pytest.param(lambda d: Host.from_json(b"not json"), id="Host-from_json"),
    pytest.param(lambda d: GOOD.url("gopher"), id="Host-url-scheme"),
    pytest.param(lambda d: GOOD.private_url("gopher"), id="Host-private_url-scheme"),
    pytest.param(lambda d: Host(hostname="h", ports={"https": "443"}).url("http"),
                 id="Host-url-missing-port"),
    pytest.param(lambda d: GOOD.url("http", path=5), id="Host-url-path-int"),  # type: ignore[arg-type]
    pytest.param(lambda d: HostSet("s", [GOOD]).url("gopher"), id="HostSet-url-scheme"),
    pytest.param(lambda d: Service(""), id="Service-name-empty"),
    pytest.param(lambda d: Service("s", ports={"http": 80}), id="Service-port-int"),  # type: ignore[dict-item]
    pytest.param(lambda d: Service.from_json(b"[]"), id="Service-from_json"),
    # module-level shortcuts (on the lazily created default Discovery)
    pytest.param(lambda d: rx_discovery.register("", GOOD), id="module-register-service"),
    pytest.param(lambda d: rx_discovery.register("svc", GOOD, ttl=0), id="module-register-ttl"),
    pytest.param(lambda d: rx_discovery.get(""), id="module-get"),
    pytest.param(lambda d: rx_discovery.get("svc", shard=""), id="module-get-shard"),
    pytest.param(lambda d: rx_discovery.hosts("a/b"), id="module-hosts"),
    pytest.param(lambda d: rx_discovery.subscribe_new(""), id="module-subscribe_new"),
    pytest.param(lambda d: rx_discovery.subscribe_down(""), id="module-subscribe_down"),
    pytest.param(lambda d: rx_discovery.credentials(""), id="module-credentials"),
]

_ENV: dict[str, str] = {}


def _from_env(**env: str) -> Discovery:
    _ENV.clear()
    _ENV.update(env)
    return Discovery.from_env()


@pytest.fixture
def no_io(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Count every opening of the network (EtcdStore._get_client, which every call and watch
    goes through) and point every Discovery, including the module's default, at nowhere."""
    opened: list[str] = []
    original = EtcdStore._get_client

    def counting(self: EtcdStore) -> Any:
        opened.append(repr(self))
        return original(self)

    monkeypatch.setattr(EtcdStore, "_get_client", counting)
    for var in ("ETCD_HOSTS", "ETCD_HOST", "ETCD_CACERT", "ETCD_TLS_CERT", "ETCD_TLS_KEY",
                "ETCD_TLS_INMEMORY", "ETCD_USER", "ETCD_PASSWORD", "ETCD_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ETCD_HOSTS", NOWHERE)
    monkeypatch.setattr(rx_discovery, "_default", None)
    real_from_env = rx_discovery.config.Settings.from_env

    def from_env(environ: Any = None) -> Any:  # _from_env cases add their variables
        return real_from_env({"ETCD_HOSTS": NOWHERE, **_ENV} if environ is None else environ)

    monkeypatch.setattr(rx_discovery.config.Settings, "from_env", staticmethod(from_env))
    yield opened
    _ENV.clear()
    default = rx_discovery._default
    if default is not None:
        default.close()


@pytest.mark.parametrize("case", CASES)
def test_bad_arguments_raise_value_error_before_any_io(case: Case, no_io: list[str]) -> None:
    with Discovery(NOWHERE, timeout=TIMEOUT) as discovery:
        started = time.monotonic()
        with pytest.raises(ValueError) as caught:
            result = case(discovery)
            if hasattr(result, "close"):
                result.close()
        elapsed = time.monotonic() - started
    assert elapsed < FAST, f"took {elapsed:.2f}s"
    assert no_io == [], "the network was used before the argument was refused"
    assert str(caught.value), "the error says what is wrong"
    if isinstance(caught.value, ConfigError | UnknownScheme):
        assert "secret" not in str(caught.value)


def test_valid_arguments_pass_the_same_checks(no_io: list[str]) -> None:
    """The harness itself: good arguments are accepted, and nothing is opened until used."""
    with Discovery(NOWHERE, timeout=TIMEOUT) as discovery:
        for method in ("hosts", "subscribe_new", "subscribe_down", "credentials", "events",
                       "changes", "services"):
            getattr(discovery, method)(SERVICE)  # cold until subscribed
        discovery.get(SERVICE, shard="a")
        assert GOOD.url("http", "/x") == "http://h:80/x"
        rx_discovery.hosts(SERVICE)
        with Discovery.from_env():
            pass
        assert no_io == []
        with pytest.raises(DiscoveryError):  # the positive control: a real call is counted
            discovery.get(SERVICE).all()
        assert no_io
    ca = trustme.CA().cert_pem.bytes()  # a real certificate: Settings checks that it loads
    pem = base64.b64encode(ca).decode()
    with _from_env(ETCD_TLS_INMEMORY="true", ETCD_CACERT=pem) as configured:
        assert configured.settings.ca_cert == ca
