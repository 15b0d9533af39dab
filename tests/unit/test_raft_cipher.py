"""Sealed Raft frames (ADR 67): AES-GCM per connection, and the connection that speaks both
them and the Fernet of managers of earlier versions, over a real socket pair."""

from __future__ import annotations

import socket
import struct
import time
import zlib
from collections.abc import Iterator

import pysyncobj.pickle as raft_pickle
import pytest
from pysyncobj.encryptor import getEncryptor
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import CONNECTION_STATE

from warren.manager.raft_cipher import HEADER_BYTES, FrameCipher, FrameError, is_sealed
from warren.manager.raft_connection import MAX_FRAME_BYTES, HardenedTcpConnection

SECRET = "a-raft-secret"
FERNET = getEncryptor(SECRET)  # PySyncObj's Fernet (slow to derive: once)


def test_a_sealed_frame_opens_with_the_same_secret_only() -> None:
    sealer = FrameCipher(SECRET).sealer()
    frames = [sealer.seal(b"message %d" % i) for i in range(3)]
    opener = FrameCipher(SECRET).opener()
    assert [opener.open(f) for f in frames] == [b"message 0", b"message 1", b"message 2"]
    with pytest.raises(FrameError, match="does not authenticate"):
        FrameCipher("another-secret").opener().open(sealer.seal(b"x"))


@pytest.mark.parametrize("position", [0, 1, HEADER_BYTES - 1, HEADER_BYTES, -1])
def test_a_tampered_byte_anywhere_is_refused(position: int) -> None:
    frame = bytearray(FrameCipher(SECRET).sealer().seal(b"hello, follower"))
    frame[position] ^= 0x01
    with pytest.raises(FrameError):
        FrameCipher(SECRET).opener().open(bytes(frame))


@pytest.mark.parametrize("keep", [0, 1, HEADER_BYTES, HEADER_BYTES + 15, -1])
def test_a_truncated_frame_is_refused(keep: int) -> None:
    frame = FrameCipher(SECRET).sealer().seal(b"hello, follower")
    with pytest.raises(FrameError):
        FrameCipher(SECRET).opener().open(frame[:keep])


def test_replayed_reordered_and_spliced_frames_are_refused() -> None:
    cipher = FrameCipher(SECRET)
    sealer = cipher.sealer()
    first, second = sealer.seal(b"1"), sealer.seal(b"2")
    opener = cipher.opener()
    assert opener.open(first) == b"1"
    with pytest.raises(FrameError, match="replayed"):
        opener.open(first)
    assert opener.open(second) == b"2"
    reordered = cipher.opener()
    assert reordered.open(second) == b"2"
    with pytest.raises(FrameError, match="replayed or reordered"):
        reordered.open(first)
    # A frame of another connection (another salt, so another key), even with a fresh counter.
    other = cipher.sealer()
    for _ in range(5):
        spliced = other.seal(b"from elsewhere")
    with pytest.raises(FrameError, match="another connection"):
        opener.open(spliced)


def test_a_refused_frame_does_not_move_the_opener() -> None:
    cipher = FrameCipher(SECRET)
    sealer = cipher.sealer()
    forged = bytearray(sealer.seal(b"a"))
    forged[-1] ^= 1
    opener = cipher.opener()
    with pytest.raises(FrameError):
        opener.open(bytes(forged))
    assert opener.open(sealer.seal(b"b")) == b"b"  # counter 2 after a refused 1: still taken


def test_the_formats_are_told_apart_by_their_first_byte() -> None:
    assert is_sealed(FrameCipher(SECRET).sealer().seal(b"x"))
    assert not is_sealed(FERNET.encrypt_at_time(b"x", 1))  # a Fernet token starts with "g"
    assert not is_sealed(b"")


def test_each_connection_has_its_own_key_and_counters() -> None:
    cipher = FrameCipher(SECRET)
    a, b = cipher.sealer().seal(b"same"), cipher.sealer().seal(b"same")
    assert a[1:17] != b[1:17]  # salts
    assert a[HEADER_BYTES:] != b[HEADER_BYTES:]  # the same plaintext and counter, other keys


# -- the connection ------------------------------------------------------------------------------


