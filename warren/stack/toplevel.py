"""A stack's top-level networks, volumes, secrets and configs (#14, ADR 48). Pure.

What the stack creates is named `STACK_KEY` (or its `name:`) and carries the stack's label;
what is `external` keeps its name and must exist in the cluster.
"""

from __future__ import annotations

import ipaddress
from functools import partial

from warren import validate
from warren.stack import keys
from warren.stack.section import Context, Section, checked
from warren.stack.spec import StackNetwork, StackObject, StackVolume
from warren.stack.tree import StackFileError, YMap, join

DEFAULT_NETWORK = "default"


def _external(section: Section, name: str) -> tuple[bool, str]:
    """`external: true` (or the old `external: {name: N}`) and the object's cluster name."""
    value = section.node.get("external")
    declared = section.string("name")
    if isinstance(value, YMap):
        old = Section(value, join(section.path, "external"), section.findings)
        old.check_keys(frozenset({"name"}), frozenset({"name"}))
        return True, old.string("name") or declared or name
    external = section.boolean("external")
    return external, declared or name


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text)
    except ValueError:
        return False
    return True


def networks(stack: Context) -> dict[str, StackNetwork]:
    top = stack.top.section("networks")
    names = list(top.node) if top is not None else []
    if DEFAULT_NETWORK not in names:
        names.append(DEFAULT_NETWORK)
    out: dict[str, StackNetwork] = {}
    for key in names:
        section = top.section(key) if top is not None and key in top.node else None
        if section is None:
            out[key] = StackNetwork(name=stack.scoped(key), labels=dict(stack.label))
            continue
        section.check_keys(keys.NETWORK_SUPPORTED, keys.NETWORK_KNOWN)
        external, name = _external(section, key)
        driver = section.string("driver", "overlay")
        if driver not in ("overlay", "bridge"):
            section.unsupported("driver", f"the network driver {driver!r}")
        subnet = ""
        ipam = section.section("ipam")
        if ipam is not None:
            ipam.check_keys(keys.IPAM_SUPPORTED, keys.IPAM_KNOWN)
            for item, where, path in ipam.items("config"):
                if not isinstance(item, YMap):
                    raise StackFileError(where, path, "expected a mapping (subnet: CIDR)")
                config = Section(item, path, stack.findings)
                config.check_keys(keys.IPAM_CONFIG_SUPPORTED, keys.IPAM_CONFIG_KNOWN)
                if subnet and config.has("subnet"):
                    config.unsupported("subnet", "a second subnet")
                subnet = subnet or config.string("subnet")
                if subnet and not _is_network(subnet):
                    raise config.error("subnet", f"invalid subnet {subnet!r}: a CIDR such as 10.10.0.0/24")
        if external:
            out[key] = StackNetwork(name=name, external=True)
            continue
        checked(section, "name" if section.has("name") else None, partial(validate.check_name, "network", name))
        labels = section.labels("labels")
        checked(section, "labels", partial(validate.check_labels, "network label", labels))
        out[key] = StackNetwork(
            name=name if section.has("name") else stack.scoped(key),
            subnet=subnet,
            internal=section.boolean("internal"),
            attachable=section.boolean("attachable"),
            labels={**labels, **stack.label},
        )
    return out


def volumes(stack: Context) -> dict[str, StackVolume]:
    top = stack.top.section("volumes")
    out: dict[str, StackVolume] = {}
    for key in top.node if top is not None else ():
        assert top is not None
        section = top.section(key)
        if section is None:
            out[key] = StackVolume(name=stack.scoped(key), labels=dict(stack.label))
            continue
        section.check_keys(keys.VOLUME_SUPPORTED, keys.VOLUME_KNOWN)
        external, name = _external(section, key)
        if external:
            out[key] = StackVolume(name=name, external=True)
            continue
        name = name if section.has("name") else stack.scoped(key)
        driver = section.string("driver", "local")
        options = {k: v or "" for k, v in section.mapping("driver_opts").items()}
        labels = section.labels("labels")
        checked(section, "name" if section.has("name") else None, partial(_check_volume_name, name))
        checked(section, "driver", partial(_check_volume_options, driver, options))
        out[key] = StackVolume(name=name, driver=driver, options=options, labels={**labels, **stack.label})
    return out


def _check_volume_name(name: str) -> None:
    from warren.mounts import check_volume_name

    check_volume_name(name)


def _check_volume_options(driver: str, options: dict[str, str]) -> None:
    from warren.mounts import check_volume_options

    check_volume_options(driver, options)


def objects(stack: Context, kind: str) -> dict[str, StackObject]:
    """Top-level secrets or configs: read from `file:`, `environment:` or `content:`, or external."""
    singular = kind[:-1]
    top = stack.top.section(kind)
    out: dict[str, StackObject] = {}
    for key in top.node if top is not None else ():
        assert top is not None
        section = top.section(key)
        if section is None:
            raise top.error(key, f"a {singular} needs file:, environment:, content: or external: true")
        if kind == "secrets":
            section.check_keys(keys.SECRET_SUPPORTED, keys.SECRET_KNOWN)
        else:
            section.check_keys(keys.CONFIG_SUPPORTED, keys.CONFIG_KNOWN)
        external, name = _external(section, key)
        if external:
            out[key] = StackObject(name=name)
            continue
        name = name if section.has("name") else stack.scoped(key)
        sources = [k for k in ("file", "environment", "content") if section.has(k)]
        if len(sources) != 1:
            raise section.error(None, f"a {singular} needs exactly one of file:, environment:, content: or external:")
        source = sources[0]
        if source == "file":
            data = stack.read_file(section, "file", section.string("file"), f"{singular} file")
        elif source == "environment":
            variable = section.string("environment")
            if variable not in stack.environ:
                raise section.error("environment", f"the environment variable {variable} is not set")
            data = stack.environ[variable].encode()
        else:
            data = section.string("content").encode()
        labels = section.labels("labels")
        checked(section, "name" if section.has("name") else None, partial(validate.check_object_name, singular, name))
        checked(section, source, partial(validate.check_value_size, singular, len(data)))
        checked(section, "labels", partial(validate.check_labels, f"{singular} label", labels))
        out[key] = StackObject(name=name, data=data, labels={**labels, **stack.label})
    return out
