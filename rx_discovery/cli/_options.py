"""Options shared by the commands, and argparse types that refuse bad values before any I/O."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from rx_discovery.keys import validate_service_name

_PORT_NAME_FORBIDDEN = set(" \t\n\r=,/\"'")


def _tcp_port(text: str) -> int:
    """A TCP port, 1-65535 (an argparse type)."""
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _port_pair(text: str) -> tuple[str, str]:
    """Parse ``NAME=PORT`` (an argparse type): a name without spaces, a TCP port 1-65535."""
    name, sep, port = text.partition("=")
    if not sep or not name or not port:
        raise argparse.ArgumentTypeError(f"expected NAME=PORT (e.g. http=80), got {text!r}")
    if set(name) & _PORT_NAME_FORBIDDEN:
        raise argparse.ArgumentTypeError(f"port name {name!r} must not contain spaces, '=', "
                                         "',', '/' or quotes")
    try:
        number = _tcp_port(port)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"port {port!r} of {name!r} is not a TCP port "
                                         "(1-65535)") from None
    return name, str(number)


def _service(text: str) -> str:
    """A service name (an argparse type)."""
    try:
        return validate_service_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> float:
    """A positive number of seconds (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _connection_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--endpoints``, ``--prefix``, ``--timeout`` and ``-v``; on subcommands they default to
    SUPPRESS so that a value given before the command is kept."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("etcd connection")
    group.add_argument("--endpoints", metavar="URLS", default=default(None),
                       help="comma-separated etcd URLs (default: ETCD_HOSTS, ETCD_HOST, "
                            "else http://127.0.0.1:2379)")
    group.add_argument("--prefix", default=default(None),
                       help="keyspace prefix, e.g. /prod (default: ETCD_PREFIX, else none)")
    group.add_argument("--api", choices=("v3", "v2"), default=default(None),
                       help="etcd API: v3, or v2 to share services with Go etcd-discovery "
                            "(default: ETCD_API, else v3)")
    group.add_argument("--timeout", type=_positive, metavar="SECONDS", default=default(5.0),
                       help="deadline of one etcd call (default: 5)")
    group.add_argument("-v", "--verbose", action="store_true", default=default(False),
                       help="log the library's INFO messages to stderr")


def _add_command(commands: Any, name: str, handler: Callable[[argparse.Namespace], int],
                 help_text: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text,
                                                          description=description)
    parser.set_defaults(handler=handler)
    return parser

