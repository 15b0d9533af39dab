"""Registry logins on the managers (ADR 43): where the password is sealed, and who gets it.

`LoginVault` is the one place a password is sealed before it is proposed and unsealed where it
is used (the digest lookup, and the dispatcher sending it to the agent of a task that pulls).
Until issue #13's secrets store lands it seals with AES-256-GCM under a key derived from the
Raft secret, as the CA key is wrapped (warren.manager.cakey); at that merge the vault becomes a
thin adapter over the secrets' encrypted store, and nothing else changes (ADR 43).
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager.ports import StateReader
from warren.model import RegistryLogin, Task, TaskState, registry_login_id
from warren.runtime.containerd.registry import Credentials, InvalidReference, parse_reference
from warren.state import ClusterState

log = logging.getLogger(__name__)

SEALED_PREFIX = "warren-sealed-v1:"
_INFO = b"warren registry login v1"
_NONCE_BYTES = 12


class VaultError(Exception):
    """A sealed password cannot be opened (another cluster's, or damaged)."""


class LoginVault:
    """Seals and opens registry passwords. THE PORT the secrets work replaces (ADR 43)."""

    def __init__(self, raft_secret: str) -> None:
        if not raft_secret:
            raise ValueError("no Raft secret to seal registry logins with")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(raft_secret.encode())
        self._aead = AESGCM(key)

    def seal(self, password: str, login_id: str) -> str:
        """The password bound to its login id (a sealed value moved to another login is refused)."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, password.encode(), _INFO + login_id.encode())
        return SEALED_PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, login: RegistryLogin) -> Credentials:
        if not login.sealed_password.startswith(SEALED_PREFIX):
            raise VaultError(f"the registry login {login.id} is not sealed")
        try:
            raw = base64.b64decode(login.sealed_password[len(SEALED_PREFIX) :], validate=True)
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _INFO + login.id.encode())
        except (ValueError, InvalidTag) as exc:
            raise VaultError(f"the registry login {login.id} cannot be opened with this manager's key") from exc
        return Credentials(login.username, plain.decode())


def image_registry(image: str) -> str:
    """The registry an image reference pulls from ("" if it does not parse)."""
    try:
        return parse_reference(image).registry
    except InvalidReference:
        return ""


def login_for(state: ClusterState, service_id: str, image: str) -> RegistryLogin | None:
    """The login a task of `service_id` pulls `image` with: the service's own, else the cluster's."""
    host = image_registry(image)
    if not host:
        return None
    return state.registry_logins.get(registry_login_id(host, service_id)) or state.registry_logins.get(host)


class StateCredentials:
    """The cluster's logins as a CredentialStore, read from the replicated state at each lookup
    (the manager's digest lookup, ADR 34)."""

    def __init__(self, store: StateReader, vault: LoginVault) -> None:
        self._store = store
        self._vault = vault

    def lookup(self, host: str) -> Credentials | None:
        with self._store.read() as state:
            login = state.registry_logins.get(host)
        if login is None:
            return None
        try:
            return self._vault.open(login)
        except VaultError:
            return None


def _needs_pull(task: Task) -> bool:
    """A task its agent may still have to pull the image for (not started yet)."""
    return task.desired_state == TaskState.RUNNING and task.state < TaskState.RUNNING and not task.draining_since


def pull_logins(state: ClusterState, tasks: Iterable[Task], vault: LoginVault | None) -> list[dpb.PullLogin]:
    """The registry logins of `tasks` that are yet to pull (ADR 43), opened for their agent."""
    out: list[dpb.PullLogin] = []
    for task in tasks:
        login = login_for(state, task.service_id, task.spec.image) if vault is not None and _needs_pull(task) else None
        if login is None or vault is None:
            continue
        try:
            creds = vault.open(login)
        except VaultError as exc:  # the task then fails with the registry's "access denied"
            log.warning("cannot send the registry login for task %s: %s", task.id, exc)
            continue
        out.append(dpb.PullLogin(task_id=task.id, host=login.host, username=creds.username, password=creds.password))
    return out
