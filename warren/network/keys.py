"""WireGuard keys (ADR 17): X25519 pairs, their base64/hex forms, and the node's key files.

Apart from the device adapter (`wireguard`), so that a manager or an agent can make and read
keys without importing pyroute2; `cryptography` is imported only to make or check a key.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

KEY_LEN = 32


class WireGuardError(RuntimeError):
    """The device could not be started, read or configured; the message says which and why."""


def generate_private_key() -> str:
    """A new X25519 private key, base64 (as `wg genkey` prints it)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()


def public_key_of(private_key: str) -> str:
    """The base64 public key of a base64 private key (`wg pubkey`)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = X25519PrivateKey.from_private_bytes(_raw(private_key))
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def _raw(key_b64: str) -> bytes:
    try:
        raw = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        raise WireGuardError("a WireGuard key is not valid base64") from None
    if len(raw) != KEY_LEN:
        raise WireGuardError(f"a WireGuard key must be {KEY_LEN} bytes, not {len(raw)}")
    return raw


def b64_to_hex(key_b64: str) -> str:
    return _raw(key_b64).hex()


def hex_to_b64(key_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(key_hex)).decode()


def write_key_file(path: Path, private_key: str) -> None:
    """Write a private key readable by root only, atomically (never a half-written key)."""
    _raw(private_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private_key + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


KEYS_DIR = "wireguard"
PRIVATE_KEY_FILE = "private.key"
PUBLIC_KEY_FILE = "public.key"


def ensure_node_keys(data_dir: Path) -> str:
    """This node's key pair in `data_dir`/wireguard, made on first use; returns the public key.
    The private key file is 0600 and never leaves the node; the public key is written beside it
    so that the agent can publish it without loading `cryptography`."""
    directory = data_dir / KEYS_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public = ensure_key_file(directory / PRIVATE_KEY_FILE)
    public_path = directory / PUBLIC_KEY_FILE
    if not public_path.exists() or public_path.read_text().strip() != public:
        tmp = public_path.with_name(PUBLIC_KEY_FILE + ".tmp")
        tmp.write_text(public + "\n")
        tmp.replace(public_path)
    return public


def read_key_file(path: Path | str) -> str:
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise WireGuardError(f"cannot read the WireGuard private key {path}: {exc.strerror}") from None
    _raw(key)
    return key


def ensure_key_file(path: Path) -> str:
    """The node's key file, made on first use; returns the public key (the one to publish)."""
    if not path.exists():
        write_key_file(path, generate_private_key())
    return public_key_of(read_key_file(path))
