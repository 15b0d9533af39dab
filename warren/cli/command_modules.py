"""Which command module registers each top-level command, so that a command line builds only its
own command's part of the parser. Building all of them (every module imported, ~90 subparsers)
took ~50-70 ms of CPU at each command's start-up, a fifth of `service ps` of 10,000 tasks (#15).
tests/unit/test_cli_parse.py checks this table against what the modules register. Stdlib only."""

from __future__ import annotations

from collections.abc import Sequence

# In the order `warren --help` lists them: the order they were registered in before.
MODULES = (
    "cluster",
    "service",
    "node",
    "worker",
    "image",
    "volume",
    "secret",
    "config",
    "registry",
    "stack",
    "events",
    "network",
    "sim",
    "system",
    "completion",
    "task_exec",
)
# The top-level words each module registers, where they differ from its name.
COMMAND_MODULE = {name: name for name in MODULES if name not in ("system", "task_exec")} | {
    "apply": "stack",
    "version": "system",
    "system": "system",
    "task": "task_exec",
}
# The global flags that take a value (warren.cli.main.build_parser): the word after one is not the
# command. A test checks this against the parser.
VALUE_FLAGS = ("--config", "--context", "--manager", "--timeout")


def command_word(argv: Sequence[str]) -> str | None:
    """The top-level command `argv` names, if one of COMMAND_MODULE's; None when in doubt, and
    then the whole parser is built, which judges the line as it always did."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if not word.startswith("-"):
            return word if word in COMMAND_MODULE else None
        if word == "--":
            return None
        takes_value = "=" not in word and len(word) > 2 and any(flag.startswith(word) for flag in VALUE_FLAGS)
        i += 2 if takes_value else 1
    return None
