"""The agent's session with the managers: connect, register, receive assignments, heartbeat,
report task status, and fail over.

One session at a time, to the leader (ADR 10). A follower answers UNAVAILABLE naming the leader
and we go there at once; any other failure moves on to the next known manager after an
exponential backoff, capped at 5 s or at the heartbeat period if that is shorter (so a node
reconnects before the managers' timeout marks it down). A session ends when its stream ends, a
heartbeat or report fails, or an INCREMENTAL message does not follow our version (then we
reopen at once and resync from the COMPLETE set). Task reports outlive sessions in the
StatusQueue. A node the cluster removed (`node rm`) gets NodeRemoved. Sessions that fail after
reaching a manager are counted, and the next session request says how many and why, so the
managers mark the node not ready (ADR 21) until a heartbeat shows a session works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, cast

import grpc

from warren import certinfo, logsetup, nodereports, tls
from warren.agent.assignments import AssignmentDelta, AssignmentSet, MeshMember, VersionGap
from warren.agent.callstream import CallStream, StreamEnded
from warren.agent.execs import ExecAgent
from warren.agent.logs import LogAgent
from warren.agent.reporter import report_channel, send_reports
from warren.agent.runtime import PullLogin
from warren.agent.status import StatusQueue
from warren.agent.worker import Worker
from warren.aio import wait_within
from warren.api.leader import leader_from_details
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import dispatcher_pb2_grpc
from warren.backoff import Backoff
from warren.model import Task
from warren.network.keys import NodeKey
from warren.network.lb import Endpoint

log = logging.getLogger(__name__)

SESSION_METHOD = f"/{dpb.DESCRIPTOR.services_by_name['Dispatcher'].full_name}/Session"

BACKOFF_START = 0.2
BACKOFF_CAP = 5.0
BACKOFF_JITTER = 0.1  # +-10%, so agents do not reconnect in lockstep
# The least wait for a session's first message: the manager commits RegisterNode before it
# answers. At least HEARTBEAT_PATIENCE periods too: after a leader change at 1,000 nodes (a 20 s
# period), a new leader answered thousands of sessions after their agents had given up at 15 s,
# and each retry made it later (#15, ADR 83).
FIRST_MESSAGE_TIMEOUT = 15.0
INITIAL_PERIOD = 1.0  # heartbeat period assumed before any reply: the first beat is at half of it
# Periods a heartbeat's answer may take before the session is given up. The managers call a node
# down after three periods without a beat; ending the session at one late answer made a busy
# manager pay for a new session (registration, the whole set) at the worst time (ADR 71).
HEARTBEAT_PATIENCE = 2.0
RENEWAL_CHECK = 3600.0  # how often a session looks at the certificate's expiry (a 90-day cert
RENEWAL_RETRY = 60.0  # renews with 30 days left); after a failed renewal, try again this soon
# Failures that say nothing about this node's session: the manager is unreachable, busy, or not
# the leader. Anything else (a message too large, an internal error, a bad first message) counts.
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})


class ManagerList:
    """Known manager addresses in the order we try them; the current one first."""

    def __init__(self, addrs: Iterable[str] = ()) -> None:
        self.addrs: list[str] = []
        self.merge(addrs)
        self._index = 0

    def current(self) -> str | None:
        if not self.addrs:
            return None
        return self.addrs[self._index % len(self.addrs)]

    def advance(self) -> None:
        self._index += 1

    def merge(self, addrs: Iterable[str]) -> bool:
        """Add addresses we did not know; True if the list changed."""
        added = False
        for addr in addrs:
            addr = addr.strip()
            if addr and addr not in self.addrs:
                self.addrs.append(addr)
                added = True
        return added

    def prefer(self, addr: str) -> None:
        """The leader: try it next, and remember it."""
        self.merge([addr])
        self._index = self.addrs.index(addr)


def leader_hint(error: grpc.aio.AioRpcError) -> str | None:
    """The leader's address from a follower's "not the leader; the leader is at ADDR" answer."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    return leader_from_details(error.details() or "")


