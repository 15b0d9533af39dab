"""Failed requests in two more deployment cases of #12, under the same HTTP load as
bench/bench_deploy.py (two Debian `hey`s side by side, a new connection per request, one on the
published port, one on the service's VIP, from the manager's namespace; LEAD_S before the
command until TAIL_S after the service settled):

(a) start-first update of a single replica (moby#29148), on the one-node rig: `service update
    --image` to the other version, ROUNDS times (v1 -> v2 -> v1 -> v2), `--update-monitor 1s`;
(b) node drain on the two-node rig (a second lab host with its own network namespace,
    containerd and agent, over the WireGuard overlay): 2 replicas, one on each node; `node update
    --availability drain` of the second node, until both replicas run on the first. Between
    rounds (unmeasured) the node is made active again and the service scaled to 1 and back to 2,
    which puts the second replica back on it (the scheduler spreads).

Reported for each: failed requests / requests by kind, hey's rate, the command's time and the
time until settled. Everything each rig starts is stopped in its close(), on failure too.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from bench.bench_deploy import REQUEST_TIMEOUT_S, WORKERS, _under_load, summarize
from tests.waiting import wait_for

ROUNDS = 3
CASES = {"single_replica": "start-first update, 1 replica", "node_drain": "node drain, 2 nodes, 2 replicas"}


def run() -> dict[str, object]:
    from tests.fixtures import deploy_rig

    reason = deploy_rig.missing_reason()
    if reason:
        raise RuntimeError(reason)
    rounds = {"single_replica": _on_rig(1, _single_replica), "node_drain": _on_rig(2, _node_drain)}
    totals, figures = summarize(rounds, CASES)
    return {
        "name": "deploy_cases",
        "rounds_per_case": ROUNDS,
        "load": {"tool": "hey", "workers": WORKERS, "keepalive": False, "request_timeout_s": REQUEST_TIMEOUT_S},
        "totals": totals,
        "rounds": rounds,
        "figures": figures,
    }


def _on_rig(hosts: int, case) -> list[dict[str, object]]:
    from tests.fixtures.deploy_rig import DeployRig

    tmp = Path(tempfile.mkdtemp(prefix="warren-bench-cases-"))
    rig = DeployRig(tmp, hosts)
    try:
        rig.start()
        return case(rig)
    except BaseException:
        print(rig.logs())
        raise
    finally:
        rig.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _single_replica(rig) -> list[dict[str, object]]:
    from tests.fixtures.images import web_page

    rig.create_web("solo", "v1", 1, "--update-order", "start-first", "--update-monitor", "1s")
    rig.wait_serving(web_page("v1"), "solo", 1)
    rounds = []
    version = "v1"
    for _ in range(ROUNDS):
        version = "v2" if version == "v1" else "v1"

        def update(to: str = version) -> None:
            rig.ok("service", "update", "solo", "--image", rig.image(to), "--timeout", "120s")

        def updated(to: str = version) -> None:
            rig.wait_serving(web_page(to), "solo", 1)

        rounds.append({"to": version, **_under_load(rig, update, updated, "solo")})
    return rounds


def _node_drain(rig) -> list[dict[str, object]]:
    from tests.fixtures.images import web_page

    first, second = (rig.cluster.node_of(host)["id"] for host in rig.cluster.hosts)

    def nodes_running() -> list[str]:
        return sorted(t["node_id"] for t in rig.running("web"))

    rig.create_web("web", "v1", 2)
    rounds = []
    for _ in range(ROUNDS):
        rig.wait_serving(web_page("v1"), "web", 2)
        wait_for(lambda: nodes_running() == sorted((first, second)), timeout=60, message="a replica on each node")

        def drain() -> None:
            rig.ok("node", "update", second, "--availability", "drain")

        def moved() -> None:
            wait_for(
                lambda: rig.settled("web", 2) and nodes_running() == [first, first],
                timeout=120,
                interval=0.5,
                message="both replicas on the first node",
            )
            rig.wait_serving(web_page("v1"), "web", 2)

        started = time.perf_counter()
        rounds.append(_under_load(rig, drain, moved))
        rounds[-1]["round_s"] = round(time.perf_counter() - started, 2)
        rig.ok("node", "update", second, "--availability", "active")
        rig.ok("service", "scale", "web=1", "--timeout", "120s")
        rig.ok("service", "scale", "web=2", "--timeout", "120s")
    return rounds


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
