"""Task networks (ADR 23) in the task controller, against a fake runtime: a task's network is
released whatever way the task ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from tests.unit.agent_fakes import FakeRuntime, Recorder, make_env, make_task, run
from tests.waiting import async_wait_for as until
from warren.agent.controller import TaskController
from warren.agent.runtime import RuntimeFailure
from warren.model import RestartCondition, RestartPolicy, TaskState

S = TaskState


class FakeNetworks:
    """The TaskNetworks port in memory: which task namespaces exist now."""

    def __init__(self) -> None:
        self.attached: set[str] = set()
        self.detached: list[str] = []

    def attach(self, task_id: str, address: str) -> str:
        self.attached.add(task_id)
        return f"/run/netns/wt-{task_id}"

    def resolv_conf(self) -> str:
        return ""

    def detach(self, task_id: str) -> None:
        self.attached.discard(task_id)
        self.detached.append(task_id)


def on_overlay(task_id: str = "task1", **kwargs: object):  # type: ignore[no-untyped-def]
    return msgspec.structs.replace(make_task(task_id, **kwargs), overlay_address="10.200.0.2")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "failures",
    [
        [RuntimeFailure("image not found: nosuch:latest", permanent=True)],  # rejected at once
        [RuntimeFailure("registry unreachable")] * 10,  # retried, then failed
    ],
)
def test_a_task_that_fails_while_preparing_releases_its_network(tmp_path: Path, failures: list) -> None:
    rt, rec, nets = FakeRuntime(), Recorder(), FakeNetworks()
    rt.fail["prepare"] = failures

    async def scenario() -> None:
        ctl = TaskController(on_overlay(), make_env(rt, rec, tmp_path, networks=nets))
        ctl.start()
        await until(lambda: rec.last_state() in (S.REJECTED, S.FAILED), message="the task to end")
        await until(lambda: not nets.attached, message="its network released")
        await ctl.close()

    run(scenario())
    assert rt.containers == {} and nets.detached == ["task1"]


def test_an_ended_task_whose_address_was_given_back_still_releases_its_network(tmp_path: Path) -> None:
    """The managers free an ended task's overlay address; its namespace is the agent's to remove."""
    rt, rec, nets = FakeRuntime(), Recorder(), FakeNetworks()
    task = on_overlay(restart=RestartPolicy(RestartCondition.NONE))

    async def scenario() -> None:
        ctl = TaskController(task, make_env(rt, rec, tmp_path, networks=nets))
        ctl.start()
        await until(lambda: rec.last_state() == S.RUNNING, message="running")
        ctl.update(msgspec.structs.replace(task, overlay_address="", state=S.RUNNING))
        (runtime_id,) = rt.containers
        rt.exit(runtime_id, 1)
        await until(lambda: rec.last_state() == S.FAILED, message="failed")
        await until(lambda: not nets.attached, message="its network released")
        await ctl.close()

    run(scenario())
    assert nets.detached == ["task1"]


def test_a_removed_task_that_never_had_a_container_releases_its_network(tmp_path: Path) -> None:
    rt, rec, nets = FakeRuntime(), Recorder(), FakeNetworks()
    rt.fail["prepare"] = [RuntimeFailure("registry unreachable")] * 10
    done: list[str] = []

    async def scenario() -> None:
        env = make_env(rt, rec, tmp_path, networks=nets, retry_delays=(30.0,))
        ctl = TaskController(on_overlay(), env, on_done=done.append)
        ctl.start()
        await until(lambda: any("retrying" in r.message for r in rec.reports), message="a retry")
        assert nets.attached == {"task1"}
        ctl.remove()  # `service rm` while it waits to retry
        await asyncio.wait_for(ctl.done.wait(), 5)
        await ctl.close()

    run(scenario())
    assert done == ["task1"] and not nets.attached and rt.containers == {}