class _Redirect(Exception):
    def __init__(self, addr: str) -> None:
        super().__init__(addr)
        self.addr = addr


class SessionLost(Exception):
    """The session ended without an RPC error (stream closed by the manager)."""


class NodeRemoved(Exception):
    """The managers refuse this node for good (`warren node rm`): its tasks must go."""


def is_removed(error: grpc.aio.AioRpcError) -> bool:
    return error.code() == grpc.StatusCode.PERMISSION_DENIED and "removed from the cluster" in (error.details() or "")


class Session:
    """Runs sessions until `stop` is set, reconnecting forever."""

    def __init__(
        self,
        certs_dir: Path,
        managers: ManagerList,
        description: Callable[[], dpb.NodeDescription],
        worker: Worker,
        queue: StatusQueue,
        on_managers: Callable[[list[str]], None] = lambda addrs: None,
        logs: LogAgent | None = None,
        on_promotion: Callable[[grpc.aio.Channel], Coroutine[Any, Any, None]] | None = None,
        on_mesh: Callable[[tuple[MeshMember, ...]], None] = lambda mesh: None,
        on_services: Callable[[tuple[Endpoint, ...], str, int], None] = lambda services, vip_range, index: None,
        pending_key: Callable[[], NodeKey | None] = lambda: None,
        services_applied: Callable[[], int] = lambda: 0,
        routing_changed: asyncio.Event | None = None,
        on_key_epoch: Callable[[int], None] = lambda epoch: None,
        renewal_check: float = RENEWAL_CHECK,
        pull_logins: dict[str, PullLogin] | None = None,
        credentials: tls.CredentialFiles = tls.PLAIN_FILES,
        execs: ExecAgent | None = None,
        assignment_set: Callable[..., AssignmentSet] = AssignmentSet,  # called with held=
    ) -> None:
        self.execs = execs  # serves the operators' execs during each session (ADR 59)
        self.certs_dir = certs_dir
        self.credentials = credentials  # how certs_dir is read and renewals written (ADR 44)
        self.managers = managers
        self.description = description
        self.worker = worker
        self.queue = queue
        self.on_managers = on_managers
        self.logs = logs  # serves log subscriptions during each session (ADR 14)
        self.on_promotion = on_promotion  # an operator promoted this node to manager (ADR 15)
        self.on_mesh = on_mesh  # the overlay's nodes changed (ADR 17)
        self.on_services = on_services  # service VIPs or their backends changed (ADR 17)
        self.pending_key = pending_key  # a rotated WireGuard key to publish (ADR 18)
        # The index of the endpoints the load balancer holds, and an event set when it applies
        # new ones: the heartbeat reports it at once, a stop waits for it (ADR 33).
        self.services_applied = services_applied
        self.routing_changed = routing_changed if routing_changed is not None else asyncio.Event()
        self.on_key_epoch = on_key_epoch  # the key epoch the managers want (ADR 18)
        self.renewal_check = renewal_check  # seconds between looks at the certificate's expiry

        # What the assignments are read into: warren sim's nodes hold only the endpoints' index
        # and the mesh's version (ADR 71, IndexOnlyAssignmentSet), one of them all (ADR 81).
        def held(task_id: str) -> Task | None:
            return self.worker.held_task(task_id)

        self.assignments = assignment_set(held=held)
        if pull_logins is not None:  # shared with the controllers (ADR 43)
            self.assignments.logins = pull_logins
        self.period = INITIAL_PERIOD
        # Seconds to spread a reconnect over when an open session is lost: the managers say it
        # in each heartbeat answer, by the cluster's size (#15).
        self.reconnect_spread = 0.0
        self.connected_to: str | None = None
        self.failed_sessions = 0  # in a row, since a heartbeat last showed a session working
        self.last_failure = ""

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a session open until `stop`; raises NodeRemoved if the cluster removed us."""
        backoff = Backoff(BACKOFF_START, BACKOFF_CAP, jitter=BACKOFF_JITTER, draw=random.random)
        target: str | None = None
        redirects = 0
        while not stop.is_set():
            addr = target or self.managers.current()
            target = None
            spread = 0.0
            logsetup.bind(manager=addr or "")
            if addr is None:
                log.error("no manager address known: pass --manager or rejoin")
                await _sleep_unless(stop, backoff.next())
                continue
            try:
                if await self._session(addr, stop, backoff):
                    target = addr  # a version gap: reopen on the same manager after a short pause
            except _Redirect as redirect:
                redirects += 1
                log.info("manager %s is not the leader; the leader is at %s", addr, redirect.addr)
                self.managers.prefer(redirect.addr)
                if redirects <= 3:
                    target = redirect.addr
                    continue
            except grpc.aio.AioRpcError as exc:
                spread = self._spread()
                if is_removed(exc):
                    raise NodeRemoved(exc.details()) from None
                log.warning("session with %s failed%s: %s %s", addr, _where(exc), exc.code().name, exc.details())
                if exc.code() not in _TRANSIENT:
                    self._failed(f"{exc.code().name}: {exc.details()}")
                self.managers.advance()
            except (SessionLost, StreamEnded, TimeoutError, OSError) as exc:
                spread = self._spread()
                log.warning("session with %s lost%s: %s", addr, _where(exc), exc or type(exc).__name__)
                self.managers.advance()
            except Exception as exc:  # a bug, or a credential problem: log, keep trying
                log.exception("session with %s failed", addr)
                self._failed(f"{type(exc).__name__}: {exc}")
                self.managers.advance()
            finally:
                self.connected_to = None
                self.worker.set_connected(False)
            redirects = 0
            backoff.cap = min(BACKOFF_CAP, max(BACKOFF_START, self.period))
            await _sleep_unless(stop, max(backoff.next(), spread))

    def _learn_pace(self, period: float, spread: float) -> None:
        """The heartbeat period and the reconnect spread the managers ask for (0: not said)."""
        if period > 0:
            self.period = period
        self.reconnect_spread = min(max(spread, 0.0), self.period / 2)

    def first_message_timeout(self) -> float:
        """How long to wait for a new session's first message."""
        return max(FIRST_MESSAGE_TIMEOUT, HEARTBEAT_PATIENCE * self.period)

    def _spread(self) -> float:
        """The wait before reconnecting after a session failed: a random part of the spread
        when it was open (a leader change ends every node's at once), else none."""
        return random.uniform(0.0, self.reconnect_spread) if self.connected_to is not None else 0.0

    def _failed(self, why: str) -> None:
        self.failed_sessions += 1
        self.last_failure = why[: nodereports.MAX_FAILURE_TEXT]

    def _request(self) -> dpb.SessionRequest:
        return dpb.SessionRequest(
            description=self.description(),
            specs_by_reference=True,
            endpoint_deltas=True,  # ADR 65: AssignmentSet applies them
            endpoint_patches=True,  # and patches of a service's backends and members
            endpoint_runs=True,  # and applies a delta's entries in order (ADR 78)
            mesh_deltas=True,
            endpoint_digests=self.assignments.endpoint_digests(),  # what need not come again (ADR 81)
            failed_sessions=self.failed_sessions,
            last_failure=self.last_failure,
        )

    async def _session(self, addr: str, stop: asyncio.Event, backoff: Backoff) -> bool:
        """One session; True when it ended for a resync (version gap)."""
        creds = self.credentials.load(self.certs_dir)  # re-read: certificates are renewed on disk
        channel = grpc.aio.secure_channel(addr, tls.channel_credentials(*creds), options=tls.channel_options())
        try:
            stub = dispatcher_pb2_grpc.DispatcherStub(channel)
            # The stub's Session, reading each message as the assignment set wants it read.
            session = channel.unary_stream(
                SESSION_METHOD,
                request_serializer=dpb.SessionRequest.SerializeToString,
                response_deserializer=self.assignments.decode,
            )
            call = session(self._request())
            try:
                first = await wait_within(call.read(), self.first_message_timeout())
            except grpc.aio.AioRpcError as exc:
                hint = leader_hint(exc)
                if hint is not None and hint != addr:
                    raise _Redirect(hint) from None
                raise
            if first is grpc.aio.EOF:
                raise SessionLost("the manager closed the session before the first message")
            first = cast(dpb.AssignmentsMessage, first)  # grpc's stubs type read() as object
            self.assignments.reset()
            try:
                delta = self.assignments.apply(first)
            except VersionGap as exc:
                log.warning("bad first message from %s: %s", addr, exc)
                self._failed(f"bad first message: {exc}")
                call.cancel()
                return True
            session_id = first.session_id
            self._learn_pace(first.heartbeat_period, first.reconnect_spread)
            logsetup.bind(session=session_id)
            log.info("session %s open with %s (%d task(s) assigned)", session_id, addr, len(delta.updated))
            self.connected_to = addr
            backoff.reset()
            self.worker.set_connected(True)
            self._learn_managers(delta.managers)
            self._apply(delta)
            jobs = {
                asyncio.create_task(self._read(call), name="session-read"),
                asyncio.create_task(self._heartbeat(stub, session_id, channel), name="session-heartbeat"),
                asyncio.create_task(self._report(stub, session_id), name="session-report"),
                asyncio.create_task(self._renew(channel), name="session-renew"),
                asyncio.create_task(stop.wait(), name="session-stop"),
            }
            if self.logs is not None:  # never ends on its own: the other jobs end the session
                jobs.add(asyncio.create_task(self.logs.serve(stub, session_id), name="session-logs"))
            if self.execs is not None:  # never ends on its own either
                jobs.add(asyncio.create_task(self.execs.serve(stub, session_id), name="session-execs"))
            try:
                done, _ = await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for job in jobs:
                    job.cancel()
                for job in jobs:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await job
                call.cancel()
            for job in done:
                if job.get_name() == "session-stop":
                    return False
                failure = job.exception()
                if failure is not None:
                    failure.add_note(job.get_name())  # which part of the session failed, for the log
                    raise failure
                if job.get_name() in ("session-read", "session-heartbeat"):
                    return bool(job.result())
            return False
        finally:
            await channel.close(grace=None)

    async def _read(self, call: grpc.aio.UnaryStreamCall) -> bool:
        """Apply messages until the stream ends (SessionLost) or a gap is seen (True)."""
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                raise SessionLost("the manager ended the session")
            msg = cast(dpb.AssignmentsMessage, msg)  # grpc's stubs type read() as object
            try:
                delta = self.assignments.apply(msg)
            except VersionGap as exc:
                log.warning("assignments out of sequence (%s): resynchronising", exc)
                return True
            self._learn_managers(delta.managers)
            self._apply(delta)

    def _apply(self, delta: AssignmentDelta) -> None:
        try:
            if delta.mesh is not None:  # first: tasks placed in this message may need the subnet
                self.on_mesh(delta.mesh)
            self.worker.apply(delta)
            if delta.services is not None:
                self.on_services(delta.services, delta.vip_range, delta.services_index)
        except Exception:  # never let one bad message end the agent
            log.exception("applying assignments failed")

    def _learn_managers(self, addrs: tuple[str, ...]) -> None:
        if addrs and self.managers.merge(addrs):
            log.info("known managers: %s", ", ".join(self.managers.addrs))
            try:
                self.on_managers(list(self.managers.addrs))
            except Exception:
                log.exception("saving the manager list failed")

    async def _heartbeat(
        self, stub: dispatcher_pb2_grpc.DispatcherAsyncStub, session_id: str, channel: grpc.aio.Channel
    ) -> bool:
        """Beat at the period the manager asks for; the first at half the last known period.
        A reply asking for the manager role starts the promotion (in the background). Returns
        True to reopen the session at once: a CA rotation renewed this node's certificate, and
        only a new connection presents it (ADR 24)."""
        loop = asyncio.get_running_loop()
        beats = CallStream[dpb.HeartbeatRequest, dpb.HeartbeatResponse]("heartbeat", stub.Heartbeats, stub.Heartbeat)
        beats.open()  # with the session, not behind everyone's first beat (ADR 79)
        await asyncio.sleep(self.period / 2)
        promoting: asyncio.Task[None] | None = None
        try:
            while True:
                self.routing_changed.clear()
                request = dpb.HeartbeatRequest(session_id=session_id, services_applied=self.services_applied())
                pending = self.pending_key()
                if pending is not None:
                    request.pending_wg_key, request.pending_wg_key_epoch = pending.public_key, pending.epoch
                sent_at = loop.time()
                reply = await beats.ask(request, max(2.0, HEARTBEAT_PATIENCE * self.period))
                if loop.time() - sent_at > self.period:  # kept, but a sign of an overloaded manager
                    log.warning("a heartbeat was answered after %.1fs (period %gs)", loop.time() - sent_at, self.period)
                self.failed_sessions, self.last_failure = 0, ""  # the managers now call us ready
                self._learn_pace(reply.period, reply.reconnect_spread)
                if promoting is not None and promoting.done():
                    promoting = None
                if reply.desired_role == "manager" and self.on_promotion is not None and promoting is None:
                    promoting = asyncio.create_task(self.on_promotion(channel), name="promotion")
                if reply.wg_key_epoch:
                    self.on_key_epoch(reply.wg_key_epoch)
                if reply.renew_certificate and await self._renew_for_rotation(channel):
                    return True
                # The next beat is due a period after this one left, however late its answer was.
                due = max(0.0, self.period - (loop.time() - sent_at))
                with contextlib.suppress(TimeoutError):  # early when the load balancer changed
                    await wait_within(self.routing_changed.wait(), due)
        finally:
            beats.close()
            if promoting is not None:  # it needs this session's channel: the next one retries
                promoting.cancel()

    async def _renew_for_rotation(self, channel: grpc.aio.Channel) -> bool:
        """Re-issue the certificate from the cluster's new root; True once the new one is on disk."""
        from warren.agent import join

        try:
            await join.renew_if_due(channel, self.certs_dir.parent, force=True, credentials=self.credentials)
        except grpc.aio.AioRpcError as exc:
            if is_removed(exc):
                raise
            log.warning("re-issuing the certificate for the CA rotation failed: %s %s", exc.code().name, exc.details())
            return False
        except Exception as exc:  # a bad answer: keep the session, the next heartbeat asks again
            log.error("re-issuing the node certificate for the CA rotation failed: %s", exc)
            return False
        log.info("the cluster CA is being rotated: re-issued this node's certificate; reconnecting with it")
        return True

    async def _renew(self, channel: grpc.aio.Channel) -> None:
        """Renew the node certificate over this session's channel when a third of its lifetime
        remains. The expiry is read without `cryptography` (certinfo): the ~9 MiB library is
        imported only when a renewal is due. The next session uses the renewed credentials; this
        one keeps working until the old certificate expires."""
        while True:
            delay = self.renewal_check
            try:
                cert_pem = await asyncio.to_thread((self.certs_dir / tls.CERT_FILE).read_bytes)
                if certinfo.renewal_due(cert_pem):
                    from warren.agent import join

                    await join.renew_if_due(channel, self.certs_dir.parent, credentials=self.credentials)
            except grpc.aio.AioRpcError as exc:
                if is_removed(exc):
                    raise
                log.warning("renewing the node certificate failed: %s %s", exc.code().name, exc.details())
                delay = RENEWAL_RETRY
            except Exception as exc:  # a bad answer or unreadable file: keep the session, retry later
                log.error("renewing the node certificate failed: %s", exc)
                delay = RENEWAL_RETRY
            await asyncio.sleep(delay)

    async def _report(self, stub: dispatcher_pb2_grpc.DispatcherAsyncStub, session_id: str) -> None:
        # Pulled and started, as the managers now know: the registry login is no longer needed
        # here (ADR 43). They do not send the task back for a status it reported.
        await send_reports(report_channel(stub), session_id, self.queue, self.assignments.forget_logins)


def _where(exc: BaseException) -> str:
    """The session job a failure came from, as " (in session-heartbeat)"; "" if none."""
    notes = getattr(exc, "__notes__", None)
    return f" (in {notes[-1]})" if notes else ""


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await wait_within(stop.wait(), seconds)
