"""The real Go etcd-discovery package (v8.0.0) as a test peer, on the session's etcd (which
runs with ``--enable-v2=true``: the Go package speaks only etcd's v2 keys API).

The binary is ``INTEROP_GO_BIN`` (CI exports it), else the last line printed by
``shared/interop-go/build.sh`` (found beside the repository, or above it for a worktree). If it
cannot be built the tests fail: they are never skipped.

- ``go_bin``: the path of the Go program.
- ``go``: a :class:`GoPeer` on the session's etcd; its processes are killed after the test.
- ``v2``: a ``Discovery(api="v2")`` on the session's etcd, closed after the test.
- ``service_name``: a service name unique to the test.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rx_discovery import Discovery
from rx_discovery.embedded import EmbeddedEtcd

_REPO = Path(__file__).resolve().parents[2]
_BUILD = Path("shared") / "interop-go" / "build.sh"


def _build_script() -> Path:
    """``../shared/interop-go/build.sh`` from the repository root, or the nearest above it."""
    for folder in _REPO.parents:
        if (folder / _BUILD).is_file():
            return folder / _BUILD
    pytest.fail(f"no {_BUILD} above {_REPO}: set INTEROP_GO_BIN to the Go peer's binary")


@pytest.fixture(scope="session")
def go_bin() -> str:
    path = os.environ.get("INTEROP_GO_BIN")
    if not path:
        script = _build_script()
        built = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                               timeout=900, check=False)
        lines = built.stdout.strip().splitlines()
        if built.returncode != 0 or not lines:
            pytest.fail(f"{script} failed ({built.returncode}): {built.stderr[-2000:]}")
        path = lines[-1].strip()
    if not os.access(path, os.X_OK):
        pytest.fail(f"the Go peer {path!r} is not an executable")
    return path


class GoProcess:
    """A running ``interop-go register`` or ``watch``: its JSON lines, read on a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=env, text=True)
        self._lines: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.seen: list[dict[str, Any]] = []
        self.registered: dict[str, Any] = {}  # the "registered" line of a register process
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                self._lines.put(json.loads(line))

    def next_event(self, event: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        """The next line with ``"event": event`` (and the ``match`` fields), waiting up to
        ``timeout`` seconds; lines skipped meanwhile stay in :attr:`seen`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise AssertionError(f"Go peer: no {event!r} {match or ''} within {timeout} s "
                                     f"(seen: {self.seen})") from None
            self.seen.append(line)
            if line.get("event") == "error":
                raise AssertionError(f"Go peer failed: {line}")
            if line.get("event") == event and all(line.get(k) == v for k, v in match.items()):
                return line

    def stop(self) -> None:
        """Graceful stop: close stdin (the Go package's context is cancelled)."""
        assert self.process.stdin is not None
        self.process.stdin.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


class GoPeer:
    """Runs the Go program against one etcd."""

    def __init__(self, binary: str, endpoint: str) -> None:
        self.binary = binary
        self.env = {**os.environ, "ETCD_HOSTS": endpoint}
        self.processes: list[GoProcess] = []

    def register(self, name: str, hostname: str, ports: str, *flags: str) -> GoProcess:
        """Start ``register`` and wait for its ``registered`` line (in ``.registered``)."""
        process = GoProcess([self.binary, "register", name, hostname, ports, "5", *flags],
                            self.env)
        self.processes.append(process)
        process.registered = process.next_event("registered")
        return process

    def watch(self, name: str, seconds: float = 60.0) -> GoProcess:
        """Start ``watch`` and wait until its watchers are ready."""
        process = GoProcess([self.binary, "watch", name, str(seconds)], self.env)
        self.processes.append(process)
        process.next_event("ready")
        return process

    def get(self, name: str, *flags: str) -> dict[str, Any]:
        """What the Go package's ``Get`` answers (its ``get`` line)."""
        done = subprocess.run([self.binary, "get", name, *flags], capture_output=True,
                              text=True, env=self.env, timeout=30, check=False)
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        assert lines and lines[-1].get("event") == "get", (done.stdout, done.stderr[-2000:])
        result: dict[str, Any] = lines[-1]
        return result

    def close(self) -> None:
        for process in self.processes:
            process.kill()


@pytest.fixture
def go(go_bin: str, etcd: EmbeddedEtcd) -> Iterator[GoPeer]:
    peer = GoPeer(go_bin, etcd.endpoint)
    yield peer
    peer.close()


@pytest.fixture
def v2(etcd: EmbeddedEtcd) -> Iterator[Discovery]:
    discovery = Discovery(etcd.endpoint, api="v2")
    yield discovery
    discovery.close()


@pytest.fixture
def service_name() -> str:
    return f"interop-{uuid.uuid4().hex[:10]}"
