"""The containerd driver against a real containerd, runc and registry (tests/fixtures).

One containerd and one registry serve the whole module; every test uses fresh task ids and
removes its containers, and the fixtures' teardown kills whatever is left.
"""

from __future__ import annotations

import json
import secrets
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.fixtures.containerd import ContainerdDaemon
from tests.fixtures.images import INDEX_HTML, BusyboxImage
from tests.fixtures.registry import LocalRegistry, free_port
from tests.waiting import wait_for
from warren.agent.runtime import SERVICE_LABEL, TASK_LABEL, ContainerSpec, ContainerState, RuntimeFailure
from warren.model import Resources
from warren.runtime.containerd import api
from warren.runtime.containerd.driver import ContainerdRuntime

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def runtime(containerd: ContainerdDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerdRuntime]:
    rt = ContainerdRuntime(
        containerd.socket, tmp_path_factory.mktemp("agent-state"), cgroup_parent=containerd.cgroup_parent
    )
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(scope="module")
def image(runtime: ContainerdRuntime, registry: LocalRegistry) -> str:
    """busybox from the module's registry, pulled once."""
    ref = f"{registry.host}/busybox:latest"
    runtime.images.ensure(ref)
    return ref


@pytest.fixture
def tasks(runtime: ContainerdRuntime) -> Iterator[Callable[[], str]]:
    """Fresh task ids; their containers are removed after the test, pass or fail."""
    made: list[str] = []

    def new() -> str:
        made.append(f"t{secrets.token_hex(6)}")
        return made[-1]

    yield new
    for cid in made:
        runtime.remove(cid)


def _spec(task_id: str, image: str, *command: str, tmp: Path | None = None, **kw: object) -> ContainerSpec:
    log = str(tmp / f"{task_id}.log") if tmp else ""
    return ContainerSpec(task_id=task_id, image=image, command=tuple(command), log_path=log, **kw)  # type: ignore[arg-type]


def _run(runtime: ContainerdRuntime, spec: ContainerSpec, timeout: float = 10.0) -> tuple[int | None, str]:
    """Run to completion, then remove: the shim copies output asynchronously and flushes it on delete."""
    runtime.prepare(spec)
    log_path = runtime.client.containers.Get(
        api.containers_pb2.GetContainerRequest(id=spec.task_id), metadata=runtime.client.md()
    ).container.labels["warren.log-path"]
    runtime.start(spec.task_id)
    status = runtime.wait(spec.task_id, timeout=timeout)
    assert status is not None, f"{spec.task_id} still running after {timeout}s"
    after = runtime.status(spec.task_id)
    assert after.state is ContainerState.EXITED and after.exit_code == status.exit_code and after.finished_at > 0
    runtime.remove(spec.task_id)
    return status.exit_code, Path(log_path).read_text()


def _blob(runtime: ContainerdRuntime, digest: str) -> dict[str, object]:
    request = api.content_pb2.ReadContentRequest(digest=digest)
    return json.loads(b"".join(r.data for r in runtime.client.content.Read(request, metadata=runtime.client.md())))


def _code(call: Callable[[], object]) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return None


def test_pull_labels_content_for_gc_and_second_prepare_is_a_cache_hit_without_the_registry(
    containerd: ContainerdDaemon,
    make_registry: Callable[[], LocalRegistry],
    busybox_image: BusyboxImage,
    runtime: ContainerdRuntime,
    tasks: Callable[[], str],
    tmp_path: Path,
) -> None:
    private = make_registry()  # a registry of its own, which this test stops
    ref = f"{private.host}/busybox:latest"
    runtime.prepare(_spec(tasks(), ref, "true"))

    client, md = runtime.client, runtime.client.md()
    record = client.images.Get(api.images_pb2.GetImageRequest(name=ref), metadata=md).image
    assert record.target.media_type == "application/vnd.oci.image.manifest.v1+json"
    info = lambda d: client.content.Info(api.content_pb2.InfoRequest(digest=d), metadata=md).info.labels  # noqa: E731
    manifest = info(record.target.digest)  # skopeo compressed the plain-tar layer on push: a new digest
    config_digest = manifest["containerd.io/gc.ref.content.config"]
    assert config_digest == _blob(runtime, record.target.digest)["config"]["digest"]  # type: ignore[index]
    assert info(config_digest)["containerd.io/gc.ref.snapshot.overlayfs"] == busybox_image.chain_id
    layer0 = manifest["containerd.io/gc.ref.content.l.0"]
    assert info(layer0)["containerd.io/uncompressed"] == busybox_image.diff_ids[0]
    top = client.snapshots.Stat(
        api.snapshots_pb2.StatSnapshotRequest(snapshotter="overlayfs", key=busybox_image.chain_id), metadata=md
    ).info
    assert top.parent == busybox_image.diff_ids[0] and top.kind == api.snapshots_pb2.COMMITTED

    private.stop()
    code, log = _run(runtime, _spec(tasks(), ref, "echo", "cached", tmp=tmp_path))
    assert (code, log) == (0, "cached\n")
    # A new driver (no in-memory cache, as after an agent restart) also finds it in containerd.
    fresh = ContainerdRuntime(containerd.socket, tmp_path / "state2", cgroup_parent=containerd.cgroup_parent)
    try:
        fid = tasks()
        fresh.prepare(_spec(fid, ref, "true"))
        assert fresh.status(fid).state is ContainerState.CREATED
    finally:
        fresh.close()


