"""Mounts and named volumes (ADR 40), pure: the --mount parser, the spec's mount rules, the
scheduler's volume affinity and its pending reason, the reconciler binding a volume to its first
task's node, the FSM's volume commands, and the runtimes' mount specs."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import msgspec
import pytest

from tests.unit.agent_fakes import FakeRuntime, Recorder, make_env, make_task
from tests.unit.core_sim import Sim, node, pending_task, running_task, spec
from tests.waiting import async_holds
from tests.waiting import async_wait_for as until
from warren import commands
from warren.agent.assignments import AssignmentDelta
from warren.agent.cache import AgentCache
from warren.agent.runtime import ContainerSpec, MountedFile, MountSpec, RuntimeFailure
from warren.agent.status import StatusQueue
from warren.agent.volumes import LocalVolumes, resolve_mounts
from warren.agent.worker import Worker
from warren.api.v1 import types_pb2 as pb
from warren.cli import main
from warren.cli import mounts as cli_mounts
from warren.cli.errors import CliError
from warren.model import (
    Availability,
    ContainerOptions,
    Mount,
    MountType,
    NodeStatus,
    ServiceMode,
    ServiceSpec,
    TaskState,
    Volume,
)
from warren.mounts import MountError, check_mounts
from warren.reconciler import is_empty
from warren.runtime.containerd import oci
from warren.runtime.exec.chain import HOSTNAME_SHIM, RESOLV_SHIM, exec_chain, make_mount_points
from warren.runtime.exec.mounts import MOUNTS_SHIM
from warren.scheduler import schedule
from warren.state import Put

DB = Mount(MountType.VOLUME, "/data", "db-data")


def with_volume(name: str = "db", volume: str = "db-data", **fields: object) -> ServiceSpec:
    return msgspec.structs.replace(spec(name, **fields), mounts=(Mount(MountType.VOLUME, "/data", volume),))  # type: ignore[arg-type]


# -- the CLI's --mount ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("type=volume,source=db,target=/data", Mount(MountType.VOLUME, "/data", "db")),
        ("src=db,dst=/data,ro", Mount(MountType.VOLUME, "/data", "db", readonly=True)),
        ("type=bind,source=/srv/x,destination=/x,readonly=false", Mount(MountType.BIND, "/x", "/srv/x")),
        ("type=bind,source=/srv/x,target=/x,readonly=1", Mount(MountType.BIND, "/x", "/srv/x", readonly=True)),
        (
            "type=tmpfs,target=/scratch,tmpfs-size=64M,tmpfs-mode=1770",
            Mount(MountType.TMPFS, "/scratch", tmpfs_size=64 << 20, tmpfs_mode=0o1770),
        ),
        ("source=db,target=/d,volume-opt=a=b=c", None),  # the local driver takes no option
        ('type=bind,"source=/a,b",target=/b', Mount(MountType.BIND, "/b", "/a,b")),  # CSV quoting
    ],
)
def test_mount_flag_takes_dockers_syntax(text: str, expected: Mount | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="takes no option 'a'"):
            cli_mounts.parse_mount(text)
        return
    assert cli_mounts.parse_mount(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("type=nfs,source=a,target=/x", "invalid mount type 'nfs': use volume, bind or tmpfs"),
        ("source=db", "a target is required"),
        ("source=db,target=data", "a mount target must be an absolute path"),
        ("source=db,target=/a/../b", "is not in normal form"),
        ("source=db,target=/", "cannot be /"),
        ("source=../x,target=/x", "invalid volume name '../x'"),
        ("type=bind,source=relative,target=/x", "a bind mount's source must be an absolute path"),
        ("type=bind,target=/x", "needs a source (a host path)"),
        ("type=tmpfs,source=x,target=/x", "a tmpfs mount takes no source"),
        ("type=tmpfs,target=/x,tmpfs-mode=rwx", "invalid tmpfs-mode 'rwx'"),
        ("type=tmpfs,target=/x,tmpfs-size=lots", "invalid size 'lots'"),
        ("type=bind,source=/a,target=/x,tmpfs-size=1M", "tmpfs-size and tmpfs-mode are for tmpfs mounts only"),
        ("type=bind,source=/a,target=/x,volume-opt=a=b", "volume-opt is for volume mounts only"),
        ("source=db,target=/x,bind-propagation=shared", "unknown key 'bind-propagation'"),
        ("source=db,target=/x,readonly=maybe", "invalid readonly value 'maybe'"),
        ("source=db,target=/x,target=/y", "target is given twice"),
        ("source=db,target=/x,volume-driver=nfs", "unknown volume driver 'nfs'"),
        ("source=db,target=/x,volume-opt=novalue", "expected volume-opt=KEY=VALUE"),
    ],
)
def test_mount_flag_refuses_bad_input_with_one_line(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")) as caught:
        cli_mounts.parse_mount(text)
    assert "\n" not in str(caught.value)


def test_mount_add_replaces_by_target_and_mount_rm_removes() -> None:
    spec_pb = pb.ServiceSpec(name="db", image="x")
    cli_mounts.apply_create(spec_pb, argparse.Namespace(mount=[DB, Mount(MountType.TMPFS, "/tmp")]))
    args = argparse.Namespace(mount_add=[Mount(MountType.VOLUME, "/data", "other", readonly=True)], mount_rm=["/tmp"])
    cli_mounts.apply_update(spec_pb, args)
    assert [(m.type, m.source, m.target, m.readonly) for m in spec_pb.mounts] == [("volume", "other", "/data", True)]
    with pytest.raises(CliError, match="the service has no mount at /nope"):
        cli_mounts.apply_update(spec_pb, argparse.Namespace(mount_add=None, mount_rm=["/nope"]))


# -- the spec's rules ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"mounts": (DB, Mount(MountType.TMPFS, "/data"))}, "two mounts at /data"),
        (
            {"mounts": (Mount(MountType.VOLUME, "/a", "x"), DB, Mount(MountType.VOLUME, "/other", "db-data"))},
            "volume 'db-data' is mounted twice",
        ),
        ({"mounts": (DB,), "replicas": 3}, "runs at most 1 replica, not 3"),
        ({"mounts": (DB,), "mode": ServiceMode.GLOBAL, "replicas": 0}, "a global service cannot mount a local volume"),
        ({"mounts": (Mount(MountType.TMPFS, "/t", tmpfs_mode=0o17777),)}, "tmpfs-mode must be octal"),
        ({"mounts": (Mount(MountType.TMPFS, "/t", tmpfs_size=-1),)}, "tmpfs-size cannot be negative"),
        ({"mounts": (Mount(MountType.BIND, "/t", "/a\nb"),)}, "invalid a bind mount's source"),
    ],
)
def test_spec_mount_rules(fields: dict[str, object], error: str) -> None:
    with pytest.raises(MountError, match=error):
        check_mounts(msgspec.structs.replace(ServiceSpec("db", "x"), **fields))


def test_a_service_on_a_volume_cannot_scale_past_one_replica() -> None:
    sim = Sim()
    sim.add_node(node("n1"))
    service_id = sim.create_service(with_volume())
    result, changes = commands.apply(sim.state, commands.ScaleService(service_id, 2, sim.now))
    assert (result.code, changes) == ("failed_precondition", [])
    assert "mounts volume db-data, which holds one task's data: it runs at most 1 replica, not 2" in result.message
    assert commands.apply(sim.state, commands.ScaleService(service_id, 0, sim.now))[0].ok


# -- placement -----------------------------------------------------------------------------------
def test_a_task_goes_to_its_volumes_node_even_when_another_is_emptier() -> None:
    s = with_volume()
    busy = [running_task(f"o{i}", "other", spec("other"), "n2", slot=i) for i in range(3)]
    result = schedule([node("n1"), node("n2")], busy, [pending_task("t1", "db", s)], {"db-data": "n2"})
    assert result.assignments == {"t1": "n2"}
    assert result.volumes == {}  # bound already


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"availability": Availability.DRAIN}, "volume db-data is on node host-n2, which is drained"),
        ({"availability": Availability.PAUSE}, "volume db-data is on node host-n2, which is paused"),
        (
            {"status": NodeStatus.DOWN, "status_message": "heartbeat missed for 20s"},
            "volume db-data is on node host-n2, which is down: heartbeat missed for 20s",
        ),
        ({"labels": {"zone": "b"}}, "volume db-data is on node host-n2, which does not satisfy constraint"),
        ({"status": NodeStatus.UNKNOWN}, "volume db-data is on node host-n2, which is not ready"),
    ],
)
def test_a_task_whose_volume_node_cannot_take_it_is_pending_and_says_why(
    fields: dict[str, object], reason: str
) -> None:
    s = msgspec.structs.replace(with_volume(), constraints=("node.labels.zone!=b",))
    n2 = msgspec.structs.replace(node("n2"), **fields)
    result = schedule([node("n1"), n2], [], [pending_task("t1", "db", s)], {"db-data": "n2"})
    assert result.assignments == {}
    assert result.unplaced["t1"].startswith(reason)
    gone = schedule([node("n1")], [], [pending_task("t1", "db", s)], {"db-data": "n2"})
    assert gone.unplaced["t1"] == "volume db-data is on node n2, which is no longer in the cluster"


def test_an_unbound_volume_binds_where_its_first_task_goes_and_others_follow() -> None:
    busy = [running_task("o1", "other", spec("other"), "n1")]
    first = pending_task("a1", "a", with_volume("a"))
    second = pending_task("b1", "b", with_volume("b"))  # another service, the same volume
    result = schedule([node("n1"), node("n2"), node("n3")], busy, [first, second])
    assert result.assignments == {"a1": "n2", "b1": "n2"}
    assert result.volumes == {"db-data": "n2"}


def test_volumes_on_two_different_nodes_leave_the_task_pending() -> None:
    s = msgspec.structs.replace(ServiceSpec("db", "x"), mounts=(DB, Mount(MountType.VOLUME, "/logs", "db-logs")))
    result = schedule([node("n1"), node("n2")], [], [pending_task("t1", "db", s)], {"db-data": "n1", "db-logs": "n2"})
    assert result.unplaced["t1"] == (
        "no suitable node: its volumes live on different nodes (db-data on node host-n1, db-logs on node host-n2)"
    )


# -- the reconciler and the FSM ------------------------------------------------------------------
def test_the_first_placement_records_the_volume_and_a_drain_leaves_the_task_pending() -> None:
    sim = Sim()
    for name in ("n1", "n2"):
        sim.add_node(node(name))
    service_id = sim.create_service(
        msgspec.structs.replace(with_volume(), mounts=(Mount(MountType.VOLUME, "/data", "db-data"),))
    )
    plan = sim.reconcile()
    (task,) = plan.created
    (volume,) = plan.volumes
    assert (volume.name, volume.node_id, volume.driver) == ("db-data", task.node_id, "local")
    assert sim.state.volume_by_name("db-data") == volume
    assert is_empty(sim.plan())
    sim.converge()
    home = volume.node_id

    sim.set_node(home, availability=Availability.DRAIN)
    sim.converge()
    (pending,) = sim.live(service_id)
    assert (pending.state, pending.node_id) == (TaskState.PENDING, "")
    assert pending.message == f"volume db-data is on node host-{home}, which is drained"
    assert sim.state.volume_by_name("db-data").node_id == home  # type: ignore[union-attr]

    sim.set_node(home, availability=Availability.ACTIVE)
    sim.converge()
    (back,) = sim.running(service_id)
    assert back.node_id == home


def test_a_created_volume_without_a_node_is_bound_by_its_first_task() -> None:
    sim = Sim()
    sim.add_node(node("n1"))
    created = Volume("v1", "db-data", created_at=sim.now)
    assert commands.apply(sim.state, commands.CreateVolume(created))[0].ok
    sim.run(commands.CreateVolume(created))
    sim.create_service(with_volume())
    plan = sim.reconcile()
    assert [(v.id, v.node_id) for v in plan.volumes] == [("v1", "n1")]
    assert sim.state.volumes["v1"].node_id == "n1"


def test_a_late_plan_cannot_split_a_task_from_its_volume() -> None:
    sim = Sim()
    for name in ("n1", "n2"):
        sim.add_node(node(name))
    sim.run(commands.CreateVolume(Volume("v1", "db-data", node_id="n1")))
    service_id = sim.create_service(with_volume())
    task = msgspec.structs.replace(
        pending_task("t1", service_id, with_volume()), state=TaskState.ASSIGNED, node_id="n2"
    )
    sim.run(commands.ApplyPlan(created=(task,)))
    assert sim.state.tasks["t1"].node_id == ""  # kept unplaced for the next pass


def test_volume_commands_refuse_a_taken_name_an_unknown_node_and_removal_while_used() -> None:
    sim = Sim()
    sim.add_node(node("n1"))
    sim.run(commands.CreateVolume(Volume("v1", "db-data")))
    for volume, code, text in (
        (Volume("v2", "db-data"), "already_exists", "volume name 'db-data' is already in use"),
        (Volume("v3", "other", node_id="nX"), "not_found", "node nX not found"),
        (Volume("v4", "bad/name"), "invalid_argument", "invalid volume name"),
        (Volume("v5", "x", driver="nfs"), "invalid_argument", "unknown volume driver 'nfs'"),
    ):
        result, changes = commands.apply(sim.state, commands.CreateVolume(volume))
        assert (result.code, changes) == (code, []) and text in result.message
    service_id = sim.create_service(with_volume())
    result, _ = commands.apply(sim.state, commands.RemoveVolume("v1", sim.now))
    assert (result.code, result.message) == (
        "failed_precondition",
        "volume db-data is in use by service db: remove them first",
    )
    sim.converge()
    sim.run(commands.RemoveService(service_id, sim.now))
    result, _ = commands.apply(sim.state, commands.RemoveVolume("v1", sim.now))
    assert result.code == "failed_precondition" and "in use by task db.1" in result.message  # still stopping
    sim.converge()
    assert commands.apply(sim.state, commands.RemoveVolume("v1", sim.now))[0].ok
    assert commands.apply(sim.state, commands.RemoveVolume("nope", sim.now))[0].code == "not_found"


def test_volumes_survive_a_snapshot_of_the_state() -> None:
    sim = Sim()
    sim.state.apply([Put("volume", Volume("v1", "a", node_id="n1"))])
    copy = sim.state.copy()
    assert copy.volume_by_name("a") == Volume("v1", "a", node_id="n1")


# -- the runtimes' side --------------------------------------------------------------------------
def test_the_oci_spec_binds_volumes_and_mounts_tmpfs_read_only_when_asked() -> None:
    mounts = (
        MountSpec("bind", "/data", "/var/lib/warren/volumes/db/data", readonly=True),
        MountSpec("tmpfs", "/dev/shm", tmpfs_size=1 << 20, tmpfs_mode=0o700),
    )
    built = oci.build_spec(ContainerSpec("t", "img", command=("sh",), mounts=mounts), {}, "/c", host_files=[])
    task_mounts = [m for m in built["mounts"] if m["destination"] in ("/data", "/dev/shm")]  # type: ignore[index, union-attr, attr-defined]
    assert task_mounts == [
        {
            "destination": "/data",
            "type": "bind",
            "source": "/var/lib/warren/volumes/db/data",
            "options": ["rbind", "rprivate", "ro"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=700", "size=1048576"],
        },
    ]


def test_the_exec_chain_mounts_in_a_mount_namespace_of_its_own() -> None:
    mounts = (MountSpec("bind", "/data", "/srv/data", readonly=True), MountSpec("tmpfs", "/scratch"))
    argv, exe, user = exec_chain(["app"], "/bin/app", procs=[], netns="", resolv_conf="", user=None, mounts=mounts)
    assert argv[1:5] == ["--mount", "--propagation", "slave", "--"] and exe == argv[0] and user is None
    shim = argv.index(MOUNTS_SHIM)
    assert argv[shim + 2 :] == [
        argv[shim + 2],  # the mount binary
        "bind", "/srv/data", "/data", "ro",
        "tmpfs", "", "/scratch", "mode=1777,nosuid,nodev",
        "--", "app",
    ]  # fmt: skip


def test_mounts_files_and_container_options_compose_in_both_runtimes() -> None:
    """Volumes (ADR 40), secrets (ADR 38) and container options (ADR 42) merged: a secret's file
    is bound after the mounts (it may sit in a tmpfs of the task's), beside --init's binary."""
    files = (MountedFile("/agent/secrets/t/0-secret-db", "/run/secrets/db"),)
    mounts = (MountSpec("tmpfs", "/run/secrets"),)
    spec = ContainerSpec("t", "img", command=("sh",), mounts=mounts, files=files, options=ContainerOptions(init=True))
    built = oci.build_spec(spec, {}, "/c", host_files=[], init_binary="/usr/bin/tini-static")
    destinations = [m["destination"] for m in built["mounts"]]  # type: ignore[index, union-attr, attr-defined]
    assert destinations[-3:] == [oci.INIT_PATH, "/run/secrets", "/run/secrets/db"], destinations

    argv, _, _ = exec_chain(
        ["app"], "/bin/app", procs=[], netns="", resolv_conf="/r.conf", user=None,
        mounts=mounts, files=files, hostname="web-1",
    )  # fmt: skip
    assert argv[1:6] == ["--mount", "--propagation", "slave", "--uts", "--"]
    shims = [argv.index(shim) for shim in (RESOLV_SHIM, MOUNTS_SHIM, HOSTNAME_SHIM)]
    assert shims == sorted(shims), "resolv.conf, then the mounts and files, then the hostname"
    mounts_shim = argv[shims[1] + 3 : shims[2] - 2]
    assert mounts_shim == [
        "tmpfs", "", "/run/secrets", "mode=1777,nosuid,nodev",
        "bind", "/agent/secrets/t/0-secret-db", "/run/secrets/db", "ro",
        "--",
    ]  # fmt: skip


def test_an_exec_tasks_file_inside_its_own_mount_is_not_made_on_the_host(tmp_path: Path) -> None:
    """The host's tree is hidden under the task's tmpfs: the mounts shim makes that mount point
    in the task's namespace; only a file outside every mount gets its empty file on the host."""
    inside, outside = tmp_path / "scratch" / "pw", tmp_path / "etc" / "app.conf"
    files = (MountedFile("/agent/a", str(inside)), MountedFile("/agent/b", str(outside)))
    make_mount_points(files, (MountSpec("tmpfs", str(tmp_path / "scratch")),))
    assert not inside.exists() and outside.read_bytes() == b""


# -- the agent: the local driver, mount resolution, and deleting removed volumes -----------------
def test_a_task_gets_its_volume_directory_and_a_missing_bind_source_fails_it(tmp_path: Path) -> None:
    volumes = LocalVolumes(tmp_path / "volumes")
    resolved = resolve_mounts((DB, Mount(MountType.TMPFS, "/t", readonly=True)), volumes)
    assert resolved == (
        MountSpec("bind", "/data", str(tmp_path / "volumes" / "db-data" / "data")),
        MountSpec("tmpfs", "/t", readonly=True),
    )
    assert volumes.list() == ["db-data"]
    with pytest.raises(RuntimeFailure, match="bind mount source path does not exist: /no/such") as caught:
        resolve_mounts((Mount(MountType.BIND, "/x", "/no/such"),), volumes)
    assert caught.value.permanent
    with pytest.raises(RuntimeFailure, match="this agent has no volume driver"):
        resolve_mounts((DB,), None)


def test_the_worker_deletes_a_volume_the_managers_no_longer_place_here_unless_a_task_holds_it(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        volumes = LocalVolumes(tmp_path / "volumes")
        for name in ("kept", "removed", "held"):
            (Path(volumes.path(name, {})) / "file").write_text(name)
        cache = AgentCache(tmp_path / "agent.db")
        runtime = FakeRuntime()
        worker = Worker(make_env(runtime, Recorder(), tmp_path, volumes=volumes), cache, StatusQueue())
        held = make_task("t1", mounts=(Mount(MountType.VOLUME, "/data", "held"),))
        try:
            worker.apply(AssignmentDelta(complete=True, updated=(held,), volumes=("kept",)))
            await until(lambda: volumes.list() == ["held", "kept"])
            await until(lambda: runtime.specs)
            (prepared,) = runtime.specs.values()
            assert prepared.mounts == (MountSpec("bind", "/data", volumes.path("held", {})),)
            worker.apply(AssignmentDelta(complete=False, volumes=None))  # no news: nothing deleted
            await async_holds(lambda: volumes.list() == ["held", "kept"], 0.3)
            # Removed, then created again before the agent got to it: the latest list decides.
            worker.apply(AssignmentDelta(complete=False, volumes=()))
            worker.apply(AssignmentDelta(complete=False, volumes=("kept",)))
            await async_holds(lambda: volumes.list() == ["held", "kept"], 0.3)
        finally:
            await worker.close()
            cache.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_rollback_to_a_spec_with_a_volume_keeps_the_one_replica_rule() -> None:
    sim = Sim()
    sim.add_node(node("n1"))
    service_id = sim.create_service(with_volume())
    sim.update_service(service_id, msgspec.structs.replace(spec("db"), replicas=3))  # no volume now
    result, changes = commands.apply(sim.state, commands.RollbackService(service_id, sim.now))
    assert (result.code, changes) == ("failed_precondition", [])
    assert result.message.startswith("cannot roll back to version 1: service db mounts volume db-data")
    restored = commands.RollbackService(service_id, sim.now, restore_replicas=True)
    assert commands.apply(sim.state, restored)[0].ok


def test_service_inspect_describes_each_mount() -> None:
    assert cli_mounts.describe(pb.Mount(type="volume", source="db", target="/d", readonly=True)) == (
        "volume db -> /d (read-only)"
    )
    assert cli_mounts.describe(pb.Mount(type="tmpfs", target="/t", tmpfs_size=1 << 20, tmpfs_mode=0o1770)) == (
        "tmpfs (size 1MiB, mode 1770) -> /t"
    )


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (("volume", "create", "v", "--opt", "novalue"), "invalid volume option 'novalue': expected KEY=VALUE"),
        (("service", "create", "d", "--image", "x", "--mount", "type=nfs,target=/x"), "invalid mount type 'nfs'"),
        (("service", "create", "d", "--image", "x", "--mount", "source=v,target=rel"), "must be an absolute path"),
        (("service", "update", "d", "--mount-rm", "rel"), "invalid mount target 'rel'"),
        (("volume", "rm"), "the following arguments are required"),
    ],
)
def test_the_cli_refuses_bad_volume_and_mount_flags_before_calling(
    argv: tuple[str, ...], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main.parse_args(list(argv))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert error in err and err.count("\n") == 1, err


def test_a_task_placed_without_its_volume_bound_binds_it_on_the_next_pass() -> None:
    sim = Sim()
    for name in ("n1", "n2"):
        sim.add_node(node(name))
    with_options = msgspec.structs.replace(
        spec("db"), mounts=(Mount(MountType.VOLUME, "/data", "db-data", volume_options={"o": "1"}),)
    )
    service_id = sim.create_service(with_options)
    sim.state.apply([Put("task", running_task("t1", service_id, with_options, "n2"))])  # a late plan's doing
    plan = sim.reconcile()
    assert [(v.name, v.node_id, v.options) for v in plan.volumes] == [("db-data", "n2", {"o": "1"})]
    assert is_empty(sim.plan())
