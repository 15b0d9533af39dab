"""Networks (#14, ADR 47), pure: the FSM's network commands and the services' references to
networks, the isolation rules rendered for nftables, the DNS scoped by network, the endpoints
the dispatcher sends, and the CLI's --network flags."""

from __future__ import annotations

import argparse

import grpc
import msgspec
import pytest
from dnslib import RCODE, DNSRecord

from tests.unit.core_sim import Sim, node, spec
from tests.unit.test_manager_services import Manager, run, web
from warren import commands
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as pb
from warren.cli import main
from warren.cli.errors import CliError
from warren.cli.network import apply_service_flags, parse_attachment
from warren.manager.endpoints import all_endpoints
from warren.manager.server import ApiError
from warren.model import (
    ClusterInfo,
    Network,
    NetworkAttachment,
    RolloutState,
    Service,
    ServiceSpec,
    UpdateStatus,
)
from warren.network import isolation, lb
from warren.network.dns import Records, answer
from warren.network.lb import Endpoint
from warren.state import Put
from warren.validate import ValidationError, check_spec


def on(name: str, *networks: str, **aliases: tuple[str, ...]) -> ServiceSpec:
    attachments = tuple(NetworkAttachment(n, aliases.get(n, ())) for n in networks)
    return msgspec.structs.replace(spec(name), networks=attachments)


def clustered() -> Sim:
    sim = Sim()
    sim.state.apply([Put("cluster", ClusterInfo("c1", 0.0, "", "", "", ""))])  # the default overlay layout
    sim.add_node(node("n1"))
    return sim


# -- commands ------------------------------------------------------------------------------------
def test_network_commands_refuse_bad_names_taken_names_and_clashing_subnets() -> None:
    sim = clustered()
    sim.run(commands.CreateNetwork(Network("n1", "front", subnet="172.30.0.0/24")))
    for network, code, text in (
        (Network("n2", "front"), "already_exists", "network name 'front' is already in use"),
        (Network("n1", "other"), "already_exists", "network id n1 is already in use"),
        (Network("n3", "bad/name"), "invalid_argument", "invalid network name"),
        (Network("n4", "default"), "invalid_argument", "reserved for the cluster's default network"),
        (Network("n5", "x", subnet="10.0.0.1/24"), "invalid_argument", "invalid subnet '10.0.0.1/24'"),
        (Network("n6", "x", subnet="nonsense"), "invalid_argument", "invalid subnet 'nonsense'"),
        (Network("n7", "x", subnet="172.30.0.128/25"), "invalid_argument", "overlaps network front's"),
        (Network("n8", "x", subnet="10.200.5.0/24"), "invalid_argument", "overlaps the cluster's overlay"),
        (Network("n9", "x", subnet="10.201.0.0/24"), "invalid_argument", "overlaps the cluster's service VIP range"),
        (Network("na", "x", labels={"": "v"}), "invalid_argument", "label"),
    ):
        result, changes = commands.apply(sim.state, commands.CreateNetwork(network))
        assert (result.code, changes) == (code, []), network
        assert text in result.message, result.message
    assert sim.state.network_by_name("front") is not None


def test_a_service_may_name_only_networks_that_exist_and_removal_waits_for_its_users() -> None:
    sim = clustered()
    result, _ = commands.apply(sim.state, commands.CreateService(_service("s9", on("web", "front"))))
    assert (result.code, result.message) == ("not_found", "network 'front' not found (service web)")
    sim.run(commands.CreateNetwork(Network("n1", "front")))
    service_id = sim.create_service(on("web", "front", "default"))  # `default` is the default network
    sim.converge()
    result, _ = commands.apply(sim.state, commands.RemoveNetwork("n1", sim.now))
    assert (result.code, result.message) == (
        "failed_precondition",
        "network front is in use by service web: remove it from them first",
    )
    result, _ = commands.apply(sim.state, commands.UpdateService(service_id, on("web", "back"), sim.now))
    assert result.code == "not_found" and "network 'back' not found" in result.message
    sim.run(commands.RemoveService(service_id, sim.now))
    result, _ = commands.apply(sim.state, commands.RemoveNetwork("n1", sim.now))
    assert result.code == "failed_precondition" and "web" in result.message  # its task is still stopping
    sim.converge()
    sim.run(commands.RemoveNetwork("n1", sim.now))
    assert sim.state.network_by_name("front") is None and not sim.state.networks
    assert commands.apply(sim.state, commands.RemoveNetwork("n1", sim.now))[0].code == "not_found"


