"""Disaster recovery with real processes (issue #16, ADR 56): three managers and an exec-runtime
worker; back up, destroy every manager, restore; and lose two managers for good, then
`--force-new-cluster` on the third. The worker's task processes must run throughout (same PIDs),
and the worker must come back to the recovered manager. Processes are killed by PID or by the
process groups of the task processes this test marked."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.exec_cluster import remove_exec_leftovers
from tests.fixtures.tmpfs import unmount_task_files
from tests.integration.harness import Manager, all_raft_connected, join_managers
from tests.integration.test_agent_exec import WORKER_ID, Agent, Processes, issue_worker
from tests.waiting import holds, wait_for
from warren.cli.errors import Exit

pytestmark = pytest.mark.integration

SECRET_VALUE = "s3cr3t-" + uuid.uuid4().hex[:8]


class Rig:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "m1").mkdir()
        (root / "agent").mkdir()
        self.managers = [Manager(root / "m1", start_args=["--heartbeat-period", "1s"])]
        self.agent = Agent(root / "agent", self.managers[0])
        self.procs = Processes(f"warren-dr-{uuid.uuid4().hex}")

    def start(self) -> None:
        first = self.managers[0]
        first.start()
        join_managers(first, ["m2", "m3"], into=self.managers)
        wait_for(lambda: all_raft_connected(self.managers), timeout=20, message="every manager connected")
        issue_worker(first, self.agent.data_dir)
        self.agent.start()
        wait_for(lambda: _worker_ready(first), message="the worker to register")
        secret_file = self.root / "secret.txt"
        secret_file.write_text(SECRET_VALUE)
        assert first.cli("secret", "create", "db", str(secret_file)).returncode == 0
        created = first.cli(
            "service",
            "create",
            "web",
            "--image",
            "exec",
            "--constraint",
            "node.role==worker",
            "--secret",
            "db",
            "--detach",
            "--",
            "sh",
            "-c",
            "cat /run/secrets/db; echo; sleep 1000; exit 0",
            self.procs.marker.decode(),
        )
        assert created.returncode == 0, created.stderr
        wait_for(lambda: len(self.procs.pids()) == 1, timeout=30, message="the task process")

    def stop(self) -> None:
        self.agent.kill()
        for manager in self.managers:
            manager.stop()
        self.procs.kill_all()
        remove_exec_leftovers(self.agent.data_dir)
        unmount_task_files(self.agent.data_dir)  # the tasks' tmpfs mounts the killed agent left
        for manager in self.managers:
            print(f"---- {manager.root.name} log ----\n" + manager.log()[-5000:])
        print("---- agent log ----\n" + self.agent.log()[-8000:])


def _worker_ready(manager: Manager) -> bool:
    result = manager.cli("--manager", manager.addr, "node", "ls", "--format", "json", timeout=20)
    if result.returncode != 0:
        return False
    return any(n["id"] == WORKER_ID and n["status"] == "ready" for n in json.loads(result.stdout))


def _worker_start(agent: Agent, manager: Manager, *flags: str) -> subprocess.Popen[bytes]:
    """The agent resumed as an operator does: `warren worker start` on its data directory."""
    with open(agent.root / "agent.log", "ab") as log:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "warren.cli.main", "worker", "start", "--data-dir", str(agent.data_dir)),
                *("--runtime", "exec", "--wireguard", "off", *flags),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=manager.env(),
            cwd=agent.root,
        )


def _running(manager: Manager) -> list[dict]:
    result = manager.cli("--manager", manager.addr, "service", "ps", "web", "--format", "json", timeout=20)
    if result.returncode != 0:
        return []
    return [t for t in json.loads(result.stdout) if t["state"] == "running"]


def _secret_in_logs(agent: Agent, task_ids: set[str]) -> bool:
    logs = [agent.data_dir / "logs" / f"{task_id}.log" for task_id in task_ids]
    return bool(logs) and all(p.exists() and SECRET_VALUE in p.read_text() for p in logs)


def _recovered(manager: Manager, rig: Rig, pids: set[int]) -> None:
    """The recovered single manager leads, holds the state, takes writes, and the worker is back
    with its task process untouched; a new task there gets the secret (the manager opens it)."""

    def leads() -> bool:  # alone, it elects itself after one election timeout (ADR 52: 1-1.5 s)
        info = manager.cli_json("--manager", manager.addr, "cluster", "info")
        return isinstance(info, dict) and info["raft_state"] == "leader"

    wait_for(leads, timeout=20, message="the recovered manager leading")
    services = manager.cli_json("--manager", manager.addr, "service", "ls")
    assert isinstance(services, list) and [s["spec"]["name"] for s in services] == ["web"]
    assert [s["name"] for s in manager.cli_json("--manager", manager.addr, "secret", "ls")] == ["db"]  # type: ignore[union-attr]
    nodes = manager.cli_json("--manager", manager.addr, "node", "ls")
    assert isinstance(nodes, list)
    assert sorted(n["role"] for n in nodes) == ["manager", "worker"]
    wait_for(lambda: _worker_ready(manager), timeout=30, message="the worker to reconnect")
    assert rig.procs.pids() == pids, "the task process kept running"
    before = {t["id"] for t in _running(manager)}
    scaled = manager.cli("--manager", manager.addr, "service", "scale", "web=2", "--detach")
    assert scaled.returncode == 0, scaled.stderr
    wait_for(lambda: len(_running(manager)) == 2, timeout=30, message="a second task after the recovery")
    new = {t["id"] for t in _running(manager)} - before
    wait_for(lambda: _secret_in_logs(rig.agent, new), message="the new task to read the secret")
    assert pids <= rig.procs.pids(), "the first task process still runs"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    try:
        rig.start()
        yield rig
    finally:
        rig.stop()


def test_backup_destroy_every_manager_restore(rig: Rig, tmp_path: Path) -> None:
    m1, m2, _ = rig.managers
    wait_for(lambda: _secret_in_logs(rig.agent, {t["id"] for t in _running(m1)}), message="the task's secret")
    pids = rig.procs.pids()
    # The backup carries the heartbeat period: the worker then has three of them (15 s) to come
    # back to the restored manager before its node is marked down, however slow this machine.
    assert m1.cli("cluster", "update", "--heartbeat-period", "5s").returncode == 0
    target = tmp_path / "cluster.backup"
    taken = m1.cli("--manager", m2.addr, "cluster", "backup", str(target))  # from a follower
    assert taken.returncode == 0, taken.stderr
    assert "Raft index" in taken.stdout and target.stat().st_mode & 0o777 == 0o600

    # A real backup, corrupted or cut short, is refused before anything is written.
    blob = target.read_bytes()
    for name, damaged, reason in (
        ("corrupted", blob[:-100] + bytes([blob[-100] ^ 0xFF]) + blob[-99:], "corrupted (checksum mismatch)"),
        ("truncated", blob[: len(blob) - 100], "truncated"),
    ):
        (tmp_path / name).write_bytes(damaged)
        refused = m1.cli("cluster", "restore", str(tmp_path / name), "--data-dir", str(tmp_path / f"{name}-dir"))
        assert refused.returncode == Exit.USAGE and reason in refused.stderr, refused.stderr
        assert not (tmp_path / f"{name}-dir").exists()

    for manager in rig.managers:
        manager.kill()
    (tmp_path / "restored").mkdir()
    # On new addresses, which the worker does not know: restarted with `worker start
    # --manager-addr`, it dials the restored manager and adopts its task (ADR 56). (A manager
    # back on a known address, as in the --force-new-cluster test, needs no worker restart.)
    restored = Manager(
        tmp_path / "restored",
        command=["cluster", "restore", str(target)],
        schedule_on_manager=False,
    )
    rig.managers.append(restored)
    # The worker is re-pointed as the manager starts: a node away longer than the heartbeat
    # timeout is marked down and its task started again elsewhere, as any node's would be.
    rig.agent.kill()
    restored.start(wait=False)
    rig.agent.process = _worker_start(rig.agent, restored, "--manager-addr", restored.addr)
    wait_for(restored._serving, timeout=30, message="the restored manager to serve")
    assert "restored from Raft index" in restored.log()
    _recovered(restored, rig, pids)
    node_file = json.loads((rig.agent.data_dir / "node.json").read_text())
    assert node_file["managers"][0] == restored.addr, "the new address is remembered"

    # A restored cluster takes new managers.
    join_managers(restored, ["j2"], into=rig.managers)
    wait_for(lambda: all_raft_connected([restored, rig.managers[-1]]), timeout=20, message="the new manager")


def test_force_new_cluster_after_losing_two_managers(rig: Rig) -> None:
    m1, m2, m3 = rig.managers
    pids = rig.procs.pids()
    m2.kill()
    m3.kill()
    m1.stop()
    holds(lambda: rig.procs.pids() == pids, 1.0, interval=0.2, message="the task process without managers")
    m1.start_args.append("--force-new-cluster")
    m1.start(timeout=30)
    assert "is now the only manager" in m1.log()
    _recovered(m1, rig, pids)
