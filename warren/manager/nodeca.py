"""Node certificates: the join RPC on the plaintext join listener, and renewal on the API port.

Join (ADR 13) runs over plaintext gRPC because a joining node has no certificate and does not
know the CA yet. The request proves knowledge of the join token's secret with an HMAC over the
CSR, so the secret never crosses the wire; the node checks the response against the CA
fingerprint in its token. Any manager can answer: the CA key and the token secrets are in the
replicated state, and nothing is written (the node appears once its agent registers).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from warren import pki, tls
from warren.api.v1 import ca_pb2 as capb
from warren.api.v1 import ca_pb2_grpc
from warren.ids import new_id
from warren.manager import autolock, cakey, metrics
from warren.manager.ports import StateReader
from warren.manager.secretkeys import KeyRing
from warren.manager.server import ApiError, MalformedRequestGuard, caller, generic_only
from warren.model import ClusterInfo, NodeRole
from warren.state import ClusterState
from warren.text import ascii_int, shown
from warren.validate import NAME_RE

log = logging.getLogger(__name__)

NODE_CERT_DAYS = 90
MAX_CSR_BYTES = 16 * 1024
_PROOF_RE = re.compile(r"[0-9a-f]{64}")  # fullmatch

DENIED = "the join token is invalid or has been rotated"
THROTTLED = "too many failed join attempts from this address; check the token, wait a minute and retry"


@dataclass
class _Bucket:
    tokens: float
    updated: float


class FailureLimiter:
    """A token bucket per peer host that only failed attempts drain: a host may fail `burst`
    times in a row, then once per `1/rate` seconds. Secrets are ~134 bits, so this does not
    make guessing any less hopeless; it keeps a noisy client from filling the manager's logs.
    It never stands in the way of a correct token: the join checks the proof first, and only a
    wrong one from a throttled host is refused as throttled, so one bad client cannot lock out
    the others behind the same address (a NAT). The table is bounded: buckets that have
    refilled are forgotten first."""

    def __init__(
        self, burst: int = 10, rate: float = 0.5, max_hosts: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._max_hosts = max_hosts
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _refilled(self, bucket: _Bucket, now: float) -> float:
        return min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)

    def allowed(self, host: str) -> bool:
        """Whether `host` may try now (it has not used up its failures)."""
        bucket = self._buckets.get(host)
        return bucket is None or self._refilled(bucket, self._clock()) >= 1.0

    def failed(self, host: str) -> None:
        """Charge one failed attempt to `host`."""
        now = self._clock()
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= self._max_hosts:
                self._evict(now)
            bucket = self._buckets[host] = _Bucket(self._burst, now)
        bucket.tokens = max(0.0, self._refilled(bucket, now) - 1.0)
        bucket.updated = now

    def _evict(self, now: float) -> None:
        full = [h for h, b in self._buckets.items() if self._refilled(b, now) >= self._burst]
        for host in full:
            del self._buckets[host]
        if len(self._buckets) >= self._max_hosts:  # everyone is failing: drop the oldest
            oldest = min(self._buckets, key=lambda h: self._buckets[h].updated)
            del self._buckets[oldest]


def peer_host(peer: str) -> str:
    """The host of a grpc peer string ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678") without its port."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, sep, port = rest.rpartition(":")
        if sep and ascii_int(port) is not None:
            return host
        return rest
    return peer


def _cluster(state: ClusterState) -> ClusterInfo:
    if state.cluster is None:
        raise ApiError(grpc.StatusCode.UNAVAILABLE, "the cluster is still initialising; retry")
    return state.cluster


def _authority(authority: cakey.Authority, cluster: ClusterInfo) -> pki.CertificateAuthority:
    """The CA that signs. A manager that does not hold the KEK of a locked cluster answers
    UNAVAILABLE, so that the node asks another manager (ADR 44)."""
    try:
        return authority.get(cluster)
    except autolock.ManagerLockedError as exc:
        raise ApiError(grpc.StatusCode.UNAVAILABLE, f"{exc}; ask another manager") from None
    except pki.PkiError as exc:
        raise ApiError(grpc.StatusCode.INTERNAL, str(exc)) from None


def issue_from_csr(
    ca: pki.CertificateAuthority, csr_pem: str, node_id: str, role: str, days: float = NODE_CERT_DAYS
) -> bytes:
    """Sign a CSR sent by a caller; a bad one is INVALID_ARGUMENT."""
    try:
        return ca.issue(csr_pem.encode(), node_id, role, validity_days=days)
    except pki.PkiError as exc:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"unusable certificate signing request: {exc}") from None


def check_csr_size(csr_pem: str) -> None:
    if not csr_pem:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "csr_pem is required")
    if len(csr_pem) > MAX_CSR_BYTES:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"csr_pem is larger than {MAX_CSR_BYTES} bytes")


