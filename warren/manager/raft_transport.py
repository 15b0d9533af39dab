"""PySyncObj's TCP transport, hardened against whoever can reach the Raft port (ADR 20).

PySyncObj checks each message's Fernet signature (the cluster's Raft secret) before it
unpickles it, so no code runs; but the transport around that check trusted the peer:
- a frame's 4-byte length was unbounded, and every read copied the whole buffer;
- a connection that never finished the key exchange was kept for ever;
- accept() failing with EMFILE closed the listening socket for good;
- the listen backlog was 5, and any address could connect.

Here the same wire protocol runs with: a frame bound (small until the peer has proven it holds
the secret), a linear read buffer, an authentication deadline, an accept loop that backs off
and sheds unauthenticated connections when descriptors run out, a large backlog, and a first
filter on the source address (the IP addresses of the current Raft members; membership changes
reach it because it is read from the transport's own member set on every accept).

It also makes the reassembly of a chunked entry correct (see `_onMessageReceived`). Each
connection (its frame bounds, its read buffer, its AES-GCM sealing, ADR 67) is in
`raft_connection`; the listener and the transport are here.

Everything subclasses PySyncObj 0.3.17's classes and overrides a few name-mangled methods;
`_check_pysyncobj` fails at import if those are gone, rather than leaving the port open.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import os
import socket

import pysyncobj.pickle as raft_pickle
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.monotonic import monotonic as raft_clock
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.tcp_server import SERVER_STATE, TcpServer
from pysyncobj.transport import TCPTransport

from warren.manager.raft_cipher import HANDSHAKE_MARKER, FrameCipher
from warren.manager.raft_connection import MAX_FRAME_BYTES, HardenedTcpConnection, RateLimitedLog

log = logging.getLogger(__name__)
_warn = RateLimitedLog(log)

# A peer that holds the secret completes the exchange in one round trip.
AUTH_TIMEOUT = 3.0
# Connections accepted but not yet authenticated; past this the oldest is closed.
MAX_UNAUTHENTICATED = 128
LISTEN_BACKLOG = 1024
ACCEPTS_PER_EVENT = 64
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 1.0
# A chunked entry being reassembled: entries are a few MiB at most, even pickled.
MAX_TRANSMISSION_BYTES = 64 << 20
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class HardenedTcpServer(TcpServer):
    """TcpServer whose listener survives accept() errors and only admits member addresses."""

    def __init__(self, poller, host, port, on_new_connection, transport: HardenedTransport, **kwargs) -> None:
        super().__init__(poller, host, port, on_new_connection, **kwargs)
        self._transport = transport
        self._paused_until: float | None = None
        self._backoff = ACCEPT_BACKOFF_MIN

    def bind(self) -> None:
        super().bind()
        self._TcpServer__socket.listen(LISTEN_BACKLOG)  # a second listen() only resizes the backlog

    def unbind(self) -> None:
        self._paused_until = None
        super().unbind()

    def resume_if_due(self) -> None:
        """Called every tick: listen again once an out-of-descriptors pause is over."""
        if self._paused_until is None or raft_clock() < self._paused_until:
            return
        self._paused_until = None
        if self._TcpServer__state == SERVER_STATE.BINDED and self._TcpServer__fileno is not None:
            self._TcpServer__poller.subscribe(
                self._TcpServer__fileno, self._TcpServer__onNewConnection, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
            )

    def _pause(self) -> None:
        # The pending connection stays in the backlog and the socket stays readable: stop
        # polling it for a while, or the tick thread would spin on accept().
        self._TcpServer__poller.unsubscribe(self._TcpServer__fileno)
        self._paused_until = raft_clock() + self._backoff
        self._backoff = min(self._backoff * 2, ACCEPT_BACKOFF_MAX)

    def _TcpServer__onNewConnection(self, descr, event) -> None:
        if event & POLL_EVENT_TYPE.ERROR:
            # PySyncObj unbinds here and never binds again: keep the listener instead.
            _warn.warning("listener", "the Raft listening socket reported an error; it keeps listening")
        if not event & POLL_EVENT_TYPE.READ:
            return
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                sock, addr = self._TcpServer__socket.accept()
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in _OUT_OF_DESCRIPTORS:
                    shed = self._transport.shed_unauthenticated()
                    _warn.warning(
                        "descriptors",
                        "Raft listener: accept() failed (%s); closed %d unauthenticated connections, "
                        "accepting again in %.2fs",
                        errno.errorcode.get(e.errno, e.errno),
                        shed,
                        self._backoff,
                    )
                    self._pause()
                    return
                if e.errno == errno.EINTR:
                    continue
                # ECONNABORTED, EPROTO, EPERM (a firewall)...: that connection is gone, not the listener.
                log.debug("Raft listener: accept() failed: %s", e)
                continue
            self._backoff = ACCEPT_BACKOFF_MIN
            self._admit(sock, addr)

    def _admit(self, sock: socket.socket, addr: tuple) -> None:
        peer_ip = _normalise_ip(addr[0])
        if peer_ip not in self._transport.member_ips():
            _warn.warning("address", "refused a Raft connection from %s: not the address of a manager", peer_ip)
            sock.close()
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._TcpServer__sendBufferSize)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._TcpServer__recvBufferSize)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            conn = HardenedTcpConnection(
                poller=self._TcpServer__poller,
                socket=sock,
                timeout=self._TcpServer__connectionTimeout,
                sendBufferSize=self._TcpServer__sendBufferSize,
                recvBufferSize=self._TcpServer__recvBufferSize,
                keepalive=self._TcpServer__keepalive,
            )
        except OSError as e:  # reset by the peer already
            log.debug("Raft listener: dropping a new connection: %s", e)
            sock.close()
            return
        conn.peer_ip = peer_ip
        conn.cipher = self._transport.cipher
        self._TcpServer__onNewConnectionCallback(conn)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _normalise_ip(ip: str) -> str:
    try:
        parsed = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


class HardenedTransport(TCPTransport):
    """TCPTransport with the hardened connection and server, an authentication deadline for
    incoming connections, and correct reassembly of chunked entries."""

    def __init__(self, syncObj, selfNode, otherNodes) -> None:
        self._pending: dict[HardenedTcpConnection, float] = {}  # unauthenticated -> accepted at
        self._next_sweep = 0.0
        self._transmission_parts = 0
        password = syncObj.conf.password
        self.cipher = FrameCipher(password) if password else None  # before any connection exists
        super().__init__(syncObj, selfNode, otherNodes)

    # -- admission ---------------------------------------------------------------------------
    def member_ips(self) -> set[str]:
        """The IP addresses of the current members (this one included): the source addresses
        Raft connections may come from. Read per accept, so membership changes apply at once."""
        ips = set()
        for node in [*self._nodes, self._selfNode]:
            if node is None:
                continue
            host = node.host.strip("[]")
            ip = host if _is_ip(host) else globalDnsResolver().resolve(host)  # cached by PySyncObj
            if ip:
                ips.add(_normalise_ip(ip))
        return ips

    def _source_ip(self) -> str:
        """Our advertised Raft IP, if it is a literal address: the one peers will admit."""
        if self._selfNode is None:
            return ""
        host = self._selfNode.host.strip("[]")
        return host if _is_ip(host) else ""

    def _createServer(self) -> None:
        conf = self._syncObj.conf
        if conf.bindAddress is not None:
            host, port = conf.bindAddress.rsplit(":", 1)
        else:
            host, port = self._selfNode.address.rsplit(":", 1)
            host = "::" if ":" in host else "0.0.0.0"
        if host not in ("0.0.0.0", "::"):
            host = globalDnsResolver().resolve(host)
        self._server = HardenedTcpServer(
            self._syncObj._poller,
            host,
            port,
            self._onNewIncomingConnection,
            transport=self,
            sendBufferSize=conf.sendBufferSize,
            recvBufferSize=conf.recvBufferSize,
            connectionTimeout=conf.connectionTimeout,
        )

    def _onNewIncomingConnection(self, conn: HardenedTcpConnection) -> None:
        super()._onNewIncomingConnection(conn)
        self._pending[conn] = raft_clock()
        if len(self._pending) > MAX_UNAUTHENTICATED:
            oldest = min(self._pending, key=self._pending.__getitem__)
            _warn.warning(
                "pending", "more than %d unauthenticated Raft connections: closing the oldest", MAX_UNAUTHENTICATED
            )
            self._close_pending(oldest)

    def _onIncomingMessageReceived(self, conn, message) -> None:
        if (
            self._syncObj.encryptor
            and not conn.sendRandKey
            and isinstance(message, bytes)
            and message.startswith(HANDSHAKE_MARKER)
        ):
            conn.seal_sends()  # the dialler reads sealed frames: our answer is sealed (ADR 67)
        super()._onIncomingMessageReceived(conn, message)
        if conn not in self._unknownConnections:
            # Its address came with our random session key, so this is no replay: a member
            # that holds the secret, which may send full-size frames (or it was closed).
            self._pending.pop(conn, None)
            conn.frame_limit = MAX_FRAME_BYTES

    def _onOutgoingConnected(self, conn) -> None:
        if not (self._syncObj.encryptor and self.cipher):
            super()._onOutgoingConnected(conn)
            return
        # PySyncObj's handshake, with our random key marked: a peer of this version answers in
        # sealed frames, one of an earlier version takes the whole as its key and answers in
        # Fernet, and this connection stays Fernet both ways (ADR 67).
        conn.setOnMessageReceivedCallback(functools.partial(self._onOutgoingMessageReceived, conn))
        conn.recvRandKey = HANDSHAKE_MARKER + os.urandom(32)
        conn.send(conn.recvRandKey)

    def _onOutgoingMessageReceived(self, conn, message) -> None:
        conn.frame_limit = MAX_FRAME_BYTES  # its key decrypted: the member holds the secret
        super()._onOutgoingMessageReceived(conn, message)

    def _onDisconnected(self, conn) -> None:
        self._pending.pop(conn, None)
        super()._onDisconnected(conn)

    def _close_pending(self, conn: HardenedTcpConnection) -> None:
        self._pending.pop(conn, None)
        self._unknownConnections.discard(conn)
        conn.disconnect()

    def shed_unauthenticated(self) -> int:
        """Out of descriptors: close the unauthenticated connections older than a round trip
        (a member authenticates within one), or else the oldest, to make room for members."""
        if not self._pending:
            return 0
        now = raft_clock()
        victims = [c for c, accepted in self._pending.items() if now - accepted > 0.1]
        if not victims:
            victims = [min(self._pending, key=self._pending.__getitem__)]
        for conn in victims:
            self._close_pending(conn)
        return len(victims)

    def _onTick(self) -> None:
        now = raft_clock()
        if now >= self._next_sweep:
            self._next_sweep = now + 0.25
            for conn, accepted in list(self._pending.items()):
                if now - accepted > AUTH_TIMEOUT:
                    _warn.warning(
                        "timeout",
                        "closing a Raft connection from %s: not authenticated within %gs",
                        conn.peer_ip,
                        AUTH_TIMEOUT,
                    )
                    self._close_pending(conn)
        if isinstance(self._server, HardenedTcpServer):
            self._server.resume_if_due()
        try:
            super()._onTick()
        except OSError as e:  # socket() for a reconnection failed (EMFILE): retry next tick
            _warn.warning("connect", "cannot open a Raft connection: %s", e)

    # -- outgoing connections ----------------------------------------------------------------
    def addNode(self, node) -> None:
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None and type(conn) is TcpConnection:
            # Rebuild PySyncObj's connection as ours, with the same callbacks.
            conf = self._syncObj.conf
            hardened = HardenedTcpConnection(
                poller=self._syncObj._poller,
                timeout=conf.connectionTimeout,
                sendBufferSize=conf.sendBufferSize,
                recvBufferSize=conf.recvBufferSize,
                keepalive=conf.tcp_keepalive,
            )
            hardened.encryptor = self._syncObj.encryptor
            hardened.cipher = self.cipher
            hardened.source_ip = self._source_ip()
            hardened.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, hardened))
            hardened.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
            hardened.setOnDisconnectedCallback(functools.partial(self._onDisconnected, hardened))
            self._connections[node] = hardened

    # -- chunked entries ---------------------------------------------------------------------
    def _onMessageReceived(self, node, message) -> None:
        """PySyncObj's leader splits an entry of appendEntriesBatchSizeBytes or more into
        chunks, but labels a chunk 'finish' when it reaches the length of the entry's *data*
        rather than of the pickled entry (a few bytes longer). When a chunk boundary falls in
        between, the last-but-one chunk is labelled 'finish': the follower's unpickling fails
        and the exception aborts its tick. Relabel such a chunk 'process', so that the real
        last chunk completes the entry."""
        if isinstance(message, dict) and message.get("transmission") == "finish":
            message = self._check_finished_transmission(message)
            if message is None:
                return
        super()._onMessageReceived(node, message)

    def _check_finished_transmission(self, message: dict) -> dict | None:
        received = self._syncObj._SyncObj__recvTransmission
        if not isinstance(received, bytes | bytearray):  # '' before the first 'start'
            received = self._syncObj._SyncObj__recvTransmission = b""
        data = message["data"]
        if len(received) + len(data) > MAX_TRANSMISSION_BYTES:
            # Only an entry written before entries were bounded (commands and batches: 1 MiB)
            # can be this large. The leader re-sends it as it is, so this follower cannot pass
            # it: say so loudly, with what to do.
            log.error(
                "a Raft entry from the leader is over %d MiB: this manager cannot take it and will "
                "not catch up; restore it from a snapshot of a healthy manager (remove and re-add it)",
                MAX_TRANSMISSION_BYTES >> 20,
            )
            self._discard_transmission()
            return None
        # A pickle ends with STOP ('.'): a chunk that does not cannot end the entry, and saves
        # an unpickling attempt (PySyncObj pickles bytes as latin-1 text, so an entry of binary
        # data pickles to up to twice its length and most of its chunks come labelled 'finish').
        if not data.endswith(b"."):
            return {**message, "transmission": "process"}
        try:
            entry = raft_pickle.loads(received + data)
        except Exception:
            return {**message, "transmission": "process"}
        if not (isinstance(entry, tuple) and len(entry) == 3):
            self._discard_transmission()
            return None
        return message

    def _discard_transmission(self) -> None:
        # Not an entry: drop what was gathered. The leader's next append then fails the
        # log-matching check and it re-sends from where this follower's log ends.
        _warn.warning("transmission", "discarding a chunked Raft entry that does not reassemble")
        self._syncObj._SyncObj__recvTransmission = b""


def _check_pysyncobj() -> None:
    """Our overrides of name-mangled methods would silently do nothing if PySyncObj renamed
    the originals: refuse to run instead of leaving the port unprotected."""
    needed = {
        TcpConnection: [
            "_TcpConnection__processRead",
            "_TcpConnection__processParseMessage",
            "_TcpConnection__processConnection",
            "_TcpConnection__trySendBuffer",
        ],
        TcpServer: ["_TcpServer__onNewConnection"],
        TCPTransport: [
            "_onTick",
            "_onMessageReceived",
            "_onIncomingMessageReceived",
            "_onOutgoingConnected",
            "_onOutgoingMessageReceived",
        ],
    }
    for cls, names in needed.items():
        for name in names:
            if not hasattr(cls, name):
                raise ImportError(
                    f"this PySyncObj has no {cls.__name__}.{name}: the Raft transport hardening needs 0.3.17"
                )


_check_pysyncobj()
