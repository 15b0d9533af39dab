"""Task networks (ADR 17) with real runtimes: a containerd container and an exec task, each in its
own `wt-<task id>` namespace on a node bridge, with the node's resolv.conf.

Every network change happens in namespaces the test creates: a lab "host" (OverlayLab) holds the
node's bridge, ip_forward, the containerd daemon and a web server on the bridge address; the task
namespaces hang off that bridge. Traffic goes only to the bridge address. Everything started is
stopped by PID, by containerd's API or by the names the test chose, in `finally`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import containerd as _containerd
from tests.fixtures.containerd import ContainerdDaemon
from tests.fixtures.images import BusyboxImage
from tests.fixtures.overlay_lab import OverlayLab, remove_task_namespaces
from tests.fixtures.plugin import unavailable
from tests.fixtures.tasknet import tasknet
from tests.waiting import wait_for
from warren.agent.runtime import ContainerSpec, ContainerState
from warren.network import links
from warren.runtime.containerd.driver import ContainerdRuntime
from warren.runtime.exec import ExecRuntime

pytestmark = pytest.mark.integration

TOOLS = ("ip", "nsenter", "unshare", "setpriv", "mount")
SUBNET = "10.200.7.0/24"  # inside the lab's namespaces only
GATEWAY = "10.200.7.1"  # the node's address on its bridge (TaskNetworkManager.gateway)
PORT = 8080
IMAGE = "warren.test/busybox:tasknet"
RESOLV_TEXT = f"nameserver {GATEWAY}\noptions ndots:0\n"  # what the agent's Overlay.resolv_conf writes
# The same probe in both runtimes: busybox applets in the container, the host's tools for exec.
PROBE = (
    "echo pid=$$ uid=$(id -u); ip -o -4 addr show dev eth0; echo ---; cat /etc/resolv.conf; echo ---; "
    "busybox wget -q -O - http://{gateway}:{port}/token; echo; echo ---; "
    "grep ' /etc/resolv.conf ' /proc/self/mountinfo"
)
# No `wget -T`: it segfaults in Debian 12's busybox-static. And never write to /etc/resolv.conf
# to see whether it is read-only: if the driver regressed, that file is the host's.


def missing_reason() -> str | None:
    """Why task networks cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network and mount namespaces need root"
    missing = [b for b in TOOLS if shutil.which(b) is None]
    return f"task networks need {', '.join(missing)} (iproute2, util-linux, mount)" if missing else None


def read_only_mount(mountinfo: str) -> bool:
    """The /proc/self/mountinfo lines for /etc/resolv.conf show exactly one mount, read-only."""
    lines = [line.split() for line in mountinfo.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0][4] == "/etc/resolv.conf" and "ro" in lines[0][5].split(",")


def host_resolv_conf() -> tuple[bytes, int, int, list[str]]:
    """The host's /etc/resolv.conf (content, inode, mtime) and whatever is mounted on it."""
    st = os.stat("/etc/resolv.conf")
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if " /etc/resolv.conf " in line]
    return Path("/etc/resolv.conf").read_bytes(), st.st_ino, st.st_mtime_ns, mounts


def sections(log: str) -> list[str]:
    return [part.strip("\n") for part in log.split("---\n")]


def wait_for_text(path: Path, text: str, timeout: float = 10.0) -> str:
    """The file's content, once it holds `text`."""

    def content_with_text() -> str:
        content = path.read_text(errors="replace") if path.exists() else ""
        return content if text in content else ""

    return wait_for(content_with_text, timeout=timeout, interval=0.05, message=f"{text!r} in {path}")


