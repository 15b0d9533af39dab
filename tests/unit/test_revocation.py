"""`node rm` revokes: the FSM keeps removed node ids, persists them, and never lets them back."""

from __future__ import annotations

from pathlib import Path

from warren import commands
from warren.manager.store import Store, open_environment
from warren.model import Node, NodeRole, RevokedNode
from warren.state import ClusterState

DAY = 24 * 3600.0


def _run(state: ClusterState, command: commands.Command) -> commands.Result:
    result, changes = commands.apply(state, command)
    state.apply(changes)
    return result


def _with_nodes(*ids: str) -> ClusterState:
    state = ClusterState()
    for node_id in ids:
        assert _run(state, commands.RegisterNode(Node(id=node_id, hostname=f"h-{node_id}"))).ok
    return state


def test_remove_revokes_and_the_id_never_registers_again() -> None:
    state = _with_nodes("n1", "n2")
    assert _run(state, commands.RemoveNode("n1", at=100.0)).ok
    assert "n1" not in state.nodes
    assert state.revoked == {"n1": RevokedNode("n1", 100.0)}
    assert state.is_revoked("n1") and not state.is_revoked("n2")
    result = _run(state, commands.RegisterNode(Node(id="n1", hostname="h-n1")))
    assert (result.ok, result.code) == (False, "permission_denied")
    assert "removed from the cluster" in result.message
    assert "n1" not in state.nodes
    assert not _run(state, commands.RemoveNode("n1", at=101.0)).ok  # not_found: nothing to remove


def test_apply_does_not_mutate_and_copy_keeps_revocations() -> None:
    state = _with_nodes("n1")
    result, changes = commands.apply(state, commands.RemoveNode("n1", at=5.0))
    assert result.ok and changes
    assert not state.revoked and "n1" in state.nodes  # apply only computes
    state.apply(changes)
    snapshot = state.copy()
    assert snapshot.revoked == state.revoked and snapshot.revoked is not state.revoked


def test_revocations_older_than_any_certificate_are_dropped() -> None:
    state = _with_nodes("old", "recent", "now")
    _run(state, commands.RemoveNode("old", at=0.0))
    _run(state, commands.RemoveNode("recent", at=300 * DAY))
    later = commands.REVOCATION_RETENTION + 1.0
    _run(state, commands.RemoveNode("now", at=later))
    assert set(state.revoked) == {"recent", "now"}
    assert commands.REVOCATION_RETENTION > 365 * DAY + 600  # outlives the longest certificate


def test_the_embedded_agent_does_not_overwrite_a_managers_addresses() -> None:
    state = ClusterState()
    manager = Node(id="m1", hostname="h", role=NodeRole.MANAGER, addr="10.0.0.1:4242", join_addr="10.0.0.1:4244")
    _run(state, commands.RegisterNode(manager))
    _run(state, commands.RegisterNode(Node(id="m1", hostname="h2", role=NodeRole.MANAGER, addr="")))
    node = state.nodes["m1"]
    assert (node.hostname, node.addr, node.join_addr) == ("h2", "10.0.0.1:4242", "10.0.0.1:4244")


def test_revocations_are_persisted_and_travel_in_snapshots(tmp_path: Path) -> None:
    store = Store(open_environment(tmp_path / "db"))
    for index, command in enumerate(
        [commands.RegisterNode(Node(id="n1", hostname="h")), commands.RemoveNode("n1", at=7.0)], start=1
    ):
        result, changes = commands.apply(store.state, command)
        assert result.ok
        store.commit(index, changes)
    dump = store.dump()
    store.env.close()

    reopened = Store(open_environment(tmp_path / "db"))
    assert reopened.state.revoked == {"n1": RevokedNode("n1", 7.0)}
    assert dump.revoked == [RevokedNode("n1", 7.0)]
    reopened.env.close()

    fresh = Store(open_environment(tmp_path / "fresh"))
    fresh.restore(dump)
    assert fresh.state.is_revoked("n1")
    fresh.env.close()


def test_a_derived_check_is_worked_out_once_per_applied_entry_and_sees_each_commit(tmp_path: Path) -> None:
    """What every API call checks (revocations, ADR 88) is computed from the state once per
    applied entry, not at every call under the store's lock."""
    store = Store(open_environment(tmp_path / "db"))
    computed: list[int] = []

    def revoked_ids(state: ClusterState) -> frozenset[str]:
        computed.append(store.applied_index)
        return frozenset(state.revoked)

    revoked = store.derived(revoked_ids)
    commands_in_order = [
        commands.RegisterNode(Node(id="n1", hostname="h1")),
        commands.RegisterNode(Node(id="n2", hostname="h2")),
        commands.RemoveNode("n1", at=7.0),
    ]
    seen = []
    for index, command in enumerate(commands_in_order, start=1):
        result, changes = commands.apply(store.state, command)
        assert result.ok
        store.commit(index, changes)
        seen.append([revoked(), revoked(), revoked()])
    assert seen == [[frozenset()] * 3, [frozenset()] * 3, [frozenset({"n1"})] * 3]
    assert computed == [1, 2, 3]  # once per entry, whatever the calls
    store._reload()  # a failed transaction reloads the state: the check is worked out again
    assert revoked() == frozenset({"n1"}) and computed == [1, 2, 3, 3]
    store.env.close()
