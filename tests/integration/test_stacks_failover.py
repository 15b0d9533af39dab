"""Stacks with three real managers (#14, ADR 49): a leader killed during a deploy leaves the
whole stack or nothing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.integration.harness import leader_of, manager_trio
from tests.integration.stackrig import deploy
from tests.waiting import wait_for
from warren.api.v1 import control_pb2 as cpb
from warren.model import ServiceMode, ServiceSpec
from warren.stack.spec import StackObject, StackService, StackSpec

pytestmark = pytest.mark.integration


def big_stack(name: str, services: int) -> StackSpec:
    specs = [
        ServiceSpec(name=f"{name}_s{i}", image="exec", command=("true",), replicas=0, mode=ServiceMode.REPLICATED)
        for i in range(services)
    ]
    return StackSpec(
        name=name,
        services=tuple(StackService(s) for s in specs),
        configs=tuple(StackObject(f"{name}_c{i}", b"x" * 1024) for i in range(5)),
    )


def test_a_leader_killed_during_a_deploy_leaves_the_whole_stack_or_nothing(tmp_path: Path) -> None:
    """A follower watches the stack appear while the leader commits it: the first time it sees
    any of it, it sees all of it (one entry); the leader is killed at that moment, and the new
    leader has the whole stack. A deploy made of several entries fails here: the follower sees
    it part-way (checked by proposing one entry per service)."""
    with manager_trio(tmp_path) as managers:
        leader = leader_of(managers)
        follower = next(m for m in managers if m is not leader)
        admin = managers[0].data_dir / "admin"  # the joined managers hold no admin credentials
        watch = follower.control(admin)
        stack = big_stack("ha", 40)
        errors: list[BaseException] = []

        def send() -> None:
            try:
                deploy(leader, stack, creds=admin)
            except BaseException as exc:  # the leader may die before it answers: any outcome is fine
                errors.append(exc)

        def seen() -> tuple[int, int] | None:
            stacks = watch.ListStacks(cpb.ListStacksRequest(), timeout=5).stacks
            return (stacks[0].services, stacks[0].configs) if stacks else None

        sender = threading.Thread(target=send)
        sender.start()
        first = wait_for(seen, timeout=30, interval=0.001, message="the stack on a follower")
        leader.kill()
        sender.join(timeout=60)
        assert first == (40, 5), f"a follower saw part of the stack: {first}"
        new_leader = leader_of([m for m in managers if m is not leader])

        def counts() -> tuple[int, int] | None:
            listed = new_leader.cli("--manager", new_leader.addr, "--consistent", "stack", "ls", "--format", "json")
            stacks = json.loads(listed.stdout) if listed.returncode == 0 else None
            return (stacks[0]["services"], stacks[0]["configs"]) if stacks else None

        assert wait_for(counts, timeout=30, message="the stack on the new leader") == (40, 5)
