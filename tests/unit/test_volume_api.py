"""The volume API (ADR 40) on the manager's in-memory ports: each method's errors and status
codes, a service's volume bound by the orchestrator's first placement, and the node's session
telling its agent which volumes live there (and which no longer do)."""

from __future__ import annotations

import grpc
import pytest

from tests.unit.test_manager_services import Agent, Manager, as_caller, run, web
from warren.agent.status import Report
from warren.api.convert import report_to_pb
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.manager.server import ApiError
from warren.model import TaskState

VOLUME_MOUNT = pb.Mount(type="volume", source="db-data", target="/data")


async def _error(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ApiError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code, caught.value.message


def test_each_volume_method_refuses_bad_input_with_the_right_code() -> None:
    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        control = manager.control
        create = control.CreateVolume
        bad = [
            (cpb.CreateVolumeRequest(name=""), grpc.StatusCode.INVALID_ARGUMENT, "invalid volume name ''"),
            (cpb.CreateVolumeRequest(name="a/b"), grpc.StatusCode.INVALID_ARGUMENT, "invalid volume name 'a/b'"),
            (
                cpb.CreateVolumeRequest(name="a", driver="nfs"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "unknown volume driver",
            ),
            (
                cpb.CreateVolumeRequest(name="a", options={"size": "1G"}),
                grpc.StatusCode.INVALID_ARGUMENT,
                "takes no option",
            ),
            (cpb.CreateVolumeRequest(name="a", labels={"warren.x": "1"}), grpc.StatusCode.INVALID_ARGUMENT, "reserved"),
            (cpb.CreateVolumeRequest(name="a", node="nowhere"), grpc.StatusCode.NOT_FOUND, "node 'nowhere' not found"),
        ]
        for request, code, text in bad:
            got = await _error(create(request, None))
            assert got[0] == code and text in got[1], (request, got)
        made = await create(cpb.CreateVolumeRequest(name="a", node="m1", labels={"tier": "db"}), None)
        assert (made.name, made.node_id, made.node_hostname, made.driver) == ("a", "m1", "m1", "local")
        assert await _error(create(cpb.CreateVolumeRequest(name="a"), None)) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "volume name a is already in use",
        )
        assert (await _error(control.GetVolume(cpb.GetVolumeRequest(volume="zz"), None)))[
            0
        ] == grpc.StatusCode.NOT_FOUND
        assert (await _error(control.GetVolume(cpb.GetVolumeRequest(volume=""), None)))[
            0
        ] == grpc.StatusCode.INVALID_ARGUMENT
        assert (await _error(control.RemoveVolume(cpb.RemoveVolumeRequest(volume="zz"), None)))[0] == (
            grpc.StatusCode.NOT_FOUND
        )
        assert (await _error(control.ListVolumes(cpb.ListVolumesRequest(node="zz"), None)))[
            0
        ] == grpc.StatusCode.NOT_FOUND
        assert (await control.GetVolume(cpb.GetVolumeRequest(volume=made.id[:8]), None)).name == "a"

        # A service's mounts are checked like the rest of its spec.
        for mount, text in (
            (pb.Mount(type="", target="/x"), "needs a type"),
            (pb.Mount(type="nfs", target="/x"), "mount type must be one of volume, bind, tmpfs"),
            (pb.Mount(type="bind", source="rel", target="/x"), "must be an absolute path"),
        ):
            request = cpb.CreateServiceRequest(spec=web(1, mounts=[mount]), no_resolve_image=True)
            code, message = await _error(control.CreateService(request, None))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and text in message, message
        request = cpb.CreateServiceRequest(spec=web(2, mounts=[VOLUME_MOUNT]), no_resolve_image=True)
        code, message = await _error(control.CreateService(request, None))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "runs at most 1 replica, not 2" in message

    run(scenario())


def test_a_services_volume_is_bound_on_placement_listed_and_sent_to_its_node_until_removed() -> None:
    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        agent = Agent(manager, "w1")
        try:
            first = await agent.until(lambda a: True)
            control = manager.control
            request = cpb.CreateServiceRequest(spec=web(1, mounts=[VOLUME_MOUNT]), no_resolve_image=True)
            await control.CreateService(request, None)
            await manager.orchestrator.pass_once()
            volumes: list[tuple[str, ...] | None] = []

            def saw_volume(a: object) -> bool:
                return ("db-data",) in volumes

            while not saw_volume(first):
                delta = agent.assignments.apply((await anext(agent.stream)).decoded())
                volumes.append(delta.volumes)
            listed = (await control.ListVolumes(cpb.ListVolumesRequest(), None)).volumes
            assert [(v.name, v.node_id, list(v.used_by)) for v in listed] == [("db-data", "w1", ["web"])]
            assert [v.name for v in (await control.ListVolumes(cpb.ListVolumesRequest(node="w1"), None)).volumes] == [
                "db-data"
            ]
            assert (await control.ListVolumes(cpb.ListVolumesRequest(node="m1"), None)).volumes == []

            code, message = await _error(control.RemoveVolume(cpb.RemoveVolumeRequest(volume="db-data"), None))
            assert (code, message) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "volume db-data is in use by service web: remove them first",
            )
            await control.RemoveService(cpb.RemoveServiceRequest(service="web"), None)
            await manager.orchestrator.pass_once()
            code, message = await _error(control.RemoveVolume(cpb.RemoveVolumeRequest(volume="db-data"), None))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "in use by task web.1" in message  # not stopped yet
            # The agent reports its task shut down: the next pass deletes it, and the volume can go.
            as_caller("w1")
            (task_id,) = agent.assignments.tasks
            report = report_to_pb(Report(task_id, TaskState.SHUTDOWN, 1.8e9))
            await manager.dispatcher.UpdateTaskStatus(
                dpb.UpdateTaskStatusRequest(session_id=agent.assignments.session_id, updates=[report]), None
            )
            await manager.orchestrator.pass_once()
            await control.RemoveVolume(cpb.RemoveVolumeRequest(volume="db-data"), None)
            while () not in volumes:
                volumes.append(agent.assignments.apply((await anext(agent.stream)).decoded()).volumes)
        finally:
            await agent.stream.aclose()
            as_caller("admin", "admin")

    run(scenario())
