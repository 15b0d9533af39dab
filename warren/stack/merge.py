"""Normalising one Compose file and merging several in order (#14, ADR 48). Pure.

Each file is normalised first, alone: the forms Compose allows as a list or a mapping
(`environment`, `labels`, `sysctls`, `networks`, `depends_on`...) become mappings, and relative
paths (bind sources, `env_file`, secret and config `file:`) are resolved from the directory of
the file that names them. Then the files merge by the Compose Specification's rules: mappings
merge key by key, the later file's value wins; sequences are appended, except `command`,
`entrypoint` and `healthcheck.test`, which the later file replaces, and `ports`, `volumes`,
`secrets` and `configs`, where an entry replaces the earlier one with the same unique key
(the target; for ports, host IP, published port, target and protocol).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

from warren.stack.tree import StackFileError, Where, YList, YMap, join

# Keys whose value may be a list of `KEY=VALUE` strings or a mapping, under each service.
_LIST_OR_DICT = ("environment", "labels", "sysctls", "annotations", "extra_hosts")
_DEFAULT_SECRET_DIR = "/run/secrets/"

_Path = tuple[str, ...]


def _matches(pattern: _Path, path: _Path) -> bool:
    return len(pattern) == len(path) and all(p in ("*", part) for p, part in zip(pattern, path, strict=True))


# -- normalising one file ----------------------------------------------------------------------
def normalize(tree: YMap, base_dir: str) -> None:
    """Rewrite `tree` (one file, interpolated) in place into the canonical forms, with its
    relative paths made absolute from `base_dir`. Raises StackFileError for a form that is
    neither of those the specification allows."""
    services = tree.get("services")
    if isinstance(services, YMap):
        for name, service in services.items():
            if isinstance(service, YMap):
                _normalize_service(service, join("services", name), base_dir)
    for kind in ("secrets", "configs"):
        objects = tree.get(kind)
        if not isinstance(objects, YMap):
            continue
        for name, obj in objects.items():
            if isinstance(obj, YMap) and isinstance(obj.get("file"), str):
                obj["file"] = resolve(base_dir, str(obj["file"]), obj.at("file"), join(join(kind, name), "file"))


def _normalize_service(service: YMap, path: str, base_dir: str) -> None:
    for key in _LIST_OR_DICT:
        if key in service:
            service[key] = as_mapping(service[key], service.at(key), join(path, key), bare_is_none=key == "environment")
    deploy = service.get("deploy")
    if isinstance(deploy, YMap) and "labels" in deploy:
        deploy["labels"] = as_mapping(deploy["labels"], deploy.at("labels"), join(path, "deploy.labels"))
    networks = service.get("networks")
    if isinstance(networks, YList):
        service["networks"] = _names_to_mapping(networks, join(path, "networks"), lambda where: None)
    depends = service.get("depends_on")
    if isinstance(depends, YList):

        def started(where: Where) -> YMap:
            condition = YMap(where)
            condition.put("condition", "service_started", where)
            return condition

        service["depends_on"] = _names_to_mapping(depends, join(path, "depends_on"), started)
    if "env_file" in service:
        service["env_file"] = _env_files(service["env_file"], service.at("env_file"), join(path, "env_file"), base_dir)
    volumes = service.get("volumes")
    if isinstance(volumes, YList):
        for index, volume in enumerate(volumes):
            volumes[index] = _resolve_volume(volume, volumes.at(index), join(join(path, "volumes"), index), base_dir)


def as_mapping(value: object, where: Where, path: str, bare_is_none: bool = False) -> object:
    """A `KEY=VALUE` list as a mapping (a bare `KEY` maps to None for the environment, which
    then takes the caller's value, and to "" elsewhere); anything else unchanged."""
    if not isinstance(value, YList):
        return value
    mapping = YMap(value.where)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise StackFileError(value.at(index), join(path, index), "expected a KEY=VALUE string")
        key, sep, text = item.partition("=")
        mapping.put(key, text if sep else (None if bare_is_none else ""), value.at(index))
    return mapping


def _names_to_mapping(names: YList, path: str, default: Callable[[Where], object]) -> YMap:
    mapping = YMap(names.where)
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise StackFileError(names.at(index), join(path, index), "expected a name")
        mapping.put(name, default(names.at(index)), names.at(index))
    return mapping


def resolve(base_dir: str, path: str, where: Where, key_path: str) -> str:
    """`path` made absolute from the directory of the file that names it."""
    if path.startswith("~"):
        raise StackFileError(where, key_path, f"{path!r}: write the path absolute or relative to the file, not from ~")
    return posixpath.normpath(posixpath.join(base_dir, path))


def _env_files(value: object, where: Where, path: str, base_dir: str) -> object:
    files = value
    if isinstance(value, str):
        files = YList(where)
        files.add(value, where)
    if not isinstance(files, YList):
        return value  # the mapper says what is wrong with it
    for index, item in enumerate(files):
        if isinstance(item, str):
            files[index] = resolve(base_dir, item, files.at(index), join(path, index))
        elif isinstance(item, YMap) and isinstance(item.get("path"), str):
            item["path"] = resolve(base_dir, str(item["path"]), item.at("path"), join(join(path, index), "path"))
    return files


def is_host_path(source: str) -> bool:
    """A short volume's source is a host path (a bind) when it looks like one, as in Compose."""
    return source.startswith(("/", ".", "~"))


def _resolve_volume(volume: object, where: Where, path: str, base_dir: str) -> object:
    if isinstance(volume, str):
        source, sep, rest = volume.partition(":")
        if sep and is_host_path(source):
            return f"{resolve(base_dir, source, where, path)}:{rest}"
        return volume
    if isinstance(volume, YMap) and volume.get("type") == "bind" and isinstance(volume.get("source"), str):
        volume["source"] = resolve(base_dir, str(volume["source"]), volume.at("source"), join(path, "source"))
    return volume


# -- merging -----------------------------------------------------------------------------------
_REPLACED: tuple[_Path, ...] = (
    ("services", "*", "command"),
    ("services", "*", "entrypoint"),
    ("services", "*", "healthcheck", "test"),
)


def _target_key(default_dir: str) -> Callable[[object], object]:
    """A mount's, secret's or config's unique key: its target. A secret or config without one
    is at `default_dir` + its source; a short volume is SOURCE:TARGET[:MODE]."""

    def key(item: object) -> object:
        if isinstance(item, str):
            if default_dir:
                return default_dir + item
            parts = item.split(":")
            return parts[1] if len(parts) > 1 else item
        if not isinstance(item, YMap):
            return repr(item)
        target = item.get("target")
        if not default_dir or (isinstance(target, str) and target.startswith("/")):
            return target
        return default_dir + str(target or item.get("source"))

    return key


def _port_key(item: object) -> object:
    """A port's unique key: host IP, published port, target and protocol."""
    if isinstance(item, YMap):
        fields = ("host_ip", "published", "target")
        return (*(str(item.get(f, "")) for f in fields), str(item.get("protocol", "tcp")))
    ports, _, protocol = str(item).partition("/")
    parts = ports.rsplit(":", 2)
    return (*([""] * (3 - len(parts))), *parts, protocol or "tcp")


_UNIQUE: tuple[tuple[_Path, Callable[[object], object]], ...] = (
    (("services", "*", "ports"), _port_key),
    (("services", "*", "volumes"), _target_key("")),
    (("services", "*", "secrets"), _target_key(_DEFAULT_SECRET_DIR)),
    (("services", "*", "configs"), _target_key("/")),
)


def merge(base: YMap, override: YMap, path: _Path = ()) -> YMap:
    """`override` merged onto `base` (neither is changed)."""
    merged = YMap(base.where)
    for key, value in base.items():
        merged.put(key, value, base.at(key))
    for key, value in override.items():
        child = (*path, key)
        old = merged.get(key)
        if isinstance(old, YMap) and isinstance(value, YMap):
            merged.put(key, merge(old, value, child), override.at(key))
        elif isinstance(old, YList) and isinstance(value, YList) and not any(_matches(p, child) for p in _REPLACED):
            unique = next((k for p, k in _UNIQUE if _matches(p, child)), None)
            merged.put(key, _merge_list(old, value, unique), override.at(key))
        else:
            merged.put(key, value, override.at(key))
    return merged


def _merge_list(base: YList, override: YList, unique: Callable[[object], object] | None) -> YList:
    merged = YList(base.where)
    items = list(zip(base, base.item_where, strict=True))
    for item, where in zip(override, override.item_where, strict=True):
        if unique is not None:
            key = unique(item)
            items = [(old, w) for old, w in items if unique(old) != key]
        items.append((item, where))
    for item, where in items:
        merged.add(item, where)
    return merged
