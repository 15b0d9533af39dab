"""Other managers' Raft status over a channel kept open between calls (`cluster info` at S2's
size paid a connection and a TLS handshake per call, #15): calls share one channel per manager,
a renewed certificate opens a new one, and an unreachable manager is reported, not raised."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from tests.fixtures.ports import free_port
from warren import pki, tls
from warren.api.v1 import managers_pb2 as mpb
from warren.api.v1 import managers_pb2_grpc
from warren.manager.inmemory import InMemoryState
from warren.manager.peerstatus import PeerStatus
from warren.manager.ports import RaftStatus
from warren.manager.secretkeys import KeyRing
from warren.model import Node, NodeRole

LOCAL = RaftStatus("leader", "127.0.0.1:1", 3, 9, 9, True, {"127.0.0.1:2": True}, self_addr="127.0.0.1:1")


class Follower(managers_pb2_grpc.ManagersServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def RaftStatus(self, request: mpb.RaftStatusRequest, context: object) -> mpb.RaftStatusResponse:
        self.calls += 1
        return mpb.RaftStatusResponse(state="follower", term=3, commit_index=9, applied_index=8 + self.calls % 2)


def _issue(ca: pki.CertificateAuthority, certs: Path, name: str) -> None:
    cert, key = ca.issue_keypair(name, pki.ROLE_MANAGER)
    tls.save_credentials(certs, ca.cert_pem, cert, key)


def test_calls_share_a_channel_until_the_certificate_changes(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create("c1")
    certs = tmp_path / "certs"
    _issue(ca, certs, "m1")
    server_cert, server_key = ca.issue_keypair("m2", pki.ROLE_MANAGER)

    async def scenario() -> None:
        follower = Follower()
        server = grpc.aio.server()
        managers_pb2_grpc.add_ManagersServicer_to_server(follower, server)
        port = server.add_secure_port(
            f"127.0.0.1:{free_port()}", tls.server_credentials(ca.cert_pem, server_cert, server_key)
        )
        await server.start()
        try:
            peers = PeerStatus(InMemoryState(), KeyRing("s"), certs)
            m2 = Node(id="m2", hostname="m2", role=NodeRole.MANAGER, addr=f"127.0.0.1:{port}", raft_addr="127.0.0.1:2")
            views = [await peers.view(m2, LOCAL) for _ in range(3)]
            assert [v.raft_state for v in views] == ["follower"] * 3 and follower.calls == 3
            first = peers._channels[m2.addr][2]
            assert (await peers.view(m2, LOCAL)).raft_term == 3 and peers._channels[m2.addr][2] is first
            _issue(ca, certs, "m1")  # renewed: the next call opens a channel with the new certificate
            assert (await peers.view(m2, LOCAL)).raft_state == "follower"
            assert peers._channels[m2.addr][2] is not first
            mine = await peers.view(Node(id="m1", hostname="m1", raft_addr=LOCAL.self_addr), LOCAL)
            assert (mine.raft_state, follower.calls) == ("leader", 5)  # ours, without a call
            gone = Node(id="m3", hostname="m3", role=NodeRole.MANAGER, addr=f"127.0.0.1:{free_port()}")
            assert (await peers.view(gone, LOCAL)).error in ("cannot connect", "no answer within 1s")
            peers.keep_only({m2.addr})  # m3 is no longer a manager: its channel goes
            assert set(peers._channels) == {m2.addr}
            kept = peers._channels[m2.addr][2]
            await peers.close()
            assert peers._channels == {} and kept.get_state() == grpc.ChannelConnectivity.SHUTDOWN
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def test_without_credentials_nothing_is_asked() -> None:
    peers = PeerStatus(InMemoryState(), KeyRing("s"), None)
    m2 = Node(id="m2", hostname="m2", role=NodeRole.MANAGER, addr="127.0.0.1:9", raft_addr="127.0.0.1:2")
    assert asyncio.run(peers.view(m2, LOCAL)).error == "not asked"
