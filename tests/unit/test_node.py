"""The composition root (ADR 27): the agent's options come from its settings in one place, and
a worker's agent process is started with the promotion runner and re-executes into itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from warren.agent import daemon as agent_daemon
from warren.agent.options import AgentOptions, options_argv
from warren.agent.settings import AgentSettings
from warren.host import host_facts
from warren.node import worker
from warren.node.promoted import run_promoted_manager


def test_agent_options_carry_every_agent_setting(tmp_path: Path) -> None:
    settings = AgentSettings(
        runtime="exec",
        containerd_socket="/s.sock",
        labels={"zone": "a"},
        advertise_addr="10.0.0.1",
        insecure_registries=("r:5000",),
        metrics_addr="127.0.0.1:9000",
        cgroup_parent="/x",
    )
    options = worker.agent_options(tmp_path, ["m:4242"], settings)
    assert options == AgentOptions(
        data_dir=tmp_path,
        managers=["m:4242"],
        runtime="exec",
        containerd_socket="/s.sock",
        labels={"zone": "a"},
        advertise_addr="10.0.0.1",
        insecure_registries=("r:5000",),
        metrics_addr="127.0.0.1:9000",
        cgroup_parent="/x",
    )
    assert worker.agent_options(tmp_path, [], AgentSettings()).metrics_addr is None  # "" = none


def test_a_workers_agent_can_be_promoted_and_re_executes_into_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(agent_daemon, "run", lambda *args, **kwargs: calls.append((*args, kwargs)) or 0)
    options = AgentOptions(data_dir=Path("/d"), managers=["m:1"], runtime="exec", hostname="h")
    assert worker.main(options_argv(options)) == 0
    assert calls == [(options, run_promoted_manager, {"entry": "warren.node.worker"})]


def test_host_facts_sanitise_the_hostname_for_managers_and_agents_alike() -> None:
    facts = host_facts("my host!")
    assert facts.hostname == "my-host-"
    assert facts.nano_cpus >= 1_000_000_000
