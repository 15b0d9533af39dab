"""The chaos checker and the suite's pure parts, on hand-made histories and states."""

from __future__ import annotations

from chaos import checker
from chaos.faults import eligible, nft_loss_ruleset, nft_ruleset, partition_rules, plan_rounds
from chaos.midupdate import in_the_middle
from chaos.rpc import classify
from chaos.workload import Planner

_seq = iter(range(1, 10_000))


def op(kind: str, service: str = "a", outcome: str = "ok", **fields) -> dict:
    entry = {"seq": next(_seq), "op": kind, "service": service, "outcome": outcome}
    if kind == "create":
        entry.update(replicas=fields.pop("replicas", 1), gen=0)
    elif kind == "update":
        entry.update(replicas=fields.pop("replicas", 1))
        entry["gen"] = fields.pop("gen", entry["seq"])
    entry.update(fields)
    return entry


def svc(name: str = "a", replicas: int = 1, version: int = 1, gen: int | str = 0) -> dict:
    return {"id": f"id-{name}", "name": name, "replicas": replicas, "version": version, "env": {"GEN": str(gen)}}


def task(tid: str, service: str = "a", slot: int = 1, node: str = "n1", state: str = "running", **kw) -> dict:
    return {
        "id": tid,
        "service_id": f"id-{service}",
        "service": service,
        "slot": slot,
        "node_id": node,
        "state": state,
        "desired_state": kw.get("desired", "running"),
        "spec_version": kw.get("version", 1),
        "relocates": kw.get("relocates", ""),
    }


# -- acknowledged writes ------------------------------------------------------------------------


def test_a_consistent_history_passes():
    history = [op("create"), op("scale", replicas=3), op("create", "b"), op("remove", "b")]
    assert checker.check_writes(history, [svc(replicas=3)]) == []


def test_an_acknowledged_create_must_exist():
    problems = checker.check_writes([op("create")], [])
    assert len(problems) == 1 and "acknowledged create" in problems[0]


def test_a_create_may_vanish_after_an_unknown_remove():
    assert checker.check_writes([op("create"), op("remove", outcome="unknown")], []) == []


def test_an_unknown_create_may_or_may_not_exist():
    history = [op("create", outcome="unknown", replicas=2)]
    assert checker.check_writes(history, []) == []
    assert checker.check_writes(history, [svc(replicas=2)]) == []


def test_an_acknowledged_remove_is_never_undone():
    problems = checker.check_writes([op("create"), op("remove")], [svc()])
    assert problems and "remove" in problems[0]


def test_a_failed_create_never_appears():
    problems = checker.check_writes([op("create", outcome="failed")], [svc()])
    assert problems and "failed" in problems[0]


def test_a_service_nobody_created_is_reported():
    assert "never created" in checker.check_writes([], [svc("ghost")])[0]


def test_replicas_are_the_last_acknowledged_scale():
    history = [op("create"), op("scale", replicas=3), op("scale", replicas=0, outcome="failed")]
    assert checker.check_writes(history, [svc(replicas=3)]) == []
    problems = checker.check_writes(history, [svc(replicas=0)])
    assert problems and "replicas 0" in problems[0]


def test_replicas_may_be_a_later_unknown_scale_but_not_an_earlier_one():
    history = [
        op("create"),
        op("scale", replicas=2, outcome="unknown"),
        op("scale", replicas=3),
        op("scale", replicas=0, outcome="unknown"),
    ]
    assert checker.check_writes(history, [svc(replicas=3)]) == []
    assert checker.check_writes(history, [svc(replicas=0)]) == []
    assert checker.check_writes(history, [svc(replicas=2)]) != []


def test_an_update_counts_as_a_replicas_write():
    history = [op("create", replicas=1), op("update", replicas=2, gen=7)]
    assert checker.check_writes(history, [svc(replicas=2, version=2, gen=7)]) == []


def test_the_last_acknowledged_update_is_visible():
    history = [op("create"), op("update", gen=10), op("update", gen=11)]
    assert checker.check_writes(history, [svc(version=3, gen=11)]) == []
    problems = checker.check_writes(history, [svc(version=3, gen=10)])
    assert any("GEN=10" in p for p in problems)


# -- applied once -------------------------------------------------------------------------------


def test_an_update_applied_twice_shows_in_the_version():
    history = [op("create"), op("update", gen=5), op("update", gen=6)]
    problems = checker.check_writes(history, [svc(version=4, gen=6)])
    assert any("3 updates applied" in p for p in problems)


def test_a_lost_update_shows_in_the_version():
    history = [op("create"), op("update", gen=5), op("update", gen=6)]
    problems = checker.check_writes(history, [svc(version=2, gen=6)])
    assert any("1 updates applied" in p for p in problems)


def test_unknown_updates_widen_the_allowed_versions():
    history = [op("create"), op("update", gen=5), op("update", gen=6, outcome="unknown")]
    assert checker.check_writes(history, [svc(version=2, gen=5)]) == []
    assert checker.check_writes(history, [svc(version=3, gen=6)]) == []
    assert checker.check_writes(history, [svc(version=4, gen=6)]) != []


def test_failed_updates_apply_nowhere():
    history = [op("create"), op("update", gen=5, outcome="failed")]
    assert checker.check_writes(history, [svc(version=1, gen=0)]) == []
    assert checker.check_writes(history, [svc(version=2, gen=5)]) != []


# -- slots, convergence, workers ----------------------------------------------------------------


def test_two_running_tasks_in_one_slot():
    tasks = [task("t1", slot=1), task("t2", slot=1, node="n2"), task("t3", slot=2)]
    assert checker.check_slots(tasks) == ["a: 2 running tasks of version 1 hold slot 1"]


def test_a_start_first_replacement_may_share_its_slot_with_the_old_version():
    assert checker.check_slots([task("t1", slot=1), task("t2", slot=1, version=2)]) == []


def test_a_rebalance_move_may_share_its_slot_with_the_task_it_replaces_only():
    move = [task("t1", slot=1), task("t2", slot=1, node="n2", relocates="t1")]
    assert checker.check_slots(move) == []
    stray = [task("t1", slot=1), task("t2", slot=1, node="n2", relocates="t9")]
    assert checker.check_slots(stray) == ["a: 2 running tasks of version 1 hold slot 1"]


def test_a_stopping_task_does_not_hold_its_slot():
    tasks = [task("t1", slot=1), task("t2", slot=1, desired="shutdown")]
    assert checker.check_slots(tasks) == []


def test_a_stop_first_update_never_shares_a_slot():
    tasks = [task("t1", slot=1), task("t2", slot=1, version=2), task("t3", slot=2, service="b", version=2)]
    tasks.append(task("t4", slot=2, service="b"))
    assert checker.check_slots(tasks, stop_first=["id-a"]) == [
        "a: running tasks of versions [1, 2] hold slot 1 of a stop-first update"
    ]
    stopping = [task("t1", slot=1, desired="shutdown"), task("t2", slot=1, version=2)]
    assert checker.check_slots(stopping, stop_first=["id-a"]) == []


# -- a rolling update across a failover (issue #12) ------------------------------------------


def rolled(version=2, state="completed", to_version=None, started_at=100.0, replicas=2, message=""):
    status = {
        "state": state,
        "started_at": started_at,
        "completed_at": 0.0,
        "from_version": version - 1,
        "to_version": to_version or version,
        "message": message,
    }
    return {
        **svc(replicas=replicas, version=version),
        "order": "start-first",
        "parallelism": 1,
        "update_status": status,
    }


def test_a_rollout_is_done_when_its_status_says_completed_and_every_task_runs_its_version():
    tasks = [task("t1", slot=1, version=2), task("t2", slot=2, version=2), task("t0", slot=1, desired="shutdown")]
    assert checker.rollout_unfinished(rolled(), tasks) == []
    created = {**rolled(version=1), "update_status": None}  # never updated: its tasks are enough
    assert checker.rollout_unfinished(created, [task("t1", slot=1), task("t2", slot=2)]) == []


def test_why_a_rollout_is_not_done():
    half = [task("t1", slot=1, version=2), task("t2", slot=2)]
    assert checker.rollout_unfinished(rolled(state="updating"), half) == [
        "update updating",
        "tasks of versions [1] still run",
        "1 of 2 tasks run version 2",
    ]
    paused = rolled(state="paused", message="paused: task a.2 failed its health check")
    assert checker.rollout_unfinished(paused, half)[0] == "update paused: paused: task a.2 failed its health check"
    back = rolled(version=3, state="rollback_completed")
    assert checker.rollout_unfinished(back, half)[0] == "update rollback_completed"
    ended = [task("t1", slot=1, version=3), task("t2", slot=2, version=3)]
    assert checker.rollout_unfinished(back, ended, ("rollback_completed",)) == []
    stale = rolled(version=3, to_version=2)
    both = [task("t1", slot=1, version=3), task("t2", slot=2, version=3)]
    assert checker.rollout_unfinished(stale, both) == ["the update status is for version 2, the service is at 3"]


