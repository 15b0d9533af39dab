"""Fixtures shared by several unit test files: `creds`, the credentials of one cluster CA for an
agent (a directory) and for a manager serving it, used by the agent session tests (its logs too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from warren import pki, tls


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tls.Credentials]:
    """A worker's credentials directory and the manager's server credentials, one cluster CA."""
    root = tmp_path_factory.mktemp("pki")
    ca = pki.CertificateAuthority.create("testcluster")
    cert, key = ca.issue_keypair("worker1", pki.ROLE_WORKER)
    tls.save_credentials(root / "worker", ca.cert_pem, cert, key)
    mcert, mkey = ca.issue_keypair("manager1", pki.ROLE_MANAGER)
    return root / "worker", tls.Credentials(ca.cert_pem, mcert, mkey)
