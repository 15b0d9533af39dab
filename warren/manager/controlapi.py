"""The Control API: what operators (admin certificates) can read and change."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import msgspec
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from warren import commands, pki, rebalance, reconciler
from warren.api import convert, names, specconvert
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import control_pb2_grpc
from warren.api.v1 import types_pb2 as pb
from warren.ids import new_id
from warren.manager import autolock, paging, tasklist
from warren.manager.controlautolock import AutolockControl
from warren.manager.controlbackup import BackupControl
from warren.manager.controlcerts import CertificatesControl, ca_status
from warren.manager.controlexec import ExecControl
from warren.manager.controlnetworks import NetworksControl
from warren.manager.controlnodes import NodesControl, resolve_node
from warren.manager.controlregistry import RegistryControl
from warren.manager.controlsecrets import SecretsControl
from warren.manager.controlstacks import StacksControl
from warren.manager.controlvolumes import VolumesControl
from warren.manager.eventstream import EventFeed, EventsControl
from warren.manager.execbroker import ExecBroker
from warren.manager.imagepin import DigestLookup, check_reference, pinned
from warren.manager.logbroker import LogBroker
from warren.manager.peerstatus import PeerStatus
from warren.manager.ports import Consensus, StateReader
from warren.manager.registrylogins import LoginVault
from warren.manager.secretkeys import KeyRing
from warren.manager.server import ApiError, check_result, invalid, not_leader, page_reply, resolve_ref
from warren.manager.speccache import SpecCache
from warren.model import (
    NodeRole,
    Service,
    ServiceSpec,
    Task,
)
from warren.stack.spec import STACK_LABEL
from warren.state import ClusterState
from warren.text import shown
from warren.validate import (
    MAX_REPLICAS,
    RESERVED_PREFIX,
    ValidationError,
    check_heartbeat_period,
    check_ports_free,
    check_spec,
)

NOT_FOUND = grpc.StatusCode.NOT_FOUND
MIN_KEY_ROTATION_PERIOD = 10.0  # seconds; below it nodes would spend their time re-handshaking


# The orders of the paged lists (ADR 51): each key is unique, so a page token can name a place.
def _service_order(entry: tuple[str, str]) -> tuple[str]:
    """An entry of the state's `service_order`, (name, id), as its token holds it: the name."""
    return (entry[0],)


def _task_order(t: Task) -> tuple[str, int, str, float, str]:
    return (t.service_name, t.slot, t.node_id, -t.created_at, t.id)


_TASK_KEY = (str, int, str, float, str)  # the types of _task_order's parts


def resolve_service(state: ClusterState, ref: str) -> Service:
    return resolve_ref("service", state.services, state.service_by_name, ref)


def _spec(msg: pb.ServiceSpec) -> ServiceSpec:
    try:
        spec = specconvert.spec_from_pb(msg)
        check_spec(spec)
        check_reference(spec.image)
    except (names.ConversionError, ValidationError, ValueError) as exc:
        raise invalid(str(exc)) from None
    return spec


def _kept_stack_label(spec: ServiceSpec, service: Service, given: str | None) -> ServiceSpec:
    """A stack's service keeps its stack label through `service update` (it is not the
    operator's to set or drop: ADR 49); another service may not be given one."""
    owner = service.spec.labels.get(STACK_LABEL)
    if owner is None:
        if given is not None:
            raise invalid(f"service label keys starting with {RESERVED_PREFIX!r} are reserved ({STACK_LABEL!r})")
        return spec
    return msgspec.structs.replace(spec, labels={**spec.labels, STACK_LABEL: owner})


