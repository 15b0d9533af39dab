"""A worker node: its agent, built from its saved settings, able to become a manager once
promoted (ADR 15). `python -m warren.node.worker` is the process `warren worker start` and
`cluster join` re-execute into (see warren.agent.options.options_argv)."""

from __future__ import annotations

import sys
from pathlib import Path

from warren.agent import daemon as agent_daemon
from warren.agent.options import AgentOptions, parse_options
from warren.agent.settings import AgentSettings
from warren.node.promoted import run_promoted_manager


def agent_options(data_dir: Path, managers: list[str], settings: AgentSettings) -> AgentOptions:
    """The agent's options from its settings: the one place they are built."""
    return AgentOptions(
        data_dir=data_dir,
        managers=list(managers),
        runtime=settings.runtime,
        containerd_socket=settings.containerd_socket,
        labels=dict(settings.labels),
        advertise_addr=settings.advertise_addr,
        insecure_registries=tuple(settings.insecure_registries),
        registry_cas=tuple(settings.registry_cas),
        metrics_addr=settings.metrics_addr or None,
        cgroup_parent=settings.cgroup_parent,
        log_max_size=settings.log_max_size,
        log_max_files=settings.log_max_files,
    )


def run(options: AgentOptions) -> int:
    """Run this node's agent in the foreground until SIGTERM/SIGINT; returns the exit code."""
    return agent_daemon.run(options, run_promoted_manager, entry=__name__)


def main(argv: list[str] | None = None) -> int:
    return run(parse_options(argv, prog=f"python -m {__name__}"))


if __name__ == "__main__":
    sys.exit(main())
