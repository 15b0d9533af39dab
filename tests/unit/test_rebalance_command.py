"""`service rebalance` (ADR 36): the command's handler and the auto-rebalance cluster setting,
the FSM's slot guard for a move, the Control API's answers, and the CLI following a rebalance."""

from __future__ import annotations

import grpc
import msgspec
import pytest

from tests.unit.core_sim import Sim, spec
from tests.unit.rebalance_rig import NOW, cluster_with
from tests.unit.test_manager_services import Manager, run, web
from warren import commands
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as pb
from warren.cli import service_rebalance
from warren.cli.errors import CliError, Exit
from warren.commands import ApplyPlan, RebalanceService, UpdateClusterSettings
from warren.manager.server import ApiError
from warren.model import ClusterInfo, RolloutState, ServiceMode, TaskState
from warren.state import Put


# -- the handler -------------------------------------------------------------------------------
def test_the_handler_refuses_bad_input_and_writes_nothing_when_balanced() -> None:
    sim, service_id = cluster_with(spec("web", replicas=4), nodes=1)
    result, changes = commands.apply(sim.state, RebalanceService(service_id, NOW))
    assert (result.ok, changes) == (True, [])
    assert result.message == "nothing to move: 4 tasks on 1 node (4), as even as the eligible nodes allow"
    assert commands.apply(sim.state, RebalanceService("nope", NOW))[0].code == "not_found"
    stale = commands.apply(sim.state, RebalanceService(service_id, NOW, expected_version=7))[0]
    assert stale.code == "failed_precondition" and "changed since version 7" in stale.message

    sim_global, global_id = cluster_with(spec("agent", mode=ServiceMode.GLOBAL), nodes=2)
    refused = commands.apply(sim_global.state, RebalanceService(global_id, NOW))[0]
    assert refused.code == "invalid_argument"
    assert refused.message == "service agent is global: it runs one task on each eligible node, none to move"


def test_the_handler_starts_a_rebalance_and_refuses_during_a_rollout() -> None:
    sim, service_id = cluster_with(spec("web", replicas=4), nodes=2)
    result = sim.run(RebalanceService(service_id, sim.now))
    assert result.message == "rebalancing: 0 of 2 tasks moved"
    status = sim.state.services[service_id].update_status
    assert status is not None and (status.state, status.from_version, status.to_version) == (
        RolloutState.REBALANCING,
        1,
        1,
    )
    again, changes = commands.apply(sim.state, RebalanceService(service_id, sim.now))
    assert again.ok and changes == [] and again.message == "rebalancing already (rebalancing: 0 of 2 tasks moved)"

    sim.update_service(service_id, spec("web", replicas=4, image="busybox:2"))
    status = sim.state.services[service_id].update_status
    assert status is not None and status.message == "replaces the rebalance of version 1, which was rebalancing"
    refused = commands.apply(sim.state, RebalanceService(service_id, sim.now))[0]
    assert refused.code == "failed_precondition"
    assert refused.message == (
        "the update of service web to version 2 is updating; rebalance it once the rollout completed"
    )


def test_auto_rebalance_is_a_cluster_setting() -> None:
    sim = Sim()
    sim.state.apply([Put("cluster", ClusterInfo("c", 0.0, "", "", "", ""))])
    sim.run(UpdateClusterSettings(auto_rebalance=True))
    assert sim.state.cluster is not None and sim.state.cluster.auto_rebalance
    sim.run(UpdateClusterSettings(wg_key_rotation_period=60.0))  # other settings leave it
    assert sim.state.cluster.auto_rebalance
    sim.run(UpdateClusterSettings(auto_rebalance=False))
    assert not sim.state.cluster.auto_rebalance


# -- the FSM's slot guard ----------------------------------------------------------------------
def test_a_slot_takes_one_move_beside_the_task_it_replaces() -> None:
    sim, service_id = cluster_with(spec("web", replicas=1), nodes=2)
    (old,) = sim.live(service_id)
    fresh = msgspec.structs.replace(old, id="move1", node_id="", state=TaskState.PENDING, relocates=old.id)
    twice = msgspec.structs.replace(fresh, id="move2")
    duplicate = msgspec.structs.replace(fresh, id="plain", relocates="")
    orphan_move = msgspec.structs.replace(fresh, id="move3", relocates="gone")
    sim.run(ApplyPlan(created=(fresh, twice, duplicate, orphan_move)))
    assert {t.id for t in sim.live(service_id)} == {old.id, "move1"}


