"""The other managers' own accounts of their Raft state (`cluster info`, demotions), asked over
channels to their APIs that stay open between calls.

A channel opened per call paid a TCP connection and a TLS handshake each time, every step of
which waits for a turn of both managers' event loops: at S2's size (1,000 sessions on a busy
leader) `cluster info` took 1.3-2.8 s against 0.3 s at S1's (#15). A channel is kept per
manager address with the credentials it was opened with; it is replaced when this manager's
credentials change (a renewal, a CA rotation), and it reconnects by itself after a failure. The
channels live as long as the manager's process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from warren import tls
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import managers_pb2 as mpb
from warren.api.v1 import managers_pb2_grpc
from warren.manager.certificates import load_own
from warren.manager.ports import RaftStatus, StateReader
from warren.manager.secretkeys import KeyRing
from warren.model import Node

STATUS_TIMEOUT = 1.0  # how long `cluster info` waits for each other manager's Raft status


class PeerStatus:
    def __init__(self, store: StateReader, keyring: KeyRing, certs_dir: Path | None) -> None:
        self._store = store
        self._keyring = keyring
        # This manager's own credentials, read at each call: they are renewed. None: not asked.
        self._certs_dir = certs_dir
        self._channels: dict[str, tuple[tls.Credentials, asyncio.AbstractEventLoop, grpc.aio.Channel]] = {}
        self._closing: set[asyncio.Task[None]] = set()  # replaced channels being closed

    async def view(self, node: Node, local: RaftStatus) -> cpb.ManagerInfo:
        """`node`'s account of its Raft state (ours, `local`, without a call)."""
        if node.raft_addr == local.self_addr:
            return cpb.ManagerInfo(
                raft_state=local.state,
                raft_term=local.term,
                commit_index=local.commit_index,
                applied_index=local.applied_index,
                connected=local.connected,
            )
        if self._certs_dir is None or not node.addr:
            return cpb.ManagerInfo(error="not asked")
        with self._store.read() as state:  # under autolock the TLS key is sealed (ADR 44)
            own = load_own(self._certs_dir, self._keyring, state.cluster)
        try:
            answer = await managers_pb2_grpc.ManagersStub(self._channel(node.addr, own)).RaftStatus(
                mpb.RaftStatusRequest(), timeout=STATUS_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            reasons = {
                grpc.StatusCode.DEADLINE_EXCEEDED: f"no answer within {STATUS_TIMEOUT:g}s",
                grpc.StatusCode.UNAVAILABLE: "cannot connect",
            }
            return cpb.ManagerInfo(error=reasons.get(exc.code(), exc.details() or exc.code().name))
        return cpb.ManagerInfo(
            raft_state=answer.state,
            raft_term=answer.term,
            commit_index=answer.commit_index,
            applied_index=answer.applied_index,
            connected=answer.connected,
        )

    def _channel(self, addr: str, own: tls.Credentials) -> grpc.aio.Channel:
        """The open channel to `addr`, or a new one if none was opened with `own` on this loop."""
        loop = asyncio.get_running_loop()
        held = self._channels.get(addr)
        if held is not None and held[0] == own and held[1] is loop:
            return held[2]
        if held is not None:
            self._close_later(held)
        channel = grpc.aio.secure_channel(addr, tls.channel_credentials(*own), options=tls.channel_options())
        self._channels[addr] = (own, loop, channel)
        return channel

    def _close_later(self, held: tuple[tls.Credentials, asyncio.AbstractEventLoop, grpc.aio.Channel]) -> None:
        """Close a replaced channel on its loop, letting calls under way on it get their answer."""
        _, loop, channel = held
        if loop is not asyncio.get_running_loop() or loop.is_closed():
            return  # a channel of another loop (tests) goes with that loop
        closing = loop.create_task(channel.close(grace=STATUS_TIMEOUT))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def keep_only(self, addrs: set[str]) -> None:
        """Close the channels to addresses no longer a manager's (a removed or moved manager)."""
        for addr in [a for a in self._channels if a not in addrs]:
            self._close_later(self._channels.pop(addr))

    async def close(self) -> None:
        """Close every channel (the manager stops): none keeps pinging the others with its key."""
        held, self._channels = self._channels, {}
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(channel.close(grace=STATUS_TIMEOUT) for _, on, channel in held.values() if on is loop))
        await asyncio.gather(*self._closing)
