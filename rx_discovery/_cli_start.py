"""Imported first by ``rx_discovery/__init__.py``: when this process is the ``rx-discovery``
command line, a Ctrl-C while the library is still being imported (before
:func:`rx_discovery.cli.main` takes the signals over) exits quietly with 130, instead of a
traceback through the import machinery. Nothing is started yet then, so nothing needs
cleaning up. In any other process this module does nothing.

It imports nothing that Python has not loaded at start-up: ``_signal`` (built in) instead of
``signal``, whose import of ``enum`` took milliseconds in which a Ctrl-C printed a traceback.
"""

import _signal  # type: ignore[import-not-found]  # no stub; the built-in behind `signal`
import os
import sys


def _is_the_cli() -> bool:
    argv = getattr(sys, "orig_argv", [])
    if "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["rx_discovery"]:
        return True
    return os.path.basename(sys.argv[0] if sys.argv else "") == "rx-discovery"


def _exit_interrupted(signum: int, frame: object) -> None:
    os._exit(130)


if _is_the_cli() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, _exit_interrupted)
