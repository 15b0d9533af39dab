"""The scale runs' headline figures, each against issue #15's goal where it has one."""

from __future__ import annotations

from typing import Any

from bench.common import figure

# issue #15's goals
RUNNING_AFTER_LAST_CREATE_GOAL_S = 5.0
S1_RSS_GOAL_MIB = 256.0
S2_RSS_GOAL_MIB = 1024.0
S2_TASKS_PER_S_GOAL = 2000.0
WRITE_P99_GOAL_MS = 100.0
READ_P99_GOAL_MS = 20.0
NODE_DOWN_EXTRA_GOAL_S = 2.0
CLI_GOAL_S = 1.0


def figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    p, s = result["params"], result["s1"]
    big = result["set"] == "s2"
    tasks = f"{s['tasks']:,} tasks / {p['nodes']:,} nodes"
    prom = s["prometheus"]
    if not s["all_running"]:
        out = [
            figure(f"tasks running when the run was stopped, of {tasks}", s["running_at_end"], "", s["tasks"], ">="),
            figure("Raft elections during the run", s["raft_elections_during_run"] or 0, ""),
            figure(
                "fewest sim sessions open during the run", s["sim_min_connected_during_run"] or 0, "", p["nodes"], ">="
            ),
            figure(
                "leader peak RSS",
                s["managers_peak_rss_mib"][s["leader"]],
                "MiB",
                S2_RSS_GOAL_MIB if big else S1_RSS_GOAL_MIB,
            ),
        ]
        return out + _s4_figures(result)
    out = [
        figure(f"first create -> all running, {tasks}", s["first_create_to_all_running_s"], "s"),
        figure("  of which: all running on the nodes (simulator)", s.get("nodes_all_running_s"), "s"),
        figure("  of which: all running in the leader's state", s.get("leader_all_running_s"), "s"),
        figure(
            "last create returned -> all running",
            s["last_create_to_all_running_s"],
            "s",
            None if big else RUNNING_AFTER_LAST_CREATE_GOAL_S,
        ),
        figure(
            "tasks started/s, first create -> all running",
            s["starts_per_s"],
            "/s",
            S2_TASKS_PER_S_GOAL if big else None,
            ">=",
        ),
        figure(
            "leader peak RSS",
            s["managers_peak_rss_mib"][s["leader"]],
            "MiB",
            S2_RSS_GOAL_MIB if big else S1_RSS_GOAL_MIB,
        ),
        figure(
            f"CreateService p99, {s['clients']} clients (client side)",
            s["client"]["writes"]["p99_ms"],
            "ms",
            WRITE_P99_GOAL_MS,
        ),
        figure("reads p99 during the run (client side)", s["client"]["reads"]["p99_ms"], "ms", READ_P99_GOAL_MS),
        figure("Raft entries/s (leader)", s["raft_entries_per_s"], "/s"),
    ]
    if s["placements_per_s"] is not None:
        out.append(figure("placements/s", s["placements_per_s"], "/s"))
    for key, label in (
        ("write_p99_ms", "CreateService p99 (Prometheus)"),
        ("read_p99_ms", "reads p99 (Prometheus)"),
        ("scheduling_pass_p99_ms", "scheduling pass p99 (Prometheus)"),
    ):
        if prom[key] is not None:
            out.append(figure(label, prom[key], "ms"))
    if "s3" in result:
        s3r = result["s3"]
        out += [
            figure(f"S3: {s3r['killed_nodes']} killed nodes marked down", s3r["node_down_s"], "s"),
            figure(
                "S3: their tasks running elsewhere",
                s3r["tasks_running_elsewhere_s"],
                "s",
                s3r["node_down_s"] + NODE_DOWN_EXTRA_GOAL_S,
            ),
            figure("S3: next write after a leader kill", s3r["next_write_after_leader_kill_s"], "s"),
            *(
                [figure("S3: slots lost or duplicated", s3r["slots_lost"] + s3r["slots_duplicated"], "", 0)]
                if s3r["slots_lost"] is not None
                else []  # no leader answered for the last task list: unknown
            ),
            # A failover must not touch what runs: every start after the leader kill is a restart.
            figure("S3: tasks started again after the leader kill", s3r["sim_starts_after_leader_kill"], "", 0),
        ]
    out.append(figure("Raft elections during the run", s["raft_elections_during_run"] or 0, ""))
    return out + _s4_figures(result)


def _s4_figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    settle = result.get("s4", {}).get("settle")
    if settle:
        label = "S4: the leader quiet after the run" if settle["quiet"] else "S4: the leader never quiet, waited"
        out.append(figure(label, settle["after_s"], "s"))
    big = f"service ps ({result['params']['big_replicas']:,} replicas)"
    for key, label in (
        ("service_ls", "service ls"),
        ("node_ls", "node ls"),
        ("cluster_info", "cluster info"),
        ("service_ps_big", big),
    ):
        entry = result.get("s4", {}).get(key, {})
        if "median_s" in entry:
            out.append(figure(f"S4: `warren {label}`", entry["median_s"], "s", CLI_GOAL_S))
    return out
