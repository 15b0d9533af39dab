"""This manager's own certificate: renewal, and its part in a CA rotation (ADR 15, ADR 24).

A manager signs its own certificate from the CA in the replicated state; its API server reads
the files again at the next TLS handshake. Which roots are trusted has one source, the state
(`cakey.trust_bundle` for the TLS handshake, `cakey.trusted_key_ids` for the guard); the server
never reads certs/ca.pem for that. certs/ca.pem is kept equal to the state's bundle only for this
manager's OUTGOING channels, which verify the managers they call: the Control API asking other
managers for their Raft status, and the embedded agent's first copy of its credentials
(warren.manager.embedded). During a CA rotation, each manager:
1. trusts both roots at once, from the state, so agents and admins re-issued from the new root
   are accepted while the others still call with old certificates;
2. once every agent calls with a certificate from the new root (and so trusts it), serves a
   certificate from the new root itself, and records that in the state;
3. when the state says the rotation ended, trusts the new root only.
The leader ends the rotation once no node depends on the old root.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from warren import carotation, certinfo, commands, pki, tls
from warren.manager import autolock, cakey, lockedfiles, secretkeys
from warren.manager.nodeca import NODE_CERT_DAYS
from warren.manager.ports import ProposalError, Proposer, StateReader
from warren.manager.secretkeys import KeyRing
from warren.model import ClusterInfo, Node

log = logging.getLogger(__name__)

CA_CHECK_PERIOD = 1.0  # seconds between looks at the state's CA (cheap: no I/O unless it changed)
CERT_CHECK_PERIOD = 3600.0  # seconds between expiry checks of this manager's certificate


class _Readable(Protocol):
    def read(self): ...  # a context manager yielding the ClusterState


def key_opener(
    keyring: KeyRing, cluster: Callable[[], ClusterInfo | None], purpose: str = autolock.TLS_KEY_PURPOSE
) -> Callable[[bytes], bytes]:
    """What turns this manager's TLS key file into a PEM: itself, or opened by the KEK if
    autolock sealed it (ADR 44). For every reader of certs/: the server, renewal, outgoing calls;
    with `purpose` AGENT_KEY_PURPOSE, for the embedded agent's key."""

    def open_key(stored: bytes) -> bytes:
        if not autolock.is_sealed_local(stored.decode(errors="replace")):
            return stored
        current = cluster()
        if current is None:
            raise secretkeys.SecretKeyError("the TLS key is sealed and the cluster state is empty")
        return autolock.open_tls_key(keyring.kek(current), stored, purpose)

    return open_key


def own_files(keyring: KeyRing, cluster: Callable[[], ClusterInfo | None]) -> tls.CredentialFiles:
    """This manager's certs/ for a reader outside the manager (the embedded agent copies it)."""
    return tls.CredentialFiles(open_key=key_opener(keyring, cluster))


def embedded_agent_files(
    data: Path, keyring: KeyRing, cluster: Callable[[], ClusterInfo | None]
) -> tls.CredentialFiles:
    """The embedded agent's certs/ (ADR 44): its certificate is a manager-role one for this
    node, so its key is sealed exactly while this manager's is: opened by the KEK to be read,
    and written sealed while the manager's key is (LockKeeper seals and unseals both together,
    under the same lock)."""

    def save(certs: Path, roots: bytes, cert: bytes, key: bytes) -> None:
        with lockedfiles.FILES_LOCK:
            if lockedfiles.is_manager_key_sealed(data):
                current = cluster()
                if current is None:
                    raise secretkeys.SecretKeyError("the TLS key is sealed and the cluster state is empty")
                key = autolock.seal_local(keyring.kek(current), autolock.AGENT_KEY_PURPOSE, key).encode()
            tls.save_credentials(certs, roots, cert, key)

    return tls.CredentialFiles(open_key=key_opener(keyring, cluster, autolock.AGENT_KEY_PURPOSE), save=save)


def load_own(certs: Path, keyring: KeyRing, cluster: ClusterInfo | None) -> tls.Credentials:
    """This manager's credentials, its TLS key opened by the KEK if autolock sealed it (ADR 44).
    Under the files' lock: a seal between reading the key and checking it against the
    certificate (which reads the file again) would fail the check (found by the API fuzzer)."""
    with lockedfiles.FILES_LOCK:
        return tls.load_credentials(certs, key_opener(keyring, lambda: cluster))


def save_own(certs: Path, keyring: KeyRing, cluster: ClusterInfo, roots: bytes, cert: bytes, key: bytes) -> None:
    """Write this manager's credentials, the key sealed by the KEK if the one on disk is: a
    renewal while locked must not leave the key in plain text (ADR 44)."""
    with lockedfiles.FILES_LOCK:
        try:
            current = (certs / tls.KEY_FILE).read_bytes()
        except FileNotFoundError:
            current = b""
        if autolock.is_sealed_local(current.decode(errors="replace")):
            key = autolock.seal_tls_key_like(keyring.kek(cluster), current, key)
        tls.save_credentials(certs, roots, cert, key)


