"""Real servers receiving SIGTERM under load (issue 15): rx_discovery.asgi with uvicorn, and the
README's gunicorn recipe. Two backends register; SIGTERM one while a client keeps calling
through rx_discovery.http.DiscoveryTransport (with no retry: a request that reaches a stopped
backend fails): zero failed requests, the terminated backend deregistered at once and answered
through its drain, then exited."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx
import pytest
from helpers import wait_until

from rx_discovery import Discovery, DiscoveryError
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.http import DiscoveryTransport

# dev dependencies, imported (never skipped): a broken install fails here instead of leaving
# the SIGTERM recipes untested
for _server in ("uvicorn", "starlette", "gunicorn"):
    importlib.import_module(_server)

DRAIN = 2.0
HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uvicorn(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "asgi_app:app", "--host", "127.0.0.1", "--port",
            str(port), "--log-level", "warning"]


def gunicorn(_port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", str(HERE / "gunicorn_conf.py"),
            "wsgi_app:app"]


def start_backend(etcd: EmbeddedEtcd, prefix: str, name: str,
                  command: Callable[[int], list[str]], stderr: IO[bytes] | None = None
                  ) -> subprocess.Popen[bytes]:
    port = free_port()
    env = {**os.environ, "ETCD_HOST": etcd.endpoint, "ETCD_PREFIX": prefix,
           "BACKEND_NAME": name, "BACKEND_PORT": str(port), "BACKEND_DRAIN": str(DRAIN),
           "PYTHONFAULTHANDLER": "1",  # SIGABRT prints every thread's stack (see below)
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command(port), env=env, stderr=stderr)


def stacks_of(backends: dict[str, subprocess.Popen[bytes]], logs: dict[str, IO[bytes]]
              ) -> str:
    """The stderr of each backend after SIGABRT (its threads' stacks): what a backend that
    never registered was doing (once in CI, a gunicorn master among ~15 runs)."""
    for process in backends.values():
        if process.poll() is None:
            process.send_signal(signal.SIGABRT)
    for process in backends.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
    out = []
    for name, log in logs.items():
        log.seek(0)
        out.append(f"--- backend {name} (exit {backends[name].poll()}):\n"
                   + log.read().decode(errors="replace")[-6000:])
    return "\n".join(out)


def ports(discovery: Discovery) -> set[str]:
    try:
        return {h.private_ports["http"] for h in discovery.get("web").all()}
    except DiscoveryError:
        return set()


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_sigterm_to_a_backend_costs_no_request(etcd: EmbeddedEtcd, unique_prefix: str,
                                               server: str) -> None:
    command = uvicorn if server == "uvicorn" else gunicorn
    logs = {name: tempfile.TemporaryFile() for name in ("a", "b")}  # noqa: SIM115 (closed below)
    backends = {name: start_backend(etcd, unique_prefix, name, command, logs[name])
                for name in ("a", "b")}
    discovery = Discovery(etcd.endpoint, prefix=unique_prefix)
    client = httpx.Client(transport=DiscoveryTransport(discovery, retries=0), timeout=5.0)
    answers: list[tuple[float, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def call() -> None:
        while not stop.is_set():
            try:
                response = client.get("http://web/")
                answers.append((time.monotonic(), response.text.split()[0]))
                if response.status_code != 200:
                    failures.append(f"status {response.status_code}")
            except httpx.HTTPError as error:
                failures.append(f"{type(error).__name__}: {error}")
                time.sleep(0.01)

    try:
        try:
            wait_until(lambda: len(ports(discovery)) == 2, 30.0, 0.05,
                       "both backends registered")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{stacks_of(backends, logs)}") from None
        callers = [threading.Thread(target=call, daemon=True) for _ in range(4)]
        for caller in callers:
            caller.start()
        wait_until(lambda: {"a", "b"} <= {name for _, name in answers}, 20.0,
                   message="both backends answering")
        sent = time.monotonic()
        backends["a"].send_signal(signal.SIGTERM)
        wait_until(lambda: len(ports(discovery)) == 1, 10.0, 0.01, "a deregistered")
        deregistered = time.monotonic() - sent
        backends["a"].wait(30)
        exited = time.monotonic() - sent
        time.sleep(0.5)  # requests keep flowing after a is gone
        stop.set()
        for caller in callers:
            caller.join(10)
        after = Counter(name for t, name in answers if t > sent + exited)
        print(f"{len(answers)} requests, {len(failures)} failed; a deregistered "
              f"{deregistered:.3f}s after SIGTERM, exited after {exited:.3f}s; "
              f"after: {dict(after)}")
        assert failures == []
        assert exited >= DRAIN  # it served through the drain
        assert after and set(after) == {"b"}
        assert backends["b"].poll() is None
    finally:
        stop.set()
        client.close()
        discovery.close()
        for process in backends.values():
            if process.poll() is None:
                process.terminate()
        for process in backends.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs.values():
            log.close()
