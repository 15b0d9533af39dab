"""Facts about the machine this process runs on, read in one place: the node description an
agent sends and the Node record a manager commits for itself both come from here."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class HostFacts:
    hostname: str  # sanitised: the managers accept it (validate.NAME_RE)
    nano_cpus: int
    memory_bytes: int
    os: str
    arch: str


def sanitise_hostname(name: str) -> str:
    """A hostname the managers accept (validate.NAME_RE): other characters become '-', at most 63."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "-" for c in name)
    return cleaned.lstrip("_.-")[:63] or "node"


def memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def host_facts(hostname: str | None = None) -> HostFacts:
    """This machine's facts; `hostname` replaces the kernel's node name (still sanitised)."""
    uname = os.uname()
    return HostFacts(
        hostname=sanitise_hostname(hostname or uname.nodename),
        nano_cpus=(os.cpu_count() or 1) * 1_000_000_000,
        memory_bytes=memory_bytes(),
        os=sys.platform,
        arch=uname.machine,
    )


def reachable_addr(listen_addr: str, host: str) -> str:
    """`listen_addr` (HOST:PORT) as other machines dial it: a wildcard host (0.0.0.0, ::, none)
    becomes `host`, this machine's advertised address or name (service discovery, ADR 60)."""
    listen_host, _, port = listen_addr.rpartition(":")
    if listen_host in ("", "0.0.0.0", "::", "[::]") and host:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return listen_addr