def test_a_start_first_update_leaves_no_slot_without_a_running_task():
    service = rolled(replicas=3)
    serving = [task("t1", slot=1), task("t2", slot=2, version=2), task("t3", slot=3), task("t4", slot=2)]
    assert checker.check_serving(service, serving) == []
    gap = [task("t1", slot=1), task("t2", slot=2, version=2, state="starting"), task("t3", slot=3)]
    assert checker.check_serving(service, gap) == [
        "a: no running task in slots [2] at once (start-first, parallelism 1)"
    ]
    crashed = [task("t1", slot=1), task("t2", slot=2, version=2, state="failed"), task("t3", slot=3)]
    assert checker.check_serving(service, crashed) == []  # a failure, not the order's choice
    # Replaced, the failed task is no longer desired running; still the failure explains the gap
    # while its replacement starts. One of an older rollout (history) does not.
    replaced = [
        *crashed[:1],
        {**crashed[1], "desired_state": "shutdown"},
        task("t5", slot=2, version=2, state="starting"),
    ]
    assert checker.check_serving(service, replaced + crashed[2:]) == []
    old_failure = [task("t1", slot=1), task("t0", slot=2, state="failed", desired="shutdown"), task("t3", slot=3)]
    assert checker.check_serving(
        {**service, "update_status": {**service["update_status"], "from_version": 2}}, old_failure
    ) == ["a: no running task in slots [2] at once (start-first, parallelism 1)"]


def test_a_stop_first_update_empties_at_most_parallelism_slots_at_once():
    service = {**rolled(replicas=3), "order": "stop-first"}
    one = [task("t1", slot=1), task("t2", slot=2, version=2, state="starting"), task("t3", slot=3)]
    assert checker.check_serving(service, one) == []
    two = [task("t1", slot=1), task("t3", slot=3, desired="shutdown")]
    assert checker.check_serving(service, two) == [
        "a: no running task in slots [2, 3] at once (stop-first, parallelism 1)"
    ]
    assert checker.check_serving({**service, "parallelism": 2}, two) == []
    assert checker.check_serving({**service, "parallelism": 0}, []) == []  # 0: all at once


def test_the_rollout_after_a_failover_is_the_one_before_it():
    before = rolled(state="updating")["update_status"]
    assert checker.check_rollout_continued(before, rolled()["update_status"]) == []
    restarted = rolled(started_at=107.5)["update_status"]
    assert checker.check_rollout_continued(before, restarted) == [
        "the rollout changed across the failover (started_at 100.0 -> 107.5): completed"
    ]
    assert checker.check_rollout_continued(before, None) == ["the update status is gone after the failover"]


def test_new_tasks_that_ran_before_the_failover_still_run_after_it():
    after = [task("t1", slot=1, version=2), task("t2", slot=2, version=2), task("t3", slot=1, desired="shutdown")]
    assert checker.check_rollout_kept({"t1"}, after) == []
    assert checker.check_rollout_kept({"t1", "t3"}, after) == [
        "task t3 of the new version ran before the failover and not after"
    ]


def test_the_middle_of_a_rollout():
    def reply(tasks, state="updating"):
        return {"service": rolled(state=state, replicas=4), "tasks": tasks}

    one = [task("n1", slot=1, version=2), *(task(f"o{i}", slot=i) for i in (2, 3, 4))]
    assert in_the_middle(reply(one), 2) and not in_the_middle(reply(one), 2, replaced=2)
    assert not in_the_middle(reply(one[1:]), 2)  # not started
    done = [task(f"n{i}", slot=i, version=2) for i in (1, 2, 3, 4)]
    assert not in_the_middle(reply(done), 2)
    assert not in_the_middle(reply(one, state="paused"), 2)
    assert not in_the_middle(None, 2)


def _state(services, tasks, nodes=None):
    return {"services": services, "tasks": tasks, "nodes": nodes or [{"id": "n1", "role": "worker", "status": "ready"}]}