def test_a_rollback_to_a_version_on_a_removed_network_is_refused() -> None:
    sim = clustered()
    sim.run(commands.CreateNetwork(Network("n1", "old")))
    service_id = sim.create_service(on("web", "old"))
    sim.update_service(service_id, on("web"))  # onto the default network
    sim.converge()
    sim.run(commands.RemoveNetwork("n1", sim.now))
    result, _ = commands.apply(sim.state, commands.RollbackService(service_id, sim.now))
    assert result.code == "not_found" and "network 'old' not found" in result.message
    service = sim.state.services[service_id]
    assert service.update_status is None or service.update_status.state != RolloutState.ROLLBACK_STARTED


def test_an_automatic_rollback_to_a_version_on_a_removed_network_pauses() -> None:
    sim = clustered()
    sim.run(commands.CreateNetwork(Network("n1", "old")))
    service_id = sim.create_service(on("web", "old"))
    sim.update_service(service_id, on("web"))
    sim.converge()
    sim.run(commands.RemoveNetwork("n1", sim.now))
    version = sim.state.services[service_id].version
    back = UpdateStatus(RolloutState.ROLLBACK_STARTED, sim.now, version, version + 1, message="rolled back: failed")
    sim.run(commands.ApplyPlan(rollouts=(commands.RolloutChange(service_id, version, back, revert=True),)))
    service = sim.state.services[service_id]
    assert service.update_status is not None and service.update_status.state == RolloutState.PAUSED
    assert "cannot roll back (network 'old' not found (service web))" in service.update_status.message
    assert (service.version, service.spec.networks) == (version, ())


def test_networks_survive_a_snapshot_of_the_state(tmp_path: object) -> None:
    from warren.manager.store import Snapshot

    snapshot = Snapshot(1, None, [], [], [], networks=[Network("n1", "front", internal=True)])
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(snapshot), type=Snapshot)
    assert decoded.networks == [Network("n1", "front", internal=True)]
    old = msgspec.msgpack.decode(msgspec.msgpack.encode(Snapshot(1, None, [], [], [])), type=Snapshot)
    assert old.networks == []


@pytest.mark.parametrize(
    ("networks", "text"),
    [
        ((NetworkAttachment("a"), NetworkAttachment("a")), "network a is named twice"),
        ((NetworkAttachment("bad name"),), "invalid network name"),
        ((NetworkAttachment("a", ("no/slash",)),), "invalid network alias name"),
        (tuple(NetworkAttachment(f"n{i}") for i in range(17)), "at most 16 networks"),
    ],
)
def test_a_spec_names_its_networks_once_with_valid_names(networks: tuple[NetworkAttachment, ...], text: str) -> None:
    with pytest.raises(ValidationError, match=text):
        check_spec(msgspec.structs.replace(spec("web"), networks=networks))


# -- the dispatcher's endpoints --------------------------------------------------------------------
def test_endpoints_carry_networks_every_live_task_address_aliases_and_internal() -> None:
    sim = clustered()
    sim.run(commands.CreateNetwork(Network("n1", "db", internal=True)))
    sim.run(commands.CreateNetwork(Network("n2", "front")))
    sim.create_service(on("pg", "db", db=("postgres",)))
    sim.create_service(on("api", "db", "front"))
    sim.create_service(spec("legacy"))
    sim.converge()
    sent = {e.name: e for e in all_endpoints(sim.state)}
    assert list(sent["pg"].networks) == ["db"] and sent["pg"].internal
    assert [(a.network, a.alias) for a in sent["pg"].aliases] == [("db", "postgres")]
    assert list(sent["api"].networks) == ["db", "front"] and not sent["api"].internal
    assert list(sent["legacy"].networks) == ["default"] and not sent["legacy"].internal
    for endpoint in sent.values():
        tasks = sim.state.service_tasks(sim.state.service_by_name(endpoint.name).id)  # type: ignore[union-attr]
        assert list(endpoint.members) == sorted(t.overlay_address for t in tasks if t.overlay_address)


# -- the isolation rules ---------------------------------------------------------------------------
SUBNETS = ("10.200.0.0/24", "10.200.1.0/24")
A = Endpoint("a", "10.201.0.1", ("10.200.0.2",), networks=("a",), members=("10.200.0.2", "10.200.1.9"))
B = Endpoint("b", "10.201.0.2", (), networks=("b",), members=("10.200.1.2",), internal=True)
AB = Endpoint("ab", "10.201.0.3", (), networks=("a", "b"), members=("10.200.0.3",))


