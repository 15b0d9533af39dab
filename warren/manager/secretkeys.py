"""The key hierarchy that keeps secrets encrypted at rest (ADR 38).

    root  = HKDF(the Raft secret)            every manager's data directory (autolock: the
                                             operator's unlock key instead)
    KEK   = 32 random bytes, wrapped by root  ClusterInfo.kek_wrapped (replicated)
    DEK   = 32 random bytes, wrapped by KEK   ClusterInfo.dek_wrapped (replicated)
    value = AES-256-GCM(DEK), bound to the secret's id   Secret.sealed (replicated)

So the Raft log, its snapshots and LMDB hold only sealed values and wrapped keys. Autolock
changes the root alone: it re-wraps the one KEK, and nothing under it changes. Every layer is
AES-256-GCM with a fresh 96-bit nonce and associated data naming the layer (and the secret),
so a wrapped key or a sealed value moved elsewhere does not open.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from warren.model import ClusterInfo

_ROOT_INFO = b"warren key root v1"
_KEK_AD = b"warren kek v1"
_DEK_AD = b"warren dek v1"
_VALUE_AD = b"warren secret v1 "
_KEK_PREFIX = "warren-kek-v1:"
_DEK_PREFIX = "warren-dek-v1:"
_SEALED_VERSION = b"\x01"
_NONCE = 12


class SecretKeyError(Exception):
    """A key or value does not open: the wrong root (Raft secret), or damaged data."""


def _seal(key: bytes, plain: bytes, ad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plain, ad)


def _open(key: bytes, sealed: bytes, ad: bytes) -> bytes:
    if len(sealed) < _NONCE + 16:
        raise SecretKeyError("too short to be sealed data")
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], ad)
    except InvalidTag:
        raise SecretKeyError("authentication failed (wrong key, or damaged data)") from None


def root_key(raft_secret: str) -> bytes:
    if not raft_secret:
        raise SecretKeyError("no Raft secret to derive the root key from")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_ROOT_INFO).derive(raft_secret.encode())


def _wrap(prefix: str, key: bytes, plain: bytes, ad: bytes) -> str:
    return prefix + base64.b64encode(_seal(key, plain, ad)).decode()


def _unwrap(prefix: str, key: bytes, wrapped: str, ad: bytes) -> bytes:
    if not wrapped.startswith(prefix):
        raise SecretKeyError(f"not a wrapped key ({prefix.rstrip(':')} expected)")
    try:
        raw = base64.b64decode(wrapped[len(prefix) :], validate=True)
    except ValueError:
        raise SecretKeyError("a wrapped key is not base64") from None
    return _open(key, raw, ad)


def new_key_pair(root: bytes) -> tuple[str, str]:
    """A fresh (KEK wrapped by `root`, DEK wrapped by that KEK)."""
    kek, dek = AESGCM.generate_key(256), AESGCM.generate_key(256)
    return _wrap(_KEK_PREFIX, root, kek, _KEK_AD), _wrap(_DEK_PREFIX, kek, dek, _DEK_AD)


def rewrap_kek(kek_wrapped: str, old_root: bytes, new_root: bytes) -> str:
    """The KEK under another root: all autolock (or its key rotation) has to change."""
    return _wrap(_KEK_PREFIX, new_root, _unwrap(_KEK_PREFIX, old_root, kek_wrapped, _KEK_AD), _KEK_AD)


def open_kek(root: bytes, kek_wrapped: str) -> bytes:
    """The KEK itself: autolock seals the CA key and a manager's local files with it (ADR 44)."""
    return _unwrap(_KEK_PREFIX, root, kek_wrapped, _KEK_AD)


def wrap_kek(root: bytes, kek: bytes) -> str:
    return _wrap(_KEK_PREFIX, root, kek, _KEK_AD)


def data_key(root: bytes, kek_wrapped: str, dek_wrapped: str) -> bytes:
    kek = _unwrap(_KEK_PREFIX, root, kek_wrapped, _KEK_AD)
    return _unwrap(_DEK_PREFIX, kek, dek_wrapped, _DEK_AD)


def seal_value(dek: bytes, secret_id: str, plain: bytes) -> bytes:
    return _SEALED_VERSION + _seal(dek, plain, _VALUE_AD + secret_id.encode())


def open_value(dek: bytes, secret_id: str, sealed: bytes) -> bytes:
    if not sealed.startswith(_SEALED_VERSION):
        raise SecretKeyError("unknown sealed value version")
    return _open(dek, sealed[1:], _VALUE_AD + secret_id.encode())


class KeyRing:
    """A manager's access to the data key: unwrapped on first use and kept in memory only,
    re-read whenever the cluster's wrapped key changes."""

    def __init__(self, raft_secret: str) -> None:
        self.raft_secret = raft_secret
        self._root = root_key(raft_secret) if raft_secret else b""
        self._kek = b""
        self._wrapped = ""
        self._dek = b""

    def kek(self, cluster: ClusterInfo) -> bytes:
        """The KEK, kept once opened: it never changes, and under autolock (ADR 44) the Raft
        root no longer opens it, so a manager that held it keeps working through a lock."""
        if not self._kek:
            if not self._root:
                raise SecretKeyError("this manager has no Raft secret: it cannot open secrets")
            self._kek = open_kek(self._root, cluster.kek_wrapped)
        return self._kek

    def holds_kek(self, cluster: ClusterInfo) -> bool:
        """Whether this ring opens the cluster's keys now: false for a manager that started
        while the cluster was locked and has not been given the unlock key (ADR 44)."""
        try:
            self.kek(cluster)
        except SecretKeyError:
            return False
        return True

    def hold_kek(self, kek: bytes) -> None:
        """The KEK a locked manager got from the operator's unlock key."""
        self._kek = kek

    def new_key_pair(self) -> tuple[str, str]:
        if not self._root:
            raise SecretKeyError("this manager has no Raft secret: it cannot create keys")
        return new_key_pair(self._root)

    def data_key(self, cluster: ClusterInfo) -> bytes:
        if not cluster.dek_wrapped:
            raise SecretKeyError("the cluster has no data key yet")
        if cluster.dek_wrapped != self._wrapped:
            self._dek = _unwrap(_DEK_PREFIX, self.kek(cluster), cluster.dek_wrapped, _DEK_AD)
            self._wrapped = cluster.dek_wrapped
        return self._dek

    def seal(self, cluster: ClusterInfo, secret_id: str, plain: bytes) -> bytes:
        return seal_value(self.data_key(cluster), secret_id, plain)

    def open(self, cluster: ClusterInfo, secret_id: str, sealed: bytes) -> bytes:
        return open_value(self.data_key(cluster), secret_id, sealed)
