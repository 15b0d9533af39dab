"""Events (ADR 45): the pure mapping of committed changes to events, the filters, the ids, and
the history the LMDB store keeps in the transaction of each apply."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tests.unit.core_sim import Sim, node, spec
from warren import commands, events
from warren.events import Event, parse_filters, parse_id
from warren.manager import store as store_module
from warren.manager.store import Store, open_environment
from warren.model import Availability, Config, NodeStatus, Secret, TaskState, UpdateConfig
from warren.state import ClusterState, Delete, Put


class EventSim(Sim):
    """The core simulator, recording the events each command makes as the store derives them."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []
        self.index = 0

    def run(self, command: commands.Command) -> commands.Result:
        result, changes = commands.apply(self.state, command)
        assert result.ok, result
        self.index += 1
        self.events += events.derive(self.state, command, changes, self.index, 0, events.command_time(command))
        self.state.apply(changes)
        return result

    def seen(self, kind: str) -> list[tuple[str, str]]:
        return [(e.action, e.actor_name) for e in self.events if e.type == kind]


def test_a_service_lifecycle_gives_create_task_states_rollout_and_remove() -> None:
    sim = EventSim()
    sim.add_node(node("n1"))
    service_id = sim.create_service(spec("web", replicas=1, update=UpdateConfig(monitor=0.0)))
    sim.converge()
    assert sim.seen("service") == [("create", "web")]
    task_actions = [a for a, name in sim.seen("task") if name == "web.1"]
    assert task_actions == ["assigned", "running"]  # created placed, then started
    running = next(e for e in sim.events if e.type == "task" and e.action == "running")
    assert running.attributes["service"] == "web" and running.attributes["node"] == "host-n1"
    assert running.attributes["service_id"] == service_id and running.time > 0

    sim.events.clear()
    sim.update_service(service_id, spec("web", image="busybox:2", update=UpdateConfig(monitor=0.0)))
    sim.converge()
    service_actions = [a for a, _ in sim.seen("service")]
    assert service_actions[0] == "update"
    assert "rollout_started" in service_actions and service_actions[-1] == "rollout_completed"
    assert ("shutdown", "web.1") in sim.seen("task")  # the old task, replaced

    sim.events.clear()
    sim.run(commands.RemoveService(service_id, at=sim.now))
    assert sim.seen("service") == [("remove", "web")]


def test_a_failed_task_carries_its_exit_code_and_error() -> None:
    sim = EventSim()
    sim.add_node(node("n1"))
    sim.create_service(spec("job"))
    sim.reconcile()
    sim.agents_step()
    task = next(iter(sim.state.tasks.values()))
    sim.events.clear()
    sim.report(task, TaskState.FAILED, exit_code=3, error="exit status 3")
    (event,) = sim.events
    assert (event.type, event.action, event.actor_id) == ("task", "failed", task.id)
    assert event.attributes["exit_code"] == "3" and event.attributes["error"] == "exit status 3"
    assert event.time == sim.now  # the report's own time, not a clock read here


def test_node_events_join_ready_down_drain_and_remove() -> None:
    sim = EventSim()
    sim.add_node(node("n1", status=NodeStatus.UNKNOWN))
    assert sim.seen("node") == [("join", "host-n1")]
    sim.events.clear()
    sim.run(commands.SetNodeStatus("n1", NodeStatus.READY, "", at=5.0))
    sim.run(commands.SetNodeStatus("n1", NodeStatus.DOWN, "heartbeat missed", at=6.0))
    sim.run(commands.UpdateNode("n1", at=7.0, availability=Availability.DRAIN))
    sim.run(commands.RemoveNode("n1", at=8.0))
    assert [a for a, _ in sim.seen("node")] == ["ready", "down", "drain", "remove"]
    assert [e.time for e in sim.events] == [5.0, 6.0, 7.0, 8.0]
    assert sim.events[1].attributes["message"] == "heartbeat missed"


