"""The Control API's named volumes (ADR 40): create, list, inspect, remove."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from warren import commands, mounts
from warren.api import convert
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as pb
from warren.ids import new_id
from warren.manager.ports import StateReader
from warren.manager.server import ApiError, check_result, resolve_ref
from warren.model import Node, Volume
from warren.state import ClusterState
from warren.validate import ValidationError, check_labels

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def resolve_volume(state: ClusterState, ref: str) -> Volume:
    return resolve_ref("volume", state.volumes, state.volume_by_name, ref)


def _volume_pb(state: ClusterState, volume: Volume) -> pb.Volume:
    node = state.nodes.get(volume.node_id)
    users = [s.spec.name for s in state.services.values() if volume.name in mounts.volume_names(s.spec)]
    return convert.volume_to_pb(volume, node.hostname if node is not None else "", sorted(users))


class VolumesControl:
    """Named volumes, for ControlService (which provides what is declared here)."""

    _store: StateReader
    _resolve_node: Callable[[ClusterState, str], Node]

    if TYPE_CHECKING:

        async def _propose(self, command: commands.Command) -> commands.Result: ...

    async def CreateVolume(self, request: cpb.CreateVolumeRequest, context: object) -> pb.Volume:
        driver = request.driver or "local"
        options, labels = dict(request.options), dict(request.labels)
        try:
            mounts.check_volume_name(request.name)
            mounts.check_volume_options(driver, options)
            check_labels("volume label", labels)
        except (mounts.MountError, ValidationError) as exc:
            raise ApiError(INVALID, str(exc)) from None
        node_id = ""
        with self._store.read() as state:
            if request.node:
                node_id = self._resolve_node(state, request.node).id
            if state.volume_by_name(request.name) is not None:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"volume name {request.name} is already in use")
        now = time.time()
        volume = Volume(new_id(), request.name, driver, options, labels, node_id, now, now)
        result = await self._propose(commands.CreateVolume(volume))
        with self._store.read() as state:
            created = state.volumes.get(result.id)
            if created is None:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"volume {request.name} was removed meanwhile")
            return _volume_pb(state, created)

    async def ListVolumes(self, request: cpb.ListVolumesRequest, context: object) -> cpb.ListVolumesResponse:
        with self._store.read() as state:
            volumes = sorted(state.volumes.values(), key=lambda v: v.name)
            if request.node:
                node_id = self._resolve_node(state, request.node).id
                volumes = [v for v in volumes if v.node_id == node_id]
            return cpb.ListVolumesResponse(volumes=[_volume_pb(state, v) for v in volumes])

    async def GetVolume(self, request: cpb.GetVolumeRequest, context: object) -> pb.Volume:
        with self._store.read() as state:
            return _volume_pb(state, resolve_volume(state, request.volume))

    async def RemoveVolume(self, request: cpb.RemoveVolumeRequest, context: object) -> cpb.RemoveVolumeResponse:
        """Refused before Raft when the state as read says it is in use; the committed command
        judges it again against whatever landed meanwhile."""
        with self._store.read() as state:
            volume = resolve_volume(state, request.volume)
            refusal, _ = commands.apply(state, commands.RemoveVolume(volume.id, time.time()))
        check_result(refusal)
        await self._propose(commands.RemoveVolume(volume.id, time.time()))
        return cpb.RemoveVolumeResponse(id=volume.id)