# -- the Control API -----------------------------------------------------------------------------
def test_the_api_answers_refusals_and_nothing_to_move_without_a_raft_entry() -> None:
    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        await manager.control.CreateService(cpb.CreateServiceRequest(spec=web(2)), None)
        agent = pb.ServiceSpec(name="agent", image="busybox", mode="global")
        await manager.control.CreateService(cpb.CreateServiceRequest(spec=agent), None)
        before = manager.store.applied_index
        cases = [
            (cpb.RebalanceServiceRequest(service="nope"), grpc.StatusCode.NOT_FOUND, "not found"),
            (cpb.RebalanceServiceRequest(service="agent"), grpc.StatusCode.INVALID_ARGUMENT, "is global"),
            (cpb.RebalanceServiceRequest(service="web", version=7), grpc.StatusCode.FAILED_PRECONDITION, "changed"),
        ]
        for request, code, needle in cases:
            with pytest.raises(ApiError) as err:
                await manager.control.RebalanceService(request, None)
            assert err.value.code == code and needle in err.value.message
        answer = await manager.control.RebalanceService(cpb.RebalanceServiceRequest(service="web"), None)
        assert (answer.moves, answer.message) == (0, "nothing to move: no task is placed")
        assert answer.service.spec.name == "web"
        assert manager.store.applied_index == before, "no Raft entry"

        info = await manager.control.UpdateCluster(cpb.UpdateClusterRequest(auto_rebalance=True), None)
        assert info.auto_rebalance
        info = await manager.control.UpdateCluster(cpb.UpdateClusterRequest(wg_key_rotation_period=0), None)
        assert info.auto_rebalance, "a field left unset keeps its value"

    run(scenario())


# -- the CLI's wait ------------------------------------------------------------------------------
class Answers:
    """A client whose GetService returns the given statuses in turn (the last one again)."""

    def __init__(self, *statuses: tuple[str, str, float]) -> None:
        self.statuses = list(statuses)

    def call(self, method: str, request: object) -> pb.Service:
        assert method == "GetService"
        state, message, started_at = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        service = pb.Service(id="s1", spec=pb.ServiceSpec(name="web", replicas=4), version=1)
        service.update_status.CopyFrom(
            pb.UpdateStatus(state=state, message=message, started_at=started_at, from_version=1, to_version=1)
        )
        return service


def started_service() -> pb.Service:
    return Answers(("rebalancing", "rebalancing: 0 of 2 tasks moved", 5.0)).call("GetService", None)


def test_the_cli_follows_a_rebalance_to_its_end(capsys: pytest.CaptureFixture[str]) -> None:
    done = Answers(
        ("rebalancing", "rebalancing: 0 of 2 tasks moved", 5.0),
        ("rebalancing", "rebalancing: 1 of 2 tasks moved", 5.0),
        ("completed", "rebalanced: 2 tasks moved", 5.0),
    )
    assert service_rebalance._follow(done, started_service(), timeout=10) == 0
    assert capsys.readouterr().err.splitlines() == [
        "web: rebalancing: 0 of 2 tasks moved",
        "web: rebalancing: 1 of 2 tasks moved",
        "web: rebalanced: 2 tasks moved",
    ]
    paused = Answers(("rebalance_paused", "paused: task web.3 failed: exit status 3 (image app)", 5.0))
    with pytest.raises(CliError) as err:
        service_rebalance._follow(paused, started_service(), timeout=10)
    assert err.value.code == Exit.PAUSED
    assert err.value.message.startswith("web: the rebalance paused: task web.3 failed")
    replaced = Answers(("updating", "replaces the rebalance of version 1, which was rebalancing", 9.0))
    with pytest.raises(CliError) as err:
        service_rebalance._follow(replaced, started_service(), timeout=10)
    assert (err.value.code, err.value.message) == (Exit.FAILURE, "web: the rebalance was replaced: updating")
