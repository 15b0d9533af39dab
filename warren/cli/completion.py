"""Shell completion (ADR 63): `warren completion bash|zsh|fish` prints the script, and the shell
then runs `warren` with argcomplete's environment (_ARGCOMPLETE, COMP_LINE, COMP_POINT) to ask
for candidates.

argcomplete is imported only then, and only the names from the live cluster need a manager: they
are listed within NAMES_BUDGET seconds or not at all (no output, no error), so a shell never
hangs on a cluster that is away.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

from warren.cli.errors import CliError

SHELLS = ("bash", "zsh", "fish")
EXECUTABLES = ("warren", "wrn")
NAMES_BUDGET = 1.0  # seconds for a completion's names from the cluster

# The command groups whose positional NAME arguments name a live object of that kind.
GROUP_KINDS = {
    "service": "service",
    "node": "node",
    "secret": "secret",
    "config": "config",
    "network": "network",
    "volume": "volume",
    "stack": "stack",
}
NAME_DESTS = frozenset(
    {"name", "names", "targets", "node", "nodes", "network", "networks", "volume", "volumes", "service"}
)
NEW_NAME_COMMANDS = frozenset({"create"})  # their NAME is a new one: nothing to complete


def register(groups: Any) -> None:
    p = groups.add_parser(
        "completion",
        help="print the shell completion script (bash, zsh or fish)",
        description="bash: `source <(warren completion bash)` (e.g. in ~/.bashrc). "
        "zsh: `source <(warren completion zsh)` after compinit. "
        "fish: `warren completion fish > ~/.config/fish/completions/warren.fish`. "
        "Commands and flags complete offline; names of services, nodes, secrets, configs, networks, "
        "volumes and stacks come from the cluster within 1 s, or not at all.",
    )
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    argcomplete = _argcomplete()
    sys.stdout.write(argcomplete.shellcode(EXECUTABLES, shell=args.shell))
    return 0


def _argcomplete() -> Any:
    try:
        import argcomplete
    except ImportError:
        raise CliError("shell completion needs the argcomplete package: pip install argcomplete") from None
    return argcomplete


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell (argcomplete writes the candidates to fd 8) and exit: called at start when
    _ARGCOMPLETE is set. Flags are offered once a `-` is typed."""
    try:
        import argcomplete
    except ImportError:
        os._exit(1)  # the shell falls back to its default completion
    attach_name_completers(parser)
    argcomplete.autocomplete(parser, always_complete_options=False)


def attach_name_completers(parser: argparse.ArgumentParser) -> None:
    """Give each command's NAME positionals (`service inspect NAME`, `node ps NODE...`) a
    completer that lists names of that kind from the cluster."""
    for group_name, group in _subcommands(parser).items():
        kind = GROUP_KINDS.get(group_name)
        if kind is None:
            continue
        for command_name, command in _subcommands(group).items():
            if command_name in NEW_NAME_COMMANDS:
                continue
            for action in command._actions:
                if not action.option_strings and action.dest in NAME_DESTS:
                    setattr(action, "completer", NameCompleter(kind))  # noqa: B010 - argcomplete's hook


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


class NameCompleter:
    """argcomplete's completer protocol: candidates for a prefix, given what was parsed so far
    (its --config, --context and --manager choose the cluster)."""

    def __init__(self, kind: str, budget: float = NAMES_BUDGET) -> None:
        self.kind = kind
        self.budget = budget

    def __call__(self, prefix: str, parsed_args: argparse.Namespace | None = None, **_: Any) -> list[str]:
        names = within(self.budget, lambda: cluster_names(self.kind, parsed_args, self.budget))
        return sorted(n for n in names if n.startswith(prefix))


def within(budget: float, fetch: Callable[[], Iterable[str]]) -> list[str]:
    """`fetch()` run on a daemon thread: its names if it ends within `budget` seconds without an
    error, else none (the thread is left behind: the completing process exits right after)."""
    import threading

    found: list[str] = []

    def run() -> None:
        try:
            found.extend(fetch())
        except Exception:  # no config, no manager, refused: complete nothing, say nothing
            found.clear()

    thread = threading.Thread(target=run, name="complete-names", daemon=True)
    thread.start()
    thread.join(budget)
    return [] if thread.is_alive() else list(found)


def cluster_names(kind: str, parsed: argparse.Namespace | None, timeout: float) -> list[str]:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    args = SimpleNamespace(
        config=getattr(parsed, "config", None),
        context=getattr(parsed, "context", None),
        manager=getattr(parsed, "manager", None),
        rpc_timeout=timeout,
        consistent_reads=False,
    )
    with connect(args) as client:
        if kind == "service":
            return [s.spec.name for s in client.list_all("ListServices", pb.ListServicesRequest(), "services")]
        if kind == "node":
            return [n.hostname for n in client.list_all("ListNodes", pb.ListNodesRequest(), "nodes")]
        rpc, request, field = {
            "secret": ("ListSecrets", pb.ListSecretsRequest(), "secrets"),
            "config": ("ListConfigs", pb.ListConfigsRequest(), "configs"),
            "network": ("ListNetworks", pb.ListNetworksRequest(), "networks"),
            "volume": ("ListVolumes", pb.ListVolumesRequest(), "volumes"),
            "stack": ("ListStacks", pb.ListStacksRequest(), "stacks"),
        }[kind]
        return [item.name for item in getattr(client.call(rpc, request), field)]
