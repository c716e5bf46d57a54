"""A Starlette app registered through rx_discovery.asgi, for tests/integration/test_asgi.py
(run by uvicorn: ``uvicorn asgi_app:app``). ``BACKEND_NAME``, ``BACKEND_PORT``,
``BACKEND_DRAIN`` configure it; ``ETCD_HOST``/``ETCD_PREFIX`` the Discovery (from_env)."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from rx_discovery import Host
from rx_discovery.asgi import discovery_lifespan

NAME = os.environ["BACKEND_NAME"]


async def hello(request: Request) -> PlainTextResponse:
    uuid = request.state.registration.uuid  # the lifespan's state reaches requests
    return PlainTextResponse(f"{NAME} {uuid}")


app = Starlette(routes=[Route("/", hello)], lifespan=discovery_lifespan(
    "web", Host(hostname="127.0.0.1", ports={"http": os.environ["BACKEND_PORT"]}),
    ttl=3.0, drain=float(os.environ["BACKEND_DRAIN"])))
