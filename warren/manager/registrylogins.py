"""Registry logins on the managers (ADR 43): where the password is sealed, and who gets it.

`LoginVault` is the one place a password is sealed before it is proposed and unsealed where it
is used (the digest lookup, and the dispatcher sending it to the agent of a task that pulls).
It is an adapter over the secrets' key ring (ADR 38): a password is sealed like a secret's
value, by the cluster's data key (DEK, wrapped by the KEK, wrapped by the root from the Raft
secret), so every sealed value in the state has one key hierarchy, and autolock re-wraps it all.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable

from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager.ports import StateReader
from warren.manager.secretkeys import KeyRing, SecretKeyError
from warren.model import ClusterInfo, RegistryLogin, Task, TaskState, registry_login_id
from warren.runtime.containerd.reference import InvalidReference, parse_reference
from warren.runtime.containerd.registry import Credentials
from warren.state import ClusterState

log = logging.getLogger(__name__)

SEALED_PREFIX = "warren-sealed-v2:"  # v1 was the vault's own key (before the secrets' key ring)
# The associated data the key ring binds a value to: the login's id, in a namespace of its own
# so that a sealed password can never pass for a secret's value (a secret's id is random hex).
_AD_PREFIX = "registry-login/"


class VaultError(Exception):
    """A sealed password cannot be opened (another cluster's, or damaged), or the cluster has
    no data key to seal it with."""


class LoginVault:
    """Seals and opens registry passwords with the cluster's data key (ADR 38, 43)."""

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    def seal(self, cluster: ClusterInfo, password: str, login_id: str) -> str:
        """The password bound to its login id (a sealed value moved to another login is refused).
        The cluster must have its data key (`SetSecretKeys`)."""
        try:
            sealed = self._keyring.seal(cluster, _AD_PREFIX + login_id, password.encode())
        except SecretKeyError as exc:
            raise VaultError(f"cannot seal the registry login {login_id}: {exc}") from None
        return SEALED_PREFIX + base64.b64encode(sealed).decode()

    def open(self, cluster: ClusterInfo | None, login: RegistryLogin) -> Credentials:
        if not login.sealed_password.startswith(SEALED_PREFIX):
            raise VaultError(f"the registry login {login.id} is not sealed with the cluster's data key")
        if cluster is None:
            raise VaultError("the cluster is still initialising")
        try:
            raw = base64.b64decode(login.sealed_password[len(SEALED_PREFIX) :], validate=True)
            plain = self._keyring.open(cluster, _AD_PREFIX + login.id, raw)
        except (binascii.Error, SecretKeyError) as exc:
            raise VaultError(f"the registry login {login.id} cannot be opened with this manager's key: {exc}") from None
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
            cluster = state.cluster
        if login is None:
            return None
        try:
            return self._vault.open(cluster, login)
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
            creds = vault.open(state.cluster, login)
        except VaultError as exc:  # the task then fails with the registry's "access denied"
            log.warning("cannot send the registry login for task %s: %s", task.id, exc)
            continue
        out.append(dpb.PullLogin(task_id=task.id, host=login.host, username=creds.username, password=creds.password))
    return out
