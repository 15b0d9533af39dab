"""The exec driver's command chain for tasks on the overlay (ADR 17): network namespace, a mount
namespace with the node's resolv.conf, cgroups and user, each step exec'ing the next.

No root needed: the argv is checked as built, and the resolv.conf shim runs for real with a
stand-in for `mount`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from warren.agent.runtime import ContainerSpec
from warren.model import Ulimit
from warren.runtime.exec import ExecRuntime, spawn
from warren.runtime.exec.chain import CGROUP_SHIM, HOSTNAME_SHIM, RESOLV_SHIM, exec_chain

NETNS = "/run/netns/wt-t1"
RESOLV = "/var/lib/warren/network/resolv.conf"
TASK = ["sleep", "30"]


@pytest.fixture(autouse=True)
def tools(monkeypatch: pytest.MonkeyPatch) -> None:
    """Helpers resolve to a fixed directory, so argv can be compared whole."""
    monkeypatch.setattr("warren.runtime.exec.chain.shutil.which", lambda name: f"/T/{name}")


def chain(**kw: Any) -> tuple[list[str], str, tuple[int, int] | None]:
    args: dict[str, Any] = {"procs": [], "netns": "", "resolv_conf": "", "user": None, **kw}
    return exec_chain(list(TASK), "/usr/bin/sleep", **args)


def test_netns_and_resolv_conf_add_a_mount_namespace_with_the_file_over_etc_resolv_conf() -> None:
    argv, exe, user = chain(netns=NETNS, resolv_conf=RESOLV)
    assert argv == [
        "/T/nsenter",
        f"--net={NETNS}",
        "--",
        "/T/unshare",
        "--mount",
        "--propagation",
        "slave",  # the task's mounts never reach the host
        "--",
        "/bin/sh",
        "-c",
        RESOLV_SHIM,
        "warren-resolv",
        "/T/mount",
        RESOLV,
        *TASK,
    ]
    assert (exe, user) == ("/T/nsenter", None)
    # Forking would leave the driver tracking a parent instead of the task.
    assert not {"-f", "--fork"} & set(argv)


def test_netns_alone_only_enters_the_network() -> None:
    assert chain(netns=NETNS) == (["/T/nsenter", f"--net={NETNS}", "--", *TASK], "/T/nsenter", None)


def test_resolv_conf_without_a_netns_gets_a_mount_namespace() -> None:
    """The agent gives a task on the host's network no resolv.conf (it keeps the host's); one it
    is given is its own (--dns, ADR 42), mounted over /etc/resolv.conf in its mount namespace."""
    assert chain() == (TASK, "/usr/bin/sleep", None)
    argv, exe, user = chain(resolv_conf=RESOLV, user=(65534, 65534))
    assert argv[:6] == ["/T/unshare", "--mount", "--propagation", "slave", "--", "/bin/sh"]
    assert argv[-7:] == ["/T/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *TASK]
    assert (exe, user) == ("/T/unshare", None)


def test_groups_and_ulimits_go_through_setpriv_and_prlimit() -> None:
    argv, exe, user = chain(user=(7, 8), groups=[10, 20], rlimits=[Ulimit("nofile", 5, 6), Ulimit("core", 0, 0)])
    assert argv == [
        "/T/prlimit", "--nofile=5:6", "--core=0:0", "--",  # before setpriv: raising a hard limit needs root
        "/T/setpriv", "--reuid=7", "--regid=8", "--groups=10,20", "--", *TASK,
    ]  # fmt: skip
    assert (exe, user) == ("/T/prlimit", None)
    assert chain(groups=[10])[0] == ["/T/setpriv", "--groups=10", "--", *TASK]


def test_a_user_is_applied_last_by_setpriv_when_earlier_steps_need_root() -> None:
    procs = ["/sys/fs/cgroup/memory/w/t1/cgroup.procs"]
    argv, exe, user = chain(netns=NETNS, resolv_conf=RESOLV, procs=procs, user=(65534, 65533))
    cgroup_shim = argv.index(CGROUP_SHIM) - 2
    assert argv[cgroup_shim:] == [
        "/bin/sh",
        "-c",
        CGROUP_SHIM,
        "warren-exec",
        *procs,
        "--",
        "/T/setpriv",
        "--reuid=65534",
        "--regid=65533",
        "--clear-groups",
        "--",
        *TASK,
    ]
    resolv_shim = argv.index(RESOLV_SHIM) - 2
    assert argv[resolv_shim : resolv_shim + 3] == ["/bin/sh", "-c", RESOLV_SHIM]
    assert resolv_shim < cgroup_shim  # the mount needs root too, so it comes before setpriv
    assert argv[0] == exe == "/T/nsenter"
    assert user is None  # Popen stays root: nsenter, unshare and the cgroup join need it


def test_cgroups_alone_also_move_the_user_to_setpriv() -> None:
    argv, exe, user = chain(procs=["/cg/cgroup.procs"], user=(1000, 1000))
    assert argv == [
        "/bin/sh",
        "-c",
        CGROUP_SHIM,
        "warren-exec",
        "/cg/cgroup.procs",
        "--",
        "/T/setpriv",
        "--reuid=1000",
        "--regid=1000",
        "--clear-groups",
        "--",
        *TASK,
    ]
    assert (exe, user) == ("/bin/sh", None)


def test_without_wrappers_popen_keeps_the_user() -> None:
    assert chain(user=(1000, 1000)) == (TASK, "/usr/bin/sleep", (1000, 1000))


def test_the_driver_passes_the_specs_netns_and_resolv_conf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def popen(argv: list[str], **kw: Any) -> object:
        seen.update(kw, argv=argv)
        return object()

    monkeypatch.setattr(spawn.subprocess, "Popen", popen)
    rt = ExecRuntime(tmp_path / "state")
    spec = ContainerSpec(task_id="t1", image="exec", command=("sleep", "30"), netns=NETNS, resolv_conf=RESOLV)
    rid = rt.prepare(spec)
    with open(os.devnull, "wb") as out:
        spawn.spawn(rt._records[rid], ["sleep", "30"], out)
    assert seen["argv"][:3] == ["/T/nsenter", f"--net={NETNS}", "--"]
    assert seen["argv"][seen["argv"].index(RESOLV_SHIM) + 1 :][:3] == ["warren-resolv", "/T/mount", RESOLV]
    assert seen["argv"][-2:] == ["sleep", "30"]
    assert seen["executable"] == "/T/nsenter" and "user" not in seen


# -- the shim itself, with a stand-in for mount --------------------------------------------------


def fake_mount(tmp_path: Path, code: int) -> tuple[Path, Path]:
    record = tmp_path / "mount-args"
    script = tmp_path / "mount"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nexit {code}\n')
    script.chmod(0o755)
    return script, record


def test_the_shim_mounts_read_only_then_execs_the_task_in_the_same_process(tmp_path: Path) -> None:
    mount, record = fake_mount(tmp_path, 0)
    task = ["/bin/sh", "-c", 'echo "$$"; printf "<%s>" "$@"', "task", "a b", "-c", ""]
    proc = subprocess.Popen(
        ["/bin/sh", "-c", RESOLV_SHIM, "warren-resolv", str(mount), RESOLV, *task], stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    pid, args = out.splitlines()
    assert int(pid) == proc.pid  # exec, not fork: the pid the driver records is the task's
    assert args == "<a b><-c><>"  # arguments reach the task unchanged
    assert record.read_text().splitlines() == ["--bind", "-o", "ro", "--", RESOLV, "/etc/resolv.conf"]


def test_the_task_does_not_run_when_the_mount_fails(tmp_path: Path) -> None:
    mount, _ = fake_mount(tmp_path, 32)
    marker = tmp_path / "ran"
    proc = subprocess.run(
        ["/bin/sh", "-c", RESOLV_SHIM, "warren-resolv", str(mount), RESOLV, "touch", str(marker)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode == 125
    assert f"warren: cannot mount {RESOLV} over /etc/resolv.conf" in proc.stderr
    assert not marker.exists()


def test_a_hostname_gets_a_uts_namespace_and_the_hostname_shim() -> None:
    argv, exe, user = chain(hostname="web-3", resolv_conf=RESOLV)
    assert argv[:6] == ["/T/unshare", "--mount", "--propagation", "slave", "--uts", "--"]
    shim = argv.index(HOSTNAME_SHIM)
    assert argv[shim - 2 : shim + 4] == ["/bin/sh", "-c", HOSTNAME_SHIM, "warren-hostname", "/T/hostname", "web-3"]
    assert argv[-2:] == TASK and (exe, user) == ("/T/unshare", None)
    assert chain(hostname="h")[0][:3] == ["/T/unshare", "--uts", "--"]


def test_the_hostname_shim_sets_it_then_execs_the_task(tmp_path: Path) -> None:
    fake = tmp_path / "hostname"
    fake.write_text(f'#!/bin/sh\necho "$1" > {tmp_path}/set\n')
    fake.chmod(0o755)
    out = subprocess.run(
        ["/bin/sh", "-c", HOSTNAME_SHIM, "warren-hostname", str(fake), "web-3", "echo", "ran"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout == "ran\n" and (tmp_path / "set").read_text() == "web-3\n"
    fake.write_text("#!/bin/sh\nexit 1\n")
    failed = subprocess.run(
        ["/bin/sh", "-c", HOSTNAME_SHIM, "w", str(fake), "x", "echo", "ran"], capture_output=True, text=True
    )
    assert failed.returncode == 125 and "cannot set the hostname x" in failed.stderr and "ran" not in failed.stdout
