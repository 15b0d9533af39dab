"""The state's index of coupled services (global, depending on another, mounting volumes), which
an incremental pass checks instead of walking every service (#15): it holds exactly those
services after any creates, updates and removals, in a copy and in a state rebuilt from its
objects, and a copy's index is its own."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from warren.model import Mount, MountType, Service, ServiceDependency, ServiceMode, ServiceSpec
from warren.reconciler.incremental import Visit, services_to_visit
from warren.state import ClusterState, Delete, Put

# A service's shape: (global?, depends on another?, mounts a volume?)
shapes = st.tuples(st.booleans(), st.booleans(), st.booleans())
steps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 6), shapes),
        st.tuples(st.just("remove"), st.integers(0, 6)),
        st.tuples(st.just("copy")),
    ),
    max_size=40,
)


def _service(number: int, shape: tuple[bool, bool, bool]) -> Service:
    is_global, depends, mounts = shape
    spec = ServiceSpec(
        name=f"svc-{number}",
        image="x",
        mode=ServiceMode.GLOBAL if is_global else ServiceMode.REPLICATED,
        mounts=(Mount(type=MountType.VOLUME, target="/data", source=f"vol-{number}"),) if mounts else (),
    )
    dependencies = (ServiceDependency(service="svc-0"),) if depends else ()
    return Service(id=f"s{number}", spec=spec, depends_on=dependencies)


def _expected(state: ClusterState) -> set[str]:
    return {s.id for s in state.services.values() if s.spec.mode is ServiceMode.GLOBAL or s.depends_on or s.spec.mounts}


@settings(max_examples=150, deadline=None)
@given(steps)
def test_the_index_holds_exactly_the_coupled_services(history: list[Any]) -> None:
    state = ClusterState()
    copies: list[tuple[ClusterState, set[str]]] = []
    for step in history:
        if step[0] == "put":
            state.apply([Put("service", _service(step[1], step[2]))])
        elif step[0] == "remove":
            state.apply([Delete("service", f"s{step[1]}")])
        else:
            copies.append((state.copy(), _expected(state)))
        assert state.coupled_services == _expected(state)
    for copy, when_taken in copies:
        assert copy.coupled_services == when_taken
    rebuilt = ClusterState()
    rebuilt.apply([Put("service", s) for s in state.services.values()])
    assert rebuilt.coupled_services == state.coupled_services


def test_a_pass_visits_the_global_and_dependent_services_without_walking_the_others() -> None:
    """A change to svc-0 visits it, the global service and its dependent; the 1,000 plain
    services are not read (their objects are not even looked up)."""
    state = ClusterState()
    state.apply([Put("service", _service(n, (False, False, False))) for n in range(1000)])
    state.apply([Put("service", _service(1000, (True, False, False)))])
    state.apply([Put("service", _service(1001, (False, True, False)))])
    state.apply([Put("service", _service(1002, (False, False, True)))])
    looked_up: list[str] = []

    class Watched(dict[str, Service]):
        def __getitem__(self, key: str) -> Service:
            looked_up.append(key)
            return super().__getitem__(key)

        def values(self) -> Any:
            raise AssertionError("a pass walked every service")

    state.services = Watched(state.services)
    wanted = services_to_visit(state, Visit(services=frozenset({"s0"}), nodes=frozenset()), ())
    assert wanted == {"s0", "s1000", "s1001"}
    assert sorted(looked_up) == ["s0", "s1000", "s1001", "s1002"]  # the changed one for its name
