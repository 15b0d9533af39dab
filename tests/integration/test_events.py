"""`warren events` against three real managers (ADR 45): a script waits for a task to run by
reading `warren events --format json`; a consumer whose manager (the leader) is killed resumes on
another with no gap and no duplicate; every manager holds the same history, id for id."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.harness import Manager, all_raft_connected, join_managers, leader_of
from tests.waiting import wait_for
from warren.api.v1 import control_pb2 as cpb

pytestmark = pytest.mark.integration

MARKER = f"warren-events-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Manager]]:
    """m1 runs tasks as plain processes (its embedded exec agent); m2 and m3 only manage."""
    root = tmp_path_factory.mktemp("events")
    (root / "m1").mkdir()
    first = Manager(root / "m1", agent_args=["--runtime", "exec"], start_args=["--heartbeat-period", "1s"])
    managers = [first]
    try:
        first.start()
        join_managers(first, ["m2", "m3"], into=managers)
        wait_for(lambda: all_raft_connected(managers), timeout=20, message="every manager connected to every other")
        yield managers
    finally:
        for manager in managers:
            manager.stop()
        for pid in _marked():  # task processes the exec agent left (a killed manager's)
            os.kill(pid, signal.SIGKILL)


def _marked() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if MARKER.encode() in f.read().split(b"\0"):
                        found.add(int(entry))
            except OSError:
                continue
    return found


class Consumer:
    """`warren events --format json` as a subprocess; its lines read by a thread."""

    def __init__(self, via: list[Manager], *args: str) -> None:
        managers = [flag for m in via for flag in ("--manager", m.addr)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "warren.cli.main", *managers, "events", "--format", "json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=via[0].env(),
        )
        self.events: list[dict] = []
        self._lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None
        threading.Thread(target=lambda: [self._lines.put(line) for line in stdout], daemon=True).start()

    def seen(self) -> list[dict]:
        while not self._lines.empty():
            self.events.append(json.loads(self._lines.get_nowait()))
        return self.events

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C, as an operator ends a follow."""
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        assert self.process.stderr is not None
        return code, self.process.stderr.read()


def _history(manager: Manager, admin: Path) -> list[cpb.Event]:
    """Everything the manager's history holds now (--since long ago, --until now)."""
    with manager.channel(admin) as channel:
        stub = cpb_stub(channel)
        request = cpb.StreamEventsRequest(since=1.0, until=time.time())
        return list(stub.StreamEvents(request, timeout=30))


def _fields(event: cpb.Event) -> tuple:
    return (event.id, event.time, event.type, event.action, event.actor_id, event.actor_name, dict(event.attributes))


def cpb_stub(channel: grpc.Channel):  # type: ignore[no-untyped-def]
    from warren.api.v1 import control_pb2_grpc

    return control_pb2_grpc.ControlStub(channel)


def test_a_script_waits_for_its_task_to_run(trio: list[Manager]) -> None:
    first = trio[0]
    # As a script does: from a time taken before the change, not from whenever `warren events`
    # gets to start (a loaded machine may take seconds to start a Python process).
    since = f"{time.time():.6f}"
    filters = ("--filter", "service=web", "--filter", "type=task", "--filter", "event=running")
    consumer = Consumer(trio, "--since", since, *filters)
    try:
        created = first.cli(
            "service", "create", "web", "--image", "exec", "--detach", "--", "sh", "-c", "sleep 300", MARKER
        )
        assert created.returncode == 0, created.stderr

        def running() -> dict | None:
            return next((e for e in consumer.seen() if e["action"] == "running"), None)

        try:
            event = wait_for(running, timeout=45, message="the task's running event")
        except AssertionError:
            tasks = first.cli("service", "ps", "web").stdout
            raise AssertionError(f"no running event in {consumer.seen()}; the tasks:\n{tasks}") from None
        assert (event["type"], event["attributes"]["service"]) == ("task", "web")
        assert event["attributes"]["node_id"] == first.node_id
        tasks = first.cli_json("service", "ps", "web")
        assert [t["id"] for t in tasks if t["state"] == "running"] == [event["actor"]["id"]]  # type: ignore[index, union-attr]
        assert all(e["type"] == "task" and e["action"] == "running" for e in consumer.seen())
    finally:
        code, stderr = consumer.interrupt()
    assert (code, stderr) == (0, "")

    # The same history, as text, from another manager, ending at --until with exit 0.
    listed = first.cli("--manager", trio[2].addr, "events", "--since", since, "--until", f"{time.time():.6f}")
    assert listed.returncode == 0, listed.stderr
    lines = [line for line in listed.stdout.splitlines() if "name=web" in line]
    assert " service create " in lines[0] and any(" task running " in line for line in lines)
    assert first.cli("service", "rm", "web").returncode == 0
    wait_for(lambda: not _marked(), timeout=30, message="the task's process to stop")


