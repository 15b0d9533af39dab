"""Joining a real manager with the real CLI (ADR 13): join, resume, refusals, revocation by
`node rm`, certificate renewal, and the agent embedded in `cluster init`.

Agents run with the exec runtime (no containerd here). Every process started here is stopped
by PID (task processes by process group) at the end, even when a test fails."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.harness import Joiner, Manager, free_port
from tests.waiting import holds, wait_for
from warren import pki, tls
from warren.agent import join as joining
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import dispatcher_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture
def joiner(manager: Manager, tmp_path: Path) -> Iterator[Joiner]:
    root = tmp_path / "joiner"
    root.mkdir()
    j = Joiner(root, manager)
    try:
        yield j
    finally:
        j.stop_all()


def _token(manager: Manager) -> str:
    result = manager.cli("cluster", "join-token", "worker", "-q")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _nodes(manager: Manager) -> dict[str, dict]:
    return {n["id"]: n for n in manager.cli_json("node", "ls")}  # type: ignore[union-attr]


def _node_id(data_dir: Path) -> str:
    return json.loads((data_dir / "node.json").read_text())["node_id"]


def _dispatcher(manager: Manager, certs: Path) -> dispatcher_pb2_grpc.DispatcherStub:
    return dispatcher_pb2_grpc.DispatcherStub(manager.channel(certs))


def test_join_registers_resumes_and_node_rm_revokes(manager: Manager, joiner: Joiner) -> None:
    verbose = manager.cli("cluster", "join-token", "worker")
    token = _token(manager)
    assert f"warren cluster join --token {token} {manager.join_addr}" in verbose.stdout

    agent = joiner.join(token, "--runtime", "exec", "--label", "zone=b")
    wait_for(lambda: (joiner.data_dir / "node.json").exists(), message="node.json")
    node_id = _node_id(joiner.data_dir)
    certs = joiner.data_dir / "certs"
    assert pki.identity_of(tls.load_credentials(certs).cert_pem).node_id == node_id
    assert (certs / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (joiner.data_dir / "node.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((joiner.data_dir / "node.json").read_text())["managers"] == [manager.addr]

    node = wait_for(
        lambda: (n := _nodes(manager).get(node_id)) and n["status"] == "ready" and n,
        timeout=30,
        message=f"node {node_id} registered by its agent\n{joiner.log()}",
    )
    assert node["role"] == "worker" and node["labels"] == {"zone": "b"}
    assert len(_nodes(manager)) == 2
    # The join loaded cryptography; the agent re-executed itself without it (same pid).
    assert not _maps_cryptography(agent.pid)

    # The same command again, after the agent stopped: it resumes, it never joins twice.
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=20) == 0
    joiner.join(token, "--runtime", "exec", "--label", "zone=b")
    wait_for(lambda: f"already joined as node {node_id}; resuming" in joiner.log(), message="the resume notice")
    wait_for(lambda: "session" in joiner.log() and "open" in joiner.log(), timeout=30, message="a new session")
    assert set(_nodes(manager)) == {manager.node_id, node_id}
    joiner.stop_all()

    # `worker start` resumes with the settings saved at join (exec runtime, no flags needed).
    joiner.start("worker", "start", "--data-dir", str(joiner.data_dir))
    wait_for(lambda: "running the agent (exec runtime" in joiner.log(), message="worker start with saved settings")
    wait_for(lambda: "open with" in joiner.log(), timeout=30, message=f"a session\n{joiner.log()}")
    assert not _maps_cryptography(joiner.processes[-1].pid)

    # node rm revokes: the certificate is refused from then on, and the node cannot come back.
    removed = manager.cli("node", "rm", "--force", node_id)
    assert removed.returncode == 0, removed.stderr
    stub = _dispatcher(manager, certs)
    with pytest.raises(grpc.RpcError) as err:
        stub.Heartbeat(dpb.HeartbeatRequest(session_id="any"), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == "this node was removed from the cluster"
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Session(dpb.SessionRequest(description=dpb.NodeDescription(hostname="back")), timeout=5))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as renew_err:
        asyncio.run(_renew(manager, joiner.data_dir, _far_future()))
    assert renew_err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # whatever the agent does now, it cannot register again
    holds(lambda: node_id not in _nodes(manager), 3.0, interval=0.5, message="the removed node stays out")


def test_open_session_of_a_removed_node_ends(manager: Manager, tmp_path: Path) -> None:
    result = joining.join(_token(manager), manager.join_addr, tmp_path / "n", "scripted")
    stub = _dispatcher(manager, tmp_path / "n" / "certs")
    stream = stub.Session(dpb.SessionRequest(description=dpb.NodeDescription(hostname="scripted")), timeout=30)
    first = next(stream)
    assert first.type == dpb.AssignmentsMessage.COMPLETE
    assert manager.cli("node", "rm", "--force", result.node_id).returncode == 0
    with pytest.raises(grpc.RpcError) as err:
        next(stream)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "removed from the cluster" in err.value.details()


@pytest.mark.parametrize("case", ["wrong", "rotated", "malformed", "unreachable", "other-cluster"])
def test_bad_joins_fail_clearly_and_write_nothing(manager: Manager, tmp_path: Path, case: str) -> None:
    token, addr = _token(manager), manager.join_addr
    fingerprint = token.split("-")[2]
    if case == "wrong":
        token = f"WRNTKN-1-{fingerprint}-{'a' * 26}"
        expected = (6, "refused the join token: the join token is invalid or has been rotated")
    elif case == "rotated":
        assert manager.cli("cluster", "join-token", "worker", "--rotate", "-q").returncode == 0
        expected = (6, "refused the join token: the join token is invalid or has been rotated")
    elif case == "malformed":
        token = token[:-3]
        expected = (2, "join token is malformed")
    elif case == "unreachable":
        addr = f"127.0.0.1:{free_port()}"
        expected = (5, f"cannot reach the manager's join address {addr} (the join port is the API port + 2")
    else:  # a token naming another CA: what a man in the middle would also produce
        token = f"WRNTKN-1-{'0' * 64}-{token.split('-')[3]}"
        expected = (6, "the manager's CA does not match the token: wrong cluster or a man in the middle")
    data = tmp_path / "node"
    result = manager.cli("cluster", "join", "--token", token, addr, "--data-dir", str(data), "--runtime", "exec")
    assert (result.returncode, result.stderr.count("\n")) == (expected[0], 1), result.stderr
    assert expected[1] in result.stderr
    assert "Traceback" not in result.stderr and token.split("-")[-1] not in result.stderr  # no secret echoed
    assert not data.exists()
    assert len(_nodes(manager)) == 1


def _far_future() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=80)


def _maps_cryptography(pid: int) -> bool:
    """Whether the process has cryptography's native library mapped (~9 MiB of RSS)."""
    return "/cryptography/" in Path(f"/proc/{pid}/maps").read_text()


