"""Container options (#13) on a real containerd and runc, seen from inside the container.

One containerd and one registry serve the module. A probe container prints what the options
should have changed (capabilities, sysctl, ulimit, read-only root, device, init, hostname, DNS),
a second one the user, groups and working directory, and small ones the entrypoint and command
semantics against an image that has both an ENTRYPOINT and a CMD.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.fixtures.containerd import ContainerdDaemon
from tests.fixtures.images import build_config_image
from tests.fixtures.registry import LocalRegistry
from tests.integration.test_e2e_containerd import Cluster, containerd_cluster
from tests.waiting import wait_for
from warren import container
from warren.agent.decisions import container_spec, health_check
from warren.agent.runtime import ContainerSpec, ContainerState, RuntimeFailure
from warren.model import ContainerOptions, DeviceMapping, HealthCheck, ServiceSpec, Task, Ulimit
from warren.runtime.containerd import api, nodeside
from warren.runtime.containerd.driver import ContainerdRuntime
from warren.runtime.exec import ExecRuntime

pytestmark = pytest.mark.integration

PROBE = """
echo "caps=$(grep CapEff /proc/self/status | cut -f2)"
echo "shmmax=$(cat /proc/sys/kernel/shmmax)"
echo "nofile=$(ulimit -n):$(ulimit -Hn)"
touch /tmp/probe 2>/dev/null && echo "root=rw" || echo "root=ro"
[ -c /dev/probe-null ] && echo hi > /dev/probe-null && echo "device=ok"
echo "pid1=$(cat /proc/1/comm)"
echo "hostname=$(hostname) env=$HOSTNAME"
echo "resolv=$(grep -v '^#' /etc/resolv.conf | tr '\\n' '|')"
"""
IMAGE_HEALTHCHECK = {"Test": ["CMD-SHELL", "test -e /tmp"], "Interval": 1_000_000_000, "Retries": 2}
WHO = 'echo "id=$(id -u):$(id -g) groups=$(id -G) pwd=$(pwd)"'


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
def image(registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox with ENTRYPOINT ["/bin/sh", "-c"], CMD ["echo image-cmd"] and a HEALTHCHECK."""
    archive = build_config_image(
        tmp_path_factory.mktemp("options-image"),
        "entry",
        Entrypoint=["/bin/sh", "-c"],
        Cmd=["echo image-cmd"],
        Healthcheck=IMAGE_HEALTHCHECK,
    )
    return registry.push(archive, "options:entry")


@pytest.fixture
def tasks(runtime: ContainerdRuntime) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def new() -> str:
        made.append(f"t{secrets.token_hex(6)}")
        return made[-1]

    yield new
    for cid in made:
        runtime.remove(cid)


def run(runtime: ContainerdRuntime, spec: ContainerSpec) -> str:
    """Run to completion and return the output (complete once the task is deleted)."""
    runtime.prepare(spec)
    log_path = runtime.client.containers.Get(
        api.containers_pb2.GetContainerRequest(id=spec.task_id), metadata=runtime.client.md()
    ).container.labels["warren.log-path"]
    runtime.start(spec.task_id)
    status = runtime.wait(spec.task_id, timeout=20)
    assert status is not None, f"{spec.task_id} still running after 20s"
    runtime.remove(spec.task_id)
    output = Path(log_path).read_text()
    assert status.exit_code == 0, output
    return output


