"""A manager's Raft secret and TLS key sealed on disk by the KEK (ADR 44)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from warren import datadir, pki, tls
from warren.manager import autolock, lockedfiles

RAFT_SECRET = "0123abcd" * 8


@pytest.fixture
def data(tmp_path: Path) -> Path:
    layout = datadir.ManagerDir(tmp_path)
    layout.certs.mkdir()
    datadir.write_atomic(layout.raft_secret, RAFT_SECRET)
    datadir.write_atomic(layout.certs / tls.KEY_FILE, pki.generate_key())
    return tmp_path


def _kek() -> bytes:
    return os.urandom(32)


def test_sealed_files_hold_no_plain_secret_and_open_with_the_kek(data: Path) -> None:
    key_pem = (data / "certs" / tls.KEY_FILE).read_bytes()
    kek = _kek()
    assert not lockedfiles.is_sealed(data)
    lockedfiles.seal(data, kek)
    lockedfiles.seal(data, kek)  # idempotent: a retry after a crash does not seal twice

    assert lockedfiles.is_sealed(data)
    on_disk = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    assert RAFT_SECRET.encode() not in on_disk and b"PRIVATE KEY" not in on_disk
    assert all(p.stat().st_mode & 0o077 == 0 for p in data.rglob("*") if p.is_file())
    opened = lockedfiles.open_all(data, kek)
    assert opened == lockedfiles.ManagerSecrets(RAFT_SECRET, key_pem)


def test_a_wrong_kek_opens_nothing_and_changes_nothing(data: Path) -> None:
    lockedfiles.seal(data, _kek())
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    with pytest.raises(autolock.UnlockKeyError, match="wrong unlock key"):
        lockedfiles.unseal(data, _kek())
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before


def test_unseal_writes_the_plain_files_back(data: Path) -> None:
    key_pem = (data / "certs" / tls.KEY_FILE).read_bytes()
    kek = _kek()
    lockedfiles.seal(data, kek)
    lockedfiles.unseal(data, kek)
    assert not lockedfiles.is_sealed(data)
    assert (data / "raft.secret").read_text() == RAFT_SECRET
    assert (data / "certs" / tls.KEY_FILE).read_bytes() == key_pem
    assert lockedfiles.open_all(data, _kek()).raft_secret == RAFT_SECRET  # plain files need no key
