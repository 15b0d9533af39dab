"""The embedded DNS (ADR 17): each node answers its tasks' queries for services — `NAME` is the
service's VIP, `tasks.NAME` its tasks' addresses — and forwards every other query to the
host's own resolvers.

`answer` is pure (a query's bytes and the records in, a reply's bytes out, or None when the
name is not ours); `DnsServer` is the asyncio UDP adapter around it. The wire format is
dnslib's (ADR 11).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSHeader, DNSRecord

log = logging.getLogger(__name__)

TTL = 5  # seconds: tasks come and go; resolvers must ask again soon
FORWARD_TIMEOUT = 2.0
MAX_MESSAGE = 4096


@dataclass(frozen=True)
class Records:
    """What the node answers for: lower-case names without the trailing dot -> IPv4 addresses."""

    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @staticmethod
    def of_services(services: Iterable[tuple[str, str, tuple[str, ...]]]) -> Records:
        """From (name, VIP, task addresses) triples: NAME -> VIP, tasks.NAME -> addresses."""
        names: dict[str, tuple[str, ...]] = {}
        for name, vip, backends in services:
            key = name.lower()
            if vip:
                names[key] = (vip,)
            names[f"tasks.{key}"] = tuple(sorted(backends))
        return Records(names)


def answer(query: bytes, records: Records) -> bytes | None:
    """The reply to `query` if it asks for one of `records` (A: the addresses; any other type:
    an empty answer), a FORMERR reply for a malformed query, or None to forward it."""
    try:
        request = DNSRecord.parse(query)
    except (DNSError, ValueError, IndexError):
        return _formerr(query) if len(query) >= 2 else None
    if not request.questions:
        return _formerr(query)
    question = request.q
    name = str(question.qname).rstrip(".").lower()
    if name not in records.names:
        return None
    reply = request.reply()
    if question.qtype in (QTYPE.A, QTYPE.ANY):
        for address in records.names[name]:
            reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(address), ttl=TTL))
    return reply.pack()


def _formerr(query: bytes) -> bytes:
    """FORMERR for a query we cannot read, with its id so that the asker matches it."""
    return DNSRecord(DNSHeader(id=int.from_bytes(query[:2], "big"), qr=1, rcode=RCODE.FORMERR)).pack()


def host_resolvers(path: Path = Path("/etc/resolv.conf"), exclude: Iterable[str] = ()) -> list[str]:
    """The nameservers of the host's resolv.conf (IPv4 only), without our own address."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    skip = set(exclude)
    servers = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and "." in parts[1] and parts[1] not in skip:
            servers.append(parts[1])
    return servers


class DnsServer(asyncio.DatagramProtocol):
    """UDP on (address, port): answers from `records`, forwards the rest to `upstreams`."""

    def __init__(self, upstreams: list[str], upstream_port: int = 53) -> None:
        self.records = Records()
        self.upstreams = upstreams
        self.upstream_port = upstream_port
        self._transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def serve(cls, host: str, port: int, upstreams: list[str], upstream_port: int = 53) -> DnsServer:
        loop = asyncio.get_running_loop()
        server = cls(upstreams, upstream_port)
        await loop.create_datagram_endpoint(lambda: server, local_addr=(host, port))
        return server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > MAX_MESSAGE:
            return
        reply = answer(data, self.records)
        if reply is not None:
            self._send(reply, addr)
        else:
            asyncio.get_running_loop().create_task(self._forward(data, addr))

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    async def _forward(self, query: bytes, addr: tuple[str, int]) -> None:
        for upstream in self.upstreams:
            try:
                reply = await _ask(upstream, self.upstream_port, query)
            except (OSError, TimeoutError):
                continue
            self._send(reply, addr)
            return
        try:
            failed = DNSRecord.parse(query).reply()
        except Exception:
            return
        failed.header.rcode = RCODE.SERVFAIL
        self._send(failed.pack(), addr)


async def _ask(host: str, port: int, query: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()

    class _Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, _addr: tuple[str, int]) -> None:
            if not done.done():
                done.set_result(data)

        def error_received(self, exc: Exception) -> None:
            if not done.done():
                done.set_exception(exc)

    transport, _ = await loop.create_datagram_endpoint(_Client, remote_addr=(host, port))
    try:
        transport.sendto(query)
        return await asyncio.wait_for(done, FORWARD_TIMEOUT)
    finally:
        transport.close()