def test_bad_requests_over_grpc_are_invalid_argument(trio: list[Manager]) -> None:
    alive = next(m for m in trio if m.process is not None and m.process.poll() is None)
    with alive.channel(trio[0].data_dir / "admin") as channel:
        garbage = channel.unary_stream("/warren.api.v1.Control/StreamEvents")
        with pytest.raises(grpc.RpcError) as malformed:
            list(garbage(b"\xff\xff\xff\xff", timeout=10))
        assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        request = cpb.StreamEventsRequest(filters=[cpb.EventFilter(key="type", value="container")])
        with pytest.raises(grpc.RpcError) as bad:
            list(cpb_stub(channel).StreamEvents(request, timeout=10))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown event type 'container'" in (bad.value.details() or "")


def test_a_consumer_resumes_after_a_leader_kill_with_no_gap_and_no_duplicate(trio: list[Manager]) -> None:
    leader = leader_of(trio)
    survivors = [m for m in trio if m is not leader]
    admin = trio[0].data_dir / "admin"  # the founder's admin credentials
    consumer = Consumer([leader, *survivors], "--since", f"{time.time():.6f}")  # connected to the leader first
    stop = threading.Event()
    created: list[str] = []

    def write() -> None:
        """Configs created through a survivor, one after another, retried across the election."""
        with survivors[0].channel(admin) as channel:
            stub = cpb_stub(channel)
            while not stop.is_set():
                name = f"cfg-{len(created)}"
                try:
                    stub.CreateConfig(cpb.CreateConfigRequest(name=name, data=b"x"), timeout=5)
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                        created.append(name)  # committed, though the answer was lost
                    continue
                created.append(name)

    def configs() -> list[str]:
        return [e["actor"]["name"] for e in consumer.seen() if e["type"] == "config"]

    writer = threading.Thread(target=write, daemon=True)
    try:
        writer.start()
        wait_for(lambda: len(configs()) >= 10, timeout=30, message=f"events before the kill ({len(created)} created)")
        leader.kill(signal.SIGKILL)
        leader_of(survivors)
        before = len(configs())
        wait_for(lambda: len(configs()) >= before + 10, timeout=40, message="events after the kill")
        stop.set()
        writer.join(timeout=15)
        wait_for(lambda: created[-1] in configs(), timeout=20, message="the last config's event")
        new_leader = [e for e in consumer.seen() if (e["type"], e["action"]) == ("cluster", "leader")]
        assert new_leader and new_leader[-1]["actor"]["id"] != leader.node_id  # the election is an event
    finally:
        stop.set()
        code, stderr = consumer.interrupt()
    assert code == 0, stderr

    seen = [e["id"] for e in consumer.seen()]
    assert len(seen) == len(set(seen)), "a duplicate event"

    last = tuple(int(part) for part in seen[-1].split("."))

    def same_histories() -> list[cpb.Event] | None:
        """Both survivors' histories up to the last event seen, once both have it: id for id,
        time for time (the cluster goes on making events after it, each at its own pace)."""
        first, second = ([e for e in _history(m, admin) if tuple(map(int, e.id.split("."))) <= last] for m in survivors)
        if not first or first[-1].id != seen[-1] or not second or second[-1].id != seen[-1]:
            return None
        assert [_fields(e) for e in first] == [_fields(e) for e in second]
        return first

    ids = [e.id for e in wait_for(same_histories, timeout=20, message="the survivors' histories up to the last event")]
    start = ids.index(seen[0])
    assert seen == ids[start : start + len(seen)]  # no gap, in order
    assert sorted(set(created)) == sorted(configs())  # every config the writer created, once