class NodeCAService(ca_pb2_grpc.NodeCAServicer):
    """Join: trade a proof of the join token for a node certificate."""

    def __init__(
        self,
        store: StateReader,
        limiter: FailureLimiter | None = None,
        new_node_id: Callable[[], str] = new_id,
        raft_secret: str = "",
        keyring: KeyRing | None = None,
    ) -> None:
        self._store = store
        self._limiter = limiter or FailureLimiter()
        self._new_node_id = new_node_id
        self._authority = autolock.authority(raft_secret, keyring or KeyRing(raft_secret))

    async def Join(self, request: capb.JoinRequest, context: grpc.aio.ServicerContext) -> capb.JoinResponse:
        started = time.perf_counter()
        try:
            response = self._join(request, peer_host(context.peer() or ""))
        except ApiError as exc:
            code, message = exc.code, exc.message
        except Exception as exc:  # a bug: say so without details an unauthenticated peer need not see
            log.exception("join failed")
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
        else:
            code, message = grpc.StatusCode.OK, ""
        metrics.observe_request("/warren.api.v1.NodeCA/Join", code.name, time.perf_counter() - started)
        if code != grpc.StatusCode.OK:
            await context.abort(code, message)
        return response

    def _refuse(self, host: str, hostname: str) -> ApiError:
        """A wrong token: charged to `host`; logged and answered as such until the host is
        throttled, then answered as throttled (and not logged: the log stays readable)."""
        if not self._limiter.allowed(host):
            return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, THROTTLED)
        self._limiter.failed(host)
        log.warning("refused a join from %s (host %s): bad or rotated token", shown(hostname), host)
        return ApiError(grpc.StatusCode.PERMISSION_DENIED, DENIED)

    def _join(self, request: capb.JoinRequest, host: str) -> capb.JoinResponse:
        check_csr_size(request.csr_pem)
        if not NAME_RE.fullmatch(request.hostname):
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid hostname {shown(request.hostname)}: use 1-63 letters, digits, '-', '_' or '.'",
            )
        if not _PROOF_RE.fullmatch(request.proof):
            raise self._refuse(host, request.hostname)
        with self._store.read() as state:
            cluster = _cluster(state)
            managers = state.manager_addrs()
        # Both secrets are always checked, so timing tells nothing about which one matched.
        as_worker = pki.proof_matches(cluster.worker_token_secret, request.csr_pem, request.proof)
        as_manager = pki.proof_matches(cluster.manager_token_secret, request.csr_pem, request.proof)
        if not (as_worker or as_manager):
            raise self._refuse(host, request.hostname)
        # A manager certificate lets its holder ask the leader to add it to Raft (ADR 15).
        role = pki.ROLE_MANAGER if as_manager else pki.ROLE_WORKER
        ca = _authority(self._authority, cluster)
        node_id = self._new_node_id()
        cert = issue_from_csr(ca, request.csr_pem, node_id, role)
        log.info("issued a %s certificate to node %s (%s, from %s)", role, node_id, request.hostname, host)
        return capb.JoinResponse(
            node_id=node_id,
            role=role,
            cert_pem=cert.decode(),
            ca_pem=cakey.trust_bundle(cluster).decode(),  # the current root first: the token pins it
            managers=managers,
        )


class NodeCertificatesService(ca_pb2_grpc.NodeCertificatesServicer):
    """Renewal, on the mTLS API port behind the guard: a fresh certificate for the caller's own
    node id and role, as its current certificate states them. A revoked node never gets here."""

    def __init__(self, store: StateReader, raft_secret: str = "", keyring: KeyRing | None = None) -> None:
        self._store = store
        self._authority = autolock.authority(raft_secret, keyring or KeyRing(raft_secret))

    async def RenewCertificate(self, request: capb.RenewRequest, context: object) -> capb.RenewResponse:
        identity = caller.get()
        check_csr_size(request.csr_pem)
        role = request.role or identity.role
        with self._store.read() as state:
            cluster = _cluster(state)
            node = state.nodes.get(identity.node_id)
        if role not in (identity.role, pki.ROLE_MANAGER):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"role must be empty or manager (got {shown(role)})")
        if role != identity.role and (node is None or node.desired_role != NodeRole.MANAGER):
            raise ApiError(grpc.StatusCode.PERMISSION_DENIED, "this node was not promoted to manager")
        ca = _authority(self._authority, cluster)
        cert = issue_from_csr(ca, request.csr_pem, identity.node_id, role)
        log.info("issued a %s certificate to node %s (renewal)", role, identity.node_id)
        # During a CA rotation the bundle holds both roots: the node must trust the new one
        # before the managers serve certificates from it (ADR 24).
        return capb.RenewResponse(cert_pem=cert.decode(), ca_pem=cakey.trust_bundle(cluster).decode())


def build_join_server(bind_addr: str, servicer: NodeCAService) -> grpc.aio.Server:
    """The plaintext join listener: NodeCA only, small messages, nothing else reachable."""
    server = grpc.aio.server(interceptors=[MalformedRequestGuard()], options=tls.join_server_options())
    ca_pb2_grpc.add_NodeCAServicer_to_server(servicer, generic_only(server))
    try:
        bound = server.add_insecure_port(bind_addr)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen for joins on {bind_addr}")
    return server
