"""An agent's request to open a session, checked (ADR 81, #10): its node description, its
failures in a row, the endpoints it holds already, and whether registering it again would
change anything. `DispatcherService.Session` opens the session with what these return."""

from __future__ import annotations

import grpc
import msgspec

from warren import commands, nodereports, validate
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager.server import ApiError
from warren.model import Node
from warren.network.endpointdigest import DIGEST_SIZE, MAX_DIGESTS, MAX_NAME_BYTES
from warren.nodereports import check_node_description, check_wireguard
from warren.state import ClusterState, Put
from warren.text import shown
from warren.validate import ValidationError


def check_session_request(request: dpb.SessionRequest) -> None:
    """Refuse (INVALID_ARGUMENT) a session whose node description or failure text is malformed."""
    desc = request.description
    try:
        check_node_description(desc.hostname, dict(desc.labels), desc.resources.nano_cpus, desc.resources.memory_bytes)
        check_wireguard(desc.wg_public_key, desc.wg_endpoint)
        for what, value in (("addr", desc.addr), ("os", desc.os), ("arch", desc.arch)):
            nodereports.check_token(f"the node's {what}", value)
        if desc.metrics_addr:
            validate.check_hostport("the node's metrics_addr", desc.metrics_addr)
    except ValidationError as exc:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    if len(request.last_failure) > nodereports.MAX_FAILURE_TEXT:
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT, f"last_failure is at most {nodereports.MAX_FAILURE_TEXT} characters"
        )


def held_endpoints(request: dpb.SessionRequest) -> dict[str, bytes]:
    """The digests of the endpoints the agent holds, by service name (ADR 81). A name is only
    looked up, so any name of a sendable size goes: one that names no service keeps nothing."""
    digests = request.endpoint_digests
    if len(digests) > MAX_DIGESTS:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_DIGESTS} endpoint digests (got {len(digests)})")
    held: dict[str, bytes] = {}
    for entry in digests:
        if not 0 < len(entry.name.encode()) <= MAX_NAME_BYTES:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT, f"an endpoint digest's service name has 1-{MAX_NAME_BYTES} bytes"
            )
        if len(entry.digest) != DIGEST_SIZE:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the endpoint digest of {shown(entry.name)} has {len(entry.digest)} bytes, not {DIGEST_SIZE}",
            )
        held[entry.name] = entry.digest
    return held


def failure_text(text: str) -> str:
    """An agent's failure text as one printable line."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def registers_nothing(state: ClusterState, register: commands.RegisterNode) -> bool:
    """Whether `register` would change nothing but the node's update time: a known node
    reconnecting with the same description (after a leader change, every node does at once,
    #15) then commits nothing. Computed by the command's own handler, so it cannot drift."""
    old = state.nodes.get(register.node.id)
    if old is None:
        return False
    result, changes = commands.apply(state, register)
    if not result.ok or len(changes) != 1 or not isinstance(changes[0], Put):
        return False
    new = changes[0].obj
    return isinstance(new, Node) and msgspec.structs.replace(new, updated_at=old.updated_at) == old