def test_converged_when_every_service_runs_its_replicas_on_its_version():
    state = _state([svc(replicas=2, version=2)], [task("t1", slot=1, version=2), task("t2", slot=2, version=2)])
    assert checker.convergence(state) == []


def test_not_converged_reasons():
    state = _state([svc(replicas=2, version=2)], [task("t1", slot=1, version=1), task("t2", slot=2, state="pending")])
    assert "a: 0 of 2 running on version 2" in checker.convergence(state)[0]
    down = _state([], [], [{"id": "n1abcdefgh", "role": "worker", "status": "down"}])
    assert checker.convergence(down) == ["workers not ready: n1abcdef"]
    orphan = _state([], [task("t9", service="gone", desired="shutdown")])
    assert "removed service still runs" in checker.convergence(orphan)[0]


def test_a_failed_task_kept_as_history_is_not_load():
    """A task of a rolled-back update that failed stays listed, desired running, in its slot."""
    tasks = [task("t1", slot=1, version=3), task("t2", slot=2, version=3), task("t0", slot=1, version=2)]
    tasks[2]["state"] = "failed"
    assert checker.convergence(_state([svc(replicas=2, version=3)], tasks)) == []


def test_a_cut_off_worker_keeps_its_tasks():
    assert checker.check_kept_running({"t1": True, "t2": False}, {"t1": True}) == []
    assert checker.check_kept_running({"t1": True}, {"t1": False}) == [
        "task t1 stopped while its worker was cut off (its process exited)"
    ]
    assert checker.check_kept_running({"t1": True, "t2": True}, {}, wanted=["t1"]) == [
        "task t1 stopped while its worker was cut off (its runtime record is gone)"
    ]  # t2's stop was ordered before the cut


def test_a_rejoined_worker_runs_only_what_the_cluster_assigns_it():
    tasks = [task("t1", node="n1"), task("t2", node="n2")]
    assert checker.check_reconciled("n1", ["t1"], tasks) == []
    assert checker.check_reconciled("n1", ["t1", "t2"], tasks) == [
        "task t2 still runs on n1 but the cluster does not run it there"
    ]


def test_percentiles():
    values = [float(v) for v in range(1, 101)]
    assert checker.summary_stats(values) == {"n": 100, "p50": 50.0, "p99": 99.0, "max": 100.0}
    assert checker.summary_stats([]) == {"n": 0, "p50": None, "p99": None, "max": None}


# -- outcomes, plans, workload --------------------------------------------------------------------


def test_outcomes_are_unknown_unless_surely_not_applied():
    assert classify("UNAVAILABLE", "failed to connect to all addresses; Connection refused") == ("not_sent", "")
    assert classify("UNAVAILABLE", "no quorum: 1 of 3 managers reachable") == ("failed", "")
    assert classify("UNAVAILABLE", "not the leader; the leader is at 10.0.0.2:4242") == ("redirect", "10.0.0.2:4242")
    assert classify("UNAVAILABLE", "leadership changed before the write committed; retry") == ("unknown", "")
    assert classify("UNAVAILABLE", "Socket closed") == ("unknown", "")
    assert classify("DEADLINE_EXCEEDED", "Deadline Exceeded") == ("unknown", "")
    assert classify("NOT_FOUND", "service 'x' not found") == ("failed", "")


def test_a_leader_kill_mid_update_runs_only_when_asked_for():
    assert "kill_leader_mid_update" not in eligible(3) and "kill_leader_mid_rollback" not in eligible(3)
    assert {r.kind for r in plan_rounds(1, 200, 3)} <= set(eligible(3))
    assert eligible(1, ["kill_leader", "kill_leader_mid_update"]) == ["kill_leader"]
    rounds = plan_rounds(4, 6, 3, ["kill_leader_mid_update"])
    assert {r.extra["order"] for r in rounds} == {"start-first", "stop-first"}
    assert {r.extra["at"] for r in rounds} <= {1, 2, 3}


def test_plans_reproduce_from_the_seed():
    assert plan_rounds(123, 20, 3) == plan_rounds(123, 20, 3)
    assert plan_rounds(123, 20, 3) != plan_rounds(124, 20, 3)
    assert {r.kind for r in plan_rounds(1, 50, 1)} <= set(eligible(1))
    cycled = plan_rounds(1, 4, 3, ["kill_worker", "kill_follower"])
    assert [r.kind for r in cycled] == ["kill_worker", "kill_follower"] * 2


