"""Helper processes of the benchmarks (a proxy, a writer), driven over their stdin."""

from __future__ import annotations

import subprocess


def end_child(process: subprocess.Popen[str]) -> None:
    """End a helper process driven over its stdin: EOF first (it exits on its own), then
    SIGKILL if it has not after 5 s."""
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
