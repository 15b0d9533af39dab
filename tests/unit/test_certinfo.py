"""warren.certinfo: what a running agent reads from its credentials without `cryptography`,
cross-checked against `cryptography` itself; and the agent's re-execution that sheds it."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.waiting import async_wait_for
from warren import certinfo, pki, tls
from warren.agent import daemon
from warren.agent.options import AgentOptions, options_argv
from warren.agent.session import ManagerList, Session
from warren.agent.status import StatusQueue


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority.create("c1")


def _self_signed(not_before: dt.datetime, not_after: dt.datetime, *, version_1: bool = False) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    cert = builder.sign(key, hashes.SHA256())
    if version_1:  # cryptography only writes v3; strip the [0] version field by hand
        der = cert.public_bytes(serialization.Encoding.DER)
        assert der[4:6] == b"\x30\x82" and der[8:13] == b"\xa0\x03\x02\x01\x02"
        tbs_len = int.from_bytes(der[6:8], "big") - 5
        tbs = b"\x30\x82" + tbs_len.to_bytes(2, "big") + der[13 : 8 + tbs_len + 5]
        body = tbs + der[8 + tbs_len + 5 :]
        der = b"\x30\x82" + len(body).to_bytes(2, "big") + body
        return b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("role", sorted(pki.ROLES))
def test_validity_matches_cryptography_for_issued_certs(ca: pki.CertificateAuthority, role: str) -> None:
    cert, _ = ca.issue_keypair("node1", role, validity_days=90)
    assert certinfo.validity(cert) == pki.validity(cert)
    assert certinfo.validity(cert.decode()) == pki.validity(cert)
    assert certinfo.validity(ca.cert_pem) == pki.validity(ca.cert_pem)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (dt.datetime(1999, 12, 31, 23, 59, 58), dt.datetime(2049, 12, 31, 23, 59, 59)),  # UTCTime both
        (dt.datetime(2024, 2, 29, 12, 0, 0), dt.datetime(2051, 1, 1, 0, 0, 1)),  # GeneralizedTime after 2049
    ],
)
def test_validity_reads_utctime_and_generalizedtime(before: dt.datetime, after: dt.datetime) -> None:
    before, after = before.replace(tzinfo=dt.UTC), after.replace(tzinfo=dt.UTC)
    assert certinfo.validity(_self_signed(before, after)) == (before, after)
    assert certinfo.validity(_self_signed(before, after, version_1=True)) == (before, after)


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
        b"junk",
    ],
)
def test_malformed_certificates_raise_pki_error(pem: bytes) -> None:
    with pytest.raises(pki.PkiError):
        certinfo.validity(pem)


def test_pki_error_is_one_class() -> None:
    assert pki.PkiError is certinfo.PkiError


def test_renewal_due_in_the_last_third(ca: pki.CertificateAuthority) -> None:
    cert, _ = ca.issue_keypair("node1", pki.ROLE_WORKER, validity_days=90)
    not_before, not_after = pki.validity(cert)
    assert not certinfo.renewal_due(cert, not_before + dt.timedelta(days=59))
    assert certinfo.renewal_due(cert, not_after - dt.timedelta(days=29))


def test_key_match_is_checked_by_openssl(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    cert, key = ca.issue_keypair("node1", pki.ROLE_WORKER)
    _, other_key = ca.issue_keypair("node2", pki.ROLE_WORKER)
    tls.save_credentials(tmp_path / "ok", ca.cert_pem, cert, key)
    assert tls.load_credentials(tmp_path / "ok").cert_pem == cert
    tls.save_credentials(tmp_path / "mixed", ca.cert_pem, cert, other_key)
    assert not certinfo.key_matches_files(tmp_path / "mixed" / "cert.pem", tmp_path / "mixed" / "key.pem")
    with pytest.raises(pki.PkiError, match="does not match"):
        tls.load_credentials(tmp_path / "mixed")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tls.save_credentials(tmp_path / "rsa", ca.cert_pem, cert, rsa_key)
    assert not certinfo.key_matches_files(tmp_path / "rsa" / "cert.pem", tmp_path / "rsa" / "key.pem")
    tls.save_credentials(tmp_path / "junk", ca.cert_pem, b"junk", key)
    with pytest.raises(pki.PkiError):
        tls.load_credentials(tmp_path / "junk")


def test_a_running_agent_imports_no_cryptography(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    """What the agent process loads to start, open sessions and check renewal."""
    cert, key = ca.issue_keypair("node1", pki.ROLE_WORKER)
    tls.save_credentials(tmp_path / "certs", ca.cert_pem, cert, key)
    code = (
        "import sys; from pathlib import Path\n"
        "import warren.agent.daemon, warren.agent.session, warren.agent.metrics, warren.node.worker\n"
        "import warren.runtime.containerd.driver, warren.runtime.exec\n"
        "from warren import certinfo, tls\n"
        f"c = tls.load_credentials(Path({str(tmp_path / 'certs')!r}))\n"
        "assert not certinfo.renewal_due(c.cert_pem)\n"
        "print(sorted(m for m in sys.modules if m.startswith('cryptography')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_options_survive_the_re_execution() -> None:
    options = AgentOptions(
        data_dir=Path("/tmp/d"),
        managers=["m1:4242", "m2:4242"],
        runtime="exec",
        containerd_socket="/s.sock",
        hostname="h1",
        labels={"zone": "a", "k": "v=w"},
        advertise_addr="10.0.0.1",
        insecure_registries=("r:5000",),
        metrics_addr="127.0.0.1:9000",
    )
    seen: list[AgentOptions] = []
    orig = daemon.run
    try:
        daemon.run = lambda opts: seen.append(opts) or 0  # type: ignore[assignment]
        assert daemon.main(options_argv(options)) == 0
    finally:
        daemon.run = orig  # type: ignore[assignment]
    assert seen == [options]
    defaults = AgentOptions(data_dir=Path("/d"), managers=[])
    seen.clear()
    daemon.run = lambda opts: seen.append(opts) or 0  # type: ignore[assignment]
    try:
        daemon.main(options_argv(defaults))
    finally:
        daemon.run = orig  # type: ignore[assignment]
    assert seen == [defaults]


class _Channel:
    pass


def test_the_session_renews_only_when_due(
    ca: pki.CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = ca.issue_keypair("node1", pki.ROLE_WORKER)
    tls.save_credentials(tmp_path / "certs", ca.cert_pem, cert, key)
    calls: list[Path] = []

    async def renew(channel: object, data_dir: Path, **options: object) -> bool:
        calls.append(data_dir)
        return True

    from warren.agent import join

    monkeypatch.setattr(join, "renew_if_due", renew)
    s = Session(tmp_path / "certs", ManagerList(), lambda: None, None, StatusQueue(), renewal_check=0.01)  # type: ignore[arg-type]

    checks: list[bool] = []
    real_due = certinfo.renewal_due

    def counted_due(pem: bytes) -> bool:
        checks.append(real_due(pem))
        return checks[-1]

    async def run_until(predicate: Callable[[], object], message: str) -> None:
        job = asyncio.ensure_future(s._renew(_Channel()))  # type: ignore[arg-type]
        try:
            await async_wait_for(predicate, message=message)
        finally:
            job.cancel()

    monkeypatch.setattr(certinfo, "renewal_due", counted_due)
    asyncio.run(run_until(lambda: len(checks) >= 3, "three renewal checks"))
    assert calls == [] and not any(checks)
    monkeypatch.setattr(certinfo, "renewal_due", lambda pem: True)
    asyncio.run(run_until(lambda: calls, "a renewal"))
    assert set(calls) == {tmp_path}
