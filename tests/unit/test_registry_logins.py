"""Registry logins (issue #13, ADR 43) without a network: the client's pure parts, the replicated
commands, the vault that seals passwords, who gets which login, the control API's checks, the
agent's in-memory copy, and the CLI's reading of the caller's Docker login."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from warren import commands
from warren.agent.assignments import AssignmentSet
from warren.agent.runtime import ContainerSpec, PullLogin
from warren.api import convert
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.cli.errors import CliError
from warren.cli.registry import caller_login
from warren.manager.controlapi import ControlService
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.manager.registrylogins import LoginVault, StateCredentials, VaultError, login_for, pull_logins
from warren.manager.secretkeys import KeyRing, SecretKeyError, rewrap_kek, root_key
from warren.manager.server import ApiError
from warren.model import ClusterInfo, RegistryLogin, Service, ServiceSpec, Task, TaskState, registry_login_id
from warren.runtime.containerd.reference import (
    InvalidReference,
    check_registry_host,
    parse_reference,
    parse_registry_ca,
)
from warren.runtime.containerd.registry import Credentials, RegistryClient, StaticCredentials
from warren.state import ClusterState, Put

T = TypeVar("T")
SECRET = "raft-secret-for-tests"
KEYS = KeyRing(SECRET)
_KEK, _DEK = KEYS.new_key_pair()
CLUSTER = ClusterInfo("c", 0.0, "cert", "key", "w", "m", kek_wrapped=_KEK, dek_wrapped=_DEK)
VAULT = LoginVault(KEYS)
PASSWORD = "pa55-MARKER-9f3c"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# -- the client's pure parts -------------------------------------------------------------------


def test_registry_ca_flag_and_registry_names() -> None:
    assert parse_registry_ca("reg.example:5000=/etc/ca.pem") == ("reg.example:5000", Path("/etc/ca.pem"))
    assert check_registry_host("index.docker.io") == "docker.io"
    assert check_registry_host("registry-1.docker.io") == "docker.io"
    for bad in ("reg.example", "=/ca.pem", "reg.example=", "bad host=/ca.pem", "a/b=/ca.pem"):
        with pytest.raises(InvalidReference) as raised:
            parse_registry_ca(bad)
        assert "\n" not in str(raised.value)
    for bad in ("", "has space", "a/b", "-x.example"):
        with pytest.raises(InvalidReference, match="expected HOST or HOST:PORT"):
            check_registry_host(bad)


def test_credentials_never_show_their_password() -> None:
    creds = Credentials("alice", PASSWORD)
    assert PASSWORD not in repr(creds) and PASSWORD not in str(creds)
    login = PullLogin("reg:5000", "alice", PASSWORD)
    assert PASSWORD not in repr(ContainerSpec(task_id="t1", image="reg:5000/app", pull_login=login))
    record = RegistryLogin(id="reg:5000", host="reg:5000", username="alice", sealed_password="warren-sealed-v1:xyz")
    assert "xyz" not in repr(record)


def test_a_task_login_comes_before_the_store_and_only_for_its_registry() -> None:
    cluster = StaticCredentials({"reg:5000": Credentials("cluster", "c"), "other:1": Credentials("o", "o")})
    client = RegistryClient(credentials=cluster)
    own = client.with_login("reg:5000", Credentials("own", "x"))
    ref = parse_reference("reg:5000/app:1")
    assert own._login(ref) == Credentials("own", "x")
    assert own._login(parse_reference("other:1/app")) == Credentials("o", "o")
    assert client._login(ref) == Credentials("cluster", "c")  # the original is unchanged
    hub = RegistryClient(credentials=StaticCredentials({"docker.io": Credentials("hub", "h")}))
    assert hub._login(parse_reference("busybox")) == Credentials("hub", "h")


# -- the replicated commands -------------------------------------------------------------------


def _apply(state: ClusterState, command: commands.Command) -> commands.Result:
    result, changes = commands.apply(state, command)
    state.apply(changes)
    return result


def _login(host: str, user: str = "alice", service_id: str = "", at: float = 1.0) -> RegistryLogin:
    login_id = registry_login_id(host, service_id)
    sealed = VAULT.seal(CLUSTER, PASSWORD, login_id)
    return RegistryLogin(login_id, host, user, sealed, at, at, service_id)


def _service(name: str = "web", image: str = "reg:5000/app:1") -> Service:
    return Service(id=f"svc-{name}", spec=ServiceSpec(name=name, image=image))


def test_login_commands_store_replace_and_remove() -> None:
    state = ClusterState()
    assert _apply(state, commands.SetRegistryLogin(_login("reg:5000", at=1.0))).ok
    assert _apply(state, commands.SetRegistryLogin(_login("reg:5000", user="bob", at=5.0))).ok
    stored = state.registry_logins["reg:5000"]
    assert (stored.username, stored.created_at, stored.updated_at) == ("bob", 1.0, 5.0)

    unsealed = msgspec.structs.replace(_login("x:1"), sealed_password="")
    assert _apply(state, commands.SetRegistryLogin(unsealed)).code == "invalid_argument"
    wrong_id = msgspec.structs.replace(_login("x:1"), id="y:1")
    assert _apply(state, commands.SetRegistryLogin(wrong_id)).code == "invalid_argument"
    orphan = _login("reg:5000", service_id="svc-none")
    assert _apply(state, commands.SetRegistryLogin(orphan)).code == "not_found"

    assert _apply(state, commands.RemoveRegistryLogin("nope:1")).code == "not_found"
    assert _apply(state, commands.RemoveRegistryLogin("reg:5000")).ok
    assert not state.registry_logins


def test_a_service_login_is_created_with_its_service_and_removed_with_it() -> None:
    state = ClusterState()
    service = _service()
    own = _login("reg:5000", service_id=service.id)
    assert _apply(state, commands.CreateService(service, logins=(own,))).ok
    assert state.registry_logins[own.id].service_id == service.id
    assert _apply(state, commands.SetRegistryLogin(_login("reg:5000"))).ok
    assert _apply(state, commands.RemoveService(service.id, at=2.0)).ok
    assert list(state.registry_logins) == ["reg:5000"]  # the cluster's stays


def test_login_commands_round_trip_through_the_codec() -> None:
    command = commands.SetRegistryLogin(_login("reg:5000", service_id="svc-web"))
    assert commands.decode(commands.encode(command)) == command
    assert PASSWORD.encode() not in commands.encode(command)  # the Raft entry holds it sealed


# -- the vault and who gets which login --------------------------------------------------------


def test_the_vault_opens_only_what_it_sealed_for_that_login() -> None:
    vault = LoginVault(KeyRing(SECRET))  # another manager of the same cluster
    login = _login("reg:5000")
    assert PASSWORD not in login.sealed_password
    assert vault.open(CLUSTER, login) == Credentials("alice", PASSWORD)
    with pytest.raises(VaultError):
        LoginVault(KeyRing("another cluster's secret")).open(CLUSTER, login)
    with pytest.raises(VaultError):  # a sealed value moved to another registry's login
        vault.open(CLUSTER, msgspec.structs.replace(login, id="evil:1", host="evil:1"))
    with pytest.raises(VaultError):
        vault.open(CLUSTER, msgspec.structs.replace(login, sealed_password="plain"))
    with pytest.raises(VaultError, match="no data key"):
        vault.seal(_keyless(CLUSTER), PASSWORD, "reg:5000")


def test_a_login_is_sealed_by_the_secrets_data_key_and_never_passes_for_a_secret() -> None:
    """One key hierarchy (ADR 38, 43): the cluster's DEK seals a login, bound to the login's id in
    a namespace of its own, so it cannot be opened as the secret of the same id."""
    login = _login("reg:5000")
    raw = base64.b64decode(login.sealed_password.split(":", 1)[1])
    assert KEYS.open(CLUSTER, "registry-login/reg:5000", raw) == PASSWORD.encode()
    with pytest.raises(SecretKeyError):
        KEYS.open(CLUSTER, "reg:5000", raw)
    # Autolock re-wraps the KEK under another root: the login opens as before.
    kek = rewrap_kek(CLUSTER.kek_wrapped, root_key(SECRET), root_key("unlock"))
    rewrapped = msgspec.structs.replace(CLUSTER, kek_wrapped=kek)
    assert LoginVault(KeyRing("unlock")).open(rewrapped, login) == Credentials("alice", PASSWORD)


def _task(task_id: str, service: Service, state: TaskState = TaskState.ASSIGNED, node: str = "n1") -> Task:
    return Task(task_id, service.id, service.spec.name, 1, service.spec, 1, state=state, node_id=node)


def test_a_service_login_comes_before_the_cluster_one_and_only_pulling_tasks_get_it() -> None:
    state = ClusterState()
    state.apply([Put("cluster", CLUSTER)])
    web, other = _service("web"), _service("other", image="elsewhere:1/app")
    for service in (web, other):
        _apply(state, commands.CreateService(service))
    _apply(state, commands.SetRegistryLogin(_login("reg:5000", user="cluster")))
    assert login_for(state, web.id, web.spec.image).username == "cluster"
    _apply(state, commands.SetRegistryLogin(_login("reg:5000", user="own", service_id=web.id)))
    assert login_for(state, web.id, web.spec.image).username == "own"
    assert login_for(state, other.id, other.spec.image) is None
    assert login_for(state, web.id, "NOT A REFERENCE") is None

    pending, running = _task("t1", web), _task("t2", web, TaskState.RUNNING)
    stopping = msgspec.structs.replace(_task("t3", web), desired_state=TaskState.SHUTDOWN)
    sent = pull_logins(state, [pending, running, stopping, _task("t4", other)], VAULT)
    assert [(p.task_id, p.host, p.username, p.password) for p in sent] == [("t1", "reg:5000", "own", PASSWORD)]
    assert pull_logins(state, [pending], None) == []


def test_the_manager_lookup_reads_the_cluster_logins_from_the_state() -> None:
    store = InMemoryState()
    login = commands.apply(ClusterState(), commands.SetRegistryLogin(_login("reg:5000")))[1]
    store.put(Put("cluster", CLUSTER), *login)
    credentials = StateCredentials(store, VAULT)
    assert credentials.lookup("reg:5000") == Credentials("alice", PASSWORD)
    assert credentials.lookup("other:1") is None
    assert StateCredentials(store, LoginVault(KeyRing("wrong"))).lookup("reg:5000") is None


# -- the control API ---------------------------------------------------------------------------


class Digests:
    """A DigestLookup that records the login it was asked with."""

    def __init__(self) -> None:
        self.logins: list[Credentials | None] = []

    def digest(self, image: str, credentials: Credentials | None = None) -> str:
        self.logins.append(credentials)
        return "sha256:" + "1" * 64


def _control(images: Digests | None = None) -> tuple[ControlService, InMemoryState]:
    store = InMemoryState()
    store.put(Put("cluster", _keyless(CLUSTER)))  # the cluster's keys are made by the first login
    return ControlService(store, InMemoryRaft(store), raft_secret=SECRET, images=images), store


def _keyless(cluster: ClusterInfo) -> ClusterInfo:
    return msgspec.structs.replace(cluster, kek_wrapped="", dek_wrapped="")


def auth(host: str = "reg:5000", username: str = "alice", password: str = PASSWORD) -> cpb.RegistryAuth:
    return cpb.RegistryAuth(host=host, username=username, password=password)


def test_login_logout_and_ls_never_return_the_password() -> None:
    async def scenario() -> None:
        control, store = _control()
        info = await control.RegistryLogin(cpb.RegistryLoginRequest(auth=auth("index.docker.io")), None)
        assert (info.host, info.username) == ("docker.io", "alice")
        listed = await control.ListRegistryLogins(cpb.ListRegistryLoginsRequest(), None)
        assert [(i.host, i.username, i.service) for i in listed.logins] == [("docker.io", "alice", "")]
        assert PASSWORD not in str(listed) and PASSWORD not in str(info)
        with store.read() as state:
            assert PASSWORD not in state.registry_logins["docker.io"].sealed_password
        await control.RegistryLogout(cpb.RegistryLogoutRequest(host="docker.io"), None)
        with pytest.raises(ApiError, match="not logged in") as missing:
            await control.RegistryLogout(cpb.RegistryLogoutRequest(host="docker.io"), None)
        assert missing.value.code.name == "NOT_FOUND"

    run(scenario())


@pytest.mark.parametrize(
    ("request_auth", "message"),
    [
        (auth(host=""), "invalid registry"),
        (auth(host="has space"), "invalid registry"),
        (auth(username=""), "a username is required"),
        (auth(username="a:b"), "invalid username"),
        (auth(username="a\nb"), "invalid username"),
        (auth(username="u" * 300), "invalid username"),
        (auth(password=""), "a password is required"),
        (auth(password="p" * 20000), "the password is too long"),
    ],
)
def test_bad_logins_are_refused_with_one_line(request_auth: cpb.RegistryAuth, message: str) -> None:
    async def scenario() -> None:
        control, store = _control()
        with pytest.raises(ApiError, match=message) as refused:
            await control.RegistryLogin(cpb.RegistryLoginRequest(auth=request_auth), None)
        assert refused.value.code.name == "INVALID_ARGUMENT" and "\n" not in str(refused.value)
        assert PASSWORD not in str(refused.value)
        with store.read() as state:
            assert not state.registry_logins
        with pytest.raises(ApiError) as bad_logout:
            await control.RegistryLogout(cpb.RegistryLogoutRequest(host="bad host"), None)
        assert bad_logout.value.code.name == "INVALID_ARGUMENT"

    run(scenario())


def test_with_registry_auth_stores_the_service_login_and_pins_with_it() -> None:
    async def scenario() -> None:
        digests = Digests()
        control, store = _control(digests)
        spec = pb.ServiceSpec(name="web", image="reg:5000/app:1", mode="replicated", replicas=1)
        created = await control.CreateService(cpb.CreateServiceRequest(spec=spec, registry_auth=auth()), None)
        assert digests.logins == [Credentials("alice", PASSWORD)]
        with store.read() as state:
            login = state.registry_logins[registry_login_id("reg:5000", created.id)]
            assert login.service_id == created.id and login_for(state, created.id, spec.image) == login
        listed = await control.ListRegistryLogins(cpb.ListRegistryLoginsRequest(), None)
        assert [(i.host, i.service) for i in listed.logins] == [("reg:5000", "web")]

        updated_spec = pb.ServiceSpec()
        updated_spec.CopyFrom(created.spec)
        updated_spec.image = "reg:5000/app:2"
        request = cpb.UpdateServiceRequest(service="web", spec=updated_spec, registry_auth=auth(username="bob"))
        await control.UpdateService(request, None)
        with store.read() as state:
            assert state.registry_logins[registry_login_id("reg:5000", created.id)].username == "bob"

        # A login for another registry than the image's is a mistake, refused before anything.
        other = pb.ServiceSpec(name="other", image="reg:5000/app:1", mode="replicated", replicas=1)
        with pytest.raises(ApiError, match="the image is from") as refused:
            await control.CreateService(cpb.CreateServiceRequest(spec=other, registry_auth=auth("x:1")), None)
        assert refused.value.code.name == "INVALID_ARGUMENT"
        with store.read() as state:
            assert state.service_by_name("other") is None

    run(scenario())


# -- the agent -----------------------------------------------------------------------------------


def _assignment(
    task_id: str, kind: int, version: int, applies_to: int = 0, state: TaskState = TaskState.ASSIGNED, **fields: Any
) -> dpb.AssignmentsMessage:
    spec = ServiceSpec(name="web", image="reg:5000/app:1")
    task = Task(task_id, "svc-web", "web", 1, spec, 1, state=state, node_id="n1")
    return dpb.AssignmentsMessage(
        type=kind,
        session_id="s1",
        version=version,
        applies_to=applies_to,
        updated=[convert.task_to_pb(task, with_spec=True)],
        **fields,
    )


def test_the_agent_holds_logins_in_memory_with_their_tasks_only() -> None:
    logins: dict[str, PullLogin] = {}
    assignments = AssignmentSet(logins=logins)
    login = dpb.PullLogin(task_id="t1", host="reg:5000", username="alice", password=PASSWORD)
    assignments.apply(_assignment("t1", dpb.AssignmentsMessage.COMPLETE, 1, pull_logins=[login]))
    assert logins == {"t1": PullLogin("reg:5000", "alice", PASSWORD)}
    # A later message without the login (e.g. the task's state changed) keeps it...
    assignments.apply(_assignment("t1", dpb.AssignmentsMessage.INCREMENTAL, 2, applies_to=1))
    assert "t1" in logins
    # ...the task leaving the set drops it, and a COMPLETE set replaces them all.
    assignments.apply(
        dpb.AssignmentsMessage(type=dpb.AssignmentsMessage.INCREMENTAL, version=3, applies_to=2, removed=["t1"])
    )
    assert logins == {}
    assignments.apply(_assignment("t2", dpb.AssignmentsMessage.INCREMENTAL, 4, applies_to=3, pull_logins=[login]))
    assignments.apply(_assignment("t3", dpb.AssignmentsMessage.COMPLETE, 1))
    assert logins == {}
    # Once the managers know the task runs, its image is pulled: the login is forgotten.
    login4 = dpb.PullLogin(task_id="t4", host="reg:5000", username="alice", password=PASSWORD)
    assignments.apply(_assignment("t4", dpb.AssignmentsMessage.INCREMENTAL, 2, applies_to=1, pull_logins=[login4]))
    assert "t4" in logins
    assignments.apply(_assignment("t4", dpb.AssignmentsMessage.INCREMENTAL, 3, applies_to=2, state=TaskState.RUNNING))
    assert "t4" not in logins


# -- the CLI: the caller's Docker login ---------------------------------------------------------


def _docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: object) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


def test_with_registry_auth_reads_the_callers_docker_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    _docker_config(
        tmp_path,
        monkeypatch,
        {"auths": {"reg:5000": {"auth": encoded}, "https://index.docker.io/v1/": {"auth": encoded}}},
    )
    assert caller_login("reg:5000/app:1") == ("reg:5000", "alice", PASSWORD)
    assert caller_login("busybox") == ("docker.io", "alice", PASSWORD)
    for image, config, message in [
        ("other:1/app", {"auths": {}}, "it has none"),
        ("other:1/app", {"auths": {}, "credsStore": "desktop"}, "credential helper"),
        ("reg:5000/app", {"auths": {"reg:5000": {"auth": "bm9jb2xvbg=="}}}, "malformed"),  # "nocolon"
        ("reg:5000/app", {"auths": {"reg:5000": {"auth": "!!"}}}, "malformed"),
        ("App", {"auths": {}}, "invalid image reference"),
    ]:
        _docker_config(tmp_path, monkeypatch, config)
        with pytest.raises(CliError, match=message) as refused:
            caller_login(image)
        assert refused.value.code == 2
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
    with pytest.raises(CliError, match="does not exist"):
        caller_login("reg:5000/app")


# -- persistence and the node flag ---------------------------------------------------------------


def test_logins_survive_a_restart_of_the_store_and_travel_in_snapshots(tmp_path: Path) -> None:
    from warren.manager.store import Store, open_environment

    store = Store(open_environment(tmp_path / "db"))
    login = _login("reg:5000")
    result, changes = commands.apply(store.state, commands.SetRegistryLogin(login))
    assert result.ok
    store.commit(1, changes)
    snapshot = store.dump()
    store.env.close()
    assert Store(open_environment(tmp_path / "db")).state.registry_logins == {"reg:5000": login}
    other = Store(open_environment(tmp_path / "db2"))
    other.restore(snapshot)
    assert other.state.registry_logins == {"reg:5000": login}
    for path in (tmp_path / "db").iterdir():
        assert PASSWORD.encode() not in path.read_bytes()


def test_the_registry_ca_flag_is_checked_where_it_is_given(tmp_path: Path) -> None:
    from tests.fixtures.registry_auth import TestCA
    from warren.cli.worker import registry_cas

    ca = TestCA(tmp_path / "ca")
    (tmp_path / "not-pem").write_text("hello")
    assert registry_cas(None) is None
    assert registry_cas([f"reg:5000={ca.ca_pem}"]) == (f"reg:5000={ca.ca_pem.resolve()}",)
    for flag, message in [
        (f"reg:5000={tmp_path / 'missing.pem'}", "cannot load the registry CA"),
        (f"reg:5000={tmp_path / 'not-pem'}", "cannot load the registry CA"),
        (str(ca.ca_pem), "must be HOST"),
        (f"bad host={ca.ca_pem}", "invalid registry"),
    ]:
        with pytest.raises(CliError, match=message) as refused:
            registry_cas([flag])
        assert refused.value.code == 2 and "\n" not in refused.value.message
