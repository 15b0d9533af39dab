"""A manager's own side of autolock (ADR 44): opening the KEK as the first key pair commits,
sealing and unsealing its files with the cluster's lock, the locked start-up's key check, the
embedded agent's key sealed with the manager's, and joins and renewals on a manager without the KEK."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import shutil
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import msgspec
import pytest

from warren import datadir, pki, tls
from warren.api.v1 import ca_pb2 as capb
from warren.api.v1 import control_pb2 as cpb
from warren.manager import autolock, cakey, lockedfiles, lockedstart
from warren.manager.certificates import embedded_agent_files, own_files, save_own
from warren.manager.controlapi import ControlService
from warren.manager.daemon import NodeCredentials
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.manager.lockkeeper import LockKeeper
from warren.manager.nodeca import NodeCAService, NodeCertificatesService
from warren.manager.secretkeys import KeyRing
from warren.manager.server import ApiError, caller
from warren.model import ClusterInfo
from warren.node import embedded
from warren.state import Change, Put

T = TypeVar("T")
RAFT_SECRET = "raft-secret-for-tests"
WORKER_SECRET = "w" * 26
LOCKED = autolock.LOCKED_PREFIX.encode()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority.create("cluster-under-test")


def _cluster(ca: pki.CertificateAuthority) -> ClusterInfo:
    return ClusterInfo("c", 0.0, ca.cert_pem.decode(), cakey.wrap(ca.key_pem, RAFT_SECRET), WORKER_SECRET, "m" * 26)


def _leader(ca: pki.CertificateAuthority) -> tuple[ControlService, InMemoryState, list[Change]]:
    """A leader's control API on an in-memory state, recording every committed change in order."""
    store = InMemoryState()
    store.put(Put("cluster", _cluster(ca)))
    committed: list[Change] = []
    store.watch(lambda index, changes: committed.extend(changes or []))
    return ControlService(store, InMemoryRaft(store), raft_secret=RAFT_SECRET), store, committed


def _data_dir(root: Path) -> Path:
    layout = datadir.ManagerDir(root)
    layout.certs.mkdir(parents=True)
    datadir.write_atomic(layout.raft_secret, RAFT_SECRET.encode())
    datadir.write_atomic(layout.certs / tls.KEY_FILE, pki.generate_key())
    return root


