"""A manager node: the manager, and beside it the embedded agent that runs the node's tasks
(unless --manager-only). `cluster init` and `cluster join` with a manager token run this."""

from __future__ import annotations

import sys
from dataclasses import replace

from warren.manager import daemon
from warren.manager.startup import ManagerOptions, StartupError
from warren.node.embedded import EmbeddedAgentFlags, beside_manager, check_overlay_free, resolve_settings


def demoted_hint(options: ManagerOptions) -> str:
    """What a demoted manager's node can do next (ADR 15)."""
    return f"Its node can run tasks as a worker with `warren worker start --data-dir {options.data_dir}/agent`."


def run(options: ManagerOptions, flags: EmbeddedAgentFlags) -> int:
    """Run the manager in `options.data_dir` with its embedded agent until SIGTERM/SIGINT;
    returns the process exit code."""
    try:
        settings = resolve_settings(options.data_dir, flags)
        check_overlay_free(options.data_dir, settings)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    options = replace(
        options,
        runs_tasks=settings.enabled,
        demoted_hint=demoted_hint(options),
        insecure_registries=tuple(settings.insecure_registries),
        registry_cas=tuple(settings.registry_cas),
    )
    return daemon.run(options, beside_manager(options.data_dir, settings))
