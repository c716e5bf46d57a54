"""Every code block of the README runs, so the README cannot go stale.

Each Python block runs alone, in a fresh interpreter, against the session's etcd (through
ETCD_HOSTS, as the README's "run `rx-discovery etcd`" line gives it, and a unique
ETCD_PREFIX): a block that needed another block's names, or setup the README does not state,
fails here. Console blocks run each ``rx-discovery`` command: commands that end by
themselves must exit 0; those that run until interrupted must print, then exit 0 on SIGINT.
The install/test commands at the top are the ones ``.ci/run`` runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rx_discovery import Discovery, Host
from rx_discovery.embedded import EmbeddedEtcd

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)
LONG_RUNNING = ("watch", "register", "etcd")


def long_running(command: str) -> bool:
    """A command that runs until interrupted (``ls --watch`` too)."""
    words = command.split()
    return words[1] in LONG_RUNNING or "--watch" in words



def blocks(*languages: str) -> list[str]:
    return [code for language, code in BLOCKS if language in languages]


def test_the_readme_opens_with_the_two_commands_and_ci_runs_the_test_command() -> None:
    first, second = blocks("bash")[:2]
    assert first.strip() == 'pip install -e ".[embedded,http]" && rx-discovery demo'
    assert second.strip() == 'pip install -e ".[dev]" && python -m pytest'
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert second.strip() in ci


def python_blocks() -> list[tuple[int, str]]:
    return list(enumerate(blocks("python"), 1))


def run_block(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT, check=False)


def block_env(etcd: EmbeddedEtcd, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, "ETCD_HOSTS": etcd.endpoint, "ETCD_PREFIX": prefix}


@pytest.mark.parametrize(("number", "code"), python_blocks(),
                         ids=[f"block{n}" for n, _ in python_blocks()])
def test_each_python_block_runs_alone_in_a_fresh_interpreter(
        number: int, code: str, etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    done = run_block(code, block_env(etcd, unique_prefix))
    assert done.returncode == 0, f"README python block {number}:\n{code}\n{done.stderr}"
    assert "Traceback" not in done.stderr


def test_the_composing_block_prints_its_own_host_even_when_another_exists(
        etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    """Another "api" host already registered where the examples run (the user's keyspace):
    the block still prints its own backend's URL."""
    [code] = [code for code in blocks("python") if "combine_latest" in code]
    with Discovery(etcd.endpoint, prefix=unique_prefix) as discovery:
        other = discovery.register("api", Host("10.9.9.9", ports={"http": "9"}, shard="eu"))
        other.wait(10)
        for _ in range(3):  # the stream's first set has both hosts; it must pick its own
            done = run_block(code, block_env(etcd, unique_prefix))
            assert done.returncode == 0, done.stderr
            assert done.stdout.splitlines()[-1] == "http://10.0.0.7:8080/v1"
        other.dispose()


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
    if not long_running(command):
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        return
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        # Its first line is printed from its main loop (watch: the current hosts; etcd: the
        # export line); register is in it once it says it is registered.
        first_line = process.stdout.readline()  # type: ignore[union-attr]
        assert first_line, process.stderr.read()  # type: ignore[union-attr]
        if command.split()[1] == "register":
            for line in process.stdout:  # type: ignore[union-attr]
                if line.strip() == "status: registered":
                    break
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
