"""`service create/update` flags for the container options (#13, ADR 42) -> the spec's
ContainerOptions message. Names and syntax are Docker's; values are checked with the manager's
own checks (warren.container), so a bad one is a one-line usage error before anything is sent."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from typing import Any

from warren.cli.envfile import load_env_file
from warren.cli.flags import value_type
from warren.text import shown


def _container(name: str) -> Callable[[str], Any]:
    """warren.container's `name`, imported when a flag uses it: warren.container loads warren.model
    and msgspec, which every command (`service ps` too) would otherwise pay for at start-up."""

    def parse(text: str) -> Any:
        from warren import container

        return getattr(container, name)(text)

    parse.__name__ = name
    return parse


_DEVICE = value_type(_container("parse_device"))
_ULIMIT = value_type(_container("parse_ulimit"))
_SYSCTL = value_type(_container("parse_sysctl"))
_CAPABILITY = value_type(_container("capability"))
_ENV_FILE = value_type(load_env_file)


def _checked(check: Any) -> Any:
    def convert(text: str) -> str:
        check(text)
        return text

    return value_type(convert)


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"expected true or false (got {shown(text)})")


def _label(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    if not key:
        raise ValueError(f"invalid container label {shown(text)}: expected KEY[=VALUE]")
    return key, value


def _entrypoint(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"invalid --entrypoint {shown(text)}: {exc}") from None


def _user(text: str) -> str:
    from warren import container

    container.check_user("--user", text)
    return text


def _workdir(text: str) -> str:
    if text and not text.startswith("/"):  # "" on update: the image's again
        raise ValueError(f"--workdir must be an absolute path (got {shown(text)})")
    return text


def _hostname(text: str) -> str:
    from warren import container

    container.check_hostname_template(text)
    return text


def add_container_flags(p: argparse.ArgumentParser, update: bool) -> None:
    """The options' flags; on update, lists take -add/-rm flags as Docker's do."""
    g = p.add_argument_group("container options")
    g.add_argument(
        "--entrypoint",
        type=value_type(_entrypoint),
        metavar="CMD",
        help="replace the image's ENTRYPOINT (words split as a shell does; '' = the image's); "
        "words after `--` replace its CMD",
    )
    g.add_argument("--user", "-u", type=value_type(_user), metavar="USER[:GROUP]", help="user the task runs as")
    g.add_argument("--workdir", "-w", type=value_type(_workdir), metavar="DIR", help="working directory")
    g.add_argument(
        "--hostname",
        type=value_type(_hostname),
        metavar="TEMPLATE",
        help="container hostname, e.g. {{.Service.Name}}-{{.Task.Slot}} (also in $HOSTNAME)",
    )
    for flag, what in (
        ("--read-only", "mount the root filesystem read-only"),
        ("--init", "run an init (tini) as PID 1 that forwards signals and reaps zombies"),
        ("--privileged", "every capability, every host device, /proc and /sys unmasked"),
    ):
        g.add_argument(flag, type=value_type(_bool), nargs="?", const=True, metavar="BOOL", help=what)
    g.add_argument(
        "--cap-add", type=_CAPABILITY, action="append", metavar="CAP", help="add a capability (NET_ADMIN, ALL)"
    )
    g.add_argument(
        "--cap-drop", type=_CAPABILITY, action="append", metavar="CAP", help="drop a capability (NET_RAW, ALL)"
    )
    add = "-add" if update else ""
    device = "HOST[:CONTAINER[:rwm]]"
    g.add_argument(f"--device{add}", type=_DEVICE, action="append", metavar=device, help="a host device")
    g.add_argument(f"--sysctl{add}", type=_SYSCTL, action="append", metavar="NAME=VALUE", help="a namespaced sysctl")
    g.add_argument(f"--ulimit{add}", type=_ULIMIT, action="append", metavar="NAME=SOFT[:HARD]", help="a ulimit")
    g.add_argument(
        f"--container-label{add}", type=value_type(_label), action="append", metavar="K=V", help="container label"
    )
    g.add_argument(f"--dns{add}", action="append", metavar="IP", help="nameserver (replaces the node's)")
    g.add_argument(f"--dns-search{add}", action="append", metavar="DOMAIN", help="DNS search domain")
    g.add_argument(f"--dns-option{add}", action="append", metavar="OPT", help="resolver option, e.g. ndots:2")
    g.add_argument("--group-add", action="append", metavar="GROUP", help="supplementary group (a name or gid)")
    if update:
        g.add_argument("--device-rm", action="append", metavar="HOSTPATH", help="remove a device")
        g.add_argument("--sysctl-rm", action="append", metavar="NAME", help="remove a sysctl")
        g.add_argument("--ulimit-rm", action="append", metavar="NAME", help="remove a ulimit")
        g.add_argument("--container-label-rm", action="append", metavar="K", help="remove a container label")
        g.add_argument("--dns-rm", action="append", metavar="IP", help="remove a nameserver")
        g.add_argument("--dns-search-rm", action="append", metavar="DOMAIN", help="remove a search domain")
        g.add_argument("--dns-option-rm", action="append", metavar="OPT", help="remove a resolver option")
        g.add_argument("--group-rm", action="append", metavar="GROUP", help="remove a supplementary group")
    else:
        g.add_argument(
            "--env-file", type=_ENV_FILE, action="append", metavar="FILE", help="KEY=VALUE lines (--env wins)"
        )
        g.add_argument("--no-healthcheck", action="store_true", help="do not run the image's own HEALTHCHECK")


def _replace(field: Any, items: list[Any]) -> None:
    del field[:]
    field.extend(items)


def _merge(field: Any, added: list[str] | None, removed: list[str] | None) -> None:
    """A repeated string field with `removed` taken out and `added` appended (no duplicates)."""
    gone = set(removed or [])
    kept = [x for x in field if x not in gone]
    kept += [x for x in added or [] if x not in kept]
    _replace(field, kept)


def apply_container_flags(spec: Any, args: argparse.Namespace, update: bool) -> None:
    """Set `spec.container` (and the entrypoint, `spec.command`) as the flags say."""
    from warren.api.v1 import types_pb2 as pb

    c = spec.container
    if args.entrypoint is not None:
        _replace(spec.command, args.entrypoint)
    for field in ("user", "workdir", "hostname", "read_only", "init", "privileged"):
        value = getattr(args, field)
        if value is not None:
            setattr(c, field, value)
    # Docker's update rule: adding a capability takes it off the dropped ones, and the reverse.
    added, dropped = args.cap_add or [], args.cap_drop or []
    _merge(c.cap_add, added, dropped)
    _merge(c.cap_drop, dropped, added)
    _merge(c.dns_options, _get(args, "dns_option", update), _get(args, "dns_option_rm", update, rm=True))
    _merge(c.dns, _get(args, "dns", update), _get(args, "dns_rm", update, rm=True))
    _merge(c.dns_search, _get(args, "dns_search", update), _get(args, "dns_search_rm", update, rm=True))
    _merge(c.group_add, args.group_add, getattr(args, "group_rm", None))
    for key in getattr(args, "container_label_rm", None) or []:
        c.labels.pop(key, None)
    c.labels.update(dict(_get(args, "container_label", update) or []))
    for name in getattr(args, "sysctl_rm", None) or []:
        c.sysctls.pop(name, None)
    c.sysctls.update(dict(_get(args, "sysctl", update) or []))
    new_ulimits = _get(args, "ulimit", update) or []
    gone = set(getattr(args, "ulimit_rm", None) or []) | {u.name for u in new_ulimits}
    ulimits = [pb.Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in c.ulimits if u.name not in gone]
    _replace(c.ulimits, ulimits + [pb.Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in new_ulimits])
    new_devices = _get(args, "device", update) or []
    gone = set(getattr(args, "device_rm", None) or []) | {d.path_on_host for d in new_devices}
    devices = [
        pb.DeviceMapping(path_on_host=d.path_on_host, path_in_container=d.path_in_container, permissions=d.permissions)
        for d in c.devices
        if d.path_on_host not in gone
    ]
    devices += [
        pb.DeviceMapping(path_on_host=d.path_on_host, path_in_container=d.path_in_container, permissions=d.permissions)
        for d in new_devices
    ]
    _replace(c.devices, devices)
    if not update:
        c.no_healthcheck = args.no_healthcheck
    if c == pb.ContainerOptions():
        spec.ClearField("container")


def _get(args: argparse.Namespace, name: str, update: bool, rm: bool = False) -> Any:
    """A list flag's values: `--NAME-add` on update, `--NAME` on create; `rm` ones are update's."""
    if rm:
        return getattr(args, name, None) if update else None
    return getattr(args, f"{name}_add" if update else name, None)


def env_from_files(args: argparse.Namespace) -> dict[str, str]:
    """The variables of every --env-file, in order (a later file wins)."""
    env: dict[str, str] = {}
    for pairs in getattr(args, "env_file", None) or []:
        env.update(pairs)
    return env


def container_summary(options: Any) -> list[str]:
    """`service inspect`'s lines for the options that are set (a ContainerOptions message)."""
    lines = [f"{flag} {getattr(options, field)}" for flag, field in _SCALARS if getattr(options, field)]
    lines += [f"--{flag}" for flag, field in _SWITCHES if getattr(options, field)]
    lines += [f"--{flag} {' '.join(getattr(options, field))}" for flag, field in _LISTS if getattr(options, field)]
    lines += [
        f"--device {d.path_on_host}:{d.path_in_container or d.path_on_host}:{d.permissions}" for d in options.devices
    ]
    lines += [f"--sysctl {k}={v}" for k, v in sorted(options.sysctls.items())]
    lines += [f"--ulimit {u.name}={u.soft}:{u.hard}" for u in options.ulimits]
    return lines + [f"--container-label {k}={v}" for k, v in sorted(options.labels.items())]


_SCALARS = (("--user", "user"), ("--workdir", "workdir"), ("--hostname", "hostname"))
_SWITCHES = (
    ("read-only", "read_only"),
    ("init", "init"),
    ("privileged", "privileged"),
    ("no-healthcheck", "no_healthcheck"),
)
_LISTS = (
    ("cap-add", "cap_add"),
    ("cap-drop", "cap_drop"),
    ("dns", "dns"),
    ("dns-search", "dns_search"),
    ("dns-option", "dns_options"),
    ("group-add", "group_add"),
)