@pytest.mark.parametrize("user", ["", "nobody"])
def test_an_exec_task_with_a_netns_reads_the_nodes_resolv_conf_and_the_host_keeps_its_own(
    tmp_path: Path, user: str
) -> None:
    if reason := missing_reason():
        pytest.skip(reason)
    if user:
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            pytest.skip(f"no user {user} on this host")
    else:
        uid = 0
    before = host_resolv_conf()
    task_id = f"tx{secrets.token_hex(6)}"
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(RESOLV_TEXT)
    log = tmp_path / "task.log"
    rt = ExecRuntime(tmp_path / "state")
    try:
        links.create_netns(f"wt-{task_id}")
        netns = links.netns_path(f"wt-{task_id}")
        script = "echo pid=$$ uid=$(id -u); cat /etc/resolv.conf; echo ---; "
        script += "grep ' /etc/resolv.conf ' /proc/self/mountinfo; echo ---; echo ready; sleep 60"
        spec = ContainerSpec(
            task_id=task_id,
            image="exec",
            command=("/bin/sh", "-c", script),
            netns=netns,
            resolv_conf=str(resolv),
            user=user,
            log_path=str(log),
        )
        rt.start(rt.prepare(spec))
        pid = rt.status(task_id).pid
        output = wait_for_text(log, "ready")

        # While it runs: the tracked pid is the task itself, in the task's network and a mount
        # namespace of its own, where the node's file covers /etc/resolv.conf, and only there.
        assert output.startswith(f"pid={pid} uid={uid}\n"), output
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns).st_ino
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert Path(f"/proc/{pid}/root/etc/resolv.conf").read_text() == RESOLV_TEXT
        assert host_resolv_conf() == before
        assert sections(output)[0].split("\n", 1)[1] + "\n" == RESOLV_TEXT
        assert read_only_mount(sections(output)[1]), output  # even for root: the file is the agent's

        status = rt.stop(task_id, 5)
        assert status.state is ContainerState.EXITED
    finally:
        with contextlib.suppress(Exception):
            rt.remove(task_id)
        remove_task_namespaces([task_id])
    assert resolv.read_text() == RESOLV_TEXT
    assert host_resolv_conf() == before


def test_containerd_and_exec_tasks_reach_their_node_over_the_task_network(
    tmp_path: Path, busybox_image: BusyboxImage
) -> None:
    unavailable(_containerd.missing_reason() or missing_reason())  # fails instead under WARREN_REQUIRE_CONTAINERD=1
    before = host_resolv_conf()
    ctr_id, exec_id = f"tc{secrets.token_hex(6)}", f"te{secrets.token_hex(6)}"
    address = {ctr_id: "10.200.7.2", exec_id: "10.200.7.3"}
    token = f"hello-{secrets.token_hex(8)}"
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(RESOLV_TEXT)
    www = tmp_path / "www"
    www.mkdir()
    (www / "token").write_text(token)
    probe = PROBE.format(gateway=GATEWAY, port=PORT)

    lab = OverlayLab()
    exe = ExecRuntime(tmp_path / "exec-state")
    daemon: ContainerdDaemon | None = None
    # Callbacks run last-registered first, each even if another fails.
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(remove_task_namespaces, list(address))  # after the lab: nothing runs in them then
        cleanup.callback(lab.destroy)  # the bridge, the web server (by PID), the node's namespace
        cleanup.callback(exe.remove, exec_id)
        try:
            (node,) = lab.create(1)
            daemon = ContainerdDaemon(netns=node.netns)
            cleanup.callback(daemon.stop)  # kills and deletes what is left through the API, then by PID
            daemon.start()
            ctr = ContainerdRuntime(daemon.socket, tmp_path / "ctd-state", cgroup_parent=daemon.cgroup_parent)
            cleanup.callback(ctr.close)
            cleanup.callback(ctr.remove, ctr_id)
            assert ctr.import_archive(busybox_image.archive, IMAGE) == [IMAGE]
            netns = {tid: tasknet(node.netns, tmp_path, SUBNET, "attach", tid, addr) for tid, addr in address.items()}
            assert netns == {tid: f"/run/netns/wt-{tid}" for tid in address}

            server = [sys.executable, "-m", "http.server", "--bind", GATEWAY, "--directory", str(www), str(PORT)]
            lab.spawn(node, server, log=tmp_path / "http.log")
            url = f"http://{GATEWAY}:{PORT}/token"
            wait_for(
                lambda: node.run(["busybox", "wget", "-q", "-O", "-", url]).stdout == token,
                timeout=10,
                message="the web server on the bridge to answer",
            )

            # The containerd task: run to completion, then remove (the shim flushes output on delete).
            spec = ContainerSpec(
                task_id=ctr_id,
                image=IMAGE,
                command=("sh", "-c", probe),
                netns=netns[ctr_id],
                resolv_conf=str(resolv),
                log_path=str(tmp_path / "ctr.log"),
            )
            ctr.start(ctr.prepare(spec))
            status = ctr.wait(ctr_id, timeout=20)
            assert status is not None, "the container did not finish within 20 s"
            ctr.remove(ctr_id)
            ctr_log = (tmp_path / "ctr.log").read_text()

            # The exec task: the host's binaries in the same kind of namespace.
            spec = ContainerSpec(
                task_id=exec_id,
                image="exec",
                command=("/bin/sh", "-c", probe),
                netns=netns[exec_id],
                resolv_conf=str(resolv),
                log_path=str(tmp_path / "exec.log"),
            )
            exe.start(exe.prepare(spec))
            exec_status = exe.wait(exec_id, timeout=20)
            assert exec_status is not None, "the exec task did not finish within 20 s"
            exec_log = (tmp_path / "exec.log").read_text()
        except BaseException:
            with contextlib.suppress(OSError):
                print(f"---- http.log\n{(tmp_path / 'http.log').read_text(errors='replace')[-3000:]}")
            if daemon is not None:
                print(f"---- containerd.log\n{daemon.log_tail()}")
            raise

    for tid, code, log in ((ctr_id, status.exit_code, ctr_log), (exec_id, exec_status.exit_code, exec_log)):
        parts = sections(log)
        assert code == 0, f"{tid} exited with {code}:\n{log}"
        assert re.search(rf"\beth0\s+inet {re.escape(address[tid])}/24\b", parts[0]), log
        assert parts[1] + "\n" == RESOLV_TEXT, log
        assert parts[2] == token, log  # reached the web server on the node's bridge address
        assert read_only_mount(parts[3]), log
    assert host_resolv_conf() == before


