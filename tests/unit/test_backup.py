"""The backup file (ADR 56): what it holds, and the refusal of a damaged, cut or foreign file;
the state a recovery makes; a locked cluster's backup restored only with its unlock key."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import msgspec
import pytest

from tests.fixtures.ports import free_port
from tests.unit.test_autolock import RAFT_SECRET, applied, cluster_with_secrets
from warren import commands, pki
from warren.api.v1 import control_pb2 as cpb
from warren.cli import main as cli_main
from warren.cli.errors import Exit
from warren.manager import autolock, backup, recovery
from warren.manager.controlapi import ControlService
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.manager.raft_snapshots import SnapshotFile
from warren.manager.server import ApiError
from warren.manager.startup import ManagerOptions, StartupError
from warren.manager.store import Snapshot, Store, open_environment
from warren.model import ClusterInfo, Node, NodeRole
from warren.state import Put


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority.create("cluster-under-test")


def _nodes() -> list[Node]:
    return [
        Node("m1", "h1", role=NodeRole.MANAGER, raft_addr="127.0.0.1:1"),
        Node("m2", "h2", role=NodeRole.MANAGER, raft_addr="127.0.0.1:2"),
        Node("w1", "h3"),
    ]


def _backup(cluster: ClusterInfo) -> backup.Backup:
    state = Snapshot(applied_index=41, cluster=cluster, nodes=_nodes(), services=[], tasks=[])
    return backup.Backup(cluster.id, 41, 3, 1.0, RAFT_SECRET, state)


def test_a_backup_reads_back_as_written(ca: pki.CertificateAuthority) -> None:
    taken = _backup(cluster_with_secrets(ca))
    assert backup.decode(backup.encode(taken)) == taken


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[: len(backup.MAGIC) + 5], "truncated (its header is incomplete)"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:-10] + bytes([b[-10] ^ 1]) + b[-9:], "corrupted (checksum mismatch)"),
        (lambda b: b + b"x", "trailing bytes"),
        (lambda b: b"PK\x03\x04" + b[4:], "not a Warren backup file"),
        (lambda b: b"", "not a Warren backup file"),
        (lambda b: backup.MAGIC + b"\x00\x02" + b[len(backup.MAGIC) + 2 :], "format version 2 is not supported"),
    ],
)
def test_a_damaged_backup_is_refused(ca: pki.CertificateAuthority, damage, reason: str) -> None:
    blob = backup.encode(_backup(cluster_with_secrets(ca)))
    with pytest.raises(backup.BackupError) as refused:
        backup.decode(damage(blob))
    assert reason in str(refused.value) and "\n" not in str(refused.value)


def test_recovery_removes_the_other_managers_and_keeps_the_workers() -> None:
    keep = Node("new", "h", role=NodeRole.MANAGER, raft_addr="127.0.0.1:9")
    planned = backup.recovery_commands(_nodes(), keep, 5.0)
    assert planned == [
        commands.RemoveNode("m1", 5.0),
        commands.RemoveNode("m2", 5.0),
        commands.RegisterNode(keep),
    ]
    survivor = _nodes()[0]
    assert backup.recovery_commands(_nodes(), survivor, 5.0) == [
        commands.RemoveNode("m2", 5.0),
        commands.RegisterNode(survivor),
    ]


def _options(data: Path, unlock_key: str = "") -> ManagerOptions:
    return ManagerOptions(
        data_dir=data,
        listen_addr=f"127.0.0.1:{free_port()}",
        raft_addr=f"127.0.0.1:{free_port()}",
        join_addr=f"127.0.0.1:{free_port()}",
        unlock_key=unlock_key,
    )


def test_restore_makes_a_single_manager_directory_of_the_same_cluster(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    taken = _backup(cluster_with_secrets(ca))
    options = _options(tmp_path / "data")
    identity = recovery.restore(taken, options, drained=True)
    assert identity.cluster_id == taken.cluster_id
    assert json.loads((tmp_path / "data" / "manager.json").read_text())["node_id"] == identity.node_id
    assert (tmp_path / "data" / "raft.secret").read_text() == RAFT_SECRET
    env = open_environment(tmp_path / "data" / "db")
    try:
        store = Store(env)
        with store.read() as state:
            assert state.cluster == taken.state.cluster
            assert {n.id for n in state.nodes.values()} == {identity.node_id, "w1"}
            assert state.is_revoked("m1") and state.is_revoked("m2")
        assert store.applied_index == 42
    finally:
        env.close()
    seeded = msgspec.msgpack.decode((tmp_path / "data" / "raft-snapshot").read_bytes(), type=SnapshotFile)
    assert seeded.cluster == [identity.raft_addr] and seeded.entries[0][1:] == (42, 4)
    with pytest.raises(StartupError, match="already holds a manager"):
        recovery.restore(taken, _options(tmp_path / "data"), drained=True)


def test_a_locked_clusters_backup_needs_its_unlock_key(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    cluster = cluster_with_secrets(ca)
    key = autolock.new_unlock_key()
    taken = msgspec.structs.replace(_backup(applied(cluster, autolock.lock(cluster, RAFT_SECRET, key))), raft_secret="")
    with pytest.raises(StartupError, match=r"locked cluster.*--unlock-key-file"):
        recovery.restore(taken, _options(tmp_path / "a"), drained=True)
    with pytest.raises(StartupError, match="wrong unlock key"):
        recovery.restore(taken, _options(tmp_path / "b", autolock.new_unlock_key()), drained=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    identity = recovery.restore(taken, _options(tmp_path / "c", key), drained=True)
    assert identity.cluster_id == taken.cluster_id
    assert len((tmp_path / "c" / "raft.secret").read_text()) == 64  # a new one: the backup has none


def test_bad_input_at_each_flag_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI in-process (the same `main` the console script runs): nothing is written."""
    damaged = tmp_path / "damaged.backup"
    damaged.write_bytes(backup.MAGIC + b"\0" * 5)
    cases = [
        (("cluster", "restore", str(damaged), "--data-dir", str(tmp_path / "d1")), "truncated"),
        (("cluster", "restore", str(tmp_path / "missing"), "--data-dir", str(tmp_path / "d2")), "cannot read"),
        (("cluster", "restore", str(damaged)), "--data-dir is required"),
        (("cluster", "init", "--force-new-cluster", "--data-dir", str(tmp_path / "d3")), "holds no manager"),
        (("cluster", "backup", str(tmp_path / "no-such-dir" / "f")), "is not a directory"),
        (("cluster", "backup", str(tmp_path)), "is a directory"),
    ]
    for args, expected in cases:
        assert cli_main.main(list(args)) == Exit.USAGE, args
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "d1").exists() and not (tmp_path / "d2").exists() and not (tmp_path / "d3").exists()


