"""A command line builds only its own command's part of the parser (#15, start-up time): the
table of which module registers which command matches the modules, the global flags that take a
value are the parser's, and a line parses to the same namespace with the partial parser as with
the whole one."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys

import pytest

from warren.cli import command_modules, main
from warren.cli.command_modules import COMMAND_MODULE, MODULES, VALUE_FLAGS, command_word
from warren.cli.flags import Parser


def _registered(module: str) -> list[str]:
    parser = Parser(prog="warren")
    groups = parser.add_subparsers(dest="group")
    importlib.import_module(f"warren.cli.{module}").register(groups)
    return list(groups.choices)


def test_the_table_names_every_command_each_module_registers() -> None:
    registered = {word: module for module in MODULES for word in _registered(module)}
    assert registered == COMMAND_MODULE
    whole = main.build_parser()
    groups = next(a for a in whole._actions if isinstance(a, argparse._SubParsersAction))
    assert list(groups.choices) == [w for m in MODULES for w in _registered(m)]  # the help's order


def test_the_value_flags_are_the_global_flags_that_take_a_value() -> None:
    whole = main.build_parser()
    taking = {
        option
        for action in whole._actions
        if action.option_strings and action.nargs != 0 and not isinstance(action, argparse._HelpAction)
        for option in action.option_strings
    }
    assert taking == set(VALUE_FLAGS)


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["service", "ps", "web"], "service"),
        (["--manager", "node", "service", "ps", "web"], "service"),  # a flag's value is not the command
        (["--context=prod", "--consistent", "node", "ls"], "node"),
        (["--timeout", "5", "apply", "-f", "x.yml"], "apply"),
        (["--conf", "service", "node", "ls"], "node"),  # argparse's abbreviation of --config
        (["version"], "version"),
        (["task", "exec", "web.1", "sh"], "task"),
        (["servic", "ps"], None),  # not a command: the whole parser says so
        (["--version"], None),
        ([], None),
    ],
)
def test_the_command_word_is_found_past_the_global_flags(argv: list[str], word: str | None) -> None:
    assert command_word(argv) == word


@pytest.mark.parametrize(
    "argv",
    [
        ["service", "ps", "web", "--all", "--format", "json"],
        ["--manager", "127.0.0.1:1", "--timeout", "3", "node", "ps", "n1", "--filter", "desired-state=running"],
        ["service", "create", "web", "--image", "x", "--replicas", "3", "--cap-add", "NET_ADMIN"],
        ["apply", "-f", "stack.yml"],
        ["version"],
        ["cluster", "info"],
    ],
)
def test_a_line_parses_alike_with_its_commands_parser_and_the_whole_one(argv: list[str]) -> None:
    partial = main.build_parser(command_word(argv)).parse_args(argv)
    whole = main.build_parser().parse_args(argv)
    assert {k: v for k, v in vars(partial).items() if k != "group_parser"} == {
        k: v for k, v in vars(whole).items() if k != "group_parser"
    }
    assert main.parse_args(argv).func is whole.func


def test_a_command_line_loads_only_its_own_command_module() -> None:
    probe = (
        "import sys; from warren.cli import main; main.parse_args(['service', 'ps', 'web']);"
        "print(sorted(m for m in sys.modules if m.startswith('warren.cli.') and m[11:] in "
        f"{list(command_modules.MODULES)!r}))"
    )
    loaded = set(ast.literal_eval(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                                   check=True).stdout))  # fmt: skip
    assert "warren.cli.service" in loaded  # and what it imports itself (its secret and network flags)
    assert not loaded & {f"warren.cli.{m}" for m in ("cluster", "node", "worker", "stack", "sim", "system", "volume")}


def test_an_unknown_command_is_still_a_usage_error_that_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main.parse_args(["servic", "ps"])
    assert exit_.value.code == 2
    assert "invalid choice: 'servic'" in capsys.readouterr().err