def frame_of(message: object, seal=None) -> bytes:
    data = zlib.compress(raft_pickle.dumps(message), 3)
    data = seal(data) if seal else FERNET.encrypt_at_time(data, int(time.monotonic()))
    return struct.pack("i", len(data)) + data


def parse_frames(stream: bytes, opener=None) -> list[object]:
    out, pos = [], 0
    while pos < len(stream):
        (length,) = struct.unpack_from("i", stream, pos)
        data = stream[pos + 4 : pos + 4 + length]
        pos += 4 + length
        data = opener.open(data) if is_sealed(data) else FERNET.decrypt(data)
        out.append(raft_pickle.loads(zlib.decompress(data)))
    return out


class Pair:
    """Our connection on one end of a socket pair; the test speaks raw frames on the other."""

    def __init__(self) -> None:
        self.poller = createPoller("auto")
        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.peer.settimeout(5)
        self.received: list[object] = []
        self.conn = HardenedTcpConnection(poller=self.poller, socket=ours, timeout=30, recvBufferSize=65536)
        self.conn.encryptor = FERNET
        self.conn.cipher = FrameCipher(SECRET)
        self.conn.frame_limit = MAX_FRAME_BYTES
        self.conn.setOnMessageReceivedCallback(self.received.append)

    def pump(self, until, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            self.poller.poll(0.01)

    def sent(self) -> bytes:
        self.peer.setblocking(False)
        chunks = []
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        self.peer.setblocking(True)
        return b"".join(chunks)

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


def test_a_peer_of_an_earlier_version_is_spoken_to_in_fernet(pair: Pair) -> None:
    pair.peer.sendall(frame_of({"n": 1}) + frame_of({"n": 2}))
    pair.pump(lambda: len(pair.received) == 2)
    assert pair.received == [{"n": 1}, {"n": 2}]
    pair.conn.send({"reply": True})
    raw = pair.sent()
    assert raw[4:5] == b"g"  # a Fernet token, which the old peer reads
    assert parse_frames(raw) == [{"reply": True}]
    assert not pair.conn.sealing


def test_a_peer_that_seals_is_answered_sealed(pair: Pair) -> None:
    peer_sealer = FrameCipher(SECRET).sealer()
    pair.peer.sendall(frame_of({"n": 1}, peer_sealer.seal))
    pair.pump(lambda: pair.received)
    assert pair.received == [{"n": 1}]
    pair.conn.send({"reply": True})
    raw = pair.sent()
    assert is_sealed(raw[4:])
    assert parse_frames(raw, FrameCipher(SECRET).opener()) == [{"reply": True}]


def test_fernet_after_sealed_frames_is_a_downgrade_and_closes(pair: Pair) -> None:
    pair.peer.sendall(frame_of({"n": 1}, FrameCipher(SECRET).sealer().seal))
    pair.pump(lambda: pair.received)
    pair.peer.sendall(frame_of({"n": 2}))
    pair.pump(lambda: pair.conn.state == CONNECTION_STATE.DISCONNECTED)
    assert pair.conn.state == CONNECTION_STATE.DISCONNECTED
    assert pair.received == [{"n": 1}]


@pytest.mark.parametrize("fault", ["wrong key", "tampered", "truncated", "replayed"])
def test_a_bad_sealed_frame_closes_the_connection(pair: Pair, fault: str) -> None:
    sealer = FrameCipher("another-secret" if fault == "wrong key" else SECRET).sealer()
    good = frame_of({"n": 1}, sealer.seal)
    if fault == "tampered":
        bad = good[:-3] + bytes([good[-3] ^ 0x40]) + good[-2:]
    elif fault == "truncated":  # a frame whose length says so: the ciphertext lacks its tag's end
        body = good[4:-5]
        bad = struct.pack("i", len(body)) + body
    elif fault == "replayed":
        pair.peer.sendall(good)
        pair.pump(lambda: pair.received)
        bad = good
    else:
        bad = good
    pair.peer.sendall(bad)
    pair.pump(lambda: pair.conn.state == CONNECTION_STATE.DISCONNECTED)
    assert pair.conn.state == CONNECTION_STATE.DISCONNECTED
    assert pair.received == ([{"n": 1}] if fault == "replayed" else [])
