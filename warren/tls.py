"""gRPC credential adapters and on-disk credential files, shared by manager, agent and CLI.

All crypto decisions live in ``warren.pki``; this module only wires PEM bytes into grpc and the
filesystem. Managers are verified by the name ``MANAGER_TLS_NAME`` rather than by address, so a
manager can move without a new certificate.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

from warren import datadir

if TYPE_CHECKING:
    from warren.pki import Identity

# warren.pki (and with it `cryptography`) is imported inside the functions that need it: the CLI
# loads this module on every call, and cryptography alone costs ~40 ms of start-up.
MANAGER_TLS_NAME = "warren-manager"  # must equal warren.pki.MANAGER_TLS_NAME (checked by a test)

CA_FILE = "ca.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"

# Clients ping every 20 s and give up after 10 s of silence, so a dead manager is noticed in
# ~30 s even on an idle session; the server must allow pings that often or it answers GOAWAY
# ("too_many_pings"). Reconnect backoff is capped at 5 s (grpc's default cap is 120 s) so agents
# find a new leader quickly after a failover.
_KEEPALIVE_TIME_MS = 20_000
_KEEPALIVE_TIMEOUT_MS = 10_000

# Message size limits, set here for every channel and server (ADR 21); gRPC's defaults (4 MiB
# received, unlimited sent) are never relied on. A service spec is at most 256 KiB
# (validate.MAX_SPEC_BYTES).
# - Replies from a manager may hold many specs: a COMPLETE assignments message carries each spec
#   version its node runs once, `service ls` every service's spec. 64 MiB holds 256 specs at the
#   bound, or thousands of ordinary ones. The dispatcher measures each message against it before
#   sending, and marks the node not ready with the reason rather than send what the agent would
#   refuse.
MAX_REPLY_BYTES = 64 << 20
# - Requests to a manager are small: a spec, a log batch (1 MiB of lines, validate.MAX_LOG_BATCH_BYTES),
#   up to 1000 status reports with texts cut to 4 KiB (agent.session). 16 MiB leaves room for
#   each and still bounds what one authenticated caller makes a manager buffer.
MAX_REQUEST_BYTES = 16 << 20
# - The join listener is plaintext and unauthenticated: a request holds a CSR, a hostname and a
#   proof, a reply a certificate, the CA and the managers' addresses, all a few KiB.
MAX_JOIN_MESSAGE_BYTES = 64 << 10


def server_credentials(
    ca_pem: bytes, cert_pem: bytes, key_pem: bytes, *, require_client_auth: bool = True
) -> grpc.ServerCredentials:
    """TLS for a manager port; by default every client must present a cert from the cluster CA."""
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=require_client_auth
    )


def reloading_server_credentials(
    directory: str | os.PathLike[str],
    roots: Callable[[], bytes] | None = None,
    open_key: Callable[[bytes], bytes] | None = None,
) -> grpc.ServerCredentials:
    """Like `server_credentials` for the credentials in `directory`, re-read on the next TLS
    handshake after the files change: a renewed certificate is served without a restart.
    `roots()`, if given, supplies the client CAs to trust and is asked at every handshake: a CA
    rotation must be trusted the moment it is committed (ADR 24). It is then the only source of
    trust: ca.pem is never read for it (an empty answer keeps the roots trusted so far).
    `open_key` reads a sealed key file (a manager's, under autolock: ADR 44)."""
    path = Path(directory)

    def trusted(creds: Credentials) -> bytes:
        if roots is None:
            return creds.ca_pem
        bundle = roots()
        if not bundle:
            raise ValueError("no CA to trust in the cluster state")
        return bundle

    def version() -> tuple[float, bytes]:
        return _mtime(path), roots() if roots is not None else b""

    loaded = [version()]

    def configuration() -> grpc.ServerCertificateConfiguration:
        creds = load_credentials(path, open_key)
        return grpc.ssl_server_certificate_configuration([(creds.key_pem, creds.cert_pem)], trusted(creds))

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            current = version()
            if current == loaded[0]:
                return None  # unchanged: grpc keeps the current configuration
            fresh = configuration()
        except (OSError, ValueError, MissingCredentialsError):
            return None  # half-written or unreadable: keep serving the current ones, retry later
        loaded[0] = current
        return fresh

    # grpc's stubs say the fetcher always returns a configuration; grpc documents None as "unchanged".
    return grpc.dynamic_ssl_server_credentials(
        configuration(),
        fetch,  # type: ignore[arg-type]
        require_client_authentication=True,
    )


def _mtime(directory: Path) -> float:
    return max((directory / name).stat().st_mtime for name in (CA_FILE, CERT_FILE, KEY_FILE))


def channel_credentials(
    ca_pem: bytes, cert_pem: bytes | None = None, key_pem: bytes | None = None
) -> grpc.ChannelCredentials:
    """mTLS to a manager, trusting only the cluster CA. Cert and key may be omitted only by a node
    that has none yet (joining), and only against a port that does not require client certs."""
    if (cert_pem is None) != (key_pem is None):
        raise ValueError("cert_pem and key_pem must be given together")
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)


