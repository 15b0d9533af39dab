"""Sealed Raft frames between managers of this version, Fernet with earlier ones (ADR 67):
three real PySyncObj nodes on loopback, two with Warren's transport and one with PySyncObj's
own, whose wire format is that of the managers before ADR 67 (ADR 20 kept it unchanged)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.transport import TCPTransport

from tests.integration.harness import free_port
from tests.waiting import wait_for
from warren.manager.raft_connection import HardenedTcpConnection
from warren.manager.raft_transport import HardenedTransport

pytestmark = pytest.mark.integration


class Counter(SyncObj):
    def __init__(self, self_addr: str, peers: list[str], transport: type) -> None:
        self.values: list[int] = []
        conf = SyncObjConf(
            password="s3cret",
            autoTickPeriod=0.005,
            appendEntriesUseBatch=False,
            connectionRetryTime=0.2,
            raftMinTimeout=0.4,
            raftMaxTimeout=0.6,
        )
        super().__init__(self_addr, peers, conf, transportClass=transport)

    @replicated
    def add(self, value: int) -> int:
        self.values.append(value)
        return value


@pytest.fixture
def mixed() -> Iterator[list[Counter]]:
    """Two managers of this version and one of an earlier one."""
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    transports = [HardenedTransport, HardenedTransport, TCPTransport]
    nodes: list[Counter] = []
    try:
        for i, addr in enumerate(addrs):
            nodes.append(Counter(addr, [a for a in addrs if a != addr], transports[i]))
        yield nodes
    finally:
        for node in nodes:
            node.destroy()


def _connections(node: Counter) -> dict[str, object]:
    """The node's connections to its peers, by peer address."""
    transport = node._SyncObj__transport
    return {peer.address: conn for peer, conn in transport._connections.items()}


def test_new_managers_seal_between_themselves_and_speak_fernet_to_an_old_one(mixed: list[Counter]) -> None:
    new_a, new_b, old = mixed
    wait_for(lambda: any(n._isLeader() for n in mixed), timeout=20, message="a leader")
    wait_for(lambda: all(len(n._SyncObj__connectedNodes) == 2 for n in mixed), timeout=20, message="everyone connected")
    leader = next(n for n in mixed if n._isLeader())
    for value in range(50):
        done = threading.Event()
        leader.add(value, callback=lambda _r, _e, d=done: d.set())
        assert done.wait(10), f"write {value} did not commit"
    wait_for(lambda: all(n.values == list(range(50)) for n in mixed), timeout=15, message="every node applied all")

    # The one connection between the two new managers (the dialler's and the listener's
    # objects): sealed both ways. Every connection to or from the old manager: Fernet.
    old_addr = old.selfNode.address
    for node, peer in ((new_a, new_b), (new_b, new_a)):
        conns = _connections(node)
        to_new = conns[peer.selfNode.address]
        assert isinstance(to_new, HardenedTcpConnection)
        assert to_new.sealing, f"{node.selfNode.address} -> {peer.selfNode.address} is not sealed"
        assert not conns[old_addr].sealing
