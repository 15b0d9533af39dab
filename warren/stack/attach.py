"""What a service attaches in Compose (#14, ADR 48): ports, mounts, secrets and configs,
networks and dependencies. Pure."""

from __future__ import annotations

import re
from functools import partial

from warren import validate
from warren.model import FileRef, Mount, MountType, NetworkAttachment, PortConfig
from warren.mounts import MountError, check_mount
from warren.stack import keys
from warren.stack.merge import is_host_path
from warren.stack.section import Context, Declared, Section, checked, kind_of, shown_value
from warren.stack.spec import Dependency, DependencyCondition
from warren.stack.toplevel import DEFAULT_NETWORK
from warren.stack.tree import StackFileError, Where, YMap, join
from warren.text import parse_size

# -- ports -------------------------------------------------------------------------------------
_PORT_RE = re.compile(r"(?:(?:(?P<ip>\[[0-9a-fA-F:]+\]|[0-9.]+):)?(?P<published>[0-9]+(?:-[0-9]+)?)?:)?"
                      r"(?P<target>[0-9]+(?:-[0-9]+)?)(?:/(?P<protocol>[a-zA-Z]+))?")  # fmt: skip


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def _unpublished(s: Section, where: Where, path: str, target: int) -> None:
    """Docker publishes a port given without its published number on one it picks; Warren
    publishes only the ports it is told."""
    here = YMap(where)
    here.put("published", None, where)
    message = f"port {target} without a published port (Docker would pick one)"
    Section(here, path, s.findings).unsupported("published", message)


def ports(s: Section) -> tuple[PortConfig, ...]:
    ports: list[PortConfig] = []
    for item, where, path in s.items("ports"):
        if isinstance(item, YMap):
            p = Section(item, path, s.findings)
            p.check_keys(keys.PORT_SUPPORTED, keys.PORT_KNOWN)
            target = p.integer("target", 0, 1, 65535)
            if not p.has("target"):
                raise p.error(None, "a port needs a target (the container's port)")
            published_text = p.string("published")
            if published_text and not re.fullmatch(r"[0-9]+(?:-[0-9]+)?", published_text):
                raise p.error("published", f"invalid published port {shown_value(published_text)}")
            low, high = _range(published_text) if published_text else (0, 0)
            if low != high:
                raise p.error("published", "a published range is for the short syntax only; list each port")
            protocol = p.choice("protocol", "tcp", ("tcp", "udp"))
            mode = p.choice("mode", "ingress", ("ingress", "host"))
            if not low:
                _unpublished(s, where, path, target)
            ports.append(PortConfig(target=target, published=low, protocol=protocol, mode=mode))
            continue
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise StackFileError(where, path, f'expected a port such as "8080:80/udp" (got {kind_of(item)})')
        match = _PORT_RE.fullmatch(str(item))
        if not match:
            raise StackFileError(where, path, f"invalid port {shown_value(item)}: use [[IP:]PUBLISHED:]TARGET[/udp]")
        if match.group("ip"):
            here = YMap(where)
            here.put("host_ip", match.group("ip"), where)
            Section(here, path, s.findings).unsupported("host_ip", f"the host IP {match.group('ip')}")
        protocol = (match.group("protocol") or "tcp").lower()
        if protocol not in ("tcp", "udp"):
            raise StackFileError(where, path, f"invalid protocol {shown_value(protocol)}: tcp or udp")
        t_low, t_high = _range(match.group("target"))
        p_low, p_high = _range(match.group("published")) if match.group("published") else (0, 0)
        if p_low and p_high - p_low != t_high - t_low:
            raise StackFileError(where, path, f"the ranges of {shown_value(item)} are not the same length")
        if not 1 <= t_low <= t_high <= 65535 or not p_low <= p_high <= 65535:
            raise StackFileError(where, path, f"port {shown_value(item)} is out of range (1-65535)")
        if t_high - t_low >= validate.MAX_ITEMS:
            raise StackFileError(where, path, f"the range of {shown_value(item)} is over {validate.MAX_ITEMS} ports")
        if not p_low:
            _unpublished(s, where, path, t_low)
        for offset in range(t_high - t_low + 1):
            published = p_low + offset if p_low else 0
            ports.append(PortConfig(target=t_low + offset, published=published, protocol=protocol))
    return tuple(ports)


