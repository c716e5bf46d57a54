"""HTTP clients that call the services you discover.

``from rx_discovery.http import DiscoveryTransport, AsyncDiscoveryTransport`` (extra ``http``:
httpx): transports that send ``http://<service>/...`` to a live host of the service, retry on
another host when one refuses connections, and eject it for a while. See
:class:`DiscoveryTransport` for the rules (which names are services, which address, which
failures are retried). :mod:`rx_discovery.http.requests` (extra ``requests``) is the same for
``requests``; importing it does not need httpx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rx_discovery.http._routing import IDEMPOTENT, Router, Target

if TYPE_CHECKING:
    from rx_discovery.http._httpx import AsyncDiscoveryTransport, DiscoveryTransport

__all__ = ["IDEMPOTENT", "AsyncDiscoveryTransport", "DiscoveryTransport", "Router", "Target"]


def __getattr__(name: str) -> Any:
    # httpx is imported on first use, so that the requests adapter works without it
    if name in ("DiscoveryTransport", "AsyncDiscoveryTransport"):
        try:
            from rx_discovery.http import _httpx
        except ModuleNotFoundError as error:
            raise ImportError(f"rx_discovery.http.{name} needs httpx: "
                              "pip install 'rx-discovery[http]'") from error
        return getattr(_httpx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
