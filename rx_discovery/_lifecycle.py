"""Lifecycle helpers the core needs (the public ones are in :mod:`rx_discovery.lifecycle`):
fork detection and the drain wait.

Fork: grpcio is not fork-safe and background threads do not survive ``fork()``, so a
:class:`~rx_discovery.Discovery` made before a fork cannot work in the child. Each process
counts the forks it came from (``os.register_at_fork``); a Discovery remembers the count it was
made under and raises :class:`UsedAfterFork` when used under another.
"""

from __future__ import annotations

import math
import os
import threading

from reactivex import abc
from reactivex.scheduler import VirtualTimeScheduler

from rx_discovery._errors import ConfigError, DiscoveryError

__all__ = ["UsedAfterFork", "check_grpc_usable", "fork_generation", "grpc_channel_made",
           "validate_drain", "wait_on"]

_generation = 0
# The fork generation in which this process image first made a gRPC channel (None: never)
_grpc_used_in: int | None = None
# what gRPC reads as false (absl's flag syntax); unset, its fork support is on (Python wheels)
_FALSE = frozenset({"false", "0", "no", "n", "f"})


def _forked() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forked)


def fork_generation() -> int:
    """How many forks separate this process from the first one (0 in the original)."""
    return _generation


class UsedAfterFork(DiscoveryError, RuntimeError):
    """A Discovery (or one of its registrations or streams) made before ``fork()`` was used in
    the forked child: grpcio is not fork-safe and its threads did not follow the fork."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} was created before this process forked (pid {os.getpid()} is a forked "
            "child) and cannot be used here: grpcio is not fork-safe. Create the Discovery "
            "in each worker (after fork), e.g. in gunicorn's post_fork hook / the ASGI "
            "lifespan (rx_discovery.asgi.discovery_lifespan)")


def not_picklable(what: str) -> TypeError:
    """The error of pickling a Discovery (or its registration): what multiprocessing's spawn
    and forkserver start methods do to the arguments of a new process."""
    return TypeError(
        f"{what} cannot be sent to another process (its client and threads belong to this "
        "one): create a Discovery in each process instead, e.g. in the worker function")


def check_fork(generation: int, what: str) -> None:
    """Raise :class:`UsedAfterFork` unless this process is the one of ``generation``."""
    if generation != _generation:
        raise UsedAfterFork(what)


def grpc_channel_made() -> None:
    """Note that this process uses gRPC (see :func:`check_grpc_usable`)."""
    global _grpc_used_in
    if _grpc_used_in is None:
        _grpc_used_in = _generation


def check_grpc_usable() -> None:
    """Fail before any I/O where gRPC cannot work: in a child forked from a process that had
    used gRPC, with gRPC's fork handlers turned off (``GRPC_ENABLE_FORK_SUPPORT=false``, which
    a pre-fork master needs, see the README). Every call there hangs until its timeout: a
    registration made there never completed (0 in 10).

    Raises:
        ConfigError: naming the variable and the fix.
    """
    if _grpc_used_in is None or _grpc_used_in == _generation:
        return
    if os.environ.get("GRPC_ENABLE_FORK_SUPPORT", "").strip().lower() in _FALSE:
        raise ConfigError(
            "gRPC cannot work in this process: it was forked from one that had used gRPC, "
            "with GRPC_ENABLE_FORK_SUPPORT=false. Make every Discovery in the forked workers "
            "and none in the parent (then leave GRPC_ENABLE_FORK_SUPPORT unset), or keep "
            "gRPC out of the workers")


def validate_drain(drain: object) -> float:
    """``drain`` as seconds >= 0.

    Raises:
        ValueError: not a finite number >= 0.
    """
    if (isinstance(drain, bool) or not isinstance(drain, (int, float)) or math.isnan(drain)
            or math.isinf(drain) or drain < 0):
        raise ValueError(f"drain must be a finite number of seconds >= 0, got {drain!r}")
    return float(drain)


def wait_on(timer: abc.SchedulerBase, seconds: float) -> None:
    """Block the calling thread for ``seconds`` measured on ``timer``: a virtual-time scheduler
    (``TestScheduler``) counts them on its clock, which another thread advances; any other
    scheduler keeps real time, so the wait is a plain timed wait."""
    if seconds <= 0:
        return
    done = threading.Event()
    if isinstance(timer, VirtualTimeScheduler):
        timer.schedule_relative(seconds, lambda _s, _t: done.set())
        done.wait()
    else:
        done.wait(seconds)
