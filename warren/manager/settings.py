"""The manager's own settings (today: the size of its state store's map), kept in its data
directory so that a restart without the flag keeps what was chosen, and a restart with the flag
changes it.

Rule, as for the agent's settings: a flag given on the command line wins and is saved; a flag
left out falls back to what was saved, then to the default. Stdlib only: the CLI checks values
before loading grpc or lmdb.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from warren import datadir
from warren.text import format_size

SETTINGS_FILE = datadir.MANAGER_SETTINGS_FILE
DEFAULT_MAP_SIZE = 8 << 30  # address space only; the file grows as needed
MIN_MAP_SIZE = 32 << 20  # below this, the reserve (ADR 22) would be most of the map
MAX_MAP_SIZE = 1 << 46  # 64 TiB: near the limit of a 47-bit user address space


class SettingsError(ValueError):
    """The settings file is unreadable or holds a value this version does not accept."""


def check_map_size(size: int) -> int:
    """`size` if it is a usable --state-map-size; ValueError saying why not."""
    if not MIN_MAP_SIZE <= size <= MAX_MAP_SIZE:
        raise ValueError(
            f"the state map size must be between {format_size(MIN_MAP_SIZE)} and {format_size(MAX_MAP_SIZE)} "
            f"(got {format_size(size)})"
        )
    return size


@dataclass(frozen=True)
class ManagerSettings:
    state_map_size: int = DEFAULT_MAP_SIZE


def load(directory: Path) -> ManagerSettings | None:
    """The saved settings, or None if none were saved."""
    return datadir.load_settings(directory / SETTINGS_FILE, _from_json, SettingsError)


def _from_json(raw: dict[str, Any]) -> ManagerSettings:
    size = raw.get("state_map_size", DEFAULT_MAP_SIZE)
    if not isinstance(size, int) or isinstance(size, bool):
        raise ValueError("state_map_size must be a number of bytes")
    return ManagerSettings(state_map_size=check_map_size(size))


def save(directory: Path, settings: ManagerSettings) -> None:
    """Write the settings atomically and durably: the next start must find them."""
    datadir.write_json(directory / SETTINGS_FILE, asdict(settings))


def resolve(directory: Path, state_map_size: int | None = None) -> ManagerSettings:
    """Saved settings (or the defaults) with the given flags applied; not saved."""
    saved = load(directory) or ManagerSettings()
    if state_map_size is None:
        return saved
    return ManagerSettings(state_map_size=check_map_size(state_map_size))
