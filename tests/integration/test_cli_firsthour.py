"""A newcomer's first hour with ``rx-discovery`` (issue 16): it exits on Ctrl-C at any moment,
``etcd`` keeps its address with its data, the demo never touches real services, and the
details a newcomer trips on (abbreviated options, bad ports, a too-short ttl, a failed revoke,
a non-etcd endpoint, an etcd that went away, row order) are handled.

Every test runs the CLI as a real process (``python -m rx_discovery``).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest
from test_cli import Cli, assert_one_error_line, base_env, cli_processes, run_cli

from rx_discovery import Discovery, Host
from rx_discovery.embedded import EmbeddedEtcd
from rx_discovery.store.etcd import EtcdStore

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["cli_processes"]  # the fixture, shared with test_cli


# --- 1. Ctrl-C at any moment ---------------------------------------------------------------


def test_watch_exits_on_sigint_at_any_moment_even_during_start_up(etcd: EmbeddedEtcd,
                                                                  unique_prefix: str) -> None:
    """24 runs, SIGINT sent 0 to 2.5 s after the start (import, connect, first read, watch):
    each ends within the deadline, with 0 (stopped) or 130 (interrupted before it ran), and
    prints nothing on stderr (no traceback).

    The interpreter runs with ``-S`` (site-packages put on PYTHONPATH instead): Python's own
    start-up (``site`` and the ``.pth`` files of an editable install) is outside the project's
    reach, and a Ctrl-C there prints Python's traceback whatever the project does. A signal
    before Python installs its handler kills the process quietly (-SIGINT, which a shell
    reports as 130)."""
    paths = [str(ROOT), *site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    env = base_env(ETCD_HOSTS=etcd.endpoint, ETCD_PREFIX=unique_prefix,
                   PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)))
    runs = 24
    outcomes = []
    for n in range(runs):
        delay = 2.5 * n / (runs - 1)
        process = subprocess.Popen([sys.executable, "-S", "-m", "rx_discovery", "watch", "api"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True, cwd=ROOT)
        time.sleep(delay)  # the moment of the signal is what varies; the assertion is on exit
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            outcomes.append((round(delay, 2), "hung"))
            continue
        if process.returncode not in (0, 130, -signal.SIGINT) or err:
            outcomes.append((round(delay, 2), f"exit {process.returncode}: {err[-300:]}"))
    assert outcomes == [], "\n".join(map(str, outcomes))


def test_the_quiet_ctrl_c_handler_is_installed_before_any_import() -> None:
    """``rx_discovery._cli_start`` installs the quiet Ctrl-C handler before importing anything
    (``import signal`` alone imports ``enum``, milliseconds in which a Ctrl-C printed a
    traceback through enum.py): in Python's import trace, it has no child import."""
    result = subprocess.run([sys.executable, "-S", "-X", "importtime", "-m", "rx_discovery",
                             "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env=base_env(PYTHONPATH=os.pathsep.join(dict.fromkeys(
                                [str(ROOT), *site.getsitepackages(),
                                 sysconfig.get_paths()["purelib"]]))), check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    names = [line.rsplit("|", 1)[1] for line in result.stderr.splitlines()
             if line.startswith("import time:") and line.count("|") == 2]
    index = next(i for i, name in enumerate(names) if name.strip() == "rx_discovery._cli_start")
    indent = len(names[index]) - len(names[index].lstrip())
    children = []
    for name in reversed(names[:index]):
        if len(name) - len(name.lstrip()) <= indent:
            break
        children.append(name.strip())
    assert children == [], children


# --- 2. rx-discovery etcd keeps its port -----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_etcd(cli_processes: list[Cli], *args: str) -> tuple[Cli, str]:
    server = Cli("etcd", *args, env=base_env())
    cli_processes.append(server)
    line = server.expect(lambda text: text.startswith("export ETCD_HOSTS="), timeout=40)
    return server, line.split("=", 1)[1]


def test_etcd_command_takes_port_options(cli_processes: list[Cli], tmp_path: Path) -> None:
    port, peer = _free_port(), _free_port()
    server, endpoint = _start_etcd(cli_processes, "--port", str(port), "--peer-port", str(peer),
                                   "--data-dir", str(tmp_path / "d"))
    assert endpoint == f"http://127.0.0.1:{port}"
    with socket.create_connection(("127.0.0.1", peer), timeout=5):
        pass  # the peer port is the one asked
    server.proc.send_signal(signal.SIGINT)
    assert server.finish() == 0
    assert "Traceback" not in server.stderr