def renew_certificate(
    data: Path,
    store: _Readable,
    node_id: str,
    now: dt.datetime | None = None,
    raft_secret: str = "",
    keyring: KeyRing | None = None,
) -> bool:
    """Re-issue this manager's certificate from the cluster CA (in the state) once a third of its
    lifetime is left. The API server reads the new one at its next handshake. True if renewed."""
    certs = data / "certs"
    keyring = keyring or KeyRing(raft_secret)
    with store.read() as state:
        cluster = state.cluster
    creds = load_own(certs, keyring, cluster)
    if not certinfo.renewal_due(creds.cert_pem, now):
        return False
    if cluster is None:
        return False
    ca = autolock.authority(raft_secret, keyring).get(cluster)
    cert, key = ca.issue_keypair(node_id, pki.ROLE_MANAGER, validity_days=NODE_CERT_DAYS)
    save_own(certs, keyring, cluster, cakey.trust_bundle(cluster), cert, key)
    log.info("renewed this manager's certificate (valid until %s)", certinfo.validity(cert)[1])
    return True


class CertificateKeeper:
    """Keeps certs/ in step with the state's CA, and reports this manager's certificate root."""

    def __init__(
        self,
        data: Path,
        store: StateReader,
        raft: Proposer,
        node_id: str,
        raft_secret: str,
        keyring: KeyRing | None = None,
    ) -> None:
        self._certs = data / "certs"
        self._data = data
        self._store = store
        self._raft = raft
        self._node_id = node_id
        self._secret = raft_secret
        self._keyring = keyring or KeyRing(raft_secret)
        self._authority = autolock.authority(raft_secret, self._keyring)
        self._settled: tuple[object, ...] | None = None  # what the last step with nothing to do saw

    def step(self) -> commands.Command | None:
        """Bring certs/ in line with the state (blocking file I/O); the command to propose, if any.
        Reads the files only when what it decides from has changed since a step that left
        nothing to do: the loop asks every second."""
        with self._store.read() as state:
            cluster = state.cluster
            node = state.nodes.get(self._node_id)
            if cluster is None:
                return None
            current = pki.ca_key_id(cluster.ca_cert_pem)
            rotating = bool(cluster.ca_previous_cert_pem)
            started_at = cluster.ca_rotation_started_at
            agents_done = carotation.agents_done(state, current)
            finished = rotating and not carotation.pending(state, current)
            recorded = node.manager_cert_ca if node is not None else None
        inputs = (cluster.ca_cert_pem, cluster.ca_previous_cert_pem, started_at, agents_done, finished, recorded)
        leading = self._raft.is_leader
        if (inputs, leading) == self._settled:
            return None
        command = self._bring_in_line(cluster, node, current, rotating, agents_done, finished, started_at, leading)
        self._settled = (inputs, leading) if command is None else None
        return command

    def _bring_in_line(
        self,
        cluster: ClusterInfo,
        node: Node | None,
        current: str,
        rotating: bool,
        agents_done: bool,
        finished: bool,
        started_at: float,
        leading: bool,
    ) -> commands.Command | None:
        creds = load_own(self._certs, self._keyring, cluster)
        roots = cakey.trust_bundle(cluster)
        issuer = pki.identity_of(creds.cert_pem).issuer_key_id
        if issuer != current and (not rotating or agents_done):
            ca = self._authority.get(cluster)
            cert, key = ca.issue_keypair(self._node_id, pki.ROLE_MANAGER, validity_days=NODE_CERT_DAYS)
            save_own(self._certs, self._keyring, cluster, roots, cert, key)
            issuer = current
            log.info("this manager now serves a certificate from the cluster's current CA")
        elif creds.ca_pem != roots:
            # For the outgoing channels only (see the module docstring): the server trusts the state.
            save_own(self._certs, self._keyring, cluster, roots, creds.cert_pem, creds.key_pem)
            log.info("this manager now trusts %s", "the old and the new CA" if rotating else "the current CA only")
        if node is not None and node.manager_cert_ca != issuer:
            return commands.RecordNodeCertificate(self._node_id, issuer, manager=True)
        if finished and leading:
            return commands.FinishCARotation(current, started_at)
        return None

    async def run(self) -> None:
        last_expiry_check = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() - last_expiry_check >= CERT_CHECK_PERIOD:
                    last_expiry_check = loop.time()
                    await asyncio.to_thread(
                        renew_certificate,
                        self._data,
                        self._store,
                        self._node_id,
                        raft_secret=self._secret,
                        keyring=self._keyring,
                    )
                    self._settled = None  # the files may be new
                command = await asyncio.to_thread(self.step)
                if command is not None:
                    result = await self._raft.propose_async(command, timeout=5.0)
                    if isinstance(command, commands.FinishCARotation) and result.ok:
                        log.info("CA rotation complete: every node holds a certificate from the new CA")
            except ProposalError as exc:
                log.info("certificate bookkeeping postponed: %s", exc.message)
            except Exception:  # keep serving with the current certificate; try again later
                log.exception("cannot bring this manager's certificate in line with the cluster CA")
            await asyncio.sleep(CA_CHECK_PERIOD)
