"""The demo's traffic: requests flowing to the api hosts as they come and go.

Each api host of the demo is a small HTTP server on loopback (stdlib, one thread), registered
with its real port as its private address; a client thread sends ``GET http://api/`` through
:class:`rx_discovery.http.DiscoveryTransport` every ``interval`` seconds and counts the answers
per host, the failed requests and the ejections. Needs httpx (extra ``http``); without it the
api hosts are names only and no request is sent.

What the demo shows: a graceful stop (``dispose``, then the server stops once clients no
longer see its key) costs nothing; a crash (the server dies, its key stays until its TTL)
costs an ejection, and a retried connect, each time its ejection runs out (1 s, then 2 s, 4 s...)
until its key expires: the request that meets the refused connection is retried on another
host, so no request fails.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from rich.table import Table

from rx_discovery.balance import Balancer
from rx_discovery.cli._loop import _Step
from rx_discovery.discovery import Discovery
from rx_discovery.model import Host
from rx_discovery.registration import Registration

if TYPE_CHECKING:
    import httpx

_SERVICE = "api"


def _http_available() -> bool:
    try:
        import httpx  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


class _Handler(BaseHTTPRequestHandler):
    """Answers every GET with the name of its host (``api-N``)."""

    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass   # one line per request would drown the demo


class _ApiServer:
    """One api host's HTTP server on 127.0.0.1, on a port of its own."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "serving"
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.name = name  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=f"rx-discovery-demo-{name}", daemon=True)
        self._thread.start()

    def stop(self, state: str) -> None:
        """Close the listening socket: new connections are refused from now on."""
        if self.state == "serving":
            self.state = state
            self._server.shutdown()   # within the 50 ms poll interval
            self._server.server_close()


class _Counts:
    """What the client saw: answers per host (with their times, for rates), failures,
    ejections. Written by the client thread, read by the main thread: under a lock."""

    def __init__(self, clock: Callable[[], float], window: float) -> None:
        self._clock = clock
        self.window = window
        self._lock = threading.Lock()
        self.totals: dict[str, int] = {}
        self._recent: collections.deque[tuple[float, str]] = collections.deque()
        self.failed = 0
        self.last_error = ""
        self.ejections = 0

    def answered(self, name: str) -> None:
        with self._lock:
            self.totals[name] = self.totals.get(name, 0) + 1
            self._recent.append((self._clock(), name))

    def failure(self, error: BaseException) -> None:
        with self._lock:
            self.failed += 1
            self.last_error = type(error).__name__

    def ejected(self, count: int) -> None:
        with self._lock:
            self.ejections += count

    def snapshot(self) -> tuple[dict[str, int], dict[str, int], int, int]:
        """(totals, answers in the last ``window`` seconds, failed, ejections) per host."""
        with self._lock:
            horizon = self._clock() - self.window
            while self._recent and self._recent[0][0] < horizon:
                self._recent.popleft()
            recent: dict[str, int] = {}
            for _, name in self._recent:
                recent[name] = recent.get(name, 0) + 1
            return dict(self.totals), recent, self.failed, self.ejections