class ControlService(
    NodesControl,
    CertificatesControl,
    VolumesControl,
    SecretsControl,
    RegistryControl,
    AutolockControl,
    StacksControl,  # #14
    EventsControl,
    NetworksControl,
    BackupControl,  # #16 (ADR 56)
    ExecControl,  # #16 (ADR 59)
    control_pb2_grpc.ControlServicer,
):
    _resolve_node = staticmethod(resolve_node)

    def __init__(
        self,
        store: StateReader,
        raft: Consensus,
        timeout: float = 5.0,
        logs: LogBroker | None = None,
        certs_dir: Path | None = None,
        raft_secret: str = "",
        images: DigestLookup | None = None,
        keyring: KeyRing | None = None,
        events: EventFeed | None = None,
        execs: ExecBroker | None = None,
    ) -> None:
        self._execs = execs  # relays execs to the agents (ADR 59); None: not served
        self._raft_secret = raft_secret  # wraps the CA key in the state (ADR 24)
        # seals secrets before they are proposed (ADR 38); holds the KEK under autolock (ADR 44)
        self._keyring = keyring or KeyRing(raft_secret)
        self._authority = autolock.authority(raft_secret, self._keyring)
        self._store = store
        self._raft = raft
        self._timeout = timeout
        self._logs = logs
        # The other managers' Raft status, asked with this manager's own credentials.
        self._peers = PeerStatus(store, self._keyring, certs_dir)
        # Pins images to digests at create and update (ADR 34); None: images are stored as given.
        self._images = images
        # Seals registry logins with the secrets' keys (ADR 43, 38).
        self._vault = LoginVault(self._keyring) if raft_secret else None
        self._events = events  # the event stream (ADR 45); None: not served
        self._spec_cache = SpecCache()  # ListServices converts each spec once (ADR 51)

    async def _propose(self, command: commands.Command) -> commands.Result:
        return check_result(await self._raft.propose_async(command, self._timeout))

    def _counts(self, state: ClusterState, service: Service) -> tuple[int, int]:
        return state.replica_counts(service)

    # -- cluster -----------------------------------------------------------------------------
    async def GetClusterInfo(self, request: cpb.GetClusterInfoRequest, context: object) -> cpb.ClusterInfo:
        if request.consistent:
            await self._raft.read_barrier(self._timeout)
        raft = self._raft.status()
        with self._store.read() as state:
            cluster = state.cluster
            if cluster is None:
                raise ApiError(grpc.StatusCode.UNAVAILABLE, "the cluster is still initialising; retry")
            managers = sorted((n for n in state.nodes.values() if n.role == NodeRole.MANAGER), key=lambda n: n.hostname)
            # The pass's caps, defaults filled in (the start cap's grows with the nodes, ADR 74).
            caps = reconciler.ReconcileConfig.from_cluster(cluster, len(state.nodes))
            info = cpb.ClusterInfo(
                id=cluster.id,
                created_at=cluster.created_at,
                leader=raft.leader,
                leader_api_addr=next((n.addr for n in managers if raft.leader and n.raft_addr == raft.leader), ""),
                raft_term=raft.term,
                commit_index=raft.commit_index,
                applied_index=raft.applied_index,
                ca_fingerprint=pki.ca_fingerprint(cluster.ca_cert_pem),
                heartbeat_period=cluster.heartbeat_period,
                nodes=len(state.nodes),
                services=len(state.services),
                tasks=len(state.tasks),
                raft_state=raft.state,
                wg_key_rotation_period=cluster.wg_key_rotation_period,
                auto_rebalance=cluster.auto_rebalance,
                max_starts_per_pass=caps.max_starts_per_pass,
                max_stops_per_pass=caps.max_stops_per_pass,
                autolock=autolock.is_locked(cluster),
                locked=autolock.is_locked(cluster) and not self._keyring.holds_kek(cluster),
            )
            if cluster.ca_previous_cert_pem:
                progress = ca_status(state)
                info.ca_rotating, info.ca_nodes_done = True, progress.nodes_done
        self._peers.keep_only({node.addr for node in managers})
        views = await asyncio.gather(*(self._peers.view(node, raft) for node in managers))
        leader_commit = max((v.commit_index for v in views if v.raft_state == "leader"), default=raft.commit_index)
        members = set(raft.members)
        for node, view in zip(managers, views, strict=True):
            view.node_id = node.id
            view.raft_addr = node.raft_addr
            view.api_addr = node.addr
            view.join_addr = node.join_addr
            view.leader = bool(node.raft_addr) and node.raft_addr == raft.leader
            view.voter = node.raft_addr in members
            view.reachable = not view.error
            if view.raft_state:
                view.lag = max(0, leader_commit - view.applied_index)
            info.managers.append(view)
        return info

    async def UpdateCluster(self, request: cpb.UpdateClusterRequest, context: object) -> cpb.ClusterInfo:
        period = None
        if request.HasField("wg_key_rotation_period"):
            period = request.wg_key_rotation_period
            if not 0 <= period < math.inf:
                raise invalid(f"the key rotation period must be 0 (off) or a positive duration (got {period})")
            if 0 < period < MIN_KEY_ROTATION_PERIOD:
                raise invalid(
                    f"the key rotation period must be at least {MIN_KEY_ROTATION_PERIOD:g}s "
                    "(each rotation costs every node a handshake)"
                )
        auto_rebalance = request.auto_rebalance if request.HasField("auto_rebalance") else None
        caps = {f: getattr(request, f) for f in ("max_starts_per_pass", "max_stops_per_pass") if request.HasField(f)}
        heartbeat = request.heartbeat_period if request.HasField("heartbeat_period") else None
        if heartbeat is not None:
            try:
                check_heartbeat_period(heartbeat)
            except ValidationError as exc:
                raise invalid(str(exc)) from None
        await self._propose(commands.UpdateClusterSettings(period, auto_rebalance, heartbeat_period=heartbeat, **caps))
        return await self.GetClusterInfo(cpb.GetClusterInfoRequest(), context)

    async def close(self) -> None:
        """Close what this service holds open: the channels to the other managers."""
        await self._peers.close()

    async def GetJoinToken(self, request: cpb.GetJoinTokenRequest, context: object) -> cpb.GetJoinTokenResponse:
        if request.role not in ("worker", "manager"):
            raise invalid(f"role must be worker or manager (got {shown(request.role)})")
        if request.rotate:
            await self._propose(commands.RotateJoinToken(request.role, pki.new_token_secret()))
        with self._store.read() as state:
            cluster = state.cluster
            if cluster is None:
                raise ApiError(grpc.StatusCode.UNAVAILABLE, "the cluster is still initialising; retry")
            secret = cluster.worker_token_secret if request.role == "worker" else cluster.manager_token_secret
            token = pki.make_join_token(pki.ca_fingerprint(cluster.ca_cert_pem), secret)
        return cpb.GetJoinTokenResponse(token=token)

    # -- services ----------------------------------------------------------------------------
    async def CreateService(self, request: cpb.CreateServiceRequest, context: object) -> pb.Service:
        spec = _spec(request.spec)
        with self._store.read() as state:
            if state.service_by_name(spec.name) is not None:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"service name {shown(spec.name)} is already in use")
            try:
                check_ports_free(state, spec)
            except ValidationError as exc:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
        service_id = new_id()
        own, creds = (
            await self._service_login(request.registry_auth, spec.image, service_id)
            if request.HasField("registry_auth")
            else (None, None)
        )
        image = await pinned(self._images, spec, None, request.no_resolve_image, credentials=creds)
        spec = msgspec.structs.replace(spec, image=image.image)
        now = time.time()
        service = Service(id=service_id, spec=spec, created_at=now, updated_at=now)
        await self._propose(commands.CreateService(service, logins=(own,) if own else ()))
        return self._service_pb(service.id, image.warning)

    def _service_pb(self, service_id: str, *warnings: str) -> pb.Service:
        with self._store.read() as state:
            service = state.services.get(service_id)
            if service is None:
                raise ApiError(NOT_FOUND, f"service {service_id} was removed meanwhile")
            reply = convert.service_to_pb(
                service, *self._counts(state, service), spec=self._spec_cache.spec_pb(service)
            )
        reply.warnings.extend(w for w in warnings if w)
        return reply

    async def ListServices(self, request: cpb.ListServicesRequest, context: object) -> cpb.ListServicesResponse:
        reply = cpb.ListServicesResponse()
        with self._store.read() as state:
            self._spec_cache.keep_only(state.services)
            services = state.services
            reply.next_page_token = page_reply(
                "services", state.service_order, _service_order, (str,), request,
                lambda entry: self._listed_service(state, services[entry[1]], reply.services), reply.services,
                sorted_index=True,
            )  # fmt: skip
        return reply

    def _listed_service(
        self, state: ClusterState, service: Service, into: RepeatedCompositeFieldContainer[pb.Service]
    ) -> pb.Service:
        spec = self._spec_cache.spec_pb(service)
        return convert.service_to_pb(service, *self._counts(state, service), with_previous=False, spec=spec, into=into)

    async def GetService(self, request: cpb.GetServiceRequest, context: object) -> pb.Service:
        with self._store.read() as state:
            service = resolve_service(state, request.service)
            return convert.service_to_pb(service, *self._counts(state, service), spec=self._spec_cache.spec_pb(service))

    async def UpdateService(self, request: cpb.UpdateServiceRequest, context: object) -> pb.Service:
        # Membership is the stack's, not the spec's (#14). (A protobuf map's pop of a missing key
        # returns "" and inserts nothing useful: test for the key first.)
        stack = request.spec.labels.pop(STACK_LABEL) if STACK_LABEL in request.spec.labels else None
        spec = _spec(request.spec)
        with self._store.read() as state:
            service = resolve_service(state, request.service)
            spec = _kept_stack_label(spec, service, stack)
            if spec.name != service.spec.name:
                raise invalid("a service cannot be renamed")
            if spec.mode != service.spec.mode:
                raise invalid("a service's mode cannot change; remove and re-create it")
            try:
                check_ports_free(state, spec, service.id)
            except ValidationError as exc:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
        creds = None
        if request.HasField("registry_auth"):  # the service's own login, in place before its new tasks
            own, creds = await self._service_login(request.registry_auth, spec.image, service.id)
            await self._propose(commands.SetRegistryLogin(own))
        image = await pinned(
            self._images, spec, service.spec, request.no_resolve_image, request.resolve_image, credentials=creds
        )
        spec = msgspec.structs.replace(spec, image=image.image)
        await self._propose(commands.UpdateService(service.id, spec, time.time(), request.version))
        return self._service_pb(service.id, image.warning)

    async def RollbackService(self, request: cpb.RollbackServiceRequest, context: object) -> pb.Service:
        """Return to an earlier spec as a new version (ADR 33). The pure handler judges it on the
        state as read first, so that a refusal (no such version, a stale one) costs no Raft
        entry; the committed command judges it again, against whatever landed meanwhile."""
        with self._store.read() as state:
            service = resolve_service(state, request.service)
            rollback = commands.RollbackService(
                service.id, time.time(), request.to_version, request.restore_replicas, request.version
            )
            check_result(commands.apply(state, rollback)[0])
        await self._propose(rollback)
        return self._service_pb(service.id)

    async def PromoteService(self, request: cpb.PromoteServiceRequest, context: object) -> pb.Service:
        """End a canary's wait (ADR 35); judged on the state as read first, as a rollback is."""
        with self._store.read() as state:
            service = resolve_service(state, request.service)
            promote = commands.PromoteService(service.id, time.time(), request.version)
            check_result(commands.apply(state, promote)[0])
        await self._propose(promote)
        return self._service_pb(service.id)

    async def RebalanceService(
        self, request: cpb.RebalanceServiceRequest, context: object
    ) -> cpb.RebalanceServiceResponse:
        """Even out a service's spread (ADR 36). Judged by the pure handler on the state as read
        first: a refusal, or nothing to move, costs no Raft entry."""
        with self._store.read() as state:
            service = resolve_service(state, request.service)
            command = commands.RebalanceService(service.id, time.time(), request.version)
            result, changes = commands.apply(state, command)
            check_result(result)
            moves = len(rebalance.service_plan(state, service)) if changes else 0
        if changes:
            result = await self._propose(command)
        return cpb.RebalanceServiceResponse(service=self._service_pb(service.id), moves=moves, message=result.message)

    async def ScaleService(self, request: cpb.ScaleServiceRequest, context: object) -> pb.Service:
        if request.replicas > MAX_REPLICAS:
            raise invalid(f"replicas must be between 0 and {MAX_REPLICAS}")
        with self._store.read() as state:
            service = resolve_service(state, request.service)
        await self._propose(commands.ScaleService(service.id, request.replicas, time.time()))
        return self._service_pb(service.id)

    async def RemoveService(self, request: cpb.RemoveServiceRequest, context: object) -> cpb.RemoveServiceResponse:
        with self._store.read() as state:
            service = resolve_service(state, request.service)
        await self._propose(commands.RemoveService(service.id, time.time()))
        return cpb.RemoveServiceResponse(id=service.id)

    # -- tasks -------------------------------------------------------------------------------
    async def ListTasks(self, request: cpb.ListTasksRequest, context: object) -> cpb.ListTasksResponse:
        try:
            states = {names.task_state(s) for s in request.states}
        except names.ConversionError as exc:
            raise invalid(str(exc)) from None
        try:  # the token's service name, for a listing of the whole cluster
            size = paging.page_size(request.page_size)
            after = paging.decode_token("tasks", request.page_token, _TASK_KEY) if request.page_token else None
        except paging.PageTokenError as exc:
            raise invalid(str(exc)) from None
        with self._store.read() as state:
            service_id = resolve_service(state, request.service).id if request.service else ""
            node_id = resolve_node(state, request.node).id if request.node else ""
            whole = None
            if not (service_id or node_id):
                after_name = str(after[0]) if after else None
                whole = tasklist.cluster_candidates(state, after_name, size, request.include_history, states)
            gathered = tasklist.candidates(state, service_id, node_id, request.include_history) if whole is None else []
        tasks = whole if whole is not None else tasklist.listed(gathered, node_id, request.include_history, states)
        reply = cpb.ListTasksResponse()
        reply.next_page_token = page_reply(
            "tasks", tasks, _task_order, _TASK_KEY, request,
            lambda t: convert.task_to_pb(t, into=reply.tasks), reply.tasks,
        )  # fmt: skip
        return reply

    # -- logs --------------------------------------------------------------------------------
    async def ServiceLogs(self, request: cpb.ServiceLogsRequest, context: grpc.aio.ServicerContext) -> AsyncIterator:
        """The service's task logs, gathered from the agents by the leader's broker (ADR 14)."""
        if self._logs is None:
            raise ApiError(grpc.StatusCode.UNIMPLEMENTED, "this manager does not serve logs")
        with self._store.read() as state:
            service = resolve_service(state, request.service)
        if not self._raft.is_leader:
            raise not_leader(self._store, self._raft, "it serves the logs")
        stream = self._logs.open(service.id, request.follow, request.tail, request.since)
        add_done_callback = getattr(context, "add_done_callback", None)
        if add_done_callback is not None:  # the caller went away: close at once, not at GC
            add_done_callback(lambda _context: stream.close())
        try:
            async for batch in stream.batches():
                yield cpb.ServiceLogsMessage(messages=batch)
        finally:
            stream.close()
