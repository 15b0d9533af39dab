"""A promoted worker (`warren node promote`, ADR 15): the agent gets a manager certificate and
runs a manager in its own process, which the leader then adds to Raft.

The manager lives in <agent data>/manager, a manager data directory like any other (certs/,
node.json, then manager.json, raft.secret, db/). It runs without an embedded agent: this agent
already runs the node's tasks. Once it has a manager.json, the agent starts it again on every
start; a demotion stops it and marks it demoted (then a later promotion starts afresh).
The agent knows nothing about managers: the node (warren.node) gives it a `ManagerRunner`, the
callback that runs this node's manager; everything manager-side (cryptography, PySyncObj, LMDB
state) is imported only once it is called, so that an ordinary agent stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from warren import tls
from warren.api.v1 import ca_pb2 as capb
from warren.api.v1 import ca_pb2_grpc

log = logging.getLogger(__name__)

MANAGER_DIR = "manager"
MANAGER_ROLE = "manager"
CERTS_DIR = "certs"  # as in warren.agent.join, which imports cryptography: loaded only to promote

# Runs this node's manager in `manager_dir` until the event is set: joining Raft through the
# given managers, or resuming (None). It reports its own failures.
ManagerRunner = Callable[[Path, list[str] | None, asyncio.Event], Awaitable[None]]


class Promotion:
    """Runs this node's manager once promoted; `promote` is called on every heartbeat that says
    so, and does the work once."""

    def __init__(
        self,
        data_dir: Path,
        managers: Callable[[], list[str]],
        agent_stop: asyncio.Event,
        run_manager: ManagerRunner,
    ) -> None:
        self._data_dir = data_dir
        self._run_manager = run_manager
        self._dir = data_dir / MANAGER_DIR
        self._managers = managers  # the manager API addresses this agent knows now
        self._agent_stop = agent_stop
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._promoting = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def resume(self) -> None:
        """At agent start: run the manager this node already is (or was becoming)."""
        manager_file = self._dir / "manager.json"
        if manager_file.exists():
            if not _demoted(manager_file):
                self._start(join=False)
        elif self._has_manager_certificate():
            self._start(join=True)  # promoted, then stopped before joining Raft: ask again

    async def promote(self, channel: grpc.aio.Channel) -> None:
        """Get a manager certificate over `channel` (this agent's session) and start the manager."""
        if self.running or self._promoting:
            return
        self._promoting = True
        try:
            if (self._dir / "manager.json").exists() and _demoted(self._dir / "manager.json"):
                shutil.rmtree(self._dir)  # demoted before: promoted again, it starts afresh
            if not self._has_manager_certificate():
                await self._get_certificate(channel)
            log.info("this node was promoted to manager: starting its manager")
            self._start(join=not (self._dir / "manager.json").exists())
        except (grpc.aio.AioRpcError, OSError, ValueError) as exc:
            details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            log.error("promotion to manager failed (retried at the next heartbeat): %s", details)
        finally:
            self._promoting = False

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- internals ---------------------------------------------------------------------------
    def _has_manager_certificate(self) -> bool:
        """Only a promotion writes this directory, and node.json is written last."""
        return (self._dir / "node.json").exists() and (self._dir / CERTS_DIR / tls.CERT_FILE).exists()

    async def _get_certificate(self, channel: grpc.aio.Channel) -> None:
        from warren import pki
        from warren.agent.join import adopted_roots, check_renewed, write_node_file

        current = tls.load_credentials(self._data_dir / CERTS_DIR)
        worker = pki.identity_of(current.cert_pem)
        key_pem = await asyncio.to_thread(pki.generate_key)
        csr_pem = pki.make_csr(key_pem)
        response = await ca_pb2_grpc.NodeCertificatesStub(channel).RenewCertificate(
            capb.RenewRequest(csr_pem=csr_pem.decode(), role=MANAGER_ROLE), timeout=15.0
        )
        cert_pem = response.cert_pem.encode()
        # The same node and cluster, now as a manager; any expiry will do (it is a new role).
        expected = dataclasses.replace(worker, role=MANAGER_ROLE, not_after=dt.datetime.min.replace(tzinfo=dt.UTC))
        ca_pem = adopted_roots(current.ca_pem, response.ca_pem.encode())  # a CA rotation may be under way
        try:
            check_renewed(expected, ca_pem, cert_pem, key_pem)
        except Exception as exc:
            raise ValueError(f"the manager certificate is not acceptable: {exc}") from None
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tls.save_credentials(self._dir / CERTS_DIR, ca_pem, cert_pem, key_pem)
        write_node_file(self._dir, worker.node_id, self._managers())

    def _start(self, join: bool) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(join), name="promoted-manager")

    async def _run(self, join: bool) -> None:
        relay = asyncio.create_task(self._stop_with_agent())
        try:
            await self._run_manager(self._dir, self._managers() if join else None, self._stop)
        except Exception:
            log.exception("the promoted manager stopped")
        finally:
            relay.cancel()

    async def _stop_with_agent(self) -> None:
        await self._agent_stop.wait()
        self._stop.set()


def _demoted(manager_file: Path) -> bool:
    try:
        return bool(json.loads(manager_file.read_text()).get("demoted"))
    except (OSError, ValueError):
        return False
