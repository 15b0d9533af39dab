"""The paths that would undo or break a lock (ADR 44): the CA key opened by the KEK a manager
holds, a CA rotation's new key sealed by the KEK, and a renewal keeping the TLS key sealed."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from pathlib import Path

import msgspec
import pytest

from warren import certinfo, pki, tls
from warren.api.v1 import control_pb2 as cpb
from warren.certinfo import PkiError
from warren.manager import autolock, cakey, lockedfiles, secretkeys
from warren.manager.certificates import CertificateKeeper, load_own, renew_certificate
from warren.manager.controlapi import ControlService
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.model import ClusterInfo
from warren.state import Put

RAFT_SECRET = "raft-secret-for-tests"


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority.create("cluster-under-test")


def locked_cluster(ca: pki.CertificateAuthority) -> tuple[ClusterInfo, str]:
    cluster = ClusterInfo("c", 0.0, ca.cert_pem.decode(), cakey.wrap(ca.key_pem, RAFT_SECRET), "w", "m")
    key = autolock.new_unlock_key()
    keys = autolock.lock(cluster, RAFT_SECRET, key)
    locked = msgspec.structs.replace(
        cluster, kek_wrapped=keys.kek_wrapped, dek_wrapped=keys.dek_wrapped, ca_key_pem=keys.ca_key_pem
    )
    return locked, key


def unlocked_ring(cluster: ClusterInfo, key: str) -> secretkeys.KeyRing:
    ring = secretkeys.KeyRing(RAFT_SECRET)
    ring.hold_kek(autolock.unlocked_kek(cluster, key))
    return ring


class NoRaft:
    is_leader = False


def test_the_authority_signs_with_a_locked_ca_key_only_when_it_holds_the_kek(ca: pki.CertificateAuthority) -> None:
    cluster, key = locked_cluster(ca)
    signing = autolock.authority(RAFT_SECRET, unlocked_ring(cluster, key)).get(cluster)
    assert signing.key_pem == ca.key_pem
    with pytest.raises(cakey.CAKeyError, match="this manager is locked"):  # the Raft secret alone opens nothing
        autolock.authority(RAFT_SECRET, secretkeys.KeyRing(RAFT_SECRET)).get(cluster)
    with pytest.raises(cakey.CAKeyError, match="locked"):
        cakey.Authority(RAFT_SECRET).get(cluster)


def test_a_ca_rotation_while_locked_seals_the_new_key_by_the_kek(ca: pki.CertificateAuthority) -> None:
    cluster, key = locked_cluster(ca)
    store = InMemoryState()
    store.put(Put("cluster", cluster))
    ring = unlocked_ring(cluster, key)
    control = ControlService(store, InMemoryRaft(store), raft_secret=RAFT_SECRET, keyring=ring)
    asyncio.run(control.RotateCA(cpb.RotateCARequest(), None))

    rotated = store.snapshot()[1].cluster
    assert rotated is not None and rotated.ca_previous_cert_pem == cluster.ca_cert_pem
    assert autolock.is_locked(rotated)  # still locked: not under the Raft-derived key
    with pytest.raises(cakey.CAKeyError):
        cakey.unwrap(rotated.ca_key_pem, RAFT_SECRET)
    new_key = autolock.ca_key(rotated, autolock.unlocked_kek(rotated, key))
    assert pki.key_matches_cert(rotated.ca_cert_pem.encode(), new_key)


def _manager_dir(tmp_path: Path, ca: pki.CertificateAuthority, kek: bytes, days: float) -> Path:
    certs = tmp_path / "certs"
    cert, key = ca.issue_keypair("mgr1", pki.ROLE_MANAGER, validity_days=days)
    tls.save_credentials(certs, ca.cert_pem, cert, key)
    (tmp_path / "raft.secret").write_text(RAFT_SECRET)
    lockedfiles.seal(tmp_path, kek)
    return tmp_path


def test_a_renewal_while_locked_keeps_the_tls_key_sealed(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    cluster, key = locked_cluster(ca)
    ring = unlocked_ring(cluster, key)
    data = _manager_dir(tmp_path, ca, ring.kek(cluster), days=3)
    before = load_own(data / "certs", ring, cluster)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2, hours=12)

    store = InMemoryState()
    store.put(Put("cluster", cluster))
    assert renew_certificate(data, store, "mgr1", later, RAFT_SECRET, ring)
    on_disk = (data / "certs" / tls.KEY_FILE).read_bytes()
    assert b"PRIVATE KEY" not in on_disk and autolock.is_sealed_local(on_disk.decode())
    after = load_own(data / "certs", ring, cluster)  # opens, and the key matches the new cert
    assert after.cert_pem != before.cert_pem and after.key_pem != before.key_pem


def _locked_manager(tmp_path: Path, ca: pki.CertificateAuthority) -> tuple[ClusterInfo, secretkeys.KeyRing, Path]:
    """A locked cluster, the key ring that unlocked it, and a manager's data dir with a sealed key."""
    cluster, key = locked_cluster(ca)
    ring = unlocked_ring(cluster, key)
    return cluster, ring, _manager_dir(tmp_path, ca, ring.kek(cluster), days=90)


