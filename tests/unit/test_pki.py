"""Cluster PKI, join tokens and real mTLS over grpc."""

from __future__ import annotations

import base64
import datetime as dt
import os
import stat
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from warren import pki, tls
from warren.pki import CertificateAuthority, PkiError, TokenError


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster1")


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster2")


# ---------------------------------------------------------------------------------------------
# certificates


@pytest.mark.parametrize("role", sorted(pki.ROLES))
def test_issue_round_trips_identity(ca: CertificateAuthority, role: str) -> None:
    cert_pem = ca.issue(pki.make_csr(pki.generate_key()), "node-a1", role, validity_days=30)
    ident = pki.identity_of(cert_pem)
    assert (ident.node_id, ident.role, ident.cluster_id) == ("node-a1", role, "cluster1")
    now = dt.datetime.now(dt.UTC)
    assert now + dt.timedelta(days=29) < ident.not_after <= now + dt.timedelta(days=30, minutes=1)
    assert pki.verify_issued_by(cert_pem, ca.cert_pem)


def test_manager_cert_carries_tls_name_and_server_auth(ca: CertificateAuthority) -> None:
    cert_pem, key_pem = ca.issue_keypair("mgr1", pki.ROLE_MANAGER)
    cert = x509.load_pem_x509_certificate(cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sans == [pki.MANAGER_TLS_NAME, "mgr1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert pki.key_matches_cert(cert_pem, key_pem)

    worker = x509.load_pem_x509_certificate(ca.issue_keypair("w1", pki.ROLE_WORKER)[0])
    worker_eku = worker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(worker_eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]


def test_ca_ignores_subject_chosen_by_requester(ca: CertificateAuthority) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(pki.generate_key(), None)
    evil = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "some-manager"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "warren-manager"),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(evil).sign(key, hashes.SHA256())  # type: ignore[arg-type]
    cert_pem = ca.issue(csr.public_bytes(serialization.Encoding.PEM), "w2", pki.ROLE_WORKER)
    ident = pki.identity_of(cert_pem)
    assert (ident.node_id, ident.role) == ("w2", pki.ROLE_WORKER)


def test_csr_with_bad_signature_is_refused(ca: CertificateAuthority) -> None:
    csr = x509.load_pem_x509_csr(pki.make_csr(pki.generate_key()))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the signature's s integer
    body = base64.encodebytes(bytes(der)).decode()
    tampered = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n".encode()
    with pytest.raises(PkiError, match="signature"):
        ca.issue(tampered, "n1", pki.ROLE_WORKER)


@pytest.mark.parametrize(
    ("csr", "node_id", "role"),
    [
        (b"garbage", "n1", "worker"),
        (None, "n1", "root"),
        (None, "", "worker"),
        (None, "bad id", "worker"),
    ],
)
def test_issue_refuses_bad_input(ca: CertificateAuthority, csr: bytes | None, node_id: str, role: str) -> None:
    with pytest.raises(PkiError):
        ca.issue(csr if csr is not None else pki.make_csr(pki.generate_key()), node_id, role)


def test_cert_from_another_ca_fails_verification(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    foreign, _ = other_ca.issue_keypair("n1", pki.ROLE_WORKER)
    assert not pki.verify_issued_by(foreign, ca.cert_pem)
    assert not pki.verify_issued_by(b"not a cert", ca.cert_pem)
    assert pki.verify_issued_by(foreign, other_ca.cert_pem)


def test_ca_pem_round_trip(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    again = CertificateAuthority.from_pem(ca.cert_pem.decode(), ca.key_pem.decode())
    assert again.fingerprint == ca.fingerprint == pki.ca_fingerprint(ca.cert_pem)
    assert again.cluster_id == "cluster1"
    assert len(ca.fingerprint) == 64
    with pytest.raises(PkiError, match="does not match"):
        CertificateAuthority.from_pem(ca.cert_pem, other_ca.key_pem)
    leaf, leaf_key = ca.issue_keypair("n1", pki.ROLE_WORKER)
    with pytest.raises(PkiError, match="not a CA"):
        CertificateAuthority.from_pem(leaf, leaf_key)


def test_identity_of_rejects_garbage_and_is_cached(ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError):
        pki.identity_of(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(PkiError, match="role"):
        pki.identity_of(ca.cert_pem)  # the root has no OU role
    cert_pem, _ = ca.issue_keypair("n9", pki.ROLE_ADMIN)
    first = pki.identity_of(cert_pem)
    hits = pki.identity_of.cache_info().hits
    assert pki.identity_of(cert_pem) is first
    assert pki.identity_of.cache_info().hits == hits + 1


# ---------------------------------------------------------------------------------------------
# join tokens


def test_token_round_trip(ca: CertificateAuthority) -> None:
    secret = pki.new_token_secret()
    assert len(secret) >= 26 and secret.isalnum() and secret == secret.lower()
    token = pki.make_join_token(ca.fingerprint, secret)
    assert token.startswith("WRNTKN-1-")
    parsed = pki.parse_join_token(f"  {token}\n")
    assert (parsed.fingerprint, parsed.secret) == (ca.fingerprint, secret)
    assert secret not in repr(parsed)
    assert pki.token_matches(parsed.secret, secret)
    assert not pki.token_matches(parsed.secret, pki.new_token_secret())
    assert not pki.token_matches("", "")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "SWMTKN-1-" + "a" * 64 + "-" + "b" * 26,  # wrong prefix
        "WRNTKN-2-" + "a" * 64 + "-" + "b" * 26,  # unknown version
        "WRNTKN-1-" + "a" * 63 + "-" + "b" * 26,  # fingerprint too short
        "WRNTKN-1-" + "a" * 65 + "-" + "b" * 26,  # fingerprint too long
        "WRNTKN-1-" + "g" * 64 + "-" + "b" * 26,  # not hex
        "WRNTKN-1-" + "a" * 64 + "-",  # empty secret
        "WRNTKN-1-" + "a" * 64,  # no secret at all
        "WRNTKN-1-" + "a" * 64 + "-" + "b" * 25,  # secret too short
        "WRNTKN-1-" + "a" * 64 + "-" + "B" * 26,  # secret outside [a-z0-9]
        "WRNTKN-1-" + "a" * 64 + "-" + "b" * 26 + "-x",  # trailing junk
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError, match="join token is malformed") as info:
        pki.parse_join_token(token)
    assert "WRNTKN-1-<ca-hash>-<secret>" in str(info.value)
    assert "b" * 26 not in str(info.value)  # never echo the secret


def test_make_join_token_validates_parts() -> None:
    with pytest.raises(TokenError):
        pki.make_join_token("abc", pki.new_token_secret())
    with pytest.raises(TokenError):
        pki.make_join_token("a" * 64, "")


# ---------------------------------------------------------------------------------------------
# credential files


def test_credentials_files_round_trip(tmp_path, ca: CertificateAuthority) -> None:
    cert_pem, key_pem = ca.issue_keypair("n1", pki.ROLE_WORKER)
    target = tmp_path / "creds"
    tls.save_credentials(target, ca.cert_pem, cert_pem, key_pem)
    assert stat.S_IMODE(os.stat(target / "key.pem").st_mode) == 0o600
    assert tls.load_credentials(target) == (ca.cert_pem, cert_pem, key_pem)
    assert sorted(os.listdir(target)) == ["ca.pem", "cert.pem", "key.pem"]  # no temp files left

    _, other_key = ca.issue_keypair("n2", pki.ROLE_WORKER)
    (target / "key.pem").write_bytes(other_key)
    with pytest.raises(PkiError, match="does not match"):
        tls.load_credentials(target)

    (target / "cert.pem").unlink()
    with pytest.raises(FileNotFoundError, match=r"cert\.pem"):
        tls.load_credentials(target)


# ---------------------------------------------------------------------------------------------
# real mTLS over grpc


class _RecordingHealth(health.HealthServicer):
    """The standard health service, remembering who called."""

    def __init__(self) -> None:
        super().__init__()
        self.callers: list[pki.Identity | None] = []

    def Check(self, request, context):
        self.callers.append(tls.peer_identity(context))
        return super().Check(request, context)


@pytest.fixture(scope="module")
def manager(ca: CertificateAuthority) -> Iterator[tuple[int, _RecordingHealth]]:
    cert_pem, key_pem = ca.issue_keypair("mgr1", pki.ROLE_MANAGER)
    servicer = _RecordingHealth()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=tls.server_options())
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(ca.cert_pem, cert_pem, key_pem))
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(grace=None).wait()


def _check(port: int, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> health_pb2.HealthCheckResponse:
    creds = tls.channel_credentials(ca_pem, cert_pem, key_pem)
    # Dial by IP: the manager cert names no address, only MANAGER_TLS_NAME, which the options verify.
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=tls.channel_options()) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


def test_mtls_admin_is_identified(ca: CertificateAuthority, manager: tuple[int, _RecordingHealth]) -> None:
    port, servicer = manager
    cert_pem, key_pem = ca.issue_keypair("admin-1", pki.ROLE_ADMIN)
    reply = _check(port, ca.cert_pem, cert_pem, key_pem)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    caller = servicer.callers[-1]
    assert caller is not None
    assert (caller.node_id, caller.role, caller.cluster_id) == ("admin-1", pki.ROLE_ADMIN, "cluster1")


def test_mtls_refuses_client_cert_from_another_ca(
    ca: CertificateAuthority, other_ca: CertificateAuthority, manager: tuple[int, _RecordingHealth]
) -> None:
    port, servicer = manager
    calls_before = len(servicer.callers)
    cert_pem, key_pem = other_ca.issue_keypair("admin-1", pki.ROLE_ADMIN)
    with pytest.raises(grpc.RpcError) as info:
        _check(port, ca.cert_pem, cert_pem, key_pem)  # trusts the right CA, presents a foreign cert
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(servicer.callers) == calls_before


def test_client_refuses_server_without_manager_cert(ca: CertificateAuthority) -> None:
    """A worker cert (no MANAGER_TLS_NAME, no serverAuth) cannot impersonate a manager."""
    cert_pem, key_pem = ca.issue_keypair("w1", pki.ROLE_WORKER)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(ca.cert_pem, cert_pem, key_pem))
    server.start()
    try:
        admin_cert, admin_key = ca.issue_keypair("admin-1", pki.ROLE_ADMIN)
        with pytest.raises(grpc.RpcError) as info:
            _check(port, ca.cert_pem, admin_cert, admin_key)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=None).wait()


def test_tls_uses_the_manager_name_pki_puts_in_certificates() -> None:
    from warren import tls

    assert tls.MANAGER_TLS_NAME == pki.MANAGER_TLS_NAME
