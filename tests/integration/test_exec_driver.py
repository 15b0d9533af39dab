"""The exec runtime and the health probes against real processes and real sockets.

Every process a test starts is killed by PID at teardown, even when the test fails: containers
through `ExecRuntime.remove`, and anything else through the `reaper` fixture, which checks the
process's start time first so that it never signals a reused PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fixtures.ports import free_port
from tests.waiting import async_wait_for, wait_for
from warren.agent import health
from warren.agent.runtime import TASK_LABEL, ContainerSpec, ContainerState, RuntimeFailure
from warren.model import HealthCheck, Resources
from warren.runtime.exec import ExecRuntime

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IGNORES_TERM = ("sh", "-c", 'trap "" TERM; sleep 100')


def start_ticks(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(data[data.rfind(")") + 2 :].split()[19])


def alive(pid: int) -> bool:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return data[data.rfind(")") + 2] not in "ZX"


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] not in "ZX":
                    out.append(int(entry.name))
    return out


class Reaper:
    """PIDs to SIGKILL (with their process group) at teardown, if they are still the same process."""

    def __init__(self) -> None:
        self.pids: dict[int, int | None] = {}

    def add(self, pid: int) -> int:
        self.pids[pid] = start_ticks(pid)
        return pid

    def reap(self) -> None:
        for pid, ticks in self.pids.items():
            if ticks is not None and start_ticks(pid) == ticks:
                for kill in (os.killpg, os.kill):
                    with contextlib.suppress(OSError):
                        kill(pid, signal.SIGKILL)


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    r = Reaper()
    try:
        yield r
    finally:
        r.reap()


@pytest.fixture
def runtime(tmp_path: Path, reaper: Reaper) -> Iterator[ExecRuntime]:
    rt = ExecRuntime(tmp_path / "state")
    try:
        yield rt
    finally:
        for st in rt.list():
            if st.pid:
                reaper.add(st.pid)
            with contextlib.suppress(Exception):
                rt.remove(st.runtime_id)


def run(rt: ExecRuntime, reaper: Reaper, task_id: str, *command: str, **kw: object) -> str:
    """Prepare and start a container; its PID is registered for cleanup."""
    rid = rt.prepare(ContainerSpec(task_id=task_id, image="exec", command=command, **kw))  # type: ignore[arg-type]
    rt.start(rid)
    reaper.add(rt.status(rid).pid)
    return rid


# -- lifecycle ---------------------------------------------------------------------------------
def test_exit_code_and_interleaved_log(runtime: ExecRuntime, reaper: Reaper, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "t1.log"
    script = "echo out; echo err >&2; echo more; exit 3"
    rid = run(runtime, reaper, "t1", "sh", "-c", script, log_path=str(log), labels={"warren.service.name": "web"})
    st = runtime.wait(rid, timeout=10)
    assert st is not None and st.state is ContainerState.EXITED and st.exit_code == 3
    assert st.labels == {TASK_LABEL: "t1", "warren.service.name": "web"}
    assert st.finished_at >= st.started_at > 0
    assert log.read_text() == "out\nerr\nmore\n"


def test_killed_by_a_signal_reports_128_plus_n(runtime: ExecRuntime, reaper: Reaper) -> None:
    rid = run(runtime, reaper, "t1", "sleep", "100")
    assert runtime.wait(rid, timeout=0.2) is None  # still running: the timeout passes
    os.kill(runtime.status(rid).pid, signal.SIGKILL)
    st = runtime.wait(rid, timeout=10)
    assert st is not None and st.exit_code == 137


def test_env_path_and_cwd(runtime: ExecRuntime, reaper: Reaper, tmp_path: Path) -> None:
    rid = run(runtime, reaper, "t1", "sh", "-c", 'echo "$FOO|$PATH|$(pwd)|${HOME:-nohome}"', env={"FOO": "bar"})
    assert runtime.wait(rid, timeout=10).exit_code == 0  # type: ignore[union-attr]
    log = tmp_path / "state" / "t1" / "container.log"  # the default log and cwd live in state_dir
    foo, path, cwd, home = log.read_text().strip().split("|")
    assert (foo, home) == ("bar", "nohome")  # exactly the given env: nothing leaks from the agent
    assert "/usr/bin" in path.split(":")
    assert cwd == str(tmp_path / "state" / "t1" / "work")

    work = tmp_path / "elsewhere"
    work.mkdir()
    rid = run(runtime, reaper, "t2", "pwd", cwd=str(work), log_path=str(tmp_path / "t2.log"))
    runtime.wait(rid, timeout=10)
    assert (tmp_path / "t2.log").read_text() == f"{work}\n"


def test_bad_specs_fail_permanently(runtime: ExecRuntime, tmp_path: Path) -> None:
    plain = tmp_path / "plain-file"
    plain.write_text("echo\n")

    def spec(*command: str, **kw: str) -> ContainerSpec:
        return ContainerSpec(task_id="t1", image="busybox", command=command, **kw)  # type: ignore[arg-type]

    cases = [
        (spec(), "the exec runtime needs a command"),
        (spec("nosuch-binary-xyz"), "executable file not found: nosuch-binary-xyz"),
        (spec("/nonexistent/x"), "executable file not found: /nonexistent/x"),
        (spec(str(plain)), f"permission denied: {plain} is not executable"),
        (spec("true", cwd="/nonexistent"), "working directory not found: /nonexistent"),
        (spec("true", user="nosuchuser"), "unable to find user nosuchuser"),
        (spec("true", stop_signal="SIGNOPE"), "invalid stop signal"),
        (ContainerSpec(task_id="../x", image="exec", command=("true",)), "invalid task id"),
    ]
    for bad, message in cases:
        with pytest.raises(RuntimeFailure) as err:
            runtime.prepare(bad)
        assert err.value.permanent and err.value.message.startswith(message), err.value.message
    assert runtime.list() == []


def test_prepare_is_idempotent_and_start_once(runtime: ExecRuntime, reaper: Reaper) -> None:
    spec = ContainerSpec(task_id="t1", image="exec", args=("true",))
    assert runtime.prepare(spec) == runtime.prepare(spec) == "t1"
    assert [s.state for s in runtime.list()] == [ContainerState.CREATED]
    runtime.start("t1")
    reaper.add(runtime.status("t1").pid)
    assert runtime.wait("t1", timeout=10).exit_code == 0  # type: ignore[union-attr]
    with pytest.raises(RuntimeFailure, match="already run"):
        runtime.start("t1")
    with pytest.raises(RuntimeFailure, match="no such container"):
        runtime.start("nope")
    assert runtime.status("nope").state is ContainerState.UNKNOWN


def test_stop_with_sigterm(runtime: ExecRuntime, reaper: Reaper) -> None:
    rid = run(runtime, reaper, "t1", "sleep", "100")
    t0 = time.monotonic()
    st = runtime.stop(rid, grace_period=10)
    assert time.monotonic() - t0 < 5
    assert st.state is ContainerState.EXITED and st.exit_code == 128 + signal.SIGTERM
    assert runtime.stop(rid, grace_period=10) == st  # stopping an exited container changes nothing


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(runtime: ExecRuntime, reaper: Reaper) -> None:
    rid = run(runtime, reaper, "t1", *IGNORES_TERM)
    pid = runtime.status(rid).pid
    # sh installs the trap, then forks sleep
    wait_for(lambda: len(group_members(pid)) == 2, timeout=10, interval=0.02, message="sh and sleep in the group")
    t0 = time.monotonic()
    st = runtime.stop(rid, grace_period=0.5)
    elapsed = time.monotonic() - t0
    assert st.exit_code == 128 + signal.SIGKILL
    assert 0.5 <= elapsed < 5
    # sleep, which inherited the ignored TERM, dies with its group: SIGKILL is sent to the group
    # when the stop returns, and a process takes a moment to die of it on a loaded machine.
    wait_for(lambda: group_members(pid) == [], timeout=5, interval=0.02, message="the group to die")


def test_stop_uses_the_given_signal_and_stops_a_created_container(runtime: ExecRuntime, reaper: Reaper) -> None:
    rid = run(runtime, reaper, "t1", "sh", "-c", 'trap "exit 42" USR1; sleep 100 & wait')
    pid = runtime.status(rid).pid
    # sh installs the trap, then forks sleep
    wait_for(lambda: len(group_members(pid)) == 2, timeout=10, interval=0.02, message="sh and sleep in the group")
    assert runtime.stop(rid, grace_period=5, signal="SIGUSR1").exit_code == 42
    rid = runtime.prepare(ContainerSpec(task_id="t2", image="exec", command=("true",)))
    st = runtime.stop(rid, grace_period=1)
    assert st.state is ContainerState.EXITED and st.exit_code is None
    assert runtime.stop("unknown", 1).state is ContainerState.UNKNOWN


def test_remove_kills_and_cleans_state(runtime: ExecRuntime, reaper: Reaper, tmp_path: Path) -> None:
    rid = run(runtime, reaper, "t1", *IGNORES_TERM)
    pid = runtime.status(rid).pid
    assert (tmp_path / "state" / "t1" / "record.json").exists()
    runtime.remove(rid)
    assert not alive(pid)
    assert not (tmp_path / "state" / "t1").exists()
    assert runtime.status(rid).state is ContainerState.UNKNOWN
    assert runtime.list() == []
    runtime.remove(rid)  # idempotent
    assert ExecRuntime(tmp_path / "state").list() == []


def test_exec_runs_in_the_container_environment(runtime: ExecRuntime, reaper: Reaper, tmp_path: Path) -> None:
    rid = run(runtime, reaper, "t1", "sleep", "100", env={"FOO": "bar"}, cwd=str(tmp_path))
    code, out = runtime.exec(rid, ["sh", "-c", 'echo "$FOO $(pwd)"; echo oops >&2; exit 5'], timeout=10)
    assert (code, out) == (5, f"bar {tmp_path}\noops\n")

    t0 = time.monotonic()
    with pytest.raises(RuntimeFailure, match=r"timed out after 0\.3s"):
        runtime.exec(rid, ["sh", "-c", "sleep 100"], timeout=0.3)
    assert time.monotonic() - t0 < 5

    with pytest.raises(RuntimeFailure, match="executable file not found: nosuchcmd") as err:
        runtime.exec(rid, ["nosuchcmd"], timeout=5)
    assert err.value.permanent
    runtime.stop(rid, 1)
    with pytest.raises(RuntimeFailure, match="not running"):
        runtime.exec(rid, ["true"], timeout=5)


# -- re-adoption after the agent dies ----------------------------------------------------------
AGENT = """
import json, sys, time
from pathlib import Path
from warren.agent.runtime import ContainerSpec
from warren.runtime.exec import ExecRuntime