def test_isolation_allows_pairs_on_one_network_and_drops_other_task_pairs() -> None:
    text = isolation.ruleset([B, A, AB], SUBNETS)
    assert text == isolation.ruleset([AB, A, B], reversed(SUBNETS))  # the same input gives the same text
    assert isolation.memberships([A, B, AB]) == {
        "a": frozenset({"10.200.0.2", "10.200.1.9", "10.200.0.3"}),
        "b": frozenset({"10.200.1.2", "10.200.0.3"}),
    }
    assert "set net_0 {\n        type ipv4_addr;\n        elements = { 10.200.0.2, 10.200.0.3, 10.200.1.9 }" in text
    assert "elements = { 10.200.0.1, 10.200.1.1 }" in text  # the nodes' own addresses reach every task
    rules = [line.strip() for line in text.splitlines() if line.startswith("        ") and "@" in line]
    routed = [
        "ip saddr @node_addresses accept",
        "ip daddr @node_addresses accept",
        "ip saddr @net_0 ip daddr @net_0 accept",
        "ip saddr @net_1 ip daddr @net_1 accept",
        "ip saddr @task_subnets ip daddr @task_subnets drop",
        "ip saddr @internal_only drop",
    ]
    local = ["ip saddr @internal_only ip daddr != @node_addresses drop"]  # nor the node's other addresses
    assert rules == routed + local + routed[:-1]  # the bridge table: the same pairs, no route out to drop
    assert f"ct mark {lb.PUBLISHED_MARK:#x} accept" in text  # published ports answer every network
    assert "set internal_only {\n        type ipv4_addr;\n        elements = { 10.200.1.2 }" in text
    assert "table bridge warren {" in text


def test_isolation_is_empty_without_networks_and_refuses_bad_input() -> None:
    assert isolation.ruleset([Endpoint("x", "10.201.0.1", ("10.200.0.2",))], SUBNETS) == ""
    with pytest.raises(ValueError):
        isolation.ruleset([Endpoint("x", "10.201.0.1", (), networks=("a",), members=("1.2.3.4; drop",))], SUBNETS)
    with pytest.raises(ValueError):
        isolation.ruleset([A], ["10.200.0.1/24"])
    with pytest.raises(ValueError):
        isolation.ruleset([A], SUBNETS, table="bad table")
    assert isolation.internal_only([B, Endpoint("c", "10.201.0.9", (), networks=("c",), members=("10.200.1.2",))]) == (
        frozenset()
    )  # an address reused by a service with a way out is not closed in


# -- DNS scoped by network -------------------------------------------------------------------------
ALIASED = Endpoint(
    "db", "10.201.0.4", ("10.200.1.5",), networks=("b",), members=("10.200.1.5",), aliases=(("b", "postgres"),)
)
SCOPED = Records.of_endpoints([A, B, AB, ALIASED, Endpoint("old", "10.201.0.9", ())], trusted=("10.200.0.1",))


def _ask(name: str, source: str) -> DNSRecord:
    reply = answer(DNSRecord.question(name).pack(), SCOPED, source)
    assert reply is not None
    return DNSRecord.parse(reply)


def _addresses(name: str, source: str) -> list[str] | None:
    reply = _ask(name, source)
    return None if reply.header.rcode == RCODE.NXDOMAIN else [str(r.rdata) for r in reply.rr]


def test_a_name_resolves_only_for_tasks_sharing_a_network_with_it() -> None:
    a_task, b_task, both = "10.200.1.9", "10.200.1.2", "10.200.0.3"
    assert _addresses("a", a_task) == ["10.201.0.1"]
    assert _addresses("tasks.a", a_task) == ["10.200.0.2"]
    assert _addresses("b", a_task) is None and _addresses("tasks.b", a_task) is None
    assert _addresses("postgres", a_task) is None and _addresses("postgres", b_task) == ["10.201.0.4"]
    assert _addresses("a", b_task) is None
    assert _addresses("a", both) == ["10.201.0.1"] and _addresses("b", both) == ["10.201.0.2"]
    assert _addresses("tasks.b", b_task) == []  # visible, no healthy task: empty, not NXDOMAIN
    assert _addresses("a", "10.200.1.77") is None  # an address no endpoint names sees none (fails closed)
    assert _addresses("b", "10.200.0.1") == ["10.201.0.2"]  # the node itself sees every network
    assert _addresses("old", a_task) == ["10.201.0.9"]  # an endpoint without networks: named to all
    assert answer(DNSRecord.question("example.org").pack(), SCOPED, a_task) is None  # not ours: forwarded


