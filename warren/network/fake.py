"""In-memory stand-ins for the WireGuard device and the routing port, for tests of code that
converges a mesh (the agent) without namespaces, processes or root."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from warren.network.plan import AddPeer, Operation, RemovePeer, SetInterface, UpdatePeer
from warren.network.wgdevice import DeviceStatus, PeerStatus, WireGuardDevice
from warren.network.wireguard import public_key_of, read_key_file


class FakeDevice(WireGuardDevice):
    """A WireGuard device that keeps its configuration in memory and counts what it is asked."""

    kind = "fake"

    def __init__(self, ifname: str = "warren0", netns: str | None = None) -> None:
        super().__init__(ifname, netns)
        self.running = False
        self.public_key: str | None = None
        self.listen_port: int | None = None
        self.peers: dict[str, PeerStatus] = {}
        self.applied: list[Operation] = []
        self.starts = 0

    def start(self) -> None:
        if not self.running:
            self.running = True
            self.starts += 1

    def alive(self) -> bool:
        return self.running

    def status(self) -> DeviceStatus:
        peers = tuple(sorted(self.peers.values(), key=lambda p: p.public_key))
        return DeviceStatus(self.ifname, self.public_key, self.listen_port, peers)

    def apply(self, operations: Iterable[Operation]) -> int:
        count = 0
        for op in operations:
            if isinstance(op, SetInterface):
                self.public_key = public_key_of(read_key_file(op.private_key_ref))
                if op.listen_port is not None:
                    self.listen_port = op.listen_port
            elif isinstance(op, AddPeer | UpdatePeer):
                old = self.peers.get(op.peer.public_key)
                if isinstance(op, AddPeer) or old is None:
                    old = PeerStatus(op.peer.public_key, None, (), 0, 0.0, 0, 0)
                endpoint = op.peer.endpoint if op.peer.endpoint else old.endpoint
                self.peers[op.peer.public_key] = PeerStatus(
                    op.peer.public_key, endpoint, op.peer.allowed_ips, op.peer.keepalive, old.last_handshake, 0, 0
                )
            elif isinstance(op, RemovePeer):
                self.peers.pop(op.public_key, None)
            else:
                continue
            self.applied.append(op)
            count += 1
        return count

    def stop(self) -> None:
        self.running = False
        self.public_key, self.listen_port, self.peers = None, None, {}


@dataclass
class FakeRouting:
    """The `Routing` port in memory: links that are up, addresses and routes per interface."""

    up: set[str] = field(default_factory=set)
    addrs: dict[str, set[str]] = field(default_factory=dict)
    table: dict[str, dict[str, str | None]] = field(default_factory=dict)  # ifname -> dst -> src

    def link_up(self, ifname: str) -> None:
        self.up.add(ifname)

    def addresses(self, ifname: str) -> tuple[str, ...]:
        return tuple(sorted(self.addrs.get(ifname, ())))

    def routes(self, ifname: str) -> tuple[tuple[str, str | None], ...]:
        return tuple(sorted(self.table.get(ifname, {}).items()))

    def add_address(self, ifname: str, cidr: str) -> None:
        self.addrs.setdefault(ifname, set()).add(cidr)

    def remove_address(self, ifname: str, cidr: str) -> None:
        self.addrs.get(ifname, set()).discard(cidr)

    def add_route(self, destination: str, ifname: str, source: str | None) -> None:
        if source is not None and not any(a.split("/")[0] == source for s in self.addrs.values() for a in s):
            raise ValueError(f"route source {source} is not a local address")  # as the kernel refuses it
        self.table.setdefault(ifname, {})[destination] = source

    def remove_route(self, destination: str, ifname: str) -> None:
        self.table.get(ifname, {}).pop(destination, None)
