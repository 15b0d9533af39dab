"""A manager's own secrets on disk under autolock (ADR 44): its Raft secret and TLS key, and
the key of its embedded agent (agent/certs/key.pem, when it has one): the agent's certificate is
a manager-role certificate for the same node, so its key must not stay plain either.

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


def agent_key_file(data: Path) -> Path:
    """The embedded agent's key (in its data directory, <data>/agent)."""
    return datadir.ManagerDir(data).agent.certs / tls.KEY_FILE


def _files(data: Path) -> dict[str, Path]:
    layout = datadir.ManagerDir(data)
    return {"raft.secret": layout.raft_secret, autolock.TLS_KEY_PURPOSE: layout.certs / tls.KEY_FILE}


def _sealable(data: Path) -> dict[str, Path]:
    """Every file sealed while locked: the manager's own, and the embedded agent's key if any
    (a manager started with --manager-only, or before its agent's first start, has none)."""
    files = _files(data)
    if agent_key_file(data).exists():
        files[autolock.AGENT_KEY_PURPOSE] = agent_key_file(data)
    return files


def is_sealed(data: Path) -> bool:
    """Whether this manager's Raft secret is sealed: it cannot start Raft before an unlock."""
    return autolock.is_sealed_local(_files(data)["raft.secret"].read_text())


def any_sealed(data: Path) -> bool:
    """Whether any file is sealed (a crash part-way through a seal leaves some of each)."""
    return any(autolock.is_sealed_local(path.read_text()) for path in _sealable(data).values())


def seal(data: Path, kek: bytes, agent_key: bool = True) -> bool:
    """Seal what is still plain (`agent_key`: the embedded agent's key too, unless the manager
    was demoted); True if a file was sealed now."""
    sealed = False
    with FILES_LOCK:
        for purpose, path in (_sealable(data) if agent_key else _files(data)).items():
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
        unseal_agent_key(data, kek)
        datadir.write_atomic(files["raft.secret"], opened.raft_secret.encode())
        datadir.write_atomic(files[autolock.TLS_KEY_PURPOSE], opened.tls_key_pem)


def unseal_agent_key(data: Path, kek: bytes) -> None:
    """Write the embedded agent's key plain again: when autolock is turned off, and when this
    manager is demoted (its agent then runs on its own, as `warren worker start`, with no KEK).
    Callers hold FILES_LOCK."""
    path = agent_key_file(data)
    if path.exists() and autolock.is_sealed_local(stored := path.read_text()):
        datadir.write_atomic(path, autolock.open_local(kek, autolock.AGENT_KEY_PURPOSE, stored))


def is_manager_key_sealed(data: Path) -> bool:
    """Whether this manager's TLS key is sealed: a key written beside it (the embedded agent's
    renewal) is written sealed too. Callers hold FILES_LOCK, so that no seal or unseal runs between
    this look and their write."""
    return autolock.is_sealed_local(_files(data)[autolock.TLS_KEY_PURPOSE].read_text(errors="replace"))