def test_the_workload_is_seeded():
    a, b = Planner(7), Planner(7)
    for _ in range(30):
        x, y = a.next_op(), b.next_op()
        assert x == y
        a.observe(x, "ok")
        b.observe(y, "ok")


def test_partitions_are_symmetric():
    rules = partition_rules({"10.0.0.1": {"10.0.0.2", "10.0.0.3"}})
    assert rules == {"10.0.0.1": {"10.0.0.2", "10.0.0.3"}, "10.0.0.2": {"10.0.0.1"}, "10.0.0.3": {"10.0.0.1"}}
    text = nft_ruleset("wch_x", {"10.0.0.2"})
    assert "table inet wch_x" in text and "ip saddr { 10.0.0.2 } drop" in text and "ip daddr { 10.0.0.2 } drop" in text
    assert "numgen random mod 100 < 20 drop" in nft_loss_ruleset("wch_x_loss", 20)


def test_the_script_of_seed_123_is_stable():
    """`make chaos SEED=123` must replay the same faults as the runs recorded in docs/benchmarks.md."""
    assert [r.describe() for r in plan_rounds(123, 6, 3)] == [
        "isolate_leader#773 hold 4.6s",
        "netem#862 hold 4.1s loss 10% delay 100ms",
        "partition_majority#530 hold 2.1s",
        "partition_majority#440 hold 3.5s",
        "kill_worker#781 hold 3.4s",
        "netem#694 hold 4.7s loss 30% delay 20ms",
    ]


def test_raft_tick_failures_are_findings():
    log = "INFO fine\n2026 ERROR pysyncobj.syncobj: failed _onTick in _autoTickThread\nTraceback...\n"
    assert checker.check_raft_ticks("m2", log) == [
        "m2: 1 Raft ticks failed, first: 2026 ERROR pysyncobj.syncobj: failed _onTick in _autoTickThread"
    ]
    assert checker.check_raft_ticks("m2", "INFO fine\n") == []


def test_bulk_steps_update_every_service_once_with_padding():
    planner = Planner(3)
    bulks = []
    for _ in range(300):
        step = planner.next_op()
        ops = step["updates"] if step["op"] == "bulk" else [step]
        if step["op"] == "bulk":
            bulks.append(ops)
            assert sorted(o["service"] for o in ops) == sorted(planner.services)
        for op in ops:
            planner.observe(op, "ok")
    assert bulks, "no bulk step in 300"
    seqs = [o["seq"] for ops in bulks for o in ops]
    assert len(seqs) == len(set(seqs))
    assert all(o["op"] == "update" and o["pad"] and o["gen"] == o["seq"] for ops in bulks for o in ops)


# -- manager links after a heal ------------------------------------------------------------------


def manager(name: str, connected: list[str], applied: int = 10, error: str = "") -> dict:
    return {
        "name": name,
        "raft_addr": f"{name}:4243",
        "connected": [f"{c}:4243" for c in connected],
        "applied_index": applied,
        "error": error,
    }


def test_a_whole_group_passes():
    views = [manager("m1", ["m2", "m3"]), manager("m2", ["m1", "m3"]), manager("m3", ["m1", "m2"])]
    assert checker.check_links(views, leader_applied=10) == []


def test_a_link_one_end_does_not_see_is_reported():
    views = [manager("m1", ["m2", "m3"]), manager("m2", ["m1"]), manager("m3", ["m1", "m2"])]
    assert checker.check_links(views, leader_applied=10) == ["m2 has no Raft connection to m3"]


def test_a_manager_that_does_not_answer_is_reported_and_its_peers_checked():
    views = [manager("m1", ["m2"]), manager("m2", ["m1"]), manager("m3", [], error="cannot connect")]
    assert checker.check_links(views, leader_applied=10) == [
        "m3 does not answer: cannot connect",
        "m1 has no Raft connection to m3",
        "m2 has no Raft connection to m3",
    ]


def test_a_connected_manager_that_has_not_caught_up_is_reported():
    views = [manager("m1", ["m2", "m3"]), manager("m2", ["m1", "m3"], applied=7), manager("m3", ["m1", "m2"])]
    assert checker.check_links(views, leader_applied=10) == ["m2 has applied entry 7, the leader 10"]
