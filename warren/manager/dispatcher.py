"""The Dispatcher API: worker sessions, heartbeats, assignments and task status reports.

Runs on the leader only (heartbeats live in its memory, as in SwarmKit); a follower answers
UNAVAILABLE naming the leader, and the agent reconnects there. Assignments are pushed on the
session stream as soon as a commit touches the node's tasks: a COMPLETE set first, then
INCREMENTAL messages chained by version so the agent can detect a gap and reopen the session.
Each spec version travels once per session, beside the tasks that refer to it (ADR 21), and no
message larger than the agent accepts is sent: the node is marked not ready with the reason
instead, as it is when the agent says its sessions keep failing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import NamedTuple

import grpc

from warren import commands, logsetup, nodereports, pki, tls, validate
from warren.aio import wait_within
from warren.api import convert, names
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import dispatcher_pb2_grpc
from warren.commands import overlay_layout
from warren.ids import new_id
from warren.manager import metrics, sessiondiff, sessionopen
from warren.manager.commitdigest import CommitDigests
from warren.manager.dispatchstreams import BrokeredStreams
from warren.manager.dispatchwire import Assignments
from warren.manager.endpointlog import EndpointLog
from warren.manager.events import Event, EventHub
from warren.manager.execbroker import ExecBroker
from warren.manager.hearing import Heartbeats
from warren.manager.logbroker import LogBroker
from warren.manager.meshlog import MeshLog
from warren.manager.ports import ProposalError, Proposer, StateReader
from warren.manager.registrylogins import LoginVault, pull_logins
from warren.manager.server import REMOVED_NODE, ApiError, caller, check_result, not_leader
from warren.manager.sessionpace import Pauses, reconnect_spread, session_pace
from warren.manager.sessionspecs import FileSource, SessionSpecs
from warren.manager.sessionwake import WorkBell, pause
from warren.manager.speccache import SpecCache
from warren.model import ClusterInfo, Node, NodeRole, NodeStatus, TaskState
from warren.nodereports import check_wireguard
from warren.reconciler import liveness
from warren.state import ClusterState
from warren.validate import ValidationError

log = logging.getLogger(__name__)

FAILING_AFTER = 2  # sessions in a row that failed after reaching a manager: the node "keeps failing"
SESSION_FAILING = "its session is failing"


class _NodeView(NamedTuple):
    """The managers' addresses and the mesh of the state at Raft index `at`, each with a
    version that goes up only when its content changes: a session compares versions, not
    lists, so a node change costs each session O(1) and the walk over all nodes is done once
    per commit, not once per session (#15: it was O(nodes^2) per wave of joins)."""

    at: int
    managers: list[str]
    managers_version: int
    mesh_version: int  # of `DispatcherService._mesh`, which holds the mesh and its encodings


class DispatcherService(BrokeredStreams, dispatcher_pb2_grpc.DispatcherServicer):
    def __init__(
        self,
        store: StateReader,
        raft: Proposer,
        hub: EventHub,
        heartbeats: Heartbeats,
        timeout: float = 5.0,
        logs: LogBroker | None = None,
        max_message: int = tls.MAX_REPLY_BYTES,
        files: FileSource | None = None,
        vault: LoginVault | None = None,
        execs: ExecBroker | None = None,
    ):
        self._execs = execs  # relays execs to the agents (ADR 59)
        self._files = files  # secret and config values for the specs sent (ADR 38)
        self._vault = vault  # opens the registry logins sent with the tasks that pull (ADR 43)
        self._store = store
        self._raft = raft
        self._hub = hub
        self._heartbeats = heartbeats
        self._timeout = timeout
        self._logs = logs
        self._sessions: dict[str, str] = {}  # session id -> node id
        self._max_message = max_message  # what an agent accepts (tls.channel_options)
        self._failing: dict[str, str] = {}  # node id -> why its last session failed here
        self._readying: set[str] = set()  # nodes whose "ready" is being proposed
        self._background: set[asyncio.Task[None]] = set()  # those proposals (held: see asyncio docs)
        self._endpoints = EndpointLog(store, hub)  # versioned, incremental, deltas (ADRs 57, 65)
        self._mesh = MeshLog()  # versioned, deltas (ADRs 57, 65)
        self._digests = CommitDigests()  # each commit's changes indexed once for every session
        self._bell = WorkBell()  # wakes a pausing session for new work (ADR 85)
        hub.listen(self._ring_for_work)
        self._spec_pbs = SpecCache()  # each spec version converted once for every session
        self._node_view = _NodeView(-1, [], 0, 0)

    def _require_leader(self) -> None:
        if not self._raft.is_leader:
            raise not_leader(self._store, self._raft)

    def _node_of(self, session_id: str) -> str:
        node_id = self._sessions.get(session_id)
        if node_id is None or node_id != caller.get().node_id:
            raise ApiError(grpc.StatusCode.NOT_FOUND, "unknown session; open a new one")
        return node_id

    def _period(self, state: ClusterState) -> float:
        configured = state.cluster.heartbeat_period if state.cluster else 5.0
        return liveness.heartbeat_period(configured, len(state.nodes))  # longer in a large cluster

    # Yields Assignments, which the server sends with Assignments.encode (dispatchwire, ADR 57).
    async def Session(  # type: ignore[override]
        self, request: dpb.SessionRequest, context: object
    ) -> AsyncGenerator[Assignments, None]:
        self._require_leader()
        identity = caller.get()
        logsetup.bind(worker=identity.node_id)  # the session's lines name the node it is with
        sessionopen.check_session_request(request)
        desc = request.description
        held = sessionopen.held_endpoints(request)
        # Not ready until a heartbeat proves this session works, if the last ones failed.
        failing = self._failing.get(identity.node_id, "")
        if request.failed_sessions >= FAILING_AFTER:
            why = sessionopen.failure_text(request.last_failure) or "unknown error"
            failing = f"{why} ({request.failed_sessions} in a row)"
        now = time.time()
        node = convert.node_from_description(
            desc,
            node_id=identity.node_id,
            role=NodeRole(identity.role) if identity.role in ("manager", "worker") else NodeRole.WORKER,
            status=NodeStatus.UNKNOWN if failing else NodeStatus.READY,
            # The root this agent calls with, known from its first call: a node that never
            # heartbeats still holds a CA rotation open (ADR 24).
            agent_cert_ca=identity.issuer_key_id,
            at=now,
        )
        register = commands.RegisterNode(node)
        with self._store.read() as state:
            unchanged = sessionopen.registers_nothing(state, register)
        if not unchanged:
            check_result(await self._raft.propose_async(register, self._timeout))
        if failing:
            await self._set_failing(node.id, failing)
        self._heartbeats.beat(node.id)
        session_id = new_id()
        # One session per node: a reconnecting agent supersedes its previous, maybe half-open,
        # stream, which then ends on its next wake-up.
        for stale in [sid for sid, nid in self._sessions.items() if nid == node.id]:
            del self._sessions[stale]
        self._sessions[session_id] = node.id
        self._endpoints.open()
        wake = self._bell.open(node.id, session_id)
        pauses = Pauses()
        loop = asyncio.get_running_loop()
        try:
            with self._hub.subscribe() as events:
                version = 1
                specs = SessionSpecs(request.specs_by_reference, self._files, self._spec_pbs)
                spec_list: list[dpb.TaskSpec] = []
                with self._store.read() as state:
                    # Each task the agent holds, as last sent to it.
                    known = {t.id: t for t in state.node_tasks(node.id) if sessiondiff.visible(t)}
                    tasks = [specs.task(known[t], spec_list, state) for t in sorted(known)]
                    logins = pull_logins(state, known.values(), self._vault)
                    volumes = sessiondiff.node_volumes(state, node.id)
                    vip_range = overlay_layout(state.cluster).vips if state.cluster else ""
                    period, nodes = self._period(state), len(state.nodes)
                view = self._current_nodes()
                managers_sent, mesh_sent = view.managers_version, view.mesh_version
                current = self._endpoints.current()
                endpoints_sent = current.at  # the version this agent holds: deltas go onto it
                self._heartbeats.routes.sent(node.id, current.at, current.backends)
                specs.prune()
                complete = dpb.AssignmentsMessage(
                    type=dpb.AssignmentsMessage.COMPLETE,
                    session_id=session_id,
                    version=version,
                    updated=tasks,
                    managers=view.managers,
                    vip_range=str(vip_range),
                    specs=spec_list,
                    volumes=volumes,
                    volumes_changed=True,
                    pull_logins=logins,
                    heartbeat_period=period,
                    reconnect_spread=reconnect_spread(nodes, period),
                )
                # A session lives long: hold no copy, pin no endpoint version (ADR 72).
                del tasks, current
                endpoints, kept = self._endpoints.whole_for(held)  # what the agent holds is not sent again (ADR 81)
                metrics.SESSION_ENDPOINTS.labels("kept").inc(kept)
                metrics.SESSION_ENDPOINTS.labels("sent").inc(len(self._endpoints) - kept)
                del held
                yield await self._fits(node.id, Assignments(complete, endpoints, self._mesh.whole()))
                del endpoints
                while self._raft.is_leader and session_id in self._sessions:
                    batches: list[tuple[int, list]] | None = []
                    try:
                        first = await wait_within(events.get(), 1.0)
                    except TimeoutError:
                        pass
                    else:
                        wake.clear()  # this message answers the work of the commits taken in now
                        batches = sessiondiff.coalesce(first, events)
                    with self._store.read() as state:
                        if state.is_revoked(node.id):  # `node rm`: this session ends now
                            raise ApiError(grpc.StatusCode.PERMISSION_DENIED, REMOVED_NODE)
                        if batches is None:
                            return  # state was replaced by a snapshot: the agent reopens and resyncs
                        # Each commit indexed once for every session: walking all its changes in
                        # each session was O(changes x sessions) per commit (#15).
                        digests = [self._digests.of(index, changes) for index, changes in batches]
                    spec_list = []
                    updated, removed = sessiondiff.node_task_diff(
                        node.id, known, digests, specs, spec_list, self._store.read
                    )
                    specs.prune()
                    logins = []
                    if updated:  # a task not sent again for its own status holds its login already (ADR 76)
                        sent = {task.id for task in updated}
                        with self._store.read() as state:
                            ours = (t for digest in digests for t in digest.tasks_on(node.id) if t.id in sent)
                            logins = pull_logins(state, ours, self._vault)
                    # Managers joined or left (the agent fails over to them), or the mesh changed.
                    new_managers: list[str] | None = None
                    new_mesh: bytes | None = None  # its encoding, shared by every session (ADR 57)
                    if any(digest.nodes_changed for digest in digests):
                        view = self._current_nodes()
                        if view.managers_version != managers_sent:
                            new_managers, managers_sent = view.managers, view.managers_version
                        if view.mesh_version != mesh_sent:
                            new_mesh = self._mesh.since(mesh_sent, request.mesh_deltas)
                            mesh_sent = view.mesh_version
                    new_volumes = None
                    if any(digest.volumes_changed for digest in digests):
                        with self._store.read() as state:
                            current_volumes = sessiondiff.node_volumes(state, node.id)
                        if current_volumes != volumes:
                            new_volumes = volumes = current_volumes
                    # A delta if the agent takes them (ADR 65), else the whole list; None if the
                    # endpoints are those sent. Asked at every wake-up: it also drains the log's queue.
                    changed = self._endpoints.since(
                        endpoints_sent, request.endpoint_deltas, request.endpoint_patches, request.endpoint_runs
                    )
                    if changed is not None:
                        endpoints_sent = changed[0].at
                        # The whole set of that version, delta or not: what the node holds (ADR 65).
                        self._heartbeats.routes.sent(node.id, changed[0].at, changed[0].backends)
                    if (
                        updated
                        or removed
                        or new_managers is not None
                        or new_mesh is not None
                        or changed is not None
                        or new_volumes is not None
                    ):
                        incremental = dpb.AssignmentsMessage(
                            type=dpb.AssignmentsMessage.INCREMENTAL,
                            session_id=session_id,
                            applies_to=version,
                            version=version + 1,
                            updated=updated,
                            removed=removed,
                            managers=new_managers or [],
                            specs=spec_list,
                            volumes=new_volumes or [],
                            volumes_changed=new_volumes is not None,
                            pull_logins=logins,
                        )
                        shared = changed[1] if changed is not None else b""
                        yield await self._fits(node.id, Assignments(incremental, shared, new_mesh or b""))
                        version += 1
                        # What comes meanwhile goes in one message, unless it is new work (ADR 85).
                        await pause(wake, *pauses.after_message(loop.time(), self._pace()))
                if session_id not in self._sessions:
                    raise ApiError(grpc.StatusCode.UNAVAILABLE, "superseded by a newer session of this node")
                raise ApiError(grpc.StatusCode.UNAVAILABLE, "this manager is no longer the leader; reconnect")
        finally:
            self._sessions.pop(session_id, None)
            self._bell.close(node.id, session_id)
            self._endpoints.close()

    async def _fits(self, node_id: str, message: Assignments) -> Assignments:
        """`message` if the agent accepts its size; otherwise the node is marked not ready with
        the reason and the session ends (RESOURCE_EXHAUSTED), rather than the agent refusing it."""
        size = message.size()
        if size <= self._max_message:
            return message
        why = (
            f"its assignments ({size} bytes, {len(message.own.updated)} tasks, {len(message.own.specs)} specs) "
            f"exceed the {self._max_message} bytes a message may hold"
        )
        log.warning("node %s: %s", node_id, why)
        await self._set_failing(node_id, why)
        raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, why)

    async def _set_failing(self, node_id: str, why: str) -> None:
        """Mark the node not ready, saying why; its next heartbeat makes it ready again."""
        self._failing[node_id] = why
        change = commands.SetNodeStatus(node_id, NodeStatus.UNKNOWN, f"{SESSION_FAILING}: {why}", time.time())
        try:
            check_result(await self._raft.propose_async(change, self._timeout))
        except (ApiError, ProposalError) as exc:  # the next session attempt tries again
            log.warning("node %s could not be marked not ready: %s", node_id, exc)

    def _current_nodes(self) -> _NodeView:
        """The managers' addresses and the mesh of the current state, computed once per applied
        index (every session asks after the same change) and versioned by content."""
        with self._store.read() as state:
            index = self._store.applied_index
            view = self._node_view
            if view.at == index:
                return view
            managers = state.manager_addrs()
            self._mesh.update(state)
        managers_version = view.managers_version + (managers != view.managers)
        self._node_view = _NodeView(index, managers, managers_version, self._mesh.version)
        return self._node_view

    async def Heartbeat(self, request: dpb.HeartbeatRequest, context: object) -> dpb.HeartbeatResponse:
        self._require_leader()
        node_id = self._node_of(request.session_id)
        self._heartbeats.beat(node_id)
        self._heartbeats.routes.applied(node_id, request.services_applied)
        with self._store.read() as state:
            node = state.nodes.get(node_id)
            period = self._period(state)
            cluster = state.cluster
            nodes = len(state.nodes)
        if node is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, "this node was removed from the cluster")
        # A heartbeat proves the agent holds this session's COMPLETE set: the session works.
        self._failing.pop(node_id, None)
        if node.status != NodeStatus.READY or node.status_message:
            self._mark_ready(node_id)
        if request.pending_wg_key and request.pending_wg_key_epoch > node.wg_key_epoch:
            # The key pair of a rotation, made by the node: publishing it switches every node's
            # mesh to it (ADR 18). Repeated in each heartbeat until the mesh shows it.
            try:
                check_wireguard(request.pending_wg_key, "")
            except ValidationError as exc:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            publish = commands.PublishNodeKey(
                node_id, request.pending_wg_key, request.pending_wg_key_epoch, time.time()
            )
            try:
                check_result(await self._raft.propose_async(publish, self._timeout))
            except (ApiError, ProposalError) as exc:  # the next heartbeat offers it again
                log.warning("the new WireGuard key of node %s was not published: %s", node_id, exc)
        promoted = node.desired_role == NodeRole.MANAGER and node.role != NodeRole.MANAGER
        return dpb.HeartbeatResponse(
            period=period,
            reconnect_spread=reconnect_spread(nodes, period),
            desired_role=NodeRole.MANAGER.value if promoted else "",
            wg_key_epoch=node.wg_key_desired_epoch,
            renew_certificate=await self._certificate_root(node, cluster),
        )

    async def Heartbeats(
        self, requests: AsyncIterator[dpb.HeartbeatRequest], context: object
    ) -> AsyncIterator[dpb.HeartbeatResponse]:
        """A session's heartbeats on one stream (ADR 79), each answered as Heartbeat answers it.
        A beat that cannot be taken ends the stream with the status the call would return."""
        self._require_leader()
        async for request in requests:
            yield await self.Heartbeat(request, context)

    def _ring_for_work(self, event: Event) -> None:
        """Once per commit, on the loop: wake the sessions of the nodes it gives work."""
        index, changes = event
        if changes is not None and self._sessions:  # a follower has none: no digest built
            self._bell.ring(self._digests.of(index, changes).work)

    def _pace(self) -> float:
        return session_pace(len(self._sessions), random.random())

    def _mark_ready(self, node_id: str) -> None:
        """Propose the node ready, without holding the heartbeat's answer for a Raft round: at
        1,000 nodes, answers that waited behind the plans' entries came after the agents gave
        up (two periods), which ended their sessions and brought more proposals (#15). The
        liveness that matters is recorded already; a proposal that fails is made again at the
        next heartbeat."""
        if node_id in self._readying:
            return
        self._readying.add(node_id)
        proposal = asyncio.create_task(self._propose_ready(node_id), name=f"ready-{node_id}")
        self._background.add(proposal)
        proposal.add_done_callback(self._background.discard)

    async def _propose_ready(self, node_id: str) -> None:
        try:
            result = await self._raft.propose_async(
                commands.SetNodeStatus(node_id, NodeStatus.READY, "", time.time()), self._timeout
            )
            if not result.ok:
                log.warning("node %s was not marked ready: %s", node_id, result.message)
        except ProposalError as exc:
            log.warning("node %s was not marked ready: %s", node_id, exc.message)
        finally:
            self._readying.discard(node_id)

    async def _certificate_root(self, node: Node, cluster: ClusterInfo | None) -> bool:
        """Record which root issued the certificate this agent calls with (the CA rotation's
        progress, ADR 24); True if it comes from an old root and must be renewed."""
        issuer = caller.get().issuer_key_id
        if cluster is None or not issuer:
            return False
        if issuer != node.agent_cert_ca:
            record = commands.RecordNodeCertificate(node.id, issuer)
            try:
                check_result(await self._raft.propose_async(record, self._timeout))
            except (ApiError, ProposalError) as exc:  # the next heartbeat records it
                log.warning("could not record the certificate of node %s: %s", node.id, exc)
        return issuer != pki.ca_key_id(cluster.ca_cert_pem)

    async def UpdateTaskStatus(
        self, request: dpb.UpdateTaskStatusRequest, context: object
    ) -> dpb.UpdateTaskStatusResponse:
        """One batch of reports, from an agent whose manager had no StatusReports."""
        await self._take_reports(request, "call")
        return dpb.UpdateTaskStatusResponse()

    async def StatusReports(
        self, requests: AsyncIterator[dpb.UpdateTaskStatusRequest], context: object
    ) -> AsyncIterator[dpb.UpdateTaskStatusResponse]:
        """A session's batches of reports on one stream (ADR 79), each answered once committed.
        A batch that cannot be taken ends the stream with its status; the agent opens another."""
        self._require_leader()
        async for request in requests:
            await self._take_reports(request, "stream")
            yield dpb.UpdateTaskStatusResponse()

    async def _take_reports(self, request: dpb.UpdateTaskStatusRequest, transport: str) -> None:
        started = time.perf_counter()
        self._require_leader()
        node_id = self._node_of(request.session_id)
        if len(request.updates) > nodereports.MAX_STATUS_BATCH:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT, f"at most {nodereports.MAX_STATUS_BATCH} task reports per call"
            )
        updates = []
        for status in request.updates:
            try:
                update = convert.task_update_from_pb(status, _reported_time(status.timestamp))
                nodereports.check_task_report(status.task_id, status.runtime_id, status.health)
            except (names.ConversionError, validate.ValidationError) as exc:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            if update.state is None or update.state < TaskState.ACCEPTED:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"an agent cannot report state {status.state}")
            updates.append(update)
        with self._store.read() as state:  # what the state already holds costs no entry (ADR 53)
            report = commands.reports_with_news(state, commands.ReportTaskStatus(node_id, tuple(updates)))
        if report.updates:
            check_result(await self._raft.propose_async(report, self._timeout))
        metrics.STATUS_BATCHES.labels(transport).observe(time.perf_counter() - started)


def _reported_time(timestamp: float) -> float:
    """An agent's clock is input too: never in the future, never NaN, never before 2001."""
    now = time.time()
    if not math.isfinite(timestamp) or not 1e9 < timestamp <= now:
        return now
    return timestamp
