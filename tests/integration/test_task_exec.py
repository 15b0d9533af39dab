"""`warren task exec` / `warren service exec` end to end (ADR 59) on the exec runtime: a real
manager, a real worker agent, the real CLI. Output and exit code, stdin, an interactive session
through a pty (prompt, a command, a resize, `exit 3`), a task killed during the exec, a caller
that goes away, the audit event, and each refusal as one line and its exit code.

Every process started here is stopped by PID (task processes by process group)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import random
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.fixtures.exec_cluster import exec_cluster
from tests.integration.harness import Manager
from tests.integration.test_agent_exec import Agent, Processes
from tests.waiting import wait_for
from warren import pki, tls
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import control_pb2_grpc, dispatcher_pb2_grpc
from warren.api.v1 import dispatcher_pb2 as dpb

pytestmark = pytest.mark.integration

Cluster = tuple[Manager, Agent, Processes]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with exec_cluster(tmp_path_factory.mktemp("exec"), "exec") as parts:
        manager, _agent, procs = parts
        created = manager.cli(
            "service", "create", "box", "--image", "exec", "--replicas", "2", "--constraint", "node.role==worker",
            "--restart-delay", "0.2s", "--", "sh", "-c", "sleep 600; exit 0", procs.marker.decode(),
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        wait_for(lambda: len(_running(manager, "box")) == 2, timeout=30, message="both tasks running")
        yield parts


def _cli_input(manager: Manager, data: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warren.cli.main", *args],
        input=data, capture_output=True, text=True, env=manager.env(), timeout=60,
    )  # fmt: skip


def _cli_popen(manager: Manager, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "warren.cli.main", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=manager.env(),
    )  # fmt: skip


def _running(manager: Manager, name: str) -> list[dict]:
    """The service's running tasks; none while the manager does not answer (a loaded machine)."""
    listed = manager.cli("service", "ps", name, "--format", "json")
    tasks = json.loads(listed.stdout) if listed.returncode == 0 else []
    return [t for t in tasks if t["state"] == "running" and t["desired_state"] == "running"]


def _task(manager: Manager, slot: int = 1) -> dict:
    return next(t for t in _running(manager, "box") if int(t["slot"]) == slot)


