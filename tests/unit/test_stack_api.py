"""The stack methods of the Control API (#14, ADR 49) on an in-memory store and Raft: input
checks (INVALID_ARGUMENT with the reason), secrets sealed and immutable, a plan that writes
nothing, membership that `service update` keeps and `service create` cannot forge, and the
CLI's rendering of a plan with its exit code."""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from warren.api import stackconvert
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as pb
from warren.cli import stack as cli_stack
from warren.manager.controlapi import ControlService
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.manager.server import ApiError
from warren.model import ClusterInfo, ContainerOptions, HealthCheck, ServiceSpec
from warren.stack.spec import (
    STACK_LABEL,
    Dependency,
    DependencyCondition,
    Finding,
    StackObject,
    StackService,
    StackSpec,
)

T = TypeVar("T")
RAFT_SECRET = "a" * 64


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def control() -> tuple[ControlService, InMemoryState]:
    store = InMemoryState()
    store.state.cluster = ClusterInfo("c", 0.0, "cert", "key", "w", "m")
    return ControlService(store, InMemoryRaft(store, "127.0.0.1:4243"), raft_secret=RAFT_SECRET), store


def stack(*services: StackService, **fields: Any) -> StackSpec:
    return StackSpec(name="app", services=services or (StackService(ServiceSpec("app_web", "busybox:1")),), **fields)


def deploy(api: ControlService, spec: StackSpec, **flags: bool) -> cpb.DeployStackResponse:
    request = cpb.DeployStackRequest(stack=stackconvert.stack_to_pb(spec), **flags)
    return run(api.DeployStack(request, None))


def refused(api: ControlService, spec: StackSpec | cpb.StackSpec, **flags: bool) -> ApiError:
    message = spec if isinstance(spec, cpb.StackSpec) else stackconvert.stack_to_pb(spec)
    with pytest.raises(ApiError) as err:
        run(api.DeployStack(cpb.DeployStackRequest(stack=message, **flags), None))
    return err.value


def test_a_secret_is_sealed_and_a_changed_value_is_refused() -> None:
    api, store = control()
    with_secret = stack(secrets=(StackObject("app_token", b"hunter2"),))
    deploy(api, with_secret)
    (secret,) = store.state.secrets.values()
    assert b"hunter2" not in secret.sealed and secret.labels == {STACK_LABEL: "app"}
    assert list(deploy(api, with_secret).changes) == []
    err = refused(api, stack(secrets=(StackObject("app_token", b"other"),)))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and "immutable" in err.message


def test_a_plan_writes_nothing_even_its_first_secret_key() -> None:
    api, store = control()
    plan = deploy(api, stack(secrets=(StackObject("app_token", b"v"),)), dry_run=True)
    assert not plan.deployed
    assert sorted((c.kind, c.action) for c in plan.changes) == [("secret", "create"), ("service", "create")]
    assert not store.state.services and not store.state.secrets
    assert store.state.cluster is not None and not store.state.cluster.dek_wrapped


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (StackSpec(name="", services=()), "invalid stack name"),
        (StackSpec(name="app"), "has no services"),
        (
            stack(StackService(ServiceSpec("a", "busybox")), StackService(ServiceSpec("a", "busybox"))),
            "listed twice",
        ),
        (stack(StackService(ServiceSpec("a", "busybox", replicas=200_000))), "service 'a': replicas"),
        (stack(StackService(ServiceSpec("a", "busybox"), depends_on=(Dependency("a"),))), "depends on itself"),
        (stack(StackService(ServiceSpec("a", "busybox"), depends_on=(Dependency("zz"),))), "not a service"),
        (
            stack(
                StackService(ServiceSpec("a", "busybox"), depends_on=(Dependency("b", DependencyCondition.HEALTHY),)),
                StackService(ServiceSpec("b", "busybox", container=ContainerOptions(no_healthcheck=True))),
            ),
            "but b disables its health check (no_healthcheck)",
        ),
        (stack(StackService(ServiceSpec("a", "Bad Image"))), "invalid image reference"),
        (stack(configs=(StackObject("bad name", b"x"),)), "config name"),
    ],
)
def test_bad_stacks_are_invalid_arguments(spec: StackSpec, words: str) -> None:
    api, store = control()
    err = refused(api, spec)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and words in err.message, err.message
    assert not store.state.services


def test_a_stack_past_one_entry_is_refused_whole() -> None:
    api, store = control()
    big = stack(configs=tuple(StackObject(f"c{i}", b"x" * 400_000) for i in range(3)))
    for dry_run in (True, False):
        err = refused(api, big, dry_run=dry_run)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "cannot be deployed as one entry" in err.message
    assert not store.state.services and not store.state.configs


def test_an_unknown_dependency_condition_is_an_invalid_argument() -> None:
    api, _ = control()
    message = stackconvert.stack_to_pb(stack())
    message.services[0].depends_on.add(service="x", condition="service_ready")
    err = refused(api, message)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "service_healthy" in err.message