def test_exit_code_and_output_reach_the_log_file(
    runtime: ContainerdRuntime, image: str, tasks: Callable[[], str], tmp_path: Path
) -> None:
    spec = _spec(tasks(), image, "sh", "-c", "echo hello; echo oops >&2; exit 3", tmp=tmp_path)
    code, log = _run(runtime, spec)
    assert code == 3
    assert "hello" in log and "oops" in log


def test_image_defaults_merge_with_the_spec(
    runtime: ContainerdRuntime, image: str, tasks: Callable[[], str], tmp_path: Path
) -> None:
    spec = ContainerSpec(
        task_id=tasks(),
        image=image,
        args=("-c", "echo A=$A IMAGE_VAR=$IMAGE_VAR; pwd; id -u; hostname; touch /x 2>/dev/null || echo read-only"),
        command=("sh",),
        env={"A": "1"},
        cwd="/tmp",
        user="65534:65534",
        read_only_rootfs=True,
        log_path=str(tmp_path / "merge.log"),
    )
    code, log = _run(runtime, spec)
    assert code == 0
    lines = log.splitlines()
    assert lines[:4] == ["A=1 IMAGE_VAR=from-image", "/tmp", "65534", spec.task_id]
    assert "read-only" in lines[-1]


def test_httpd_serves_the_host_over_loopback(runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]) -> None:
    port = free_port()
    cid = tasks()
    runtime.prepare(_spec(cid, image, "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/var/www"))
    runtime.start(cid)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def fetch() -> bytes:
        try:
            with opener.open(f"http://127.0.0.1:{port}/index.html", timeout=1) as resp:
                return resp.read()
        except OSError:
            return b""

    assert wait_for(fetch, timeout=5, interval=0.05, message="httpd to answer") == INDEX_HTML
    assert runtime.status(cid).state is ContainerState.RUNNING
    assert runtime.stop(cid, grace_period=0.5).state is ContainerState.EXITED


def test_stop_escalates_to_sigkill_after_the_grace_period(
    runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]
) -> None:
    cid = tasks()
    runtime.prepare(_spec(cid, image, "sh", "-c", "sleep 1000; true"))  # sh as PID 1 ignores SIGTERM
    runtime.start(cid)
    assert runtime.wait(cid, timeout=0.2) is None
    start = time.monotonic()
    status = runtime.stop(cid, grace_period=1.0)
    elapsed = time.monotonic() - start
    assert status.exit_code == 128 + signal.SIGKILL
    assert 1.0 <= elapsed < 5.0


def _children(pid: int) -> list[str]:
    """The child PIDs of a (host-namespace) process."""
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def test_stop_returns_early_when_the_process_honours_the_signal(
    runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]
) -> None:
    cid = tasks()
    runtime.prepare(_spec(cid, image, "sh", "-c", "trap 'exit 0' USR1; sleep 1000 & wait"))
    runtime.start(cid)
    pid = runtime.status(cid).pid
    # sh installs its trap, then forks sleep
    wait_for(lambda: _children(pid), timeout=10, interval=0.02, message="sh to fork sleep")
    start = time.monotonic()
    status = runtime.stop(cid, grace_period=10.0, signal="USR1")
    assert status.exit_code == 0
    assert time.monotonic() - start < 5.0


def test_remove_leaves_no_task_container_snapshot_or_cgroup(
    containerd: ContainerdDaemon, runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]
) -> None:
    cid = tasks()
    runtime.prepare(_spec(cid, image, "sleep", "1000"))
    runtime.start(cid)
    cgroup = Path("/sys/fs/cgroup/memory") / containerd.cgroup_parent.strip("/") / cid
    assert cgroup.is_dir() or not Path("/sys/fs/cgroup/memory").is_dir()
    runtime.remove(cid)  # a running task: remove kills it first
    client, md = runtime.client, runtime.client.md()
    assert (
        _code(lambda: client.tasks.Get(api.tasks_pb2.GetRequest(container_id=cid), metadata=md))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        _code(lambda: client.containers.Get(api.containers_pb2.GetContainerRequest(id=cid), metadata=md))
        == grpc.StatusCode.NOT_FOUND
    )
    stat = api.snapshots_pb2.StatSnapshotRequest(snapshotter="overlayfs", key=cid)
    assert _code(lambda: client.snapshots.Stat(stat, metadata=md)) == grpc.StatusCode.NOT_FOUND
    assert not cgroup.exists()
    runtime.remove(cid)  # idempotent
    assert runtime.status(cid).state is ContainerState.UNKNOWN


