"""The agent settings an operator chose (runtime, socket, labels...), kept next to the node's
identity so that `warren worker start` and a restarted `cluster init` run the agent the same way.

Rule: a flag given on the command line wins and is saved; a flag left out falls back to what was
saved, then to the default. Stdlib only: the CLI reads this before loading grpc.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from warren import datadir

SETTINGS_FILE = datadir.AGENT_SETTINGS_FILE
DEFAULT_CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
RUNTIMES = ("containerd", "exec")
WIREGUARD_MODES = ("off", "auto", "kernel", "userspace")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,15}$")
DEFAULT_CGROUP_PARENT = "/warren"
_CGROUP_PARENT_RE = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")  # absolute, no empty, '.' or '..' parts


class SettingsError(ValueError):
    """The settings file is unreadable or holds a value this version does not accept."""


@dataclass(frozen=True)
class AgentSettings:
    enabled: bool = True  # False only for a manager started with --manager-only
    runtime: str = "containerd"
    containerd_socket: str = DEFAULT_CONTAINERD_SOCKET
    labels: dict[str, str] = field(default_factory=dict)
    advertise_addr: str = ""
    insecure_registries: tuple[str, ...] = ()
    registry_cas: tuple[str, ...] = ()  # HOST=FILE: a registry's private CA (ADR 43)
    metrics_addr: str = ""
    cgroup_parent: str = DEFAULT_CGROUP_PARENT  # containerd runtime: containers' cgroups go under it
    # Where the manager this node runs once promoted (`node promote`) serves its API; Raft and
    # joins use the next two ports, as for `cluster init`.
    manager_listen_addr: str = "0.0.0.0:4242"
    manager_advertise_addr: str = ""
    # The overlay mesh (ADR 17): auto = the kernel's WireGuard where it exists, else
    # wireguard-go; off = tasks use the host's network.
    wireguard: str = "auto"
    wireguard_interface: str = "warren0"
    wireguard_port: int = 51820
    # Task log rotation (ADR 62): each task keeps at most log_max_files files of log_max_size.
    log_max_size: int = 10 * 1024 * 1024
    log_max_files: int = 3

    def overridden(self, **given: Any) -> AgentSettings:
        """These settings with every given (not None) value replacing the stored one."""
        names = {f.name for f in fields(self)}
        unknown = set(given) - names
        if unknown:
            raise TypeError(f"unknown agent settings: {', '.join(sorted(unknown))}")
        changes = {k: v for k, v in given.items() if v is not None}
        if "insecure_registries" in changes:
            changes["insecure_registries"] = tuple(changes["insecure_registries"])
        if "registry_cas" in changes:
            changes["registry_cas"] = tuple(changes["registry_cas"])
        if "labels" in changes:
            changes["labels"] = dict(changes["labels"])
        settings = replace(self, **changes)
        settings.check()
        return settings

    def check(self) -> None:
        if self.runtime not in RUNTIMES:
            raise SettingsError(f"unknown runtime {self.runtime!r} (use {' or '.join(RUNTIMES)})")
        check_cgroup_parent(self.cgroup_parent)
        if self.wireguard not in WIREGUARD_MODES:
            raise SettingsError(f"--wireguard must be one of {', '.join(WIREGUARD_MODES)} (got {self.wireguard!r})")
        if not _IFNAME_RE.fullmatch(self.wireguard_interface):
            raise SettingsError(f"invalid interface name {self.wireguard_interface!r}: 1-15 letters, digits, '-', '_'")
        if not 0 < self.wireguard_port < 65536:
            raise SettingsError(f"--wireguard-port must be between 1 and 65535 (got {self.wireguard_port})")
        check_log_rotation(self.log_max_size, self.log_max_files)


MIN_LOG_MAX_SIZE = 4096  # smaller would rotate at nearly every line
MAX_LOG_MAX_FILES = 100


def check_log_rotation(max_size: int, max_files: int) -> None:
    if not MIN_LOG_MAX_SIZE <= max_size <= 2**62:
        raise SettingsError(f"--log-max-size must be at least 4K (got {max_size} bytes)")
    if not 1 <= max_files <= MAX_LOG_MAX_FILES:
        raise SettingsError(f"--log-max-files must be between 1 and {MAX_LOG_MAX_FILES} (got {max_files})")


def check_cgroup_parent(path: str) -> None:
    """A cgroup path relative to each hierarchy's root, such as /warren or /warren/node1."""
    parts = path.split("/")
    if not _CGROUP_PARENT_RE.fullmatch(path) or any(p in (".", "..") for p in parts) or len(path) > 255:
        raise SettingsError(f"invalid cgroup parent {path!r}: expected an absolute path such as /warren")


def load(directory: Path) -> AgentSettings | None:
    """The saved settings, or None if none were saved."""
    return datadir.load_settings(directory / SETTINGS_FILE, _from_json, SettingsError)


def _from_json(raw: dict[str, Any]) -> AgentSettings:
    known = {f.name for f in fields(AgentSettings)}
    return AgentSettings().overridden(**{k: v for k, v in raw.items() if k in known})


def save(directory: Path, settings: AgentSettings) -> None:
    """Write the settings atomically, owner-only (labels may say more than the owner wants)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    datadir.write_json(directory / SETTINGS_FILE, asdict(settings))


def resolve(directory: Path, **given: Any) -> AgentSettings:
    """Saved settings (or the defaults) with the given flags applied; not saved."""
    return (load(directory) or AgentSettings()).overridden(**given)