def test_a_new_trust_bundle_while_locked_keeps_the_tls_key_sealed(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    cluster, ring, data = _locked_manager(tmp_path, ca)
    other = pki.CertificateAuthority.create("cluster-under-test")
    rotating = msgspec.structs.replace(cluster, ca_previous_cert_pem=other.cert_pem.decode())
    store = InMemoryState()
    store.put(Put("cluster", rotating))
    keeper = CertificateKeeper(data, store, NoRaft(), "mgr1", RAFT_SECRET, ring)  # type: ignore[arg-type]
    keeper.step()

    assert (data / "certs" / tls.CA_FILE).read_bytes() == cakey.trust_bundle(rotating)
    on_disk = (data / "certs" / tls.KEY_FILE).read_bytes()
    assert b"PRIVATE KEY" not in on_disk and autolock.is_sealed_local(on_disk.decode())


def test_the_keeper_reads_its_files_again_only_once_the_state_it_decides_from_changes(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    cluster, ring, data = _locked_manager(tmp_path, ca)
    store = InMemoryState()
    store.put(Put("cluster", cluster))
    keeper = CertificateKeeper(data, store, NoRaft(), "mgr1", RAFT_SECRET, ring)  # type: ignore[arg-type]
    assert keeper.step() is None  # in line already: nothing to write, nothing to propose
    (data / "certs" / tls.CERT_FILE).write_text("not a certificate")
    assert keeper.step() is None  # the same state: the files are not read again

    other = pki.CertificateAuthority.create("cluster-under-test")
    store.put(Put("cluster", msgspec.structs.replace(cluster, ca_previous_cert_pem=other.cert_pem.decode())))
    with pytest.raises(pki.PkiError):  # a rotation began: the files are read, and this one is broken
        keeper.step()


def test_load_credentials_opens_a_sealed_key_and_still_refuses_a_mismatch(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    cluster, ring, data = _locked_manager(tmp_path, ca)
    creds = load_own(data / "certs", ring, cluster)
    assert b"PRIVATE KEY" in creds.key_pem
    assert pki.key_matches_cert(creds.cert_pem, creds.key_pem)

    stranger = autolock.seal_local(ring.kek(cluster), autolock.TLS_KEY_PURPOSE, pki.generate_key())
    (data / "certs" / tls.KEY_FILE).write_text(stranger)
    with pytest.raises(PkiError, match="does not match"):
        load_own(data / "certs", ring, cluster)


def test_a_seal_cannot_slip_between_reading_the_key_and_checking_it(
    tmp_path: Path, ca: pki.CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificate keeper read the plain key, a seal committed meanwhile, and the check that
    reads the key file again found the sealed one: "unusable certificate or key" (the API fuzzer
    found it, turning autolock on). A seal that starts then waits for the read to finish."""
    cluster, key = locked_cluster(ca)
    ring = unlocked_ring(cluster, key)
    certs = tmp_path / "certs"
    cert, plain_key = ca.issue_keypair("mgr1", pki.ROLE_MANAGER, validity_days=90)
    tls.save_credentials(certs, ca.cert_pem, cert, plain_key)
    (tmp_path / "raft.secret").write_text(RAFT_SECRET)
    real_check = certinfo.key_matches_files
    sealing: list[threading.Thread] = []

    def seal_meanwhile(cert_file: Path, key_file: Path) -> bool:
        sealer = threading.Thread(target=lockedfiles.seal, args=(tmp_path, ring.kek(cluster)))
        sealer.start()
        sealer.join(0.3)  # as long as a seal takes, unless it must wait for the read
        sealing.append(sealer)
        return real_check(cert_file, key_file)

    monkeypatch.setattr(certinfo, "key_matches_files", seal_meanwhile)
    creds = load_own(certs, ring, cluster)
    sealing[0].join(10)
    assert pki.key_matches_cert(creds.cert_pem, creds.key_pem)
    assert autolock.is_sealed_local((certs / tls.KEY_FILE).read_text())  # the seal happened after
