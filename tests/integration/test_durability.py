"""kill -9 of the manager during a stream of writes loses no acknowledged write and applies no
log entry twice."""

from __future__ import annotations

import threading

import grpc
import pytest

from tests.integration.harness import Manager
from tests.waiting import wait_for
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as pb

pytestmark = pytest.mark.integration


def _writer(
    manager: Manager, prefix: str, start: int, acked: list[str], counter_acks: list[int], stop: threading.Event
) -> None:
    """Creates services and bumps a counter service until the manager dies; records what was
    acknowledged."""
    control = manager.control()
    i = start
    while not stop.is_set():
        i += 1
        try:
            control.CreateService(
                cpb.CreateServiceRequest(spec=pb.ServiceSpec(name=f"{prefix}-{i}", image="busybox", replicas=0)),
                timeout=5,
            )
            acked.append(f"{prefix}-{i}")
            # Each update sets COUNTER=i and bumps the version by one; replaying an entry twice
            # would bump the version past the counter, or bring back an older counter.
            control.UpdateService(
                cpb.UpdateServiceRequest(
                    service="counter",
                    spec=pb.ServiceSpec(name="counter", image="busybox", replicas=0, env={"COUNTER": str(i)}),
                ),
                timeout=5,
            )
            counter_acks.append(i)
        except grpc.RpcError:
            return


def test_kill9_during_writes_keeps_every_acknowledged_write(manager: Manager) -> None:
    create = manager.cli("service", "create", "counter", "--image", "busybox", "--replicas", "0", "--detach")
    assert create.returncode == 0, create.stderr
    counter_value = 0
    for _round in range(3):
        acked: list[str] = []
        counter_acks: list[int] = []
        stop = threading.Event()
        writer = threading.Thread(
            target=_writer, args=(manager, f"round{_round}", counter_value, acked, counter_acks, stop)
        )
        writer.start()
        wait_for(lambda: len(counter_acks) >= 30, timeout=30, message="30 acknowledged writes")  # noqa: B023
        manager.kill()  # SIGKILL mid-stream
        stop.set()
        writer.join(timeout=30)
        assert not writer.is_alive()

        manager.start()  # same data directory, same command
        services = {s["spec"]["name"]: s for s in manager.cli_json("service", "ls")}
        missing = [name for name in acked if name not in services]
        assert not missing, f"acknowledged but lost after kill -9: {missing}"

        counter = services["counter"]
        counter_value = int(counter["spec"]["env"]["COUNTER"])
        # Every acknowledged update is there (the one in flight at the kill may be too)...
        assert counter_value >= counter_acks[-1]
        # ...and each was applied exactly once: the version counts the updates.
        assert int(counter["version"]) == counter_value + 1, "a log entry was applied twice or lost"

        def caught_up() -> bool:
            info = manager.cli_json("cluster", "info")
            return int(info["commit_index"]) >= int(info["applied_index"])

        wait_for(caught_up, timeout=10, message="the restarted leader to re-commit its log")
