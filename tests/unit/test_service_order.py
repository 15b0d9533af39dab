"""ListServices pages come from the state's sorted index of services (#15): a page is a bisect and
a slice, and it holds what a full sorted scan of the services would, on the live state, a copy,
a state rebuilt as a snapshot or a restart rebuilds it, and a store restored from a snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.api.v1 import control_pb2 as cpb
from warren.manager import controlapi
from warren.manager.controlapi import ControlService
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.manager.store import Store, open_environment
from warren.model import Service, ServiceSpec
from warren.state import ClusterState, Delete, Put

NAMES = [f"{prefix}{i}" for prefix in ("a", "ab", "b", "web-") for i in range(4)]  # prefixes of one another

# One step: ("create", name), ("remove", pick), ("rename", pick, name), ("update", pick), ("page", size).
steps = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.sampled_from(NAMES)),
        st.tuples(st.just("remove"), st.integers(0, 50)),
        st.tuples(st.just("rename"), st.integers(0, 50), st.sampled_from(NAMES)),
        st.tuples(st.just("update"), st.integers(0, 50)),
        st.tuples(st.just("page"), st.integers(1, 6)),
    ),
    max_size=60,
)


def _control(state: ClusterState) -> ControlService:
    store = InMemoryState(state)
    return ControlService(store, InMemoryRaft(store, "127.0.0.1:1"), raft_secret="s")


def _service(service_id: str, name: str, version: int = 1) -> Service:
    return Service(id=service_id, spec=ServiceSpec(name=name, image="x"), version=version)


def _scan(state: ClusterState) -> list[tuple[str, str]]:
    """The reference: every service, sorted by a full scan."""
    return sorted((s.spec.name, s.id) for s in state.services.values())


def _rebuilt(state: ClusterState) -> ClusterState:
    """The state as a snapshot restore or a restart builds it: every object put again, in no
    particular order (the store's, by id)."""
    other = ClusterState()
    other.apply([Put("service", s) for s in sorted(state.services.values(), key=lambda s: s.id, reverse=True)])
    return other


def _list_all(control: ControlService, size: int) -> list[tuple[str, str, int]]:
    request = cpb.ListServicesRequest(page_size=size)
    listed: list[tuple[str, str, int]] = []
    while True:
        reply = asyncio.run(control.ListServices(request, None))
        listed += [(s.spec.name, s.id, s.version) for s in reply.services]
        if not reply.next_page_token:
            return listed
        request.page_token = reply.next_page_token


@settings(max_examples=150, deadline=None)
@given(steps, st.integers(1, 7))
def test_pages_between_changes_hold_what_a_full_sorted_scan_would(history: list[Any], final_size: int) -> None:
    state = ClusterState()
    control = _control(state)
    request = cpb.ListServicesRequest()
    listing: list[str] = []  # the names of the listing under way
    copies: list[tuple[ClusterState, list[tuple[str, str]]]] = []
    for number, step in enumerate(history):
        names = {s.spec.name for s in state.services.values()}
        ids = sorted(state.services)
        if step[0] == "create" and step[1] not in names:  # names are unique, as CreateService keeps them
            state.apply([Put("service", _service(f"id{number:03d}", step[1]))])
        elif step[0] == "remove" and ids:
            state.apply([Delete("service", ids[step[1] % len(ids)])])
        elif step[0] == "rename" and ids and step[2] not in names:  # the state allows it; the API does not
            old = state.services[ids[step[1] % len(ids)]]
            state.apply([Put("service", _service(old.id, step[2], old.version + 1))])
        elif step[0] == "update" and ids:  # a new object, same name: the page must show the new one
            old = state.services[ids[step[1] % len(ids)]]
            state.apply([Put("service", _service(old.id, old.spec.name, old.version + 1))])
        elif step[0] == "page":
            after = listing[-1] if listing else None
            request.page_size = step[1]
            reply = asyncio.run(control.ListServices(request, None))
            rest = [
                s
                for s in sorted(state.services.values(), key=lambda s: s.spec.name)
                if after is None or s.spec.name > after
            ]
            assert [(s.spec.name, s.id, s.version) for s in reply.services] == [
                (s.spec.name, s.id, s.version) for s in rest[: step[1]]
            ]
            assert bool(reply.next_page_token) == (len(rest) > step[1])
            listing += [s.spec.name for s in reply.services]
            assert listing == sorted(set(listing))  # in name order, each once
            request.page_token = reply.next_page_token
            if not reply.next_page_token:
                listing = []
        if number % 7 == 0:
            copies.append((state.copy(), _scan(state)))
    expected = _scan(state)
    assert state.service_order == expected
    for copy, when_taken in copies:  # a copy's index is its own: later changes do not reach it
        assert copy.service_order == when_taken == _scan(copy)
    rebuilt = _rebuilt(state)
    assert rebuilt.service_order == expected
    everything = [(s.spec.name, s.id, s.version) for s in sorted(state.services.values(), key=lambda s: s.spec.name)]
    assert _list_all(control, final_size) == everything
    assert _list_all(_control(rebuilt), final_size) == everything


def test_the_store_keeps_the_index_through_a_snapshot_restore_and_a_restart(tmp_path: Path) -> None:
    leader_env = open_environment(tmp_path / "leader")
    follower_env = open_environment(tmp_path / "follower")
    try:
        leader = Store(leader_env)
        leader.commit(1, [Put("service", _service(f"s{i}", f"svc-{(i * 7) % 20:02d}")) for i in range(20)])
        leader.commit(2, [Delete("service", "s3"), Put("service", _service("s4", "zz-renamed", 2))])
        expected = sorted((s.spec.name, s.id) for s in leader.state.services.values())
        assert leader.state.service_order == expected and len(expected) == 19
        follower = Store(follower_env)
        follower.commit(1, [Put("service", _service("stale", "a-stale-one"))])  # replaced by the restore
        follower.restore(leader.dump())
        assert follower.state.service_order == expected
        assert Store(leader_env).state.service_order == expected  # a restart loads it from the disk
        listed = _list_all(_control(follower.state), 4)
        assert [(name, service_id) for name, service_id, _ in listed] == expected
    finally:
        leader_env.close()
        follower_env.close()


def test_a_page_does_not_visit_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """The S1 readers' page of 100 cost a pass over every service before the index (#15)."""
    state = ClusterState()
    state.apply([Put("service", _service(f"s{i}", f"svc-{i:05d}")) for i in range(5000)])
    control = _control(state)
    keyed = 0
    real = controlapi._service_order

    def counting(item: Any) -> tuple[str]:
        nonlocal keyed
        keyed += 1
        return real(item)

    monkeypatch.setattr(controlapi, "_service_order", counting)
    first = asyncio.run(control.ListServices(cpb.ListServicesRequest(page_size=100), None))
    later = asyncio.run(
        control.ListServices(cpb.ListServicesRequest(page_size=100, page_token=first.next_page_token), None)
    )
    assert [s.spec.name for s in later.services] == [f"svc-{i:05d}" for i in range(100, 200)]
    assert keyed <= 40, f"two pages of 100 took the key of {keyed} services out of 5,000"
