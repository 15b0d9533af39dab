"""Autolock with real managers (ADR 44).

One manager: turned on (the key is printed once), its Raft secret and TLS key are sealed and no
private key is left plain in its data directory; restarted, it serves only its unlock socket
(0600), where `GetClusterInfo` says locked and every other call is refused; a malformed, an
empty and a wrong key are refused with one line and exit 2, the right one starts Raft and the
TLS API; rotate, `--unlock-key-file` with the new and the retired key, and off (the files plain
again). Three managers: autolock turned on in a cluster that has no secret leaves no manager
locked, and one that was down during a rotation is unlocked from its socket with the key in
force when it stopped, and catches up. A manager with an embedded agent: the agent's key (its
certificate is a manager-role one) is sealed too, so a locked manager's disk holds no plain key
of a manager-role certificate, and once unlocked the agent runs tasks again; demoted, the
manager leaves its agent's key plain, for the agent to run alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.harness import Manager, manager_trio
from tests.integration.test_join import _marked
from tests.waiting import wait_for
from warren import pki, tls
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import control_pb2_grpc
from warren.manager import autolock, lockedstart

pytestmark = pytest.mark.integration

PEM_KEY_RE = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.DOTALL)
PEM_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
KEY_RE = re.compile(re.escape(autolock.UNLOCK_KEY_PREFIX) + r"[A-Za-z0-9_-]+")
LOCKED = autolock.LOCKED_PREFIX.encode()


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    node = Manager(tmp_path_factory.mktemp("autolock"), start_args=["--heartbeat-period", "500ms"])
    node.start()
    try:
        yield node
    finally:
        node.stop()


def _ok(manager: Manager, *args: str) -> str:
    done = manager.cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _unlock(manager: Manager, key: str, *, local: bool = True) -> subprocess.CompletedProcess[str]:
    """`warren cluster unlock --key-stdin`, by default on the locked manager's own socket."""
    where = ["--data-dir", str(manager.data_dir)] if local else []
    return subprocess.run(
        [sys.executable, "-m", "warren.cli.main", "cluster", "unlock", "--key-stdin", *where],
        input=key,
        capture_output=True,
        text=True,
        env=manager.env(),
        timeout=60,
        cwd=manager.root,
    )


def _info(manager: Manager) -> cpb.ClusterInfo:
    """Asked in-process (a CLI run costs a second of interpreter start-up); the CLI's rendering
    of these two fields is checked once."""
    return manager.control().GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=10)


def _sealed(manager: Manager) -> bool:
    data = manager.data_dir
    return all(p.read_bytes().startswith(LOCKED) for p in (data / "raft.secret", data / "certs" / "key.pem"))


def _start_locked(manager: Manager) -> None:
    """Restart a manager whose files are sealed: it serves only its unlock socket."""
    manager.stop()
    manager.start(wait=False)
    sock = lockedstart.socket_path(manager.data_dir)
    assert manager.process is not None
    wait_for(lambda: sock.is_socket() or manager.process.poll() is not None, timeout=20, message="the unlock socket")
    assert manager.process.poll() is None, manager.log()


def _wait_serving(manager: Manager) -> None:
    wait_for(manager._serving, timeout=20, message="the manager to serve its TLS API")
    wait_for(lambda: _info(manager).leader, timeout=20, message="a Raft leader")


def _locked_socket(manager: Manager) -> control_pb2_grpc.ControlStub:
    channel = grpc.insecure_channel(f"unix:{lockedstart.socket_path(manager.data_dir)}")
    return control_pb2_grpc.ControlStub(channel)


def _files_outside_admin(data: Path) -> Iterator[Path]:
    # admin/ holds the operator's client credentials from init (ADR 44: to be moved off the manager)
    return (p for p in data.rglob("*") if p.is_file() and "admin" not in p.relative_to(data).parts)


