"""A node's data directory: where each of its files lives, and the one way Warren replaces a
file in it (or in the CLI's config directory) and reads a JSON file back (ADR 29).

An agent's data directory (a manager's embedded agent uses <manager dir>/agent/):
    certs/               this node's CA, certificate and key (0600 key)
    node.json            {"node_id": ..., "managers": [...]}
    agent-settings.json  the settings the operator chose
    agent.db             LMDB cache: assignments and per-task local state
    agent.lock           held while an agent runs on the directory
    logs/                one <task>.log and <task>.idx per task (ADR 14), and their rotated
                         copies <task>.log.N and <task>.idx.N (ADR 62)
    network/             resolv.conf for tasks, and tasks/: the ledger of task networks (ADR 23)
    wireguard/           the overlay key ring (ADR 18)
    exec/ or containerd/ the runtime driver's own state
    manager/             once promoted: the manager's data directory
A manager's data directory: see ManagerDir.

Every write replaces the file atomically and durably: a temporary file in the same directory,
its bytes fsynced, renamed over the target, then the directory fsynced, so that after a crash
or a power loss the target holds either the old bytes or the new ones, never a mix or nothing.
Stdlib only: the CLI imports it before anything heavy.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

PRIVATE = 0o600  # secrets, identities and settings: owner-only
PUBLIC = 0o644  # certificates, and files a task reads (resolv.conf)

CERTS_DIR = "certs"
NODE_FILE = "node.json"
AGENT_SETTINGS_FILE = "agent-settings.json"
MANAGER_SETTINGS_FILE = "manager-settings.json"
MANAGER_FILE = "manager.json"
WIREGUARD_DIR = "wireguard"
VOLUMES_DIR = "volumes"  # the local volume driver's directories (ADR 40); only `volume rm` deletes them

T = TypeVar("T")


class DataFileError(ValueError):
    """A data or config file cannot be used; str() is the one line to show the operator."""


# -- writing -----------------------------------------------------------------------------------
def write_atomic(path: Path, data: bytes | str, mode: int = PRIVATE, durable: bool = True) -> None:
    """Replace `path` with `data` (a str is UTF-8), atomically and durably, with `mode` set
    before the first byte lands (a key is never readable by others, even half-written).
    durable=False skips both fsyncs: still whole after a process crash (kill -9), but a power
    loss may bring back the old file; for state written often that the node can rebuild."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_directory(path.parent)


def write_json(path: Path, value: Any, mode: int = PRIVATE) -> None:
    """`value` as indented JSON, written by write_atomic."""
    write_atomic(path, json.dumps(value, indent=2) + "\n", mode)


def fsync_directory(path: Path) -> None:
    """Make the directory's entries (a rename, a new or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- reading -----------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`. Raises DataFileError (one line, naming the file) if the file
    is missing, unreadable, not JSON or not an object."""
    found = read_json_if_exists(path)
    if found is None:
        raise DataFileError(f"{path} is missing")
    return found


def read_json_if_exists(path: Path) -> dict[str, Any] | None:
    """As read_json, but None if the file does not exist."""
    path = Path(path)
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataFileError(f"{path} is unreadable: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise DataFileError(f"{path} is not valid JSON: {_one_line(exc)}") from None
    if not isinstance(raw, dict):
        raise DataFileError(f"{path} is not a JSON object")
    return raw


def load_settings(path: Path, build: Callable[[dict[str, Any]], T], error: type[Exception]) -> T | None:
    """The one loader of settings files: None if none were saved; else `build` of the JSON
    object, where any refusal (the file's or build's TypeError/ValueError) raises `error` with
    one line naming the file."""
    try:
        raw = read_json_if_exists(path)
    except DataFileError as exc:
        raise error(str(exc)) from None
    if raw is None:
        return None
    try:
        return build(raw)
    except (TypeError, ValueError) as exc:
        raise error(f"{path}: {exc}") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


# -- layout ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AgentDir:
    """The paths of an agent's data directory (see the module docstring)."""

    root: Path

    @property
    def certs(self) -> Path:
        return self.root / CERTS_DIR

    @property
    def node_file(self) -> Path:
        return self.root / NODE_FILE

    @property
    def settings_file(self) -> Path:
        return self.root / AGENT_SETTINGS_FILE

    @property
    def cache(self) -> Path:
        return self.root / "agent.db"

    @property
    def lock_file(self) -> Path:
        return self.root / "agent.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def network(self) -> Path:
        return self.root / "network"

    @property
    def task_ledger(self) -> Path:
        return self.network / "tasks"

    @property
    def resolv_conf(self) -> Path:
        return self.network / "resolv.conf"

    @property
    def wireguard(self) -> Path:
        return self.root / WIREGUARD_DIR

    def runtime_state(self, runtime: str) -> Path:
        """The runtime driver's own directory: exec/ or containerd/."""
        return self.root / runtime

    @property
    def manager(self) -> ManagerDir:
        """Where this node's manager keeps its data once the node is promoted."""
        return ManagerDir(self.root / "manager")


@dataclass(frozen=True)
class ManagerDir:
    """The paths of a manager's data directory."""

    root: Path

    @property
    def manager_file(self) -> Path:
        """The manager's identity and addresses, written before the cluster exists."""
        return self.root / MANAGER_FILE

    @property
    def raft_secret(self) -> Path:
        return self.root / "raft.secret"

    @property
    def ca_key(self) -> Path:
        """The cluster CA key, from the first start until the cluster is committed (ADR 24)."""
        return self.root / "ca-key.pem"

    @property
    def certs(self) -> Path:
        return self.root / CERTS_DIR

    @property
    def admin(self) -> Path:
        """The admin client credentials made at init (the CLI's context points here)."""
        return self.root / "admin"

    @property
    def settings_file(self) -> Path:
        return self.root / MANAGER_SETTINGS_FILE

    @property
    def db(self) -> Path:
        """LMDB: the Raft journal and the cluster state."""
        return self.root / "db"

    @property
    def raft_snapshot(self) -> Path:
        return self.root / "raft-snapshot"

    @property
    def agent(self) -> AgentDir:
        """The embedded agent's data directory."""
        return AgentDir(self.root / "agent")