def test_unsupported_keys_are_refused_unless_allowed_then_warned() -> None:
    api, store = control()
    finding = Finding("services.web.deploy.endpoint_mode", "compose.yaml", 12, "not supported")
    err = refused(api, stack(unsupported=(finding,)))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "compose.yaml:12: services.web.deploy.endpoint_mode" in err.message and "--allow-unsupported" in err.message
    two_lines = Finding("services.web.x", "compose.yaml", 3, "first\nsecond")
    assert "\n" not in refused(api, stack(unsupported=(two_lines,))).message
    reply = deploy(api, stack(unsupported=(finding,)), allow_unsupported=True)
    assert reply.deployed and "compose.yaml:12" in reply.warnings[0] and store.state.services


def test_service_update_keeps_membership_and_service_create_cannot_forge_it() -> None:
    api, store = control()
    deploy(api, stack())
    current = run(api.GetService(cpb.GetServiceRequest(service="app_web"), None))
    changed = pb.ServiceSpec()
    changed.CopyFrom(current.spec)
    changed.env["A"] = "1"
    del changed.labels[STACK_LABEL]  # dropping it does not take the service out of its stack
    updated = run(api.UpdateService(cpb.UpdateServiceRequest(service="app_web", spec=changed), None))
    assert updated.spec.labels[STACK_LABEL] == "app" and updated.spec.env["A"] == "1"
    forged = pb.ServiceSpec(name="other", image="busybox", labels={STACK_LABEL: "app"})
    with pytest.raises(ApiError) as err:
        run(api.CreateService(cpb.CreateServiceRequest(spec=forged), None))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "reserved" in err.value.message
    assert [s.spec.name for s in store.state.services.values()] == ["app_web"]


def test_list_and_remove_stacks() -> None:
    api, store = control()
    health = HealthCheck(command=("true",))
    deploy(api, stack(StackService(ServiceSpec("app_db", "busybox", health=health)), configs=(StackObject("c", b"1"),)))
    listed = run(api.ListStacks(cpb.ListStacksRequest(), None))
    assert [(s.name, s.services, s.configs) for s in listed.stacks] == [("app", 1, 1)]
    removed = run(api.RemoveStack(cpb.RemoveStackRequest(name="app"), None))
    assert sorted(removed.removed) == ["config 'c'", "service app_db"]
    assert not store.state.services and not store.state.configs
    for name, code in (("nope", grpc.StatusCode.NOT_FOUND), ("bad name", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(ApiError) as err:
            run(api.RemoveStack(cpb.RemoveStackRequest(name=name), None))
        assert err.value.code == code


def test_the_cli_prints_the_plan_and_exits_10_on_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    reply = cpb.DeployStackResponse(
        stack="app",
        changes=[
            cpb.StackChange(kind="service", name="app_web", action="update", diff=["image app:1 → app:2"], replaces=3)
        ],
        unplaceable=["2 tasks of app_db cannot be placed: no suitable node"],
    )

    class Client:
        def __enter__(self) -> Client:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def call(self, method: str, request: Any) -> Any:
            assert method == "DeployStack" and request.dry_run
            return answer

    monkeypatch.setattr(cli_stack, "_load", lambda args: cpb.StackSpec(name="app"))
    monkeypatch.setattr("warren.cli.client.connect", lambda args: Client())
    args = argparse.Namespace(files=["x.yaml"], name="app", prune=False, allow_unsupported=False, format="table")
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    answer = reply
    assert cli_stack.cmd_plan(args) == cli_stack.PLAN_CHANGES == 10
    assert out.getvalue().splitlines() == [
        "~ service app_web",
        "    image app:1 → app:2",
        "    will replace 3 tasks",
        "2 tasks of app_db cannot be placed: no suitable node",
        "Plan for stack app: 0 to create, 1 to update, 0 to remove.",
    ]
    answer = cpb.DeployStackResponse(stack="app")
    assert cli_stack.cmd_plan(args) == 0
    assert out.getvalue().endswith("No changes: stack app is as the files say.\n")


def test_a_stack_as_the_loader_gives_it_deploys_with_its_labelled_objects(tmp_path: Path) -> None:
    """The loader labels every object with STACK_LABEL (as the engine does): the engine's checks
    of network, volume, secret and config labels must accept it (they refused it once)."""
    from warren.stack.load import load_stack

    (tmp_path / "token").write_text("t")
    (tmp_path / "compose.yaml").write_text(
        "services:\n  web:\n    image: busybox:1\n    secrets: [token]\n    volumes: ['data:/data']\n"
        "    networks: [front]\n"
        "networks:\n  front: {labels: {team: a}}\nvolumes:\n  data: {}\n"
        "secrets:\n  token: {file: ./token}\nconfigs:\n  conf: {content: x}\n"
    )
    api, store = control()
    reply = deploy(api, load_stack([tmp_path / "compose.yaml"], "app", {}))
    assert reply.deployed
    (network,) = store.state.networks.values()
    assert network.labels == {"team": "a", STACK_LABEL: "app"}
    assert [v.name for v in store.state.volumes.values()] == ["app_data"]
    assert [s.name for s in store.state.secrets.values()] == ["app_token"]
    assert [c.name for c in store.state.configs.values()] == ["app_conf"]