async def _collect(control: ControlService) -> list[cpb.BackupChunk]:
    return [chunk async for chunk in control.BackupCluster(cpb.BackupClusterRequest(), None)]


def test_the_api_streams_a_whole_backup_of_the_store(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    env = open_environment(tmp_path / "db")
    try:
        store = Store(env)
        cluster = cluster_with_secrets(ca)
        store.commit(7, [Put("cluster", cluster), *(Put("node", n) for n in _nodes())])
        raft = InMemoryRaft(store)
        control = ControlService(store, raft, raft_secret=RAFT_SECRET)
        chunks = asyncio.run(_collect(control))
        blob = b"".join(c.data for c in chunks)
        assert {(c.raft_index, c.total_size) for c in chunks} == {(7, len(blob))}
        taken = backup.decode(blob)
        assert (taken.cluster_id, taken.raft_index, taken.raft_term) == ("c", 7, raft.term)
        assert taken.state.cluster == cluster and len(taken.state.nodes) == 3
        # Locked, the Raft secret stays out of the backup: the unlock key is the keys' root.
        locked = applied(cluster, autolock.lock(cluster, RAFT_SECRET, autolock.new_unlock_key()))
        store.commit(8, [Put("cluster", locked)])
        assert backup.decode(b"".join(c.data for c in asyncio.run(_collect(control)))).raft_secret == ""
        # A store that cannot be dumped (the in-memory one of unit tests) says so.
        memory = InMemoryState()
        with pytest.raises(ApiError) as refused:
            asyncio.run(_collect(ControlService(memory, InMemoryRaft(memory), raft_secret=RAFT_SECRET)))
        assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        env.close()
