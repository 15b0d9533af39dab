"""The node side of joining (ADR 13): trade a join token for a node identity, and renew it.

`join` generates a key, sends a CSR with a proof of the token's secret to a manager's plaintext
join listener, and trusts nothing it gets back until the CA matches the fingerprint pinned in the
token and the certificate is that CA's, for our key. Only then is anything written:
    certs/{ca,cert,key}.pem   the node's credentials (key 0600)
    node.json                 {"node_id": ..., "managers": [API addresses]}, written last
A directory holding both is a joined node; joining never happens twice on it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from warren import datadir, pki, tls
from warren.api.v1 import ca_pb2 as capb
from warren.api.v1 import ca_pb2_grpc
from warren.certinfo import renewal_due
from warren.validate import NAME_RE

log = logging.getLogger(__name__)

NODE_FILE = datadir.NODE_FILE
CERTS_DIR = datadir.CERTS_DIR
JOIN_PORT_OFFSET = 2  # default join port = API port + 2 (Raft is + 1)
JOIN_TIMEOUT = 15.0

UNREACHABLE_HINT = "the join port is the API port + 2 by default"
CA_MISMATCH = "the manager's CA does not match the token: wrong cluster or a man in the middle"


class JoinError(Exception):
    """Joining failed; the message is one line for the operator. `kind` lets the CLI choose an
    exit code: token (malformed), denied (wrong or rotated), unreachable, busy (retry later),
    mismatch (the answer failed verification), refused (not possible: a manager token before
    issue #4), invalid, exists (the directory holds an identity), failed."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class RenewalError(Exception):
    """A renewed certificate failed verification; the current one is kept."""


@dataclass(frozen=True)
class JoinResult:
    node_id: str
    role: str
    managers: list[str]
    data_dir: Path


@dataclass(frozen=True)
class StoredIdentity:
    """What a joined node's data directory says about it."""

    node_id: str
    role: str
    cluster_id: str
    ca_fingerprint: str
    managers: list[str]
    not_after: dt.datetime


# -- what is on disk ---------------------------------------------------------------------------
def stored_identity(data_dir: Path, credentials: tls.CredentialFiles = tls.PLAIN_FILES) -> StoredIdentity | None:
    """The identity in `data_dir`, or None if it holds none (never joined, or a join that
    crashed before node.json was written). Raises PkiError for credentials that are present
    but unusable (a key that does not match its certificate), which must not be overwritten."""
    node_file = data_dir / NODE_FILE
    if not node_file.exists():
        return None
    try:
        creds = credentials.load(data_dir / CERTS_DIR)
    except tls.MissingCredentialsError:
        return None
    try:
        node = datadir.read_json(node_file)
    except datadir.DataFileError as exc:
        raise pki.PkiError(str(exc)) from None
    identity = pki.identity_of(creds.cert_pem)
    if node.get("node_id") != identity.node_id:
        raise pki.PkiError(f"{node_file} does not name the node of {data_dir / CERTS_DIR / tls.CERT_FILE}")
    managers = [m for m in node.get("managers", []) if isinstance(m, str)]
    return StoredIdentity(
        node_id=identity.node_id,
        role=identity.role,
        cluster_id=identity.cluster_id,
        ca_fingerprint=pki.ca_fingerprint(creds.ca_pem),
        managers=managers,
        not_after=identity.not_after,
    )


def write_node_file(data_dir: Path, node_id: str, managers: list[str]) -> None:
    """node.json, atomically and owner-only."""
    datadir.write_json(data_dir / NODE_FILE, {"node_id": node_id, "managers": list(managers)})


# -- joining -----------------------------------------------------------------------------------
def verify_join_response(token: pki.JoinToken, key_pem: bytes, response: capb.JoinResponse) -> pki.Identity:
    """Trust a join answer only if its CA is the one the token pins and its certificate is that
    CA's, for our key, naming the node and role the answer claims. Returns that identity."""
    try:
        fingerprint = pki.ca_fingerprint(response.ca_pem)
    except pki.PkiError:
        raise JoinError("mismatch", CA_MISMATCH) from None
    if not hmac.compare_digest(fingerprint, token.fingerprint):
        raise JoinError("mismatch", CA_MISMATCH)
    cert_pem = response.cert_pem.encode()
    if not pki.verify_issued_by(cert_pem, response.ca_pem.encode()):
        raise JoinError("mismatch", "the certificate the manager returned was not issued by the cluster CA")
    try:
        if not pki.key_matches_cert(cert_pem, key_pem):
            raise JoinError("mismatch", "the certificate the manager returned is not for this node's key")
        identity = pki.identity_of(cert_pem)
    except pki.PkiError as exc:
        raise JoinError("mismatch", f"the certificate the manager returned is unusable: {exc}") from None
    if identity.node_id != response.node_id or identity.role != response.role:
        raise JoinError("mismatch", "the certificate the manager returned names another node or role")
    if identity.not_after <= dt.datetime.now(dt.UTC):
        raise JoinError("mismatch", "the certificate the manager returned has already expired")
    return identity


def _rpc_failure(exc: grpc.RpcError, addr: str) -> JoinError:
    code = exc.code()
    details = (exc.details() or "").strip()
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return JoinError(
            "denied",
            f"the manager at {addr} refused the join token: {details or 'it is invalid or has been rotated'}"
            " (print the current one with `warren cluster join-token worker` on a manager)",
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or (code == grpc.StatusCode.UNAVAILABLE and _transport(details)):
        return JoinError("unreachable", f"cannot reach the manager's join address {addr} ({UNREACHABLE_HINT})")
    if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
        return JoinError("busy", f"the manager at {addr} cannot take the join now: {details}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return JoinError("refused", f"the manager at {addr} refused the join: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return JoinError("invalid", f"the manager at {addr} rejected the request: {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return JoinError("unreachable", f"{addr} is not a Warren join address ({UNREACHABLE_HINT})")
    return JoinError("failed", f"join failed at {addr}: {details or code.name.lower()}")


def _transport(details: str) -> bool:
    """Whether an UNAVAILABLE came from the connection rather than from a manager's answer."""
    low = details.lower()
    return not details or any(
        needle in low
        for needle in (
            "failed to connect",
            "connection refused",
            "socket closed",
            "connection reset",
            "dns resolution",
            "name resolution",
            "no route",
            "unreachable",
            "timed out",
            "handshake",
            "ssl",
            "tls",
            "end of tcp stream",
            "goaway",
            "http2",
            "protocol",
        )
    )


def join(token: str, manager_addr: str, data_dir: Path, hostname: str, *, timeout: float = JOIN_TIMEOUT) -> JoinResult:
    """Join the cluster through the join listener at `manager_addr` and store the identity in
    `data_dir`. Raises JoinError (nothing is written then)."""
    try:
        parsed = pki.parse_join_token(token)
    except pki.TokenError as exc:
        raise JoinError("token", str(exc)) from None
    if not NAME_RE.fullmatch(hostname):
        raise JoinError("invalid", f"invalid hostname {hostname!r}: use 1-63 letters, digits, '-', '_' or '.'")
    try:
        existing = stored_identity(data_dir)
    except pki.PkiError as exc:
        raise JoinError("exists", f"{data_dir} holds unusable credentials ({exc}); use another --data-dir") from None
    except OSError as exc:
        raise JoinError("failed", f"cannot read {data_dir}: {exc.strerror or exc}") from None
    if existing is not None:
        raise JoinError("exists", f"{data_dir} already holds the identity of node {existing.node_id}")
    key_pem = pki.generate_key()
    csr_pem = pki.make_csr(key_pem)
    request = capb.JoinRequest(
        csr_pem=csr_pem.decode(), hostname=hostname, proof=pki.join_proof(parsed.secret, csr_pem)
    )
    with grpc.insecure_channel(manager_addr, options=tls.join_channel_options()) as channel:
        try:
            response = ca_pb2_grpc.NodeCAStub(channel).Join(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise _rpc_failure(exc, manager_addr) from None
    identity = verify_join_response(parsed, key_pem, response)
    managers = [m for m in response.managers if m]
    if not managers:
        raise JoinError("failed", f"the manager at {manager_addr} named no manager API address")
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tls.save_credentials(data_dir / CERTS_DIR, response.ca_pem.encode(), response.cert_pem.encode(), key_pem)
        write_node_file(data_dir, identity.node_id, managers)
    except OSError as exc:
        raise JoinError("failed", f"cannot store the node identity in {data_dir}: {exc.strerror or exc}") from None
    return JoinResult(node_id=identity.node_id, role=identity.role, managers=managers, data_dir=data_dir)


# -- renewal -----------------------------------------------------------------------------------
async def renew_if_due(
    channel: grpc.aio.Channel,
    data_dir: Path,
    *,
    now: dt.datetime | None = None,
    timeout: float = 10.0,
    force: bool = False,
    credentials: tls.CredentialFiles = tls.PLAIN_FILES,
) -> bool:
    """Renew the certificate in `data_dir`/certs over `channel` (an mTLS channel to a manager,
    made from those same credentials) when `renewal_due`. Returns True if new credentials were
    written: channels made from the old ones keep working until the old certificate expires, so
    the caller should reconnect at its next convenient point.

    The new certificate must come from a CA already on disk, or, during a CA rotation (`force`,
    ADR 24), from the new root of a bundle that still holds a root already on disk: a root is
    adopted only over the mTLS channel the trusted one authenticated, never on its own. It must
    be for a fresh key generated here, with the same node id and role and a later expiry.
    Raises grpc.aio.AioRpcError if the call fails (PERMISSION_DENIED "...removed from the
    cluster" for a removed node) and RenewalError if the answer fails those checks."""
    certs = data_dir / CERTS_DIR
    creds = credentials.load(certs)
    if not force and not renewal_due(creds.cert_pem, now):
        return False
    old = pki.identity_of(creds.cert_pem)
    key_pem = await asyncio.to_thread(pki.generate_key)
    csr_pem = pki.make_csr(key_pem)
    stub = ca_pb2_grpc.NodeCertificatesStub(channel)
    response = await stub.RenewCertificate(capb.RenewRequest(csr_pem=csr_pem.decode()), timeout=timeout)
    cert_pem = response.cert_pem.encode()
    ca_pem = adopted_roots(creds.ca_pem, response.ca_pem.encode())
    check_renewed(old, ca_pem, cert_pem, key_pem, same_expiry_ok=force)
    await asyncio.to_thread(credentials.save, certs, ca_pem, cert_pem, key_pem)
    log.info("renewed the node certificate of %s (now valid until %s)", old.node_id, pki.validity(cert_pem)[1])
    return True


def adopted_roots(trusted_pem: bytes, offered_pem: bytes) -> bytes:
    """The roots to keep after a renewal: those offered by the manager if they include one we
    trust already (a CA rotation adds the new root first), else the ones we have."""
    if not offered_pem:
        return trusted_pem
    try:
        if pki.bundle_key_ids(offered_pem) & pki.bundle_key_ids(trusted_pem):
            return offered_pem
    except pki.PkiError:
        pass
    return trusted_pem


def check_renewed(
    old: pki.Identity, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, *, same_expiry_ok: bool = False
) -> pki.Identity:
    """Raise RenewalError unless `cert_pem` is a valid successor of the certificate `old` describes.
    `same_expiry_ok`: a re-issue from a new root (CA rotation) need not expire later."""
    if not pki.verify_issued_by(cert_pem, ca_pem):
        raise RenewalError("the renewed certificate was not issued by the cluster CA")
    try:
        new = pki.identity_of(cert_pem)
        matches = pki.key_matches_cert(cert_pem, key_pem)
    except pki.PkiError as exc:
        raise RenewalError(f"the renewed certificate is unusable: {exc}") from None
    if not matches:
        raise RenewalError("the renewed certificate is not for the key we sent")
    if (new.node_id, new.role, new.cluster_id) != (old.node_id, old.role, old.cluster_id):
        raise RenewalError("the renewed certificate names another node, role or cluster")
    if new.not_after <= old.not_after and not same_expiry_ok:
        raise RenewalError("the renewed certificate expires no later than the current one")
    return new