def facts(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def cap_mask(names: list[str]) -> str:
    return f"{sum(1 << container.ALL_CAPABILITIES.index(n) for n in names):016x}"


def test_probe_sees_every_option(runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]) -> None:
    options = ContainerOptions(
        read_only=True,
        init=True,
        cap_add=("NET_ADMIN",),
        cap_drop=("CHOWN", "NET_RAW"),
        devices=(DeviceMapping("/dev/null", "/dev/probe-null", "rw"),),
        sysctls={"kernel.shmmax": "4096"},
        ulimits=(Ulimit("nofile", 1024, 2048),),
        dns=("10.9.8.7",),
        dns_search=("svc.example",),
        dns_options=("ndots:3",),
        labels={"com.example.tier": "probe"},
        hostname="{{.Service.Name}}-{{.Task.Slot}}",
    )
    task_id = tasks()
    service = ServiceSpec(name="web", image=image, args=(PROBE,), container=options)
    task = Task(id=task_id, service_id="s1", service_name="web", slot=3, spec=service, spec_version=1)
    spec = container_spec(task, runtime.state_dir / "logs")  # as the agent makes it
    runtime.prepare(spec)
    labels = runtime.status(task_id).labels
    assert labels["com.example.tier"] == "probe"
    # The image's HEALTHCHECK travels to the agent on the container (it runs it: unit tests).
    assert health_check(task, labels) == HealthCheck(
        kind="cmd", command=("/bin/sh", "-c", "test -e /tmp"), interval=1.0, retries=2
    )
    seen = facts(run(runtime, spec))
    expected = container.capabilities(options)
    assert seen["caps"] == cap_mask(expected), seen
    assert seen["shmmax"] == "4096"
    assert seen["nofile"] == "1024:2048"
    assert seen["root"] == "ro"
    assert seen["device"] == "ok"
    assert seen["pid1"] == "warren-init"  # tini, bind-mounted from the node
    assert seen["hostname"] == "web-3 env=web-3"
    assert seen["resolv"] == "nameserver 10.9.8.7|search svc.example|options ndots:3|"
    assert not (runtime.state_dir / "resolv" / f"{task_id}.resolv.conf").exists()  # removed with the task


def test_user_groups_and_workdir(runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]) -> None:
    options = ContainerOptions(group_add=("10", "20"))
    spec = ContainerSpec(task_id=tasks(), image=image, args=(WHO,), user="1000:1000", cwd="/var/www", options=options)
    assert facts(run(runtime, spec))["id"] == "1000:1000 groups=1000 10 20 pwd=/var/www"


def test_user_and_group_names_come_from_the_images_files(
    runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]
) -> None:
    """The test image's /etc/passwd has nobody (65534) and its /etc/group nogroup (65534)."""
    options = ContainerOptions(group_add=("nogroup", "10"))
    spec = ContainerSpec(task_id=tasks(), image=image, args=(WHO,), user="nobody", cwd="/", options=options)
    assert facts(run(runtime, spec))["id"] == "65534:65534 groups=65534 10 pwd=/"
    unknown = tasks()
    with pytest.raises(RuntimeFailure, match="unable to find user 'www'") as failure:
        runtime.prepare(ContainerSpec(task_id=unknown, image=image, args=("true",), user="www"))
    assert failure.value.permanent
    # Nothing is left of the failed attempt: no container, and its snapshot was collected.
    assert runtime.status(unknown).state is ContainerState.UNKNOWN
    request = api.snapshots_pb2.StatSnapshotRequest(snapshotter="overlayfs", key=unknown)
    with pytest.raises(grpc.RpcError) as missing:
        runtime.client.snapshots.Stat(request, metadata=runtime.client.md(), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_entrypoint_and_command_semantics(runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]) -> None:
    # No command: the image's ENTRYPOINT runs its CMD.
    assert run(runtime, ContainerSpec(task_id=tasks(), image=image)).strip() == "image-cmd"
    # Words after the name (args) replace the CMD and keep the ENTRYPOINT (sh -c).
    assert run(runtime, ContainerSpec(task_id=tasks(), image=image, args=("echo from-args",))).strip() == "from-args"
    # --entrypoint replaces the ENTRYPOINT and drops the image's CMD, as in Docker.
    entry = ContainerSpec(task_id=tasks(), image=image, command=("/bin/echo", "new-entry"))
    assert run(runtime, entry).strip() == "new-entry"


def test_privileged_gets_the_nodes_capabilities_and_devices(
    runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]
) -> None:
    script = "grep CapEff /proc/self/status | cut -f2; [ -c /dev/net/tun ] && echo tun; touch /sys/probe 2>&1 || true"
    spec = ContainerSpec(task_id=tasks(), image=image, args=(script,), options=ContainerOptions(privileged=True))
    lines = run(runtime, spec).splitlines()
    assert lines[0] == cap_mask(nodeside.node_capabilities())
    if Path("/dev/net/tun").exists():
        assert "tun" in lines


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of the test's own (as the overlay gives each task), removed by name."""
    name = f"wopt-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_a_net_sysctl_applies_in_the_tasks_own_network_namespace(
    runtime: ContainerdRuntime, image: str, tasks: Callable[[], str], netns: str
) -> None:
    node_value = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()
    wanted = "81" if node_value.strip() != "81" else "82"
    options = ContainerOptions(sysctls={"net.ipv4.ip_unprivileged_port_start": wanted})
    script = "cat /proc/sys/net/ipv4/ip_unprivileged_port_start"
    spec = ContainerSpec(task_id=tasks(), image=image, args=(script,), netns=netns, options=options)
    assert run(runtime, spec).strip() == wanted
    assert Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text() == node_value  # the node's is untouched


