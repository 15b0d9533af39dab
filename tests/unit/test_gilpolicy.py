"""The switch interval of a serving process (ADR 84): set by each one's foreground entry."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from warren import gilpolicy, logsetup, proctitle
from warren.agent import daemon as agent_daemon
from warren.agent.options import AgentOptions
from warren.manager import daemon as manager_daemon
from warren.manager.startup import ManagerOptions
from warren.node import sim, simnode


@pytest.fixture
def interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_settle_shortens_the_switch_interval(interval: None) -> None:
    sys.setswitchinterval(0.005)  # CPython's default
    assert gilpolicy.settle() == pytest.approx(gilpolicy.SWITCH_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(gilpolicy.SWITCH_INTERVAL)
    assert gilpolicy.SWITCH_INTERVAL < 0.005


class Settled(Exception):
    """Raised in place of the settle call: the entry got as far as it, and no further."""


def _entries(tmp_path: Path) -> dict[str, Callable[[], object]]:
    return {
        "manager": lambda: manager_daemon.run(ManagerOptions(data_dir=tmp_path)),
        "agent": lambda: agent_daemon.run(AgentOptions(data_dir=tmp_path, managers=[]), entry="x"),
        "sim": lambda: sim.run(simnode.SimOptions(tmp_path, "127.0.0.1:1", "token", nodes=1)),
    }


@pytest.mark.parametrize("process", ["manager", "agent", "sim"])
def test_every_serving_process_settles_before_it_serves(
    process: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def settle() -> float:
        raise Settled

    monkeypatch.setattr(gilpolicy, "settle", settle)
    # What each entry does before: no logging set up for, nor title given to, the test process.
    monkeypatch.setattr(logsetup, "configure_or_refuse", lambda: None)
    monkeypatch.setattr(logsetup, "configure", lambda config: None)
    monkeypatch.setattr(proctitle, "set_title", lambda title: None)
    monkeypatch.setattr(agent_daemon, "_shed_join_libraries", lambda options, entry: None)
    with pytest.raises(Settled):
        _entries(tmp_path)[process]()
