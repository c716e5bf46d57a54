"""Host and Service's dataclasses-json field metadata (the JSON names, omit-when-empty, Go's
``null`` for no ports) holds from import, whoever encodes first and however many threads do.

dataclasses-json itself is imported on first use (issue 12: a process that only watches never
loads it), so these run in fresh interpreters: one where nothing was encoded yet.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from dataclasses_json import config

from rx_discovery import Host
from rx_discovery.model import _NAMED_NAME, _NIL_WHEN_EMPTY, _OMIT_EMPTY

HOST_JSON = '{"name":"n","service_name":"s","ports":null,"uuid":"u"}'


def _run(script: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


_DATACLASSES_JSON = "from dataclasses_json import DataClassJsonMixin, dataclass_json"
_RX_DISCOVERY = "from rx_discovery import Host"


@pytest.mark.parametrize("imports", [f"{_DATACLASSES_JSON}; {_RX_DISCOVERY}",
                                     f"{_RX_DISCOVERY}; {_DATACLASSES_JSON}"],
                         ids=["dataclasses-json first", "rx_discovery first"])
def test_a_user_dataclass_json_class_holding_a_host_writes_its_wire_names_from_the_start(
        imports: str) -> None:
    """A user's own ``@dataclass_json`` class with a Host field (DESIGN: Host is a
    dataclasses-json type) encodes and decodes the host's wire format even when no Host was
    encoded before in the process, whichever was imported first: dataclasses-json reads the
    field metadata directly."""
    out = _run("""
        import json
        from dataclasses import dataclass
        IMPORTS

        @dataclass_json
        @dataclass
        class Inventory:
            host: Host

        host = Host("n", service_name="s", uuid="u")
        print(json.dumps(json.loads(Inventory(host).to_json())["host"], separators=(",", ":")))
        print(Inventory.from_json('{"host":{"name":"m","ports":{"http":"80"}}}').host.hostname)
        print(DataClassJsonMixin.to_json(host, separators=(",", ":")))
    """.replace("IMPORTS", imports))
    assert out == [HOST_JSON, "m", HOST_JSON], out


def test_the_first_encodes_on_many_threads_at_once_all_write_go_bytes() -> None:
    """Eight threads released together make the process's first encodes (to_json, to_dict,
    from_dict, of Host and Service), switching every microsecond; in three fresh
    interpreters at once."""
    script = """
        import sys, threading
        sys.setswitchinterval(1e-6)
        from rx_discovery import Host, Service
        host, service = Host("n", service_name="s", uuid="u"), Service("svc")
        calls = [host.to_json, service.to_json, lambda: str(host.to_dict()),
                 lambda: repr(Host.from_dict({"name": "n", "ports": None}))]
        barrier, out = threading.Barrier(8), []

        def run(index):
            barrier.wait()
            out.append((index % 4, calls[index % 4]()))

        threads = [threading.Thread(target=run, args=(index,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for index, text in sorted(out):
            print(text)
    """
    processes = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
    want = [HOST_JSON] * 2 + ['{"name":"svc","critical":false}'] * 2 + [
        "{'name': 'n', 'service_name': 's', 'ports': None, 'uuid': 'u'}"] * 2 + [
        repr(Host("n"))] * 2
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        assert stdout.splitlines() == want


def test_the_metadata_is_what_dataclasses_json_config_writes() -> None:
    """Written by hand (so that it holds before dataclasses-json is imported), it must mean
    what ``config()`` would have written."""
    named = config(field_name="name")["dataclasses_json"]
    assert set(_NAMED_NAME["dataclasses_json"]) == set(named) == {"letter_case"}
    assert _NAMED_NAME["dataclasses_json"]["letter_case"]("hostname") == "name"
    assert named["letter_case"]("hostname") == "name"
    assert set(_OMIT_EMPTY["dataclasses_json"]) == {"exclude"}
    omit = _OMIT_EMPTY["dataclasses_json"]["exclude"]
    assert [omit(value) for value in ("", "x", False, True, {}, {"a": "1"})] == [
        True, False, True, False, True, False]
    assert set(_NIL_WHEN_EMPTY["dataclasses_json"]) == {"encoder"}
    nil = _NIL_WHEN_EMPTY["dataclasses_json"]["encoder"]
    assert nil({}) is None and nil({"a": "1"}) == {"a": "1"}


def test_a_user_schema_holding_a_host_nests_its_schema_when_dataclasses_json_came_first(
        ) -> None:
    """dataclasses-json's marshmallow schema nests a field's own schema only for a subclass of
    its mixin: Host and Service are registered as (virtual) ones once dataclasses-json is
    loaded, here by the user before rx_discovery (isort's order)."""
    out = _run("""
        from dataclasses import dataclass
        from dataclasses_json import DataClassJsonMixin, dataclass_json
        from rx_discovery import Host, Service

        @dataclass_json
        @dataclass
        class Inventory:
            host: Host

        host = Host("n", uuid="u")
        print(isinstance(host, DataClassJsonMixin), issubclass(Service, DataClassJsonMixin))
        schema = Inventory.schema()
        print(schema.loads(schema.dumps(Inventory(host))).host == host)
    """)
    assert out == ["True True", "True"], out


def test_imported_after_rx_discovery_the_types_register_on_first_use() -> None:
    """The README's corner: dataclasses-json imported after rx_discovery. Host is a
    DataClassJsonMixin once the library used dataclasses-json (a first encode); its JSON is
    right before (the wire-names test above, in this order too)."""
    out = _run("""
        from rx_discovery import Host
        from dataclasses_json import DataClassJsonMixin

        host = Host("n")
        print(isinstance(host, DataClassJsonMixin))
        host.to_json()
        print(isinstance(host, DataClassJsonMixin))
    """)
    assert out == ["False", "True"], out
