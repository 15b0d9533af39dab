"""The OCI runtime spec (config.json) for a task: the image's defaults merged with its ContainerSpec.

Pure: no containerd, no files. Docker's rules: `command` replaces the image's Entrypoint (and
then drops its Cmd), `args` replace Cmd, `env` is merged over the image's Env.

Networking: a task on the overlay joins the network namespace the agent made for it
(`ContainerSpec.netns`, ADR 17); otherwise it shares the host's. It gets its own PID, IPC, UTS
and mount namespaces. The host's
/etc/resolv.conf and /etc/hosts are bind-mounted read-only so name resolution works as on the
host. No seccomp profile is applied yet; capabilities are Docker's default set.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from warren.agent.runtime import ContainerSpec, MountSpec
from warren.text import ascii_int, shown

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_PERIOD = 100_000  # microseconds, the kernel's default CFS period

CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
HOST_FILES = ("/etc/resolv.conf", "/etc/hosts")


class SpecError(ValueError):
    """The ContainerSpec and image cannot make a runnable process; retrying cannot help."""


def _device(kind: str, major: int | None, minor: int | None, access: str = "rwm") -> dict[str, object]:
    rule: dict[str, object] = {"allow": True, "type": kind, "access": access}
    if major is not None:
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    return rule


DEVICE_RULES = [
    {"allow": False, "access": "rwm"},
    _device("c", None, None, "m"),
    _device("b", None, None, "m"),
    _device("c", 1, 3),  # null
    _device("c", 1, 5),  # zero
    _device("c", 1, 7),  # full
    _device("c", 1, 8),  # random
    _device("c", 1, 9),  # urandom
    _device("c", 5, 0),  # tty
    _device("c", 5, 1),  # console
    _device("c", 5, 2),  # ptmx
    _device("c", 136, None),  # pts
]


MAX_ID = 2**32 - 2  # uid_t is 32 bits; 2**32 - 1 means "no id"


def parse_user(user: str) -> tuple[int, int]:
    """uid and gid from `uid`, `uid:gid` or `root` (names other than root need the image's
    /etc/passwd, which is not read before the rootfs exists: use numeric ids)."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    # ASCII digits only: int() also takes " 5\n" and other scripts' digits.
    uid = 0 if name == "root" else ascii_int(name)
    gid = (0 if group == "root" else ascii_int(group)) if group else (0 if uid == 0 else uid)
    if uid is None or gid is None:
        raise SpecError(f"user {shown(user)} is not numeric: use uid[:gid] (user names are not resolved)")
    if uid > MAX_ID or gid > MAX_ID:
        raise SpecError(f"user {shown(user)}: ids are at most {MAX_ID}")
    return uid, gid


