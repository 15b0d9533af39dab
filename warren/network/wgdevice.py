"""The WireGuard device port (ADR 17): what the mesh drives (`WireGuardDevice`: start, status,
apply a diff's interface and peer operations, stop) and what a device reports (`DeviceStatus`,
one `PeerStatus` per peer). The backends are in warren.network.wireguard; tests use the fake
in warren.network.fake.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass

from warren.network import links
from warren.network.keys import WireGuardError
from warren.network.plan import AddPeer, Operation, PeerConfig, RemovePeer, SetInterface, UpdatePeer

# -- status --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerStatus:
    public_key: str  # base64
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    keepalive: int
    last_handshake: float  # seconds since the epoch; 0.0 = never
    rx_bytes: int
    tx_bytes: int

    def config(self) -> PeerConfig:
        return PeerConfig(self.public_key, self.endpoint, tuple(sorted(self.allowed_ips)), self.keepalive)


@dataclass(frozen=True)
class DeviceStatus:
    ifname: str
    public_key: str | None  # base64; None until a private key is set
    listen_port: int | None
    peers: tuple[PeerStatus, ...]  # sorted by public key

    def peer(self, public_key: str) -> PeerStatus | None:
        return next((p for p in self.peers if p.public_key == public_key), None)


# -- the port ------------------------------------------------------------------------------------


class WireGuardDevice(abc.ABC):
    """One WireGuard interface, in `netns` (None: this namespace)."""

    kind = ""

    def __init__(self, ifname: str, netns: str | None = None) -> None:
        if not 0 < len(ifname) <= 15:
            raise WireGuardError(f"interface name {ifname!r} must be 1 to 15 characters")
        self.ifname = ifname
        self.netns = netns

    @abc.abstractmethod
    def start(self) -> None:
        """Create the interface, or adopt one that already runs (a restarted agent)."""

    @abc.abstractmethod
    def status(self) -> DeviceStatus:
        """Key, port and peers with handshake times and byte counts."""

    @abc.abstractmethod
    def apply(self, operations: Iterable[Operation]) -> int:
        """Carry out the interface and peer operations of a diff (the others are skipped);
        returns how many were applied."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Remove the interface (and, for userspace, end the process we started)."""

    def alive(self) -> bool:
        return links.link_index(self.ifname, self.netns) is not None


def wg_operations(operations: Iterable[Operation]) -> list[Operation]:
    return [op for op in operations if isinstance(op, SetInterface | AddPeer | UpdatePeer | RemovePeer)]
