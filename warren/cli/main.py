"""`warren` / `wrn`: the operator's command line. Parser, dispatch and the one error handler.

Startup time matters (an operator types these all day): this module and the command modules
import only the stdlib at load time. grpc and the protobuf stubs load inside the handlers
that need them, so --help and usage errors never pay for them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from warren import logsetup
from warren.cli.errors import CliError, Exit
from warren.cli.flags import Parser, value_type

PROG = "warren"


def build_parser(command: str | None = None) -> Parser:
    """The whole parser; or, for a `command` of command_modules.COMMAND_MODULE, the global flags
    and that command's module only (start-up time: see warren.cli.command_modules)."""
    import importlib

    from warren.cli import command_modules, units

    parser = Parser(
        prog=PROG,
        description="Manage a Warren cluster.",
        epilog="Global flags go before the command. Exit codes: see docs/cli.md.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="client config (default: $WARREN_CONFIG, else $XDG_CONFIG_HOME/warren/config.json)",
    )
    parser.add_argument(
        "--version", action="store_true", help="show the version, the commit and the library versions, and exit"
    )
    parser.add_argument("--context", metavar="NAME", help="context in the config (default: its current one)")
    parser.add_argument(
        "--manager",
        metavar="HOST:PORT",
        action="append",
        type=value_type(units.parse_hostport),
        help="manager to talk to instead of the context's (repeat for failover)",
    )
    parser.add_argument(
        "--timeout",
        dest="rpc_timeout",
        metavar="SECONDS",
        type=value_type(units.parse_seconds),
        default=10.0,
        help="deadline of each call to a manager (default: 10)",
    )
    parser.add_argument(
        "--consistent",
        dest="consistent_reads",
        action="store_true",
        help="linearizable reads: the manager confirms through Raft that it is up to date first",
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", title="commands")
    module = command_modules.COMMAND_MODULE.get(command or "")
    for name in [module] if module else command_modules.MODULES:
        importlib.import_module(f"warren.cli.{name}").register(groups)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line. Words after a bare `--` are the task command (`service create NAME
    --image IMG -- COMMAND ARG...`); they are split off first because argparse cannot mix an
    optional list of positionals with flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    from warren.cli.command_modules import command_word

    parser = build_parser(command_word(argv))
    args = parser.parse_args(argv)
    if command is not None and not getattr(args, "accepts_command", False):
        parser.error(f"unexpected arguments after '--': {' '.join(command)}")
    args.command = command
    return args


def run(argv: Sequence[str] | None = None) -> int:
    from warren.cli.system import cmd_version

    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:
        return cmd_version(argparse.Namespace(format="table"))  # before the parser, which loads every command
    args = parse_args(argv)
    handler = getattr(args, "func", None)
    if args.version:  # with other flags or a command: it still wins
        return cmd_version(argparse.Namespace(format="table"))
    if handler is None:
        # `warren` or `warren service` alone: show what can follow.
        (getattr(args, "group_parser", None) or build_parser()).print_help(sys.stderr)
        return Exit.USAGE
    if hasattr(args, "log_format"):  # a daemon's: through the environment, which its processes keep
        logsetup.export(args.log_format, args.log_level)
    if getattr(args, "configure_logs", False):  # its own first lines are logs too (ADR 62)
        try:
            logsetup.configure()
        except logsetup.LogConfigError as exc:
            raise CliError(str(exc), Exit.USAGE) from None
    return int(handler(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: never shows a traceback unless WARREN_DEBUG is set."""
    debug = bool(os.environ.get("WARREN_DEBUG"))
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (ADR 63): answer and exit
        from warren.cli.completion import complete

        complete(build_parser())
    try:
        code = run(argv)
    except CliError as exc:
        sys.stderr.write(f"{PROG}: {exc.message}\n")
        code = exc.code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        code = 130
    except BrokenPipeError:
        # `warren service ls | head`: the reader left; exit quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = Exit.FAILURE
    except SystemExit:
        raise
    except Exception as exc:
        if debug:
            raise
        sys.stderr.write(f"{PROG}: internal error: {type(exc).__name__}: {exc} (set WARREN_DEBUG=1 for details)\n")
        code = Exit.FAILURE
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