rt = ExecRuntime(Path(sys.argv[1]))
pids = {}
for task_id, command in json.loads(sys.argv[2]).items():
    rid = rt.prepare(ContainerSpec(task_id=task_id, image="exec", command=tuple(command), labels={"k": task_id}))
    rt.start(rid)
    pids[task_id] = rt.status(rid).pid
print(json.dumps(pids), flush=True)
time.sleep(1000)
"""


def test_a_new_runtime_readopts_processes_of_an_agent_killed_with_sigkill(tmp_path: Path, reaper: Reaper) -> None:
    state, go = tmp_path / "state", tmp_path / "GO"
    tasks = {
        "plain": ["sleep", "100"],
        "stubborn": list(IGNORES_TERM),
        "finisher": ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done; exit 7"],
    }
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(state), json.dumps(tasks)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    reaper.add(agent.pid)
    try:
        assert agent.stdout is not None
        pids = json.loads(agent.stdout.readline())
        for pid in pids.values():
            reaper.add(pid)
    finally:
        agent.kill()  # kill -9: no chance to clean up
        agent.wait()

    rt = ExecRuntime(state)
    listed = {s.runtime_id: s for s in rt.list()}
    assert set(listed) == set(tasks)
    for task_id, st in listed.items():
        assert st.state is ContainerState.RUNNING and st.pid == pids[task_id]
        assert st.labels == {TASK_LABEL: task_id, "k": task_id}

    assert rt.exec("plain", ["echo", "hi"], timeout=10) == (0, "hi\n")
    assert rt.wait("plain", timeout=0.1) is None

    st = rt.stop("plain", grace_period=10)
    assert st.state is ContainerState.EXITED and st.exit_code is None  # not our child: code unknown
    assert not alive(pids["plain"])

    t0 = time.monotonic()
    st = rt.stop("stubborn", grace_period=0.5)
    assert st.state is ContainerState.EXITED and 0.5 <= time.monotonic() - t0 < 5
    assert group_members(pids["stubborn"]) == []

    go.touch()
    st = rt.wait("finisher", timeout=10)
    assert st is not None and st.state is ContainerState.EXITED and st.exit_code is None

    # The exit is recorded: a third incarnation agrees, and remove cleans everything.
    again = {s.runtime_id: s.state for s in ExecRuntime(state).list()}
    assert again == dict.fromkeys(tasks, ContainerState.EXITED)
    for task_id in tasks:
        rt.remove(task_id)
    assert list(state.iterdir()) == []


def test_a_reused_pid_is_not_mistaken_for_the_container(tmp_path: Path, reaper: Reaper) -> None:
    state = tmp_path / "state"
    rt = ExecRuntime(state)
    rid = run(rt, reaper, "t1", "sleep", "100")
    # Simulate PID reuse: the record now names a live process that is someone else's, started
    # later (start times count clock ticks, 10 ms apart).
    time.sleep(0.1)
    innocent = subprocess.Popen(["sleep", "100"], start_new_session=True)
    reaper.add(innocent.pid)
    try:
        record = state / "t1" / "record.json"
        data = json.loads(record.read_text())
        os.kill(data["pid"], signal.SIGKILL)
        data["pid"] = innocent.pid
        record.write_text(json.dumps(data))

        rt2 = ExecRuntime(state)
        st = rt2.status(rid)
        assert st.state is ContainerState.EXITED and st.exit_code is None
        rt2.stop(rid, grace_period=0)
        rt2.remove(rid)
        assert innocent.poll() is None  # untouched
    finally:
        innocent.kill()
        innocent.wait()
        rt.remove(rid)


def test_memory_and_cpu_limits_use_a_cgroup_when_the_host_allows(runtime: ExecRuntime, reaper: Reaper) -> None:
    limits = Resources(nano_cpus=500_000_000, memory_bytes=64 << 20)
    rid = run(runtime, reaper, "t1", "sleep", "100", limits=limits)
    dirs = runtime._records[rid].cgroups
    if not dirs:
        pytest.skip("this host does not let the exec runtime create cgroups")
    pid = runtime.status(rid).pid
    wait_for(  # the shim joins, then execs sleep
        lambda: all(str(pid) in Path(d, "cgroup.procs").read_text().split() for d in dirs),
        timeout=10,
        interval=0.02,
        message="the task's process in its cgroups",
    )
    wanted = {"memory.max", "cpu.max", "memory.limit_in_bytes", "cpu.cfs_quota_us"}
    files = {f.name: f.read_text().strip() for d in dirs for f in Path(d).iterdir() if f.name in wanted}
    if "memory.max" in files:  # cgroup v2
        assert files["memory.max"] == str(64 << 20) and files["cpu.max"] == "50000 100000"
    else:
        assert files["memory.limit_in_bytes"] == str(64 << 20) and files["cpu.cfs_quota_us"] == "50000"
    runtime.remove(rid)
    assert not any(Path(d).exists() for d in dirs)


# -- health probes -----------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(2)
        code = {"/ok": 200, "/moved": 302, "/down": 503}.get(self.path, 404)
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/down")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def probe(runtime: ExecRuntime | None, **check: object) -> health.ProbeResult:
    return health.run_probe(HealthCheck(**check), runtime, "t1")  # type: ignore[arg-type]


def test_http_probe(http_server: str) -> None:
    assert probe(None, kind="http", target=f"http://{http_server}/ok", timeout=5) == health.ProbeResult(
        True, "HTTP 200"
    )
    assert probe(None, kind="http", target=f"http://{http_server}/moved", timeout=5).ok  # not followed to /down
    down = probe(None, kind="http", target=f"http://{http_server}/down", timeout=5)
    assert down == health.ProbeResult(False, f"GET http://{http_server}/down: HTTP 503")
    slow = probe(None, kind="http", target=f"http://{http_server}/slow", timeout=0.3)
    assert slow == health.ProbeResult(False, f"GET http://{http_server}/slow: timed out after 0.3s")
    port = free_port()
    refused = probe(None, kind="http", target=f"http://127.0.0.1:{port}/", timeout=5)
    assert refused == health.ProbeResult(False, f"GET http://127.0.0.1:{port}/: Connection refused")


def test_tcp_probe(http_server: str) -> None:
    assert probe(None, kind="tcp", target=http_server, timeout=5) == health.ProbeResult(
        True, f"connected to {http_server}"
    )
    port = free_port()
    failed = probe(None, kind="tcp", target=f"127.0.0.1:{port}", timeout=5)
    assert failed == health.ProbeResult(False, f"connect 127.0.0.1:{port}: Connection refused")


def test_cmd_probe_and_a_bad_health_command(runtime: ExecRuntime, reaper: Reaper) -> None:
    run(runtime, reaper, "t1", "sleep", "100")
    assert probe(runtime, command=("/bin/sh", "-c", "exit 0"), timeout=5) == health.ProbeResult(True, "exit 0")
    bad = probe(runtime, command=("/bin/sh", "-c", "nosuchcmd"), timeout=5)
    assert bad == health.ProbeResult(False, "exit 127: /bin/sh: 1: nosuchcmd: not found")
    slow = probe(runtime, command=("/bin/sh", "-c", "sleep 100"), timeout=0.3)
    assert slow == health.ProbeResult(False, "timed out after 0.3s")

    tracker = health.HealthTracker(HealthCheck(retries=3), started_at=0.0)
    for at in (1.0, 2.0, 3.0):
        tracker.observe(bad, at)
    assert tracker.status == health.UNHEALTHY
    assert tracker.message == "health check failed 3 times: exit 127: /bin/sh: 1: nosuchcmd: not found"


def test_monitor_with_a_real_probe_turns_healthy(runtime: ExecRuntime, reaper: Reaper, tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    run(runtime, reaper, "t1", "sleep", "100")
    check = HealthCheck(kind="cmd", command=("/bin/sh", "-c", f"test -e {flag}"), interval=0.05, timeout=5, retries=2)
    reports: list[health.HealthReport] = []

    async def main() -> None:
        task = asyncio.create_task(health.monitor(check, health.threaded_probe(check, runtime, "t1"), reports.append))
        try:
            await async_wait_for(lambda: reports and reports[-1].status == health.UNHEALTHY, timeout=10)
            flag.touch()
            await async_wait_for(lambda: reports[-1].status == health.HEALTHY, timeout=10)
        finally:
            task.cancel()

    asyncio.run(main())
    assert [r.status for r in reports] == [health.STARTING, health.UNHEALTHY, health.HEALTHY]
    assert reports[1].message == "health check failed 2 times: exit 1"


def test_many_containers_from_many_threads(runtime: ExecRuntime, reaper: Reaper) -> None:
    """The port is called from the agent's worker threads: calls must be safe in parallel."""
    ids = [f"t{i}" for i in range(100)]

    def lifecycle(rid: str) -> int | None:
        run(runtime, reaper, rid, "sh", "-c", f"exit {int(rid[1:]) % 7}")
        st = runtime.wait(rid, timeout=30)
        runtime.remove(rid)
        return None if st is None else st.exit_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lifecycle, ids))
    assert codes == [i % 7 for i in range(100)]
    assert runtime.list() == []
