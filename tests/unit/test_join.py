"""The join protocol without a network: proofs, the manager's Join checks, the node's
verification of the answer, renewal, and the settings a node keeps (ADR 13)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import grpc
import pytest

from warren import pki, tls
from warren.agent import join as joining
from warren.agent import settings as agent_settings
from warren.api.v1 import ca_pb2 as capb
from warren.host import sanitise_hostname
from warren.manager.inmemory import InMemoryState
from warren.manager.nodeca import DENIED, FailureLimiter, NodeCAService, peer_host
from warren.model import ClusterInfo, Node, NodeRole
from warren.node import embedded
from warren.state import ClusterState, Put

WORKER_SECRET = "w" * 26
MANAGER_SECRET = "m" * 26


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority.create("cluster1")


@pytest.fixture(scope="module")
def other_ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority.create("cluster2")


def _csr() -> tuple[bytes, bytes]:
    key = pki.generate_key()
    return key, pki.make_csr(key)


# -- the proof ---------------------------------------------------------------------------------
def test_proof_binds_the_secret_to_the_csr() -> None:
    _, csr = _csr()
    proof = pki.join_proof(WORKER_SECRET, csr)
    assert len(proof) == 64 and WORKER_SECRET not in proof
    assert pki.proof_matches(WORKER_SECRET, csr, proof)
    assert pki.proof_matches(WORKER_SECRET, csr.decode(), proof)  # str and bytes alike
    assert not pki.proof_matches(MANAGER_SECRET, csr, proof)  # another secret
    _, other_csr = _csr()
    assert not pki.proof_matches(WORKER_SECRET, other_csr, proof)  # replayed for another key
    assert not pki.proof_matches("", csr, pki.join_proof("", csr))  # an unset secret never matches
    assert not pki.proof_matches(WORKER_SECRET, csr, "é" * 64)  # junk is refused, not an exception


# -- the manager's side ------------------------------------------------------------------------
class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class FakeContext:
    def __init__(self, peer: str = "ipv4:10.0.0.9:40000") -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def _state(ca: pki.CertificateAuthority) -> ClusterState:
    state = ClusterState()
    cluster = ClusterInfo(
        id="cluster1",
        created_at=1.0,
        ca_cert_pem=ca.cert_pem.decode(),
        ca_key_pem=ca.key_pem.decode(),
        worker_token_secret=WORKER_SECRET,
        manager_token_secret=MANAGER_SECRET,
    )
    manager = Node(id="mgr1", hostname="m1", role=NodeRole.MANAGER, addr="10.0.0.1:4242")
    state.apply([Put("cluster", cluster), Put("node", manager)])
    return state


def _call(service: NodeCAService, request: capb.JoinRequest, peer: str = "ipv4:10.0.0.9:40000") -> capb.JoinResponse:
    return asyncio.run(service.Join(request, FakeContext(peer)))  # type: ignore[arg-type]


def _request(secret: str, csr: bytes, hostname: str = "worker-1") -> capb.JoinRequest:
    return capb.JoinRequest(csr_pem=csr.decode(), hostname=hostname, proof=pki.join_proof(secret, csr))


def test_join_issues_a_worker_certificate_that_the_node_accepts(ca: pki.CertificateAuthority) -> None:
    service = NodeCAService(InMemoryState(_state(ca)), new_node_id=lambda: "node42")
    key, csr = _csr()
    response = _call(service, _request(WORKER_SECRET, csr))
    assert (response.node_id, response.role, list(response.managers)) == ("node42", "worker", ["10.0.0.1:4242"])
    token = pki.parse_join_token(pki.make_join_token(ca.fingerprint, WORKER_SECRET))
    identity = joining.verify_join_response(token, key, response)
    assert (identity.node_id, identity.role, identity.cluster_id) == ("node42", "worker", "cluster1")
    not_before, not_after = pki.validity(response.cert_pem)
    assert dt.timedelta(days=89) < not_after - not_before <= dt.timedelta(days=90, minutes=5)


def test_a_manager_token_gets_a_manager_certificate(ca: pki.CertificateAuthority) -> None:
    service = NodeCAService(InMemoryState(_state(ca)), new_node_id=lambda: "node43")
    key, csr = _csr()
    response = _call(service, _request(MANAGER_SECRET, csr, hostname="manager-2"))
    token = pki.parse_join_token(pki.make_join_token(ca.fingerprint, MANAGER_SECRET))
    identity = joining.verify_join_response(token, key, response)
    assert (identity.node_id, identity.role) == ("node43", "manager")


@pytest.mark.parametrize(
    ("mutate", "code", "needle"),
    [
        (lambda r: setattr(r, "proof", pki.join_proof("x" * 26, r.csr_pem)), grpc.StatusCode.PERMISSION_DENIED, DENIED),
        (lambda r: setattr(r, "proof", "not-hex"), grpc.StatusCode.PERMISSION_DENIED, DENIED),
        (lambda r: setattr(r, "proof", ""), grpc.StatusCode.PERMISSION_DENIED, DENIED),
        (lambda r: setattr(r, "hostname", "bad host!"), grpc.StatusCode.INVALID_ARGUMENT, "invalid hostname"),
        (lambda r: setattr(r, "hostname", ""), grpc.StatusCode.INVALID_ARGUMENT, "invalid hostname"),
        (lambda r: setattr(r, "csr_pem", ""), grpc.StatusCode.INVALID_ARGUMENT, "csr_pem is required"),
        (lambda r: setattr(r, "csr_pem", "x" * 20000), grpc.StatusCode.INVALID_ARGUMENT, "larger than"),
    ],
)
def test_join_refusals(ca: pki.CertificateAuthority, mutate, code: grpc.StatusCode, needle: str) -> None:
    service = NodeCAService(InMemoryState(_state(ca)))
    request = _request(WORKER_SECRET, _csr()[1])
    mutate(request)
    with pytest.raises(Aborted) as err:
        _call(service, request)
    assert err.value.code == code
    assert needle in err.value.details


def test_join_with_a_valid_proof_of_a_garbage_csr_is_invalid_argument(ca: pki.CertificateAuthority) -> None:
    service = NodeCAService(InMemoryState(_state(ca)))
    garbage = b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(Aborted) as err:
        _call(service, _request(WORKER_SECRET, garbage))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "unusable certificate signing request" in err.value.details


def test_a_rotated_token_is_refused(ca: pki.CertificateAuthority) -> None:
    import msgspec

    state = _state(ca)
    service = NodeCAService(InMemoryState(state))
    _, csr = _csr()
    state.apply([Put("cluster", msgspec.structs.replace(state.cluster, worker_token_secret="n" * 26))])
    with pytest.raises(Aborted) as err:
        _call(service, _request(WORKER_SECRET, csr))
    assert (err.value.code, err.value.details) == (grpc.StatusCode.PERMISSION_DENIED, DENIED)


def test_failed_joins_are_throttled_per_peer_but_a_right_token_still_joins(ca: pki.CertificateAuthority) -> None:
    now = [0.0]
    limiter = FailureLimiter(burst=3, rate=0.5, clock=lambda: now[0])
    service = NodeCAService(InMemoryState(_state(ca)), limiter=limiter)
    _, csr = _csr()
    for _ in range(3):
        with pytest.raises(Aborted) as err:
            _call(service, _request("x" * 26, csr))
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(Aborted) as err:  # the bad client is throttled now...
        _call(service, _request("x" * 26, csr))
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many failed join attempts" in err.value.details
    # ...but a node with the right token behind the same address (a NAT) still joins.
    assert _call(service, _request(WORKER_SECRET, csr)).role == "worker"
    for _ in range(5):  # and the bad client stays throttled, however often it tries
        with pytest.raises(Aborted) as err:
            _call(service, _request("y" * 26, csr))
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(Aborted) as err:  # another host is unaffected
        _call(service, _request("x" * 26, csr), peer="ipv4:10.0.0.8:1")
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    now[0] += 2.0  # one attempt's worth refilled
    with pytest.raises(Aborted) as err:
        _call(service, _request("x" * 26, csr))
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_failure_limiter_table_is_bounded() -> None:
    now = [0.0]
    limiter = FailureLimiter(burst=2, rate=1.0, max_hosts=3, clock=lambda: now[0])
    for i in range(10):
        limiter.failed(f"h{i}")
        now[0] += 0.1
    assert len(limiter._buckets) <= 3
    assert limiter.allowed("h0")  # forgotten, hence allowed


@pytest.mark.parametrize(
    ("peer", "host"),
    [("ipv4:10.1.2.3:5555", "10.1.2.3"), ("ipv6:[::1]:5555", "[::1]"), ("unix:/tmp/sock", "unix:/tmp/sock")],
)
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


# -- the node's verification of the answer -----------------------------------------------------
def _response(ca: pki.CertificateAuthority, csr: bytes, node_id: str = "node42") -> capb.JoinResponse:
    cert = ca.issue(csr, node_id, pki.ROLE_WORKER)
    return capb.JoinResponse(
        node_id=node_id, role="worker", cert_pem=cert.decode(), ca_pem=ca.cert_pem.decode(), managers=["m:1"]
    )


def test_a_ca_that_is_not_the_pinned_one_is_refused(
    ca: pki.CertificateAuthority, other_ca: pki.CertificateAuthority
) -> None:
    token = pki.parse_join_token(pki.make_join_token(ca.fingerprint, WORKER_SECRET))
    key, csr = _csr()
    with pytest.raises(joining.JoinError) as err:  # a man in the middle answering with its own CA
        joining.verify_join_response(token, key, _response(other_ca, csr))
    assert err.value.kind == "mismatch" and err.value.message == joining.CA_MISMATCH
    garbage = _response(ca, csr)
    garbage.ca_pem = "not a certificate"
    with pytest.raises(joining.JoinError) as err:
        joining.verify_join_response(token, key, garbage)
    assert err.value.message == joining.CA_MISMATCH


def test_a_certificate_not_from_the_pinned_ca_is_refused(
    ca: pki.CertificateAuthority, other_ca: pki.CertificateAuthority
) -> None:
    token = pki.parse_join_token(pki.make_join_token(ca.fingerprint, WORKER_SECRET))
    key, csr = _csr()
    response = _response(other_ca, csr)
    response.ca_pem = ca.cert_pem.decode()  # the right CA, with a certificate signed by another
    with pytest.raises(joining.JoinError, match="not issued by the cluster CA"):
        joining.verify_join_response(token, key, response)


def test_a_certificate_for_another_key_or_node_is_refused(ca: pki.CertificateAuthority) -> None:
    token = pki.parse_join_token(pki.make_join_token(ca.fingerprint, WORKER_SECRET))
    key, _ = _csr()
    _, someone_elses_csr = _csr()
    with pytest.raises(joining.JoinError, match="not for this node's key"):
        joining.verify_join_response(token, key, _response(ca, someone_elses_csr))
    key, csr = _csr()
    response = _response(ca, csr)
    response.node_id = "somebody-else"
    with pytest.raises(joining.JoinError, match="another node or role"):
        joining.verify_join_response(token, key, response)


def test_join_refuses_a_malformed_token_before_any_network_or_disk(tmp_path: Path) -> None:
    with pytest.raises(joining.JoinError) as err:
        joining.join("WRNTKN-1-abc-def", "127.0.0.1:1", tmp_path / "node", "host1")
    assert err.value.kind == "token" and "malformed" in err.value.message
    assert not (tmp_path / "node").exists()


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "details", "kind", "needle"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, DENIED, "denied", "invalid or has been rotated"),
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", "unreachable", "API port + 2"),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", "unreachable", "cannot reach the manager's join address"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", "unreachable", "m:4244"),
        (grpc.StatusCode.UNAVAILABLE, "the cluster is still initialising; retry", "busy", "initialising"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many failed join attempts", "busy", "too many"),
        (grpc.StatusCode.FAILED_PRECONDITION, "cluster is locked", "refused", "refused the join"),
        (grpc.StatusCode.INVALID_ARGUMENT, "invalid hostname", "invalid", "invalid hostname"),
        (grpc.StatusCode.UNIMPLEMENTED, "", "unreachable", "not a Warren join address"),
        (grpc.StatusCode.INTERNAL, "boom", "failed", "boom"),
    ],
)
def test_join_failures_become_one_line_errors(code: grpc.StatusCode, details: str, kind: str, needle: str) -> None:
    error = joining._rpc_failure(FakeRpcError(code, details), "m:4244")
    assert (error.kind, "\n" in error.message) == (kind, False)
    assert needle in error.message


# -- renewal -----------------------------------------------------------------------------------
def test_renewal_is_due_in_the_last_third_of_the_lifetime(ca: pki.CertificateAuthority) -> None:
    cert, _ = ca.issue_keypair("node1", pki.ROLE_WORKER, validity_days=90)
    not_before, not_after = pki.validity(cert)
    assert not joining.renewal_due(cert)
    assert not joining.renewal_due(cert, not_before + dt.timedelta(days=55))
    assert joining.renewal_due(cert, not_after - dt.timedelta(days=29))
    assert joining.renewal_due(cert, not_after + dt.timedelta(days=1))


def test_a_renewed_certificate_must_succeed_the_current_one(
    ca: pki.CertificateAuthority, other_ca: pki.CertificateAuthority
) -> None:
    old_cert, _ = ca.issue_keypair("node1", pki.ROLE_WORKER, validity_days=30)
    old = pki.identity_of(old_cert)
    key, csr = _csr()
    new = joining.check_renewed(old, ca.cert_pem, ca.issue(csr, "node1", pki.ROLE_WORKER), key)
    assert new.not_after > old.not_after
    cases = [
        (ca.issue(csr, "node2", pki.ROLE_WORKER), key, "another node"),
        (ca.issue(csr, "node1", pki.ROLE_MANAGER), key, "another node, role"),
        (other_ca.issue(csr, "node1", pki.ROLE_WORKER), key, "not issued by the cluster CA"),
        (ca.issue(csr, "node1", pki.ROLE_WORKER, validity_days=1), key, "no later"),
        (ca.issue(csr, "node1", pki.ROLE_WORKER), pki.generate_key(), "not for the key"),
    ]
    for cert, with_key, needle in cases:
        with pytest.raises(joining.RenewalError, match=needle):
            joining.check_renewed(old, ca.cert_pem, cert, with_key)


# -- what a node keeps on disk -----------------------------------------------------------------
def test_stored_identity_needs_both_certificates_and_node_file(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    assert joining.stored_identity(tmp_path) is None
    cert, key = ca.issue_keypair("node7", pki.ROLE_WORKER)
    tls.save_credentials(tmp_path / "certs", ca.cert_pem, cert, key)
    assert joining.stored_identity(tmp_path) is None  # a join that stopped before node.json
    joining.write_node_file(tmp_path, "node7", ["10.0.0.1:4242"])
    found = joining.stored_identity(tmp_path)
    assert found is not None
    assert (found.node_id, found.role, found.managers) == ("node7", "worker", ["10.0.0.1:4242"])
    assert found.ca_fingerprint == ca.fingerprint
    assert (tmp_path / "node.json").stat().st_mode & 0o777 == 0o600
    joining.write_node_file(tmp_path, "someone-else", [])
    with pytest.raises(pki.PkiError, match="does not name the node"):
        joining.stored_identity(tmp_path)


def test_node_hostname_is_made_acceptable() -> None:
    assert sanitise_hostname("web-1.example") == "web-1.example"
    assert sanitise_hostname("my host!") == "my-host-"
    assert sanitise_hostname("---") == "node"
    assert len(sanitise_hostname("a" * 100)) == 63


def test_agent_settings_given_flags_win_and_the_rest_is_kept(tmp_path: Path) -> None:
    assert agent_settings.load(tmp_path) is None
    first = agent_settings.resolve(tmp_path, runtime="exec", labels={"zone": "b"}, containerd_socket=None)
    agent_settings.save(tmp_path, first)
    assert (tmp_path / agent_settings.SETTINGS_FILE).stat().st_mode & 0o777 == 0o600
    again = agent_settings.resolve(tmp_path, runtime=None, labels=None, insecure_registries=["127.0.0.1:5000"])
    assert again.runtime == "exec" and again.labels == {"zone": "b"}
    assert again.insecure_registries == ("127.0.0.1:5000",)
    assert again.containerd_socket == agent_settings.DEFAULT_CONTAINERD_SOCKET
    with pytest.raises(agent_settings.SettingsError, match="unknown runtime"):
        agent_settings.resolve(tmp_path, runtime="docker")
    (tmp_path / agent_settings.SETTINGS_FILE).write_text("[1, 2]")
    with pytest.raises(agent_settings.SettingsError):
        agent_settings.load(tmp_path)


def test_embedded_agent_gets_a_copy_of_the_manager_identity(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    manager_cert, manager_key = ca.issue_keypair("mgr1", pki.ROLE_MANAGER, validity_days=365)
    tls.save_credentials(tmp_path / "certs", ca.cert_pem, manager_cert, manager_key)
    agent_dir = embedded.prepare(tmp_path, "mgr1", ["127.0.0.1:4242"])
    found = joining.stored_identity(agent_dir)
    assert found is not None and (found.node_id, found.role) == ("mgr1", "manager")
    assert not (agent_dir / "certs").is_symlink()
    # A certificate the agent renewed later than the manager's is kept across restarts.
    renewed, renewed_key = ca.issue_keypair("mgr1", pki.ROLE_MANAGER, validity_days=400)
    tls.save_credentials(agent_dir / "certs", ca.cert_pem, renewed, renewed_key)
    embedded.prepare(tmp_path, "mgr1", ["127.0.0.1:4242"])
    assert tls.load_credentials(agent_dir / "certs").cert_pem == renewed
    assert tls.load_credentials(tmp_path / "certs").cert_pem == manager_cert  # never touched