def test_etcd_command_comes_back_on_the_same_port_with_its_data_dir(
        cli_processes: list[Cli], tmp_path: Path) -> None:
    """Restarted with the same --data-dir, it listens where it did, so a running watcher and
    registration reconnect by themselves."""
    data = str(tmp_path / "data")
    server, endpoint = _start_etcd(cli_processes, "--data-dir", data)
    if endpoint != "http://127.0.0.1:2379":  # 2379 was taken: it says why
        assert "2379" in server.stderr
    with Discovery(endpoint) as discovery:
        watch = Cli("watch", "api", "--json", env=base_env(ETCD_HOSTS=endpoint))
        cli_processes.append(watch)
        watch.expect_json("snapshot")
        server.proc.send_signal(signal.SIGTERM)
        assert server.finish() == 0

        again, endpoint_again = _start_etcd(cli_processes, "--data-dir", data)
        assert endpoint_again == endpoint
        registration = discovery.register("api", Host("api-1", ports={"http": "80"}))
        registration.wait(30)  # the registration made while etcd was down catches up
        watch.expect_json("new", registration.uuid, timeout=30)  # and the watcher reconnected
        watch.proc.send_signal(signal.SIGINT)
        assert watch.finish() == 0
    again.proc.send_signal(signal.SIGINT)
    assert again.finish() == 0


def test_etcd_command_passes_its_data_dir_once() -> None:
    from rx_discovery.cli.etcd import etcd_server

    server = etcd_server("/tmp/rx-discovery-test-data", 2379, 2380)
    command = server._command()
    assert command.count("--data-dir") == 1
    assert command[command.index("--data-dir") + 1] == "/tmp/rx-discovery-test-data"


@pytest.mark.parametrize("content", ['{"client_port": 99999, "peer_port": 2390}',
                                     '{"client_port": -5}', '[1, 2]',
                                     '{"client_port": null}', '{"client_port": true}',
                                     'not json'])
def test_etcd_command_refuses_a_ports_file_it_did_not_write(tmp_path: Path,
                                                             content: str) -> None:
    """A data dir whose ports file is damaged (or written by another tool) is refused with one
    line naming the file, before etcd starts: neither a traceback nor a silent move to another
    port (which clients would never find)."""
    (tmp_path / "rx-discovery-etcd.json").write_text(content)
    result = run_cli("etcd", "--data-dir", str(tmp_path), env=base_env(), timeout=30)
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr)
    assert "rx-discovery-etcd.json" in result.stderr
    assert "export ETCD_HOSTS" not in result.stdout


def test_etcd_command_with_both_ports_rewrites_a_damaged_ports_file(
        cli_processes: list[Cli], tmp_path: Path) -> None:
    """The refusal's advice holds: with --port and --peer-port the damaged file is not read,
    and it is rewritten with the ports used."""
    (tmp_path / "rx-discovery-etcd.json").write_text("not json")
    port, peer = _free_port(), _free_port()
    server, endpoint = _start_etcd(cli_processes, "--data-dir", str(tmp_path),
                                   "--port", str(port), "--peer-port", str(peer))
    assert endpoint == f"http://127.0.0.1:{port}"
    kept = json.loads((tmp_path / "rx-discovery-etcd.json").read_text())
    assert kept == {"client_port": port, "peer_port": peer}
    server.proc.send_signal(signal.SIGINT)
    assert server.finish() == 0


# --- 3. the demo never touches real services ------------------------------------------------


def test_demo_leaves_existing_services_untouched_and_cleans_up(
        etcd: EmbeddedEtcd, etcd_store: EtcdStore, unique_prefix: str) -> None:
    with Discovery(etcd.endpoint, prefix=unique_prefix) as discovery:
        existing = discovery.register("db", Host("db.prod.example", ports={"pg": "5432"},
                                                  public=True, user="u", password="p"))
        existing.wait(10)
        before = etcd_store.get_prefix(unique_prefix + "/")
        result = run_cli("demo", "--duration", "4",
                         env=base_env(ETCD_HOSTS=etcd.endpoint, ETCD_PREFIX=unique_prefix),
                         timeout=60)
        assert result.returncode == 0, result.stderr
        assert "+ api " in result.stdout and "+ db " in result.stdout
        after = etcd_store.get_prefix(unique_prefix + "/")
        assert {kv.key: kv.value for kv in after.items} == {
            kv.key: kv.value for kv in before.items}
        assert discovery.get("db").url("pg") == "pg://u:p@db.prod.example:5432"
        existing.dispose()


