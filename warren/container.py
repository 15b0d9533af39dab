"""Container options (#13, ADR 42): the names the kernel and Docker know, the checks of what an
operator gives, the parsing of Docker's flag syntax, and the hostname template. Pure.

The checks here are those that need no node: a capability, sysctl or ulimit name that does not
exist is refused before anything is written. Whether a device exists can only be seen on the
node that runs the task: its runtime fails the task with its own message (`service ps`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence

from warren.model import ContainerOptions, DeviceMapping, HealthCheck, Ulimit
from warren.text import ascii_int, has_control, shown


class OptionError(ValueError):
    """An option's value is not one the runtimes can apply; str() says which and why."""


# Every capability of Linux 6.x, in bit order (include/uapi/linux/capability.h).
ALL_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
# Docker's default set: what a container gets without --cap-add/--cap-drop.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# Docker's rule (moby's oci.ValidateSysctl): only sysctls of the namespaces a container has of its
# own; the others would change the whole node. net.* is the network namespace's: runc refuses
# it for a task that shares the host's network (no overlay), with its own message.
NAMESPACED_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)
NAMESPACED_SYSCTL_PREFIXES = ("net.", "fs.mqueue.")
_SYSCTL_NAME_RE = re.compile(r"[a-z0-9_]+(?:[./][a-zA-Z0-9_-]+)+")

# Docker's names for `--ulimit`, and the RLIMIT_ constant each stands for.
ULIMITS = {
    "as": "RLIMIT_AS",
    "core": "RLIMIT_CORE",
    "cpu": "RLIMIT_CPU",
    "data": "RLIMIT_DATA",
    "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS",
    "memlock": "RLIMIT_MEMLOCK",
    "msgqueue": "RLIMIT_MSGQUEUE",
    "nice": "RLIMIT_NICE",
    "nofile": "RLIMIT_NOFILE",
    "nproc": "RLIMIT_NPROC",
    "rss": "RLIMIT_RSS",
    "rtprio": "RLIMIT_RTPRIO",
    "rttime": "RLIMIT_RTTIME",
    "sigpending": "RLIMIT_SIGPENDING",
    "stack": "RLIMIT_STACK",
}
MAX_RLIMIT = 2**63 - 1
MAX_ID = 2**32 - 2  # uid_t and gid_t are 32 bits; 2**32 - 1 means "no id"
MAX_PATH = 4096
MAX_DNS = 16  # nameservers, search domains or options (resolv.conf's readers use fewer)
MAX_LIST = 256  # capabilities, devices, sysctls, ulimits, groups
DEVICE_PERMISSIONS = "rwm"

# `{{.Service.Name}}`-style placeholders of Docker's templates, with the values a task has.
TEMPLATE_FIELDS = ("Service.ID", "Service.Name", "Task.ID", "Task.Name", "Task.Slot", "Node.ID", "Node.Hostname")
_PLACEHOLDER_RE = re.compile(r"\{\{\s*\.([A-Za-z.]+)\s*\}\}")
_HOSTNAME_TEXT_RE = re.compile(r"[A-Za-z0-9.-]*")
MAX_HOSTNAME = 63  # one DNS label; Linux allows 64 bytes

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")  # a user or group name (useradd's rule, loosely)
_DOMAIN_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9_-]{1,63})*\.?")
_DNS_OPTION_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}(?::[0-9]{1,5})?")


# -- capabilities -----------------------------------------------------------------------------
def capability(name: str) -> str:
    """`NET_ADMIN`, `cap_net_admin` or `CAP_NET_ADMIN` as CAP_NET_ADMIN; `ALL` stays ALL."""
    upper = name.strip().upper()
    if upper == "ALL":
        return "ALL"
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full not in ALL_CAPABILITIES:
        raise OptionError(f"unknown capability {shown(name)}: use a Linux capability such as NET_ADMIN, or ALL")
    return full


def capabilities(
    options: ContainerOptions,
    default: Sequence[str] = DEFAULT_CAPABILITIES,
    available: Sequence[str] = ALL_CAPABILITIES,
) -> list[str]:
    """The capability set of the task's process, by Docker's rules (moby's TweakCapabilities):
    privileged = all; `--cap-add ALL` = all but the dropped; `--cap-drop ALL` = only the added;
    otherwise the defaults less the dropped, plus the added. "All" is what the node has
    (`available`, its bounding set): a runtime cannot give more than it holds."""
    if options.privileged:
        return list(available)
    add = [capability(c) for c in options.cap_add]
    drop = [capability(c) for c in options.cap_drop]
    if "ALL" in add:
        return [c for c in available if c not in drop]
    chosen = add if "ALL" in drop else [c for c in default if c not in drop] + [c for c in add if c not in drop]
    return list(dict.fromkeys(chosen))  # no duplicates, order kept


