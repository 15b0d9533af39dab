"""The Control API's networks (#14, ADR 47): create, list, inspect, remove. The cluster's default
network is not stored; it is listed and shown, and refused to create and remove."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import grpc

from warren import commands
from warren.api import convert
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as pb
from warren.commands.networks import DEFAULT_NETWORK, check_network, users
from warren.ids import new_id
from warren.manager.ports import StateReader
from warren.manager.server import ApiError, check_result, resolve_ref
from warren.model import Network
from warren.state import ClusterState
from warren.validate import ValidationError

INVALID = grpc.StatusCode.INVALID_ARGUMENT
# What `network ls` and `inspect` show for the default network (never stored).
DEFAULT = Network(id=DEFAULT_NETWORK, name=DEFAULT_NETWORK)


def resolve_network(state: ClusterState, ref: str) -> Network:
    """A network by name, id, or unique id prefix; `default` is the default network."""
    if ref == DEFAULT_NETWORK:
        return DEFAULT
    return resolve_ref("network", state.networks, state.network_by_name, ref)


def _network_pb(state: ClusterState, network: Network) -> pb.Network:
    return convert.network_to_pb(network, users(state, network.name), builtin=network is DEFAULT)


class NetworksControl:
    """Networks, for ControlService (which provides what is declared here)."""

    _store: StateReader

    if TYPE_CHECKING:

        async def _propose(self, command: commands.Command) -> commands.Result: ...

    async def CreateNetwork(self, request: cpb.CreateNetworkRequest, context: object) -> pb.Network:
        now = time.time()
        network = Network(
            new_id(),
            request.name,
            request.subnet,
            request.internal,
            request.attachable,
            dict(request.labels),
            now,
            now,
        )
        try:
            check_network(network)
        except ValidationError as exc:
            raise ApiError(INVALID, str(exc)) from None
        with self._store.read() as state:
            refusal, _ = commands.apply(state, commands.CreateNetwork(network))
        check_result(refusal)  # a taken name or a clashing subnet, before Raft
        result = await self._propose(commands.CreateNetwork(network))
        with self._store.read() as state:
            created = state.networks.get(result.id)
            if created is None:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"network {request.name} was removed meanwhile")
            return _network_pb(state, created)

    async def ListNetworks(self, request: cpb.ListNetworksRequest, context: object) -> cpb.ListNetworksResponse:
        with self._store.read() as state:
            networks = [DEFAULT, *sorted(state.networks.values(), key=lambda n: n.name)]
            return cpb.ListNetworksResponse(networks=[_network_pb(state, n) for n in networks])

    async def GetNetwork(self, request: cpb.GetNetworkRequest, context: object) -> pb.Network:
        with self._store.read() as state:
            return _network_pb(state, resolve_network(state, request.network))

    async def RemoveNetwork(self, request: cpb.RemoveNetworkRequest, context: object) -> cpb.RemoveNetworkResponse:
        """Refused before Raft when the state as read says it is in use; the committed command
        judges it again against whatever landed meanwhile."""
        with self._store.read() as state:
            network = resolve_network(state, request.network)
            if network is DEFAULT:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "the default network cannot be removed")
            refusal, _ = commands.apply(state, commands.RemoveNetwork(network.id, time.time()))
        check_result(refusal)
        await self._propose(commands.RemoveNetwork(network.id, time.time()))
        return cpb.RemoveNetworkResponse(id=network.id)
