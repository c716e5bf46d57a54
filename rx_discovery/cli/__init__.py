"""The ``rx-discovery`` command line (also ``python -m rx_discovery``).

Commands::

    rx-discovery demo [--duration 20]      hosts come and go; watch them live
    rx-discovery ls [SERVICE] [--json] [--watch]  services and hosts (passwords shown as ***)
    rx-discovery watch SERVICE [--json]    current hosts, then one line per event
    rx-discovery register SERVICE --hostname H --port http=80 ...   hold a registration
    rx-discovery etcd [--data-dir D]       run an embedded etcd in the foreground

etcd is found with ``--endpoints``, else the ``ETCD_*`` environment variables (see
:meth:`rx_discovery.Discovery.from_env`), else ``http://127.0.0.1:2379``; ``demo`` starts an
embedded etcd of its own when neither is given.

Threads: streams emit on the library's threads; everything they emit goes through a
thread-safe queue to the main thread, which alone prints. From the start of :func:`main`,
SIGINT and SIGTERM only post a stop request to the same queue (they never raise inside the
library), so every command ends cleanly (exit 0) after disposing what it holds, or with 130
when stopped before it got going (connecting, starting etcd). A Ctrl-C while the package is
still being imported exits 130 too, quietly (:mod:`rx_discovery._cli_start`).

Errors print one line, ``rx-discovery: error: ...``, and exit 2 (bad arguments) or 1 (etcd
unreachable, registration failed...), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from rx_discovery._errors import ConfigError, DiscoveryError
from rx_discovery.cli import demo, etcd, ls, register, watch
from rx_discovery.cli._loop import _Inbox, _Interrupted, _stop_on_signals
from rx_discovery.cli._options import _connection_options
from rx_discovery.cli._output import PROG, _Parser, _print_error

__all__ = ["build_parser", "main"]

# Exit code of a command interrupted before it got going (128 + SIGINT, as shells report).
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``rx-discovery`` (no option is ever abbreviated)."""
    parser = _Parser(prog=PROG, description="Service discovery over etcd v3, as ReactiveX "
                                            "streams: list, watch and register hosts.")
    _connection_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (demo, ls, watch, register, etcd):
        command.add(commands)
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format=f"{PROG}: %(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("rx_discovery").setLevel(logging.INFO if verbose else logging.WARNING)


def _run(args: argparse.Namespace) -> int:
    """Run the command; map errors to one line and an exit code."""
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except _Interrupted:  # Ctrl-C before the command got going (connecting, starting etcd)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `rx-discovery watch api | head -1`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ConfigError, ValueError) as error:
        _print_error(error)
        return 2
    except (DiscoveryError, RuntimeError, OSError) as error:
        _print_error(error)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rx-discovery`` with ``argv``; returns the exit code (0 ok, 1 runtime error, 2
    usage error, 130 interrupted before the command got going).

    ``argv`` None is the program itself (the ``rx-discovery`` script, ``python -m
    rx_discovery``): it reads ``sys.argv[1:]`` and, once the command has cleaned up, ends the
    process at once (``os._exit``) instead of returning into the interpreter's finalization,
    where gRPC channels left to the garbage collector wait for ever on gRPC's daemon threads,
    which no longer run then (issue 16: a Ctrl-C in the first seconds of ``watch`` hung).
    """
    inbox = _Inbox()
    with _stop_on_signals(inbox):  # from here on, a signal never raises inside the library
        code = _main(inbox, argv)
    if argv is None:
        _exit_now(code)
    return code


def _main(inbox: _Inbox, argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    args.inbox = inbox
    _configure_logging(bool(getattr(args, "verbose", False)))
    return _run(args)


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head -1`)
            stream.flush()
    logging.shutdown()
    os._exit(code)