# -- the CLI ---------------------------------------------------------------------------------------
def test_network_flags_parse_and_apply() -> None:
    assert parse_attachment("front") == {"network": "front", "aliases": []}
    assert parse_attachment("name=front,alias=web,alias=www") == {"network": "front", "aliases": ["web", "www"]}
    for bad in ("", "front,colour=red", "alias=x", "front,alias="):
        with pytest.raises(ValueError):
            parse_attachment(bad)
    current = pb.ServiceSpec(networks=[pb.NetworkAttachment(network="a"), pb.NetworkAttachment(network="b")])
    apply_service_flags(
        current,
        argparse.Namespace(networks=None, network_rm=["a"], network_add=[{"network": "c", "aliases": ["x"]}]),
    )
    assert [(n.network, list(n.aliases)) for n in current.networks] == [("b", []), ("c", ["x"])]
    with pytest.raises(CliError, match="not on network zz"):
        apply_service_flags(current, argparse.Namespace(networks=None, network_rm=["zz"], network_add=None))


@pytest.mark.parametrize(
    "argv",
    [
        ["network", "create"],
        ["network", "create", "x", "--label"],
        ["service", "create", "web", "--image", "busybox", "--network", "a,colour=red"],
        ["service", "update", "web", "--network-add", ""],
    ],
)
def test_bad_network_flags_exit_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err


def _service(service_id: str, s: ServiceSpec) -> Service:
    return Service(id=service_id, spec=s, created_at=0.0)


# -- the Control API on the manager's in-memory ports ------------------------------------------------
def test_each_network_method_answers_with_the_right_code() -> None:
    async def error(call: object) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(ApiError) as caught:
            await call  # type: ignore[misc]
        return caught.value.code, caught.value.message

    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        control = manager.control
        invalid, missing = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
        for request, code, text in (
            (cpb.CreateNetworkRequest(name=""), invalid, "invalid network name ''"),
            (cpb.CreateNetworkRequest(name="default"), invalid, "reserved"),
            (cpb.CreateNetworkRequest(name="a", subnet="300.0.0.0/8"), invalid, "invalid subnet"),
            (cpb.CreateNetworkRequest(name="a", labels={"warren.x": "1"}), invalid, "reserved"),
        ):
            got = await error(control.CreateNetwork(request, None))
            assert got[0] == code and text in got[1], (request, got)
        made = await control.CreateNetwork(
            cpb.CreateNetworkRequest(name="a", internal=True, subnet="172.29.0.0/24"), None
        )
        assert (made.name, made.internal, made.subnet, made.builtin) == ("a", True, "172.29.0.0/24", False)
        taken = await error(control.CreateNetwork(cpb.CreateNetworkRequest(name="b", subnet="172.29.0.0/16"), None))
        assert taken[0] == invalid and "overlaps network a's" in taken[1]
        again = await error(control.CreateNetwork(cpb.CreateNetworkRequest(name="a"), None))
        assert again == (grpc.StatusCode.ALREADY_EXISTS, "network name 'a' is already in use")
        spec = web(1, networks=[pb.NetworkAttachment(network="nope")])
        assert (await error(control.CreateService(cpb.CreateServiceRequest(spec=spec), None)))[0] == missing
        spec = web(1, networks=[pb.NetworkAttachment(network="a", aliases=["www"])])
        await control.CreateService(cpb.CreateServiceRequest(spec=spec), None)
        listed = (await control.ListNetworks(cpb.ListNetworksRequest(), None)).networks
        assert [(n.name, n.builtin, list(n.used_by)) for n in listed] == [("default", True, []), ("a", False, ["web"])]
        assert (await control.GetNetwork(cpb.GetNetworkRequest(network=made.id[:8]), None)).name == "a"
        assert (await error(control.GetNetwork(cpb.GetNetworkRequest(network=""), None)))[0] == invalid
        assert (await error(control.GetNetwork(cpb.GetNetworkRequest(network="zz"), None)))[0] == missing
        busy = await error(control.RemoveNetwork(cpb.RemoveNetworkRequest(network="a"), None))
        assert busy[0] == grpc.StatusCode.FAILED_PRECONDITION and "in use by service web" in busy[1]
        builtin = await error(control.RemoveNetwork(cpb.RemoveNetworkRequest(network="default"), None))
        assert builtin == (grpc.StatusCode.FAILED_PRECONDITION, "the default network cannot be removed")
        assert (await error(control.RemoveNetwork(cpb.RemoveNetworkRequest(network="zz"), None)))[0] == missing

    run(scenario())