def channel_options() -> list[tuple[str, Any]]:
    """Options for every channel to a manager: verify the manager name, keep idle sessions alive."""
    return [
        ("grpc.ssl_target_name_override", MANAGER_TLS_NAME),
        ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.min_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
        ("grpc.max_receive_message_length", MAX_REPLY_BYTES),
    ]


def server_options(max_receive: int = MAX_REQUEST_BYTES, max_send: int = MAX_REPLY_BYTES) -> list[tuple[str, Any]]:
    """Options for a manager's grpc server, matching channel_options' keepalive pings."""
    return [
        ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", _KEEPALIVE_TIME_MS // 2),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", max_receive),
        ("grpc.max_send_message_length", max_send),
    ]


def join_server_options() -> list[tuple[str, Any]]:
    """Options for the plaintext join listener: small messages, few streams."""
    return [
        *server_options(MAX_JOIN_MESSAGE_BYTES, MAX_JOIN_MESSAGE_BYTES),
        ("grpc.max_concurrent_streams", 16),
    ]


def join_channel_options() -> list[tuple[str, Any]]:
    """Options for a joining node's plaintext channel to the join listener."""
    return [
        ("grpc.enable_retries", 0),
        ("grpc.max_send_message_length", MAX_JOIN_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_JOIN_MESSAGE_BYTES),
    ]


def peer_identity(context: grpc.ServicerContext | Any) -> Identity | None:
    """The verified caller of an RPC, or None (no client cert, or a cert without a Warren identity).
    Works for grpc and grpc.aio servicer contexts; the handshake already checked the chain."""
    from warren.pki import PkiError, identity_of

    try:
        pems = context.auth_context().get("x509_pem_cert")
    except (AttributeError, ValueError):
        return None
    if not pems:
        return None
    pem = pems[0]
    try:
        return identity_of(pem if isinstance(pem, bytes) else str(pem).encode())
    except PkiError:
        return None


# --------------------------------------------------------------------------------------------
# credential files


class Credentials(NamedTuple):
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


class MissingCredentialsError(FileNotFoundError):
    """A credential file is absent; the message names it, e.g. so the CLI can say "run join first"."""


def save_credentials(directory: str | os.PathLike[str], ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
    """Write ca.pem, cert.pem and key.pem (0600) atomically and durably (datadir.write_atomic).
    The key goes first so that a crash never leaves a new cert next to an old key unnoticed:
    load_credentials refuses a mismatched pair."""
    path = Path(directory)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_credential_files(path / CA_FILE, path / CERT_FILE, path / KEY_FILE, ca_pem, cert_pem, key_pem)


def replace_credential_files(
    ca_path: Path, cert_path: Path, key_path: Path, ca_pem: bytes, cert_pem: bytes, key_pem: bytes
) -> None:
    """Like save_credentials for files anywhere (a CLI context's), key first, each atomically
    and durably."""
    datadir.write_atomic(key_path, key_pem, datadir.PRIVATE)
    datadir.write_atomic(cert_path, cert_pem, datadir.PUBLIC)
    datadir.write_atomic(ca_path, ca_pem, datadir.PUBLIC)


def load_credentials(
    directory: str | os.PathLike[str], open_key: Callable[[bytes], bytes] | None = None
) -> Credentials:
    """Read the three files back; a missing file raises MissingCredentialsError naming it, and a
    key that does not belong to the cert raises PkiError. Needs no `cryptography` (certinfo)
    unless `open_key` (a manager's, under autolock: ADR 44) turns a sealed key file into a PEM."""
    from warren.certinfo import PkiError, key_matches_files

    path = Path(directory)
    found = {}
    for name in (CA_FILE, CERT_FILE, KEY_FILE):
        file = path / name
        try:
            found[name] = file.read_bytes()
        except FileNotFoundError as exc:
            raise MissingCredentialsError(f"credential file {name} is missing from {path}") from exc
    key_pem = open_key(found[KEY_FILE]) if open_key is not None else found[KEY_FILE]
    creds = Credentials(found[CA_FILE], found[CERT_FILE], key_pem)
    if key_pem != found[KEY_FILE]:  # opened: the file itself is not a PEM to compare
        from warren.pki import key_matches_cert

        if not key_matches_cert(found[CERT_FILE], key_pem):
            raise PkiError(f"{path / KEY_FILE} does not match {path / CERT_FILE}")
    elif not key_matches_files(path / CERT_FILE, path / KEY_FILE):
        raise PkiError(f"{path / KEY_FILE} does not match {path / CERT_FILE}")
    return creds


@dataclass(frozen=True)
class CredentialFiles:
    """How a certs/ directory is read and written. Plain by default; the embedded agent of a
    manager under autolock opens and seals its key with the manager's KEK (ADR 44)."""

    open_key: Callable[[bytes], bytes] | None = None  # the key file's bytes -> a PEM
    save: Callable[[Path, bytes, bytes, bytes], None] = save_credentials  # (certs, ca, cert, key PEM)

    def load(self, directory: str | os.PathLike[str]) -> Credentials:
        return load_credentials(directory, self.open_key)


PLAIN_FILES = CredentialFiles()


def write_private_file(target: Path, data: bytes) -> None:
    """Replace `target` (0600) atomically and durably: the file's bytes, then its directory's
    entry, reach the disk before this returns."""
    datadir.write_atomic(target, data, datadir.PRIVATE)