def merge_env(image_env: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The image's KEY=VALUE list with `env` laid over it (order kept, new keys appended)."""
    merged: dict[str, str] = {}
    for item in image_env:
        key, _, value = item.partition("=")
        merged[key] = value
    merged.update(env)
    if "PATH" not in merged:
        merged = {"PATH": DEFAULT_PATH.split("=", 1)[1], **merged}
    return [f"{k}={v}" for k, v in merged.items()]


def process_args(spec: ContainerSpec, image_config: Mapping[str, Any]) -> list[str]:
    entrypoint = list(spec.command) if spec.command else list(image_config.get("Entrypoint") or [])
    if spec.args:
        cmd = list(spec.args)
    elif spec.command:
        cmd = []  # a new entrypoint drops the image's Cmd, as in Docker
    else:
        cmd = list(image_config.get("Cmd") or [])
    args = [str(a) for a in entrypoint + cmd]
    if not args:
        raise SpecError(f"no command to run: image {spec.image} has no Entrypoint or Cmd and the service gives none")
    return args


def build_process(spec: ContainerSpec, image_config: Mapping[str, Any]) -> dict[str, object]:
    cwd = spec.cwd or str(image_config.get("WorkingDir") or "/")
    if not cwd.startswith("/"):
        raise SpecError(f"working directory {cwd!r} must be an absolute path")
    uid, gid = parse_user(spec.user or str(image_config.get("User") or ""))
    return {
        "terminal": False,
        "user": {"uid": uid, "gid": gid},
        "args": process_args(spec, image_config),
        "env": merge_env(list(image_config.get("Env") or []), spec.env),
        "cwd": cwd,
        "capabilities": {k: list(CAPABILITIES) for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": True,
    }


def exec_process(container_spec: Mapping[str, Any], argv: Sequence[str]) -> dict[str, object]:
    """An exec'd process: the container's own process settings with other args."""
    process = copy.deepcopy(dict(container_spec.get("process") or {}))
    process["args"] = list(argv)
    process["terminal"] = False
    return process


def _mounts(host_files: Sequence[str]) -> list[dict[str, object]]:
    mounts: list[dict[str, object]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ]
    for path in host_files:
        mounts.append(
            {"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro", "nosuid", "nodev"]}
        )
    return mounts


def _resolv_conf(mounts: list[dict[str, object]], source: str) -> list[dict[str, object]]:
    """`mounts` with /etc/resolv.conf from `source` (the node's embedded DNS, ADR 17)."""
    kept = [m for m in mounts if m["destination"] != "/etc/resolv.conf"]
    options = ["rbind", "ro", "nosuid", "nodev"]
    return [*kept, {"destination": "/etc/resolv.conf", "type": "bind", "source": source, "options": options}]


def _task_mounts(mounts: list[dict[str, object]], wanted: Sequence[MountSpec]) -> list[dict[str, object]]:
    """`mounts` with the task's own (ADR 40) after them; one of the task's at a default
    mount's destination replaces it. runc makes a missing destination in the rootfs."""
    targets = {m.target for m in wanted}
    kept = [m for m in mounts if m["destination"] not in targets]
    for m in wanted:
        if m.type == "bind":
            options = ["rbind", "rprivate", "ro" if m.readonly else "rw"]
            kept.append({"destination": m.target, "type": "bind", "source": m.source, "options": options})
        else:
            options = ["nosuid", "nodev", f"mode={m.tmpfs_mode or 0o1777:o}"]
            options += [f"size={m.tmpfs_size}"] if m.tmpfs_size else []
            options += ["ro"] if m.readonly else []
            kept.append({"destination": m.target, "type": "tmpfs", "source": "tmpfs", "options": options})
    return kept


def _file_mounts(mounts: list[dict[str, object]], spec: ContainerSpec) -> list[dict[str, object]]:
    """`mounts` with each secret and config file bound read-only from the agent's tmpfs (ADR 38):
    the spec names the file, so neither containerd's store nor the bundle holds its value."""
    options = ["rbind", "ro", "nosuid", "nodev", "noexec"]
    files: list[dict[str, object]] = [
        {"destination": f.target, "type": "bind", "source": f.source, "options": options} for f in spec.files
    ]
    return [*mounts, *files]


def build_spec(
    spec: ContainerSpec,
    image_config: Mapping[str, object],
    cgroups_path: str,
    hostname: str = "",
    host_files: Sequence[str] | None = None,
) -> dict[str, object]:
    """The runtime spec for `spec` on top of an image whose config section is `image_config`."""
    if host_files is None:
        host_files = [p for p in HOST_FILES if Path(p).is_file()]
    resources: dict[str, object] = {"devices": DEVICE_RULES}
    if spec.limits.memory_bytes > 0:
        resources["memory"] = {"limit": spec.limits.memory_bytes}
    if spec.limits.nano_cpus > 0:
        quota = max(1000, spec.limits.nano_cpus * CPU_PERIOD // 1_000_000_000)
        resources["cpu"] = {"quota": quota, "period": CPU_PERIOD}
    return {
        "ociVersion": "1.0.2",
        "process": build_process(spec, image_config),
        "root": {"path": "rootfs", "readonly": spec.read_only_rootfs},
        "hostname": (hostname or spec.task_id)[:63],
        "mounts": _file_mounts(
            _task_mounts(
                _resolv_conf(_mounts(host_files), spec.resolv_conf) if spec.resolv_conf else _mounts(host_files),
                spec.mounts,
            ),
            spec,
        ),
        "linux": {
            "resources": resources,
            "cgroupsPath": cgroups_path,
            # Without a netns the task uses the host's network namespace (see module doc).
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                *([{"type": "network", "path": spec.netns}] if spec.netns else []),
            ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }
