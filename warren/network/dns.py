"""The embedded DNS (ADR 17): each node answers its tasks' queries for services — `NAME` is the
service's VIP, `tasks.NAME` its tasks' addresses — and forwards every other query to the
host's own resolvers.

Names are scoped by network (#14, ADR 47): a service's name, its `tasks.` name and its aliases
on a network are answered only to a task on that network, known by the query's source address;
to any other asker they do not exist (NXDOMAIN, never forwarded: the name is ours).

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
from typing import TYPE_CHECKING

from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSHeader, DNSRecord

from warren.aio import wait_within

if TYPE_CHECKING:
    from warren.network.lb import Endpoint

log = logging.getLogger(__name__)

TTL = 5  # seconds: tasks come and go; resolvers must ask again soon
FORWARD_TIMEOUT = 2.0
MAX_MESSAGE = 4096


@dataclass(frozen=True)
class Records:
    """What the node answers for: lower-case names without the trailing dot -> IPv4 addresses.
    `names` are answered to anyone; `scoped` (network -> names -> addresses) only to the task
    addresses `members` puts on that network, and to the `trusted` sources (the node itself)."""

    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    scoped: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    members: Mapping[str, frozenset[str]] = field(default_factory=dict)  # task address -> networks
    trusted: frozenset[str] = frozenset()

    @staticmethod
    def of_services(services: Iterable[tuple[str, str, tuple[str, ...]]]) -> Records:
        """From (name, VIP, task addresses) triples: NAME -> VIP, tasks.NAME -> addresses."""
        names: dict[str, tuple[str, ...]] = {}
        for name, vip, backends in services:
            names.update(_service_names(name, vip, backends))
        return Records(names)

    @staticmethod
    def of_endpoints(endpoints: Iterable[Endpoint], trusted: Iterable[str] = ()) -> Records:
        """A service with networks is named on each of them (its aliases on theirs only); one
        without (an older manager's endpoints) is named to everyone."""
        names: dict[str, tuple[str, ...]] = {}
        scoped: dict[str, dict[str, tuple[str, ...]]] = {}
        members: dict[str, set[str]] = {}
        for ep in sorted(endpoints, key=lambda e: e.name):
            own = _service_names(ep.name, ep.vip, ep.backends)
            if not ep.networks:
                names.update(own)
                continue
            for network in ep.networks:
                scoped.setdefault(network, {}).update(own)
            for network, alias in ep.aliases:
                if network in ep.networks and ep.vip:
                    scoped.setdefault(network, {}).setdefault(alias.lower(), (ep.vip,))
            for address in ep.members:
                members.setdefault(address, set()).update(ep.networks)
        frozen = {address: frozenset(networks) for address, networks in members.items()}
        return Records(names, scoped, frozen, frozenset(trusted))

    def lookup(self, name: str, source: str) -> tuple[bool, tuple[str, ...]] | None:
        """Whether `source` may see `name`, and its addresses: None if the name is not ours
        (forward it); (False, ()) if it is ours but on none of the asker's networks."""
        if name in self.names:
            return True, self.names[name]
        if not any(name in names for names in self.scoped.values()):
            return None
        networks = self.scoped.keys() if source in self.trusted else self.members.get(source, frozenset())
        visible = [self.scoped[n][name] for n in networks if name in self.scoped.get(n, {})]
        return bool(visible), tuple(sorted({address for found in visible for address in found}))


def _service_names(name: str, vip: str, backends: Iterable[str]) -> dict[str, tuple[str, ...]]:
    key = name.lower()
    names = {f"tasks.{key}": tuple(sorted(backends))}
    if vip:
        names[key] = (vip,)
    return names


def answer(query: bytes, records: Records, source: str = "") -> bytes | None:
    """The reply to `query` if it asks for one of `records` (A: the addresses; any other type:
    an empty answer; a name the asker at `source` may not see: NXDOMAIN), a FORMERR reply for a
    malformed query, or None to forward it."""
    try:
        request = DNSRecord.parse(query)
    except (DNSError, ValueError, IndexError):
        return _formerr(query) if len(query) >= 2 else None
    if not request.questions:
        return _formerr(query)
    question = request.q
    name = str(question.qname).rstrip(".").lower()
    found = records.lookup(name, source)
    if found is None:
        return None
    visible, addresses = found
    reply = request.reply()
    if not visible:
        reply.header.rcode = RCODE.NXDOMAIN
        return reply.pack()
    if question.qtype in (QTYPE.A, QTYPE.ANY):
        for address in addresses:
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
        reply = answer(data, self.records, addr[0])
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
        return await wait_within(done, FORWARD_TIMEOUT)
    finally:
        transport.close()
