"""A deposed leader holding an entry nobody else has must catch up once healed (issue #10).

Three real managers in network namespaces (the chaos lab): the leader is cut off from the other
two by nftables while it still takes a write it cannot commit; the two others elect a leader and
move more than one append (64 KiB) ahead; then the partition heals. PySyncObj kept the deposed
leader connected but never caught up (ADR 26), so that once the new leader died, the two managers
left could not commit anything: the chaos run of issue #10, round 28, made deterministic.

Needs root (namespaces, nftables); skipped otherwise. Everything is removed by recorded name/PID.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos import checker
from chaos.cluster import Cluster, NodeProc
from chaos.faults import Partition
from chaos.lab import Lab, cleanup_state
from chaos.run import STATE_DIR
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)"),
]

# More than PySyncObj's 64 KiB per append: the leader sends the gap as several appends at once.
FILL_WRITES = 32
FILL_BYTES = 4096


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[tuple[Lab, Cluster]]:
    run_id = f"wch-{secrets.token_hex(3)}"
    lab = Lab(run_id, STATE_DIR / f"{run_id}.json")
    cluster: Cluster | None = None
    try:
        lab.create(["m1", "m2", "m3", "client"])
        cluster = Cluster(lab, tmp_path, managers=3, workers=0)
        cluster.bring_up()
        yield lab, cluster
    finally:
        if cluster is not None:
            cluster.stop_all()
        cleanup_state(lab.state_file)


def _leader_among(cluster: Cluster, managers: list[NodeProc]) -> NodeProc | None:
    for m in managers:
        reply = cluster.probe.call(op="info", addr=m.api_addr, timeout=1.0)
        if reply["ok"] and reply["raft_state"] == "leader":
            return m
    return None


def _links(cluster: Cluster, leader: NodeProc, applied: int) -> list[str]:
    reply = cluster.probe.call(op="info", addr=leader.api_addr, timeout=3.0)
    if not reply["ok"]:
        return [reply["detail"]]
    names = {m.api_addr: m.name for m in cluster.managers}
    return checker.check_links([{**m, "name": names[m["api_addr"]]} for m in reply["managers"]], applied)


def test_a_deposed_leader_with_an_uncommitted_entry_catches_up_and_keeps_quorum(trio) -> None:
    lab, cluster = trio
    probe = cluster.probe
    old = cluster.leader()
    assert old is not None
    others = [m for m in cluster.managers if m is not old]
    node = old.node_id()
    partition = Partition(f"wch_{lab.prefix.rsplit('-', 1)[-1]}")
    try:
        hosts = {h.ip: h for h in lab.hosts.values()}
        partition.apply(hosts, {old.host.ip: {m.host.ip for m in others}})
        # Its links still look alive and it leads for up to a second more: it appends this write
        # to its log, and cannot commit it.
        stranded = probe.call(op="label", addr=old.api_addr, node=node, key="stranded", size=16, timeout=3.0)
        assert stranded.get("code") == "DEADLINE_EXCEEDED" or "did not commit" in stranded.get("detail", ""), stranded
        new = wait_for(lambda: _leader_among(cluster, others), timeout=15, message="a leader among the other two")
        for i in range(FILL_WRITES):
            reply = probe.call(op="label", addr=new.api_addr, node=node, key="fill", size=FILL_BYTES, timeout=5.0)
            assert reply["ok"], (i, reply)
    finally:
        partition.heal()

    new = wait_for(lambda: _leader_among(cluster, cluster.managers), timeout=15, message="a leader after the heal")
    applied = probe.call(op="info", addr=new.api_addr, timeout=3.0)["applied_index"]
    problems: list[list[str]] = []

    def caught_up() -> bool:
        problems.append(_links(cluster, new, applied))
        return not problems[-1]

    try:
        wait_for(caught_up, timeout=10, message=f"every manager connected and caught up to entry {applied}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {problems[-1]}") from None

    # The leader dies: the deposed one and the third manager still make a quorum.
    new.kill()
    survivors = [m.api_addr for m in cluster.managers if m is not new]
    write = probe.call(op="first_write", addrs=survivors, node=node, timeout=15.0)
    assert write["ok"], write
