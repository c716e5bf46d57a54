"""Review (issue 11 §8): a child forked from the owner of an EmbeddedEtcd that exits normally
(atexit runs: a gunicorn worker, a plain os.fork child) must leave the owner's etcd alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, sys
    from rx_discovery.embedded import EmbeddedEtcd

    etcd = EmbeddedEtcd().start()
    data = etcd.data_dir
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a normal exit: the atexit handlers the child inherited run
    os.waitpid(pid, 0)
    print("data kept" if os.path.isdir(data) else "data removed")
    print("healthy" if etcd.healthy() else "not healthy")
    etcd.close()
""")


def test_a_forked_child_exiting_normally_leaves_its_parents_etcd_and_data_alone() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["data kept", "healthy"], result.stdout


def test_a_forked_child_closing_its_copy_leaves_its_parents_etcd_and_data_alone() -> None:
    """``with EmbeddedEtcd() as etcd:`` around code that forks: a child leaving the block
    closes its copy; the parent's server and data must survive it."""
    script = SCRIPT.replace("sys.exit(0)  # a normal exit", "etcd.close(); os._exit(0)  # a close")
    assert "etcd.close(); os._exit(0)" in script
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["data kept", "healthy"], result.stdout
