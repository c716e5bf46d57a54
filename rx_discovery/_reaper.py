"""Ends the etcd servers of a process that died without closing them.

:mod:`rx_discovery.embedded` runs this file as a script (``python -I _reaper.py``, so it
imports nothing of the package) the first time it starts a server, with a pipe on its standard
input that only the starting process holds. Each line it reads is ``<directory>\\t<pid>``: guard
that server process, whose data lives in ``directory``; a line without a pid releases the
directory (the server was closed properly). The pipe reaches end-of-file when the starting
process exits, however it exits (SIGKILL included): then every server still guarded is killed
(SIGKILL, through a pidfd where the platform has them, so a recycled pid is never hit) and its
directory removed. An ``atexit`` hook cannot do this: it does not run on SIGKILL, or when a
test runner is killed for a timeout.

A forked child inherits the pipe: while it lives, the reaper would never see end-of-file, so a
SIGKILLed owner with a forked child (a pre-fork server's worker) left its servers running.
:func:`detach_in_forked_children` (imported by :mod:`rx_discovery.embedded`) closes the
child's copy at fork time.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import time
from typing import IO

_EXIT_WAIT = 5.0  # seconds to wait for a killed server to exit before removing its directory


class _Guarded:
    """A server process, held by a pidfd when possible (immune to pid reuse)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self.fd = os.pidfd_open(pid)

    def kill(self) -> None:
        """SIGKILL the server and wait (bounded) until it is gone."""
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, signal.SIGKILL)
                select.select([self.fd], [], [], _EXIT_WAIT)  # readable once it exited
            else:
                os.kill(self.pid, signal.SIGKILL)
                deadline = time.monotonic() + _EXIT_WAIT
                while time.monotonic() < deadline:
                    os.kill(self.pid, 0)
                    time.sleep(0.02)
        except OSError:  # already gone
            pass

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


_pipe: IO[str] | None = None  # the owner's end of the current reaper's pipe
_hooked = False


def detach_in_forked_children(pipe: IO[str]) -> None:
    """In every child forked from now on, close this process's copy of ``pipe`` (the write
    end of the current reaper's standard input; it replaces the previous one): only the
    owner's exit must end the reaper's servers.

    The file object stays usable in the child (its descriptor then points at ``/dev/null``,
    so a flush writes nothing and no file later opened on that number is touched); the
    child's :mod:`rx_discovery.embedded` sees the reaper as not its own (``poll()`` on a
    process that is not its child) and starts its own for the servers it starts.
    """
    global _pipe, _hooked
    _pipe = pipe
    if not _hooked:
        _hooked = True
        os.register_at_fork(after_in_child=_detach)


def _detach() -> None:
    global _pipe
    pipe, _pipe = _pipe, None
    if pipe is None or pipe.closed:
        return
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, pipe.fileno())  # atomically replaces our copy of the pipe
        os.close(null)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the starting process
    guarded: dict[str, _Guarded] = {}
    for line in sys.stdin:  # until the starting process closes the pipe or dies
        directory, _, pid = line.rstrip("\n").partition("\t")
        old = guarded.pop(directory, None)
        if old is not None:
            old.release()
        if pid.isdigit():
            guarded[directory] = _Guarded(int(pid))
    for directory, server in guarded.items():
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
