"""The cluster CA's private key as the replicated state holds it: wrapped (ADR 24).

The key must reach every manager, so it travels in the Raft log and lives in the state, the
journal and Raft snapshots, and LMDB keeps stale copies in freed pages until they are reused.
None of those copies is the plain key: it is sealed with AES-256-GCM under a key derived (HKDF)
from the Raft secret, which every manager already holds to talk Raft at all. Reading `db/` or
a snapshot alone therefore no longer yields the CA key; reading the whole data directory
still does, unless autolock (ADR 44) is on: then an operator-held key seals them instead.
Clusters created before this keep a plain PEM, which `unwrap` still reads; `cluster ca
--rotate` replaces it with a wrapped one.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from warren import pki
from warren.model import ClusterInfo

WRAPPED_PREFIX = "warren-wrapped-v1:"
LOCKED_PREFIX = "warren-locked-v1:"  # sealed by the KEK under autolock (autolock.py, ADR 44)
_INFO = b"warren ca key wrap v1"
_NONCE_BYTES = 12


class CAKeyError(pki.PkiError):
    """The stored CA key cannot be unwrapped (wrong Raft secret, or damaged)."""


def _aead(secret: str) -> AESGCM:
    if not secret:
        raise CAKeyError("no Raft secret to unwrap the CA key with")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret.encode())
    return AESGCM(key)


def wrap(key_pem: bytes, secret: str) -> str:
    """The CA key sealed for the replicated state (authenticated: a damaged copy is refused)."""
    nonce = os.urandom(_NONCE_BYTES)
    sealed = _aead(secret).encrypt(nonce, key_pem, _INFO)
    return WRAPPED_PREFIX + base64.b64encode(nonce + sealed).decode()


def unwrap(stored: str, secret: str) -> bytes:
    """The CA key PEM from its stored form (a plain PEM from before wrapping is returned as is)."""
    if stored.startswith(LOCKED_PREFIX):
        raise CAKeyError("the CA key is locked (autolock): this manager does not hold the KEK")
    if not stored.startswith(WRAPPED_PREFIX):
        return stored.encode()
    try:
        raw = base64.b64decode(stored[len(WRAPPED_PREFIX) :], validate=True)
        return _aead(secret).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _INFO)
    except (ValueError, InvalidTag) as exc:
        raise CAKeyError("the CA key in the state cannot be unwrapped with this manager's Raft secret") from exc


def is_wrapped(stored: str) -> bool:
    return stored.startswith(WRAPPED_PREFIX)


def trust_bundle(cluster: ClusterInfo) -> bytes:
    """The roots every party trusts now: the current one, and the previous one during a rotation."""
    return pki.bundle(cluster.ca_cert_pem, cluster.ca_previous_cert_pem)


def trusted_key_ids(cluster: ClusterInfo) -> frozenset[str]:
    ids = {pki.ca_key_id(cluster.ca_cert_pem)}
    if cluster.ca_previous_cert_pem:
        ids.add(pki.ca_key_id(cluster.ca_previous_cert_pem))
    return frozenset(ids)


class Authority:
    """The CertificateAuthority of the current ClusterInfo, unwrapped and parsed once per root."""

    def __init__(self, secret: str, open_locked: Callable[[ClusterInfo], bytes] | None = None) -> None:
        self._secret = secret
        self._open_locked = open_locked  # under autolock (ADR 44): the KEK this manager holds
        self._pem = ""
        self._ca: pki.CertificateAuthority | None = None

    def get(self, cluster: ClusterInfo) -> pki.CertificateAuthority:
        if self._ca is None or self._pem != cluster.ca_cert_pem:
            if self._open_locked is not None and cluster.ca_key_pem.startswith(LOCKED_PREFIX):
                key = self._open_locked(cluster)
            else:
                key = unwrap(cluster.ca_key_pem, self._secret)
            self._ca = pki.CertificateAuthority.from_pem(cluster.ca_cert_pem, key)
            self._pem = cluster.ca_cert_pem
        return self._ca
