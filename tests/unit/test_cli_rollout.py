"""The CLI's view of a rollout (ADR 33): the progress line, and how a wait ends when the rollout
pauses or is rolled back by its failure action."""

from __future__ import annotations

import pytest

from warren.api.v1 import types_pb2 as pb
from warren.cli import units
from warren.cli.errors import CliError, Exit
from warren.cli.progress import _rollout_done, _rollout_ended, _strategy_waits, rollout_line
from warren.cli.service_spec import apply_update


def _service(state: str, version: int = 7, to_version: int = 7, message: str = "") -> pb.Service:
    service = pb.Service(id="s1", spec=pb.ServiceSpec(name="web", replicas=10), version=version)
    service.update_status.CopyFrom(
        pb.UpdateStatus(state=state, from_version=6, to_version=to_version, started_at=100.0, message=message)
    )
    return service


def _task(version: int, state: str = "running", created: float = 150.0) -> pb.Task:
    return pb.Task(spec_version=version, state=state, desired_state="running", created_at=created)


def test_the_progress_line_counts_tasks_on_the_new_version_and_this_rollouts_failures() -> None:
    tasks = [_task(7)] * 4 + [_task(6)] * 6 + [_task(7, "failed"), _task(7, "failed", created=50.0)]
    assert rollout_line(_service("updating"), tasks) == "web: updating: 4 of 10 tasks on version 7; 1 failed"
    paused = _service("paused", message="paused: task web.3 failed its health check (image app:2)")
    assert rollout_line(paused, [_task(7)] * 4) == (
        "web: paused: 4 of 10 tasks on version 7 (task web.3 failed its health check (image app:2))"
    )


@pytest.mark.parametrize(
    ("state", "rolling_back", "code"),
    [
        ("paused", False, Exit.PAUSED),
        ("rollback_paused", True, Exit.PAUSED),
        ("rollback_completed", False, Exit.ROLLED_BACK),
    ],
)
def test_a_wait_ends_with_the_rollouts_outcome(state: str, rolling_back: bool, code: Exit) -> None:
    with pytest.raises(CliError) as err:
        _rollout_ended(
            _service(state, version=8, to_version=8, message="why"), since_version=7, rolling_back=rolling_back
        )
    assert err.value.code == code and "why" in err.value.message and "\n" not in err.value.message
    with pytest.raises(CliError) as err:
        _rollout_ended(_service("paused", version=8, to_version=8, message="paused: why"), 7, rolling_back=False)
    assert "paused: paused" not in err.value.message and "paused: why;" in err.value.message


def test_a_rollout_still_going_completed_or_of_an_earlier_version_does_not_end_the_wait() -> None:
    for state in ("updating", "completed", "rollback_started"):
        _rollout_ended(_service(state), since_version=7, rolling_back=False)
    _rollout_ended(_service("rollback_completed"), since_version=7, rolling_back=True)  # what was asked
    _rollout_ended(_service("paused", to_version=5), since_version=7, rolling_back=False)  # an older rollout
    assert not _rollout_done(_service("updating")) and _rollout_done(_service("completed"))
    assert _rollout_done(pb.Service(version=3))  # never updated


def test_update_flags_set_only_what_they_name_and_force_bumps_the_counter() -> None:
    import argparse

    from warren.cli.service_spec import add_update_flags

    parser = argparse.ArgumentParser()
    add_update_flags(parser)
    args = parser.parse_args(
        [
            "web",
            "--update-parallelism",
            "2",
            "--update-failure-action",
            "rollback",
            "--rollback-monitor",
            "3s",
            "--force",
        ]
    )
    args.command = None
    spec = pb.ServiceSpec(name="web", image="app:1")
    spec.update.monitor = 9.0
    apply_update(spec, args)
    assert (spec.update.parallelism, spec.update.failure_action, spec.update.monitor) == (2, "rollback", 9.0)
    assert spec.rollback.monitor == 3.0 and not spec.rollback.HasField("parallelism")
    assert spec.force_update == 1


@pytest.mark.parametrize("text", ["-0.1", "1.01", "nan", "1e-3", ""])
def test_a_failure_ratio_is_a_plain_number_from_0_to_1(text: str) -> None:
    with pytest.raises(ValueError):
        units.parse_ratio(text)
    assert units.parse_ratio(" 0.25 ") == 0.25 and units.parse_ratio("1") == 1.0


def test_deploy_flags_set_the_strategy_and_a_new_strategy_starts_from_its_defaults() -> None:
    import argparse

    from warren.cli.service_spec import add_update_flags

    parser = argparse.ArgumentParser()
    add_update_flags(parser)
    spec = pb.ServiceSpec(name="web", image="app:1")
    args = parser.parse_args(["web", "--deploy-strategy", "canary", "--canary-replicas", "1", "--canary-weight", "0"])
    args.command = None
    apply_update(spec, args)
    assert (spec.deploy.strategy, spec.deploy.canary_replicas, spec.deploy.canary_weight) == ("canary", 1, 0)
    assert spec.deploy.HasField("canary_weight")  # 0 is a weight (no traffic), not "unset"
    args = parser.parse_args(["web", "--deploy-strategy", "blue-green"])
    args.command = None
    apply_update(spec, args)
    assert (spec.deploy.strategy, spec.deploy.canary_replicas, spec.deploy.HasField("canary_weight")) == (
        "blue-green",
        0,
        False,
    )


@pytest.mark.parametrize("weight", ["101", "-1", "20%", "x"])
def test_a_canary_weight_outside_0_to_100_is_a_usage_error(weight: str, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from warren.cli.service_spec import add_update_flags

    parser = argparse.ArgumentParser()
    add_update_flags(parser)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["web", "--canary-weight", weight])
    assert exited.value.code == 2 and "--canary-weight" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("state", "strategy", "auto", "ends"),
    [
        ("canary", "canary", 0.0, True),  # awaiting promotion: the wait ends, exit 0
        ("canary", "canary", 30.0, False),  # it promotes itself: wait on
        ("completed", "blue-green", 0.0, True),  # switched; the kept set is not waited for
        ("updating", "blue-green", 0.0, False),
        ("completed", "rolling", 0.0, False),  # the usual convergence decides
    ],
)
def test_a_wait_ends_at_a_strategys_resting_point(state: str, strategy: str, auto: float, ends: bool) -> None:
    service = _service(state)
    service.spec.deploy.strategy = strategy
    service.spec.deploy.canary_auto_promote = auto
    assert _strategy_waits(service) is ends