# -- mounts, secrets, configs ------------------------------------------------------------------
def mounts(s: Section, declared: Declared) -> tuple[Mount, ...]:
    mounts: list[Mount] = []
    for item, where, path in s.items("volumes"):
        mount = _mount(s, item, where, path, declared)
        if mount is None:
            continue
        try:
            check_mount(mount)
        except MountError as exc:
            raise StackFileError(where, path, str(exc)) from None
        mounts.append(mount)
    for text in s.strings("tmpfs"):
        target, _, options = text.partition(":")
        size = mode = 0
        for option in filter(None, options.split(",")):
            k, _, v = option.partition("=")
            if k == "size":
                try:
                    size = parse_size(v)
                except ValueError as exc:
                    raise s.error("tmpfs", str(exc)) from None
            elif k == "mode" and re.fullmatch(r"[0-7]{1,4}", v):
                mode = int(v, 8)
            else:
                raise s.error("tmpfs", f"tmpfs option {shown_value(option)}: size=SIZE or mode=OCTAL")
        mount = Mount(type=MountType.TMPFS, target=target, tmpfs_size=size, tmpfs_mode=mode)
        checked(s, "tmpfs", partial(check_mount, mount))
        mounts.append(mount)
    return tuple(mounts)


def _volume_source(declared: Declared, source: str, where: Where, path: str) -> str:
    if source not in declared.volumes:
        raise StackFileError(where, path, f"volume {source} is not declared in the top-level volumes")
    return declared.volumes[source]


def _mount(s: Section, item: object, where: Where, path: str, declared: Declared) -> Mount | None:
    if isinstance(item, str):
        parts = item.split(":")
        if len(parts) == 1:
            here = YMap(where)
            here.put("volumes", item, where)
            Section(here, path.rsplit("[", 1)[0].rsplit(".", 1)[0], s.findings).unsupported(
                "volumes", f"the anonymous volume {item} (name it in the top-level volumes)"
            )
            return None
        if len(parts) > 3:
            raise StackFileError(where, path, f"invalid volume {shown_value(item)}: use SOURCE:TARGET[:ro]")
        source, target = parts[0], parts[1]
        modes = set(parts[2].split(",")) if len(parts) == 3 else set()
        unknown = modes - {"ro", "rw", "z", "Z", "cached", "delegated", "consistent", "nocopy"}
        if unknown:
            raise StackFileError(where, path, f"invalid volume mode {shown_value(','.join(sorted(unknown)))}: ro or rw")
        readonly = "ro" in modes
        if is_host_path(source):
            return Mount(type=MountType.BIND, target=target, source=source, readonly=readonly)
        return Mount(
            type=MountType.VOLUME,
            target=target,
            source=_volume_source(declared, source, where, path),
            readonly=readonly,
        )
    if not isinstance(item, YMap):
        raise StackFileError(where, path, f"expected SOURCE:TARGET or a mapping (got {kind_of(item)})")
    m = Section(item, path, s.findings)
    m.check_keys(keys.VOLUME_MOUNT_SUPPORTED, keys.VOLUME_MOUNT_KNOWN)
    kind = m.choice("type", "volume", ("volume", "bind", "tmpfs", "cluster", "npipe", "image"))
    if kind not in ("volume", "bind", "tmpfs"):
        m.unsupported("type", f"the mount type {kind}")
        return None
    target, source, readonly = m.string("target"), m.string("source"), m.boolean("read_only")
    if not target:
        raise m.error(None, "a mount needs a target (a path in the container)")
    if kind == "tmpfs":
        tmpfs = m.section("tmpfs")
        size, mode = 0, 0
        if tmpfs is not None:
            tmpfs.check_keys(keys.TMPFS_KNOWN, keys.TMPFS_KNOWN)
            size = int(tmpfs.parsed("size", 0, parse_size))
            mode = _octal(tmpfs, "mode", 0)
        return Mount(type=MountType.TMPFS, target=target, readonly=readonly, tmpfs_size=size, tmpfs_mode=mode)
    if kind == "volume":
        if not source:
            m.unsupported("type", f"the anonymous volume at {target} (name it in the top-level volumes)")
            return None
        source = _volume_source(declared, source, m.where("source"), join(path, "source"))
        return Mount(type=MountType.VOLUME, target=target, source=source, readonly=readonly)
    return Mount(type=MountType.BIND, target=target, source=source, readonly=readonly)


