"""`--mount` with Docker's syntax (ADR 40), and `--mount-add` / `--mount-rm` on update. Pure.

    type=volume,source=NAME,target=PATH[,readonly][,volume-opt=K=V]...
    type=bind,source=HOSTPATH,target=PATH[,readonly]
    type=tmpfs,target=PATH[,tmpfs-size=64M][,tmpfs-mode=1770]

Fields are comma-separated (CSV: a field holding a comma is quoted); `src`, `dst`,
`destination` and `ro` are Docker's aliases. The type defaults to volume, as in Docker.
"""

from __future__ import annotations

import argparse
import csv
from typing import TYPE_CHECKING, Any

from warren.cli import units
from warren.cli.errors import CliError, Exit
from warren.cli.flags import value_type
from warren.text import shown

if TYPE_CHECKING:
    from warren.model import Mount

_BOOLS = {"": True, "true": True, "1": True, "false": False, "0": False}
_KEYS = {
    "type": "type",
    "source": "source",
    "src": "source",
    "target": "target",
    "destination": "target",
    "dst": "target",
    "readonly": "readonly",
    "ro": "readonly",
    "volume-opt": "volume-opt",
    "volume-driver": "volume-driver",
    "tmpfs-size": "tmpfs-size",
    "tmpfs-mode": "tmpfs-mode",
}


def parse_mount(text: str) -> Mount:
    """A Mount from one --mount value; ValueError says what is wrong with it."""
    from warren.model import Mount, MountType  # the CLI loads msgspec only when it needs it
    from warren.mounts import MountError, check_mount

    try:
        fields = next(csv.reader([text]), [])
    except csv.Error as exc:
        raise ValueError(f"invalid mount {shown(text)}: {exc}") from None
    values: dict[str, str] = {}
    options: dict[str, str] = {}
    for field in fields:
        raw_key, sep, value = field.partition("=")
        key = _KEYS.get(raw_key.strip().lower())
        if key is None:
            known = ", ".join(sorted({k for k in _KEYS if "-" in k or k in ("type", "source", "target", "readonly")}))
            raise ValueError(f"invalid mount field {shown(field)}: unknown key {shown(raw_key)} (known: {known})")
        if key == "volume-opt":
            name, has_value, option = value.partition("=")
            if not name or not has_value:
                raise ValueError(f"invalid volume-opt {shown(value)}: expected volume-opt=KEY=VALUE")
            options[name] = option
            continue
        if not sep and key != "readonly":
            raise ValueError(f"invalid mount field {shown(field)}: expected {raw_key}=VALUE")
        if key in values:
            raise ValueError(f"invalid mount {shown(text)}: {raw_key} is given twice")
        values[key] = value
    try:
        kind = MountType(values.get("type", "volume").lower())
    except ValueError:
        raise ValueError(f"invalid mount type {shown(values['type'])}: use volume, bind or tmpfs") from None
    readonly = _BOOLS.get(values.get("readonly", "false").lower())
    if readonly is None:
        raise ValueError(f"invalid readonly value {shown(values['readonly'])}: use true or false")
    if values.get("volume-driver", "local") != "local":
        raise ValueError(f"unknown volume driver {shown(values['volume-driver'])} (known: local)")
    if "target" not in values:
        raise ValueError(f"invalid mount {shown(text)}: a target is required (target=PATH)")
    size = units.parse_size(values["tmpfs-size"]) if "tmpfs-size" in values else 0
    mode = 0
    if "tmpfs-mode" in values:
        digits = values["tmpfs-mode"]
        if not digits or any(c not in "01234567" for c in digits):
            raise ValueError(f"invalid tmpfs-mode {shown(digits)}: octal permission bits such as 1777")
        mode = int(digits, 8)
    mount = Mount(kind, values["target"], values.get("source", ""), readonly, options, size, mode)
    try:
        check_mount(mount)
    except MountError as exc:
        raise ValueError(str(exc)) from None
    return mount


def parse_mount_target(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(f"invalid mount target {shown(text)}: the absolute path the mount is at")
    return text


_MOUNT = value_type(parse_mount)
_HELP = "type=volume|bind|tmpfs,source=...,target=PATH[,readonly][,volume-opt=K=V][,tmpfs-size=..][,tmpfs-mode=..]"


def add_create_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mount", type=_MOUNT, action="append", metavar="SPEC", help=f"a mount: {_HELP}")


def add_update_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mount-add", type=_MOUNT, action="append", metavar="SPEC", help="add or replace a mount (by target)"
    )
    p.add_argument(
        "--mount-rm", type=value_type(parse_mount_target), action="append", metavar="TARGET", help="remove a mount"
    )


def _to_pb(spec: Any, mount: Mount) -> None:
    spec.mounts.add(
        type=mount.type.value,
        source=mount.source,
        target=mount.target,
        readonly=mount.readonly,
        volume_options=mount.volume_options,
        tmpfs_size=mount.tmpfs_size,
        tmpfs_mode=mount.tmpfs_mode,
    )


def apply_create(spec: Any, args: argparse.Namespace) -> None:
    for mount in args.mount or []:
        _to_pb(spec, mount)


def apply_update(spec: Any, args: argparse.Namespace) -> None:
    """--mount-rm TARGET drops the mount there; --mount-add replaces one at its target."""
    removed = set(args.mount_rm or [])
    unknown = removed - {m.target for m in spec.mounts}
    if unknown:
        raise CliError(f"--mount-rm: the service has no mount at {', '.join(sorted(unknown))}", Exit.USAGE)
    added = list(args.mount_add or [])
    drop = removed | {m.target for m in added}
    kept = [m for m in spec.mounts if m.target not in drop]
    del spec.mounts[:]
    for m in kept:
        spec.mounts.add().CopyFrom(m)
    for mount in added:
        _to_pb(spec, mount)


def describe(mount: Any) -> str:
    """One line of `service inspect`: `volume db-data -> /data (read-only)`."""
    if mount.type == "tmpfs":
        extra = [f"size {units.format_size(mount.tmpfs_size)}"] if mount.tmpfs_size else []
        extra += [f"mode {mount.tmpfs_mode:o}"] if mount.tmpfs_mode else []
        what = "tmpfs" + (f" ({', '.join(extra)})" if extra else "")
    else:
        what = f"{mount.type} {mount.source}"
    return f"{what} -> {mount.target}" + (" (read-only)" if mount.readonly else "")
