"""A create finds its VIP from the state's index of held VIPs, not by visiting every service (ADR 51),
and picks the same address as the pure allocator over all services would."""

from __future__ import annotations

import ipaddress

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren import commands
from warren.commands.overlay import overlay_layout
from warren.model import ClusterInfo, Node, NodeStatus, PortConfig, Resources, Service, ServiceSpec
from warren.network import ipam
from warren.state import ClusterState, Put


def _run(state: ClusterState, command: commands.Command) -> commands.Result:
    result, changes = commands.apply(state, command)
    state.apply(changes)
    return result


def _overlay_state(vip_range: str) -> ClusterState:
    state = ClusterState()
    cluster = ClusterInfo(
        id="c1",
        created_at=1.0,
        ca_cert_pem="",
        ca_key_pem="",
        worker_token_secret="w",
        manager_token_secret="m",
        overlay_range="10.50.0.0/16",
        vip_range=vip_range,
    )
    node = Node(id="n1", hostname="n1", status=NodeStatus.READY, resources=Resources(4_000_000_000, 1 << 32))
    assert _run(state, commands.InitCluster(cluster, node)).ok
    return state


def _service(i: int) -> Service:
    return Service(id=f"id-{i}", spec=ServiceSpec(name=f"s{i}", image="x", replicas=0))


def _expected_vip(state: ClusterState, service_id: str) -> str | None:
    """What the allocator over every service's VIP picks: the reference the index must match."""
    assert state.cluster is not None
    current = {s.id: ipaddress.IPv4Address(s.vip) for s in state.services.values() if s.vip}
    try:
        return str(ipam.allocate_vip(overlay_layout(state.cluster), current, service_id)[service_id])
    except ipam.ExhaustedError:
        return None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 11)), max_size=60))
def test_the_indexed_vip_is_the_lowest_free_one(steps: list[tuple[bool, int]]) -> None:
    state = _overlay_state("10.51.0.0/28")  # 14 VIPs for up to 12 services: creates also hit a full range
    for create, i in steps:
        if create and f"id-{i}" not in state.services:
            expected = _expected_vip(state, f"id-{i}")
            result = _run(state, commands.CreateService(_service(i)))
            assert result.ok == (expected is not None)
            if expected is not None:
                assert state.services[f"id-{i}"].vip == expected
        elif not create and f"id-{i}" in state.services:
            assert _run(state, commands.RemoveService(f"id-{i}", 2.0)).ok
        copied = state.copy()  # a snapshot allocates like the live state
        probe = _service(99)
        assert _run(copied, commands.CreateService(probe)).ok == (_expected_vip(state, probe.id) is not None)
        assert copied.services.get(probe.id, probe).vip == (_expected_vip(state, probe.id) or "")


def test_a_full_vip_range_is_refused_with_its_size() -> None:
    state = _overlay_state("10.51.0.0/30")  # 2 VIPs
    assert _run(state, commands.CreateService(_service(0))).ok
    assert _run(state, commands.CreateService(_service(1))).ok
    full = _run(state, commands.CreateService(_service(2)))
    assert (full.ok, full.code) == (False, "resource_exhausted")
    assert "the VIP range 10.51.0.0/30 is exhausted (2 services hold one)" in full.message


def test_a_create_does_not_parse_every_services_vip(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 2,000 services, creating one more parses a handful of addresses, not 2,000."""
    state = _overlay_state("10.51.0.0/16")
    for i in range(2000):
        state.apply([Put("service", msgspec.structs.replace(_service(i), vip=f"10.51.{i // 250}.{i % 250 + 1}"))])
    parsed = []
    real = ipaddress.IPv4Address

    def counting(address: object) -> ipaddress.IPv4Address:
        parsed.append(address)
        return real(address)  # type: ignore[arg-type]

    monkeypatch.setattr(ipaddress, "IPv4Address", counting)
    result = _run(state, commands.CreateService(_service(5000)))
    assert result.ok
    assert len(parsed) < 10
    assert state.services["id-5000"].vip not in {s.vip for s in state.services.values() if s.id != "id-5000"}


class _CountingServices(dict):
    visits = 0

    def values(self):  # type: ignore[override]
        type(self).visits += 1
        return super().values()


def test_a_create_without_published_ports_neither_visits_every_service_nor_reparses_the_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What each create used to do on the Raft thread, O(services) or parsing per create (ADR 51)."""
    from warren.commands import overlay

    state = _overlay_state("10.52.0.0/16")  # a plan no other test uses: not cached yet
    state.services = _CountingServices(state.services)
    parsed = []
    real = ipam.make_layout
    monkeypatch.setattr(ipam, "make_layout", lambda *a, **k: parsed.append(a) or real(*a, **k))
    for i in range(20):
        assert _run(state, commands.CreateService(_service(i))).ok
    assert _CountingServices.visits == 0
    assert len(parsed) <= 1
    assert overlay.overlay_layout(state.cluster).vips == ipaddress.IPv4Network("10.52.0.0/16")  # type: ignore[arg-type]
    # A service that publishes a port is still checked against the others.
    published = Service(
        id="id-p", spec=ServiceSpec(name="p", image="x", ports=(PortConfig(target=80, published=8080),))
    )
    assert _run(state, commands.CreateService(published)).ok
    clash = Service(id="id-q", spec=ServiceSpec(name="q", image="x", ports=(PortConfig(target=81, published=8080),)))
    refused = _run(state, commands.CreateService(clash))
    assert (refused.ok, refused.code) == (False, "already_exists") and "8080" in refused.message