def test_the_node_bridge_keeps_its_mac_while_tasks_come_and_go(tmp_path: Path) -> None:
    """A Linux bridge takes the lowest MAC of its ports unless one was set: a task's veth coming
    or going changed it, its other tasks kept the old one for their gateway, and their replies to
    anything off the subnet (a published port's client, another node) went nowhere for up to
    ~45 s (found by the rebalance load test: connections to the tasks that stayed hung). The
    agent pins the bridge's MAC, which the kernel then never changes."""
    unavailable(missing_reason())
    task_ids = [f"tm{secrets.token_hex(6)}" for _ in range(4)]
    lab = OverlayLab()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(remove_task_namespaces, task_ids)
        cleanup.callback(lab.destroy)
        (node,) = lab.create(1)

        def bridge_state() -> tuple[str, str]:
            shown = node.run(["ip", "-o", "link", "show", "type", "bridge"], check=True).stdout
            [line] = [line for line in shown.splitlines() if "link/ether" in line]
            mac = line.split("link/ether ")[1].split()[0]
            name = line.split(": ")[1].split("@")[0]
            # `ip netns exec` mounts the namespace's own /sys (nsenter --net would show the host's).
            sysfs = ["ip", "netns", "exec", node.netns, "cat", f"/sys/class/net/{name}/addr_assign_type"]
            kind = subprocess.run(sysfs, capture_output=True, text=True, timeout=10, check=True).stdout
            return mac, kind.strip()

        seen = []
        for i, task_id in enumerate(task_ids):
            tasknet(node.netns, tmp_path, SUBNET, "attach", task_id, f"10.200.7.{10 + i}")
            seen.append(bridge_state())
        for task_id in task_ids[:3]:
            tasknet(node.netns, tmp_path, SUBNET, "detach", task_id)
            seen.append(bridge_state())
        assert {mac for mac, _ in seen} == {seen[0][0]}, seen  # one MAC throughout
        assert {kind for _, kind in seen} == {"3"}, seen  # NET_ADDR_SET: the kernel keeps it
