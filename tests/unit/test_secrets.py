"""Secrets and configs (ADR 38): the key hierarchy, the handlers, validation, the CLI's parsing,
delivery by the dispatcher, and the agent's in-memory vault and per-task tmpfs."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest

from tests.unit.agent_fakes import FakeRuntime, Recorder, make_env, make_task
from tests.unit.test_dispatcher_specs import Cluster, next_message, request, run
from tests.waiting import async_holds
from tests.waiting import async_wait_for as until
from warren import commands
from warren.agent.assignments import AssignmentSet
from warren.agent.controller import TaskController
from warren.agent.runtime import ContainerSpec, MountedFile
from warren.agent.taskfiles import FileVault, MissingFiles, TaskFiles
from warren.api import specconvert
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as pb
from warren.cli import secret as cli_secret
from warren.cli.errors import CliError
from warren.manager import secretkeys
from warren.manager.secretkeys import KeyRing, SecretKeyError
from warren.manager.server import ApiError
from warren.manager.taskfiles import TaskFileSource
from warren.model import (
    ClusterInfo,
    Config,
    FileRef,
    Mount,
    MountType,
    Secret,
    Service,
    ServiceSpec,
    Task,
    TaskState,
)
from warren.runtime.containerd import oci
from warren.runtime.exec.chain import exec_chain
from warren.state import ClusterState, Put
from warren.validate import ValidationError, check_file_refs, check_spec, check_target, check_value_size

RAFT_SECRET = "a" * 64


def cluster_info(**fields: object) -> ClusterInfo:
    return ClusterInfo("c", 0.0, "cert", "key", "w", "m", **fields)  # type: ignore[arg-type]


def keyed_cluster(ring: KeyRing) -> ClusterInfo:
    kek, dek = ring.new_key_pair()
    return cluster_info(kek_wrapped=kek, dek_wrapped=dek)


# -- the key hierarchy ---------------------------------------------------------------------------
def test_a_sealed_value_opens_with_the_same_root_and_not_with_another() -> None:
    ring = KeyRing(RAFT_SECRET)
    cluster = keyed_cluster(ring)
    sealed = ring.seal(cluster, "s1", b"hunter2")
    assert b"hunter2" not in sealed and b"hunter2" not in (cluster.kek_wrapped + cluster.dek_wrapped).encode()
    assert ring.open(cluster, "s1", sealed) == b"hunter2"
    assert KeyRing(RAFT_SECRET).open(cluster, "s1", sealed) == b"hunter2"  # another manager, same root
    with pytest.raises(SecretKeyError):
        KeyRing("b" * 64).open(cluster, "s1", sealed)  # another cluster's Raft secret
    with pytest.raises(SecretKeyError):
        ring.open(cluster, "s2", sealed)  # bound to its secret's id: not movable to another
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SecretKeyError):
        ring.open(cluster, "s1", tampered)
    with pytest.raises(SecretKeyError):
        ring.open(cluster, "s1", b"\x01short")


def test_autolock_only_rewraps_the_kek_and_every_value_still_opens() -> None:
    old_root, new_root = secretkeys.root_key(RAFT_SECRET), secretkeys.root_key("unlock key")
    kek, dek = secretkeys.new_key_pair(old_root)
    sealed = secretkeys.seal_value(secretkeys.data_key(old_root, kek, dek), "s1", b"v")
    rewrapped = secretkeys.rewrap_kek(kek, old_root, new_root)
    assert secretkeys.open_value(secretkeys.data_key(new_root, rewrapped, dek), "s1", sealed) == b"v"
    with pytest.raises(SecretKeyError):
        secretkeys.data_key(old_root, rewrapped, dek)
    with pytest.raises(SecretKeyError):
        secretkeys.data_key(new_root, "not-a-key", dek)


def test_a_manager_without_a_raft_secret_cannot_seal_or_open() -> None:
    with pytest.raises(SecretKeyError):
        KeyRing("").new_key_pair()
    with pytest.raises(SecretKeyError):
        KeyRing(RAFT_SECRET).data_key(cluster_info())  # no key yet


# -- the handlers --------------------------------------------------------------------------------
def _apply(state: ClusterState, command: commands.Command) -> commands.Result:
    result, changes = commands.apply(state, command)
    state.apply(changes)
    return result


def _state() -> tuple[ClusterState, KeyRing]:
    state = ClusterState()
    state.apply([Put("cluster", cluster_info())])
    ring = KeyRing(RAFT_SECRET)
    kek, dek = ring.new_key_pair()
    assert _apply(state, commands.SetSecretKeys(kek, dek)).ok
    other = ring.new_key_pair()
    assert _apply(state, commands.SetSecretKeys(*other)).ok  # the first proposal wins
    assert state.cluster is not None and state.cluster.dek_wrapped == dek
    return state, ring


def _secret(state: ClusterState, ring: KeyRing, name: str, value: bytes = b"v") -> commands.Result:
    assert state.cluster is not None
    sealed = ring.seal(state.cluster, f"id-{name}", value)
    secret = Secret(f"id-{name}", name, sealed, len(value))
    return _apply(state, commands.CreateSecret(secret, state.cluster.dek_wrapped))


def test_names_are_unique_and_a_value_sealed_with_a_lost_key_is_refused() -> None:
    state, ring = _state()
    assert _secret(state, ring, "db").ok
    taken = _secret(state, ring, "db")
    assert (taken.ok, taken.code) == (False, "already_exists")
    stale = commands.CreateSecret(Secret("x", "other", b"", 1), dek_wrapped="another key")
    assert _apply(state, stale).code == "failed_precondition"
    assert _apply(state, commands.CreateConfig(Config("c1", "app", b"x"))).ok
    assert _apply(state, commands.CreateConfig(Config("c2", "app", b"y"))).code == "already_exists"


def test_in_use_is_refused_and_a_service_needs_what_it_names() -> None:
    state, ring = _state()
    assert _secret(state, ring, "db").ok
    assert _apply(state, commands.CreateConfig(Config("c1", "app", b"x"))).ok
    uses = ServiceSpec(name="web", image="i", secrets=(FileRef("db", "/run/secrets/db"),))
    missing = msgspec.structs.replace(uses, configs=(FileRef("nope", "/nope"),))
    result = _apply(state, commands.CreateService(Service("s1", missing)))
    assert (result.code, result.message) == ("not_found", "config 'nope' not found (service web)")
    assert _apply(state, commands.CreateService(Service("s1", uses))).ok
    busy = _apply(state, commands.RemoveSecret("id-db"))
    assert (busy.code, busy.message.startswith("secret 'db' is in use by service web")) == ("failed_precondition", True)
    # An update that drops it leaves a live task of the old version using it: still in use.
    task = Task("t1", "s1", "web", 1, uses, 1, state=TaskState.RUNNING, node_id="n1")
    state.apply([Put("task", task)])
    assert _apply(state, commands.UpdateService("s1", ServiceSpec(name="web", image="i"), 1.0)).ok
    assert _apply(state, commands.RemoveSecret("id-db")).code == "failed_precondition"
    state.apply([Put("task", msgspec.structs.replace(task, state=TaskState.SHUTDOWN))])
    assert _apply(state, commands.RemoveSecret("id-db")).ok
    assert _apply(state, commands.RemoveSecret("id-db")).code == "not_found"
    # A rollback to the version that named it is refused now that it is gone.
    rollback = _apply(state, commands.RollbackService("s1", 2.0))
    assert (rollback.code, "secret 'db' not found" in rollback.message) == ("not_found", True)
    assert _apply(state, commands.RemoveConfig("c1")).ok


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["relative", "/", "/a/../b", "/a//b", "/a/./b", "/a/b/", "/a\nb", "/" + "x" * 1024])
def test_bad_targets_are_refused(target: str) -> None:
    with pytest.raises(ValidationError, match="target"):
        check_target("secret", target)


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        (FileRef("bad/name", "/a"), "invalid secret name"),
        (FileRef("ok", "/a", uid=-1), "uid"),
        (FileRef("ok", "/a", gid=2**32), "gid"),
        (FileRef("ok", "/a", mode=0o1000), "mode"),
    ],
)
def test_bad_references_are_refused(ref: FileRef, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        check_spec(ServiceSpec(name="web", image="i", secrets=(ref,)))


def test_one_target_holds_one_file_and_a_service_has_at_most_64() -> None:
    twice = ServiceSpec(name="w", image="i", secrets=(FileRef("a", "/x"),), configs=(FileRef("b", "/x"),))
    with pytest.raises(ValidationError, match="two secrets or configs"):
        check_file_refs(twice)
    many = ServiceSpec(name="w", image="i", secrets=tuple(FileRef(f"s{i}", f"/s{i}") for i in range(65)))
    with pytest.raises(ValidationError, match="at most 64"):
        check_file_refs(many)


def test_a_file_cannot_sit_at_a_mounts_target() -> None:
    """Secrets and mounts merged (ADR 38, 40): a file bound over a mount's directory fails in
    runc at start; the spec is refused instead."""
    both = ServiceSpec(
        name="w",
        image="i",
        mounts=(Mount(MountType.TMPFS, "/run/secrets/db"),),
        secrets=(FileRef("db", "/run/secrets/db"),),
    )
    with pytest.raises(ValidationError, match="both a mount's target and a secret's"):
        check_spec(both)
    inside = msgspec.structs.replace(both, mounts=(Mount(MountType.TMPFS, "/run/secrets"),))
    check_spec(inside)  # a file inside a mount is fine: it is bound after the mounts


def test_values_are_1_byte_to_500_kb() -> None:
    check_value_size("secret", 500 * 1024)
    for size, match in ((0, "empty"), (500 * 1024 + 1, "at most 500 KB")):
        with pytest.raises(ValidationError, match=match):
            check_value_size("secret", size)


def test_targets_default_as_docker_does() -> None:
    refs = [
        pb.FileRef(source="db"),
        pb.FileRef(source="db", target="pw", mode=0o400),
        pb.FileRef(source="d", target="/x"),
    ]
    assert specconvert.file_refs_from_pb(refs, "secret") == (
        FileRef("db", "/run/secrets/db"),
        FileRef("db", "/run/secrets/pw", mode=0o400),
        FileRef("d", "/x"),
    )
    assert specconvert.file_refs_from_pb([pb.FileRef(source="app")], "config") == (FileRef("app", "/app"),)


# -- the CLI -------------------------------------------------------------------------------------
def test_the_flag_syntax_is_dockers() -> None:
    parse = cli_secret.parse_file_ref
    assert parse("db") == {"source": "db"}
    assert parse("src=db,target=/p,uid=1,gid=2,mode=0400") == {
        "source": "db",
        "target": "/p",
        "uid": 1,
        "gid": 2,
        "mode": 0o400,
    }
    for bad, match in (
        ("", "required"),
        ("target=/p", "source=NAME"),
        ("source=a,mode=9", "octal"),
        ("source=a,uid=x", "number"),
        ("source=a,size=1", "option"),
    ):
        with pytest.raises(ValueError, match=match):
            parse(bad)


def test_an_update_rotates_a_secret_at_the_same_target() -> None:
    spec = pb.ServiceSpec(secrets=[pb.FileRef(source="old", target="/run/secrets/pw")])
    args = argparse.Namespace(secret_rm=["old"], secret_add=[{"source": "new", "target": "pw"}], config_rm=None)
    cli_secret.apply_service_flags(spec, args)
    assert [(r.source, r.target) for r in spec.secrets] == [("new", "pw")]
    with pytest.raises(CliError, match="no secret gone"):
        cli_secret.apply_service_flags(spec, argparse.Namespace(secret_rm=["gone"]))


# -- delivery ------------------------------------------------------------------------------------
def test_values_travel_with_the_spec_to_the_node_that_runs_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        ring = KeyRing(RAFT_SECRET)
        cluster.dispatcher._files = TaskFileSource(ring).files
        info = keyed_cluster(ring)
        secret = Secret("id-db", "db", ring.seal(info, "id-db", b"s3cret"), 6)
        spec = ServiceSpec(
            name="web", image="i", secrets=(FileRef("db", "/run/secrets/db"),), configs=(FileRef("app", "/app"),)
        )
        web = Service("svc-web", spec)
        plain = Service("svc-plain", ServiceSpec(name="plain", image="i"))
        cluster.store.commit(
            1, [Put("cluster", info), Put("secret", secret), Put("config", Config("c", "app", b"conf"))]
        )
        cluster.put(web, plain, _task("t1", plain))
        # A Raft snapshot carries secrets sealed, and a follower restored from one has them all.
        dump = cluster.store.dump()
        assert b"s3cret" not in msgspec.msgpack.encode(dump) and [x.name for x in dump.secrets] == ["db"]
        cluster.store.restore(dump)
        with cluster.store.read() as state:
            assert state.secret_by_name("db") == secret and state.config_by_name("app") is not None
        stream = cluster.dispatcher.Session(request(), None)
        agent = AssignmentSet()
        try:
            first = await next_message(stream)
            assert [list(s.files) for s in first.specs] == [[]]  # a task without secrets: none sent
            agent.apply(first)
            cluster.put(_task("t2", web))
            message = await next_message(stream)
            assert [(f.kind, f.name, f.data) for s in message.specs for f in s.files] == [
                ("secret", "db", b"s3cret"),
                ("config", "app", b"conf"),
            ]
            delta = agent.apply(message)
            assert delta.files == (("secret", "db", b"s3cret"), ("config", "app", b"conf"))
            assert b"s3cret" not in msgspec.msgpack.encode(delta.updated)  # the task (cached) holds none
        finally:
            await stream.aclose()
            cluster.close()

    run(scenario())


def _task(task_id: str, service: Service) -> Task:
    return Task(task_id, service.id, service.spec.name, 1, service.spec, service.version, node_id="worker1")


# -- the agent -----------------------------------------------------------------------------------
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@needs_root
def test_each_task_gets_its_files_on_its_own_tmpfs_with_owner_and_mode(tmp_path: Path) -> None:
    vault = FileVault()
    files = TaskFiles(tmp_path / "secrets", vault)
    task = make_task(
        secrets=(FileRef("db", "/run/secrets/db", uid=7, gid=8, mode=0o400),), configs=(FileRef("app", "/etc/app"),)
    )
    with pytest.raises(MissingFiles, match="waiting for config app, secret db"):
        files.prepare(task)
    vault.hold([("secret", "db", b"pw"), ("config", "app", b"conf")])
    try:
        mounted = files.prepare(task)
        assert [m.target for m in mounted] == ["/run/secrets/db", "/etc/app"]
        directory = tmp_path / "secrets" / task.id
        assert os.path.ismount(directory)
        with open("/proc/self/mounts") as mounts:
            assert any(line.split()[1] == str(directory) and line.split()[2] == "tmpfs" for line in mounts)
        first = os.stat(mounted[0].source)
        assert (first.st_uid, first.st_gid, first.st_mode & 0o777) == (7, 8, 0o400)
        assert Path(mounted[0].source).read_bytes() == b"pw"
        assert files.prepare(task) == mounted  # again (a local restart): rewritten, same paths
    finally:
        files.release(task.id)
    assert not (tmp_path / "secrets" / task.id).exists()
    vault.keep_only(set())
    assert vault.get("secret", "db") is None


@needs_root
def test_a_task_waits_for_values_it_lacks_then_starts_once_they_arrive(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()
    vault = FileVault()
    files = TaskFiles(tmp_path / "secrets", vault)

    async def scenario() -> None:
        task = make_task(secrets=(FileRef("db", "/run/secrets/db"),))
        ctl = TaskController(task, make_env(rt, rec, tmp_path, files=files))
        ctl.start()
        await until(lambda: "waiting for secret db" in (rec.last().message if rec.reports else ""), message="waiting")
        # It waits: no retry budget runs out (the env's is 3 x 10 ms), the task does not fail.
        await async_holds(
            lambda: rec.last_state() == TaskState.PREPARING and not rt.steps("prepare"), 0.5, message="waiting"
        )
        vault.hold([("secret", "db", b"pw")])
        ctl.poke()  # the worker does, when a message brings values
        await until(lambda: rec.last_state() == TaskState.RUNNING, message="running")
        (rid,) = rt.running()
        assert [(Path(f.source).read_bytes(), f.target) for f in rt.specs[rid].files] == [(b"pw", "/run/secrets/db")]
        ctl.remove()
        await asyncio.wait_for(ctl.done.wait(), 10)

    try:
        run(scenario())
    finally:
        files.sweep()
    assert not (tmp_path / "secrets").exists()


def test_runtimes_mount_paths_never_values() -> None:
    files = (MountedFile("/data/secrets/t1/0-secret-db", "/run/secrets/db"),)
    spec = ContainerSpec(task_id="t1", image="i", files=files)
    mounts = oci.build_spec(spec, {"Cmd": ["sh"]}, "/cg", host_files=[])["mounts"]
    assert mounts[-1] == {  # type: ignore[index]
        "destination": "/run/secrets/db",
        "type": "bind",
        "source": "/data/secrets/t1/0-secret-db",
        "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
    }
    argv, _, _ = exec_chain(["app"], "/bin/app", procs=[], netns="", resolv_conf="", user=None, files=files)
    assert argv[0].endswith("unshare") and argv[1:3] == ["--mount", "--propagation"]
    assert argv[-6:] == ["bind", "/data/secrets/t1/0-secret-db", "/run/secrets/db", "ro", "--", "app"]


# -- the control API -----------------------------------------------------------------------------
def test_every_secret_and_config_method_validates_and_answers_with_the_right_code() -> None:
    from tests.unit.test_manager_services import Manager

    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        control = manager.control

        async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
            try:
                await call
            except ApiError as exc:
                return exc.code, exc.message
            raise AssertionError("accepted")

        invalid, missing, taken = (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.ALREADY_EXISTS,
        )
        # A value no id can hold (ids are lower-case base 36), so that finding it means a leak.
        value = b"Pa55-W0rd!"
        created = await control.CreateSecret(cpb.CreateSecretRequest(name="db", data=value, labels={"a": "b"}), None)
        assert (created.name, created.size, dict(created.labels)) == ("db", len(value), {"a": "b"})
        with manager.store.read() as state:
            stored = state.secrets[created.id]
            assert value not in stored.sealed and state.cluster is not None and state.cluster.dek_wrapped
        for req, code, text in (
            (cpb.CreateSecretRequest(name="", data=b"x"), invalid, "invalid secret name"),
            (cpb.CreateSecretRequest(name="a/b", data=b"x"), invalid, "invalid secret name"),
            (cpb.CreateSecretRequest(name="e", data=b""), invalid, "cannot be empty"),
            (cpb.CreateSecretRequest(name="big", data=b"x" * (500 * 1024 + 1)), invalid, "at most 500 KB"),
            (cpb.CreateSecretRequest(name="l", data=b"x", labels={"": "v"}), invalid, "label"),
            (cpb.CreateSecretRequest(name="db", data=b"x"), taken, "already in use"),
        ):
            got = await refused(control.CreateSecret(req, None))
            assert got[0] == code and text in got[1], (req.name, got)
        for req, code in (
            (cpb.CreateConfigRequest(name="", data=b"x"), invalid),
            (cpb.CreateConfigRequest(name="c", data=b""), invalid),
        ):
            assert (await refused(control.CreateConfig(req, None)))[0] == code
        assert (await refused(control.GetSecret(cpb.GetSecretRequest(secret=""), None)))[0] == invalid
        assert (await refused(control.GetSecret(cpb.GetSecretRequest(secret="nope"), None)))[0] == missing
        assert (await refused(control.GetConfig(cpb.GetConfigRequest(config="nope"), None)))[0] == missing
        assert (await refused(control.RemoveSecret(cpb.RemoveSecretRequest(secret="nope"), None)))[0] == missing
        assert (await refused(control.RemoveConfig(cpb.RemoveConfigRequest(config=""), None)))[0] == invalid

        config = await control.CreateConfig(cpb.CreateConfigRequest(name="app", data=b"k=v"), None)
        assert (await control.GetConfig(cpb.GetConfigRequest(config=config.id[:6]), None)).data == b"k=v"
        listed = await control.ListConfigs(cpb.ListConfigsRequest(), None)
        assert [(c.name, c.data) for c in listed.configs] == [("app", b"")]  # values only from GetConfig
        spec = pb.ServiceSpec(name="web", image="busybox", replicas=0)
        spec.secrets.add(source="db")
        spec.configs.add(source="app", target="/etc/app.conf")
        await control.CreateService(cpb.CreateServiceRequest(spec=spec, no_resolve_image=True), None)
        shown = await control.GetSecret(cpb.GetSecretRequest(secret="db"), None)
        assert list(shown.services) == ["web"] and value not in shown.SerializeToString()
        code, text = await refused(control.RemoveSecret(cpb.RemoveSecretRequest(secret="db"), None))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "in use by service web" in text
        bad = pb.ServiceSpec(name="bad", image="busybox")
        bad.secrets.add(source="nope")
        code, text = await refused(control.CreateService(cpb.CreateServiceRequest(spec=bad), None))
        assert (code, text) == (missing, "secret 'nope' not found (service bad)")
        bad.secrets[0].target = "/a/../b"
        assert (await refused(control.CreateService(cpb.CreateServiceRequest(spec=bad), None)))[0] == invalid

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_the_value_comes_from_exactly_one_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def args(file: str | None = None, literal: str | None = None) -> argparse.Namespace:
        return argparse.Namespace(file=file, from_literal=literal, kind="secret")

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"from stdin\x00\xff")))
    assert cli_secret._value(args("-")) == b"from stdin\x00\xff"  # bytes as given, not text
    (tmp_path / "v").write_bytes(b"from a file")
    assert cli_secret._value(args(str(tmp_path / "v"))) == b"from a file"
    assert cli_secret._value(args(literal="lit")) == b"lit"
    (tmp_path / "big").write_bytes(b"x" * (500 * 1024 + 1))
    (tmp_path / "empty").write_bytes(b"")
    for bad, text in (
        (args(), "give the secret's value"),
        (args("-", "lit"), "not both"),
        (args(str(tmp_path / "big")), "at most 500 KB"),
        (args(str(tmp_path / "empty")), "cannot be empty"),
        (args(str(tmp_path / "missing")), "cannot read"),
        (args(str(tmp_path)), "cannot read"),
    ):
        with pytest.raises(CliError, match=text) as caught:
            cli_secret._value(bad)
        assert caught.value.code == 2