def test_list_finds_warren_containers_by_label(
    runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]
) -> None:
    running, created = tasks(), tasks()
    labels = {SERVICE_LABEL: "web"}
    runtime.prepare(_spec(running, image, "sleep", "1000", labels=labels))
    runtime.start(running)
    runtime.prepare(_spec(created, image, "true", labels=labels))
    foreign = f"x{secrets.token_hex(6)}"  # a container in the namespace that Warren did not make
    client, md = runtime.client, runtime.client.md()
    client.containers.Create(
        api.containers_pb2.CreateContainerRequest(
            container=api.containers_pb2.Container(
                id=foreign,
                runtime=api.containers_pb2.Container.Runtime(name="io.containerd.runc.v2"),
                spec=runtime.client.containers.Get(
                    api.containers_pb2.GetContainerRequest(id=created), metadata=md
                ).container.spec,
            )
        ),
        metadata=md,
    )
    try:
        found = {s.runtime_id: s for s in runtime.list()}
    finally:
        client.containers.Delete(api.containers_pb2.DeleteContainerRequest(id=foreign), metadata=md)
    assert foreign not in found
    assert found[running].state is ContainerState.RUNNING and found[running].pid > 0
    assert found[created].state is ContainerState.CREATED
    for cid in (running, created):
        assert found[cid].labels[TASK_LABEL] == cid and found[cid].labels[SERVICE_LABEL] == "web"


def test_exec_runs_commands_in_the_running_container(
    runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]
) -> None:
    cid = tasks()
    runtime.prepare(_spec(cid, image, "sleep", "1000"))
    with pytest.raises(RuntimeFailure, match="not running"):
        runtime.exec(cid, ["true"], timeout=5)
    runtime.start(cid)
    code, output = runtime.exec(cid, ["sh", "-c", "echo out; echo err >&2; exit 4"], timeout=5)
    assert code == 4 and sorted(output.splitlines()) == ["err", "out"]  # two pipes: order between them varies
    code, output = runtime.exec(cid, ["cat", "/etc/passwd"], timeout=5)
    assert code == 0 and output.startswith("root:x:0:0")
    with pytest.raises(RuntimeFailure, match="executable file not found") as err:
        runtime.exec(cid, ["no-such-command"], timeout=5)
    assert err.value.permanent
    start = time.monotonic()
    with pytest.raises(RuntimeFailure, match=r"timed out after 0\.3s"):
        runtime.exec(cid, ["sleep", "30"], timeout=0.3)
    assert time.monotonic() - start < 5
    assert runtime.status(cid).state is ContainerState.RUNNING


def test_cpu_and_memory_limits_land_in_the_spec_and_the_cgroup(
    containerd: ContainerdDaemon, runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]
) -> None:
    cid = tasks()
    limits = Resources(nano_cpus=500_000_000, memory_bytes=64 << 20)
    runtime.prepare(_spec(cid, image, "sleep", "1000", limits=limits))
    container = runtime.client.containers.Get(
        api.containers_pb2.GetContainerRequest(id=cid), metadata=runtime.client.md()
    ).container
    assert container.spec.type_url == "types.containerd.io/opencontainers/runtime-spec/1/Spec"
    assert container.runtime.name == "io.containerd.runc.v2"
    spec = json.loads(container.spec.value)
    assert spec["linux"]["resources"]["memory"] == {"limit": 64 << 20}
    assert spec["linux"]["resources"]["cpu"] == {"quota": 50_000, "period": 100_000}
    assert spec["linux"]["cgroupsPath"] == f"{containerd.cgroup_parent}/{cid}"
    assert "network" not in {ns["type"] for ns in spec["linux"]["namespaces"]}  # host network until #5
    runtime.start(cid)
    v1 = Path("/sys/fs/cgroup/memory") / containerd.cgroup_parent.strip("/") / cid / "memory.limit_in_bytes"
    v2 = Path("/sys/fs/cgroup") / containerd.cgroup_parent.strip("/") / cid / "memory.max"
    limit_file = v1 if v1.exists() else v2
    assert int(limit_file.read_text()) == 64 << 20


