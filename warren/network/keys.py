"""WireGuard keys (ADR 17): X25519 pairs, their base64/hex forms, and the node's key files.

Apart from the device adapter (`wireguard`), so that a manager or an agent can make and read
keys without importing pyroute2; `cryptography` is imported only to make or check a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from warren import datadir

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
    datadir.write_atomic(path, private_key + "\n", datadir.PRIVATE)


KEYS_DIR = datadir.WIREGUARD_DIR
PRIVATE_KEY_FILE = "private.key"
PUBLIC_KEY_FILE = "public.key"
ACTIVE_FILE = "active"  # the epoch of the key in use; absent: epoch 0 (the key made at join)


@dataclass(frozen=True)
class NodeKey:
    epoch: int
    private_path: Path
    public_key: str


class KeyRing:
    """This node's WireGuard key pairs, one per rotation epoch (ADR 18), in `data_dir`/wireguard:
    epoch 0 (made at join) as `private.key` / `public.key`, later ones in `epoch-N/`, and the
    epoch in use in `active`. A rotation makes the next pair beside the active one (pending),
    the managers publish its public key, and the node switches to it (`activate`) once the mesh
    it receives carries it: one small file written atomically, so a crash leaves either the old
    key or the new one in use, never a mix. Reading needs no `cryptography`; making a pair does.
    """

    def __init__(self, data_dir: Path) -> None:
        self.directory = datadir.AgentDir(Path(data_dir)).wireguard
        self._public_of: dict[bytes, str] = {}  # sha256 of a private key we hold -> its public key

    def public_of(self, private_key: str) -> str:
        """The public key of `private_key` (base64), read from the pair that holds it, or as seen
        before (the device may still hold a key whose files `activate` deleted): the agent asks
        this of every device status, and deriving it would load `cryptography` (~7 MiB). Derived
        only for a key this ring never held."""
        digest = hashlib.sha256(private_key.encode()).digest()
        known = self._public_of.get(digest)
        if known is not None:
            return known
        for pair in (self.active(), self.pending()):
            if pair is not None and read_key_file(pair.private_path) == private_key:
                self._public_of[digest] = pair.public_key
                return pair.public_key
        return public_key_of(private_key)

    def _paths(self, epoch: int) -> tuple[Path, Path]:
        base = self.directory if epoch == 0 else self.directory / f"epoch-{epoch}"
        return base / PRIVATE_KEY_FILE, base / PUBLIC_KEY_FILE

    def active_epoch(self) -> int:
        try:
            return int((self.directory / ACTIVE_FILE).read_text().strip())
        except FileNotFoundError:
            return 0
        except ValueError:
            raise WireGuardError(f"{self.directory / ACTIVE_FILE} does not hold a key epoch") from None

    def active(self) -> NodeKey | None:
        """The pair in use, or None before the first one is made."""
        epoch = self.active_epoch()
        private, public = self._paths(epoch)
        try:
            return NodeKey(epoch, private, public.read_text().strip())
        except FileNotFoundError:
            return None

    def pending(self) -> NodeKey | None:
        """The newest complete pair above the active epoch: made for a rotation, not in use yet."""
        active = self.active_epoch()
        epochs = sorted(
            (int(d.name.removeprefix("epoch-")) for d in self._epoch_dirs()),
            reverse=True,
        )
        for epoch in epochs:
            if epoch <= active:
                break
            private, public = self._paths(epoch)
            if public.exists():  # written last: the pair is complete
                return NodeKey(epoch, private, public.read_text().strip())
        return None

    def _epoch_dirs(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [d for d in self.directory.iterdir() if d.is_dir() and d.name.removeprefix("epoch-").isdigit()]

    def create(self, epoch: int) -> str:
        """Make the pair of `epoch` (above the active one); returns its public key."""
        if epoch <= self.active_epoch():
            raise WireGuardError(f"key epoch {epoch} is not above the active one ({self.active_epoch()})")
        private, public = self._paths(epoch)
        if public.exists():  # made already (the public key is written last): never replace it
            return public.read_text().strip()
        private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_key_file(private, generate_private_key())
        datadir.write_atomic(public, public_key_of(read_key_file(private)) + "\n", datadir.PUBLIC)
        return public.read_text().strip()

    def activate(self, epoch: int) -> None:
        """Use the pair of `epoch` from now on, and delete the older ones."""
        _, public = self._paths(epoch)
        if not public.exists():
            raise WireGuardError(f"there is no key pair of epoch {epoch} in {self.directory}")
        datadir.write_atomic(self.directory / ACTIVE_FILE, f"{epoch}\n", datadir.PUBLIC)
        for directory in self._epoch_dirs():
            if int(directory.name.removeprefix("epoch-")) < epoch:
                shutil.rmtree(directory, ignore_errors=True)
        if epoch > 0:
            for path in self._paths(0):
                path.unlink(missing_ok=True)

    def ensure(self) -> str:
        """The active public key, making the first pair (epoch 0) if there is none yet."""
        active = self.active()
        if active is not None:
            return active.public_key
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        private, public_path = self._paths(0)
        public = ensure_key_file(private)
        if not public_path.exists() or public_path.read_text().strip() != public:
            datadir.write_atomic(public_path, public + "\n", datadir.PUBLIC)
        return public


def ensure_node_keys(data_dir: Path) -> str:
    """This node's key pair in `data_dir`/wireguard, made on first use; returns the public key.
    The private key file is 0600 and never leaves the node; the public key is written beside it
    so that the agent can publish it without loading `cryptography`."""
    return KeyRing(data_dir).ensure()


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


def main(argv: list[str] | None = None) -> int:
    """`python -m warren.network.keys create DATA_DIR EPOCH`: make a rotation's key pair. The
    agent runs this in a child process so that it never loads `cryptography` itself."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "create" or not args[2].isdigit():
        print("usage: python -m warren.network.keys create DATA_DIR EPOCH", file=sys.stderr)
        return 2
    try:
        print(KeyRing(Path(args[1])).create(int(args[2])))
    except (OSError, WireGuardError) as exc:
        print(f"cannot make the key pair: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
