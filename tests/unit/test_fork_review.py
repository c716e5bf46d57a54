"""Review of fork detection (issue 11 §8 / 15): every entry point of a Discovery or a
Registration made before fork() raises UsedAfterFork in the child, none blocks there."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from rx_discovery import Discovery
from rx_discovery.lifecycle import UsedAfterFork
from rx_discovery.store.memory import MemoryStore
from rx_discovery.testing import make_host


def in_child(use: Callable[[], Any]) -> str:
    """Run ``use`` in a forked child; what it raised (its class name) or "nothing"."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, whatever happens
        try:
            os.close(read)
            try:
                use()
                outcome = "nothing"
            except BaseException as error:
                outcome = type(error).__name__
            os.write(write, outcome.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


@pytest.fixture
def made_before_fork() -> Any:
    discovery = Discovery(store=MemoryStore())
    registration = discovery.register("api", make_host(1), ttl=30).wait(10)
    yield discovery, registration
    discovery.close()


@pytest.mark.parametrize("entry", [
    "diagnostics", "registration.wait", "registration.status", "registration.credentials",
    "hosts", "hosts (a stream object made before the fork)", "changes (made before the fork)",
    "services (made before the fork)", "credentials (made before the fork)"])
def test_every_entry_point_raises_used_after_fork_in_the_child(
        made_before_fork: Any, entry: str) -> None:
    discovery, registration = made_before_fork
    made = discovery.hosts("other")
    changes, services = discovery.changes("other"), discovery.services("other")
    credentials = discovery.credentials("other")
    use = {
        "changes (made before the fork)": lambda: changes.subscribe(),
        "services (made before the fork)": lambda: services.subscribe(),
        "credentials (made before the fork)": lambda: credentials.subscribe(),
        "diagnostics": lambda: discovery.diagnostics.subscribe(),
        # (review12: hosts() neither failed nor read in the child: it delivered nothing)
        "hosts": lambda: discovery.hosts("api").subscribe(),
        "hosts (a stream object made before the fork)": lambda: made.subscribe(),
        "registration.wait": lambda: registration.wait(timeout=0.5),
        "registration.status": lambda: registration.status.subscribe(),
        "registration.credentials": lambda: registration.credentials.subscribe(),
    }[entry]
    assert in_child(use) == UsedAfterFork.__name__
    assert registration.ready  # the parent's registration is untouched


def test_a_balancer_made_before_fork_raises_used_after_fork_in_the_child(
        made_before_fork: Any) -> None:
    """Its host set is frozen in the child (no watch thread follows a fork) and its lock may
    have been held by a parent thread at the fork: picking there must not silently use (or
    hang on) the parent's state."""
    discovery, registration = made_before_fork
    balancer = discovery.balancer("api")
    assert balancer.pick(timeout=10).uuid == registration.uuid
    assert in_child(lambda: balancer.pick(timeout=0.5)) == UsedAfterFork.__name__
    assert in_child(lambda: balancer.pick_other((), timeout=0.5)) == UsedAfterFork.__name__
    assert balancer.pick().uuid == registration.uuid  # the parent's still works


def test_the_module_level_default_discovery_is_made_again_in_a_forked_child(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortcuts' Discovery is "process-wide": a pre-fork server that used it in its
    master (e.g. a preloaded app) must not leave its workers with one that raises
    UsedAfterFork (they never made it: they cannot "create it after fork")."""
    import rx_discovery

    monkeypatch.setenv("ETCD_HOST", "http://127.0.0.1:1")  # nothing there: no I/O is needed
    monkeypatch.setattr(rx_discovery, "_default", None)
    parent = rx_discovery.default()
    try:
        def use() -> None:
            child = rx_discovery.default()
            assert child is not parent
            child.health.subscribe().dispose()  # raises UsedAfterFork if it were the parent's
            child.close()

        assert in_child(use) == "nothing"
    finally:
        parent.close()


def test_sending_a_discovery_or_registration_to_a_spawned_process_names_the_fix() -> None:
    """multiprocessing's spawn and forkserver start methods pickle the arguments: the error
    must say what to do (as UsedAfterFork does), not "cannot pickle '_thread.lock'"."""
    import pickle

    discovery = Discovery(store=MemoryStore())
    try:
        registration = discovery.register("api", make_host(1), ttl=30)
        for thing in (discovery, registration):
            with pytest.raises(TypeError, match="in each process"):
                pickle.dumps(thing)
    finally:
        discovery.close()


@pytest.mark.parametrize("fork_support", ["false", "0", "unset"])
def test_a_child_of_a_grpc_user_with_fork_support_off_gets_a_clear_error_before_any_io(
        monkeypatch: pytest.MonkeyPatch, fork_support: str) -> None:
    """With GRPC_ENABLE_FORK_SUPPORT=false (what a pre-fork master that registers needs), gRPC
    cannot work in a forked child: a Discovery made there never registered (0 in 10), each
    call hanging to its timeout. It fails at once instead, naming the variable and the fix;
    with fork support on (unset), a child makes its own Discovery as before."""
    from rx_discovery import _lifecycle
    from rx_discovery._errors import ConfigError

    if fork_support == "unset":
        monkeypatch.delenv("GRPC_ENABLE_FORK_SUPPORT", raising=False)
    else:
        monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", fork_support)
    monkeypatch.setattr(_lifecycle, "_grpc_used_in", _lifecycle.fork_generation())

    def make() -> None:
        with Discovery("http://127.0.0.1:9"):  # nothing listens: no I/O may happen
            pass

    class Named(Exception):
        """The error named the variable and the fix."""

    def message() -> None:
        try:
            make()
        except ConfigError as error:
            if "GRPC_ENABLE_FORK_SUPPORT" in str(error) and "workers" in str(error):
                raise Named from None
            raise

    make()  # the parent that used gRPC: fine
    expected = "nothing" if fork_support == "unset" else ConfigError.__name__
    assert in_child(make) == expected
    if fork_support != "unset":
        assert in_child(message) == Named.__name__