def test_output_and_exit_code(cluster: Cluster) -> None:
    manager, _agent, _procs = cluster
    task = _task(manager)
    ran = manager.cli("task", "exec", task["id"][:8], "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert ran.returncode == 7, ran.stderr
    assert ran.stdout == "out\n"
    assert ran.stderr == "err\n"
    # service exec: the slot's task, or the lowest running slot; it runs where the task does
    by_slot = manager.cli("service", "exec", "box.2", "--", "sh", "-c", "echo $$ $PPID; cat /proc/self/cgroup")
    assert by_slot.returncode == 0, by_slot.stderr
    lowest = manager.cli("service", "exec", "box", "--", "true")
    assert lowest.returncode == 0, lowest.stderr


def test_stdin_is_piped_with_i(cluster: Cluster) -> None:
    manager, _agent, _procs = cluster
    task = _task(manager)
    data = "".join(f"line {i}\n" for i in range(20000))  # ~200 KB: several chunks each way
    ran = _cli_input(manager, data, "task", "exec", "-i", task["id"], "--", "cat")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == data
    without = _cli_input(manager, "ignored\n", "task", "exec", task["id"], "--", "cat")
    assert without.returncode == 0 and without.stdout == "", without.stderr


def test_each_refusal_is_one_line_and_its_exit_code(cluster: Cluster) -> None:
    manager, _agent, _procs = cluster
    task = _task(manager)
    cases = [
        (("task", "exec", "nosuchtask"), 3, "not found"),
        (("service", "exec", "nosuchservice", "--", "true"), 3, "not found"),
        (("task", "exec", task["id"], "--", "no-such-command-xyz"), 127, "not found"),
        (("task", "exec", task["id"], "--", "/etc/hostname"), 126, "/etc/hostname"),
        (("task", "exec", task["id"]), 2, "a command is required"),
        (("service", "exec", "box.9", "--", "true"), 3, "no task in slot 9"),
    ]
    for args, code, words in cases:
        argv = [*args, "--", "true"] if args[-1] == "nosuchtask" else list(args)
        ran = manager.cli(*argv)
        assert ran.returncode == code, (argv, ran.returncode, ran.stderr)
        lines = ran.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (argv, ran.stderr)
        assert "Traceback" not in ran.stderr


def test_a_task_that_is_not_running_is_refused(cluster: Cluster) -> None:
    manager, _agent, _procs = cluster
    tasks = manager.cli_json("service", "ps", "box", "--all")
    ended = [t for t in tasks if t["desired_state"] != "running"]  # type: ignore[union-attr]
    if not ended:  # make one: kill a task's process; the agent restarts it in a new task
        task = _task(manager, 2)
        _kill_task(cluster[1], task)
        wait_for(
            lambda: any(
                t["id"] == task["id"] and t["state"] != "running"
                for t in manager.cli_json("service", "ps", "box", "--all")
            ),  # type: ignore[union-attr]
            timeout=20,
            message="the killed task to end",
        )
        ended = [task]
    ran = manager.cli("task", "exec", ended[0]["id"], "--", "true")
    assert ran.returncode == 4, ran.stderr
    assert "is not running" in ran.stderr and len(ran.stderr.strip().splitlines()) == 1


def _kill_task(agent: Agent, task: dict) -> None:
    """SIGKILL the task's own process, whose pid the exec runtime records (ADR 5)."""
    record = json.loads((agent.data_dir / "exec" / task["id"] / "record.json").read_text())
    os.kill(int(record["pid"]), signal.SIGKILL)


def test_a_task_killed_during_the_exec_ends_it(cluster: Cluster) -> None:
    manager, agent, _procs = cluster
    wait_for(lambda: len(_running(manager, "box")) == 2, timeout=30, message="both tasks running")
    task = _task(manager, 1)
    sleeper = _own_sleep()
    cli = _cli_popen(manager, "task", "exec", task["id"], "--", "sh", "-c", f"echo started; {sleeper}")
    try:
        assert cli.stdout is not None
        assert cli.stdout.readline() == "started\n"
        wait_for(lambda: _processes_running(sleeper), timeout=10, message="the exec'd command running")
        _kill_task(agent, task)
        cli.wait(timeout=20)
        assert cli.returncode == 137
        assert cli.stderr is not None
        err = cli.stderr.read()
        assert "stopped running" in err, err
        assert len(err.strip().splitlines()) == 1
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    # The exec'd sleep did not outlive the exec.
    wait_for(lambda: not _processes_running(sleeper), timeout=10, message="the exec'd command to be killed")


def test_a_caller_that_goes_away_kills_the_command(cluster: Cluster) -> None:
    manager, _agent, _procs = cluster
    wait_for(lambda: len(_running(manager, "box")) == 2, timeout=30, message="both tasks running")
    task = _task(manager)
    sleeper = _own_sleep()
    cli = _cli_popen(manager, "task", "exec", task["id"], "--", "sh", "-c", f"echo started; {sleeper}")
    try:
        assert cli.stdout is not None
        assert cli.stdout.readline() == "started\n"
        wait_for(lambda: _processes_running(sleeper), timeout=10, message="the exec'd command running")
    finally:
        cli.kill()
        cli.wait()
    wait_for(lambda: not _processes_running(sleeper), timeout=10, message="the exec'd command to be killed")


def _own_sleep() -> str:
    """A sleep whose command line no other test's process has: the suite runs tests side by side,
    and some of them run `sleep 300` tasks of their own."""
    return f"sleep {random.randint(100_000, 999_999)}"


def _processes_running(command: str) -> bool:
    wanted = command.encode().split()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:-1] == wanted:
                    with contextlib.suppress(OSError), open(f"/proc/{entry}/stat", "rb") as s:
                        if s.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                            return True
    return False