def test_a_missing_device_fails_permanently_with_dockers_message(
    runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]
) -> None:
    options = ContainerOptions(devices=(DeviceMapping("/dev/warren-no-such-device"),))
    with pytest.raises(RuntimeFailure) as failure:
        runtime.prepare(ContainerSpec(task_id=tasks(), image=image, args=("true",), options=options))
    assert failure.value.permanent
    assert "error gathering device information" in failure.value.message
    assert "'/dev/warren-no-such-device': no such file or directory" in failure.value.message


def test_a_sysctl_runc_refuses_fails_with_runcs_message(
    runtime: ContainerdRuntime, image: str, tasks: Callable[[], str]
) -> None:
    """net.* needs the task's own network namespace: without the overlay it shares the node's."""
    task_id = tasks()
    options = ContainerOptions(sysctls={"net.core.somaxconn": "1024"})
    runtime.prepare(ContainerSpec(task_id=task_id, image=image, args=("true",), options=options))
    with pytest.raises(RuntimeFailure) as failure:
        runtime.start(task_id)
    assert "net.core.somaxconn" in failure.value.message and "network namespace" in failure.value.message
    assert failure.value.permanent


# -- the exec runtime: the options a host process can have -----------------------------------------
@pytest.fixture
def exec_runtime(tmp_path: Path) -> Iterator[ExecRuntime]:
    rt = ExecRuntime(tmp_path / "exec-state")
    yield rt
    for status in rt.list():
        rt.remove(status.runtime_id)


def run_exec(rt: ExecRuntime, spec: ContainerSpec) -> str:
    rt.prepare(spec)
    rt.start(spec.task_id)
    status = rt.wait(spec.task_id, timeout=20)
    assert status is not None, f"{spec.task_id} still running after 20s"
    output = Path(spec.log_path).read_text()
    assert status.exit_code == 0, output
    return output


@pytest.mark.skipif(os.geteuid() != 0, reason="a user change, a hard limit and a mount namespace need root")
def test_exec_runtime_applies_user_groups_workdir_ulimit_dns_hostname_and_init(
    exec_runtime: ExecRuntime, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    options = ContainerOptions(
        group_add=("10", "20"), ulimits=(Ulimit("nofile", 512, 1024),), dns=("10.9.8.7",), dns_options=("ndots:3",),
        init=True,
    )  # fmt: skip
    script = f'{WHO}; echo "nofile=$(ulimit -n):$(ulimit -Hn)"; echo "resolv=$(tr "\\n" "|" < /etc/resolv.conf)"; '
    script += 'echo "parent=$(cat /proc/$PPID/comm)"; echo "hostname=$(hostname) env=$HOSTNAME"'
    spec = ContainerSpec(
        task_id=f"t{secrets.token_hex(6)}", image="exec", command=("sh", "-c", script), user="65534:65534",
        cwd=str(workdir), options=options, log_path=str(tmp_path / "task.log"), hostname="web-3",
    )  # fmt: skip
    node_hostname = socket.gethostname()
    seen = facts(run_exec(exec_runtime, spec))
    assert seen["id"] == f"65534:65534 groups=65534 10 20 pwd={workdir}"
    assert seen["nofile"] == "512:1024"
    assert seen["resolv"] == "nameserver 10.9.8.7|options ndots:3|"
    assert seen["parent"].startswith("tini")
    assert seen["hostname"] == "web-3 env=web-3" and socket.gethostname() == node_hostname  # a UTS namespace of its own
    assert Path("/etc/resolv.conf").read_text() != "nameserver 10.9.8.7\noptions ndots:3\n"  # the host's is untouched


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        (ContainerOptions(read_only=True), "--read-only"),
        (ContainerOptions(cap_drop=("ALL",)), "--cap-drop"),
        (ContainerOptions(privileged=True), "--privileged"),
        (ContainerOptions(devices=(DeviceMapping("/dev/null"),)), "--device"),
        (ContainerOptions(sysctls={"kernel.shmmax": "1"}), "--sysctl"),
    ],
)
def test_exec_runtime_refuses_what_needs_a_container(
    exec_runtime: ExecRuntime, tmp_path: Path, options: ContainerOptions, flag: str
) -> None:
    spec = ContainerSpec(task_id=f"t{secrets.token_hex(6)}", image="exec", command=("true",), options=options)
    with pytest.raises(RuntimeFailure, match=f"the exec runtime cannot apply {flag}") as failure:
        exec_runtime.prepare(spec)
    assert failure.value.permanent


