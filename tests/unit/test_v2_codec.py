"""The v2 store's translation of etcd's v2 answers (server-free): watch actions, directory
events, prefixes, error codes."""

from __future__ import annotations

import pytest

from rx_discovery._errors import (
    AuthenticationFailed,
    PermissionDenied,
    RequestTooLarge,
    RevisionCompacted,
    StoreError,
    StoreUnavailable,
)
from rx_discovery.config import Settings
from rx_discovery.store import EventType
from rx_discovery.store.v2.http import Answer, error_of, keys_path
from rx_discovery.store.v2.watch import directory_of, watch_event


def answer(action: str, key: str = "/services/s/u1", index: int = 9, created: int = 9,
           value: str = "v", is_dir: bool = False) -> dict[str, object]:
    node: dict[str, object] = {"key": key, "modifiedIndex": index, "createdIndex": created}
    if is_dir:
        node["dir"] = True
    else:
        node["value"] = value
    return {"action": action, "node": node}


@pytest.mark.parametrize("action", ["set", "create", "update", "compareAndSwap"])
def test_writes_are_puts(action: str) -> None:
    event = watch_event(answer(action, created=4, value="{}"), "/services/s/")
    assert event is not None
    assert (event.type, event.key, event.value, event.mod_revision, event.create_revision) == (
        EventType.PUT, "/services/s/u1", b"{}", 9, 4)


@pytest.mark.parametrize("action", ["delete", "compareAndDelete", "expire"])
def test_deletions_and_expiry_are_deletes(action: str) -> None:
    event = watch_event(answer(action), "/services/s/")
    assert event is not None
    assert (event.type, event.value, event.mod_revision) == (EventType.DELETE, b"", 9)


def test_keys_outside_the_prefix_are_not_events() -> None:
    assert watch_event(answer("set", key="/services_infos/s-x"), "/services_infos/s") is not None
    assert watch_event(answer("set", key="/services_infos/t"), "/services_infos/s") is None


def test_a_vanished_directory_of_the_prefix_forces_a_re_read() -> None:
    for key in ("/services/s", "/services", "/services/s/sub"):
        with pytest.raises(RevisionCompacted):
            watch_event(answer("delete", key=key, is_dir=True), "/services/s/")
    assert watch_event(answer("expire", key="/services/t", is_dir=True), "/services/s/") is None
    assert watch_event(answer("set", key="/services/s", is_dir=True), "/services/s/") is None


def test_the_directory_read_or_watched_for_a_prefix() -> None:
    assert directory_of("/services/s/") == "/services/s"
    assert directory_of("/services_infos/s") == "/services_infos"
    assert directory_of("/") == "" and directory_of("") == ""
    assert keys_path("") == "/v2/keys/"
    assert keys_path("/services/a b/%") == "/v2/keys/services/a%20b/%25"


def test_event_index_cleared_is_revision_compacted_with_the_oldest_index() -> None:
    cleared = Answer(400, {"errorCode": 401, "message": "The event in requested index is "
                           "outdated and cleared", "cause": "the requested history has been "
                           "cleared [1008/7]", "index": 2007}, 2007)
    error = error_of(cleared, "watch")
    assert isinstance(error, RevisionCompacted) and error.compact_revision == 1008


@pytest.mark.parametrize(("status", "code", "kind", "permanent"), [
    (401, 110, AuthenticationFailed, True),
    (403, 0, PermissionDenied, True),
    (413, 0, RequestTooLarge, True),
    (500, 300, StoreUnavailable, False),
    (403, 102, PermissionDenied, True),
    (400, 102, StoreError, False),  # "not a file": neither transient nor denied
])
def test_http_errors(status: int, code: int, kind: type[StoreError], permanent: bool) -> None:
    error = error_of(Answer(status, {"errorCode": code, "message": "m"}, 1), "put")
    assert type(error) is kind
    assert error.permanent is permanent


def test_settings_choose_the_api() -> None:
    assert Settings.from_env({"ETCD_API": "v2"}).api == "v2"
    assert Settings.from_env({}).api == "v3"


def test_an_exact_watch_takes_its_key_alone() -> None:
    assert watch_event(answer("set", key="/services_infos/s"), "/services_infos/s", True)
    for other in ("/services_infos/s-x", "/services_infos/s/y"):
        assert watch_event(answer("set", key=other), "/services_infos/s", True) is None
