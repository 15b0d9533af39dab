"""A service's endpoint as an agent holds it, from the dispatcher's entry, and its digest (ADR 81).

An agent that opens a new session (after a leader change, say) sends the digest of each endpoint
it holds, and the manager sends again only those whose digest differs from its own. Both sides
compute the digest of the same value: the `Endpoint` that `endpoint_of` makes of an entry, which
is what the agent holds (patches keep it as a whole entry would make it). A digest that differs
for any other reason (another version of Warren on one side) only costs the entry being sent.

Pure: the entry is read by its fields (`EntryFields`), so this module imports no protobuf code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

import msgspec

from warren.network.lb import Endpoint

DIGEST_SIZE = 16  # bytes: a collision among a cluster's services is out of reach
# What a session request may carry (the managers refuse more): at most this many digests, each
# for a name of at most MAX_NAME_BYTES. An agent that holds more or longer sends none for them:
# refused, it would be refused again at every reconnect.
MAX_DIGESTS = 100_000
MAX_NAME_BYTES = 255

_encoder = msgspec.msgpack.Encoder()


class _PortFields(Protocol):
    @property
    def protocol(self) -> str: ...
    @property
    def published(self) -> int: ...
    @property
    def target(self) -> int: ...
    @property
    def mode(self) -> str: ...


class _AliasFields(Protocol):
    @property
    def network(self) -> str: ...
    @property
    def alias(self) -> str: ...


class EntryFields(Protocol):
    """The fields of a dispatcher ServiceEndpoint that make an endpoint (a whole entry's)."""

    @property
    def name(self) -> str: ...
    @property
    def vip(self) -> str: ...
    @property
    def backends(self) -> Iterable[str]: ...
    @property
    def ports(self) -> Iterable[_PortFields]: ...
    @property
    def canary(self) -> Iterable[str]: ...
    @property
    def canary_weight(self) -> int: ...
    @property
    def networks(self) -> Iterable[str]: ...
    @property
    def members(self) -> Iterable[str]: ...
    @property
    def aliases(self) -> Iterable[_AliasFields]: ...
    @property
    def internal(self) -> bool: ...


def endpoint_of(entry: EntryFields) -> Endpoint:
    """A service's endpoint as the load balancer reads it, from a whole entry."""
    ports = [(p.protocol, p.published, p.target, p.mode == "host") for p in entry.ports]
    return Endpoint(
        entry.name,
        entry.vip,
        tuple(entry.backends),
        tuple((protocol, published, target) for protocol, published, target, host in ports if not host),
        canary=tuple(entry.canary),
        canary_weight=entry.canary_weight,
        host_ports=tuple((protocol, published, target) for protocol, published, target, host in ports if host),
        networks=tuple(entry.networks),
        members=tuple(entry.members),
        aliases=tuple((a.network, a.alias) for a in entry.aliases),
        internal=entry.internal,
    )


def sendable(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """The endpoints whose digests a session request may carry: none if there are too many."""
    named = [e for e in endpoints if 0 < len(e.name.encode()) <= MAX_NAME_BYTES]
    return named if len(named) <= MAX_DIGESTS else []


def endpoint_digest(endpoint: Endpoint) -> bytes:
    """A digest of every field of `endpoint`, in order (its lists come sorted, as entries send
    them, so the same endpoint always has the same digest)."""
    return hashlib.blake2b(_encoder.encode(endpoint), digest_size=DIGEST_SIZE).digest()
