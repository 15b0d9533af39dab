"""This node's side of the overlay mesh (ADR 17): whenever the managers send the mesh (every
node's subnet, public key and endpoint), plan this node's WireGuard interface and routes and
converge the device on the plan.

Converging is idempotent and only the difference is applied, so a restarted agent adopts the
running wireguard-go and changes nothing. The device outlives the agent on purpose (traffic keeps
flowing across an agent restart). The network modules (pyroute2) are imported only when the
mesh is turned on (`--wireguard`), so an agent without it stays small.

Key rotation (ADR 18): when the managers ask for a newer key epoch (heartbeat replies), a child
process makes the pair (the agent never loads `cryptography`); heartbeats carry its public key
until the managers publish it; the mesh that carries it is the signal to switch, the same push
that tells every other node, so all nodes change keys within one converge of each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from warren import datadir
from warren.agent import settings as agent_settings
from warren.agent.assignments import MeshMember
from warren.aio import wait_within
from warren.network import keys
from warren.network.lb import Endpoint

log = logging.getLogger(__name__)

DNS_PORT = 53
SUPERVISE_PERIOD = 5.0  # seconds between converges when nothing changed
# A node whose new key was published switches this long after the others (which switch on the
# same push at once), so that only one side of each pair starts a handshake at a time: two
# crossing initiations leave both sides responders, and neither sends until WireGuard retries
# 5 s later (ADR 18).
KEY_SWITCH_DELAY = 0.15


def teardown(data_dir: Path) -> list[str]:
    """Remove this node's overlay networking, made by its agent and meant to outlive it: the
    task networks its ledger names, the WireGuard interface (its wireguard-go exits with it),
    the task bridge with its routes, and the load balancer's nftables table; the pieces another
    node's tag marks stay (ADR 23). For a node leaving the cluster, once its agent stopped and
    its tasks are gone. Returns what was done, one line each; what is not there is fine."""
    from warren.network import lb, links, owner, tasknet

    settings = agent_settings.load(data_dir) or agent_settings.AgentSettings()
    mine = owner.tag(data_dir)
    removed = []
    ledger = tasknet.ledger_dir(data_dir)
    for task_id in tasknet.recorded(ledger):
        if tasknet.release(ledger, task_id):
            removed.append(
                f"removed the network namespace {tasknet.netns_name(task_id)} and veth {tasknet.host_veth(task_id)}"
            )
    for what, ifname in (("WireGuard interface", settings.wireguard_interface), ("task bridge", tasknet.BRIDGE)):
        found = owner.link_owner(ifname)
        if found is None:
            continue
        if found and found != mine:
            removed.append(f"left the {what} {ifname}: it belongs to {owner.describe(found)}")
            continue
        links.delete_link(ifname)  # a wireguard-go exits, removing its socket
        removed.append(f"removed the {what} {ifname}")
    found = owner.table_owner()
    if found and found != mine:
        removed.append(f"left the nftables table {lb.TABLE}: it belongs to {owner.describe(found)}")
    elif found is not None:
        tasknet.TaskNetworkManager.apply_nft(lb.removal())
        removed.append(f"removed the nftables table {lb.TABLE}")
    return removed


@dataclass(frozen=True)
class PeerStats:
    node_id: str
    last_handshake: float  # seconds since the epoch; 0.0 = never
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class OverlayStats:
    """What the last converge pass saw, for the agent's /metrics (replaced whole, never mutated:
    the metrics refresher may read it while the next pass runs)."""

    key_epoch: int = 0
    peers: tuple[PeerStats, ...] = ()
    services: int = 0  # services with a VIP in the load balancer
    backends: int = 0  # task addresses behind those VIPs
    converge_failures: int = 0


class Overlay:
    def __init__(self, data_dir: Path, node_id: str, call: Callable[..., Awaitable[Any]]) -> None:
        self._data_dir = data_dir
        self._node_id = node_id
        self._call = call  # runs blocking work off the event loop
        settings = agent_settings.load(data_dir) or agent_settings.AgentSettings()
        self.mode = settings.wireguard
        self._ifname = settings.wireguard_interface
        self._port = settings.wireguard_port
        self._device: Any = None
        self._latest: tuple[MeshMember, ...] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.converged = 0  # passes that applied something, for tests and metrics
        self.stats = OverlayStats()
        self._tasks: Any = None  # TaskNetworkManager once this node's subnet is known
        self._services: tuple[Endpoint, ...] | None = None
        self._balanced: tuple[Endpoint, ...] | None = None  # what the nftables table holds
        self._isolated_subnets: tuple[str, ...] = ()  # the node subnets it isolates (ADR 47)
        # ADR 33: the Raft index of the endpoints last given, and of those the table holds (the
        # heartbeat reports it; set `routing_changed` when it moves, so the report goes at once).
        self._services_index = 0
        self.services_applied = 0
        self.routing_changed = asyncio.Event()
        self._vip_range = ""
        self._dns: Any = None  # the embedded DNS server, once the bridge is up
        self._keys = keys.KeyRing(data_dir)
        self._keygen: asyncio.Task[None] | None = None
        # Held by each pass's blocking work (in a worker thread) and by `leave`, so that a pass
        # still running cannot bring the network back once the node left.
        self._work = threading.Lock()
        self._left = False
        self._live: Callable[[], Collection[str]] | None = None  # see track()

    # -- key rotation (ADR 18) ------------------------------------------------------------------
    def pending_key(self) -> keys.NodeKey | None:
        """The key pair made for a rotation and not in use yet: heartbeats offer it."""
        if not self.enabled:
            return None
        try:
            return self._keys.pending()
        except (OSError, ValueError, keys.WireGuardError) as exc:  # never fail a heartbeat over it
            log.error("cannot read this node's pending WireGuard key: %s", exc)
            return None

    def want_key_epoch(self, epoch: int) -> None:
        """The managers want this node's key at `epoch`. If that is newer than the key in use
        and no newer pair is waiting already, make one (in a child process)."""
        if not self.enabled or (self._keygen is not None and not self._keygen.done()):
            return
        try:
            if epoch <= self._keys.active_epoch() or self._keys.pending() is not None:
                return
        except (OSError, keys.WireGuardError) as exc:
            log.error("cannot read this node's WireGuard keys: %s", exc)
            return
        self._keygen = asyncio.create_task(self._make_key(epoch), name="wireguard-keygen")

    async def _make_key(self, epoch: int) -> None:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "warren.network.keys", "create", str(self._data_dir), str(epoch)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            log.error("making the WireGuard key of epoch %d failed: %s", epoch, err.decode(errors="replace").strip())
        else:
            log.info("made the WireGuard key of epoch %d; the managers publish it next", epoch)

    # -- task networks (the controller's TaskNetworks port; blocking, run in a thread) ---------
    def claim(self) -> None:
        """Make this network namespace's overlay this node's, before anything else touches it;
        raises owner.OverlayInUse if another node's is here (ADR 23)."""
        from warren.network import owner

        owner.claim(self._data_dir, self._ifname)

    def attach(self, task_id: str, address: str) -> str:
        if self._tasks is None:
            raise RuntimeError("this node's overlay subnet is not known yet; retrying")
        return self._tasks.attach(task_id, address)

    def detach(self, task_id: str) -> None:
        """Needs no subnet: a task ending before the first mesh after a restart releases too."""
        from warren.network import tasknet

        tasknet.release(tasknet.ledger_dir(self._data_dir), task_id)

    def track(self, live: Callable[[], Collection[str]]) -> None:
        """`live` gives the tasks this agent still holds: the ledger's other entries are
        leftovers, released at every pass (a crash between two steps, an older agent's)."""
        self._live = live

    async def _sweep(self) -> None:
        from warren.network import tasknet

        ledger = tasknet.ledger_dir(self._data_dir)
        recorded = await self._call(tasknet.recorded, ledger)
        # Read after the ledger: a task recorded by then had its controller already.
        leftovers = set(recorded) - set(self._live()) if self._live is not None else set()
        for task_id in sorted(leftovers):
            try:
                if await self._call(self._guarded, tasknet.release, ledger, task_id):
                    log.info("released the network of task %s, which this agent no longer holds", task_id)
            except Exception as exc:  # the next pass tries again
                log.warning("releasing the network of task %s failed: %s", task_id, exc)

    def resolv_conf(self) -> str:
        """A resolv.conf naming this node's embedded DNS (on the bridge), for tasks that can
        mount one (containerd); "" until the node's subnet is known."""
        if self._tasks is None:
            return ""
        path = datadir.AgentDir(self._data_dir).resolv_conf
        text = f"nameserver {self._tasks.gateway}\noptions ndots:0\n"
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            datadir.write_atomic(path, text, datadir.PUBLIC)  # a task's user, any uid, reads it
        return str(path)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def update(self, mesh: tuple[MeshMember, ...]) -> None:
        """The mesh as the managers sent it last; the newest wins if several arrive meanwhile."""
        if not self.enabled:
            return
        me = next((m for m in mesh if m.node_id == self._node_id), None)
        if me is not None and me.subnet and (self._tasks is None or str(self._tasks.subnet) != me.subnet):
            from warren.network import owner, tasknet

            self._tasks = tasknet.TaskNetworkManager(
                me.subnet, tasknet.ledger_dir(self._data_dir), owner.tag(self._data_dir)
            )
        self._latest = mesh
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="overlay")

    def update_services(self, services: tuple[Endpoint, ...], vip_range: str, index: int = 0) -> None:
        """Service VIPs and their backends changed: the load balancer follows (newest wins)."""
        if not self.enabled:
            return
        self._services = services
        self._services_index = index
        if vip_range:
            self._vip_range = vip_range
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="overlay")

    async def _serve_names(self, services: tuple[Endpoint, ...]) -> None:
        """The embedded DNS on the bridge address answers for the services (ADR 17)."""
        from warren.network import dns

        gateway = str(self._tasks.gateway)
        if self._dns is None:
            try:
                self._dns = await dns.DnsServer.serve(gateway, DNS_PORT, dns.host_resolvers(exclude=[gateway]))
            except OSError as exc:
                log.error("the embedded DNS cannot listen on %s:%d: %s", gateway, DNS_PORT, exc)
                return
        # The node itself asks with its bridge address or the loopback: it sees every network.
        self._dns.records = dns.Records.of_endpoints(services, trusted=(gateway, "127.0.0.1"))

    async def leave(self) -> list[str]:
        """The node left the cluster: stop converging, then take its overlay networking down
        (what `teardown` removes). Returns what was removed."""
        await self.close()
        return await asyncio.to_thread(self._leave)

    def _leave(self) -> list[str]:
        with self._work:  # waits for a pass still running in a worker thread
            self._left = True
            return teardown(self._data_dir)

    def _guarded(self, work: Callable[..., Any], *args: Any) -> Any:
        with self._work:
            return None if self._left else work(*args)

    async def close(self) -> None:
        if self._dns is not None:
            self._dns.close()
        if self._keygen is not None:
            self._keygen.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._keygen
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while True:
            # Also every SUPERVISE_PERIOD without news: converging restarts a wireguard-go that
            # died (its configuration comes back from the diff) and repairs any drift.
            with contextlib.suppress(TimeoutError):
                await wait_within(self._wake.wait(), SUPERVISE_PERIOD)
            self._wake.clear()
            mesh, services, services_index = self._latest, self._services, self._services_index
            if mesh is not None:
                try:
                    applied = await self._call(self._guarded, self._converge, mesh)
                except Exception as exc:  # the next mesh update (or a restart) tries again
                    log.error("the overlay mesh did not converge: %s", exc)
                    self.stats = replace(self.stats, converge_failures=self.stats.converge_failures + 1)
                else:
                    if applied:
                        self.converged += 1
                        log.info("overlay mesh: applied %d change(s) for %d node(s)", applied, len(mesh))
            await self._sweep()
            # The table's 127.0.0.0/8 guard must stay while route_localnet is on (ADR 17).
            if self._balanced is not None and await self._call(self._guarded, self._table_present) is False:
                log.warning("the load balancer's nftables table is gone (a firewall reload?): loading it again")
                self._balanced = None
            # The nodes' subnets bound the isolation's task addresses (ADR 47): a new node's too.
            subnets = tuple(sorted(m.subnet for m in mesh if m.subnet)) if mesh is not None else ()
            if subnets != self._isolated_subnets:
                self._balanced = None
            if services is not None and services != self._balanced and self._tasks is not None:
                try:
                    await self._call(self._guarded, self._balance, services, subnets)
                except Exception as exc:
                    log.error("the service load balancer was not updated: %s", exc)
                else:
                    self._balanced = services
                    self._isolated_subnets = subnets
                    backends = sum(len(e.backends) for e in services)
                    self.stats = replace(self.stats, services=len(services), backends=backends)
                    log.info("service VIPs: %d service(s) balanced", len(services))
                    await self._serve_names(services)
            if services is not None and services == self._balanced and services_index != self.services_applied:
                self.services_applied = services_index
                self.routing_changed.set()

    @staticmethod
    def _table_present() -> bool:
        from warren.network import lb

        listed = subprocess.run(["nft", "list", "table", "ip", lb.TABLE], capture_output=True, timeout=10)
        return listed.returncode == 0

    def _balance(self, services: tuple[Endpoint, ...], subnets: tuple[str, ...] = ()) -> None:
        """Route the VIP range to the bridge (so the node's own connections to a VIP leave) and
        replace the load balancer's nftables table, with the networks' isolation (ADR 47), in
        one transaction."""
        self._tasks.ensure_bridge()
        if self._vip_range:
            self._tasks.route_vips(self._vip_range)
        from warren.network import isolation, lb

        subnet = str(self._tasks.subnet)  # its tasks take the host-mode ports (ADR 46)
        balancing = lb.ruleset(services, bridge=self._tasks.bridge, owner=self._tasks.owner_tag, local_subnet=subnet)
        self._tasks.apply_nft(balancing + isolation.ruleset(services, subnets))
        for ifname in (self._tasks.bridge, self._ifname):  # published ports on 127.0.0.1 too
            self._tasks.route_localnet(ifname)

    def _converge(self, mesh: tuple[MeshMember, ...]) -> int:
        from warren.network import mesh as mesh_io
        from warren.network import plan, wireguard

        me = next((m for m in mesh if m.node_id == self._node_id), None)
        if me is None or not me.public_key:
            return 0  # our subnet or key is not in the state yet: the next update will have it
        pending = self._keys.pending()
        if pending is not None and pending.public_key == me.public_key:
            # The managers published our rotated key: the other nodes switch on this same push.
            time.sleep(KEY_SWITCH_DELAY)
            self._keys.activate(pending.epoch)
            log.info("switching to the WireGuard key of epoch %d", pending.epoch)
        active = self._keys.active()
        if active is None:
            return 0
        # Our interface always holds the key we have; the others use what the managers published.
        nodes = [
            plan.MeshNode(
                m.node_id, active.public_key if m is me else (m.public_key or None), m.endpoint or None, m.subnet
            )
            for m in mesh
            if m.subnet
        ]
        desired = plan.plan_mesh(
            nodes, self._node_id, private_key_ref=str(active.private_path), ifname=self._ifname, listen_port=self._port
        )
        if self._device is None:
            # The key ring names our public key: deriving it would load `cryptography` (~7 MiB).
            self._device = wireguard.make_device(self._ifname, self.mode, public_of=self._keys.public_of)
        applied = mesh_io.converge(self._device, desired).applied  # starts, or adopts, the device
        self._tag_interface()
        node_of = {m.public_key: m.node_id for m in mesh if m.public_key}
        peers = tuple(
            PeerStats(node_of.get(p.public_key, "?"), p.last_handshake, p.rx_bytes, p.tx_bytes)
            for p in self._device.status().peers
        )
        self.stats = replace(self.stats, key_epoch=active.epoch, peers=peers)
        return applied

    def _tag_interface(self) -> None:
        """Mark the WireGuard interface as this node's, as the bridge and the table are (ADR 23)."""
        from warren.network import links, owner

        mine = owner.tag(self._data_dir)
        if links.link_alias(self._ifname) not in (None, mine):
            links.set_link_alias(self._ifname, mine)
