"""The hardened Raft connection's framing (ADR 20), over a real socket pair and PySyncObj's
own poller: bounded frames, messages intact however they are split."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
import zlib
from collections.abc import Iterator

import pysyncobj.pickle as raft_pickle
import pytest
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import CONNECTION_STATE

from warren.manager.raft_connection import MAX_FRAME_BYTES, PRE_AUTH_FRAME_BYTES, HardenedTcpConnection
from warren.manager.raft_transport import _normalise_ip


def frame(message: object) -> bytes:
    data = zlib.compress(raft_pickle.dumps(message), 3)
    return struct.pack("i", len(data)) + data


class Pair:
    def __init__(self) -> None:
        self.poller = createPoller("auto")
        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.received: list[object] = []
        self.conn = HardenedTcpConnection(poller=self.poller, socket=ours, timeout=30, recvBufferSize=65536)
        self.conn.setOnMessageReceivedCallback(self.received.append)

    def pump(self, until, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            self.poller.poll(0.01)

    def close(self) -> None:
        self.conn.disconnect()
        self.peer.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        p.close()


def test_a_giant_length_closes_the_connection_at_its_header(pair: Pair) -> None:
    pair.peer.sendall(struct.pack("i", 2**31 - 1) + b"junk" * 100)
    pair.pump(lambda: pair.conn.state == CONNECTION_STATE.DISCONNECTED)
    assert pair.conn.state == CONNECTION_STATE.DISCONNECTED
    assert pair.received == []


def test_before_authentication_frames_are_small(pair: Pair) -> None:
    pair.peer.sendall(struct.pack("i", PRE_AUTH_FRAME_BYTES + 1))
    pair.pump(lambda: pair.conn.state == CONNECTION_STATE.DISCONNECTED)
    assert pair.conn.state == CONNECTION_STATE.DISCONNECTED


def test_a_negative_length_closes_the_connection(pair: Pair) -> None:
    pair.peer.sendall(struct.pack("i", -5))
    pair.pump(lambda: pair.conn.state == CONNECTION_STATE.DISCONNECTED)
    assert pair.conn.state == CONNECTION_STATE.DISCONNECTED


def test_messages_split_anyhow_arrive_whole_and_in_order(pair: Pair) -> None:
    pair.conn.frame_limit = MAX_FRAME_BYTES
    messages = [{"n": i, "data": bytes([i % 256]) * (i * 997)} for i in range(60)]
    stream = b"".join(frame(m) for m in messages)
    for start in range(0, len(stream), 1000):  # pieces that cut headers and bodies
        pair.peer.sendall(stream[start : start + 1000])
        pair.poller.poll(0)
    pair.pump(lambda: len(pair.received) == len(messages))
    assert pair.received == messages
    assert pair.conn.state == CONNECTION_STATE.CONNECTED


def test_a_large_frame_arrives_whole_and_its_buffer_is_released(pair: Pair) -> None:
    """8 MiB in 64 KiB reads (PySyncObj's `buf += incoming` copied about 512 MiB for this; the
    bytearray appends, and drops parsed bytes)."""
    pair.conn.frame_limit = MAX_FRAME_BYTES
    payload = bytes(range(256)) * (8 << 12)  # 8 MiB, barely compressible once pickled
    data = frame(payload)
    pair.peer.setblocking(False)
    sent = 0
    while sent < len(data):
        with contextlib.suppress(BlockingIOError):
            sent += pair.peer.send(data[sent : sent + (1 << 20)])
        pair.poller.poll(0)
    pair.pump(lambda: pair.received)
    assert pair.received == [payload]
    assert len(pair.conn._buffer) - pair.conn._consumed == 0


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("127.0.0.1", "127.0.0.1"), ("::ffff:10.0.0.5", "10.0.0.5"), ("fe80::1%eth0", "fe80::1"), ("::1", "::1")],
)
def test_source_addresses_are_compared_in_one_form(raw: str, normal: str) -> None:
    assert _normalise_ip(raw) == normal
