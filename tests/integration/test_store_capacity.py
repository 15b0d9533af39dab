"""A manager whose state store's map, or whose disk, is nearly full refuses writes with a reason,
keeps serving reads, and writes again once there is room (ADR 22). Real manager processes."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.fixtures.tmpfs import fill, tmpfs
from tests.integration.harness import Manager
from tests.waiting import wait_for
from warren.api.v1 import control_pb2 as pb
from warren.api.v1 import types_pb2 as tpb

pytestmark = pytest.mark.integration

MAP_ARGS = ["--state-map-size", "32M"]
FAT_KIB = 240


def _spec(name: str, fat: bool = False, env_kib: int = 0) -> tpb.ServiceSpec:
    """A service with no replicas; a fat one carries about 240 KiB of environment (just under the
    256 KiB a spec may hold, ADR 21), so that a few dozen of them fill a small map."""
    env_kib = FAT_KIB if fat else env_kib
    env = {f"V{k}": f"{name}-{k}-".ljust(4000, "x") for k in range(env_kib * 1024 // 4000)}
    return tpb.ServiceSpec(name=name, image="busybox", replicas=0, env=env)


def _raft_state(manager: Manager) -> str:
    info = manager.cli("cluster", "info", "--format", "json")
    return json.loads(info.stdout).get("raft_state", "") if info.returncode == 0 else ""


def _fill_until_refused(manager: Manager, env_kib: int, acknowledged: set[str], limit: int) -> grpc.RpcError:
    """Create services with `env_kib` KiB of environment until one is refused; the refusal."""
    for i in range(limit):
        name = f"fill{env_kib}k-{i}"
        refused = _create(manager, _spec(name, env_kib=env_kib))
        if refused is not None:
            return refused
        acknowledged.add(name)
    raise AssertionError(f"{limit} services with {env_kib} KiB each were all accepted")


def _control(manager: Manager) -> Any:
    """A Control stub to `manager` with the cluster's admin credentials (the founder's)."""
    return manager.control((manager.founder or manager).data_dir / "admin")


def _create(manager: Manager, spec: tpb.ServiceSpec) -> grpc.RpcError | None:
    """None if the service was created (acknowledged), else the error."""
    try:
        _control(manager).CreateService(pb.CreateServiceRequest(spec=spec), timeout=15)
    except grpc.RpcError as exc:
        return exc
    return None


def _service_names(manager: Manager, expected: set[str]) -> set[str]:
    """The services there are, read one by one (fat ones would not fit in one list response),
    checked to be all of them by the cluster's count."""
    control = _control(manager)
    found = set()
    for name in expected:
        try:
            found.add(control.GetService(pb.GetServiceRequest(service=name), timeout=15).spec.name)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
    count = control.GetClusterInfo(pb.GetClusterInfoRequest(), timeout=15).services
    assert count == len(found), f"{count} services, of which {sorted(found)} were expected"
    return found


def _metrics(manager: Manager) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{manager.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^(warren_state_store_\w+) (\S+)$", text, flags=re.MULTILINE)
    }


@pytest.fixture
def small_map(tmp_path: Path) -> Iterator[Manager]:
    m = Manager(tmp_path, start_args=MAP_ARGS)
    try:
        m.start()
        yield m
    finally:
        m.stop()


def test_a_full_map_refuses_writes_keeps_reads_and_a_restart_with_a_larger_map_writes_again(
    small_map: Manager,
) -> None:
    m = small_map
    acknowledged: set[str] = set()
    refused = _fill_until_refused(m, FAT_KIB, acknowledged, 240)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
    assert "state store is" in refused.details() and "larger --state-map-size" in refused.details()
    assert len(acknowledged) >= 20  # the reserve is a quarter of this map: most of it was usable
    # The refusal depends on the entry's size: smaller ones fit until they do not either.
    for env_kib in (64, 4, 0):
        refused = _fill_until_refused(m, env_kib, acknowledged, 400)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused

    # Reads keep working, through the CLI too, and a small write is refused the same way.
    assert _service_names(m, acknowledged) == acknowledged
    info = m.cli("cluster", "info")
    assert info.returncode == 0, info.stderr
    small = m.cli("service", "create", "--replicas", "0", "--image", "busybox", "small")
    assert small.returncode == 1 and "larger --state-map-size" in small.stderr, small
    assert "Traceback" not in small.stderr
    gauges = _metrics(m)
    assert gauges["warren_state_store_map_size_bytes"] == 32 << 20
    assert 24 << 20 > gauges["warren_state_store_used_bytes"] > 16 << 20
    assert gauges["warren_state_store_writes_refused"] == 1
    assert gauges["warren_state_store_apply_waiting"] == 0

    # The map size was saved: a restart without the flag keeps it, and still refuses.
    m.stop()
    m.start_args = []
    m.start()
    wait_for(lambda: _raft_state(m) == "leader", message="the restarted manager to lead again")
    assert _create(m, _spec("after-restart")).code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # A restart with a larger map writes again, and nothing acknowledged was lost.
    m.stop()
    m.start_args = ["--state-map-size", "64M"]
    m.start()
    assert json.loads((m.data_dir / "manager-settings.json").read_text()) == {"state_map_size": 64 << 20}
    wait_for(lambda: _raft_state(m) == "leader", message="the restarted manager to lead again")
    assert _create(m, _spec("after-growth", fat=True)) is None
    assert _service_names(m, acknowledged | {"after-growth"}) == acknowledged | {"after-growth"}
    assert _metrics(m)["warren_state_store_writes_refused"] == 0