def test_an_interactive_session_through_a_pty(cluster: Cluster) -> None:
    manager, _agent, _procs = cluster
    task = _task(manager)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on a terminal of 24x80
        os.environ.update(manager.env())
        os.execv(
            sys.executable, [sys.executable, "-m", "warren.cli.main", "task", "exec", "-it", task["id"], "--", "sh"]
        )
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        screen = _Screen(fd)
        screen.send(b"echo rea''dy\n")
        screen.expect(b"ready")
        screen.send(b"echo hello $((6*7))\n")
        screen.expect(b"hello 42")
        screen.send(b"stty size\n")
        screen.expect(b"24 80")
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
        os.kill(pid, signal.SIGWINCH)
        # The resize travels asynchronously: ask until the command's terminal shows it.
        deadline = time.monotonic() + 15
        while b"33 111" not in screen.seen:
            assert time.monotonic() < deadline, screen.seen[-500:]
            screen.send(b"stty size\n")
            screen.read_for(0.5)
        screen.send(b"exit 3\n")
        _, status = _wait_pid(pid, 20)
        assert os.waitstatus_to_exitcode(status) == 3, screen.seen[-500:]
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


class _Screen:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = b""

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:
                    return

    def expect(self, text: bytes, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            assert time.monotonic() < deadline, f"{text!r} not seen in {self.seen[-500:]!r}"
            self.read_for(0.2)


def _wait_pid(pid: int, timeout: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return done, status
        assert time.monotonic() < deadline, "the CLI did not exit"
        time.sleep(0.05)


def test_each_exec_is_an_event_and_a_log_line(cluster: Cluster) -> None:
    manager, _agent, _procs = cluster
    task = _task(manager)
    ran = manager.cli("task", "exec", task["id"], "--", "echo", "audited-exec")
    assert ran.returncode == 0, ran.stderr
    events = manager.cli("events", "--since", "10m", "--until", "0s", "--filter", "event=exec", "--format", "json")
    assert events.returncode == 0, events.stderr
    [event] = [json.loads(line) for line in events.stdout.splitlines() if "audited-exec" in line]
    assert (event["type"], event["action"], event["actor"]["id"]) == ("task", "exec", task["id"])
    admin = pki.identity_of((manager.data_dir / "admin" / tls.CERT_FILE).read_bytes()).node_id
    assert event["attributes"]["command"] == "echo audited-exec" and event["attributes"]["admin"] == admin
    assert "runs 'echo audited-exec' in task " + task["id"] in manager.log()


def test_only_admins_may_exec_and_only_agents_may_attach(cluster: Cluster) -> None:
    manager, agent, _procs = cluster
    task = _task(manager)
    start = cpb.ExecRequest(start=cpb.ExecStart(task=task["id"], command=["true"]))
    with manager.channel(agent.data_dir / "certs") as worker, pytest.raises(grpc.RpcError) as refused:
        list(control_pb2_grpc.ControlStub(worker).Exec(iter([start]), timeout=10))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not call this method" in (refused.value.details() or "")
    with manager.channel() as admin, pytest.raises(grpc.RpcError) as refused:  # admin on the agents' side
        list(dispatcher_pb2_grpc.DispatcherStub(admin).ExecAttach(iter([dpb.ExecFromAgent()]), timeout=10))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with manager.channel() as admin, pytest.raises(grpc.RpcError) as refused:  # bytes that do not parse
        raw = admin.stream_stream("/warren.api.v1.Control/Exec", request_serializer=lambda b: b)
        list(raw(iter([b"\xff\xff\xff"]), timeout=10))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in (refused.value.details() or "")
    with manager.channel() as admin, pytest.raises(grpc.RpcError) as refused:  # a first request starts nothing
        list(control_pb2_grpc.ControlStub(admin).Exec(iter([cpb.ExecRequest(stdin=b"x")]), timeout=10))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
