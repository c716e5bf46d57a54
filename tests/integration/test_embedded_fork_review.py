"""Review (issue 11 §8): a child forked from the owner of an EmbeddedEtcd that exits normally
(atexit runs: a gunicorn worker, a plain os.fork child) must leave the owner's etcd alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

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


CHILD_STARTS = textwrap.dedent("""
    import os, sys, time
    from rx_discovery import embedded
    from rx_discovery.embedded import EmbeddedEtcd

    etcd = EmbeddedEtcd().start()
    data = etcd.data_dir
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            etcd.{call}()
            outcome = "started"
        except RuntimeError as error:
            outcome = "refused" if "forked" in str(error) else "failed"
        reaper = embedded._reaper
        mine = reaper.pid if reaper is not None and reaper.poll() is None else 0
        os.write(write, f"{{outcome}} {{mine}}".encode())
        os._exit(0)  # the child's reaper (if it started one) sees end-of-file now
    os.close(write)
    outcome, reaper = os.read(read, 100).decode().split()
    os.waitpid(pid, 0)
    deadline = time.monotonic() + 30
    while int(reaper) and os.path.exists(f"/proc/{{reaper}}") and time.monotonic() < deadline:
        time.sleep(0.05)  # until the child's reaper has done what it does at end-of-file
    print(outcome)
    print("data kept" if os.path.isdir(data) else "data removed")
    print("healthy" if etcd.healthy() else "not healthy")
    etcd.close()
""")


@pytest.mark.parametrize("call", ["start", "restart"])
def test_a_forked_child_starting_its_copy_is_refused_and_leaves_the_parents_data(
        call: str) -> None:
    """In a forked child the parent's server is not its child (``poll()`` says it exited), so
    a ``start()``/``restart()`` there would launch a second etcd on the parent's ports and data
    dir, and hand the parent's directory to the child's reaper, which deletes it when the
    child exits. The child's copy refuses, before doing anything."""
    result = subprocess.run([sys.executable, "-c", CHILD_STARTS.format(call=call)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:3] == ["refused", "data kept", "healthy"], result.stdout
