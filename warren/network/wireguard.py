"""The WireGuard device adapter: one interface, two backends (ADR 6, ADR 17), each a
`WireGuardDevice` (the port, with what a device reports: warren.network.wgdevice).

- `UserspaceDevice`: starts `wireguard-go -f IFNAME` as our child process (we own its PID),
  inside the node's network namespace, and configures it through its UAPI socket
  `/var/run/wireguard/IFNAME.sock` (the text protocol: `set=1` / `get=1`, hex keys).
- `KernelDevice`: the kernel module through pyroute2's genetlink `WireGuard`, where it exists.

`choose_backend("auto")` picks the kernel when it can create a WireGuard link, and userspace
otherwise; `--wireguard=kernel|userspace` forces one. Both apply the same `plan.diff`
operations, peer by peer: a kept peer is updated in place (`update_only`), never removed and
re-added, so its session survives a re-apply. Address and route operations belong to `links`.

Keys: X25519 from `cryptography`; base64 for display and the cluster state, hex on UAPI. The
private key is read from its file by the adapter at the moment it is set, and goes nowhere else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from warren.network import links

# The key helpers live in keys (no pyroute2 there); re-exported for the adapter's callers.
from warren.network.keys import (
    KEY_LEN as KEY_LEN,
)
from warren.network.keys import (
    WireGuardError as WireGuardError,
)
from warren.network.keys import (
    b64_to_hex as b64_to_hex,
)
from warren.network.keys import (
    ensure_key_file as ensure_key_file,
)
from warren.network.keys import (
    ensure_node_keys as ensure_node_keys,
)
from warren.network.keys import (
    generate_private_key as generate_private_key,
)
from warren.network.keys import (
    hex_to_b64 as hex_to_b64,
)
from warren.network.keys import (
    public_key_of as public_key_of,
)
from warren.network.keys import (
    read_key_file as read_key_file,
)
from warren.network.keys import (
    write_key_file as write_key_file,
)
from warren.network.plan import AddPeer, Operation, RemovePeer, SetInterface, UpdatePeer
from warren.network.wgdevice import DeviceStatus, PeerStatus, WireGuardDevice, wg_operations

UAPI_DIR = Path("/var/run/wireguard")
BACKENDS = ("auto", "kernel", "userspace")


# -- userspace: wireguard-go over UAPI ----------------------------------------------------------


def uapi_set_lines(operations: Iterable[Operation], read_key: Callable[[str], str] = read_key_file) -> list[str]:
    """The UAPI `set=1` body for the operations. `read_key(ref)` gives the base64 private key
    of a SetInterface: it is read only here, into the message for the socket."""
    lines: list[str] = []
    for op in operations:
        if isinstance(op, SetInterface):
            lines.append(f"private_key={b64_to_hex(read_key(op.private_key_ref))}")
            if op.listen_port is not None:
                lines.append(f"listen_port={op.listen_port}")
        elif isinstance(op, RemovePeer):
            lines += [f"public_key={b64_to_hex(op.public_key)}", "remove=true"]
        elif isinstance(op, AddPeer):
            p = op.peer
            lines.append(f"public_key={b64_to_hex(p.public_key)}")
            if p.endpoint:
                lines.append(f"endpoint={p.endpoint}")
            lines.append(f"persistent_keepalive_interval={p.keepalive}")
            lines.append("replace_allowed_ips=true")
            lines += [f"allowed_ip={c}" for c in p.allowed_ips]
        elif isinstance(op, UpdatePeer):
            p = op.peer
            lines += [f"public_key={b64_to_hex(p.public_key)}", "update_only=true"]
            if op.endpoint_changed and p.endpoint:
                lines.append(f"endpoint={p.endpoint}")
            if op.keepalive_changed:
                lines.append(f"persistent_keepalive_interval={p.keepalive}")
            if op.allowed_ips_changed:
                lines.append("replace_allowed_ips=true")
                lines += [f"allowed_ip={c}" for c in p.allowed_ips]
    return lines


def parse_uapi_get(text: str, ifname: str, public_of: Callable[[str], str] = public_key_of) -> DeviceStatus:
    """A `get=1` reply as a DeviceStatus (the private key is turned into its public key by
    `public_of`, given and returning base64)."""
    public_key: str | None = None
    listen_port: int | None = None
    peers: list[PeerStatus] = []
    peer: dict[str, str] | None = None  # the current peer's fields as sent, and its allowed IPs
    peer_ips: list[str] = []

    def close() -> None:
        if peer is not None:
            sec, nsec = int(peer.get("sec", 0)), int(peer.get("nsec", 0))
            peers.append(
                PeerStatus(
                    public_key=peer["key"],
                    endpoint=peer.get("endpoint"),
                    allowed_ips=tuple(sorted(peer_ips)),
                    keepalive=int(peer.get("keepalive", 0)),
                    last_handshake=sec + nsec / 1e9,
                    rx_bytes=int(peer.get("rx", 0)),
                    tx_bytes=int(peer.get("tx", 0)),
                )
            )

    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "private_key":
            public_key = public_of(hex_to_b64(value)) if value.strip("0") else None
        elif key == "listen_port":
            listen_port = int(value)
        elif key == "public_key":
            close()
            peer, peer_ips = {"key": hex_to_b64(value)}, []
        elif peer is None:
            continue
        elif key == "endpoint":
            peer["endpoint"] = value
        elif key == "allowed_ip":
            peer_ips.append(str(ipaddress.ip_network(value, strict=False)))
        elif key == "persistent_keepalive_interval":
            peer["keepalive"] = value
        elif key == "last_handshake_time_sec":
            peer["sec"] = value
        elif key == "last_handshake_time_nsec":
            peer["nsec"] = value
        elif key == "rx_bytes":
            peer["rx"] = value
        elif key == "tx_bytes":
            peer["tx"] = value
    close()
    return DeviceStatus(ifname, public_key, listen_port, tuple(sorted(peers, key=lambda p: p.public_key)))


class UserspaceDevice(WireGuardDevice):
    """wireguard-go, our child process, configured over its UAPI socket."""

    kind = "userspace"

    def __init__(
        self,
        ifname: str,
        netns: str | None = None,
        *,
        binary: str = "wireguard-go",
        uapi_dir: Path = UAPI_DIR,
        log_path: Path | None = None,
        start_timeout: float = 5.0,
        public_of: Callable[[str], str] = public_key_of,
    ) -> None:
        super().__init__(ifname, netns)
        self.public_of = public_of  # the agent passes its key ring's, which needs no `cryptography`
        self.binary = binary
        self.socket_path = uapi_dir / f"{ifname}.sock"
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None  # set when we started it
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        if self._answers():
            return  # adopted: a wireguard-go for this name already runs (an agent restart)
        if self.socket_path.exists():
            self.socket_path.unlink()  # stale: nothing listens on it
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                links.nsenter(self.netns, [self.binary, "-f", self.ifname]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # outlives an agent restart; stopped by PID only
                env={**os.environ, "LOG_LEVEL": os.environ.get("WARREN_WG_LOG_LEVEL", "error")},
            )
        except OSError as exc:
            raise WireGuardError(f"cannot start {self.binary}: {exc.strerror}") from None
        finally:
            if not isinstance(log, int):  # not subprocess.DEVNULL
                log.close()
        deadline = time.monotonic() + self.start_timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise WireGuardError(
                    f"{self.binary} for {self.ifname} exited with status {self.process.returncode} while starting"
                    + (f" (log: {self.log_path})" if self.log_path else "")
                )
            if time.monotonic() > deadline:
                self.stop()
                raise WireGuardError(f"{self.binary} for {self.ifname}: no UAPI socket after {self.start_timeout} s")
            time.sleep(0.02)

    def ensure_running(self) -> bool:
        """Supervision: restart wireguard-go if it died. True if it was restarted (its
        configuration is then empty, and the next diff puts everything back)."""
        if self._answers():
            return False
        if self.process is not None and self.process.poll() is None:
            self._kill()
        self.process = None
        self.start()
        self.restarts += 1
        return True

    def _answers(self) -> bool:
        try:
            self.uapi("get=1")
        except (OSError, WireGuardError):
            return False
        return True

    def uapi(self, request: str, *lines: str, timeout: float = 5.0) -> str:
        """One UAPI exchange: `request` (get=1 or set=1) and its lines; the reply without the
        errno line. A non-zero errno raises."""
        message = "\n".join([request, *lines]) + "\n\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            sock.sendall(message.encode())
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        text = reply.decode()
        body, _, last = text.rstrip("\n").rpartition("\n")
        if not last.startswith("errno="):
            raise WireGuardError(f"UAPI of {self.ifname}: reply without errno")
        if last != "errno=0":
            raise WireGuardError(f"UAPI {request} on {self.ifname} failed: {last}")
        return body

    def status(self) -> DeviceStatus:
        try:
            return parse_uapi_get(self.uapi("get=1"), self.ifname, self.public_of)
        except OSError as exc:
            raise WireGuardError(f"UAPI of {self.ifname} unreachable: {exc}") from None

    def apply(self, operations: Iterable[Operation]) -> int:
        ops = wg_operations(operations)
        if not ops:
            return 0
        try:
            self.uapi("set=1", *uapi_set_lines(ops))
        except OSError as exc:
            raise WireGuardError(f"UAPI of {self.ifname} unreachable: {exc}") from None
        return len(ops)

    def stop(self) -> None:
        """End the wireguard-go we started (its TUN device goes with it). An adopted device
        is only asked to go by closing its interface; its process is not ours to signal."""
        if self.process is not None:
            self._kill()
            self.process = None
        elif self._answers():
            links.delete_link(self.ifname, self.netns)  # wireguard-go exits when its TUN goes
        with contextlib.suppress(FileNotFoundError):
            if not self._answers():
                self.socket_path.unlink()

    def _kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=3)


# -- kernel: pyroute2 genetlink ------------------------------------------------------------------


class KernelDevice(WireGuardDevice):
    """The kernel module, through pyroute2. Only in this process's namespace: pyroute2's
    genetlink socket cannot be opened in another one (and the agent runs in the host's)."""

    kind = "kernel"

    def __init__(self, ifname: str, netns: str | None = None) -> None:
        if netns is not None:
            raise WireGuardError("the kernel WireGuard backend configures this namespace only")
        super().__init__(ifname, netns)

    @contextlib.contextmanager
    def _wg(self) -> Iterator[Any]:  # pyroute2 has no types
        from pyroute2.netlink.generic.wireguard import WireGuard

        wg = WireGuard()
        try:
            yield wg
        finally:
            wg.close()

    def start(self) -> None:
        if links.link_index(self.ifname) is not None:
            return
        from pyroute2.netlink.exceptions import NetlinkError

        with links.ipr() as ip:
            try:
                ip.link("add", ifname=self.ifname, kind="wireguard")
            except NetlinkError as exc:
                raise WireGuardError(f"cannot create the kernel WireGuard link {self.ifname}: {exc}") from exc

    def status(self) -> DeviceStatus:
        with self._wg() as wg:
            msgs = list(wg.info(self.ifname))
        public_key: str | None = None
        port: int | None = None
        peers: list[PeerStatus] = []
        for msg in msgs:
            pk = msg.get_attr("WGDEVICE_A_PUBLIC_KEY")
            if pk is not None and pk["value"].strip(b"A=") != b"":
                public_key = pk["value"].decode()
            port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or port
            for p in msg.get_attr("WGDEVICE_A_PEERS") or []:
                ep = p.get_attr("WGPEER_A_ENDPOINT")
                hs = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
                ips = []
                for a in p.get_attr("WGPEER_A_ALLOWEDIPS") or []:
                    addr = a.get_attr("WGALLOWEDIP_A_IPADDR")
                    family = socket.AF_INET if a.get_attr("WGALLOWEDIP_A_FAMILY") == socket.AF_INET else socket.AF_INET6
                    text = addr if isinstance(addr, str) else socket.inet_ntop(family, addr)
                    ips.append(
                        str(ipaddress.ip_network(f"{text}/{a.get_attr('WGALLOWEDIP_A_CIDR_MASK')}", strict=False))
                    )
                peers.append(
                    PeerStatus(
                        public_key=p.get_attr("WGPEER_A_PUBLIC_KEY")["value"].decode(),
                        endpoint=f"{ep['addr']}:{ep['port']}" if ep and ep["port"] else None,
                        allowed_ips=tuple(sorted(ips)),
                        keepalive=p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0,
                        last_handshake=(hs["tv_sec"] + hs["tv_nsec"] / 1e9) if hs else 0.0,
                        rx_bytes=p.get_attr("WGPEER_A_RX_BYTES") or 0,
                        tx_bytes=p.get_attr("WGPEER_A_TX_BYTES") or 0,
                    )
                )
        return DeviceStatus(self.ifname, public_key, port, tuple(sorted(peers, key=lambda p: p.public_key)))

    def apply(self, operations: Iterable[Operation]) -> int:
        ops = wg_operations(operations)
        with self._wg() as wg:
            for op in ops:
                if isinstance(op, SetInterface):
                    port = {} if op.listen_port is None else {"listen_port": op.listen_port}
                    wg.set(self.ifname, private_key=read_key_file(op.private_key_ref), **port)
                else:
                    wg.set(self.ifname, peer=kernel_peer(op))
        return len(ops)

    def stop(self) -> None:
        links.delete_link(self.ifname)


def kernel_peer(op: Operation) -> dict[str, object]:
    """pyroute2's peer dict for one peer operation."""
    if isinstance(op, RemovePeer):
        return {"public_key": op.public_key, "remove": True}
    assert isinstance(op, AddPeer | UpdatePeer)
    p = op.peer
    peer: dict[str, object] = {"public_key": p.public_key}
    update = op if isinstance(op, UpdatePeer) else None  # an update says what changed; an add sets all
    if update is not None:
        peer["update_only"] = True
    if p.endpoint and (update is None or update.endpoint_changed):
        host, _, port = p.endpoint.rpartition(":")
        peer["endpoint_addr"], peer["endpoint_port"] = host.strip("[]"), int(port)
    if update is None or update.keepalive_changed:
        peer["persistent_keepalive"] = p.keepalive
    if update is None or update.allowed_ips_changed:
        peer["replace_allowed_ips"] = True
        peer["allowed_ips"] = list(p.allowed_ips)
    return peer


# -- choosing a backend --------------------------------------------------------------------------


def kernel_available() -> bool:
    """Can this namespace create a kernel WireGuard link? (Tried with a throwaway link.)"""
    from pyroute2.netlink.exceptions import NetlinkError

    probe = f"wgprobe{os.getpid() % 100000}"
    try:
        with links.ipr() as ip:
            ip.link("add", ifname=probe, kind="wireguard")
            ip.link("del", index=ip.link_lookup(ifname=probe)[0])
    except (NetlinkError, OSError, IndexError):
        return False
    return True


def choose_backend(mode: str = "auto", netns: str | None = None) -> str:
    """`kernel` or `userspace` for `--wireguard=auto|kernel|userspace`. Another namespace
    always gets userspace (see KernelDevice)."""
    if mode not in BACKENDS:
        raise WireGuardError(f"--wireguard must be one of {', '.join(BACKENDS)}, not {mode!r}")
    if mode == "auto":
        return "kernel" if netns is None and kernel_available() else "userspace"
    if mode == "kernel" and not kernel_available():
        raise WireGuardError("--wireguard=kernel: this kernel cannot create WireGuard links (no module)")
    return mode


def make_device(ifname: str, mode: str = "auto", netns: str | None = None, **userspace: object) -> WireGuardDevice:
    if choose_backend(mode, netns) == "kernel":
        return KernelDevice(ifname, netns)
    return UserspaceDevice(ifname, netns, **userspace)  # type: ignore[arg-type]