# -- end to end: the CLI, a manager and an agent on containerd --------------------------------------
@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, containerd: ContainerdDaemon, registry: LocalRegistry
) -> Iterator[Cluster]:
    with containerd_cluster(tmp_path_factory.mktemp("options-cluster"), containerd, registry) as c:
        yield c


def usage_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 2, result
    assert text in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_end_to_end_options_bad_values_and_a_missing_device(cluster: Cluster, image: str) -> None:
    c = cluster
    # Refused with one line and exit 2, nothing written: by the CLI, and by the manager.
    usage_error(c.cli("service", "create", "bad", "--image", image, "--cap-add", "NET_FLY"), "unknown capability")
    usage_error(c.cli("service", "create", "bad", "--image", image, "--sysctl", "vm.swappiness=1"), "not allowed")
    usage_error(c.cli("service", "create", "bad", "--image", image, "--dns", "not-an-ip"), "invalid --dns")
    usage_error(c.cli("service", "create", "bad", "--image", image, "--group-add", "a b"), "--group-add")
    assert json.loads(c.ok("service", "ls", "--format", "json")) == []

    # --entrypoint replaces the image's ENTRYPOINT; words after `--` are the CMD it runs.
    script = "echo host=$(hostname) env=$HOSTNAME caps=$(grep CapEff /proc/self/status | cut -f2); exec sleep 1000"
    c.ok("service", "create", "opts", "--image", image, "--hostname", "{{.Service.Name}}-{{.Task.Slot}}",
         "--cap-add", "NET_ADMIN", "--read-only", "--init", "--stop-grace-period", "1s",
         "--entrypoint", "/bin/sh -c", "--", script)  # fmt: skip
    [task] = c.tasks("opts")
    log_file = c.worker.data_dir / "logs" / f"{task['id']}.log"
    wait_for(lambda: log_file.exists() and "host=" in log_file.read_text(), message="the task's output")
    caps = cap_mask(container.capabilities(ContainerOptions(cap_add=("NET_ADMIN",))))
    assert f"host=opts-1 env=opts-1 caps={caps}" in log_file.read_text()
    # The image's HEALTHCHECK runs (the service sets none): the task was RUNNING only once healthy.
    assert task["health"] == "healthy", task
    table = c.ok("service", "inspect", "opts")
    assert "--cap-add CAP_NET_ADMIN" in table and "/bin/sh -c" in table, table
    inspected = json.loads(c.ok("service", "inspect", "opts", "--format", "json"))
    assert "CAP_NET_ADMIN" in json.dumps(inspected) and "{{.Service.Name}}-{{.Task.Slot}}" in json.dumps(inspected)

    # A device the node lacks: the task fails with the runtime's message in `service ps`.
    c.ok("service", "create", "nodev", "--image", image, "--device", "/dev/warren-no-such-device", "--detach",
         "--restart-condition", "none", "--", "true")  # fmt: skip

    def rejected() -> dict | None:
        return next((t for t in c.tasks("nodev", history=True) if t["state"] in ("rejected", "failed")), None)

    ended = wait_for(rejected, timeout=30, message="the task without its device to fail")
    assert "error gathering device information" in ended["error"] and "/dev/warren-no-such-device" in ended["error"]
    assert "error gathering device information" in c.ok("service", "ps", "nodev", "--all")
    c.ok("service", "rm", "opts", "nodev")
    wait_for(lambda: not c.view.containers(), timeout=30, message="containers removed")