def test_unknown_image_is_a_permanent_not_found(
    runtime: ContainerdRuntime, registry: LocalRegistry, tasks: Callable[[], str]
) -> None:
    with pytest.raises(RuntimeFailure) as err:
        runtime.prepare(_spec(tasks(), f"{registry.host}/nope:latest", "true"))
    assert err.value.permanent
    assert err.value.message == f"image {registry.host}/nope:latest not found in registry"


def test_unreachable_registry_is_a_transient_failure(runtime: ContainerdRuntime, tasks: Callable[[], str]) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(RuntimeFailure) as err:
        runtime.prepare(_spec(tasks(), f"127.0.0.1:{port}/busybox:latest", "true"))
    assert not err.value.permanent
    assert err.value.message == f"registry 127.0.0.1:{port} unreachable: connection refused"


def test_a_missing_executable_is_a_permanent_failure(
    runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]
) -> None:
    cid = tasks()
    runtime.prepare(_spec(cid, image, "/no/such/binary"))
    with pytest.raises(RuntimeFailure) as err:
        runtime.start(cid)
    assert err.value.permanent and "no such file or directory" in err.value.message


def test_an_image_index_resolves_to_this_machine_s_manifest(
    runtime: ContainerdRuntime,
    registry: LocalRegistry,
    busybox_image: BusyboxImage,
    tasks: Callable[[], str],
    tmp_path: Path,
) -> None:
    ref = f"{registry.host}/busybox:multi"
    code, log = _run(runtime, _spec(tasks(), ref, "uname", "-m", tmp=tmp_path))
    assert code == 0 and log.strip() == {"amd64": "x86_64", "arm64": "aarch64"}.get(busybox_image.architecture)
    record = runtime.client.images.Get(api.images_pb2.GetImageRequest(name=ref), metadata=runtime.client.md()).image
    config = _blob(runtime, _blob(runtime, record.target.digest)["config"]["digest"])  # type: ignore[index]
    assert config["architecture"] == busybox_image.architecture  # not the index's foreign entry


def test_prepare_and_start_are_idempotent(runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]) -> None:
    cid = tasks()
    spec = _spec(cid, image, "sleep", "1000")
    assert runtime.prepare(spec) == cid
    assert runtime.prepare(spec) == cid
    runtime.start(cid)
    runtime.start(cid)
    assert runtime.status(cid).state is ContainerState.RUNNING


def test_import_archive_needs_no_registry(
    containerd: ContainerdDaemon,
    busybox_image: BusyboxImage,
    registry: LocalRegistry,
    tasks: Callable[[], str],
    tmp_path: Path,
) -> None:
    rt = ContainerdRuntime(containerd.socket, tmp_path / "state", cgroup_parent=containerd.cgroup_parent)
    try:
        assert rt.import_archive(busybox_image.archive, "warren.test/busybox:imported") == [
            "warren.test/busybox:imported"
        ]
        code, log = _run(rt, _spec(tasks(), "warren.test/busybox:imported", "cat", "/var/www/index.html"))
        assert (code, log) == (0, INDEX_HTML.decode())
        # An archive as skopeo writes it, named inside (oci-archive:FILE:NAME), needs no name.
        skopeo_archive = tmp_path / "skopeo.tar"
        registry.skopeo(
            [
                "skopeo",
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                f"docker://{registry.host}/busybox:latest",
                f"oci-archive:{skopeo_archive}:example.org/tools/busybox:1",
            ]
        )
        assert rt.import_archive(skopeo_archive) == ["example.org/tools/busybox:1"]
        # An index archive is resolved to this machine's platform.
        assert rt.import_archive(busybox_image.multi_archive, "warren.test/busybox:multi") == [
            "warren.test/busybox:multi"
        ]
        with pytest.raises(RuntimeFailure, match="pass a full name"):
            rt.import_archive(busybox_image.archive)  # named only "latest" inside
    finally:
        rt.close()
    rt2 = ContainerdRuntime(containerd.socket, tmp_path / "state2", cgroup_parent=containerd.cgroup_parent)
    try:
        assert rt2.images.local("warren.test/busybox:multi") is not None
    finally:
        rt2.close()


def test_check_reports_the_version_or_an_unreachable_daemon(runtime: ContainerdRuntime, tmp_path: Path) -> None:
    assert runtime.check()[0].isdigit()
    down = ContainerdRuntime(str(tmp_path / "nothing.sock"), tmp_path / "state")
    try:
        with pytest.raises(RuntimeFailure, match=r"containerd at .*nothing\.sock unreachable") as err:
            down.status("t1")
        assert not err.value.permanent
        with pytest.raises(RuntimeFailure, match="unreachable"):
            down.check()
    finally:
        down.close()
