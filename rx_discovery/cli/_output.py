"""Output of the command line: one-line errors, the parser, stdout/stderr lines."""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn, TextIO

from rich.console import Console

PROG = "rx-discovery"
_MASK = "***"


def _one_line(text: object, limit: int = 300) -> str:
    """``text`` as a single line (first line, whitespace collapsed, at most ``limit`` chars)."""
    lines = str(text).strip().splitlines()
    line = " ".join(lines[0].split()) if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _print_error(message: object) -> None:
    sys.stderr.write(f"{PROG}: error: {_one_line(message)}\n")
    sys.stderr.flush()


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit code 2, and which
    never takes an abbreviation for an option (``--password`` is not ``--password-env``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):
            # argparse echoes the words it did not take, which may be a secret
            # (``--password s3cret``): name the options only.
            words = message.split(": ", 1)[1].split()
            message = "unrecognized arguments: " + " ".join(
                word.split("=", 1)[0] if word.startswith("-") else "..." for word in words)
        _print_error(f"{message} (see '{self.prog} --help')")
        raise SystemExit(2)


class _Output:
    """Where commands print: rich on a terminal, plain flushed lines otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.console = Console(file=self.stream, highlight=False)
        self.tty = self.console.is_terminal

    def line(self, text: str) -> None:
        """Print one line (no markup is interpreted)."""
        if self.tty:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def json(self, value: object) -> None:
        """Print ``value`` as one compact JSON line."""
        self.stream.write(json.dumps(value, separators=(",", ":")) + "\n")
        self.stream.flush()


def _note(text: str) -> None:
    """A line for the human watching (stderr), kept out of the data on stdout."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()