def test_demo_help_says_it_writes_in_its_own_keyspace() -> None:
    result = run_cli("demo", "--help", env=base_env())
    assert "own keyspace" in " ".join(result.stdout.split())


# --- 5. details --------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--password", "s3cret"],        # not an abbreviation of --password-env
    ["--port", "http=abc"], ["--port", "http=99999"], ["--port", "http=-1"],
    ["--port", "ht tp=80"], ["--port", "http=0"],
    ["--ttl", "1"],                  # etcd grants at least 2 s
])
def test_register_refuses_bad_options_before_io(args: list[str]) -> None:
    base = ["register", "api", "--hostname", "h"]
    if "--port" not in args:
        base += ["--port", "http=80"]
    result = run_cli(*base, *args, env=base_env(ETCD_HOSTS="http://127.0.0.1:1"))
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr)
    assert "s3cret" not in result.stderr
    if args[0] == "--password":
        assert "unrecognized arguments: --password" in result.stderr


def test_no_option_is_taken_as_an_abbreviation() -> None:
    result = run_cli("ls", "--jso", env=base_env(ETCD_HOSTS="http://127.0.0.1:1"))
    assert result.returncode == 2
    assert_one_error_line(result.stderr)


def test_a_password_given_as_the_password_env_name_is_not_echoed() -> None:
    """A newcomer who puts the password itself after --password-env must not see it printed
    back (terminal scrollback, CI logs): the error names the option, not its value."""
    result = run_cli("register", "api", "--hostname", "h", "--port", "http=80", "--user", "u",
                     "--password-env", "Tr0ub4dor&3",
                     env=base_env(ETCD_HOSTS="http://127.0.0.1:1"))
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr)
    assert "--password-env" in result.stderr
    assert "Tr0ub4dor" not in result.stderr + result.stdout


def test_register_says_the_truth_when_the_revoke_fails(cli_processes: list[Cli]) -> None:
    with EmbeddedEtcd(name="revoke") as server:
        register = Cli("register", "api", "--hostname", "h", "--port", "http=80", "--ttl", "3",
                       "--timeout", "2", env=base_env(ETCD_HOSTS=server.endpoint))
        cli_processes.append(register)
        register.expect(lambda line: line == "status: registered", timeout=20)
        server.kill()
        register.proc.send_signal(signal.SIGINT)
        assert register.finish(timeout=30) == 0
        text = "\n".join(register.stdout)
        assert "revoked" not in text.replace("not revoked", ""), text
        assert "not revoked" in text and "expires" in text, text


def test_an_http_server_that_is_not_etcd_is_named_so() -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run_cli("ls", "--timeout", "3",
                         env=base_env(ETCD_HOSTS=f"http://127.0.0.1:{server.server_port}"))
    finally:
        server.shutdown()
    assert result.returncode == 1
    assert_one_error_line(result.stderr)
    assert "not an etcd endpoint" in result.stderr


def test_a_server_that_does_not_speak_http_is_not_said_to_answer_http() -> None:
    """An SSH-like server (a banner, then close) is not etcd either, and the message must not
    claim it answers HTTP."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        result = run_cli("ls", "--timeout", "3", env=base_env(
            ETCD_HOSTS=f"http://127.0.0.1:{listener.getsockname()[1]}"))
    finally:
        listener.close()
    assert result.returncode == 1
    assert_one_error_line(result.stderr)
    assert "not an etcd endpoint" in result.stderr
    assert "HTTP" not in result.stderr.split("(")[0]


def test_watch_shows_health_and_sorts_rows(cli_processes: list[Cli]) -> None:
    with EmbeddedEtcd(name="health") as server, Discovery(server.endpoint) as discovery:
        for name in ("c-host", "a-host", "b-host"):
            discovery.register("api", Host(name, ports={"http": "80"})).wait(10)
        watch = Cli("watch", "api", "--json", env=base_env(ETCD_HOSTS=server.endpoint))
        cli_processes.append(watch)
        watch.expect_json("snapshot")
        rows = [watch.expect_json("current")["hostname"] for _ in range(3)]
        assert rows == ["a-host", "b-host", "c-host"]
        if not any(json.loads(line).get("state") == "connected" for line in watch.stdout):
            watch.expect(lambda line: json.loads(line).get("state") == "connected",
                         what="a connected health line")
        server.kill()
        line = watch.expect(lambda line: json.loads(line).get("kind") == "health"
                            and json.loads(line)["state"] in ("reconnecting", "unavailable"),
                            timeout=30, what="a health line saying etcd is gone")
        assert json.loads(line)["reason"]
        watch.proc.send_signal(signal.SIGINT)
        assert watch.finish() == 0