def test_a_map_smaller_than_the_store_or_the_minimum_is_refused_at_start(tmp_path: Path) -> None:
    m = Manager(tmp_path, start_args=["--state-map-size", "64M"])
    try:
        m.start()
        names = {f"fat{i}" for i in range(72)}
        for name in sorted(names):
            assert _create(m, _spec(name, fat=True)) is None
        m.stop()
        held = (m.data_dir / "db" / "data.mdb").stat().st_size
        assert held > 32 << 20

        bad = m.cli("cluster", "init", "--data-dir", str(m.data_dir), "--state-map-size", "1M")
        assert bad.returncode == 2 and "between 32MiB" in bad.stderr, bad
        m.start_args = ["--state-map-size", "32M"]  # valid, but LMDB cannot map less than its file
        with pytest.raises(RuntimeError, match="exited with 1"):
            m.start(timeout=20)
        assert "--state-map-size must be at least" in m.log()
        assert "Traceback" not in m.log()
        m.start_args = []
        m.start()  # with the saved 64M: the refused start saved nothing
        assert _service_names(m, names) == names
        assert _metrics(m)["warren_state_store_map_size_bytes"] == 64 << 20
    finally:
        m.stop()


def test_a_full_disk_refuses_writes_keeps_reads_and_writes_resume_when_space_returns(tmp_path: Path) -> None:
    m = Manager(tmp_path, start_args=MAP_ARGS)
    with tmpfs(m.data_dir, 48 << 20):
        try:
            m.start()
            for i in range(3):
                assert _create(m, _spec(f"s{i}")) is None
            fill(m.data_dir / "filler")  # until ENOSPC

            refused = _create(m, _spec("on-a-full-disk"))
            assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
            assert "disk" in refused.details() and "free space" in refused.details()
            assert _service_names(m, {"s0", "s1", "s2"}) == {"s0", "s1", "s2"}
            info = m.cli("cluster", "info")
            assert info.returncode == 0, info.stderr
            assert _metrics(m)["warren_state_store_writes_refused"] == 1

            (m.data_dir / "filler").unlink()
            wait_for(lambda: _create(m, _spec("space-is-back")) is None, timeout=20, message="writes to resume")
            assert m.process is not None and m.process.poll() is None  # it never stopped
            assert _service_names(m, {"s0", "s1", "s2", "space-is-back"}) == {"s0", "s1", "s2", "space-is-back"}
        finally:
            m.stop()


def _services_on(manager: Manager) -> int:
    return _control(manager).GetClusterInfo(pb.GetClusterInfoRequest(), timeout=15).services


def test_a_follower_whose_smaller_map_fills_stays_up_and_catches_up_after_a_restart_with_a_larger_one(
    tmp_path: Path,
) -> None:
    """A follower with a smaller map than the others (as an old version's full store would be)
    cannot apply what the majority commits. It must neither stop nor skip entries: it serves
    reads, refuses writes, and a restart with a larger map replays what it missed."""
    for name in ("m1", "m2", "m3"):
        (tmp_path / name).mkdir()
    first = Manager(tmp_path / "m1", start_args=["--state-map-size", "64M"])
    managers = [first]
    try:
        first.start()
        token = first.join_token("manager")
        second = Manager(tmp_path / "m2", founder=first, token=token, start_args=["--state-map-size", "64M"])
        small = Manager(tmp_path / "m3", founder=first, token=token, start_args=["--state-map-size", "32M"])
        for manager in (second, small):
            managers.append(manager)
            manager.start(timeout=40)

        acknowledged: set[str] = set()
        for i in range(80):  # about 40 MiB in each store: more than the small map holds
            assert _create(first, _spec(f"fat{i}", fat=True)) is None
            acknowledged.add(f"fat{i}")

        assert small.process is not None and small.process.poll() is None, small.log()
        wait_for(lambda: _metrics(small)["warren_state_store_writes_refused"] == 1, message="the small map to refuse")
        refused = _create(small, _spec("through-the-small-one"))
        assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
        assert _services_on(small) < len(acknowledged)  # reads are served, from what it has
        assert _create(second, _spec("through-another")) is None  # the majority goes on
        acknowledged.add("through-another")

        small.stop()
        assert small.process.returncode == 0, small.log()  # it stopped when asked, not before
        small.start_args = ["--state-map-size", "128M"]
        small.start(timeout=40)
        wait_for(lambda: _services_on(small) == len(acknowledged), timeout=60, message="the follower to catch up")
        assert _service_names(small, acknowledged) == acknowledged
        assert _metrics(small)["warren_state_store_writes_refused"] == 0
        assert _create(small, _spec("after-growth")) is None
    finally:
        for manager in managers:
            manager.stop()
