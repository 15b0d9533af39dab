"""The Control API's certificate methods (ADR 24): admin certificates and the CA rotation.

Mixed into ControlService, whose `_store`, `_raft`, `_propose`, `_authority` and
`_until_applied` they use. Keys are never made here for anyone but the cluster: an operator's
key is made where the CLI runs, and only its CSR arrives.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc

from warren import carotation, commands, pki
from warren.api import convert
from warren.api.v1 import control_pb2 as cpb
from warren.ids import new_id
from warren.manager import autolock, cakey
from warren.manager.nodeca import check_csr_size, issue_from_csr
from warren.manager.secretkeys import KeyRing
from warren.manager.server import ApiError, caller
from warren.model import AdminCert, ClusterInfo, NodeRole
from warren.state import ClusterState
from warren.text import shown
from warren.validate import ValidationError, check_name

if TYPE_CHECKING:
    from warren.manager.ports import StateReader
    from warren.model import Node

DAY = 86400.0
DEFAULT_ADMIN_VALIDITY = 90 * DAY
MIN_ADMIN_VALIDITY = 3600.0
# Revoked ids are kept REVOCATION_RETENTION (400 days): no certificate may outlive that.
MAX_ADMIN_VALIDITY = 365 * DAY
INIT_ADMIN_NAME = "init"  # the admin certificate `cluster init` writes


def _cluster(state: ClusterState) -> ClusterInfo:
    if state.cluster is None:
        raise ApiError(grpc.StatusCode.UNAVAILABLE, "the cluster is still initialising; retry")
    return state.cluster


def _validity(seconds: float) -> float:
    if seconds == 0:
        return DEFAULT_ADMIN_VALIDITY
    if not MIN_ADMIN_VALIDITY <= seconds <= MAX_ADMIN_VALIDITY:
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"validity must be between 1h and 365 days (got {seconds:g}s)",
        )
    return seconds


def _ca_label(cluster: ClusterInfo, ca_id: str) -> str:
    if ca_id == pki.ca_key_id(cluster.ca_cert_pem):
        return "current"
    if cluster.ca_previous_cert_pem and ca_id == pki.ca_key_id(cluster.ca_previous_cert_pem):
        return "previous"
    return "old"


def admin_pb(cert: AdminCert, cluster: ClusterInfo) -> cpb.AdminCertificate:
    return convert.admin_cert_to_pb(cert, _ca_label(cluster, cert.ca))


def ca_status(state: ClusterState) -> cpb.CAStatus:
    cluster = _cluster(state)
    current = pki.ca_key_id(cluster.ca_cert_pem)
    left = carotation.pending(state, current) if cluster.ca_previous_cert_pem else []
    old_admins = sorted(
        a.name for a in state.admin_certs.values() if not a.revoked_at and a.ca != current and a.not_after > time.time()
    )
    return cpb.CAStatus(
        fingerprint=pki.ca_fingerprint(cluster.ca_cert_pem),
        previous_fingerprint=pki.ca_fingerprint(cluster.ca_previous_cert_pem) if cluster.ca_previous_cert_pem else "",
        rotation_started_at=cluster.ca_rotation_started_at,
        nodes=len(state.nodes),
        nodes_done=len(state.nodes) - len(left),
        pending=[cpb.CANodeProgress(node_id=p.node.id, hostname=p.node.hostname, reason=p.reason) for p in left],
        old_admin_certificates=old_admins if cluster.ca_previous_cert_pem else [],
        not_after=pki.validity(cluster.ca_cert_pem)[1].timestamp(),
    )


class CertificatesControl:
    """Admin certificates and the CA, for ControlService (which provides what is declared here)."""

    _store: StateReader
    _authority: cakey.Authority
    _raft_secret: str
    _keyring: KeyRing

    if TYPE_CHECKING:

        async def _propose(self, command: commands.Command) -> commands.Result: ...

        async def _until_applied(self, node: Node, index: int, timeout: float = 5.0) -> None: ...

    async def _sign_admin(self, csr_pem: str, cert_id: str, validity: float) -> tuple[bytes, ClusterInfo, str]:
        check_csr_size(csr_pem)
        with self._store.read() as state:
            cluster = _cluster(state)
        try:
            ca = self._authority.get(cluster)
        except pki.PkiError as exc:
            raise ApiError(grpc.StatusCode.INTERNAL, str(exc)) from None
        cert = issue_from_csr(ca, csr_pem, cert_id, pki.ROLE_ADMIN, days=validity / DAY)
        return cert, cluster, ca.key_id

    async def _record_admin(self, cert_pem: bytes, cert_id: str, name: str, ca_id: str) -> cpb.AdminCertificateResponse:
        not_after = pki.validity(cert_pem)[1].timestamp()
        record = AdminCert(id=cert_id, name=name, created_at=time.time(), not_after=not_after, ca=ca_id)
        await self._propose(commands.IssueAdminCert(record))
        with self._store.read() as state:
            cluster = _cluster(state)
            stored = state.admin_certs.get(cert_id, record)
        return cpb.AdminCertificateResponse(
            certificate=admin_pb(stored, cluster),
            cert_pem=cert_pem.decode(),
            ca_pem=cakey.trust_bundle(cluster).decode(),
        )

    async def IssueAdminCertificate(
        self, request: cpb.IssueAdminCertificateRequest, context: object
    ) -> cpb.AdminCertificateResponse:
        try:
            check_name("admin certificate", request.name)
        except ValidationError as exc:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        validity = _validity(request.validity)
        with self._store.read() as state:
            if state.admin_cert_by_name(request.name) is not None:
                raise ApiError(
                    grpc.StatusCode.ALREADY_EXISTS, f"an admin certificate named {request.name} already exists"
                )
        cert_id = new_id()
        cert, _, ca_id = await self._sign_admin(request.csr_pem, cert_id, validity)
        return await self._record_admin(cert, cert_id, request.name, ca_id)

    async def RenewAdminCertificate(
        self, request: cpb.RenewAdminCertificateRequest, context: object
    ) -> cpb.AdminCertificateResponse:
        me = caller.get()
        validity = _validity(request.validity)
        with self._store.read() as state:
            record = state.admin_certs.get(me.node_id)
            # A certificate written by `cluster init` before admin certificates were recorded.
            taken = state.admin_cert_by_name(INIT_ADMIN_NAME) is not None
        name = record.name if record is not None else (me.node_id if taken else INIT_ADMIN_NAME)
        cert, _, ca_id = await self._sign_admin(request.csr_pem, me.node_id, validity)
        return await self._record_admin(cert, me.node_id, name, ca_id)

    async def RevokeAdminCertificate(
        self, request: cpb.RevokeAdminCertificateRequest, context: object
    ) -> cpb.AdminCertificate:
        if not request.name:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "an admin certificate name or id is required")
        with self._store.read() as state:
            cert = state.admin_cert_by_name(request.name) or state.admin_certs.get(request.name)
        if cert is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"admin certificate {shown(request.name)} not found")
        if cert.id == caller.get().node_id:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{cert.name} is the certificate this command is calling with; "
                "revoke it with another admin certificate",
            )
        result = await self._propose(commands.RevokeAdminCert(cert.id, time.time()))
        await self._everywhere(result.index)
        with self._store.read() as state:
            return admin_pb(state.admin_certs.get(cert.id, cert), _cluster(state))

    async def _everywhere(self, index: int) -> None:
        """Wait (5 s at most) until every manager that answers has applied `index`, so that a
        revocation is in force everywhere when the operator gets the answer."""
        with self._store.read() as state:
            managers = [n for n in state.nodes.values() if n.role == NodeRole.MANAGER]
        await asyncio.gather(*(self._until_applied(m, index) for m in managers))

    async def ListAdminCertificates(
        self, request: cpb.ListAdminCertificatesRequest, context: object
    ) -> cpb.ListAdminCertificatesResponse:
        with self._store.read() as state:
            cluster = _cluster(state)
            certs = sorted(state.admin_certs.values(), key=lambda a: (a.created_at, a.name))
            return cpb.ListAdminCertificatesResponse(certificates=[admin_pb(a, cluster) for a in certs])

    async def GetCAStatus(self, request: cpb.GetCAStatusRequest, context: object) -> cpb.CAStatus:
        with self._store.read() as state:
            return ca_status(state)

    async def RotateCA(self, request: cpb.RotateCARequest, context: object) -> cpb.CAStatus:
        with self._store.read() as state:
            cluster = _cluster(state)
        if cluster.ca_previous_cert_pem:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION, "a CA rotation is already under way: see `warren cluster ca`"
            )
        ca = await asyncio.to_thread(pki.CertificateAuthority.create, cluster.id)
        if autolock.is_locked(cluster):  # the new key under the KEK, as the old one (ADR 44)
            wrapped = autolock.seal_ca_key(self._keyring.kek(cluster), ca.key_pem)
        else:
            wrapped = cakey.wrap(ca.key_pem, self._raft_secret)
        await self._propose(commands.StartCARotation(ca.cert_pem.decode(), wrapped, time.time()))
        with self._store.read() as state:
            return ca_status(state)
