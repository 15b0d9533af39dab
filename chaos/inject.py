"""One round's fault, injected by the chaos runner (chaos.run): kill, stop or restart a manager
or a worker, cut the network between namespaces, or degrade a node's link (the kinds in
chaos.faults), hold it for the round, and hand back the steps that heal it. Meanwhile it times
how long the managers take to acknowledge a write again (failover, restart) and, for a cut-off
worker, checks that its tasks kept running.

A mixin of `Runner`, which holds the lab, the cluster and the figures these add to.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from chaos import checker
from chaos.cluster import Cluster, NodeProc
from chaos.faults import MID_ROLLOUT, Netem, Partition, Round
from chaos.lab import Lab
from chaos.midupdate import MidUpdate


class FaultInjection:
    """The runner's faults and what it measures while they hold."""

    lab: Lab
    root: Path
    run_id: str
    cluster: Cluster | None
    mid_update: MidUpdate | None
    failovers: dict[str, list[float]]
    recoveries: list[float]

    def inject(self, rnd: Round, notes: list[str], problems: list) -> tuple[str, list, tuple | None]:
        """Inject the round's fault, hold it, and return the undo steps (run in a `finally`)."""
        cluster = self.cluster
        assert cluster is not None and cluster.probe is not None
        kind = rnd.kind
        heal: list = []
        leader = cluster.leader()
        if leader is None:
            problems.append(("leader", "no manager answers as leader before the fault"))
            return "-", heal, None
        if kind in MID_ROLLOUT:
            if self.mid_update is None:
                self.mid_update = MidUpdate(self.lab, cluster, self.root, self.run_id)
            self.mid_update.start(rnd, leader, notes, problems)
            leader = cluster.leader(timeout=5.0) or leader  # the one to kill: the leader now
        followers = [m for m in cluster.managers if m is not leader]
        workers = cluster.workers
        hosts_by_ip = {h.ip: h for h in self.lab.hosts.values()}

        def pick(nodes: list[NodeProc]) -> NodeProc:
            return sorted(nodes, key=lambda n: n.name)[rnd.pick % len(nodes)]

        if kind in ("kill_leader", "restart_leader", *MID_ROLLOUT):
            t0 = time.monotonic()
            if kind != "restart_leader":
                leader.kill()
            else:
                leader.terminate()
            heal.append(leader.start)
            if followers:
                self.measure_failover(kind, leader, followers, t0, notes, problems)
            time.sleep(max(0.0, t0 + rnd.hold - time.monotonic()))
            if not followers:  # one manager: time from the restart to it answering a write
                heal.pop()
                t1 = time.monotonic()
                leader.start()
                reply = cluster.probe.call(op="first_leader", addrs=[leader.api_addr], timeout=30.0)
                if reply["ok"]:
                    self.recoveries.append(reply["t"] - t1)
                    notes.append(f"restart {reply['t'] - t1:.2f}s")
                else:
                    problems.append(("restart", reply["detail"]))
            return leader.name, heal, None
        if kind in ("kill_follower", "kill_worker"):
            node = pick(followers if kind == "kill_follower" else workers)
            node.kill()
            heal.append(node.start)
            time.sleep(rnd.hold)
            return node.name, heal, None
        if kind.startswith("stop_"):
            node = {"stop_leader": leader, "stop_follower": pick(followers) if followers else leader}.get(kind)
            node = node or pick(workers)
            t0 = time.monotonic()
            node.signal(signal.SIGSTOP)
            heal.append(lambda: node.signal(signal.SIGCONT))
            if node is leader and followers:
                self.measure_failover(kind, leader, followers, t0, notes, problems)
            time.sleep(max(0.0, t0 + rnd.hold - time.monotonic()))
            return node.name, heal, None
        table = f"wch_{self.run_id.rsplit('-', 1)[-1]}"
        if kind == "netem":
            node = pick(cluster.nodes)
            netem = Netem(node.host, rnd.loss, rnd.delay_ms, f"{table}_loss")
            how = netem.apply()
            if how:
                heal.append(netem.heal)
            notes.append({"netem": "netem", "nft-loss": "loss only (no netem in this kernel)"}.get(how, "unavailable"))
            time.sleep(rnd.hold)
            return node.name, heal, None
        partition = Partition(table)
        heal.append(partition.heal)
        manager_ips = {m.host.ip for m in cluster.managers}
        if kind == "isolate_leader":
            everyone = {h.ip for h in self.lab.hosts.values()} - {leader.host.ip}
            t0 = time.monotonic()
            partition.apply(hosts_by_ip, {leader.host.ip: everyone})
            self.measure_failover(kind, leader, followers, t0, notes, problems)
            time.sleep(max(0.0, t0 + rnd.hold - time.monotonic()))
            return leader.name, heal, None
        elif kind == "partition_minority":
            node = pick(followers)
            partition.apply(hosts_by_ip, {node.host.ip: manager_ips - {node.host.ip}})
            target = node.name
        elif kind == "partition_majority":
            lone, worker = pick(followers), pick(workers)
            majority = {leader.host.ip} | ({m.host.ip for m in followers} - {lone.host.ip})
            partition.apply(hosts_by_ip, {lone.host.ip: majority, worker.host.ip: majority})
            target = f"{lone.name}+{worker.name}"
        elif kind == "isolate_worker":
            node = pick(workers)
            partition.apply(hosts_by_ip, {node.host.ip: manager_ips})
            t_cut = time.monotonic()
            before = node.task_processes()
            wanted = self.wanted_on(node)  # read after the cut: no stop can reach the worker since
            time.sleep(max(0.0, t_cut + rnd.hold - time.monotonic()))
            kept = checker.check_kept_running(before, node.task_processes(), wanted)
            problems += [("autonomy", f"{p}; its log ends: {node.log_tail(5)!r}") for p in kept]
            notes.append(f"kept {sum(before.values())} tasks running")
            return node.name, heal, (node, before)
        else:
            raise ValueError(f"unknown fault {kind}")
        time.sleep(rnd.hold)
        return target, heal, None

    def wanted_on(self, node: NodeProc) -> set[str] | None:
        """The tasks the leader wants running on `node`, or None if no leader answers."""
        cluster = self.cluster
        assert cluster is not None and cluster.probe is not None
        leader = cluster.leader(timeout=5.0)
        if leader is None:
            return None
        reply = cluster.probe.call(op="state", addr=leader.api_addr)
        if not reply["ok"]:
            return None
        node_id = node.node_id()
        return {t["id"] for t in reply["tasks"] if t["node_id"] == node_id and t["desired_state"] == "running"}

    def measure_failover(self, kind: str, leader: NodeProc, followers: list[NodeProc], t0: float, notes, problems):
        """Time from the fault at t0 until a follower acknowledges a write (a node label), then
        check that the manager which took it names another leader."""
        cluster = self.cluster
        node = cluster.workers[0].node_id() if cluster.workers else followers[0].node_id()
        addrs = [f.api_addr for f in followers]
        reply = cluster.probe.call(op="first_write", addrs=addrs, node=node, timeout=30.0)
        if not reply["ok"]:
            problems.append(("failover", reply["detail"]))
            return
        self.failovers.setdefault(kind, []).append(reply["t"] - t0)
        notes.append(f"failover {reply['t'] - t0:.2f}s")
        info = cluster.probe.call(op="info", addr=reply["addr"], timeout=5.0)
        if info["ok"] and info["leader_api_addr"] == leader.api_addr:
            problems.append(("failover", f"{reply['addr']} took a write naming the deposed {leader.name} as leader"))
