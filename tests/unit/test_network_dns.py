"""The embedded DNS (ADR 17): service names from the cluster, everything else forwarded."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from tests.fixtures.ports import free_port
from warren.network.dns import DnsServer, Records, answer, host_resolvers

RECORDS = Records.of_services([("Web", "10.201.0.1", ("10.200.1.2", "10.200.0.2")), ("idle", "10.201.0.2", ())])


def _ask(name: str, qtype: str = "A") -> DNSRecord:
    reply = answer(DNSRecord.question(name, qtype).pack(), RECORDS)
    assert reply is not None
    return DNSRecord.parse(reply)


def test_service_names_resolve_to_the_vip_and_tasks_names_to_the_tasks() -> None:
    assert [str(r.rdata) for r in _ask("web").rr] == ["10.201.0.1"]
    assert [str(r.rdata) for r in _ask("WEB.").rr] == ["10.201.0.1"]  # any case, with the root dot
    assert [str(r.rdata) for r in _ask("tasks.web").rr] == ["10.200.0.2", "10.200.1.2"]
    assert _ask("tasks.idle").rr == [] and _ask("tasks.idle").header.rcode == RCODE.NOERROR
    assert _ask("web", "AAAA").rr == []  # known name, no IPv6 address: empty, not NXDOMAIN
    assert all(r.ttl == 5 for r in _ask("web").rr)


def test_other_names_are_forwarded_and_junk_gets_formerr() -> None:
    assert answer(DNSRecord.question("example.org").pack(), RECORDS) is None
    junk = answer(b"\xab\xcdnot a dns message", RECORDS)
    assert junk is not None
    header = DNSRecord.parse(junk).header
    assert (header.id, header.rcode) == (0xABCD, RCODE.FORMERR)
    assert answer(b"\x01", RECORDS) is None  # not even an id to answer to


def test_host_resolvers_leave_out_our_own_address(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("search lan\nnameserver 10.200.0.1\nnameserver 192.0.2.53\nnameserver fe80::1\n")
    assert host_resolvers(conf, exclude=["10.200.0.1"]) == ["192.0.2.53"]
    assert host_resolvers(tmp_path / "missing") == []


def test_the_server_answers_its_names_and_relays_the_rest_to_an_upstream() -> None:
    class Upstream(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            reply = DNSRecord.parse(data).reply()
            reply.add_answer(RR("example.org", QTYPE.A, rdata=A("192.0.2.7"), ttl=60))
            self.transport.sendto(reply.pack(), addr)  # type: ignore[attr-defined]

    async def scenario() -> tuple[DNSRecord, DNSRecord, DNSRecord]:
        loop = asyncio.get_running_loop()
        upstream_port, port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
        upstream, _ = await loop.create_datagram_endpoint(Upstream, local_addr=("127.0.0.1", upstream_port))
        server = await DnsServer.serve("127.0.0.1", port, ["127.0.0.1"], upstream_port=upstream_port)
        server.records = RECORDS
        dead_port = free_port(socket.SOCK_DGRAM)
        dead = await DnsServer.serve("127.0.0.1", dead_port, [], upstream_port=upstream_port)
        try:
            own = await _query(port, "web")
            relayed = await _query(port, "example.org")
            failed = await _query(dead_port, "example.org")
        finally:
            server.close()
            dead.close()
            upstream.close()
        return own, relayed, failed

    own, relayed, failed = asyncio.run(scenario())
    assert [str(r.rdata) for r in own.rr] == ["10.201.0.1"]
    assert [str(r.rdata) for r in relayed.rr] == ["192.0.2.7"]
    assert failed.header.rcode == RCODE.SERVFAIL  # no upstream: a clear failure, not silence


async def _query(port: int, name: str) -> DNSRecord:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        await loop.sock_sendall(sock, DNSRecord.question(name).pack())
        data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
    return DNSRecord.parse(data)
