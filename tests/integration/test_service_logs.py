"""`warren service logs` end to end (ADR 14): a real manager with its embedded exec agent, a
two-replica service printing numbered lines, and the real CLI: history with task prefixes,
--tail, --timestamps, --follow (a subprocess stopped by PID), and an unknown service.

Every process started here is stopped by PID (task processes by process group), even when the
test fails."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from tests.integration.harness import Manager
from tests.waiting import wait_for
from warren import pki, tls
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import dispatcher_pb2_grpc
from warren.api.v1 import types_pb2 as pb

pytestmark = pytest.mark.integration

SCRIPT = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"
LINE_RE = re.compile(r"^(?:(\S+Z) )?ticker\.(\d+)\.([0-9a-z]{12})@(\S+)    \| line (\d+)$")


def _marked(marker: bytes) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        found.add(int(entry))
            except OSError:
                continue
    return found


def _parse(stdout: str) -> list[tuple[str | None, int, str, str, int]]:
    """(timestamp, slot, task id prefix, node, n) for each line; fails on any other line."""
    out = []
    for line in stdout.splitlines():
        match = LINE_RE.match(line)
        assert match, f"unexpected output line {line!r}"
        ts, slot, task, node, n = match.groups()
        out.append((ts, int(slot), task, node, int(n)))
    return out


def _by_slot(lines: list[tuple[str | None, int, str, str, int]]) -> dict[int, list[int]]:
    numbers: dict[int, list[int]] = {}
    for _ts, slot, _task, _node, n in lines:
        numbers.setdefault(slot, []).append(n)
    return numbers


class _LineReader:
    """Lines of a subprocess's stdout, read by a thread so that reads can time out."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout
        self._thread = threading.Thread(target=lambda: [self.lines.put(line) for line in stdout], daemon=True)
        self._thread.start()

    def take(self, count: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(queue.Empty):
                got.append(self.lines.get(timeout=remaining).rstrip("\n"))
        return got


def test_service_logs_history_tail_timestamps_follow_and_unknown(tmp_path: Path) -> None:
    manager = Manager(tmp_path, agent_args=["--runtime", "exec"], start_args=["--heartbeat-period", "1s"])
    marker = f"warren-logs-{uuid.uuid4().hex}"
    groups: set[int] = set()
    follower: subprocess.Popen[str] | None = None
    try:
        manager.start()
        created = manager.cli(
            "service", "create", "ticker", "--image", "exec", "--replicas", "2", "--", "sh", "-c", SCRIPT, marker
        )
        assert created.returncode == 0, created.stderr + manager.log()[-3000:]
        groups |= {
            os.getpgid(p) for p in wait_for(lambda: len(_marked(marker.encode())) == 2 and _marked(marker.encode()))
        }
        tasks = {int(t["slot"]): t["id"] for t in manager.cli_json("service", "ps", "ticker")}  # type: ignore[union-attr]
        assert sorted(tasks) == [1, 2]
        hostname = manager.cli_json("node", "inspect", manager.node_id)["hostname"]  # type: ignore[index]

        # History: every line of both tasks, each with its task's prefix, in order per task.
        def enough() -> list | None:
            result = manager.cli("service", "logs", "ticker", timeout=30)
            assert result.returncode == 0, result.stderr
            lines = _parse(result.stdout)
            numbers = _by_slot(lines)
            return lines if all(len(numbers.get(s, [])) >= 5 for s in (1, 2)) else None

        lines = wait_for(enough, timeout=20, interval=0.3, message="5 lines of each task")
        for _ts, slot, task, node, _n in lines:
            assert (task, node) == (tasks[slot][:12], hostname)
        for numbers in _by_slot(lines).values():
            assert numbers == list(range(len(numbers)))  # from the first line, none lost or repeated

        # --tail 2: the last two lines of each task.
        started = time.monotonic()
        result = manager.cli("service", "logs", "--tail", "2", "ticker", timeout=30)
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 10  # every node answered; no timeout was needed
        numbers = _by_slot(_parse(result.stdout))
        assert sorted(numbers) == [1, 2]
        for slot, last_two in numbers.items():
            assert len(last_two) == 2 and last_two[1] == last_two[0] + 1, (slot, last_two)
            assert last_two[0] >= 3

        # --timestamps: RFC 3339 UTC arrival times, recent and in order per task.
        result = manager.cli("service", "logs", "--timestamps", "--tail", "3", "ticker", timeout=30)
        assert result.returncode == 0, result.stderr
        stamped = _parse(result.stdout)
        assert len(stamped) == 6
        now = time.time()
        times: dict[int, list[float]] = {}
        for ts, slot, _task, _node, _n in stamped:
            assert ts is not None
            at = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()
            assert now - 120 < at <= now + 1
            times.setdefault(slot, []).append(at)
        for series in times.values():
            assert series == sorted(series) and series[-1] - series[0] >= 0.2  # lines 0.2 s apart

        # --follow: the last line of each task, then new lines as they are printed.
        follower = subprocess.Popen(
            [sys.executable, "-m", "warren.cli.main", "service", "logs", "-f", "--tail", "1", "ticker"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=manager.env(),
            cwd=manager.root,
        )
        reader = _LineReader(follower)
        followed = _parse("\n".join(reader.take(12, timeout=20)))
        numbers = _by_slot(followed)
        assert sorted(numbers) == [1, 2], followed
        for series in numbers.values():
            assert series == list(range(series[0], series[0] + len(series)))  # consecutive: nothing lost
        assert max(n for s in numbers.values() for n in s) > max(n for *_rest, n in stamped)  # new lines came

        # A task added while following shows up, from its first line.
        scaled = manager.cli("service", "scale", "ticker=3", "--detach")
        assert scaled.returncode == 0, scaled.stderr

        seen: list[tuple[str | None, int, str, str, int]] = []
        deadline = time.monotonic() + 20
        while not any(line[1] == 3 for line in seen) and time.monotonic() < deadline:
            seen += _parse("\n".join(reader.take(50, timeout=0.5)))
        assert [n for _ts, slot, *_rest, n in seen if slot == 3][:1] == [0], seen
        follower.send_signal(signal.SIGINT)  # by PID: Ctrl-C ends a follow quietly
        assert follower.wait(timeout=10) == 0
        assert follower.stderr is not None and follower.stderr.read() == ""
        # The manager noticed the caller left, and told the agent to stop.
        stream_ids = re.findall(r"log stream (\w+) opened: .*following", manager.log())
        assert len(stream_ids) == 1
        wait_for(lambda: f"log stream {stream_ids[0]} closed" in manager.log(), message="the follow stream closed")

        # An unknown service: exit 3, one line.
        missing = manager.cli("service", "logs", "nope")
        assert missing.returncode == 3
        assert missing.stderr.strip().splitlines() == ["warren: service 'nope' not found"]
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait()
        manager.stop()
        for pid in _marked(marker.encode()):
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(pid))
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        print("---- manager log ----\n" + manager.log()[-8000:])


def test_a_node_that_does_not_answer_is_reported_not_waited_for(tmp_path: Path) -> None:
    """The harness's default manager runs no agent, yet its node is ready and gets the tasks:
    nobody answers the subscription, so the CLI warns after the broker's timeout and exits."""
    manager = Manager(tmp_path)
    try:
        manager.start()
        created = manager.cli("service", "create", "quiet", "--image", "x", "--replicas", "2", "--detach")
        assert created.returncode == 0, created.stderr
        wait_for(
            lambda: all(t["state"] == "assigned" for t in manager.cli_json("service", "ps", "quiet")),  # type: ignore[union-attr]
            message="tasks assigned",
        )
        started = time.monotonic()
        result = manager.cli("service", "logs", "quiet", timeout=30)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
        [warning] = result.stderr.splitlines()
        assert warning.startswith("warren: warning: node ") and "did not answer within 5s" in warning, warning
        assert "2 task(s) are missing" in warning
        assert 4 < elapsed < 15
    finally:
        manager.stop()


def test_an_agent_may_publish_only_the_logs_of_its_own_tasks(tmp_path: Path) -> None:
    """Another node, with a valid worker certificate and its own session, cannot slip lines into
    a stream: not for a subscription it was not sent, and not through a session it does not own."""
    manager = Manager(tmp_path, agent_args=["--runtime", "exec"])
    marker = f"warren-logs-{uuid.uuid4().hex}"
    follower: subprocess.Popen[str] | None = None
    channel = None
    try:
        manager.start()
        created = manager.cli("service", "create", "ticker", "--image", "exec", "--", "sh", "-c", SCRIPT, marker)
        assert created.returncode == 0, created.stderr
        [task] = manager.cli_json("service", "ps", "ticker")  # type: ignore[misc]
        follower = subprocess.Popen(
            [sys.executable, "-m", "warren.cli.main", "service", "logs", "-f", "ticker"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=manager.env(),
            cwd=manager.root,
        )
        reader = _LineReader(follower)
        assert reader.take(1, timeout=20)
        [stream_id] = re.findall(r"log stream (\w+) opened: .*following", manager.log())

        ca = manager.authority()
        cert, key = ca.issue_keypair("intruder1", pki.ROLE_WORKER)
        tls.save_credentials(tmp_path / "intruder", ca.cert_pem, cert, key)
        channel = manager.channel(tmp_path / "intruder")
        stub = dispatcher_pb2_grpc.DispatcherStub(channel)
        session = stub.Session(dpb.SessionRequest(description=dpb.NodeDescription(hostname="intruder")))
        session_id = next(session).session_id
        forged = pb.LogMessage(task_id=task["id"], data=b"forged", timestamp=time.time())
        with pytest.raises(grpc.RpcError) as err:
            stub.PublishLogs(
                dpb.PublishLogsRequest(session_id=session_id, subscription_id=stream_id, messages=[forged]), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "not sent to this node" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            stub.PublishLogs(
                dpb.PublishLogsRequest(session_id="someone-elses", subscription_id=stream_id, messages=[forged]),
                timeout=5,
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        session.cancel()
        assert not any("forged" in line for line in reader.take(5, timeout=2))
    finally:
        if channel is not None:
            channel.close()
        if follower is not None and follower.poll() is None:
            follower.terminate()
            follower.wait(timeout=10)
        manager.stop()
        for pid in _marked(marker.encode()):
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
