"""How long rollouts take, end to end (#12): on the deployment rig (tests/fixtures/deploy_rig.py:
one node in its own network namespace, real containerd, the web images from the 127.0.0.1
registry, a health check every 500 ms with 2 retries).

(a) Roll 10 replicas with parallelism 2 (`--update-monitor 0s`, so that a task counts as soon as
    it is ready): v1 -> v2, then back, ROUNDS times. Each new task's start latency is measured in
    the same run, from the manager's own timestamps: created (the reconciler made it) -> ready
    (running and healthy). The figure is the rollout's duration (the status's started_at ->
    completed_at, the leader's clock) against the sum of those latencies: the ratio. With two
    lanes and no overhead it would be about 0.5; the rest is the orchestration between one task
    being ready and the next being created, and the drains before each stop.
(b) A failed update: `--image web:bad` (it fails its health check) with `--update-failure-action
    rollback` and a 2 s update monitor, on 4 replicas of v1; the rollback's own settings are the
    defaults (parallelism 1, a 5 s monitor). Measured: from the rollback's start (the leader
    acting on the failure, in the pass after the failed task's report) to its end
    (`rollback_completed`, the status's completed_at); and from the failed task's report (the
    time the manager recorded it turning unhealthy or failing) to that end, in the rounds where
    a poller (a CLI call, about 0.3-1 s) saw that report before the rollback drained the task,
    which under load it often does not; and the `service update` command's time.

Everything the rig starts is stopped in its close(), on failure too.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench.common import figure

ROUNDS = 3
ROLL_REPLICAS = 10
PARALLELISM = 2
FAIL_REPLICAS = 4
FAILED = ("failed", "rejected")


def run() -> dict[str, object]:
    from tests.fixtures import deploy_rig
    from tests.fixtures.deploy_rig import DeployRig

    reason = deploy_rig.missing_reason()
    if reason:
        raise RuntimeError(reason)
    tmp = Path(tempfile.mkdtemp(prefix="warren-bench-rollout-"))
    rig = DeployRig(tmp)
    rolls: list[dict[str, object]] = []
    rollbacks: list[dict[str, object]] = []
    try:
        rig.start()
        rolls = _rolls(rig)
        rig.ok("service", "rm", "web")
        rollbacks = _rollbacks(rig)
    except BaseException:
        print(rig.logs())
        raise
    finally:
        rig.close()
        shutil.rmtree(tmp, ignore_errors=True)

    figures = [
        figure(
            f"roll {ROLL_REPLICAS} replicas, parallelism {PARALLELISM}: rollout, median",
            _median(rolls, "rollout_s"),
            "s",
        ),
        figure(
            "... the sum of its tasks' start latencies (created -> ready), median", _median(rolls, "sum_start_s"), "s"
        ),
        figure(
            "... rollout / sum of start latencies, median (0.5 = two lanes, no overhead)", _median(rolls, "ratio"), ""
        ),
        figure("... a task's start latency, median of all", _median_of(rolls, "start_latencies_s"), "s"),
        figure(
            "rollback_started (the failure acted on) -> rollback_completed, median",
            _median(rollbacks, "rollback_s"),
            "s",
        ),
        figure(
            "`service update` to the bad image -> it exits (8, rolled back), median",
            _median(rollbacks, "command_s"),
            "s",
        ),
    ]
    caught = _median(rollbacks, "failure_to_end_s")
    if caught is not None:  # no round may have caught the report, see (b): no figure rather than NaN
        figures.append(
            figure("failed task reported -> rollback_completed, median of the rounds a poll caught", caught, "s")
        )
    return {
        "name": "rollout",
        "rounds": ROUNDS,
        "roll": {"replicas": ROLL_REPLICAS, "parallelism": PARALLELISM, "monitor_s": 0, "rounds": rolls},
        "rollback": {"replicas": FAIL_REPLICAS, "image": "web:bad (fails its health check)", "rounds": rollbacks},
        "figures": figures,
    }


def _rolls(rig) -> list[dict[str, object]]:
    from tests.fixtures.images import web_page

    rig.create_web(
        "web",
        "v1",
        ROLL_REPLICAS,
        "--update-parallelism",
        str(PARALLELISM),
        "--update-monitor",
        "0s",
        "--timeout",
        "300s",
    )
    rig.wait_serving(web_page("v1"), "web", ROLL_REPLICAS, timeout=300)
    rounds = []
    version = "v1"
    for _ in range(ROUNDS):
        version = "v2" if version == "v1" else "v1"
        start = time.perf_counter()
        rig.ok("service", "update", "web", "--image", rig.image(version), "--timeout", "300s")
        command = time.perf_counter() - start
        rig.wait_serving(web_page(version), "web", ROLL_REPLICAS, timeout=300)
        status = _inspect(rig, "web")["update_status"]
        assert status["state"] == "completed", status
        new = [t for t in rig.tasks("web", history=True) if t.get("created_at", 0) >= status["started_at"]]
        latencies = sorted(t["ready_at"] - t["created_at"] for t in new if t.get("ready_at"))
        assert len(latencies) == ROLL_REPLICAS, (len(latencies), new)
        rollout = status["completed_at"] - status["started_at"]
        rounds.append(
            {
                "to": version,
                "rollout_s": round(rollout, 2),
                "command_s": round(command, 2),
                "sum_start_s": round(sum(latencies), 2),
                "ratio": round(rollout / sum(latencies), 3),
                "start_latencies_s": [round(x, 2) for x in latencies],
            }
        )
    return rounds


def _rollbacks(rig) -> list[dict[str, object]]:
    from tests.fixtures.images import web_page

    rig.create_web("bad", "v1", FAIL_REPLICAS, "--update-failure-action", "rollback", "--update-monitor", "2s")
    rig.wait_serving(web_page("v1"), "bad", FAIL_REPLICAS)
    rounds = []
    for _ in range(ROUNDS):
        before = _inspect(rig, "bad")["version"]
        first_failure: list[float] = []
        stop = threading.Event()

        watcher = threading.Thread(target=_watch, args=(rig, "bad", int(before), stop, first_failure), daemon=True)
        watcher.start()
        start = time.perf_counter()
        done = rig.cli("service", "update", "bad", "--image", rig.image("bad"), "--timeout", "300s")
        command = time.perf_counter() - start
        stop.set()
        watcher.join(timeout=30)
        assert done.returncode == 8, (done.returncode, done.stdout, done.stderr)  # rolled back (docs/cli.md)
        status = _inspect(rig, "bad")["update_status"]
        assert status["state"] == "rollback_completed", status
        rig.wait_serving(web_page("v1"), "bad", FAIL_REPLICAS)
        tasks = rig.tasks("bad", history=True)
        rounds.append(
            {
                # Tasks of the update that started, and tasks the rollback (a new version with
                # the old spec) started: the replicas still on v1 are adopted, not restarted
                # (ADR 33), so only those created since it started count.
                "started_by_update": sum(int(t["spec_version"]) == int(before) + 1 for t in tasks),
                "started_by_rollback": sum(float(t.get("created_at", 0)) >= status["started_at"] for t in tasks),
                "command_s": round(command, 2),
                "failure_to_end_s": round(status["completed_at"] - first_failure[0], 2) if first_failure else None,
                "rollback_s": round(status["completed_at"] - status["started_at"], 2),
                "message": status["message"],
            }
        )
    return rounds


def _watch(rig, service: str, since_version: int, stop: threading.Event, found: list[float]) -> None:
    """Into `found`: the manager's time of the first new task that failed, as soon as one shows."""
    while not stop.is_set() and not found:
        failing = [
            t["updated_at"]
            for t in rig.tasks(service, history=True)
            if int(t.get("spec_version", 0)) > since_version
            and (t["state"] in FAILED or t.get("health") == "unhealthy")
            # not yet drained or stopped: updated_at is still the failure's report
            and t["desired_state"] == "running"
            and not t["message"].startswith("draining")
        ]
        if failing:
            found.append(min(failing))


def _inspect(rig, service: str) -> dict:
    return json.loads(rig.ok("service", "inspect", service, "--format", "json"))


def _median(results: list[dict[str, object]], key: str) -> float | None:
    values = sorted(float(r[key]) for r in results if r.get(key) is not None)  # type: ignore[arg-type]
    return values[len(values) // 2] if values else None


def _median_of(results: list[dict[str, object]], key: str) -> float:
    values = sorted(float(x) for r in results for x in r[key])  # type: ignore[attr-defined]
    return values[len(values) // 2]


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
