"""One Warren node's overlay per network namespace (ADR 23).

A node's bridge (`warren-br0`), WireGuard interface and nftables table (`ip warren`) carry the
node they belong to: a tag naming the node's data directory, in the link's alias (IFLA_IFALIAS)
and in the table's comment. A node refuses to start in a namespace whose overlay belongs to
another data directory, and a teardown leaves another node's pieces alone. The tag lives on the
objects themselves, so it goes with them: nothing to clean up, and nothing stale to trust.

Pieces without a tag were made before tags existed; they count as the node's that finds them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from warren.network import links
from warren.network.lb import TABLE

TAG_PREFIX = "warren:"
BRIDGE = "warren-br0"  # the node's task bridge (warren.network.tasknet)
# Held while a node checks and claims its namespace, so that two nodes starting at once in one
# namespace cannot both find it free. /run is shared by every network namespace of the host.
CLAIM_LOCK = Path("/run/lock/warren-overlay.lock")
# nft takes comments of up to 128 characters; the prefix takes 7 of them.
_PLAIN = re.compile(r'^[^"\\\x00-\x1f\x7f]{1,120}$')  # safe inside an nft comment, and readable


class OverlayInUse(Exception):
    """This namespace's overlay belongs to another node; str() says which and what to do."""


def tag(data_dir: Path) -> str:
    """The tag of the node whose data directory is `data_dir` (its real path, the same from any
    working directory or symlink, when that fits an nft comment; else a digest of it)."""
    path = os.path.realpath(data_dir)
    if _PLAIN.fullmatch(path):
        return TAG_PREFIX + path
    return f"{TAG_PREFIX}sha256:{hashlib.sha256(path.encode()).hexdigest()[:32]}"


def describe(owner: str) -> str:
    """What a tag says about its node, for messages."""
    body = owner.removeprefix(TAG_PREFIX)
    if body.startswith("sha256:"):
        return f"the Warren node whose data directory's path has the digest {body}"
    return f"the Warren node in {body}"


def link_owner(ifname: str) -> str | None:
    """The tag on a link of this namespace: "" untagged, None no such link."""
    alias = links.link_alias(ifname)
    if alias is None:
        return None
    return alias if alias.startswith(TAG_PREFIX) else ""


def table_owner(table: str = TABLE) -> str | None:
    """The tag on an nftables table of this namespace: "" untagged, None no such table."""
    listed = subprocess.run(["nft", "list", "table", "ip", table], capture_output=True, text=True, timeout=10)
    if listed.returncode != 0:
        return None
    found = re.search(r'^\s*comment "([^"]*)"', listed.stdout, re.MULTILINE)
    return found.group(1) if found and found.group(1).startswith(TAG_PREFIX) else ""


def foreign(data_dir: Path, wireguard_interface: str) -> list[tuple[str, str]]:
    """(what, owner tag) for each overlay piece here that another node's tag marks."""
    mine = tag(data_dir)
    pieces = [
        (f"bridge {BRIDGE}", link_owner(BRIDGE)),
        (f"WireGuard interface {wireguard_interface}", link_owner(wireguard_interface)),
        (f"nftables table {TABLE}", table_owner()),
    ]
    return [(what, owner) for what, owner in pieces if owner and owner != mine]


def check(data_dir: Path, wireguard_interface: str) -> None:
    """Raise OverlayInUse when another node's overlay is in this namespace."""
    taken = foreign(data_dir, wireguard_interface)
    if not taken:
        return
    owners = sorted({owner for _, owner in taken})
    whose = " and ".join(describe(o) for o in owners)
    pieces = ", ".join(what for what, _ in taken)
    other = owners[0].removeprefix(TAG_PREFIX)
    teardown = (
        "its `warren worker teardown`"
        if other.startswith("sha256:")
        else f"`warren worker teardown --data-dir {other}`"
    )
    raise OverlayInUse(
        f"this network namespace already holds the overlay of {whose} ({pieces}); one Warren node per "
        f"network namespace: stop that node and run {teardown}, or run this one in another network "
        "namespace or with --wireguard off"
    )


@contextlib.contextmanager
def _claim_lock() -> Iterator[None]:
    CLAIM_LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(CLAIM_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def claim(data_dir: Path, wireguard_interface: str) -> None:
    """Make this namespace's overlay this node's: check, then create (or tag) the bridge, under
    a lock shared with every other node on the host. Raises OverlayInUse."""
    mine = tag(data_dir)
    with _claim_lock():
        check(data_dir, wireguard_interface)
        owner = link_owner(BRIDGE)
        if owner is None:
            links.add_bridge(BRIDGE)
        if owner != mine:
            links.set_link_alias(BRIDGE, mine)
