"""Where the CLI finds its managers and admin credentials: named contexts in one JSON file.

    {"current": "default",
     "contexts": {"default": {"managers": ["10.0.0.1:4242"], "ca": "...", "cert": "...", "key": "..."}}}

The file lives at $WARREN_CONFIG, else $XDG_CONFIG_HOME/warren/config.json (~/.config by
default). `warren cluster init` writes it through save_context. Stdlib only: the CLI reads it
on every command, before any heavy import.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from warren import datadir

ENV_CONFIG = "WARREN_CONFIG"


@dataclass(frozen=True)
class Context:
    """One cluster as seen by an operator: manager API addresses (tried in order) and the
    admin certificate files to present to them."""

    name: str
    managers: list[str]
    ca: Path
    cert: Path
    key: Path


class ConfigError(Exception):
    """The config cannot be used; the message is the one line to show the operator."""


def config_path() -> Path:
    """$WARREN_CONFIG, else $XDG_CONFIG_HOME/warren/config.json, else ~/.config/warren/config.json."""
    explicit = os.environ.get(ENV_CONFIG)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "warren" / "config.json"


def load_context(name: str | None = None, path: Path | None = None) -> Context:
    """The named context (default: the current one), with its credential files checked to exist."""
    path = Path(path) if path is not None else config_path()
    if not path.is_file():
        raise ConfigError(f"no credentials: run `warren cluster init` or set {ENV_CONFIG} (looked in {path})")
    data = _read(path)
    contexts = data.get("contexts") or {}
    if name is None:
        name = data.get("current")
        if not name:
            raise ConfigError(f"no current context in {path}: pass --context NAME")
    entry = contexts.get(name)
    if not isinstance(entry, dict):
        known = ", ".join(sorted(contexts)) or "none"
        raise ConfigError(f"no context named {name!r} in {path} (known: {known})")
    try:
        managers = [str(m) for m in entry["managers"]]
        ctx = Context(
            name=name,
            managers=managers,
            ca=_resolve(path, entry["ca"]),
            cert=_resolve(path, entry["cert"]),
            key=_resolve(path, entry["key"]),
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"context {name!r} in {path} is incomplete (missing {exc})") from None
    if not ctx.managers:
        raise ConfigError(f"context {name!r} in {path} lists no manager address")
    for label, file in (("CA certificate", ctx.ca), ("certificate", ctx.cert), ("key", ctx.key)):
        if not file.is_file():
            raise ConfigError(f"no credentials: {label} {file} of context {name!r} is missing ({path})")
    return ctx


def save_context(ctx: Context, make_current: bool = True, path: Path | None = None) -> Path:
    """Add or replace `ctx` in the config file (created with its directories), atomically.
    Returns the file written."""
    path = Path(path) if path is not None else config_path()
    data: dict = {"current": "", "contexts": {}}
    if path.is_file():
        with contextlib.suppress(ConfigError):
            data = _read(path)
    contexts = data.setdefault("contexts", {})
    if not isinstance(contexts, dict):
        contexts = data["contexts"] = {}
    contexts[ctx.name] = {
        "managers": list(ctx.managers),
        "ca": str(Path(ctx.ca).absolute()),
        "cert": str(Path(ctx.cert).absolute()),
        "key": str(Path(ctx.key).absolute()),
    }
    if make_current or not data.get("current"):
        data["current"] = ctx.name
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    datadir.write_json(path, data)
    return path


def _read(path: Path) -> dict:
    try:
        return datadir.read_json(path)
    except datadir.DataFileError as exc:
        raise ConfigError(str(exc)) from None


def _resolve(config: Path, value: str) -> Path:
    """Relative credential paths are relative to the config file's directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else config.parent / p
