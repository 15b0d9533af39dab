"""The fuzzer's own parts, without a manager: the oracle catches what issue #10 found, the
strategies reach every field, and a request stays within the size the fuzzer promises."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import oracle, values
from tests.fuzz.target import all_methods, describe
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as pb


def _problems(spec: pb.ServiceSpec | None = None, node: pb.Node | None = None) -> list[str]:
    services = [pb.Service(id="s1", spec=spec)] if spec is not None else []
    return [str(v) for v in oracle.violations([node] if node is not None else [], services)]


def test_a_sane_spec_and_node_break_no_rule() -> None:
    spec = pb.ServiceSpec(name="web", image="busybox", env={"PATH": "/bin"}, labels={"tier": "front"})
    spec.constraints.append("node.labels.zone == b")
    assert _problems(spec, pb.Node(id="n1", hostname="worker-1", labels={"zone": "b"})) == []


@pytest.mark.parametrize(
    "spec",
    [
        pb.ServiceSpec(name="web\n", image="busybox"),
        pb.ServiceSpec(name="web", image="busybox\n"),
        pb.ServiceSpec(name="web", image="busybox", labels={"key\n": "v"}),
        pb.ServiceSpec(name="web", image="busybox", env={"A\nB": "v"}),
        pb.ServiceSpec(name="web", image="busybox", constraints=["node.labels.k\n==v"]),
        pb.ServiceSpec(name="web", image="busybox", stop_signal="\u0669"),
        pb.ServiceSpec(name="web", image="busybox", env={f"K{i}": "x" * 65536 for i in range(17)}),
    ],
    ids=["name", "image", "label-key", "env-name", "constraint", "stop-signal", "size"],
)
def test_the_oracle_catches_what_slipped_through(spec: pb.ServiceSpec) -> None:
    assert _problems(spec)


@pytest.mark.parametrize(
    "labels",
    [{f"k{i}": "" for i in range(257)}, {"k" * 129: "v"}, {"k": "\x00"}, {"k": "\x1b[31m"}, {"a b": "v"}],
    ids=["count", "long-key", "nul", "escape", "space"],
)
def test_the_oracle_holds_node_labels_to_the_service_rules(labels: dict[str, str]) -> None:
    assert _problems(node=pb.Node(id="n1", hostname="worker-1", labels=labels))


@pytest.mark.parametrize("field", ["addr", "os", "arch"])
def test_the_oracle_bounds_what_an_agent_says_of_its_node(field: str) -> None:
    assert _problems(node=pb.Node(id="n1", hostname="worker-1", **{field: "x\x1b[2J"}))
    assert _problems(node=pb.Node(id="n1", hostname="worker-1", **{field: "x" * 257}))


def test_every_service_and_method_is_fuzzed() -> None:
    names = {str(m) for m in all_methods()}
    assert {"Control.CreateService", "Dispatcher.Session", "Managers.AddManager"} <= names
    assert {"NodeCertificates.RenewCertificate", "NodeCA.Join", "Control.ServiceLogs"} <= names
    assert len(names) == len(all_methods())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(request=values.message(cpb.CreateServiceRequest.DESCRIPTOR, values.Hints({})))
def test_requests_are_bounded(request: cpb.CreateServiceRequest) -> None:
    """Huge fields stay huge but bounded: the fuzzer must not exhaust its own memory."""
    assert request.ByteSize() < 64 << 20


def test_hostile_values_reach_nested_fields() -> None:
    """Some drawn spec has a hostile health check: nesting does not hide fields."""
    strategy = values.message(cpb.CreateServiceRequest.DESCRIPTOR, values.Hints({}))
    seen: list[bool] = []

    @settings(max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def draw(request: cpb.CreateServiceRequest) -> None:
        health = request.spec.health  # without hints, plausible numbers are 0-100 and 0-3
        durations = (health.interval, health.timeout, health.start_period)
        seen.append(not all(0 <= d <= 100 for d in durations) or not 0 <= health.retries <= 3)

    draw()
    assert any(seen)


@given(st.text(alphabet="ab", min_size=1, max_size=5), st.integers(16, 5000))
def test_describe_is_one_short_line(prefix: str, length: int) -> None:
    text = describe(cpb.GetServiceRequest(service=prefix + "x" * length + "\n"))
    assert "\n" not in text
    assert len(text) <= 700