def test_a_locked_manager_seals_its_files_serves_only_unlock_and_opens_with_the_right_key(manager: Manager) -> None:
    _ok(manager, "secret", "create", "db-password", "--from-literal", "s3cret-before-lock")
    raft_secret = (manager.data_dir / "raft.secret").read_bytes().strip()
    enabled = _ok(manager, "cluster", "update", "--autolock", "true")
    found = KEY_RE.search(enabled)
    assert found is not None, enabled
    key = found.group()
    wait_for(lambda: _sealed(manager), timeout=10, message="raft.secret and certs/key.pem sealed")
    shown = next(line for line in _ok(manager, "cluster", "info").splitlines() if line.startswith("Autolock"))
    assert shown.split()[-1] == "on"  # on, and this manager is not locked: it still serves
    assert "cannot be shown again" in _ok(manager, "cluster", "unlock-key")
    for path in _files_outside_admin(manager.data_dir):  # no key PEM (CA, TLS), no Raft secret, no unlock key
        content = path.read_bytes()
        assert b"PRIVATE KEY" not in content and raft_secret not in content, path
        assert key.encode() not in content, path

    _start_locked(manager)
    sock = lockedstart.socket_path(manager.data_dir)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert manager.cli("cluster", "info").returncode == 5  # no TLS listener: remote clients go elsewhere
    info = _locked_socket(manager).GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=10)
    assert info.autolock and info.locked and info.id
    assert "THIS MANAGER IS LOCKED" in _ok(manager, "cluster", "info", "--data-dir", str(manager.data_dir))
    for refused in (
        lambda stub: stub.ListServices(cpb.ListServicesRequest(), timeout=10),
        lambda stub: stub.GetUnlockKey(cpb.GetUnlockKeyRequest(rotate=True), timeout=10),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            refused(_locked_socket(manager))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.details() == autolock.MANAGER_LOCKED

    for bad, needle in (
        ("hunter2\n", "not an unlock key"),
        ("", "the unlock key is empty"),
        (autolock.new_unlock_key(), "wrong unlock key"),
    ):
        done = _unlock(manager, bad)
        assert done.returncode == 2 and needle in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert autolock.ROTATION_HINT in _unlock(manager, autolock.new_unlock_key()).stderr
    assert sock.is_socket() and _sealed(manager)  # refused keys change nothing

    right = _unlock(manager, key + "\n")
    assert right.returncode == 0, right.stderr
    _wait_serving(manager)
    assert not sock.exists()
    assert not _info(manager).locked
    assert "db-password" in _ok(manager, "secret", "ls")
    _ok(manager, "secret", "create", "after-unlock", "--from-literal", "x")  # the keys open again
    assert _sealed(manager)  # still locked on disk

    # A rotation re-wraps the KEK only: the files stay as they are, the new key opens them.
    rotated_found = KEY_RE.search(_ok(manager, "cluster", "unlock-key", "--rotate"))
    assert rotated_found is not None and rotated_found.group() != key
    rotated = rotated_found.group()
    key_file, plain_args = manager.root / "unlock.key", list(manager.start_args)
    key_file.write_text(key)  # the retired key: the manager stops with one line
    manager.start_args = [*plain_args, "--unlock-key-file", str(key_file)]
    manager.stop()
    with pytest.raises(RuntimeError, match=r"wrong unlock key.*in force when it stopped"):
        manager.start()
    key_file.write_text(rotated + "\n")
    manager.start()  # --unlock-key-file: it opens its files and serves at once
    _wait_serving(manager)
    assert _info(manager).autolock and not _info(manager).locked
    manager.start_args = plain_args

    _ok(manager, "cluster", "update", "--autolock", "false")
    wait_for(lambda: not _sealed(manager), timeout=10, message="the files plain again")
    assert (manager.data_dir / "raft.secret").read_bytes().strip() == raft_secret
    assert b"PRIVATE KEY" in (manager.data_dir / "certs" / "key.pem").read_bytes()
    manager.stop()
    manager.start()  # no key needed any more
    _wait_serving(manager)
    assert not _info(manager).autolock
    _ok(manager, "secret", "create", "after-off", "--from-literal", "x")
    on_disk = b"".join(p.read_bytes() for p in manager.data_dir.rglob("*") if p.is_file())
    on_disk += (manager.root / "manager.log").read_bytes()
    assert key.encode() not in on_disk and rotated.encode() not in on_disk


def test_three_managers_lock_with_no_secret_and_one_down_during_a_rotation_unlocks_and_rejoins(tmp_path: Path) -> None:
    with manager_trio(tmp_path) as managers:
        leader, _, restarted = managers
        admin = leader.data_dir / "admin"
        found = KEY_RE.search(_ok(leader, "cluster", "update", "--autolock", "true"))
        assert found is not None
        # Each manager held the KEK before the lock (the first key pair opened it): each seals
        # its own files and still serves.
        for manager in managers:
            wait_for(lambda m=manager: _sealed(m), timeout=15, message=f"{manager.root.name}'s files sealed")
            info = manager.control(admin).GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=10)
            assert info.autolock and not info.locked, manager.root.name
            manager.control(admin).ListServices(cpb.ListServicesRequest(), timeout=10)

        # Down during a rotation: it unlocks with the key in force when it stopped, then catches up.
        restarted.stop()
        rotated = KEY_RE.search(_ok(leader, "cluster", "unlock-key", "--rotate"))
        assert rotated is not None
        _start_locked(restarted)
        newer = _unlock(restarted, rotated.group())
        assert newer.returncode == 2 and autolock.ROTATION_HINT in newer.stderr, newer.stderr
        assert _unlock(restarted, found.group()).returncode == 0
        wait_for(restarted._serving, timeout=20, message="the restarted manager to serve")
        _ok(leader, "secret", "create", "after-restart", "--from-literal", "x")

        def caught_up() -> bool:
            listed = restarted.control(admin).ListSecrets(cpb.ListSecretsRequest(), timeout=10)
            return any(s.name == "after-restart" for s in listed.secrets)

        wait_for(caught_up, timeout=20, message="the restarted manager to catch up")
        assert not restarted.control(admin).GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=10).locked


