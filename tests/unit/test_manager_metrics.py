"""The manager's /metrics registry carries what the scale benchmark (#15) reads back."""

from __future__ import annotations

from grpc_health.v1 import health_pb2_grpc
from prometheus_client import generate_latest

from warren.api.v1 import ca_pb2_grpc, control_pb2_grpc, dispatcher_pb2_grpc, managers_pb2_grpc
from warren.manager.metrics import REGISTRY, declare_series, observe_request


def test_the_registry_reports_the_process_memory_and_cpu() -> None:
    text = generate_latest(REGISTRY).decode()
    samples = {line.split(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    assert samples["process_resident_memory_bytes"] > 1 << 20
    assert samples["process_cpu_seconds_total"] > 0


def test_a_scheduling_pass_of_seconds_is_told_apart_from_a_longer_one() -> None:
    text = generate_latest(REGISTRY).decode()
    bounds = {
        float(line.split('le="', 1)[1].split('"', 1)[0])
        for line in text.splitlines()
        if line.startswith("warren_scheduler_pass_duration_seconds_bucket{")
    }
    assert {5.0, 10.0}.issubset(bounds)


def test_each_api_call_counts_once_in_its_methods_and_statuss_series() -> None:
    def sample(name: str, **labels: str) -> float:
        value = REGISTRY.get_sample_value(name, labels)
        return 0.0 if value is None else value

    method = "/warren.api.v1.Control/MetricsTestCall"
    before = (
        sample("warren_api_requests_total", method=method, code="OK"),
        sample("warren_api_requests_total", method=method, code="NOT_FOUND"),
        sample("warren_api_request_duration_seconds_count", method=method),
    )
    observe_request(method, "OK", 0.001)
    observe_request(method, "OK", 0.002)
    observe_request(method, "NOT_FOUND", 0.003)
    after = (
        sample("warren_api_requests_total", method=method, code="OK"),
        sample("warren_api_requests_total", method=method, code="NOT_FOUND"),
        sample("warren_api_request_duration_seconds_count", method=method),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 3]


def test_every_method_and_stage_has_a_series_before_its_first_observation() -> None:
    # A series born between two scrapes has no earlier sample, and increase() over a window that
    # holds its birth misses it: S1's leader-bound reads went unreported that way. The methods
    # are the paths gRPC itself calls (a stub's), so a name that differs from what the server
    # observes would leave a declared series that never moves, and fail here.
    class RecordingChannel:
        def __init__(self) -> None:
            self.paths: list[str] = []

        def _record(self, path: str, *args: object, **kwargs: object) -> None:
            self.paths.append(path)

        unary_unary = unary_stream = stream_unary = stream_stream = _record

    channel = RecordingChannel()
    for stub in (
        ca_pb2_grpc.NodeCAStub,
        ca_pb2_grpc.NodeCertificatesStub,
        control_pb2_grpc.ControlStub,
        dispatcher_pb2_grpc.DispatcherStub,
        managers_pb2_grpc.ManagersStub,
        health_pb2_grpc.HealthStub,
    ):
        stub(channel)
    assert len(channel.paths) > 50
    declare_series()
    missing = [
        path
        for path in channel.paths
        if REGISTRY.get_sample_value("warren_api_requests_total", {"method": path, "code": "OK"}) is None
        or REGISTRY.get_sample_value("warren_api_request_duration_seconds_count", {"method": path}) is None
    ]
    assert missing == []
    for stage in ("queued", "replicated", "answered"):
        assert REGISTRY.get_sample_value("warren_raft_proposal_seconds_count", {"stage": stage}) is not None
    for transport in ("stream", "call"):
        assert (
            REGISTRY.get_sample_value("warren_status_batch_duration_seconds_count", {"transport": transport})
            is not None
        )
    for kind in ("created", "updated", "deleted"):
        assert REGISTRY.get_sample_value("warren_scheduler_changes_total", {"kind": kind}) is not None
