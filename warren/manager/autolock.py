"""Autolock's keys (ADR 44): the operator's unlock key replaces the Raft secret as the root.

Without autolock, everything sealed in the replicated state opens with a key derived from the
Raft secret, which sits in every manager's data directory: a reader of that directory reads the
CA key and every secret. With autolock on, the KEK moves under a key derived from the unlock
key, which no manager keeps on disk, and everything else goes under the KEK:

    KEK          ClusterInfo.kek_wrapped   wrapped by the unlock root; the DEK and every sealed
                                           value under it do not change. Locking a cluster that
                                           has no secrets yet makes the pair first.
    CA key       ClusterInfo.ca_key_pem    sealed by the KEK, marked LOCKED_PREFIX
    local files  raft.secret, TLS keys     sealed by the KEK (`seal_local`): the manager's key and
                                           its embedded agent's (also a manager-role certificate's)

The KEK never changes, so a rotation re-wraps one replicated field: no manager re-seals its
files, and a running manager that holds the KEK in memory keeps signing and opening secrets
through a lock or a rotation. A locked manager unwraps the KEK from its own LMDB copy of the
state with the key the operator gives (`unlocked_kek`, which refuses a wrong key), then opens
its files. Whether a cluster is locked is read from its CA key alone (`is_locked`).

The functions here are pure: they take the cluster's stored values and return the new ones,
which the caller proposes through Raft (`commands.SetRootedKeys`).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from warren.manager import cakey, secretkeys
from warren.model import ClusterInfo

UNLOCK_KEY_PREFIX = "WRNKEY-1-"
LOCKED_PREFIX = cakey.LOCKED_PREFIX
_KEY_BYTES = 32
_NONCE = 12
_ROOT_INFO = b"warren unlock root v1"
_CA_AD = b"warren locked ca key v1"
_LOCAL_AD = b"warren locked file v1 "
MANAGER_LOCKED = "this manager is locked: run warren cluster unlock"
_WRONG_KEY = "wrong unlock key: it does not open this cluster's keys"
# What a locked manager adds to a wrong key: it opens with the key in force when it stopped.
ROTATION_HINT = "a manager that was down during a rotation needs the key in force when it stopped"


class UnlockKeyError(secretkeys.SecretKeyError):
    """An unlock key that is malformed, or not the cluster's (one line, for the operator)."""


class ManagerLockedError(cakey.CAKeyError):
    """The cluster is locked and this manager does not hold the KEK: it cannot sign. A caller
    should try another manager (UNAVAILABLE), not take it for a broken CA."""


@dataclass(frozen=True)
class RootedKeys:
    """The cluster's root-wrapped values: what autolock on, off or rotate replaces."""

    kek_wrapped: str
    dek_wrapped: str
    ca_key_pem: str


def new_unlock_key() -> str:
    """256 random bits, printable once: the only copy is the one the operator keeps."""
    return UNLOCK_KEY_PREFIX + base64.urlsafe_b64encode(os.urandom(_KEY_BYTES)).decode().rstrip("=")


def parse_unlock_key(text: str) -> bytes:
    """The key's bytes; a typo or a truncated paste is refused with a one-line reason."""
    text = text.strip()
    if not text:
        raise UnlockKeyError("the unlock key is empty")
    if not text.startswith(UNLOCK_KEY_PREFIX):
        raise UnlockKeyError(f"not an unlock key (it starts with {UNLOCK_KEY_PREFIX})")
    body = text[len(UNLOCK_KEY_PREFIX) :]
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise UnlockKeyError("the unlock key is damaged (not base64)") from None
    if len(raw) != _KEY_BYTES:
        raise UnlockKeyError("the unlock key is damaged (wrong length: truncated?)")
    return raw


