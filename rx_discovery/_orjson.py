"""orjson, imported only after the modules its native init imports.

orjson's init imports ``dataclasses``, ``datetime``, ``json`` and ``uuid`` and crashes the
interpreter (SIGSEGV) when one of those imports raises, as a Ctrl-C landing in its module code
does (ijl/orjson#310): a user's Ctrl-C during ``import rx_discovery`` killed the process.
Imported first, they are only looked up in ``sys.modules`` there, which runs no Python code a
signal could interrupt. A test checks the list against the installed orjson.
"""

from __future__ import annotations

import dataclasses  # noqa: F401
import datetime  # noqa: F401
import json  # noqa: F401
import uuid  # noqa: F401

import orjson

__all__ = ["orjson"]