# -- parsing Docker's flag syntax ---------------------------------------------------------------
def parse_device(text: str) -> DeviceMapping:
    """`HOST[:CONTAINER[:PERMISSIONS]]` (or `HOST:PERMISSIONS`), as `docker run --device`."""
    parts = text.split(":")
    if len(parts) > 3 or not parts[0]:
        raise OptionError(f"invalid device {shown(text)}: use HOSTPATH[:CONTAINERPATH[:PERMISSIONS]]")
    host, inside, perms = parts[0], "", DEVICE_PERMISSIONS
    if len(parts) == 3:
        inside, perms = parts[1], parts[2]
    elif len(parts) == 2:
        if _is_permissions(parts[1]):
            perms = parts[1]
        else:
            inside = parts[1]
    device = DeviceMapping(path_on_host=host, path_in_container=inside, permissions=perms)
    check_device(device)
    return device


def parse_ulimit(text: str) -> Ulimit:
    """`NAME=SOFT[:HARD]` (Docker's syntax; one number sets both)."""
    name, sep, values = text.partition("=")
    soft_text, _, hard_text = values.partition(":")
    soft, hard = ascii_int(soft_text), ascii_int(hard_text or soft_text)
    if not sep or soft is None or hard is None:
        raise OptionError(f"invalid ulimit {shown(text)}: use NAME=SOFT[:HARD], e.g. nofile=1024:2048")
    ulimit = Ulimit(name=name, soft=soft, hard=hard)
    check_ulimit(ulimit)
    return ulimit


def parse_sysctl(text: str) -> tuple[str, str]:
    """`NAME=VALUE`, checked."""
    name, sep, value = text.partition("=")
    if not sep:
        raise OptionError(f"invalid sysctl {shown(text)}: use NAME=VALUE, e.g. net.core.somaxconn=1024")
    check_sysctl(name, value)
    return name, value


# -- checks -------------------------------------------------------------------------------------
def _is_permissions(text: str) -> bool:
    return 0 < len(text) <= 3 and set(text) <= set(DEVICE_PERMISSIONS) and len(set(text)) == len(text)


def _check_path(what: str, path: str) -> None:
    if not path.startswith("/") or len(path) > MAX_PATH or has_control(path) or "/../" in f"{path}/":
        raise OptionError(f"{what} must be an absolute path without '..' (got {shown(path)})")


def check_device(device: DeviceMapping) -> None:
    _check_path("a device's host path", device.path_on_host)
    if device.path_in_container:
        _check_path("a device's container path", device.path_in_container)
    if not _is_permissions(device.permissions):
        raise OptionError(
            f"invalid device permissions {shown(device.permissions)} for {device.path_on_host}: "
            "a combination of r (read), w (write) and m (mknod)"
        )


def check_ulimit(ulimit: Ulimit) -> None:
    if ulimit.name not in ULIMITS:
        raise OptionError(f"unknown ulimit {shown(ulimit.name)}: one of {', '.join(sorted(ULIMITS))}")
    if not 0 <= ulimit.soft <= MAX_RLIMIT or not 0 <= ulimit.hard <= MAX_RLIMIT:
        raise OptionError(f"ulimit {ulimit.name}: values are between 0 and {MAX_RLIMIT}")
    if ulimit.soft > ulimit.hard:
        raise OptionError(f"ulimit {ulimit.name}: the soft limit {ulimit.soft} exceeds the hard limit {ulimit.hard}")


def check_sysctl(name: str, value: str) -> None:
    if not _SYSCTL_NAME_RE.fullmatch(name):
        raise OptionError(f"invalid sysctl name {shown(name)}: e.g. net.core.somaxconn")
    if name not in NAMESPACED_SYSCTLS and not name.startswith(NAMESPACED_SYSCTL_PREFIXES):
        raise OptionError(
            f"sysctl {shown(name)} is not allowed: it is not in a namespace of the container's own, so it "
            "would change the whole node (allowed: net.*, fs.mqueue.*, kernel.msg*, kernel.sem, kernel.shm*)"
        )
    if not value or len(value) > MAX_PATH or has_control(value):
        raise OptionError(f"sysctl {name} needs a value of at most {MAX_PATH} characters, one line")


def check_user(what: str, user: str) -> None:
    """`name`, `uid`, `name:group` or `uid:gid`."""
    if not user:
        return
    name, colon, group = user.partition(":")
    for part in (name, group) if colon else (name,):
        number = ascii_int(part)
        if number is not None and number > MAX_ID:
            raise OptionError(f"{what} {shown(user)}: ids are at most {MAX_ID}")
        if number is None and not _NAME_RE.fullmatch(part):
            raise OptionError(f"invalid {what} {shown(user)}: use NAME, UID, NAME:GROUP or UID:GID")


def check_hostname_template(template: str) -> None:
    """Only Docker's placeholders a task has, and hostname characters around them."""
    if len(template) > 256:
        raise OptionError("the hostname template is longer than 256 characters")
    for field in _PLACEHOLDER_RE.findall(template):
        if field not in TEMPLATE_FIELDS:
            known = ", ".join(f"{{{{.{f}}}}}" for f in TEMPLATE_FIELDS)
            raise OptionError(f"unknown placeholder {{{{.{field}}}}} in the hostname: use {known}")
    literal = _PLACEHOLDER_RE.sub("", template)
    if not _HOSTNAME_TEXT_RE.fullmatch(literal):
        raise OptionError(f"invalid hostname {shown(template)}: letters, digits, '-' and '.' around placeholders")


