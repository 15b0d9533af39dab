"""The OCI runtime spec (config.json) for a task: the image's defaults merged with its ContainerSpec.

Pure: no containerd, no files. Docker's rules: `command` replaces the image's Entrypoint (and
then drops its Cmd), `args` replace Cmd, `env` is merged over the image's Env.

Networking: a task on the overlay joins the network namespace the agent made for it
(`ContainerSpec.netns`, ADR 17); otherwise it shares the host's. It gets its own PID, IPC, UTS
and mount namespaces. The host's
/etc/resolv.conf and /etc/hosts are bind-mounted read-only so name resolution works as on the
host. No seccomp profile is applied yet; capabilities are Docker's default set.

Container options (#13, ADR 42) follow Docker: `--cap-add/--cap-drop` tweak the default set
(warren.container.capabilities), `--privileged` gives every capability and every host device and
unmasks /proc and /sys, `--init` runs tini as PID 1 (bind-mounted from the node at INIT_PATH),
HOSTNAME is set in the environment, devices come resolved from the node (the driver stats them),
and `--dns*` give the task a resolv.conf of its own (warren.runtime.resolv).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warren.agent.runtime import ContainerSpec, MountSpec
from warren.container import ALL_CAPABILITIES, ULIMITS, OptionError, capabilities
from warren.model import ContainerOptions
from warren.text import ascii_int, shown

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CPU_PERIOD = 100_000  # microseconds, the kernel's default CFS period

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


INIT_PATH = "/sbin/warren-init"  # where --init's binary appears in the container (Docker: /sbin/docker-init)


@dataclass(frozen=True)
class HostDevice:
    """A device node of the node, as the driver found it, to create in the container."""

    path: str  # in the container
    kind: str  # "c" or "b"
    major: int
    minor: int
    file_mode: int = 0o666
    permissions: str = "rwm"


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


@dataclass(frozen=True)
class ImageUsers:
    """The image's /etc/passwd and /etc/group, read by the driver when a name must be resolved."""

    users: Mapping[str, tuple[int, int]]  # name -> (uid, primary gid)
    groups: Mapping[str, int]  # name -> gid

    @classmethod
    def parse(cls, passwd: str, group: str) -> ImageUsers:
        users: dict[str, tuple[int, int]] = {}
        for line in passwd.splitlines():
            fields = line.split(":")
            uid, gid = (ascii_int(fields[2]), ascii_int(fields[3])) if len(fields) > 3 else (None, None)
            if fields[0] and uid is not None and gid is not None:
                users.setdefault(fields[0], (uid, gid))
        groups: dict[str, int] = {}
        for line in group.splitlines():
            fields = line.split(":")
            gid = ascii_int(fields[2]) if len(fields) > 2 else None
            if fields[0] and gid is not None:
                groups.setdefault(fields[0], gid)
        return cls(users, groups)


def _is_name(part: str) -> bool:
    return bool(part) and part != "root" and ascii_int(part) is None


def needs_image_users(spec: ContainerSpec, image_config: Mapping[str, Any]) -> bool:
    """A user or group is named: the image's /etc/passwd and /etc/group must be read."""
    name, _, group = (spec.user or str(image_config.get("User") or "")).partition(":")
    return _is_name(name) or _is_name(group) or any(_is_name(g) for g in spec.options.group_add)


def parse_user(user: str, image_users: ImageUsers | None = None) -> tuple[int, int]:
    """uid and gid from `uid`, `uid:gid`, `root`, or names the image's /etc/passwd and /etc/group
    hold (`image_users`, read by the driver when needs_image_users says so)."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    # ASCII digits only: int() also takes " 5\n" and other scripts' digits.
    uid = 0 if name == "root" else ascii_int(name)
    primary = None if uid is None else (0 if uid == 0 else uid)
    if uid is None and image_users is not None:
        if name not in image_users.users:
            raise SpecError(f"unable to find user {shown(name)}: no matching entries in the image's passwd file")
        uid, primary = image_users.users[name]
    gid = (0 if group == "root" else ascii_int(group)) if group else primary
    if gid is None and group and image_users is not None:
        if group not in image_users.groups:
            raise SpecError(f"unable to find group {shown(group)}: no matching entries in the image's group file")
        gid = image_users.groups[group]
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


def additional_gids(groups: Sequence[str], image_users: ImageUsers | None = None) -> list[int]:
    """--group-add as gids: numbers, or names in the image's /etc/group."""
    gids = []
    for group in groups:
        gid = ascii_int(group)
        if gid is None and image_users is not None:
            if group not in image_users.groups:
                raise SpecError(f"unable to find group {shown(group)}: no matching entries in the image's group file")
            gid = image_users.groups[group]
        if gid is None or gid > MAX_ID:
            raise SpecError(f"group {shown(group)} is not numeric (group names are not resolved)")
        gids.append(gid)
    return gids


def rlimits(options: ContainerOptions) -> list[dict[str, object]]:
    return [{"type": ULIMITS[u.name], "soft": u.soft, "hard": u.hard} for u in options.ulimits]


