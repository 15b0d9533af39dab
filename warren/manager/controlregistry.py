"""The Control API's registry logins (ADR 43): `registry login/logout/ls`, and the service's own
login that `--with-registry-auth` sends with a create or an update.

Mixed into ControlService, whose `_store`, `_propose`, `_vault` and `_keyed_cluster` (the
cluster with its data key, made by the first sealed value: SecretsControl) they use. A password
is checked, sealed by the vault and proposed; no reply, log line or error ever holds it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import grpc

from warren import commands
from warren.api.v1 import control_pb2 as cpb
from warren.manager.registrylogins import LoginVault, VaultError, image_registry
from warren.manager.server import ApiError
from warren.model import ClusterInfo, registry_login_id
from warren.model import RegistryLogin as LoginRecord
from warren.runtime.containerd.reference import InvalidReference, check_registry_host
from warren.runtime.containerd.registry import Credentials
from warren.state import ClusterState
from warren.text import has_control, shown

if TYPE_CHECKING:
    from warren.manager.ports import StateReader

MAX_USERNAME = 255
MAX_PASSWORD = 16 * 1024  # identity tokens (JWTs) run to a few KiB
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def check_auth(auth: cpb.RegistryAuth) -> tuple[str, Credentials]:
    """The registry and the login of a request, or INVALID_ARGUMENT saying which part is wrong."""
    try:
        host = check_registry_host(auth.host)
    except InvalidReference as exc:
        raise ApiError(INVALID, str(exc)) from None
    if not auth.username:
        raise ApiError(INVALID, f"a username is required to log in to {host}")
    if len(auth.username) > MAX_USERNAME or ":" in auth.username or has_control(auth.username):
        raise ApiError(
            INVALID, f"invalid username {shown(auth.username)}: at most {MAX_USERNAME} characters, no ':' or control"
        )
    if not auth.password:
        raise ApiError(INVALID, f"a password is required to log in to {host}")
    if len(auth.password) > MAX_PASSWORD:
        raise ApiError(INVALID, f"the password is too long (at most {MAX_PASSWORD} characters)")
    return host, Credentials(auth.username, auth.password)


def login_info(login: LoginRecord, state: ClusterState) -> cpb.RegistryLoginInfo:
    service = state.services.get(login.service_id) if login.service_id else None
    return cpb.RegistryLoginInfo(
        host=login.host,
        username=login.username,
        service=service.spec.name if service else login.service_id,
        created_at=login.created_at,
        updated_at=login.updated_at,
    )


class RegistryControl:
    """Registry logins, for ControlService (which provides what is declared here)."""

    _store: StateReader
    _vault: LoginVault | None

    if TYPE_CHECKING:

        async def _propose(self, command: commands.Command) -> commands.Result: ...

        async def _keyed_cluster(self) -> ClusterInfo: ...

    async def _sealed_login(self, host: str, creds: Credentials, service_id: str = "") -> LoginRecord:
        if self._vault is None:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "this manager has no key to seal registry logins with")
        login_id = registry_login_id(host, service_id)
        cluster = await self._keyed_cluster()
        try:
            sealed = self._vault.seal(cluster, creds.password, login_id)
        except VaultError as exc:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        now = time.time()
        return LoginRecord(
            id=login_id,
            host=host,
            username=creds.username,
            sealed_password=sealed,
            created_at=now,
            updated_at=now,
            service_id=service_id,
        )

    async def RegistryLogin(self, request: cpb.RegistryLoginRequest, context: object) -> cpb.RegistryLoginInfo:
        host, creds = check_auth(request.auth)
        login = await self._sealed_login(host, creds)
        await self._propose(commands.SetRegistryLogin(login))
        with self._store.read() as state:
            return login_info(state.registry_logins.get(login.id, login), state)

    async def RegistryLogout(self, request: cpb.RegistryLogoutRequest, context: object) -> cpb.RegistryLogoutResponse:
        try:
            host = check_registry_host(request.host)
        except InvalidReference as exc:
            raise ApiError(INVALID, str(exc)) from None
        with self._store.read() as state:
            if host not in state.registry_logins:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"not logged in to registry {shown(host)}")
        await self._propose(commands.RemoveRegistryLogin(host))
        return cpb.RegistryLogoutResponse()

    async def ListRegistryLogins(
        self, request: cpb.ListRegistryLoginsRequest, context: object
    ) -> cpb.ListRegistryLoginsResponse:
        with self._store.read() as state:
            logins = sorted(state.registry_logins.values(), key=lambda login: (login.service_id != "", login.id))
            return cpb.ListRegistryLoginsResponse(logins=[login_info(login, state) for login in logins])

    async def _service_login(
        self, auth: cpb.RegistryAuth, image: str, service_id: str
    ) -> tuple[LoginRecord, Credentials]:
        """`--with-registry-auth`: the caller's login, for the registry of the service's image."""
        host, creds = check_auth(auth)
        if image_registry(image) != host:
            raise ApiError(
                INVALID,
                f"--with-registry-auth: the login is for {shown(host)}, the image is from {image_registry(image)!r}",
            )
        return await self._sealed_login(host, creds, service_id), creds