async def _renew(manager: Manager, data_dir: Path, now: dt.datetime) -> bool:
    creds = tls.load_credentials(data_dir / "certs")
    async with grpc.aio.secure_channel(
        manager.addr, tls.channel_credentials(*creds), options=tls.channel_options()
    ) as channel:
        return await joining.renew_if_due(channel, data_dir, now=now)


def test_renewal_keeps_the_identity_and_extends_it(manager: Manager, tmp_path: Path) -> None:
    data = tmp_path / "n"
    joining.join(_token(manager), manager.join_addr, data, "renewer")
    joined_second = int(time.time())
    before = tls.load_credentials(data / "certs")
    old = pki.identity_of(before.cert_pem)
    assert not asyncio.run(_renew(manager, data, dt.datetime.now(dt.UTC)))  # not due: nothing changes
    assert tls.load_credentials(data / "certs") == before
    # certificate times have whole seconds: the renewed one must expire later
    wait_for(lambda: int(time.time()) > joined_second, timeout=5, interval=0.02, message="the next second")
    assert asyncio.run(_renew(manager, data, _far_future()))
    after = tls.load_credentials(data / "certs")
    new = pki.identity_of(after.cert_pem)
    assert (new.node_id, new.role, new.cluster_id) == (old.node_id, old.role, old.cluster_id)
    assert new.not_after > old.not_after and after.key_pem != before.key_pem
    assert after.ca_pem == before.ca_pem
    # The renewed credentials work on the API port.
    stub = _dispatcher(manager, data / "certs")
    with pytest.raises(grpc.RpcError) as err:
        stub.Heartbeat(dpb.HeartbeatRequest(session_id="none"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # authorized; the session is unknown


# -- the agent embedded in `cluster init` ----------------------------------------------------
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


def test_init_runs_an_embedded_agent_for_the_managers_node(tmp_path: Path) -> None:
    manager = Manager(tmp_path, agent_args=["--runtime", "exec"], start_args=["--heartbeat-period", "1s"])
    marker = f"warren-embedded-{uuid.uuid4().hex}".encode()
    groups: set[int] = set()
    try:
        manager.start()
        node_id = manager.node_id
        node = _nodes(manager)[node_id]
        assert (node["availability"], node["role"]) == ("active", "manager")
        assert "Embedded agent running this node's tasks with the exec runtime" in manager.log()
        # Beyond 3 heartbeat periods the node is still ready: its agent heartbeats (no self-beat).
        wait_for(lambda: "session" in manager.log() and "open with" in manager.log(), message="the agent session")
        holds(lambda: _nodes(manager)[node_id]["status"] == "ready", 3.5, interval=0.5, message="the node ready")
        created = manager.cli(
            "service", "create", "solo", "--image", "exec", "--", "sh", "-c", "sleep 600; exit 0", marker.decode()
        )
        assert created.returncode == 0, created.stderr + manager.log()[-3000:]
        [task] = manager.cli_json("service", "ps", "solo")  # type: ignore[misc]
        assert (task["node_id"], task["state"]) == (node_id, "running")
        pids = wait_for(lambda: _marked(marker), message="the task process")
        groups |= {os.getpgid(p) for p in pids}
        assert _nodes(manager)[node_id]["status"] == "ready"
        agent_files = manager.data_dir / "agent"
        assert json.loads((agent_files / "node.json").read_text())["node_id"] == node_id
        assert not (agent_files / "certs").is_symlink()
        assert manager.cli("service", "rm", "solo").returncode == 0
        wait_for(lambda: not _marked(marker), message="the task process to stop")
    finally:
        manager.stop()
        for pid in _marked(marker):
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(pid))
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        print("---- manager log ----\n" + manager.log()[-8000:])


def test_manager_only_drains_the_managers_node(tmp_path: Path) -> None:
    manager = Manager(tmp_path, schedule_on_manager=False)  # the harness default is --manager-only
    try:
        manager.start()
        node = _nodes(manager)[manager.node_id]
        assert (node["availability"], node["status"]) == ("drain", "ready")
        assert not (manager.data_dir / "agent").exists()
        manager.stop()
        manager.agent_args = []
        manager.start()  # resumes without an agent: the choice was saved
        assert "No embedded agent (--manager-only)" in manager.log().rsplit("serving the API", 1)[-1]
    finally:
        manager.stop()
