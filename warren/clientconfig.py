"""Where the CLI finds its managers and admin credentials: named contexts in one JSON file.

    {"current": "default",
     "contexts": {"default": {"managers": ["10.0.0.1:4242"], "ca": "...", "cert": "...", "key": "..."}}}

The file lives at $WARREN_CONFIG, else $XDG_CONFIG_HOME/warren/config.json (~/.config by
default). `warren cluster init` writes it through save_context. Stdlib only: the CLI reads it
on every command, before any heavy import.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a Warren client config (expected a JSON object)")
    return data


def _resolve(config: Path, value: str) -> Path:
    """Relative credential paths are relative to the config file's directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else config.parent / p
