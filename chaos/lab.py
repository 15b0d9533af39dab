"""A lab of network namespaces: one per node plus a client, all on a bridge in a switch namespace.

Nothing is created in the root namespace: the bridge lives in `<prefix>-sw`, each node's
namespace holds `eth0` (10.213.0.N/24) whose veth peer is enslaved to that bridge. Every name
created is written to a state file before it is created, so `cleanup_state` can remove what a
crashed run left behind, by those recorded names only.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.213.0"
PREFIXLEN = 24
NETNS_DIR = Path("/run/netns")


@dataclass(frozen=True)
class Host:
    """One namespace of the lab and its address on the bridge."""

    name: str  # short role name: m1, w1, client
    netns: str
    ip: str
    veth: str  # host-side veth name, in the switch namespace

    @property
    def netns_path(self) -> str:
        return str(NETNS_DIR / self.netns)

    def nsenter(self, argv: list[str]) -> list[str]:
        """argv run inside this namespace's network only (mounts and cgroups stay the host's)."""
        return ["nsenter", f"--net={self.netns_path}", *argv]


@dataclass
class Lab:
    """The namespaces of one chaos run. `create` then `destroy` (in a `finally`)."""

    prefix: str  # e.g. wch-1a2b3c: every namespace name starts with it
    state_file: Path
    names: list[str] = field(default_factory=list)  # host names, in address order
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def plan(self, names: list[str]) -> None:
        """Assign namespaces, addresses and veth names (10.213.0.11 upwards)."""
        self.names = list(names)
        tag = self.prefix.rsplit("-", 1)[-1][:6]
        for i, name in enumerate(names):
            self.hosts[name] = Host(
                name=name,
                netns=f"{self.prefix}-{name}",
                ip=f"{SUBNET}.{11 + i}",
                veth=f"v{tag}{i}"[:15],
            )

    def create(self, names: list[str]) -> None:
        """Create the switch, its bridge, and one namespace with a veth per host."""
        from pyroute2 import IPRoute, netns

        self.plan(names)
        self._record()
        netns.create(self.switch)
        with IPRoute(netns=self.switch) as sw:
            sw.link("add", ifname="br0", kind="bridge")
            br = sw.link_lookup(ifname="br0")[0]
            sw.link("set", index=br, state="up")
            lo = sw.link_lookup(ifname="lo")[0]
            sw.link("set", index=lo, state="up")
            for name in self.names:
                host = self.hosts[name]
                netns.create(host.netns)
                sw.link("add", ifname=host.veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": host.netns})
                idx = sw.link_lookup(ifname=host.veth)[0]
                sw.link("set", index=idx, master=br, state="up")
                with IPRoute(netns=host.netns) as ip:
                    eth0 = ip.link_lookup(ifname="eth0")[0]
                    ip.addr("add", index=eth0, address=host.ip, prefixlen=PREFIXLEN)
                    ip.link("set", index=eth0, state="up")
                    ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")

    def _record(self) -> None:
        """Write every name this run will create before creating it."""
        data = {
            "prefix": self.prefix,
            "pid": os.getpid(),
            "netns": [self.switch, *(self.hosts[n].netns for n in self.names)],
            "processes": [],
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(data, indent=1))

    def record_process(self, pid: int, argv: list[str]) -> None:
        """Remember a process started in the lab, so a crashed run's leftovers can be killed."""
        data = json.loads(self.state_file.read_text())
        data["processes"].append({"pid": pid, "start": _proc_start(pid), "argv0": argv[:4]})
        self.state_file.write_text(json.dumps(data, indent=1))

    def destroy(self) -> None:
        cleanup_state(self.state_file)


def _proc_start(pid: int) -> int:
    """Field 22 of /proc/PID/stat (start time in ticks), to tell a pid from its reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int, start: int | None = None) -> bool:
    """The pid runs and, when `start` is given, is the same process (not a reused pid)."""
    if pid <= 0:
        return False
    current = _proc_start(pid)
    if current == 0:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state == "Z":
        return False
    return start is None or start == 0 or current == start


def cleanup_state(state_file: Path) -> list[str]:
    """Kill the recorded processes (checked by start time) and delete the recorded namespaces.
    Returns what was removed; a missing state file removes nothing."""
    from pyroute2 import netns

    removed: list[str] = []
    if not state_file.exists():
        return removed
    data = json.loads(state_file.read_text())
    for proc in data.get("processes", []):
        pid, start = int(proc["pid"]), int(proc.get("start") or 0)
        if pid_alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 18)  # SIGCONT first: a stopped process cannot die of SIGKILL promptly
                os.kill(pid, 9)
            removed.append(f"pid {pid}")
    # Task processes of exec workers run in their own sessions; they carry WCH_RUN=<prefix>.
    for pid in _pids_with_env("WCH_RUN", data["prefix"]):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        removed.append(f"task pid {pid}")
    existing = set(netns.listnetns())
    for name in data.get("netns", []):
        if name in existing:
            with contextlib.suppress(OSError):
                netns.remove(name)
                removed.append(f"netns {name}")
    state_file.unlink(missing_ok=True)
    return removed


def _pids_with_env(key: str, value: str) -> list[int]:
    needle = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def run_in(host: Host, argv: list[str], check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
    """Run a short command (nft, tc) in a host's namespace."""
    return subprocess.run(host.nsenter(argv), capture_output=True, text=True, check=check, timeout=timeout)


def wait_gone(names: list[str], timeout: float = 5.0) -> None:
    """Namespace teardown is asynchronous; wait until the names are gone from /run/netns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any((NETNS_DIR / n).exists() for n in names):
        time.sleep(0.1)
