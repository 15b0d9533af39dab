"""Warren's own logs and its task logs' rotation, with real processes (ADR 62, issue #16).

One rig for the module: a manager started with `--log-format json` and a worker started with
`warren worker start --log-format json --log-max-size 256K --log-max-files 3` (exec runtime).
Their whole output must parse as JSON lines (checked with jq), carry the node id, component and
task fields, and `--log-level warning` must hide info lines. A task that writes fast keeps its
log files bounded while `service logs --tail 5` still returns its newest lines. The processes
name themselves in /proc/<pid>/cmdline.

Every process started here is stopped by PID (task processes by process group)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.chatty import CHATTY, check_rotation
from tests.fixtures.exec_cluster import remove_exec_leftovers
from tests.fixtures.ports import free_port
from tests.integration.harness import Manager
from tests.integration.test_agent_exec import WORKER_ID, Processes, issue_worker
from tests.waiting import wait_for
from warren import pki, tls

pytestmark = pytest.mark.integration

MAX_SIZE = 256 * 1024
MAX_FILES = 3


@dataclass
class Daemon:
    """A `warren` foreground command, its output in one file."""

    log_path: Path
    process: subprocess.Popen[bytes]

    def lines(self) -> list[str]:
        return [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start(manager: Manager, log_path: Path, *argv: str) -> Daemon:
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(
        [sys.executable, "-m", "warren.cli.main", *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=manager.env(),
        cwd=log_path.parent,
    )
    return Daemon(log_path, process)


@dataclass
class Rig:
    root: Path
    manager: Manager
    worker: Daemon
    procs: Processes

    @property
    def logs(self) -> Path:
        return self.root / "worker" / "logs"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("daemonlogs")
    (root / "manager").mkdir()
    manager = Manager(root / "manager", start_args=["--heartbeat-period", "1s", "--log-format", "json"])
    procs = Processes(f"warren-daemonlogs-{time.time_ns()}")
    worker = None
    try:
        manager.start()
        issue_worker(manager, root / "worker")
        worker = _start(
            manager,
            root / "worker.log",
            *("worker", "start", "--data-dir", str(root / "worker"), "--log-format", "json"),
            *("--log-max-size", "256K", "--log-max-files", str(MAX_FILES)),
        )
        wait_for(
            lambda: WORKER_ID in manager.cli("node", "ls").stdout and "ready" in manager.cli("node", "ls").stdout,
            timeout=30,
            message="the worker to be ready",
        )
        yield Rig(root, manager, worker, procs)
    finally:
        if worker is not None:
            worker.stop()
        manager.stop()
        procs.kill_all()
        remove_exec_leftovers(root / "worker")
        print("---- manager log ----\n" + manager.log()[-4000:])
        print("---- worker log ----\n" + (worker.log_path.read_text()[-6000:] if worker else ""))


def _create(rig: Rig, name: str, *command: str) -> None:
    result = rig.manager.cli(
        "service", "create", name, "--image", "exec", "--constraint", "node.role==worker", "--detach",
        "--", *command, rig.procs.marker.decode(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def _task_ids(rig: Rig, service: str) -> list[str]:
    out = rig.manager.cli("service", "ps", service, "--format", "json")
    if out.returncode != 0:
        return []
    return [t["id"] for t in json.loads(out.stdout)]


def _jq_parses(path: Path) -> subprocess.CompletedProcess[str]:
    with open(path) as lines:
        return subprocess.run(["jq", "-c", "."], stdin=lines, capture_output=True, text=True, timeout=30)


def test_the_manager_and_worker_log_json_lines_with_context(rig: Rig) -> None:
    _create(rig, "ok", "sh", "-c", "echo started; sleep 600")
    _create(rig, "bad", "sh", "-c", "exit 3")
    # The worker logs each task's end, with the task's fields bound by its controller.
    wait_for(
        lambda: any(r.get("service") == "bad" and "code 3" in str(r.get("message")) for r in rig.worker.records()),
        timeout=30,
        message="the failed task logged by the worker",
    )
    for path in (rig.root / "manager" / "manager.log", rig.worker.log_path):
        parsed = _jq_parses(path)
        assert parsed.returncode == 0, f"{path.name}: jq: {parsed.stderr}"
        assert len(parsed.stdout.splitlines()) == len(path.read_text().strip().splitlines())
    manager_records = [json.loads(line) for line in rig.manager.log().splitlines() if line.strip()]
    manager_id = rig.manager.node_id
    assert all(r["time"].endswith("Z") and r["level"] and "component" in r for r in manager_records)
    assert any(r.get("node") == manager_id and r["component"] == "manager.raft" for r in manager_records)
    assert any("term" in r and "leader" in r["message"] for r in manager_records), "the Raft term on its line"
    assert any(r["logger"] == "warren.console" and "serving the API" in r["message"] for r in manager_records)
    worker_records = rig.worker.records()
    bad_task = next(r for r in worker_records if r.get("service") == "bad" and "code 3" in r["message"])
    assert bad_task["node"] == WORKER_ID and bad_task["component"] == "agent.controller"
    assert bad_task["task"] in _task_ids(rig, "bad")
    assert any(r.get("node") == WORKER_ID and "session" in r and r["level"] == "info" for r in worker_records)
    for name in ("ok", "bad"):
        assert rig.manager.cli("service", "rm", name).returncode == 0


def test_log_level_warning_hides_info_lines(rig: Rig) -> None:
    """A second worker at --log-level warning: its first manager is dead (a warning), then it
    connects (an info line, hidden)."""
    data = rig.root / "quiet"
    ca = rig.manager.authority()
    cert, key = ca.issue_keypair("quietworker", pki.ROLE_WORKER)
    tls.save_credentials(data / "certs", ca.cert_pem, cert, key)
    dead = f"127.0.0.1:{free_port()}"
    (data / "node.json").write_text(json.dumps({"node_id": "quietworker", "managers": [dead, rig.manager.addr]}))
    quiet = _start(
        rig.manager,
        rig.root / "quiet.log",
        *("worker", "start", "--data-dir", str(data), "--runtime", "exec", "--wireguard", "off"),
        *("--log-format", "json", "--log-level", "warning"),
    )
    try:
        wait_for(lambda: "quietworker" in rig.manager.cli("node", "ls").stdout, timeout=30, message="the node")
        wait_for(lambda: any(dead in r["message"] for r in quiet.records()), timeout=30, message="a warning")
        levels = {r["level"] for r in quiet.records()}
        assert levels <= {"warning", "error", "critical"}, levels
        assert any(r["level"] == "info" for r in rig.worker.records())  # the other worker, at info
    finally:
        quiet.stop()
        rig.manager.cli("node", "rm", "--force", "quietworker")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode()


def test_processes_name_themselves(rig: Rig) -> None:
    assert rig.manager.process is not None
    manager_pid, worker_pid = rig.manager.process.pid, rig.worker.process.pid
    wanted = f"warren: manager {rig.manager.node_id} (leader)"
    wait_for(lambda: _cmdline(manager_pid) == wanted, timeout=10, message=wanted)
    wait_for(lambda: _cmdline(worker_pid) == f"warren: agent {WORKER_ID}", timeout=10, message="the agent's title")


def test_a_chatty_task_log_is_rotated_and_stays_bounded(rig: Rig) -> None:
    _create(rig, "chatty", "sh", "-c", CHATTY)
    task_id = check_rotation(rig.manager, rig.logs, "chatty", MAX_SIZE, MAX_FILES)
    assert rig.manager.cli("service", "rm", "chatty").returncode == 0
    wait_for(lambda: not any(p.name.startswith(task_id) for p in rig.logs.iterdir()), timeout=30, message="copies gone")