def test_secrets_configs_and_the_leader_announcement() -> None:
    secret = Secret(id="s1", name="db-pass", sealed=b"x", size=1, created_at=3.0)
    (created,) = events.derive(ClusterState(), None, [Put("secret", secret)], 1, 0, 3.0)
    assert (created.type, created.action, created.actor_name) == ("secret", "create", "db-pass")
    state = ClusterState()
    state.apply([Put("config", Config(id="c1", name="app.conf", data=b""))])
    remove = commands.RemoveConfig("c1", at=4.0)
    (removed,) = events.derive(state, remove, [Delete("config", "c1")], 2, 0, events.command_time(remove))
    assert (removed.type, removed.action, removed.actor_name, removed.time) == ("config", "remove", "app.conf", 4.0)

    sim = EventSim()
    sim.add_node(node("m1"))
    announce = commands.AnnounceLeader("m1", "127.0.0.1:4243", term=7, at=11.0)
    assert commands.apply(sim.state, announce)[1] == []  # changes nothing in the state
    (leader,) = events.derive(sim.state, announce, [], 12, 0, events.command_time(announce))
    assert (leader.type, leader.action, leader.actor_name) == ("cluster", "leader", "host-m1")
    assert leader.attributes["term"] == "7" and leader.time == 11.0 and leader.id == "12.0"


def test_ids_number_events_within_their_entry() -> None:
    sim = EventSim()
    sim.add_node(node("n1"))
    sim.create_service(spec("web", replicas=3))
    plan = sim.plan()
    _, changes = commands.apply(sim.state, plan)
    derived = events.derive(sim.state, plan, changes, 42, 5, 1.0)
    assert [e.key for e in derived] == [(42, 5 + i) for i in range(len(derived))]
    assert len(derived) == 3 and parse_id(derived[1].id) == (42, 6)


@pytest.mark.parametrize("text", ["", "12", "12.", ".3", "a.b", "1.2.3", "-1.2", "1" * 50 + ".1"])
def test_a_bad_event_id_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid event id"):
        parse_id(text)


def _event(kind: str, action: str, actor: str, **attributes: str) -> Event:
    return Event(1, 0, 1.0, kind, action, actor + "-id", actor, attributes)


