"""The ``rx-discovery`` command line, run as a subprocess (``python -m rx_discovery``) against
the session's etcd (``ETCD_HOSTS``), each test in a keyspace prefix of its own.

Output is read line by line by a thread; tests wait for the lines they expect with a deadline.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rx_discovery import Discovery, Host
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.store.etcd import EtcdStore

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-never-shown"


def base_env(**extra: str) -> dict[str, str]:
    """The environment for the CLI: no ETCD_* from outside, the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Cli:
    """A running ``rx-discovery`` whose stdout lines are read by a thread."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rx_discovery", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self._stderr: list[str] = []
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.extend(self.proc.stderr)

    def expect(self, predicate: Callable[[str], bool], timeout: float = 10.0,
               what: str = "a line") -> str:
        """The first new stdout line matching ``predicate``.

        Raises:
            AssertionError: none within ``timeout`` s, or the process ended first.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                line = ""
                if remaining <= 0:
                    self.kill()
                    raise AssertionError(f"no {what} within {timeout}s; stdout: {self.stdout}; "
                                         f"stderr: {self.stderr}") from None
                continue
            if line is None:
                raise AssertionError(f"process ended before {what}; stdout: {self.stdout}; "
                                     f"stderr: {self.stderr}")
            self.stdout.append(line)
            if predicate(line):
                return line

    def expect_json(self, kind: str, uuid: str | None = None, timeout: float = 10.0
                    ) -> dict[str, object]:
        """The first JSON line of ``kind`` (and ``uuid``)."""
        def match(line: str) -> bool:
            value = json.loads(line)
            return bool(value["kind"] == kind and (uuid is None or value["uuid"] == uuid))

        return dict(json.loads(self.expect(match, timeout, f"a {kind!r} line")))

    def finish(self, timeout: float = 20.0) -> int:
        """Wait for the exit (bounded) and for the readers; returns the exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout}s") from None
        for thread in self._threads:
            thread.join(5)
        while True:  # collect what expect() did not read
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.stdout.append(line)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)


def run_cli(*args: str, env: dict[str, str], timeout: float = 20.0
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rx_discovery", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout, check=False)


def assert_one_error_line(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("rx-discovery: error: "), stderr
    assert "Traceback" not in stderr


@pytest.fixture
def env(etcd: EmbeddedEtcd) -> dict[str, str]:
    return base_env(ETCD_HOSTS=etcd.endpoint)


@pytest.fixture
def discovery(etcd: EmbeddedEtcd, unique_prefix: str) -> Iterator[Discovery]:
    with Discovery(etcd.endpoint, prefix=unique_prefix) as d:
        yield d


@pytest.fixture
def cli_processes() -> Iterator[list[Cli]]:
    """Every Cli started by a test, killed if still running at its end."""
    started: list[Cli] = []
    yield started
    for cli in started:
        cli.kill()


def test_help_of_every_command() -> None:
    for command in ([], ["demo"], ["ls"], ["watch"], ["register"], ["etcd"]):
        result = run_cli(*command, "--help", env=base_env())
        assert result.returncode == 0, result.stderr
        assert "usage: rx-discovery" in result.stdout


def test_ls_json_shows_hosts_without_passwords(env: dict[str, str], discovery: Discovery,
                                               unique_prefix: str) -> None:
    host = Host("db.example", ports={"postgres": "5432"}, public=True, user="admin",
                password=SECRET, shard="s1")
    registration = discovery.register("db", host, ttl=5).wait(10)

    result = run_cli("ls", "--json", "--prefix", unique_prefix, env=env)

    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    listing = json.loads(result.stdout)
    [service] = listing["services"]
    assert service["name"] == "db" and service["public"] is True
    [shown] = service["hosts"]
    assert shown["uuid"] == registration.uuid
    assert shown["name"] == "db.example" and shown["shard"] == "s1"
    assert shown["user"] == "admin" and shown["password"] == "***"
    assert service["service"]["password"] == "***"


def test_ls_plain_and_one_service(env: dict[str, str], discovery: Discovery,
                                  unique_prefix: str) -> None:
    discovery.register("api", Host("api-1", ports={"http": "80"}, user="u", password=SECRET)
                       ).wait(10)
    discovery.register("web", Host("web-1", ports={"http": "81"})).wait(10)

    result = run_cli("ls", "api", "--prefix", unique_prefix, env=env)

    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows[0][:3] == ["service", "uuid", "hostname"]
    assert [row[0] for row in rows[1:]] == ["api"]
    assert rows[1][2] == "api-1" and "u:***" in rows[1]
    assert SECRET not in result.stdout

    missing = run_cli("ls", "nothing-here", "--prefix", unique_prefix, env=env)
    assert missing.returncode == 1
    assert_one_error_line(missing.stderr)


def test_watch_json_prints_new_and_down_events(env: dict[str, str], discovery: Discovery,
                                               unique_prefix: str,
                                               cli_processes: list[Cli]) -> None:
    watch = Cli("watch", "api", "--json", "--prefix", unique_prefix, env=env)
    cli_processes.append(watch)
    snapshot = watch.expect_json("snapshot")
    assert snapshot["hosts"] == 0

    registration = discovery.register("api", Host("api-1", ports={"http": "80"}, shard="a"))
    new = watch.expect_json("new", registration.uuid)
    assert new["hostname"] == "api-1" and new["ports"] == {"http": "80"}
    assert new["shard"] == "a" and isinstance(new["revision"], int)

    registration.dispose()
    down = watch.expect_json("down", registration.uuid)
    assert int(str(down["revision"])) > int(str(new["revision"]))

    watch.proc.send_signal(signal.SIGINT)  # Ctrl-C: clean exit
    assert watch.finish() == 0
    assert "Traceback" not in watch.stderr


def test_watch_prints_current_hosts_and_ends_after_duration(
        env: dict[str, str], discovery: Discovery, unique_prefix: str) -> None:
    registration = discovery.register("api", Host("api-1", ports={"http": "80"})).wait(10)

    result = run_cli("watch", "api", "--duration", "0.5", "--prefix", unique_prefix, env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("api: 1 host at revision ")
    assert registration.uuid in result.stdout


def test_register_holds_the_key_until_sigterm(env: dict[str, str], etcd_store: EtcdStore,
                                              unique_prefix: str,
                                              cli_processes: list[Cli]) -> None:
    register = Cli("register", "api", "--hostname", "api-1.example", "--port", "http=80",
                   "--port", "https=443", "--ttl", "3", "--public", "--user", "admin",
                   "--password-env", "API_PASSWORD", "--shard", "s0", "--prefix", unique_prefix,
                   env={**env, "API_PASSWORD": SECRET})
    cli_processes.append(register)
    first = register.expect(lambda line: line.startswith("registering api:"))
    key = first.split(" key ")[1].split()[0]
    assert key.startswith(f"{unique_prefix}/services/api/")
    register.expect(lambda line: line == "status: registered")
    stored = etcd_store.get(key)
    assert stored is not None
    assert Host.from_json(stored.value).password == SECRET

    register.proc.send_signal(signal.SIGTERM)
    assert register.finish() == 0
    assert etcd_store.get(key) is None  # revoked, not left to expire
    assert SECRET not in "\n".join(register.stdout) + register.stderr
    assert "Traceback" not in register.stderr


def test_demo_against_a_configured_etcd(env: dict[str, str], unique_prefix: str) -> None:
    started = time.monotonic()
    result = run_cli("demo", "--duration", "6", "--prefix", unique_prefix, env=env)

    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    lines = result.stdout.splitlines()
    assert sum(line.startswith("+ api ") for line in lines) == 4
    assert sum(line.startswith("+ db ") for line in lines) == 2
    assert any(line.startswith("- api ") for line in lines)  # the disposed host
    assert "embedded etcd" not in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_starts_an_embedded_etcd_without_configuration() -> None:
    result = run_cli("demo", "--duration", "2", env=base_env(), timeout=40)

    assert result.returncode == 0, result.stderr
    assert "started an embedded etcd at http://127.0.0.1:" in result.stderr
    assert "+ api " in result.stdout and "- api " in result.stdout


def test_etcd_command_serves_until_sigint(cli_processes: list[Cli]) -> None:
    server = Cli("etcd", env=base_env())
    cli_processes.append(server)
    line = server.expect(lambda text: text.startswith("export ETCD_HOSTS="), timeout=30)
    endpoint = line.split("=", 1)[1]

    result = run_cli("ls", "--json", env=base_env(ETCD_HOSTS=endpoint))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["services"] == []

    server.proc.send_signal(signal.SIGINT)
    assert server.finish() == 0
    assert "Traceback" not in server.stderr


@pytest.mark.parametrize("args", [
    ["register", "api"],                                               # missing options
    ["register", "api", "--hostname", "h", "--port", "http"],          # not NAME=PORT
    ["register", "api", "--hostname", "h", "--port", "http=80", "--ttl", "0"],
    ["register", "api", "--hostname", "h", "--port", "http=80", "--user", "u",
     "--password-env", "RX_DISCOVERY_UNSET_VARIABLE"],
    ["ls", "bad/name"],
    ["watch", "api", "--timeout", "-1"],
    ["frobnicate"],
    [],
])
def test_bad_arguments_exit_2_with_one_line(args: list[str]) -> None:
    result = run_cli(*args, env=base_env(ETCD_HOSTS="http://127.0.0.1:1"))

    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr)


@pytest.mark.parametrize("args", [
    ["ls"],
    ["watch", "api"],
    ["register", "api", "--hostname", "h", "--port", "http=80"],
])
def test_unreachable_etcd_is_one_line_and_exit_1(args: list[str]) -> None:
    started = time.monotonic()
    result = run_cli(*args, "--timeout", "2", env=base_env(ETCD_HOSTS="http://127.0.0.1:1"))

    assert result.returncode == 1, result.stderr
    assert_one_error_line(result.stderr)
    assert "cannot reach etcd at http://127.0.0.1:1" in result.stderr
    assert time.monotonic() - started < 15
