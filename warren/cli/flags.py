"""argparse pieces shared by the command modules: one-line usage errors and typed values."""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from warren.cli.errors import Exit


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter with the terminal's width read once: argparse makes a formatter per
    add_argument (to check its metavar), and reading the width each time was a quarter of the
    start-up's parser building (~430 reads)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, _terminal_width() if width is None else width)


@functools.cache
def _terminal_width() -> int:
    return shutil.get_terminal_size().columns - 2  # as argparse computes it


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2) instead of the usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        sys.exit(Exit.USAGE)


def value_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a warren.cli.units parser so argparse reports its ValueError message verbatim."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def add_format_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")


def add_watch_flag(parser: argparse.ArgumentParser) -> None:
    """-w/--watch on the list commands (warren.cli.watch, ADR 63)."""
    parser.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="redraw the table as it changes (driven by the cluster's events; Ctrl-C exits)",
    )
