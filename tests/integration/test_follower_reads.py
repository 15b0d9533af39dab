"""Read-your-writes on a follower (issue #15, ADR 58): once a write sent to a follower is
acknowledged, a read sent to that same follower sees it. Three real managers on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest

from tests.integration.harness import Manager, leader_of, manager_trio
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as tpb

pytestmark = pytest.mark.integration

WRITERS = 8
ROUNDS = 40


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Manager]]:
    with manager_trio(tmp_path_factory.mktemp("follower-reads")) as managers:
        yield managers


def test_a_write_acknowledged_by_a_follower_is_seen_by_its_next_read(trio: list[Manager]) -> None:
    leader = leader_of(trio)
    follower = next(m for m in trio if m is not leader)
    admin = trio[0].data_dir / "admin"
    misses: list[str] = []
    failures: list[str] = []

    def writer(index: int) -> None:
        # Concurrent writers keep the follower busy applying while each one reads its own write.
        stub = follower.control(admin)
        for i in range(ROUNDS):
            name = f"ryw-{index}-{i}"
            spec = tpb.ServiceSpec(name=name, image="busybox:latest", replicas=0)
            try:
                stub.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=20)
            except grpc.RpcError as exc:
                failures.append(f"create {name}: {exc.code().name}: {exc.details()}")
                continue
            try:
                stub.GetService(cpb.GetServiceRequest(service=name), timeout=20)
            except grpc.RpcError as exc:
                misses.append(f"get {name}: {exc.code().name}")
            listed = {s.spec.name for s in stub.ListServices(cpb.ListServicesRequest(), timeout=20).services}
            if len(listed) < 1000 and name not in listed:  # one page holds them all here
                misses.append(f"list {name}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures[:5]
    assert not misses, f"{len(misses)} reads on the follower missed an acknowledged write: {misses[:5]}"
