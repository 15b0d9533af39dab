"""What a task's container options need from the node (ADR 42): its device nodes and its
capabilities (its init binary: warren.runtime.tini). The spec is built without I/O (oci.build_spec)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from warren.agent.runtime import IMAGE_HEALTH_LABEL, ContainerSpec, RuntimeFailure
from warren.container import ALL_CAPABILITIES
from warren.model import DeviceMapping
from warren.runtime.containerd.oci import HostDevice, ImageUsers

log = logging.getLogger(__name__)

MAX_LABEL = 4000  # containerd refuses a label whose key and value pass 4096 bytes
MAX_USER_FILE = 1 << 20

# libcontainer's HostDevices skips these: not device trees of their own, or per-container already.
_SKIPPED_DIRS = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"}


def node_capabilities(status: str = "/proc/self/status") -> list[str]:
    """The capabilities this agent may give (its bounding set): all of them for --privileged."""
    try:
        with open(status) as f:
            line = next((x for x in f if x.startswith("CapBnd:")), "")
    except OSError:
        line = ""
    if not line:
        return list(ALL_CAPABILITIES)
    mask = int(line.split()[1], 16)
    return [name for bit, name in enumerate(ALL_CAPABILITIES) if mask >> bit & 1]


def _host_device(path: str, inside: str, permissions: str) -> HostDevice | None:
    info = os.stat(path)  # follows symlinks, as Docker does (/dev/disk/by-id/...)
    if stat.S_ISCHR(info.st_mode):
        kind = "c"
    elif stat.S_ISBLK(info.st_mode):
        kind = "b"
    else:
        return None
    major, minor = os.major(info.st_rdev), os.minor(info.st_rdev)
    return HostDevice(inside, kind, major, minor, stat.S_IMODE(info.st_mode), permissions)


def resolve_device(mapping: DeviceMapping) -> list[HostDevice]:
    """The device (or every device under the directory) `mapping` names, as Docker reports a
    missing one: a permanent failure, so `service ps` shows it."""
    host, inside = mapping.path_on_host, mapping.path_in_container or mapping.path_on_host
    try:
        if os.path.isdir(host):
            found = []
            for root, _dirs, files in os.walk(host):
                for name in sorted(files):
                    full = os.path.join(root, name)
                    device = _host_device(full, inside + full[len(host) :], mapping.permissions)
                    if device is not None:
                        found.append(device)
            if not found:
                raise RuntimeFailure(f"no device nodes under {host}", permanent=True)
            return found
        device = _host_device(host, inside, mapping.permissions)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        msg = f"error gathering device information while adding custom device {host!r}: {reason}"
        raise RuntimeFailure(msg, permanent=True) from None
    if device is None:
        raise RuntimeFailure(f"{host} is not a device node (character or block)", permanent=True)
    return [device]


def all_host_devices(root: str = "/dev") -> list[HostDevice]:
    """--privileged: every device node of the node, at the same path (libcontainer's HostDevices)."""
    found: list[HostDevice] = []
    for current, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (current == root and d in _SKIPPED_DIRS)]
        for name in files:
            full = os.path.join(current, name)
            if full == "/dev/console" or os.path.islink(full):
                continue
            try:
                device = _host_device(full, full, "rwm")
            except OSError:
                continue  # gone meanwhile, or unreadable: not worth failing the task
            if device is not None:
                found.append(device)
    return found


def task_devices(spec: ContainerSpec) -> list[HostDevice]:
    """The devices to create in the task's container, one per path: a --device wins over the
    same path among --privileged's."""
    by_path = {d.path: d for d in all_host_devices()} if spec.options.privileged else {}
    for mapping in spec.options.devices:
        by_path.update((d.path, d) for d in resolve_device(mapping))
    return list(by_path.values())


def image_health_label(config: Mapping[str, object]) -> dict[str, str]:
    """The image's Healthcheck for the agent (IMAGE_HEALTH_LABEL), if it fits in a label."""
    check = config.get("Healthcheck")
    if not check:
        return {}
    text = json.dumps(check, sort_keys=True)
    if len(text) > MAX_LABEL:
        log.warning("the image's Healthcheck is longer than %d bytes: it is not run", MAX_LABEL)
        return {}
    return {IMAGE_HEALTH_LABEL: text}


def read_image_users(mounts: Sequence[Any]) -> ImageUsers:
    """The image's /etc/passwd and /etc/group, read through the task's root filesystem mounts
    (overlay: its upper then lower directories, the top layer first; or one bind)."""
    dirs: list[str] = []
    for mount in mounts:
        if mount.type == "bind":
            dirs.append(mount.source)
        for option in mount.options:
            key, _, value = option.partition("=")
            if key == "upperdir":
                dirs.insert(0, value)
            elif key == "lowerdir":
                dirs += value.split(":")

    def first(name: str) -> str:
        for directory in dirs:
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError), open(path, "rb") as f:
                return f.read(MAX_USER_FILE).decode("utf-8", "replace")
        return ""

    return ImageUsers.parse(first("etc/passwd"), first("etc/group"))