def build_process(
    spec: ContainerSpec,
    image_config: Mapping[str, Any],
    hostname: str = "",
    available_capabilities: Sequence[str] = ALL_CAPABILITIES,
    image_users: ImageUsers | None = None,
) -> dict[str, object]:
    cwd = spec.cwd or str(image_config.get("WorkingDir") or "/")
    if not cwd.startswith("/"):
        raise SpecError(f"working directory {cwd!r} must be an absolute path")
    uid, gid = parse_user(spec.user or str(image_config.get("User") or ""), image_users)
    options = spec.options
    user: dict[str, object] = {"uid": uid, "gid": gid}
    if options.group_add:
        user["additionalGids"] = additional_gids(options.group_add, image_users)
    args = process_args(spec, image_config)
    if options.init:
        args = [INIT_PATH, "--", *args]
    try:
        caps = capabilities(options, available=available_capabilities)
    except OptionError as exc:  # checked by the manager; a spec from an older one may differ
        raise SpecError(str(exc)) from None
    # Docker sets HOSTNAME; the image's Env and then the service's --env may override it.
    image_env = list(image_config.get("Env") or [])
    hostname_env = {"HOSTNAME": hostname} if hostname and not any(e.startswith("HOSTNAME=") for e in image_env) else {}
    process: dict[str, object] = {
        "terminal": False,
        "user": user,
        "args": args,
        "env": merge_env(image_env, {**hostname_env, **spec.env}),
        "cwd": cwd,
        "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": not options.privileged,
    }
    if options.ulimits:
        process["rlimits"] = rlimits(options)
    return process


def exec_process(container_spec: Mapping[str, Any], argv: Sequence[str], terminal: bool = False) -> dict[str, object]:
    """An exec'd process: the container's own process settings with other args (and a terminal
    for an operator's `exec -t`, ADR 59)."""
    process = copy.deepcopy(dict(container_spec.get("process") or {}))
    process["args"] = list(argv)
    process["terminal"] = terminal
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


def _privileged_mounts(mounts: list[dict[str, object]]) -> list[dict[str, object]]:
    """--privileged: /sys and the cgroup tree writable, as Docker mounts them."""
    out = []
    for mount in mounts:
        if mount["destination"] in ("/sys", "/sys/fs/cgroup"):
            mount = {**mount, "options": [o for o in mount["options"] if o != "ro"] + ["rw"]}  # type: ignore[attr-defined]
        out.append(mount)
    return out


def _linux_devices(devices: Sequence[HostDevice]) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The devices to create in the container, and the cgroup rules that let it use them."""
    nodes = [
        {
            "path": d.path,
            "type": d.kind,
            "major": d.major,
            "minor": d.minor,
            "fileMode": d.file_mode,
            "uid": 0,
            "gid": 0,
        }
        for d in devices
    ]
    rules = [_device(d.kind, d.major, d.minor, d.permissions) for d in devices]
    return nodes, rules


def build_spec(
    spec: ContainerSpec,
    image_config: Mapping[str, object],
    cgroups_path: str,
    hostname: str = "",
    host_files: Sequence[str] | None = None,
    devices: Sequence[HostDevice] = (),
    init_binary: str = "",
    available_capabilities: Sequence[str] = ALL_CAPABILITIES,
    image_users: ImageUsers | None = None,
) -> dict[str, object]:
    """The runtime spec for `spec` on top of an image whose config section is `image_config`.
    `devices` are the node's devices the task gets (--device, or all with --privileged), and
    `init_binary` the node's path of the init that --init runs, `available_capabilities` the
    node's bounding set ("all" for --privileged and --cap-add ALL), `image_users` the image's
    users and groups when a name must be resolved."""
    if host_files is None:
        host_files = [p for p in HOST_FILES if Path(p).is_file()]
    options = spec.options
    hostname = (hostname or spec.hostname or spec.task_id)[:63]
    nodes, device_rules = _linux_devices(devices)
    allow_all = [{"allow": True, "access": "rwm"}]
    resources: dict[str, object] = {"devices": allow_all if options.privileged else DEVICE_RULES + device_rules}
    if spec.limits.memory_bytes > 0:
        resources["memory"] = {"limit": spec.limits.memory_bytes}
    if spec.limits.nano_cpus > 0:
        quota = max(1000, spec.limits.nano_cpus * CPU_PERIOD // 1_000_000_000)
        resources["cpu"] = {"quota": quota, "period": CPU_PERIOD}
    mounts = _resolv_conf(_mounts(host_files), spec.resolv_conf) if spec.resolv_conf else _mounts(host_files)
    if options.privileged:
        mounts = _privileged_mounts(mounts)
    if options.init:
        if not init_binary:
            raise SpecError("--init needs tini on the node (Debian's tini package: /usr/bin/tini-static)")
        mounts.append(
            {"destination": INIT_PATH, "type": "bind", "source": init_binary, "options": ["rbind", "ro", "nosuid"]}
        )
    mounts = _file_mounts(_task_mounts(mounts, spec.mounts), spec)  # the task's (ADR 40), then its files (ADR 38)
    linux: dict[str, object] = {
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
        "maskedPaths": [] if options.privileged else MASKED_PATHS,
        "readonlyPaths": [] if options.privileged else READONLY_PATHS,
    }
    if nodes:
        linux["devices"] = nodes
    if options.sysctls:
        linux["sysctl"] = dict(options.sysctls)
    return {
        "ociVersion": "1.0.2",
        "process": build_process(spec, image_config, hostname, available_capabilities, image_users),
        "root": {"path": "rootfs", "readonly": spec.read_only_rootfs},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
    }
