"""A manager's own secrets on disk under autolock (ADR 44): its Raft secret and TLS key.

Sealed by the KEK when the cluster locks, opened with the KEK at a locked start, written back
plain when autolock is turned off. Each step is idempotent and replaces a file atomically, so a
crash part-way leaves every file whole, either plain or sealed, and a retry finishes the job.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from warren import datadir, tls
from warren.manager import autolock

# Held while sealing, unsealing, or writing a renewed TLS key (certificates.save_own): a renewal
# racing a seal could otherwise leave the old key sealed beside the new certificate.
FILES_LOCK = threading.Lock()


@dataclass(frozen=True)
class ManagerSecrets:
    raft_secret: str
    tls_key_pem: bytes


def _files(data: Path) -> dict[str, Path]:
    layout = datadir.ManagerDir(data)
    return {"raft.secret": layout.raft_secret, autolock.TLS_KEY_PURPOSE: layout.certs / tls.KEY_FILE}


def is_sealed(data: Path) -> bool:
    """Whether this manager's Raft secret is sealed: it cannot start Raft before an unlock."""
    return autolock.is_sealed_local(_files(data)["raft.secret"].read_text())


def any_sealed(data: Path) -> bool:
    """Whether either file is sealed (a crash part-way through a seal leaves one of each)."""
    return any(autolock.is_sealed_local(path.read_text()) for path in _files(data).values())


def seal(data: Path, kek: bytes) -> bool:
    """Seal what is still plain; True if a file was sealed now."""
    sealed = False
    with FILES_LOCK:
        for purpose, path in _files(data).items():
            stored = path.read_text()
            if not autolock.is_sealed_local(stored):
                datadir.write_atomic(path, autolock.seal_local(kek, purpose, stored.encode()))
                sealed = True
    return sealed


def open_all(data: Path, kek: bytes) -> ManagerSecrets:
    """The files' plain contents, sealed or not; a wrong KEK raises UnlockKeyError."""
    plain = {}
    for purpose, path in _files(data).items():
        stored = path.read_text()
        sealed = autolock.is_sealed_local(stored)
        plain[purpose] = autolock.open_local(kek, purpose, stored) if sealed else stored.encode()
    return ManagerSecrets(plain["raft.secret"].decode().strip(), plain[autolock.TLS_KEY_PURPOSE])


def unseal(data: Path, kek: bytes) -> None:
    with FILES_LOCK:
        opened = open_all(data, kek)
        files = _files(data)
        datadir.write_atomic(files["raft.secret"], opened.raft_secret.encode())
        datadir.write_atomic(files[autolock.TLS_KEY_PURPOSE], opened.tls_key_pem)