def test_filters_or_within_a_key_and_across_keys() -> None:
    web_running = _event("task", "running", "web.1", service="web", service_id="s1", node="n1", node_id="n1-id")
    db_failed = _event("task", "failed", "db.1", service="db", service_id="s2", node="n2", node_id="n2-id")
    web_created = _event("service", "create", "web")
    node_down = _event("node", "down", "n1")
    every = [web_running, db_failed, web_created, node_down]

    def kept(*pairs: tuple[str, str]) -> list[Event]:
        chosen = parse_filters(list(pairs))
        return [e for e in every if chosen.matches(e)]

    assert kept() == every
    assert kept(("service", "web")) == [web_running, web_created]
    assert kept(("service", "s2")) == [db_failed]  # by id too
    assert kept(("service", "web"), ("service", "db")) == [web_running, db_failed, web_created]
    assert kept(("service", "web"), ("type", "task")) == [web_running]
    assert kept(("node", "n1")) == [web_running, node_down]
    assert kept(("event", "running"), ("event", "failed")) == [web_running, db_failed]
    assert kept(("type", "service"), ("event", "running")) == []


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("colour", "red")], "unknown event filter"),
        ([("type", "container")], "unknown event type"),
        ([("event", "explode")], "unknown event"),
        ([("service", "")], "needs a value"),
        ([("node", "x" * 300)], "at most 253"),
    ],
)
def test_bad_filters_are_refused(pairs: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_filters(pairs)


# -- the history in the store ------------------------------------------------------------------
def _commit(store: Store, command: commands.Command) -> None:
    result, changes = commands.apply(store.state, command)
    assert result.ok, result
    store.commit(store.applied_index + 1, changes, command)


def test_the_history_is_written_with_the_apply_and_survives_a_restart(tmp_path: Path) -> None:
    store = Store(open_environment(tmp_path / "db"))
    _commit(store, commands.RegisterNode(node("n1")))
    _commit(store, commands.RemoveNode("n1", at=9.0))
    history = store.events_after(None)
    assert [(e.key, e.action) for e in history] == [((1, 0), "join"), ((1, 1), "ready"), ((2, 0), "remove")]
    assert store.events_after((1, 0)) == history[1:]
    assert store.events_after((1, 1)) == history[2:] and store.events_after((2, 0)) == []
    store.env.close()

    reopened = Store(open_environment(tmp_path / "db"))
    assert reopened.events_after(None) == history and reopened.last_event == history[-1]
    dump = reopened.dump()
    reopened.env.close()
    fresh = Store(open_environment(tmp_path / "fresh"))
    fresh.restore(dump)  # a follower catching up from a snapshot gets the same history
    assert fresh.events_after(None) == history
    fresh.env.close()


def test_a_batch_numbers_events_across_its_commands(tmp_path: Path) -> None:
    store = Store(open_environment(tmp_path / "db"))
    batch = [commands.RegisterNode(node("n1")), commands.RegisterNode(node("n2"))]
    store.commit_each(1, batch, commands.apply)
    assert [(e.key, e.actor_id, e.action) for e in store.events_after(None)] == [
        ((1, 0), "n1", "join"),
        ((1, 1), "n1", "ready"),
        ((1, 2), "n2", "join"),
        ((1, 3), "n2", "ready"),
    ]
    store.env.close()


def test_the_history_keeps_the_larger_of_a_count_and_an_hour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "HISTORY_MIN_EVENTS", 3)
    monkeypatch.setattr(store_module, "HISTORY_MIN_AGE", 100.0)
    monkeypatch.setattr(store_module, "HISTORY_MAX_EVENTS", 6)
    store = Store(open_environment(tmp_path / "db"))
    _commit(store, commands.RegisterNode(node("n1", status=NodeStatus.UNKNOWN)))  # 1.0: join, at time 0
    for i, at in enumerate([10.0, 20.0, 30.0, 40.0], start=2):  # all within the hour: all kept
        status = NodeStatus.DOWN if i % 2 else NodeStatus.READY
        _commit(store, commands.SetNodeStatus("n1", status, "", at=at))
    assert len(store.events_after(None)) == 5 and store.events_pruned is None
    _commit(store, commands.SetNodeStatus("n1", NodeStatus.READY, "", at=125.0))  # older than 25 may go
    kept = store.events_after(None)
    assert [e.time for e in kept] == [30.0, 40.0, 125.0] and store.events_pruned == (3, 0)
    monkeypatch.setattr(store_module, "HISTORY_MIN_AGE", 10_000.0)
    for i in range(6):  # a burst within the "hour": bounded by the maximum
        status = NodeStatus.DOWN if i % 2 == 0 else NodeStatus.READY
        _commit(store, commands.SetNodeStatus("n1", status, "", at=130.0 + i))
    assert [e.time for e in store.events_after(None)] == [125.0, 130.0, 131.0, 132.0, 133.0, 134.0, 135.0][1:]
    store.env.close()
    assert msgspec.json.decode(msgspec.json.encode(kept[0]), type=Event) == kept[0]


def test_a_network_change_is_mapped_once_the_state_has_networks() -> None:
    """The Network model is new (#14); its commands come from another part. Its changes map by
    kind and name, so they become events as soon as they exist."""
    from warren.model import Network

    network = Network(id="net1", name="backend", created_at=5.0)
    put = Put("network", network)  # type: ignore[arg-type]  # not yet a Kind of the state
    (created,) = events.derive(ClusterState(), None, [put], 3, 0, 5.0)
    assert (created.type, created.action, created.actor_id, created.actor_name) == (
        "network",
        "create",
        "net1",
        "backend",
    )
    state = ClusterState()
    state.networks = {"net1": network}  # type: ignore[attr-defined]  # as the state will hold them
    (removed,) = events.derive(state, None, [Delete("network", "net1")], 4, 0, 6.0)  # type: ignore[arg-type]
    assert (removed.action, removed.actor_name) == ("remove", "backend")
