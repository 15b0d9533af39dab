"""One Raft connection between managers, hardened (ADR 20): PySyncObj's TcpConnection with a
frame bound (small until the peer has proven it holds the secret), a linear read buffer, and
frames sealed with AES-GCM between managers that both can (ADR 67, `raft_cipher`). The listener
and the transport around it are in `raft_transport`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
import zlib
from typing import Any

import pysyncobj.pickle as raft_pickle
from pysyncobj.monotonic import monotonic as raft_clock
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection, _getAddrType

from warren.manager.raft_cipher import FrameCipher, FrameError, Opener, Sealer, is_sealed

log = logging.getLogger(__name__)

# Before the key exchange only two small frames are legitimate: the peer's random key and its
# address, each a Fernet token of a few hundred bytes.
PRE_AUTH_FRAME_BYTES = 16 << 10


# After it, a frame holds at most appendEntriesBatchSizeBytes (64 KiB) of entries plus one
# entry, or one forwarded command, or a 64 KiB snapshot chunk. Entries are bounded (commands by
# commands.MAX_COMMAND_BYTES, batches by raft_proposals.MAX_BATCH_BYTES; the gRPC API takes requests of
# 4 MiB at most), and Fernet adds a third (base64): 16 MiB leaves a wide margin.
MAX_FRAME_BYTES = 16 << 20


# Reading stops once this much is buffered, so that frames are checked (and a bad one closes
# the connection) before more is read.
READ_AHEAD_BYTES = 1 << 20


_LENGTH = struct.Struct("i")  # PySyncObj's framing: native signed int


class RateLimitedLog:
    """Log a kind of event at most once per `period` seconds, with how many were not logged."""

    def __init__(self, logger: logging.Logger, period: float = 10.0) -> None:
        self._log = logger
        self._period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = raft_clock()
        if now - self._last.get(kind, -self._period) < self._period:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        suppressed = self._suppressed.pop(kind, 0)
        self._last[kind] = now
        if suppressed:
            message += f" ({suppressed} more since the last report)"
        self._log.warning(message, *args)


_warn = RateLimitedLog(log)


class HardenedTcpConnection(TcpConnection):
    """TcpConnection with a bounded frame length and a read buffer that is not copied per read.

    `frame_limit` starts at PRE_AUTH_FRAME_BYTES; the transport raises it once the peer has
    shown it holds the secret."""

    # TcpConnection's state this reads and writes (PySyncObj has no types).
    _TcpConnection__socket: Any  # a socket, None once closed
    _TcpConnection__writeBuffer: bytes
    recvLastTimestamp: int
    sendRandKey: Any

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.frame_limit = PRE_AUTH_FRAME_BYTES
        self.accepted_at = raft_clock()
        self.peer_ip = ""
        self.source_ip = ""  # outgoing connections start from this address, if set
        self._buffer = bytearray()
        self._consumed = 0  # bytes of _buffer already parsed
        # Sealed frames (ADR 67): the transport sets `cipher` when the cluster has a secret.
        self.cipher: FrameCipher | None = None
        self._sealer: Sealer | None = None  # set once the peer is known to read sealed frames
        self._opener: Opener | None = None  # set by the first sealed frame; Fernet refused after

    def seal_sends(self) -> None:
        """The peer reads sealed frames: seal ours from now on (this connection only)."""
        if self.cipher is not None and self._sealer is None:
            self._sealer = self.cipher.sealer()

    @property
    def sealing(self) -> bool:
        return self._sealer is not None

    def send(self, message) -> None:
        """PySyncObj's send, sealing the frame with AES-GCM once the peer reads it (else Fernet)."""
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        data = zlib.compress(raft_pickle.dumps(message), 3)
        if self._sealer is not None:
            data = self._sealer.seal(data)
        elif self.encryptor:
            data = self.encryptor.encrypt_at_time(data, int(raft_clock()))
        self._TcpConnection__writeBuffer += _LENGTH.pack(len(data)) + data
        self._TcpConnection__trySendBuffer()

    def _reset_cipher(self) -> None:
        self._sealer = None
        self._opener = None

    def _unseal(self, data: bytes) -> bytes:
        """A frame's plain bytes, sealed (AES-GCM) or Fernet as the peer sent it; raises if it
        does not authenticate. Once a peer has sealed a frame, Fernet from it is refused."""
        if is_sealed(data) and self.cipher is not None:
            if self._opener is None:
                self._opener = self.cipher.opener()
            data = self._opener.open(data)
            self.seal_sends()  # a peer that seals reads sealed frames
            return data
        if self._opener is not None:
            raise FrameError("a Fernet frame from a peer that sealed its frames before (a downgrade)")
        timestamp = self.encryptor.extract_timestamp(data)
        if timestamp < self.recvLastTimestamp:
            raise ValueError("replayed message")
        self.recvLastTimestamp = timestamp
        return self.encryptor.decrypt(data)

    def connect(self, host, port):
        self._reset_buffer()
        self._reset_cipher()
        # Until the peer answers our key exchange (without encryption there is none to wait for).
        self.frame_limit = PRE_AUTH_FRAME_BYTES if self.encryptor else MAX_FRAME_BYTES
        if not self.source_ip or host is None:
            return super().connect(host, port)
        # PySyncObj's connect, but from our advertised address, which is what the peer's
        # member-address filter expects (the kernel would pick the route's preferred source).
        sock = socket.socket(_getAddrType(host), socket.SOCK_STREAM)
        with contextlib.suppress(OSError):  # not an address of this host (NAT): the kernel chooses
            sock.bind((self.source_ip, 0))
        self._TcpConnection__state = CONNECTION_STATE.DISCONNECTED
        self._TcpConnection__fileno = None
        self._TcpConnection__socket = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._TcpConnection__sendBufferSize)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._TcpConnection__recvBufferSize)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.setSockoptKeepalive()
        sock.setblocking(False)
        self._TcpConnection__readBuffer = b""
        self._TcpConnection__writeBuffer = b""
        self._TcpConnection__lastReadTime = raft_clock()
        try:
            sock.connect((host, port))
        except OSError as e:
            if e.errno not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                sock.close()
                self._TcpConnection__socket = None
                return False
        self._TcpConnection__fileno = sock.fileno()
        self._TcpConnection__state = CONNECTION_STATE.CONNECTING
        self._TcpConnection__poller.subscribe(
            self._TcpConnection__fileno,
            self._TcpConnection__processConnection,
            POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR,
        )
        return True

    def disconnect(self) -> None:
        self._reset_buffer()
        self._reset_cipher()
        super().disconnect()

    def _reset_buffer(self) -> None:
        self._buffer = bytearray()
        self._consumed = 0

    def _buffered(self) -> int:
        return len(self._buffer) - self._consumed

    def _TcpConnection__processRead(self) -> bool:
        sock = self._TcpConnection__socket
        try:
            incoming = sock.recv(self._TcpConnection__recvBufferSize)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.disconnect()
            return False
        if not incoming:
            self.disconnect()
            return False
        self._buffer += incoming  # amortised append, not a copy of the whole buffer
        if not self._frame_header_ok():
            return False
        if self._buffered() < 4:
            return True
        # Read on until the next frame is complete (its length was checked), then stop once
        # enough is buffered, so that it is parsed (and verified) first: the socket stays
        # readable, and the poller comes back to it on the next tick.
        (length,) = _LENGTH.unpack_from(self._buffer, self._consumed)
        complete = self._buffered() >= 4 + length
        return not complete or self._buffered() < min(READ_AHEAD_BYTES, self.frame_limit)

    def _frame_header_ok(self) -> bool:
        """Close the connection as soon as the next frame announces more than it may send."""
        if self._buffered() < 4:
            return True
        (length,) = _LENGTH.unpack_from(self._buffer, self._consumed)
        if 0 <= length <= self.frame_limit:
            return True
        _warn.warning(
            "frame",
            "closing a Raft connection from %s: it announced a %d-byte message (limit %d)",
            self.peer_ip or "a peer",
            length,
            self.frame_limit,
        )
        self.disconnect()
        return False

    def _TcpConnection__processParseMessage(self):
        if not self._frame_header_ok() or self._buffered() < 4:
            return None
        start = self._consumed
        (length,) = _LENGTH.unpack_from(self._buffer, start)
        if self._buffered() - 4 < length:
            return None
        data = bytes(self._buffer[start + 4 : start + 4 + length])
        try:
            if self.encryptor:
                data = self._unseal(data)
            message = raft_pickle.loads(zlib.decompress(data))
            if self.recvRandKey:
                rand_key, message = message
                if rand_key != self.recvRandKey:
                    raise ValueError("wrong session key")
        except Exception:
            if self.frame_limit == PRE_AUTH_FRAME_BYTES:
                _warn.warning("auth", "closing a Raft connection from %s: it does not hold the secret", self.peer_ip)
            self.disconnect()
            return None
        self._consumed = start + 4 + length
        # Drop parsed bytes once they are most of the buffer: linear overall.
        if self._consumed > 65536 and self._consumed * 2 > len(self._buffer):
            del self._buffer[: self._consumed]
            self._consumed = 0
        return message