def unlock_root(unlock_key: str) -> bytes:
    """The root key under autolock. The unlock key is already 256 random bits: HKDF (not a
    slow password hash) only separates this use from any other."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_ROOT_INFO).derive(parse_unlock_key(unlock_key))


def is_locked(cluster: ClusterInfo) -> bool:
    return cluster.ca_key_pem.startswith(LOCKED_PREFIX)


def _seal(root: bytes, plain: bytes, ad: bytes) -> str:
    nonce = os.urandom(_NONCE)
    return LOCKED_PREFIX + base64.b64encode(nonce + AESGCM(root).encrypt(nonce, plain, ad)).decode()


def _open(root: bytes, stored: str, ad: bytes, what: str) -> bytes:
    if not stored.startswith(LOCKED_PREFIX):
        raise UnlockKeyError(f"the {what} is not locked")
    try:
        raw = base64.b64decode(stored[len(LOCKED_PREFIX) :], validate=True)
        if len(raw) < _NONCE + 16:
            raise ValueError("too short")
        return AESGCM(root).decrypt(raw[:_NONCE], raw[_NONCE:], ad)
    except InvalidTag:
        raise UnlockKeyError(_WRONG_KEY) from None
    except (binascii.Error, ValueError):
        raise UnlockKeyError(f"the locked {what} is damaged") from None


def unlocked_kek(cluster: ClusterInfo, unlock_key: str) -> bytes:
    """The KEK of a locked cluster: what opens its CA key and a locked manager's local files.
    A wrong key is refused here, before anything changes."""
    if not is_locked(cluster):
        raise UnlockKeyError("autolock is off: there is nothing to unlock")
    try:
        return secretkeys.open_kek(unlock_root(unlock_key), cluster.kek_wrapped)
    except UnlockKeyError:
        raise
    except secretkeys.SecretKeyError:
        raise UnlockKeyError(_WRONG_KEY) from None


def ca_key(cluster: ClusterInfo, kek: bytes) -> bytes:
    """The CA key PEM of a locked cluster, opened by its KEK."""
    return _open(kek, cluster.ca_key_pem, _CA_AD, "CA key")


def authority(raft_secret: str, keyring: secretkeys.KeyRing) -> cakey.Authority:
    """The CA of the state, opened by the Raft secret, or while locked by the KEK `keyring` holds."""

    def open_locked(cluster: ClusterInfo) -> bytes:
        try:
            kek = keyring.kek(cluster)
        except secretkeys.SecretKeyError:
            raise ManagerLockedError(MANAGER_LOCKED) from None
        return ca_key(cluster, kek)

    return cakey.Authority(raft_secret, open_locked)


def seal_ca_key(kek: bytes, ca_pem: bytes) -> str:
    """A CA key for the state of a locked cluster (a CA rotation's new key, say)."""
    return _seal(kek, ca_pem, _CA_AD)


def lock(cluster: ClusterInfo, raft_secret: str, unlock_key: str) -> RootedKeys:
    """Autolock on: the KEK moves from the Raft-derived root to the unlock key's, and the CA key
    under the KEK (so managers that hold the KEK keep signing through a lock or a rotation)."""
    if is_locked(cluster):
        raise UnlockKeyError("autolock is already on")
    ca_pem = cakey.unwrap(cluster.ca_key_pem, raft_secret)
    new_root = unlock_root(unlock_key)
    if cluster.kek_wrapped:
        kek = secretkeys.open_kek(secretkeys.root_key(raft_secret), cluster.kek_wrapped)
        dek_wrapped = cluster.dek_wrapped
    else:  # no secrets yet: make the pair, as the first secret would
        kek_wrapped, dek_wrapped = secretkeys.new_key_pair(new_root)
        kek = secretkeys.open_kek(new_root, kek_wrapped)
    return RootedKeys(secretkeys.wrap_kek(new_root, kek), dek_wrapped, seal_ca_key(kek, ca_pem))


def unlock(cluster: ClusterInfo, raft_secret: str, unlock_key: str) -> RootedKeys:
    """Autolock off: back under the Raft-derived root (the CA key wrapped as in ADR 24)."""
    if not is_locked(cluster):
        raise UnlockKeyError("autolock is already off")
    return unlock_by_kek(cluster, raft_secret, unlocked_kek(cluster, unlock_key))


def unlock_by_kek(cluster: ClusterInfo, raft_secret: str, kek: bytes) -> RootedKeys:
    """Autolock off by a manager that holds the KEK (an unlocked leader: no key needed)."""
    if not is_locked(cluster):
        raise UnlockKeyError("autolock is already off")
    ca_pem = ca_key(cluster, kek)
    kek_wrapped = secretkeys.wrap_kek(secretkeys.root_key(raft_secret), kek)
    return RootedKeys(kek_wrapped, cluster.dek_wrapped, cakey.wrap(ca_pem, raft_secret))


def rotate(cluster: ClusterInfo, old_key: str, new_key: str) -> RootedKeys:
    """`cluster unlock-key --rotate`: the KEK under a new unlock key; nothing else changes."""
    return rotate_by_kek(cluster, unlocked_kek(cluster, old_key), new_key)


def rotate_by_kek(cluster: ClusterInfo, kek: bytes, new_key: str) -> RootedKeys:
    """A rotation by a manager that holds the KEK: the old key is not needed."""
    if not is_locked(cluster):
        raise UnlockKeyError("autolock is off: there is no unlock key to rotate")
    ca_key(cluster, kek)  # a KEK that is not this cluster's is refused before anything changes
    return RootedKeys(secretkeys.wrap_kek(unlock_root(new_key), kek), cluster.dek_wrapped, cluster.ca_key_pem)


def seal_local(kek: bytes, purpose: str, plain: bytes) -> str:
    """A manager-local file's content (the Raft secret, the TLS key) sealed by the KEK;
    `purpose` names the file, so one sealed file cannot stand in for another."""
    return _seal(kek, plain, _LOCAL_AD + purpose.encode())


def open_local(kek: bytes, purpose: str, stored: str) -> bytes:
    return _open(kek, stored.strip(), _LOCAL_AD + purpose.encode(), purpose)


def is_sealed_local(stored: str) -> bool:
    return stored.lstrip().startswith(LOCKED_PREFIX)


TLS_KEY_PURPOSE = "tls.key"
AGENT_KEY_PURPOSE = "agent/tls.key"  # the embedded agent's key (agent/certs/key.pem)


def open_tls_key(kek: bytes, stored: bytes, purpose: str = TLS_KEY_PURPOSE) -> bytes:
    """A manager's (or its embedded agent's) TLS key as it is on disk: sealed under autolock,
    else the plain PEM."""
    text = stored.decode(errors="replace")
    return open_local(kek, purpose, text) if is_sealed_local(text) else stored


def seal_tls_key_like(kek: bytes, current: bytes, new_key_pem: bytes) -> bytes:
    """A renewed TLS key stored as the current one is: sealed if it is, so that a renewal while
    locked never writes the key in plain text."""
    if is_sealed_local(current.decode(errors="replace")):
        return seal_local(kek, TLS_KEY_PURPOSE, new_key_pem).encode()
    return new_key_pem
