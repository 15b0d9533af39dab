"""Admin certificates and CA rotation in the replicated state (ADR 24), the CA key as the state
holds it, and the roots an agent adopts at a renewal."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from warren import carotation, commands, pki
from warren.agent.join import RenewalError, adopted_roots, check_renewed
from warren.manager import cakey
from warren.manager.store import Store, open_environment
from warren.model import AdminCert, ClusterInfo, Node, NodeRole
from warren.state import ClusterState

SECRET = "raft-secret"


def _run(state: ClusterState, command: commands.Command) -> commands.Result:
    result, changes = commands.apply(state, command)
    state.apply(changes)
    return result


def _cluster(ca: pki.CertificateAuthority) -> ClusterInfo:
    return ClusterInfo(
        id="c1",
        created_at=1.0,
        ca_cert_pem=ca.cert_pem.decode(),
        ca_key_pem=cakey.wrap(ca.key_pem, SECRET),
        worker_token_secret="w" * 26,
        manager_token_secret="m" * 26,
    )


def _admin(cert_id: str, name: str, ca: str = "ca1", not_after: float = 1000.0) -> AdminCert:
    return AdminCert(id=cert_id, name=name, created_at=1.0, not_after=not_after, ca=ca)


def test_admin_certificates_are_recorded_renewed_and_revoked() -> None:
    state = ClusterState()
    manager = Node(id="m1", hostname="m1", role=NodeRole.MANAGER)
    assert _run(
        state, commands.InitCluster(_cluster(pki.CertificateAuthority.create("c1")), manager, _admin("a0", "init"))
    ).ok
    assert _run(state, commands.IssueAdminCert(_admin("a1", "alice"))).ok
    taken = _run(state, commands.IssueAdminCert(_admin("a2", "alice")))
    assert (taken.ok, taken.code) == (False, "already_exists")
    # A renewal keeps the record (and when it was created), with the new root and expiry.
    renewed = AdminCert(id="a1", name="alice", created_at=50.0, not_after=2000.0, ca="ca2")
    assert _run(state, commands.IssueAdminCert(renewed)).ok
    assert state.admin_certs["a1"] == AdminCert(id="a1", name="alice", created_at=1.0, not_after=2000.0, ca="ca2")
    # A node's id is never an admin certificate's.
    assert _run(state, commands.IssueAdminCert(_admin("m1", "sneaky"))).code == "failed_precondition"

    assert _run(state, commands.RevokeAdminCert("a1", at=100.0)).ok
    assert state.is_revoked("a1") and state.admin_certs["a1"].revoked_at == 100.0
    assert state.admin_cert_by_name("alice") is None
    assert _run(state, commands.RevokeAdminCert("a1", at=101.0)).code == "failed_precondition"
    assert _run(state, commands.RevokeAdminCert("nobody", at=101.0)).code == "not_found"
    # A revoked certificate cannot be renewed back to life; its name may be given to someone new.
    assert _run(state, commands.IssueAdminCert(_admin("a1", "alice"))).code == "failed_precondition"
    assert _run(state, commands.IssueAdminCert(_admin("a3", "alice"))).ok


def test_revoked_admin_records_are_dropped_once_no_certificate_can_name_them() -> None:
    state = ClusterState()
    _run(state, commands.IssueAdminCert(_admin("a1", "alice", not_after=10.0)))
    _run(state, commands.IssueAdminCert(_admin("a2", "bob", not_after=10.0)))
    _run(state, commands.RevokeAdminCert("a1", at=5.0))
    _run(state, commands.RevokeAdminCert("a2", at=10.0 + commands.REVOCATION_RETENTION + 1))
    assert set(state.admin_certs) == {"a2"}


def test_admin_records_survive_a_restart_of_the_store(tmp_path: Path) -> None:
    store = Store(open_environment(tmp_path / "db"))
    result, changes = commands.apply(store.state, commands.IssueAdminCert(_admin("a1", "alice")))
    assert result.ok
    store.commit(1, changes)
    snapshot = store.dump()
    store.env.close()
    reopened = Store(open_environment(tmp_path / "db"))
    assert reopened.state.admin_certs == {"a1": _admin("a1", "alice")}
    other = Store(open_environment(tmp_path / "db2"))
    other.restore(snapshot)
    assert other.state.admin_certs == {"a1": _admin("a1", "alice")}


def test_a_rotation_ends_only_when_no_node_depends_on_the_old_root() -> None:
    state = ClusterState()
    old = pki.CertificateAuthority.create("c1")
    new = pki.CertificateAuthority.create("c1")
    manager = Node(id="m1", hostname="m1", role=NodeRole.MANAGER, manager_cert_ca=old.key_id)
    _run(state, commands.InitCluster(_cluster(old), manager))
    _run(state, commands.RegisterNode(Node(id="w1", hostname="w1")))
    _run(state, commands.RecordNodeCertificate("w1", old.key_id))
    assert _run(state, commands.FinishCARotation(old.key_id)).code == "failed_precondition"  # none under way

    assert _run(state, commands.StartCARotation(new.cert_pem.decode(), cakey.wrap(new.key_pem, SECRET), 7.0)).ok
    assert state.cluster is not None and state.cluster.ca_previous_cert_pem == old.cert_pem.decode()
    assert cakey.trusted_key_ids(state.cluster) == {old.key_id, new.key_id}
    again = _run(state, commands.StartCARotation(new.cert_pem.decode(), "k", 8.0))
    assert (again.ok, again.code) == (False, "failed_precondition")

    assert [p.node.id for p in carotation.pending(state, new.key_id)] == ["m1", "w1"]
    assert not carotation.agents_done(state, new.key_id)  # managers keep serving old certificates
    assert _run(state, commands.FinishCARotation(new.key_id)).code == "failed_precondition"
    _run(state, commands.RecordNodeCertificate("w1", new.key_id))
    assert carotation.agents_done(state, new.key_id)  # m1 runs no agent (--manager-only)
    assert [p.node.id for p in carotation.pending(state, new.key_id)] == ["m1"]
    _run(state, commands.RecordNodeCertificate("m1", new.key_id, manager=True))
    assert _run(state, commands.FinishCARotation(new.key_id)).ok
    assert state.cluster.ca_previous_cert_pem == "" and cakey.trusted_key_ids(state.cluster) == {new.key_id}


def test_the_ca_key_is_wrapped_under_the_raft_secret() -> None:
    ca = pki.CertificateAuthority.create("c1")
    stored = cakey.wrap(ca.key_pem, SECRET)
    assert b"PRIVATE KEY" not in stored.encode() and cakey.is_wrapped(stored)
    assert cakey.unwrap(stored, SECRET) == ca.key_pem
    with pytest.raises(cakey.CAKeyError):
        cakey.unwrap(stored, "another secret")
    tampered = stored[:-4] + ("AAAA" if not stored.endswith("AAAA") else "BBBB")
    with pytest.raises(cakey.CAKeyError):
        cakey.unwrap(tampered, SECRET)
    assert cakey.unwrap(ca.key_pem.decode(), SECRET) == ca.key_pem  # a cluster from before wrapping
    authority = cakey.Authority(SECRET).get(_cluster(ca))
    assert authority.fingerprint == ca.fingerprint


def test_an_agent_adopts_a_new_root_only_beside_one_it_trusts() -> None:
    old = pki.CertificateAuthority.create("c1")
    new = pki.CertificateAuthority.create("c1")
    stranger = pki.CertificateAuthority.create("c1")
    rotating = pki.bundle(new.cert_pem, old.cert_pem)
    assert adopted_roots(old.cert_pem, rotating) == rotating
    assert adopted_roots(old.cert_pem, stranger.cert_pem) == old.cert_pem
    assert adopted_roots(old.cert_pem, b"") == old.cert_pem
    assert adopted_roots(old.cert_pem, b"garbage") == old.cert_pem
    old_cert, _ = old.issue_keypair("n1", pki.ROLE_WORKER, validity_days=90)
    key = pki.generate_key()
    reissued = new.issue(pki.make_csr(key), "n1", pki.ROLE_WORKER, validity_days=90)
    previous = pki.identity_of(old_cert)
    assert check_renewed(previous, rotating, reissued, key, same_expiry_ok=True).issuer_key_id == new.key_id
    with pytest.raises(RenewalError):  # from a root the agent was never given
        check_renewed(previous, old.cert_pem, reissued, key, same_expiry_ok=True)


def test_a_late_finish_of_an_earlier_rotation_does_not_end_the_next_one() -> None:
    state = ClusterState()
    a, b, c = (pki.CertificateAuthority.create("c1") for _ in range(3))
    manager = Node(id="m1", hostname="m1", role=NodeRole.MANAGER, manager_cert_ca=a.key_id)
    _run(state, commands.InitCluster(_cluster(a), manager))

    assert _run(state, commands.StartCARotation(b.cert_pem.decode(), cakey.wrap(b.key_pem, SECRET), 7.0)).ok
    _run(state, commands.RecordNodeCertificate("m1", b.key_id, manager=True))
    finish_b = commands.FinishCARotation(b.key_id, started_at=7.0)
    assert _run(state, finish_b).ok
    assert _run(state, commands.StartCARotation(c.cert_pem.decode(), cakey.wrap(c.key_pem, SECRET), 9.0)).ok

    # The same finish again (a retry, or one that arrived late): m1 still serves a certificate
    # from B, so B must stay trusted.
    late = _run(state, finish_b)
    assert (late.ok, late.code) == (False, "failed_precondition")
    assert state.cluster is not None and state.cluster.ca_previous_cert_pem == b.cert_pem.decode()
    assert cakey.trusted_key_ids(state.cluster) == {b.key_id, c.key_id}

    _run(state, commands.RecordNodeCertificate("m1", c.key_id, manager=True))
    assert _run(state, commands.FinishCARotation(c.key_id, started_at=9.0)).ok
    assert cakey.trusted_key_ids(state.cluster) == {c.key_id}


def test_a_finish_encoded_before_it_named_its_rotation_still_decodes() -> None:
    class OldFinish(msgspec.Struct, frozen=True, tag="ca.rotate_done"):
        ca: str

    class OldEnvelope(msgspec.Struct, frozen=True, array_like=True):
        version: int
        command: OldFinish

    blob = msgspec.msgpack.encode(OldEnvelope(commands.CODEC_VERSION, OldFinish("k1")))
    assert commands.decode(blob) == commands.FinishCARotation("k1", started_at=0.0)
    assert commands.decode(commands.encode(commands.FinishCARotation("k1", 9.0))) == commands.FinishCARotation(
        "k1", 9.0
    )