def test_a_follower_holds_the_kek_after_autolock_is_enabled_on_a_cluster_with_no_secret(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    control, _, committed = _leader(ca)
    answer = run(control.UpdateAutolock(cpb.UpdateAutolockRequest(enable=True), None))
    assert answer.unlock_key

    async def follow() -> KeyRing:
        ring = KeyRing(RAFT_SECRET)  # a follower that started before any key pair existed
        keeper = LockKeeper(tmp_path, InMemoryState(), ring)
        for change in committed:  # what its store applies, in log order
            keeper.observe(1, [change])
        return ring

    ring = run(follow())
    locked = committed[-1]
    assert isinstance(locked, Put) and isinstance(locked.obj, ClusterInfo) and autolock.is_locked(locked.obj)
    assert ring.holds_kek(locked.obj)
    assert autolock.ca_key(locked.obj, ring.kek(locked.obj)) == ca.key_pem


def test_a_follower_that_installs_a_snapshot_with_the_first_pair_holds_the_kek(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    kek_wrapped, dek_wrapped = KeyRing(RAFT_SECRET).new_key_pair()
    store = InMemoryState()
    store.put(Put("cluster", msgspec.structs.replace(_cluster(ca), kek_wrapped=kek_wrapped, dek_wrapped=dek_wrapped)))

    async def install() -> KeyRing:
        ring = KeyRing(RAFT_SECRET)
        LockKeeper(tmp_path, store, ring).observe(7, None)  # what Store.restore announces
        return ring

    ring = run(install())
    cluster = _cluster_of(store)
    keys = autolock.lock(cluster, RAFT_SECRET, autolock.new_unlock_key())  # the lock commits next
    locked = msgspec.structs.replace(cluster, kek_wrapped=keys.kek_wrapped, ca_key_pem=keys.ca_key_pem)
    assert ring.holds_kek(locked)  # opened as the snapshot installed: not left locked


def _cluster_of(store: InMemoryState) -> ClusterInfo:
    cluster = store.snapshot()[1].cluster
    assert cluster is not None
    return cluster


def test_the_keeper_seals_the_files_while_locked_and_unseals_them_when_autolock_is_off(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    data = _data_dir(tmp_path)
    key_pem = (data / "certs" / tls.KEY_FILE).read_bytes()
    control, store, _ = _leader(ca)
    ring = control._keyring

    async def step() -> str:
        return LockKeeper(data, store, ring).step()

    run(control.UpdateAutolock(cpb.UpdateAutolockRequest(enable=True), None))
    outsider = run(_step_without_kek(data, store))
    assert outsider == "" and not lockedfiles.any_sealed(data)  # no KEK: nothing to seal with
    assert "sealed" in run(step())
    assert lockedfiles.is_sealed(data) and b"PRIVATE KEY" not in (data / "certs" / tls.KEY_FILE).read_bytes()
    assert RAFT_SECRET not in (data / "raft.secret").read_text()
    assert run(step()) == ""  # idempotent

    run(control.UpdateAutolock(cpb.UpdateAutolockRequest(enable=False), None))
    assert "plain again" in run(step())
    assert (data / "raft.secret").read_text().strip() == RAFT_SECRET
    assert (data / "certs" / tls.KEY_FILE).read_bytes() == key_pem


async def _step_without_kek(data: Path, store: InMemoryState) -> str:
    return LockKeeper(data, store, KeyRing(RAFT_SECRET)).step()


def _locked(ca: pki.CertificateAuthority) -> tuple[ClusterInfo, str, bytes]:
    key = autolock.new_unlock_key()
    cluster = _cluster(ca)
    keys = autolock.lock(cluster, RAFT_SECRET, key)
    locked = msgspec.structs.replace(
        cluster, kek_wrapped=keys.kek_wrapped, dek_wrapped=keys.dek_wrapped, ca_key_pem=keys.ca_key_pem
    )
    return locked, key, autolock.unlocked_kek(locked, key)


def test_the_locked_start_opens_the_files_with_the_key_in_force_and_says_why_another_fails(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    data = _data_dir(tmp_path)
    key_pem = (data / "certs" / tls.KEY_FILE).read_bytes()
    cluster, key, kek = _locked(ca)
    lockedfiles.seal(data, kek)

    opened = lockedstart.open_files(data, cluster, key)
    assert (opened.raft_secret, opened.kek, opened.tls_key_pem) == (RAFT_SECRET, kek, key_pem)
    with pytest.raises(autolock.UnlockKeyError) as wrong:
        lockedstart.open_files(data, cluster, autolock.new_unlock_key())
    assert str(wrong.value).startswith("wrong unlock key") and autolock.ROTATION_HINT in str(wrong.value)
    with pytest.raises(autolock.UnlockKeyError, match="not an unlock key"):
        lockedstart.open_files(data, cluster, "hunter2")
    with pytest.raises(autolock.UnlockKeyError, match="state says autolock is off"):
        lockedstart.open_files(data, _cluster(ca), key)


def test_the_unlock_socket_answers_info_and_unlock_and_refuses_the_rest(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    data = _data_dir(tmp_path / "d")
    cluster, key, kek = _locked(ca)
    lockedfiles.seal(data, kek)

    async def scenario() -> lockedstart.OpenedKeys | None:
        stop = asyncio.Event()
        serving = asyncio.create_task(lockedstart.wait_for_unlock(data, cluster, stop))
        sock = lockedstart.socket_path(data)
        while not sock.is_socket():
            await asyncio.sleep(0.02)
        assert sock.stat().st_mode & 0o777 == 0o600
        async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
            info = await channel.unary_unary(
                "/warren.api.v1.Control/GetClusterInfo",
                request_serializer=cpb.GetClusterInfoRequest.SerializeToString,
                response_deserializer=cpb.ClusterInfo.FromString,
            )(cpb.GetClusterInfoRequest())
            assert info.locked and info.autolock and info.id == "c"
            unlock = channel.unary_unary(
                "/warren.api.v1.Control/UnlockCluster",
                request_serializer=cpb.UnlockClusterRequest.SerializeToString,
                response_deserializer=cpb.UnlockClusterResponse.FromString,
            )
            other = channel.unary_unary(
                "/warren.api.v1.Control/ListServices",
                request_serializer=cpb.ListServicesRequest.SerializeToString,
                response_deserializer=cpb.ListServicesResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await other(cpb.ListServicesRequest())
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert refused.value.details() == autolock.MANAGER_LOCKED
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await unlock(cpb.UnlockClusterRequest(unlock_key=autolock.new_unlock_key()))
            assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert not serving.done()
            await unlock(cpb.UnlockClusterRequest(unlock_key=key))
        return await asyncio.wait_for(serving, 10)

    opened = run(scenario())
    assert opened is not None and opened.raft_secret == RAFT_SECRET and opened.kek == kek
    assert not lockedstart.socket_path(data).exists()  # removed once unlocked


def test_join_and_renewal_on_a_manager_without_the_kek_send_the_node_elsewhere(ca: pki.CertificateAuthority) -> None:
    cluster, _, _ = _locked(ca)
    store = InMemoryState()
    store.put(Put("cluster", cluster))
    ring = KeyRing(RAFT_SECRET)  # restarted after the lock: the Raft secret opens nothing
    csr = pki.make_csr(pki.generate_key())
    join = capb.JoinRequest(csr_pem=csr.decode(), hostname="w1", proof=pki.join_proof(WORKER_SECRET, csr))
    with pytest.raises(Aborted) as joined:
        run(NodeCAService(store, raft_secret=RAFT_SECRET, keyring=ring).Join(join, _Peer()))  # type: ignore[arg-type]
    assert joined.value.code == grpc.StatusCode.UNAVAILABLE and autolock.MANAGER_LOCKED in str(joined.value)

    caller.set(pki.Identity("n1", pki.ROLE_WORKER, "c", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1))
    renewal = NodeCertificatesService(store, raft_secret=RAFT_SECRET, keyring=ring)
    with pytest.raises(ApiError) as renewed:
        run(renewal.RenewCertificate(capb.RenewRequest(csr_pem=csr.decode()), None))
    assert renewed.value.code == grpc.StatusCode.UNAVAILABLE and "another manager" in renewed.value.message


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class _Peer:
    def peer(self) -> str:
        return "ipv4:10.0.0.9:40000"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def test_the_embedded_agent_key_is_sealed_with_the_managers_and_opens_only_with_the_kek(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    """Its certificate is a manager-role one for the node, so a disk image must not yield its
    key either: sealed by the lock, read through the KEK, renewals and fresh copies written
    sealed, plain again when autolock is off or the manager is demoted."""
    data = tmp_path
    cert, key = ca.issue_keypair("node1", pki.ROLE_MANAGER, validity_days=90)
    tls.save_credentials(data / "certs", ca.cert_pem, cert, key)
    datadir.write_atomic(data / "raft.secret", RAFT_SECRET.encode())
    control, store, _ = _leader(ca)
    ring = control._keyring
    cluster = functools.partial(_cluster_of, store)
    files = NodeCredentials(own_files(ring, cluster), embedded_agent_files(data, ring, cluster))
    agent_certs = data / "agent" / "certs"

    def agent_key_on_disk() -> bytes:
        return (agent_certs / tls.KEY_FILE).read_bytes()

    async def step() -> str:
        return LockKeeper(data, store, ring).step()

    agent_dir = embedded.prepare(data, "node1", ["127.0.0.1:1"], files)
    assert agent_key_on_disk() == key  # no autolock: the manager's identity, plain like before

    run(control.UpdateAutolock(cpb.UpdateAutolockRequest(enable=True), None))
    assert "sealed" in run(step())
    assert agent_key_on_disk().startswith(LOCKED) and b"PRIVATE KEY" not in agent_key_on_disk()
    assert files.agent.load(agent_certs).key_pem == key  # what the agent's session reads
    with pytest.raises(pki.PkiError):  # without the KEK it is no key at all
        tls.load_credentials(agent_certs)

    renewed, renewed_key = ca.issue_keypair("node1", pki.ROLE_MANAGER, validity_days=100)
    files.agent.save(agent_certs, ca.cert_pem, renewed, renewed_key)  # the agent renews while locked
    assert agent_key_on_disk().startswith(LOCKED) and files.agent.load(agent_certs).key_pem == renewed_key

    later, later_key = ca.issue_keypair("node1", pki.ROLE_MANAGER, validity_days=200)
    save_own(data / "certs", ring, _cluster_of(store), ca.cert_pem, later, later_key)  # the manager renews
    assert embedded.prepare(data, "node1", ["127.0.0.1:1"], files) == agent_dir  # copied: it is newer
    assert agent_key_on_disk().startswith(LOCKED) and files.agent.load(agent_certs).key_pem == later_key
    shutil.rmtree(agent_dir)
    embedded.prepare(data, "node1", ["127.0.0.1:1"], files)  # a first start while locked
    assert agent_key_on_disk().startswith(LOCKED) and files.agent.load(agent_certs).key_pem == later_key

    async def demoted() -> str:
        keeper = LockKeeper(data, store, ring)
        keeper.release_agent_key()  # demoted: the agent goes on alone, with no KEK
        return keeper.step()  # a step still to run as it stops leaves the agent's key plain

    assert run(demoted()) == "" and agent_key_on_disk() == later_key
    assert "sealed" in run(step())  # (a manager not demoted seals it)
    run(control.UpdateAutolock(cpb.UpdateAutolockRequest(enable=False), None))
    assert "plain again" in run(step())
    assert agent_key_on_disk() == later_key and tls.load_credentials(agent_certs).key_pem == later_key