def _octal(section: Section, key: str, default: int) -> int:
    """A file mode: a YAML number (0440 is octal there, as in Compose) or an octal string."""
    value = section.node.get(key)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{1,4}", value):
        return int(value, 8)
    raise section.error(key, f"expected an octal mode such as 0440 (got {shown_value(value)})")


def file_refs(s: Section, key: str, declared: dict[str, str], default_dir: str) -> tuple[FileRef, ...]:
    kind = key[:-1]
    refs: list[FileRef] = []
    for item, where, path in s.items(key):
        if isinstance(item, str):
            source, target, uid, gid, mode = item, "", 0, 0, 0o444
        elif isinstance(item, YMap):
            f = Section(item, path, s.findings)
            f.check_keys(keys.FILE_REF_KNOWN, keys.FILE_REF_KNOWN)
            source, target = f.string("source"), f.string("target")
            uid, gid = f.integer("uid", 0, 0, 2**32 - 2), f.integer("gid", 0, 0, 2**32 - 2)
            mode = _octal(f, "mode", 0o444)
        else:
            raise StackFileError(where, path, f"expected a {kind} name or a mapping (got {kind_of(item)})")
        if source not in declared:
            raise StackFileError(where, path, f"{kind} {shown_value(source)} is not declared in the top-level {key}")
        if not target.startswith("/"):
            target = default_dir + (target or source)
        ref = FileRef(source=declared[source], target=target, uid=uid, gid=gid, mode=mode)
        try:
            validate.check_file_ref(kind, ref)
        except validate.ValidationError as exc:
            raise StackFileError(where, path, str(exc)) from None
        refs.append(ref)
    return tuple(refs)


def attachments(s: Section, short: str, declared: Declared) -> tuple[NetworkAttachment, ...]:
    networks = s.section("networks")
    names = list(networks.node) if networks is not None else [DEFAULT_NETWORK]
    out = []
    for key in names:
        aliases: tuple[str, ...] = ()
        if networks is not None:
            if key not in declared.networks:
                raise networks.error(key, f"network {key} is not declared in the top-level networks")
            entry = networks.section(key)
            if entry is not None:
                entry.check_keys(keys.SERVICE_NETWORK_SUPPORTED, keys.SERVICE_NETWORK_KNOWN)
                aliases = entry.strings("aliases")
                for alias, where, path in entry.items("aliases"):
                    try:
                        validate.check_name("network alias", str(alias))
                    except validate.ValidationError as exc:
                        raise StackFileError(where, path, str(exc)) from None
        out.append(NetworkAttachment(network=declared.networks[key].name, aliases=(short, *aliases)))
    return tuple(out)


def depends_on(stack: Context, s: Section, declared: Declared) -> tuple[Dependency, ...]:
    depends = s.section("depends_on")
    if depends is None:
        return ()
    out = []
    for key in depends.node:
        if key not in declared.services:
            raise depends.error(key, f"service {key} is not in the stack")
        entry = depends.section(key)
        condition, required = DependencyCondition.STARTED, True
        if entry is not None:
            entry.check_keys(keys.DEPENDS_ON_SUPPORTED, keys.DEPENDS_ON_KNOWN)
            values = tuple(c.value for c in DependencyCondition)
            condition = DependencyCondition(entry.choice("condition", DependencyCondition.STARTED.value, values))
            required = entry.boolean("required", True)
        out.append(Dependency(service=stack.scoped(key), condition=condition, required=required))
    return tuple(out)
