"""A WSGI app answering its backend name, for the gunicorn test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

NAME = os.environ["BACKEND_NAME"]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = f"{NAME} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