def _plain_manager_keys(data: Path) -> list[Path]:
    """The files under `data` that hold a plain private key of a manager-role certificate kept
    there: what a disk image would give to pose as a manager."""
    contents = {path: path.read_bytes() for path in data.rglob("*") if path.is_file()}
    manager_certs = []
    for content in contents.values():
        for cert in PEM_CERT_RE.findall(content):
            with contextlib.suppress(pki.PkiError):
                if pki.identity_of(cert).role == pki.ROLE_MANAGER:
                    manager_certs.append(cert)
    assert manager_certs, "no manager-role certificate found: the check would prove nothing"
    return [
        path
        for path, content in contents.items()
        for key in PEM_KEY_RE.finditer(content)
        if any(pki.key_matches_cert(cert, key.group()) for cert in manager_certs)
    ]


def _task_state(manager: Manager, service: str) -> tuple[str, str]:
    tasks = manager.control().ListTasks(cpb.ListTasksRequest(service=service), timeout=10).tasks
    return (tasks[0].node_id, tasks[0].state) if tasks else ("", "")


def test_a_locked_manager_with_an_embedded_agent_keeps_no_plain_manager_key_and_its_agent_runs_after_unlock(
    tmp_path: Path,
) -> None:
    manager = Manager(tmp_path, agent_args=["--runtime", "exec"], start_args=["--heartbeat-period", "500ms"])
    marker = f"warren-autolock-{uuid.uuid4().hex}"
    agent_key = manager.data_dir / "agent" / "certs" / "key.pem"
    try:
        manager.start()
        wait_for(agent_key.exists, timeout=20, message="the embedded agent's credentials")
        found = KEY_RE.search(_ok(manager, "cluster", "update", "--autolock", "true"))
        assert found is not None
        wait_for(lambda: _sealed(manager) and agent_key.read_bytes().startswith(LOCKED), timeout=10, message="sealed")

        _start_locked(manager)
        assert _plain_manager_keys(manager.data_dir) == []
        assert _unlock(manager, found.group()).returncode == 0
        _wait_serving(manager)

        # The agent is back (node ls says ready) and runs a task: its state comes from the agent.
        def ready() -> bool:
            nodes = manager.cli_json("node", "ls")
            assert isinstance(nodes, list)
            return [n["status"] for n in nodes if n["id"] == manager.node_id] == ["ready"]

        wait_for(ready, timeout=20, interval=0.5, message="the manager's node ready")
        _ok(manager, "service", "create", "after-unlock", "--image", "exec", "--", "sh", "-c", "sleep 600", marker)
        wait_for(
            lambda: _task_state(manager, "after-unlock") == (manager.node_id, "running"),
            timeout=20,
            message="the task running on the manager's node",
        )
        assert _marked(marker.encode())
        assert agent_key.read_bytes().startswith(LOCKED) and _plain_manager_keys(manager.data_dir) == []
        _ok(manager, "service", "rm", "after-unlock")
        wait_for(lambda: not _marked(marker.encode()), timeout=20, message="the task process to stop")
    finally:
        manager.stop()
        for pid in _marked(marker.encode()):
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_a_demoted_manager_of_a_locked_cluster_leaves_its_agent_key_plain_for_the_agent_alone(tmp_path: Path) -> None:
    (tmp_path / "m1").mkdir()
    (tmp_path / "m2").mkdir()
    leader = Manager(tmp_path / "m1", start_args=["--heartbeat-period", "500ms"])
    managers = [leader]
    try:
        leader.start()
        token = leader.join_token("manager")
        demoted = Manager(tmp_path / "m2", founder=leader, token=token, agent_args=["--runtime", "exec"])
        managers.append(demoted)
        demoted.start()
        agent_certs = demoted.data_dir / "agent" / "certs"
        # The harness's `--wireguard off` reached the agent of a manager that joined: no overlay
        # in the test's own network namespace (`cluster join` used to drop the flag).
        assert json.loads((demoted.data_dir / "agent-settings.json").read_text())["wireguard"] == "off"
        wait_for((agent_certs / "key.pem").exists, timeout=20, message="the embedded agent's credentials")
        _ok(leader, "cluster", "update", "--autolock", "true")
        wait_for(
            lambda: _sealed(demoted) and (agent_certs / "key.pem").read_bytes().startswith(LOCKED),
            timeout=15,
            message="m2's files sealed",
        )
        _ok(leader, "node", "demote", demoted.node_id)
        assert demoted.process is not None
        wait_for(lambda: demoted.process.poll() is not None, timeout=20, message="the demoted manager to stop")
        # What `warren worker start --data-dir DIR/agent` reads: a plain key, no KEK needed.
        assert b"PRIVATE KEY" in (agent_certs / "key.pem").read_bytes()
        tls.load_credentials(agent_certs)
        assert _sealed(demoted)  # the manager's own files stay sealed
    finally:
        for manager in managers:
            manager.stop()
