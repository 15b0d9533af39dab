"""A real manager process and a real agent process with the exec runtime: run, scale, kill,
kill -9 the agent, stop the manager, and remove — counting the task processes on the host by a
unique marker in their arguments. Every process is killed by PID (or process group) at the end,
even when the test fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Manager, free_port
from tests.waiting import holds, wait_for
from warren import pki, tls
from warren.agent import settings as agent_settings
from warren.agent.daemon import serve
from warren.agent.options import AgentOptions

pytestmark = pytest.mark.integration

WORKER_ID = "execworker1"


class Agent:
    """`python -m warren.agent.daemon` with the exec runtime, as `warren worker start` will run it."""

    def __init__(self, root: Path, manager: Manager) -> None:
        self.root = root
        self.manager = manager
        self.data_dir = root / "data"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.root / "agent.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "warren.agent.daemon",
                "--data-dir",
                str(self.data_dir),
                "--manager",
                self.manager.addr,
                "--runtime",
                "exec",
                "--hostname",
                "exec-worker",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.manager.env(),
            cwd=self.root,
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=20)

    def log(self) -> str:
        path = self.root / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""


def issue_worker(manager: Manager, data_dir: Path) -> None:
    """Worker credentials signed by the cluster CA, and node.json, as the join flow writes them."""
    ca = manager.authority()
    cert, key = ca.issue_keypair(WORKER_ID, pki.ROLE_WORKER)
    tls.save_credentials(data_dir / "certs", ca.cert_pem, cert, key)
    (data_dir / "node.json").write_text(json.dumps({"node_id": WORKER_ID, "managers": [manager.addr]}))
    # Off the overlay (on by default): this agent runs in the test machine's own namespace.
    agent_settings.save(data_dir, agent_settings.AgentSettings(runtime="exec", wireguard="off"))


class Processes:
    """Task processes found by marker; remembers every process group it saw, for cleanup."""

    def __init__(self, marker: str) -> None:
        self.marker = marker.encode()
        self.groups: set[int] = set()

    def pids(self) -> set[int]:
        """The task processes: those carrying the marker whose parent does not. A task's shell
        forks before each command it runs, and the child carries the shell's argv, marker
        included, until it execs: counted, it would be a third task for a moment."""
        found: dict[int, int] = {}  # pid -> parent pid
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parent = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if self.marker in argv:  # the exact argument: not the CLI call that passed it along
                pid = int(entry)
                found[pid] = parent
                with contextlib.suppress(OSError):
                    self.groups.add(os.getpgid(pid))
        return {pid for pid, parent in found.items() if parent not in found}

    def group_members(self) -> dict[int, str]:
        """pid -> command of every live process in a group we saw (zombies excluded)."""
        members = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) in self.groups:
                members[int(entry)] = command
        return members

    def kill_all(self) -> None:
        self.pids()
        for group in self.groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Manager, Agent, Processes]]:
    from tests.fixtures.exec_cluster import exec_cluster

    with exec_cluster(tmp_path, "test") as started:
        yield started


def _replaced(pids: set[int], victim: int, n: int) -> bool:
    return victim not in pids and len(pids) == n


def tasks(manager: Manager) -> list[dict]:
    result = manager.cli("service", "ps", "web", "--format", "json")
    if result.returncode != 0:
        print(f"service ps failed ({result.returncode}): {result.stderr.strip()}")
        return []
    return json.loads(result.stdout)


def running(manager: Manager) -> list[dict]:
    return [t for t in tasks(manager) if t["state"] == "running" and t["desired_state"] == "running"]


def converged(manager: Manager, procs: Processes, n: int) -> bool:
    """n tasks running according to the manager, and n processes on the host."""
    return len(running(manager)) == n and len(procs.pids()) == n


def stable(manager: Manager, procs: Processes, n: int, seconds: float = 3.0) -> None:
    """Converged, and it stays so: no duplicate appears and nothing is replaced."""
    wait_for(lambda: converged(manager, procs, n), timeout=30, message=f"{n} running tasks and processes")
    pids = procs.pids()
    holds(lambda: procs.pids() == pids, seconds, interval=0.2, message="the task processes unchanged")
    assert len(running(manager)) == n


@pytest.mark.serial  # an agent restart must beat 3 heartbeats of 1 s: alone, after the workers (ADR 41)
def test_exec_agent_runs_scales_survives_restarts_and_outages(cluster: tuple[Manager, Agent, Processes]) -> None:
    manager, agent, procs = cluster
    wait_for(
        lambda: any(n["hostname"] == "exec-worker" and n["status"] == "ready" for n in manager.cli_json("node", "ls")),
        message="the worker to register",
    )
    # $0 carries the marker; the trailing `exit` keeps sh from exec-ing sleep (which would lose it).
    created = manager.cli(
        "service",
        "create",
        "web",
        "--image",
        "exec",
        "--replicas",
        "2",
        "--constraint",
        "node.role==worker",
        "--restart-delay",
        "1s",
        "--detach",
        "--",
        "sh",
        "-c",
        "echo hi; sleep 1000; exit 0",
        procs.marker.decode(),
    )
    assert created.returncode == 0, created.stderr

    # Both replicas run on the worker, and their output lands in the task logs.
    stable(manager, procs, 2, seconds=1.0)
    assert {t["node_id"] for t in tasks(manager)} == {WORKER_ID}
    for t in running(manager):
        log_file = agent.data_dir / "logs" / f"{t['id']}.log"
        wait_for(lambda f=log_file: f.exists() and "hi" in f.read_text(), message="task output in its log")

    # Scale up and down.
    assert manager.cli("service", "scale", "web=3", "--detach").returncode == 0
    stable(manager, procs, 3, seconds=1.0)
    assert manager.cli("service", "scale", "web=1", "--detach").returncode == 0
    stable(manager, procs, 1, seconds=1.0)
    assert manager.cli("service", "scale", "web=2", "--detach").returncode == 0
    stable(manager, procs, 2, seconds=1.0)

    # A killed task process is noticed, reported, and replaced by the manager.
    victim = min(procs.pids())
    before = {t["id"] for t in running(manager)}
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in procs.pids(), message="the killed process to go")
    stable(manager, procs, 2)
    after = {t["id"] for t in running(manager)}
    assert len(after - before) == 1, "exactly one task replaced"
    failed = [t for t in manager.cli_json("service", "ps", "web", "--all") if t["state"] == "failed"]
    assert failed and failed[0]["error"] == "task exited with code 137"

    # kill -9 the agent: the processes keep running; a new agent re-adopts them, no duplicates.
    pids = procs.pids()
    agent.kill(signal.SIGKILL)
    holds(lambda: procs.pids() == pids, 1.0, interval=0.2, message="the orphaned task processes running")
    agent.start()
    wait_for(lambda: "re-adopted" in agent.log(), message="the new agent to re-adopt")
    stable(manager, procs, 2)
    assert procs.pids() == pids, "re-adopted, not restarted"
    assert {t["id"] for t in running(manager)} == after

    # The manager goes away for longer than 3 heartbeat periods: tasks keep running, and one
    # that dies meanwhile is restarted locally by the agent under its restart policy.
    manager.stop()
    holds(lambda: procs.pids() == pids, 4.0, interval=0.2, message="the task processes running without a manager")
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: _replaced(procs.pids(), victim, 2), message="a local restart")
    pids = procs.pids()
    assert "restarting it locally" in agent.log()

    # The manager returns: reconciled, with exactly two replicas and no duplicate processes.
    # The agent reconnects within the node timeout, so nothing is replaced (stable for longer
    # than that timeout).
    manager.start()
    stable(manager, procs, 2, seconds=5.0)
    assert procs.pids() == pids
    assert all(t["node_id"] == WORKER_ID for t in running(manager))

    # Draining the node stops its tasks gracefully; they come back once it is active again.
    assert manager.cli("node", "update", "--availability", "drain", "exec-worker").returncode == 0
    wait_for(lambda: not procs.pids(), message="drained tasks to stop")

    def drained() -> bool:
        history = {t["id"]: t for t in manager.cli_json("service", "ps", "web", "--all")}
        return all(history[i]["state"] == "shutdown" for i in after)

    wait_for(drained, message="drained tasks reported shut down")
    assert manager.cli("node", "update", "--availability", "active", "exec-worker").returncode == 0
    stable(manager, procs, 2, seconds=1.0)

    # Removing the service leaves no process and no container behind.
    assert manager.cli("service", "rm", "web").returncode == 0
    wait_for(lambda: not procs.pids(), timeout=30, message="every task process to stop")
    exec_state = agent.data_dir / "exec"
    wait_for(lambda: not any(p.is_dir() for p in exec_state.iterdir()), message="every exec container removed")
    wait_for(lambda: not list((agent.data_dir / "logs").iterdir()), message="task logs removed with their tasks")
    # Nothing is left in any task's process group either (such as a killed shell's sleep).
    wait_for(lambda: not procs.group_members(), message=f"empty process groups (left: {procs.group_members()})")


def _http_get(port: int) -> str | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return None


def test_exec_service_answers_on_the_host(cluster: tuple[Manager, Agent, Processes], tmp_path: Path) -> None:
    manager, _, procs = cluster
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from an exec task\n")
    port = free_port()
    server = f"{shlex.quote(sys.executable)} -m http.server {port} --bind 127.0.0.1 --directory {shlex.quote(str(www))}"
    wait_for(
        lambda: any(n["hostname"] == "exec-worker" and n["status"] == "ready" for n in manager.cli_json("node", "ls")),
        message="the worker to register",
    )
    created = manager.cli(
        "service", "create", "web", "--image", "exec", "--constraint", "node.role==worker",
        "--", "sh", "-c", f"{server}; exit 0", procs.marker.decode(),
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    wait_for(lambda: _http_get(port) == "hello from an exec task\n", message="the service to answer on the host")
    assert len(running(manager)) == 1
    assert manager.cli("service", "rm", "web").returncode == 0
    wait_for(lambda: not procs.pids() and not procs.group_members(), message="the server to stop")
    assert _http_get(port) is None


def test_stop_signal_reaches_the_task(cluster: tuple[Manager, Agent, Processes], tmp_path: Path) -> None:
    """--stop-signal SIGQUIT travels CLI -> manager -> agent -> exec runtime: the task's trap sees
    QUIT (and ignores TERM), and exits in well under its 20 s grace period."""
    manager, _, procs = cluster
    seen = tmp_path / "signals"
    wait_for(
        lambda: any(n["hostname"] == "exec-worker" and n["status"] == "ready" for n in manager.cli_json("node", "ls")),
        message="the worker to register",
    )
    script = (
        f"trap 'echo TERM >> {seen}' TERM; trap 'echo QUIT >> {seen}; exit 3' QUIT; "
        "echo ready; while :; do sleep 0.1; done"
    )
    bad = manager.cli("service", "create", "web", "--image", "exec", "--stop-signal", "SIGNOPE", "--", "true")
    assert bad.returncode != 0 and "invalid stop signal 'SIGNOPE'" in bad.stderr
    created = manager.cli(
        "service", "create", "web", "--image", "exec", "--constraint", "node.role==worker",
        "--stop-signal", "quit", "--stop-grace-period", "20s",
        "--", "sh", "-c", script, procs.marker.decode(),
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "SIGQUIT" in manager.cli("service", "inspect", "web").stdout
    wait_for(lambda: converged(manager, procs, 1), message="the task to run")
    started = time.monotonic()
    assert manager.cli("service", "rm", "web").returncode == 0
    wait_for(lambda: not procs.pids(), timeout=15, message="the task to stop")
    assert time.monotonic() - started < 10
    assert seen.read_text() == "QUIT\n"


class InProcessAgent:
    """`serve()` on its own event loop in a thread, as the manager embeds it for its own node."""

    def __init__(self, options: AgentOptions) -> None:
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.error: BaseException | None = None

        def main() -> None:
            try:
                self.loop.run_until_complete(serve(options, self.stop))
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=main, name="agent", daemon=True)
        self.thread.start()

    def close(self, timeout: float = 10.0) -> float:
        """Set the stop event; return how long serve() took to return."""
        started = time.monotonic()
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "serve() did not return after stop"
        self.loop.close()
        return time.monotonic() - started


def test_embedded_agent_stops_promptly_and_leaves_tasks_to_the_next_one(tmp_path: Path) -> None:
    (tmp_path / "manager").mkdir()
    manager = Manager(tmp_path / "manager", start_args=["--heartbeat-period", "1s"])
    procs = Processes(f"warren-test-{uuid.uuid4().hex}")
    data_dir = tmp_path / "agent"
    options = AgentOptions(data_dir=data_dir, managers=[manager.addr], runtime="exec", hostname="embedded")
    agents: list[InProcessAgent] = []
    try:
        manager.start()
        issue_worker(manager, data_dir)
        agents.append(InProcessAgent(options))
        created = manager.cli(
            "service",
            "create",
            "web",
            "--image",
            "exec",
            "--constraint",
            "node.role==worker",
            "--detach",
            "--",
            "sh",
            "-c",
            "sleep 1000; exit 0",
            procs.marker.decode(),
        )
        assert created.returncode == 0, created.stderr
        wait_for(lambda: converged(manager, procs, 1), message="one running task")
        pids = procs.pids()
        assert agents[0].close() < 5.0
        assert agents[0].error is None
        assert procs.pids() == pids  # stopping the agent does not stop its tasks

        agents.append(InProcessAgent(options))  # the next agent re-adopts, and removes on request
        stable(manager, procs, 1, seconds=1.0)
        assert procs.pids() == pids
        assert manager.cli("service", "rm", "web").returncode == 0
        wait_for(lambda: not procs.pids(), message="the task process to stop")
    finally:
        for agent in agents:
            if agent.thread.is_alive():
                with contextlib.suppress(Exception):
                    agent.close()
        manager.stop()
        procs.kill_all()
        print("---- manager log ----\n" + manager.log()[-6000:])
