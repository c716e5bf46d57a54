"""Wire format, validation and URLs of Host / Service / Credentials."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from rx_discovery import Credentials, Host, MalformedValue, Service, UnknownScheme
from rx_discovery.model import decode_host
from rx_discovery.registration import prepare_host, service_document

# What Go's encoding/json writes for the README's example (field order of the Go structs,
# map keys sorted, omitempty fields dropped).
GO_HOST = (
    '{"name":"public-domain.dev","service_name":"my-service",'
    '"ports":{"http":"80","https":"443"},"user":"user","password":"secret","public":true,'
    '"private_hostname":"node-1.internal.dev","private_ports":{"http":"8080","https":"8443"},'
    '"critical":true,"uuid":"your-service-uuid-node-1.internal.dev"}'
)
GO_SERVICE = (
    '{"name":"my-service","critical":true,"hostname":"public-domain.dev","user":"user",'
    '"password":"secret","ports":{"http":"80","https":"443"},"public":true}'
)
GO_MINIMAL_HOST = '{"name":"h","service_name":"s","ports":null}'  # Go: a nil map


def readme_host() -> Host:
    return Host(hostname="public-domain.dev", ports={"https": "443", "http": "80"},
                critical=True, user="user", password="secret", public=True,
                private_hostname="node-1.internal.dev",
                private_ports={"https": "8443", "http": "8080"})


def test_host_json_is_byte_for_byte_what_go_writes() -> None:
    host = dataclasses.replace(prepare_host("my-service", readme_host()),
                               uuid="your-service-uuid-node-1.internal.dev")
    assert host.to_json() == GO_HOST


def test_service_json_is_byte_for_byte_what_go_writes() -> None:
    assert service_document("my-service", readme_host()).to_json() == GO_SERVICE


def test_empty_fields_are_omitted_but_name_service_name_ports_are_not() -> None:
    assert Host(hostname="h", service_name="s").to_json() == GO_MINIMAL_HOST
    assert Service("s").to_json() == '{"name":"s","critical":false}'


def test_go_html_escaping_and_raw_utf8() -> None:
    host = Host(hostname="a<b>&c", service_name="é\u2028")
    assert host.to_json() == ('{"name":"a\\u003cb\\u003e\\u0026c",'
                              '"service_name":"é\\u2028","ports":null}')
    assert Host.from_json(host.to_json()) == host


def test_decode_reads_the_pretty_printed_readme_example_and_ignores_unknown_fields() -> None:
    text = json.dumps({**json.loads(GO_HOST), "critcal": True, "extra": {"x": 1}}, indent=3)
    host = Host.from_json(text)
    assert host.hostname == "public-domain.dev"
    assert host.private_ports == {"http": "8080", "https": "8443"}
    assert host.uuid == "your-service-uuid-node-1.internal.dev"


def test_fast_decoder_agrees_with_dataclasses_json() -> None:
    for text in (GO_HOST, GO_MINIMAL_HOST, '{"name":"h","ports":{"b":"2","a":"1"},"zz":3}'):
        assert Host.from_json(text) == Host.from_dict(json.loads(text), infer_missing=True)
    assert Service.from_json(GO_SERVICE) == Service.from_dict(json.loads(GO_SERVICE))


def test_decoded_host_sets_its_fields_in_declaration_order() -> None:
    # the fast decoder sets each field by hand, in this order (CPython then stores them
    # inline); a field added to Host must be added there too
    assert [f.name for f in dataclasses.fields(Host)] == [
        "hostname", "service_name", "ports", "user", "password", "public", "private_hostname",
        "private_ports", "critical", "shard", "uuid"]
    decoded = Host.from_json(GO_HOST)  # every field but shard
    assert list(vars(decoded)) == [f.name for f in dataclasses.fields(Host) if f.name != "shard"]
    # fields left at their default are not set: they read the dataclass's class attribute
    minimal = Host.from_json('{"name":"h","ports":{"http":"80"}}')
    assert list(vars(minimal)) == ["hostname", "ports", "private_ports"]
    assert minimal == Host("h", ports={"http": "80"})
    assert (minimal.user, minimal.public, minimal.uuid, minimal.shard) == ("", False, "", "")
    assert minimal.to_json() == Host("h", ports={"http": "80"}).to_json()
    assert dataclasses.replace(minimal, user="u").user == "u"


def test_a_host_decoded_for_its_service_shares_the_service_name() -> None:
    service = "".join(["a", "pi"])  # built at run time: not the interned literal
    text = b'{"name":"n","service_name":"api","uuid":"u-1"}'
    assert decode_host(text, "k", service).service_name is service
    assert decode_host(text, "k").service_name is sys.intern("api")  # no service: interned
    other = decode_host(b'{"name":"n","service_name":"web"}', "k", service)
    assert other.service_name == "web"


def test_decoded_hosts_share_repeated_strings_and_equal_ports() -> None:
    text = ('{"name":"n","ports":{"http":"80"},"private_hostname":"n",'
            '"private_ports":{"http":"80"},"shard":"s-1","uuid":"u-1"}')
    one, two = Host.from_json(text), Host.from_json(text.encode())
    assert one == two
    assert one.private_ports is one.ports and one.private_hostname is one.hostname
    assert one.shard is two.shard
    assert next(iter(one.ports.values())) is next(iter(two.ports.values()))
    # a private part that differs is its own
    other = Host.from_json('{"name":"n","ports":{"http":"80"},"private_ports":{"http":"81"}}')
    assert other.private_ports == {"http": "81"} and other.ports == {"http": "80"}


@pytest.mark.parametrize("text, reason", [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "UTF-8"),
    (b"[1, 2]", "JSON list"),
    (b'{"ports": {}}', "'name' is missing"),
    (b'{"name": 5}', "'name' must be a JSON string"),
    (b'{"name": "h", "ports": {"http": 80}}', "must be a non-empty string"),
    (b'{"name": "h", "ports": "80"}', "'ports' must be a JSON dict"),
    (b'{"name": "h", "public": "yes"}', "'public' must be a JSON bool"),
])
def test_malformed_values_raise_malformed_value_without_the_value(text: bytes,
                                                                 reason: str) -> None:
    with pytest.raises(MalformedValue) as caught:
        Host.from_json(text)
    assert reason in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_malformed_message_never_contains_the_password() -> None:
    with pytest.raises(MalformedValue) as caught:
        Host.from_json(b'{"name": "h", "password": "hunter2", "ports": {"x": 1}}')
    assert "hunter2" not in str(caught.value)


def test_repr_hides_passwords() -> None:
    host = readme_host()
    assert "secret" not in repr(host)
    assert "secret" not in repr(service_document("s", host))
    assert "secret" not in repr(Credentials("u", "secret"))
    assert "secret" not in host._repr_html_()
    assert repr(Credentials("u", "secret")) == "Credentials(user='u', password='***')"


@pytest.mark.parametrize("kwargs, message", [
    ({"hostname": ""}, "hostname must not be empty"),
    ({"hostname": "h", "ports": {"http": 80}}, "must be a non-empty string"),
    ({"hostname": "h", "ports": ["80"]}, "mapping of str to str"),
    ({"hostname": 3}, "must be a string"),
    ({"hostname": "h", "public": "yes"}, "must be a bool"),
])
def test_bad_host_arguments_raise_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Host(**kwargs)  # type: ignore[arg-type]


def test_url_scheme_fallback_credentials_and_path() -> None:
    host = readme_host()
    assert host.url() == "http://user:secret@public-domain.dev:80"
    assert host.url("https", "/a/b") == "https://user:secret@public-domain.dev:443/a/b"
    assert host.url(path="x") == "http://user:secret@public-domain.dev:80/x"
    assert host.private_url() == "http://user:secret@node-1.internal.dev:8080"
    only_https = Host(hostname="h", ports={"https": "443"})
    assert only_https.url() == "https://h:443"
    with pytest.raises(UnknownScheme):
        only_https.url("ftp")
    with pytest.raises(UnknownScheme):
        Host(hostname="h").url()


def test_url_escapes_credentials() -> None:
    host = Host(hostname="h", ports={"http": "80"}, user="a@b", password="p:/@")
    assert host.url() == "http://a%40b:p%3A%2F%40@h:80"


def test_registration_defaults_match_the_go_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTNAME", "this-machine")
    private = prepare_host("svc", Host(hostname="10.0.0.1", ports={"http": "80"}))
    assert private.service_name == "svc"
    assert private.private_hostname == "10.0.0.1"
    assert private.private_ports == {"http": "80"}
    assert private.uuid.endswith("-10.0.0.1") and len(private.uuid) == 36 + 1 + 8
    public = prepare_host("svc", Host(hostname="pub.dev", ports={"http": "80"}, public=True))
    assert public.private_hostname == "this-machine"
    assert public.uuid.endswith("-this-machine")
    assert service_document("svc", private).to_json() == '{"name":"svc","critical":false}'
    assert json.loads(service_document("svc", public).to_json()) == {
        "name": "svc", "critical": False, "hostname": "pub.dev", "ports": {"http": "80"},
        "public": True}