def expand_hostname(template: str, values: Mapping[str, str]) -> str:
    """The template with its placeholders filled in, as a hostname of at most 63 characters."""
    expanded = _PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), ""), template)
    return expanded[:MAX_HOSTNAME].strip(".-") or expanded[:MAX_HOSTNAME]


def _check_count(what: str, items: Iterable[object], limit: int = MAX_LIST) -> None:
    count = len(list(items))
    if count > limit:
        raise OptionError(f"too many {what} ({count}, at most {limit})")


def check_options(options: ContainerOptions) -> None:
    """Everything about the options that can be told without a node. Raises OptionError."""
    check_user("user", options.user)
    if options.workdir:
        _check_path("the working directory (--workdir)", options.workdir)
    if options.hostname:
        check_hostname_template(options.hostname)
    for what, caps in (("--cap-add", options.cap_add), ("--cap-drop", options.cap_drop)):
        _check_count(f"{what} capabilities", caps)
        for name in caps:
            capability(name)
    _check_count("devices", options.devices)
    for device in options.devices:
        check_device(device)
    _check_count("sysctls", options.sysctls)
    for name, value in options.sysctls.items():
        check_sysctl(name, value)
    _check_count("ulimits", options.ulimits)
    names = [u.name for u in options.ulimits]
    for ulimit in options.ulimits:
        check_ulimit(ulimit)
    if len(set(names)) != len(names):
        raise OptionError("a ulimit is given twice")
    _check_count("nameservers (--dns)", options.dns, MAX_DNS)
    for address in options.dns:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise OptionError(f"invalid --dns {shown(address)}: a nameserver's IP address") from None
    _check_count("search domains (--dns-search)", options.dns_search, MAX_DNS)
    for domain in options.dns_search:
        if domain != "." and not _DOMAIN_RE.fullmatch(domain):
            raise OptionError(f"invalid --dns-search {shown(domain)}: a domain name")
    _check_count("resolver options (--dns-option)", options.dns_options, MAX_DNS)
    for option in options.dns_options:
        if not _DNS_OPTION_RE.fullmatch(option):
            raise OptionError(f"invalid --dns-option {shown(option)}: e.g. ndots:2, timeout:1 or rotate")
    _check_count("groups (--group-add)", options.group_add)
    for group in options.group_add:
        number = ascii_int(group)
        if (number is None and not _NAME_RE.fullmatch(group)) or (number is not None and number > MAX_ID):
            raise OptionError(f"invalid --group-add {shown(group)}: a group name or a gid up to {MAX_ID}")


# What the options cost beyond their strings: msgpack spells out the struct's 17 field names
# (about 170 bytes), plus the flags and the message header.
OPTIONS_OVERHEAD = 256


def option_texts(options: ContainerOptions) -> list[str]:
    """Every string the options hold, and the ulimits' numbers as text (their digits outnumber
    their encoded bytes), for the spec's size bound (warren.validate.spec_size)."""
    texts = [options.user, options.workdir, options.hostname, *options.cap_add, *options.cap_drop]
    texts += [text for d in options.devices for text in (d.path_on_host, d.path_in_container, d.permissions)]
    texts += [*options.sysctls, *options.sysctls.values()]
    texts += [text for u in options.ulimits for text in (u.name, str(u.soft), str(u.hard))]
    texts += [*options.labels, *options.labels.values(), *options.dns, *options.dns_search, *options.dns_options]
    return texts + list(options.group_add)


def image_health_check(docker_json: str) -> HealthCheck | None:
    """The image's own health check from its config's Healthcheck (Docker's JSON: Test, and
    durations in nanoseconds), or None if it has none, disables it (NONE) or cannot be read."""
    try:
        config = json.loads(docker_json) if docker_json else None
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    test = config.get("Test") or []
    if not isinstance(test, list) or not test or not all(isinstance(word, str) for word in test):
        return None
    if test[0] == "CMD-SHELL" and len(test) == 2:
        command: tuple[str, ...] = ("/bin/sh", "-c", test[1])
    elif test[0] == "CMD" and len(test) > 1:
        command = tuple(test[1:])
    else:  # ["NONE"], an inherited [] or a form Docker does not know
        return None
    default = HealthCheck()

    def seconds(key: str, fallback: float) -> float:
        value = config.get(key)
        ok = isinstance(value, int) and 0 < value <= 366 * 24 * 3600 * 10**9
        return value / 1e9 if ok else fallback  # type: ignore[operator]

    retries = config.get("Retries")
    return HealthCheck(
        kind="cmd",
        command=command,
        interval=seconds("Interval", default.interval),
        timeout=seconds("Timeout", default.timeout),
        retries=retries if isinstance(retries, int) and 0 < retries <= 10_000 else default.retries,
        start_period=seconds("StartPeriod", default.start_period),
    )
