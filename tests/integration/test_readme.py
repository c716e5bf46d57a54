"""Every code block of the README runs, so the README cannot go stale.

Python blocks run in order in one namespace against the session's etcd (through ETCD_HOSTS and
a unique ETCD_PREFIX). Console blocks run each ``rx-discovery`` command: commands that end by
themselves must exit 0; those that run until interrupted must print, then exit 0 on SIGINT.
The install/test commands at the top are the ones ``.ci/run`` runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rx_discovery.embedded import EmbeddedEtcd

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)
LONG_RUNNING = ("watch", "register", "etcd")



def blocks(*languages: str) -> list[str]:
    return [code for language, code in BLOCKS if language in languages]


def test_the_readme_opens_with_the_two_commands_and_ci_runs_the_test_command() -> None:
    first, second = blocks("bash")[:2]
    assert first.strip() == 'pip install -e ".[embedded]" && rx-discovery demo'
    assert second.strip() == 'pip install -e ".[dev]" && python -m pytest'
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert second.strip() in ci


def test_python_blocks_run(etcd: EmbeddedEtcd, unique_prefix: str,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCD_HOSTS", etcd.endpoint)
    monkeypatch.setenv("ETCD_PREFIX", unique_prefix)
    namespace: dict[str, object] = {"__name__": "readme"}
    try:
        for number, code in enumerate(blocks("python"), 1):
            try:
                exec(compile(code, f"README.md python block {number}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"README python block {number} failed: {error!r}\n{code}"
                                     ) from error
    finally:
        discovery = namespace.get("discovery")
        if discovery is not None:
            discovery.close()  # type: ignore[attr-defined]


def console_commands() -> list[str]:
    lines = [line.split("  #")[0].strip() for code in blocks("console")
             for line in code.splitlines()]
    return [line for line in lines if line.startswith("rx-discovery ")]


@pytest.mark.parametrize("command", console_commands())
def test_console_commands_run(command: str, etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    env = {**os.environ, "ETCD_HOSTS": etcd.endpoint, "ETCD_PREFIX": unique_prefix}
    args = [sys.executable, "-m", "rx_discovery", *command.split()[1:]]
    if command.split()[1] == "etcd":
        env.pop("ETCD_HOSTS")
    if command.split()[1] not in LONG_RUNNING:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        return
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        first_line = process.stdout.readline()  # type: ignore[union-attr]
        assert first_line, process.stderr.read()  # type: ignore[union-attr]
        time.sleep(0.2)  # let it settle into its wait; the assertion below is on the exit
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
