"""EmbeddedEtcd and EmbeddedEtcdCluster: lifecycle, faults, readiness, metrics, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import etcd3
import pytest
from helpers import wait_until

from rx_discovery.embedded import EmbeddedEtcd, EmbeddedEtcdCluster


def _client(server: EmbeddedEtcd) -> etcd3.Etcd3Client:
    return etcd3.client("127.0.0.1", server.client_port, timeout=3)


def test_restart_keeps_ports_and_data_and_close_cleans_up() -> None:
    with EmbeddedEtcd() as server:
        endpoint, data_dir, first_pid = server.endpoint, server.data_dir, server.pid
        assert endpoint.startswith("http://127.0.0.1:") and server.endpoints == [endpoint]
        assert first_pid is not None and os.path.isdir(data_dir)
        client = _client(server)
        client.put("/kept", b"v")
        client.close()

        server.kill()
        assert not server.running and server.pid is None
        server.restart()
        assert server.endpoint == endpoint and server.data_dir == data_dir
        assert server.pid not in (None, first_pid)
        client = _client(server)
        assert client.get("/kept")[0] == b"v"
        client.close()

        server.stop()
        server.stop()  # idempotent
        server.start()
        assert server.healthy()
        pid = server.pid
    assert not os.path.exists(data_dir)
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_pause_and_resume() -> None:
    with EmbeddedEtcd() as server:
        server.pause()
        assert not server.healthy()  # frozen: /health does not answer
        server.resume()
        server.wait_ready(5)
        assert server.healthy()


def test_metrics() -> None:
    with EmbeddedEtcd() as server:
        assert "etcd_server_is_leader 1" in server.metrics()
        assert server.is_leader()
        assert server.metric("etcd_server_has_leader") == 1
        assert server.metric("no_such_metric") == 0


def test_a_server_that_cannot_start_reports_its_log() -> None:
    with pytest.raises(RuntimeError, match="exited"), \
            EmbeddedEtcd(extra_args=["--no-such-flag"]):
        pass


def test_cluster_elects_a_new_leader_when_the_leader_dies() -> None:
    with EmbeddedEtcdCluster(3) as cluster:
        assert len(cluster.members) == 3 and len(set(cluster.endpoints)) == 3
        leader = cluster.leader()
        assert leader in cluster.members
        assert sum(member.is_leader() for member in cluster.members) == 1

        leader.kill()
        new_leader = cluster.leader(timeout=10)
        assert new_leader is not leader
        leader.restart()
        cluster.wait_ready()
        wait_until(lambda: all(m.healthy() for m in cluster.members), message="all healthy")
        data_dirs = [member.data_dir for member in cluster.members]
    assert not any(os.path.exists(path) for path in data_dirs)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_a_killed_owner_takes_its_servers_with_it() -> None:
    script = ("import time\n"
              "from rx_discovery.embedded import EmbeddedEtcd\n"
              "servers = [EmbeddedEtcd(name=f'orphan-{i}').start() for i in range(2)]\n"
              "servers[1].restart()\n"  # the reaper follows the new process
              "print(*(f'{s.pid} {s.data_dir}' for s in servers), sep='\\n', flush=True)\n"
              "time.sleep(120)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert owner.stdout is not None
        servers = [owner.stdout.readline().split() for _ in range(2)]
        pids = [int(pid) for pid, _ in servers]
        directories = [os.path.dirname(data_dir) for _, data_dir in servers]
        assert all(map(_alive, pids)) and all(map(os.path.isdir, directories))
    finally:
        owner.kill()  # SIGKILL: no atexit, no finally
        owner.wait()
    wait_until(lambda: not any(map(_alive, pids)), timeout=10,
               message="the servers to be killed")
    wait_until(lambda: not any(map(os.path.exists, directories)), timeout=10,
               message="their directories to be removed")


def test_a_given_data_dir_is_used_once_and_kept_after_close(tmp_path: Path) -> None:
    data = str(tmp_path / "kept")
    server = EmbeddedEtcd(name="kept", data_dir=data)
    command = server._command()
    assert command.count("--data-dir") == 1 and command[command.index("--data-dir") + 1] == data
    with server:
        client = _client(server)
        client.put("/kept", b"v")
        client.close()
    assert os.path.isdir(os.path.join(data, "member"))  # close() leaves a given directory
    with EmbeddedEtcd(name="kept", data_dir=data) as again:
        client = _client(again)
        assert client.get("/kept")[0] == b"v"
        client.close()