class DemoTraffic:
    """The api hosts' servers and the client calling them (see the module's docstring).

    ``host(n)`` gives the Host to register for api host ``n`` (starting its server);
    ``retire`` and ``crash`` stop one gracefully or not; ``steps`` adds the api crash and the
    periodic counts line to the demo's timetable; the instance renders as a rich table.
    """

    def __init__(self, discovery: Discovery, say: Callable[[str], None], *,
                 interval: float = 0.075, window: float = 2.0,
                 lines: bool = True, enabled: bool | None = None) -> None:
        self._discovery = discovery
        self._lines = lines
        self._say = say
        self.interval = interval
        self.enabled = _http_available() if enabled is None else enabled
        self.counts = _Counts(time.monotonic, window)
        # added on the main thread, read by the client and by rich's refresh thread: both
        # are replaced whole, never changed in place
        self.servers: dict[str, _ApiServer] = {}   # name -> server
        self._names: dict[str, str] = {}           # uuid -> name
        self._balancer: Balancer | None = None
        self._retiring: dict[str, float] = {}      # uuid -> stop at the latest
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client: threading.Thread | None = None
        self._last_line: dict[str, int] = {}

    # --- the api hosts ------------------------------------------------------------------

    def host(self, n: int) -> Host:
        """The Host of api host ``n``: with a real server on loopback when httpx is there."""
        name = f"api-{n}"
        if not self.enabled:
            return Host(hostname=f"{name}.demo.local", ports={"http": str(8080 + n)},
                        shard=f"shard-{n % 2}")
        server = _ApiServer(name)
        self.servers = {**self.servers, name: server}
        return Host(hostname=f"{name}.demo.local", ports={"http": str(server.port)},
                    shard=f"shard-{n % 2}", private_hostname="127.0.0.1",
                    private_ports={"http": str(server.port)})

    def registered(self, registration: Registration) -> Registration:
        """Remember which server ``registration`` is (its hostname names it)."""
        name = registration.host.hostname.split(".", 1)[0]
        self._names = {**self._names, registration.uuid: name}
        return registration

    def retire(self, registration: Registration, drain: float = 5.0) -> None:
        """A graceful stop, after ``registration.dispose()``: the server keeps answering
        until the client no longer sees its key (at most ``drain`` seconds), then stops."""
        with self._lock:
            self._retiring[registration.uuid] = time.monotonic() + drain

    def crash(self, registration: Registration) -> None:
        """The host's process dies: its server stops at once, its key stays until its TTL."""
        from rx_discovery.testing import crash

        name = self._names.get(registration.uuid, "?")
        self._say(f"* crashing {name} {registration.uuid}: its server dies, its key stays "
                  f"for up to {registration.ttl:g}s; a refused connect ejects it (again when "
                  "the ejection runs out) and the request is retried on another host: no "
                  "request fails")
        server = self.servers.get(name)
        if server is not None:
            server.stop("crashed")
        crash(registration)

    # --- the client ---------------------------------------------------------------------

    def start(self) -> None:
        """Start sending requests (once the first api hosts are registered). The client
        subscribes to the api hosts here, on the caller's thread."""
        if not self.enabled or self._client is not None:
            return
        import httpx

        from rx_discovery.http import DiscoveryTransport

        counts = self.counts

        class Refusals(httpx.HTTPTransport):
            """Counts the transport failures (a refused connect, or a connection dropped by a
            server that died during the request): with one request at a time and a live host
            left, each one ejects its host (and the GET is retried on another one)."""

            def handle_request(self, request: httpx.Request) -> httpx.Response:
                try:
                    return super().handle_request(request)
                except httpx.TransportError:
                    counts.ejected(1)
                    raise

        transport = DiscoveryTransport(self._discovery, services={_SERVICE},
                                       transport=Refusals())
        self._balancer = balancer = transport.router.balancer(_SERVICE)
        self._client = threading.Thread(target=self._run, args=(transport, balancer),
                                        name="rx-discovery-demo-client", daemon=True)
        self._client.start()

    def close(self) -> None:
        self._stop.set()
        if self._client is not None:
            self._client.join(timeout=5)
        for server in self.servers.values():
            server.stop("stopped")

    def _run(self, transport: httpx.BaseTransport, balancer: Balancer) -> None:
        import httpx

        timeout = httpx.Timeout(5.0, connect=2.0)
        with httpx.Client(transport=transport, timeout=timeout) as client:
            # start once the api hosts are seen: a request to a service with no host yet
            # would fail for a reason that is not the demo's point
            while not self._stop.is_set() and not balancer.hosts:
                self._stop.wait(0.02)
            while not self._stop.is_set():
                try:
                    response = client.get(f"http://{_SERVICE}/")
                    self.counts.answered(response.text)
                except Exception as error:   # counted and shown; the demo goes on
                    self.counts.failure(error)
                self._stop_drained(balancer.hosts)
                self._stop.wait(self.interval)

    def _stop_drained(self, hosts: Any) -> None:
        """Stop the servers of retiring hosts the client no longer sees (or drained)."""
        now = time.monotonic()
        with self._lock:
            done = [uuid for uuid, latest in self._retiring.items()
                    if hosts is None or uuid not in hosts or now >= latest]
            for uuid in done:
                del self._retiring[uuid]
        for uuid in done:
            server = self.servers.get(self._names.get(uuid, ""))
            if server is not None:
                server.stop("stopped")

    # --- showing it ---------------------------------------------------------------------

    def steps(self, start: float, duration: float,
              crash: Callable[[], Registration]) -> list[_Step]:
        """The client's start, an api crash at 50 % of ``duration`` (``crash`` gives the
        registration), and (``lines``) a counts line every second."""
        if not self.enabled:
            return []
        steps = [_Step(start + 0.001, self.start),
                 _Step(start + 0.5 * duration, lambda: self.crash(crash()))]
        if self._lines:
            steps += [_Step(start + t, self.report) for t in range(1, int(duration) + 1)]
        return steps

    def line(self) -> str:
        """``~ requests: api-1 40 (+13), ... | failed 0 | ejections 0``: each host's total
        and what it answered since the previous line."""
        totals, _, failed, ejections = self.counts.snapshot()
        parts = [f"{name} {total} (+{total - self._last_line.get(name, 0)})"
                 for name, total in sorted(totals.items())]
        self._last_line = totals
        return (f"~ requests: {', '.join(parts) or 'none yet'} | failed {failed} | "
                f"ejections {ejections}")

    def report(self) -> None:
        self._say(self.line())

    def __rich__(self) -> Table:
        """A table for the live view, rendered afresh on every refresh."""
        totals, recent, failed, ejections = self.counts.snapshot()
        window = self.counts.window
        table = Table(title=f"requests to http://{_SERVICE}/ (one every "
                      f"{self.interval * 1000:.0f} ms)", title_justify="left",
                      caption=f"failed {failed}, ejections {ejections} (a graceful stop costs "
                      "nothing; a crash an ejection and a retried connect each time its "
                      "ejection runs out, until its key expires)",
                      caption_justify="left")
        for column in ("host", "server", f"req/s (last {window:g}s)", "total"):
            table.add_column(column)
        ejected = {self._names.get(uuid) for uuid in
                   (self._balancer.ejected if self._balancer is not None else ())}
        for name, server in sorted(self.servers.items()):
            state = f"{server.state}, ejected" if name in ejected else server.state
            table.add_row(name, state, f"{recent.get(name, 0) / window:.1f}",
                          str(totals.get(name, 0)))
        return table
