"""Lifecycle against real processes and a real etcd (issue 15): a health probe gating a
registration, drain on SIGTERM in a plain script, workers forked from a process that holds a
Discovery, and the EmbeddedEtcd reaper with a forked child.

Every wait is a condition with a deadline; the deadlines bound failures only.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from helpers import wait_until

from rx_discovery import Discovery, Host, RegistrationStatus
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.lifecycle import http_probe

SCRIPT = Path(__file__).with_name("lifecycle_process.py")


class Lines:
    """The stdout lines of a process, read on a thread (with the time each arrived)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.items: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.items.append((time.monotonic(), line.strip()))

    def first(self, word: str, timeout: float = 30.0) -> str:
        wait_until(lambda: any(line.startswith(word) for _, line in self.items), timeout,
                   message=f"a line starting with {word!r}")
        return next(line for _, line in self.items if line.startswith(word))


def start(*args: str) -> tuple[subprocess.Popen[str], Lines]:
    process = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE,
                               text=True, env=os.environ.copy())
    return process, Lines(process)


@pytest.fixture
def discovery(etcd: EmbeddedEtcd, unique_prefix: str) -> Iterator[Discovery]:
    with Discovery(etcd.endpoint, prefix=unique_prefix) as d:
        yield d


# --- readiness probe -------------------------------------------------------------------------

class Health(http.server.BaseHTTPRequestHandler):
    status = 200
    answered: ClassVar[list[int]] = []  # the status of every poll answered, in order

    def do_GET(self) -> None:
        type(self).answered.append(type(self).status)
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_an_http_probe_gates_a_registration_withdrawn_within_a_second(
        discovery: Discovery) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
    try:
        Health.status = 503
        registration = discovery.register("api", Host(hostname="probed", ports={"http": "1"}),
                                          ttl=30, healthy=http_probe(url, 0.2))
        # a few polls answered 503 (a condition, not a sleep: on a loaded machine 0.5 s may
        # hold none, and the check below would then prove nothing): nothing may be written
        polled = len(Health.answered)
        wait_until(lambda: Health.answered[polled:].count(503) >= 3, 10.0,
                   message="three polls answered 503")
        assert not _registered(discovery)
        Health.status = 200
        registration.wait(10)
        assert _registered(discovery)
        Health.status = 503
        flipped = time.monotonic()
        wait_until(lambda: not _registered(discovery), 5.0, 0.005, "the key removed")
        withdrawn_after = time.monotonic() - flipped
        print(f"withdrawn {withdrawn_after:.3f}s after the endpoint failed (poll 0.2 s)")
        assert withdrawn_after < 3.0  # 1 s asked; ttl 30 s: it was revoked, not expired
        assert registration.current_status is RegistrationStatus.WITHDRAWN
        Health.status = 200
        registration.wait(10)
        server.shutdown()  # a refused connection is "not healthy" too
        wait_until(lambda: not _registered(discovery), 5.0, 0.005, "the key removed")
        registration.dispose()
    finally:
        server.shutdown()
        server.server_close()


def _registered(discovery: Discovery) -> bool:
    return any(h.hostname == "probed" for h in _hosts(discovery))


def _hosts(discovery: Discovery) -> list[Host]:
    from rx_discovery import DiscoveryError

    try:
        return discovery.get("api").all()
    except DiscoveryError:
        return []


# --- drain on SIGTERM --------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [(), ("user-handler",)], ids=["default", "user-handler"])
def test_sigterm_removes_the_key_at_once_serves_through_the_drain_then_runs_the_old_handler(
        etcd: EmbeddedEtcd, unique_prefix: str, discovery: Discovery,
        flags: tuple[str, ...]) -> None:
    drain = 4.0  # wide enough that a loaded machine sees the key gone well before the end
    process, lines = start("drain", etcd.endpoint, unique_prefix, str(drain), *flags)
    try:
        uuid = lines.first("ready").split()[1]
        assert [h.uuid for h in _hosts(discovery)] == [uuid]
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: not _hosts(discovery), 10.0, 0.01, "the key removed")
        removed = time.monotonic()
        assert process.poll() is None  # still running: draining
        code = process.wait(30)
        ended = time.monotonic()
        ticks_during = [t for t, line in lines.items if line.startswith("tick") and
                        removed < t < ended]
        print(f"key removed {removed - sent:.3f}s after SIGTERM; exited after "
              f"{ended - sent:.3f}s (drain {drain}s); {len(ticks_during)} ticks meanwhile")
        assert ended - sent >= drain  # the drain was waited in full
        assert len(ticks_during) >= 5  # the main thread kept working during the drain
        if flags:
            assert code == 0 and any(line == "user handler" for _, line in lines.items)
        else:
            assert code == -signal.SIGTERM  # the default action, as without the helper
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_second_signal_during_the_drain_runs_the_previous_handler_at_once(
        etcd: EmbeddedEtcd, unique_prefix: str, discovery: Discovery) -> None:
    drain = 30.0
    process, lines = start("drain", etcd.endpoint, unique_prefix, str(drain))
    try:
        lines.first("ready")
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: not _hosts(discovery), 10.0, 0.01, "the key removed")
        process.send_signal(signal.SIGTERM)  # an impatient operator
        assert process.wait(10) == -signal.SIGTERM
        assert time.monotonic() - sent < drain
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- fork ---------------------------------------------------------------------------------------

def test_forked_workers_get_a_clear_error_and_work_with_a_discovery_of_their_own(
        etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    process, lines = start("fork", etcd.endpoint, unique_prefix, "2")
    assert process.wait(90) == 0
    lines._thread.join(10)
    text = [line for _, line in lines.items]
    errors = [line for line in text if " error " in line]
    assert len(errors) == 6, text  # a query and a dispose, in two os.fork workers and one
    # multiprocessing worker
    for line in errors:
        assert "UsedAfterFork" in line and "post_fork" in line and "after fork" in line
    assert sorted(line for line in text if line.endswith("registered")) == [
        f"worker {n} registered" for n in range(3)]
    # the children's close() left the parent's registration alone; theirs were disposed
    assert "parent REGISTERED 1" in text, text


def test_a_sigkilled_owner_with_a_forked_child_still_has_its_etcd_reaped() -> None:
    process, lines = start("reaper")
    child = 0
    try:
        _, pid, directory, child_pid = lines.first("etcd").split()
        child = int(child_pid)
        assert os.path.isdir(directory)
        process.kill()  # SIGKILL: no atexit, no cleanup; the forked child lives on
        process.wait()
        wait_until(lambda: not _alive(int(pid)), 20.0, 0.05, "etcd killed by the reaper")
        wait_until(lambda: not os.path.exists(directory), 20.0, 0.05, "its directory removed")
        assert _alive(child)  # it was the owner's death that counted, not the child's
    finally:
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
