"""ASGI lifespan: register a FastAPI/Starlette app on startup, leave with a drain on shutdown.

::

    from starlette.applications import Starlette
    from rx_discovery import Host
    from rx_discovery.asgi import discovery_lifespan

    app = Starlette(routes=..., lifespan=discovery_lifespan(
        "api", Host(hostname=os.environ["POD_IP"], ports={"http": "8000"}), drain=5.0))

The Discovery is created in the lifespan, i.e. in each worker process after a pre-fork server
(gunicorn) forked it, never in the master (grpcio is not fork-safe).

On SIGTERM/SIGINT (installed over the server's handlers during startup, when the server runs
on the main thread, as uvicorn does), the keys are removed at once and the server keeps
serving for ``drain`` seconds, so that clients (e.g. :mod:`rx_discovery.http`) move to other
hosts; then the server's own handler runs and it shuts down gracefully. Without a signal
(e.g. the server stops for another reason) the shutdown phase removes the keys and drains.

Needs the ``asgi`` extra (``anyio``: the blocking close and drain run on a worker thread, not
on the event loop, under asyncio or trio).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import anyio.to_thread
from reactivex import abc

from rx_discovery.discovery import Discovery
from rx_discovery.lifecycle import drain_on_signal
from rx_discovery.model import Host

__all__ = ["discovery_lifespan"]

log = logging.getLogger("rx_discovery")

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[dict[str, Any]]]


def discovery_lifespan(service: str, host: Host, *, ttl: float = 5.0, drain: float = 2.0,
                       healthy: abc.ObservableBase[bool] | None = None,
                       discovery: Callable[[], Discovery] = Discovery.from_env,
                       signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
                       ) -> Lifespan:
    """A lifespan (Starlette's/FastAPI's ``lifespan=``) that registers ``host`` under
    ``service`` on startup and removes it, then drains ``drain`` seconds, on shutdown or on
    the first of ``signals``.

    The lifespan's state (``request.state`` in Starlette) holds ``discovery`` and
    ``registration``. To compose it with your own lifespan, enter it last (after your app is
    ready) inside yours::

        @contextlib.asynccontextmanager
        async def lifespan(app):
            await open_database()
            async with discovery_lifespan("api", host)(app) as state:
                yield state

    Args:
        service, host, ttl, healthy: as :meth:`Discovery.register` (``healthy``: register only
            while the app says it is ready, e.g. :func:`rx_discovery.lifecycle.http_probe` of
            its own health endpoint).
        drain: seconds to keep serving after the keys are removed.
        discovery: makes the Discovery (default :meth:`Discovery.from_env`); called on
            startup, in the worker process.
        signals: the signals that start the drain (empty: only the shutdown phase drains).

    Registration does not block startup: the host is registered in the background, and
    catches up when etcd is reachable (see ``registration.status``).
    """
    signals = tuple(signals)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[dict[str, Any]]:
        d = discovery()
        try:
            registration = d.register(service, host, ttl=ttl, healthy=healthy)
        except BaseException:
            d.close()
            raise
        restore = None
        if signals and threading.current_thread() is threading.main_thread():
            restore = drain_on_signal(d, drain, signals=signals)
        elif signals:
            log.info("%s: the ASGI server does not run on the main thread; the drain starts "
                     "at shutdown instead of on the signal", service)
        try:
            yield {"discovery": d, "registration": registration}
        finally:
            if restore is not None:
                restore.dispose()
            # removes the keys and drains (at once if the signal's drain did it already)
            await anyio.to_thread.run_sync(lambda: d.close(drain=drain))

    return lifespan
