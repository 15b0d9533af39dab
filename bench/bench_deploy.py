"""Failed requests during a deployment, under HTTP load (#12's baseline).

The rig of tests/fixtures/deploy_rig.py: one node in its own network namespace, a manager whose
embedded agent runs tasks through a real containerd, the overlay on, the web images v1 and v2
(busybox httpd under a shell that exits at SIGTERM) pulled from a registry on the node's
127.0.0.1. A service of 4 replicas publishes port 8080. Two Debian `hey`s load it from inside
the node, side by side, a new connection per request: one on the published port
(127.0.0.1:8080), one on the service's VIP (the path another task's requests take). Cases:

(a) rolling update: `warren service update --image` to the other version (v1 -> v2, then back),
    until every task serves it;
(b) scale-down: `warren service scale web=1` from 4, until the 3 stopped tasks are gone (then
    back to 4, unmeasured, for the next round);
(c) canary promote (ADR 35): `service update --image` to the other version with
    `--deploy-strategy canary --canary-replicas 1 --canary-weight 20` (it returns once the canary
    waits), then `service promote`, until every task serves the new version;
(d) blue/green switch (ADR 35): `service update --image` to the other version with
    `--deploy-strategy blue-green --blue-green-keep 2s`, until the new set serves and the old set,
    kept 2 s out of routing, is gone.

Each case runs ROUNDS times; hey runs LEAD_S before the command and TAIL_S after the service
settled. Reported for each target: failed requests / requests (by kind: refused, reset, eof, timeout,
unreachable), the request rate hey reached, how long the CLI command took (it waits for
convergence), and the time until the rig saw the service settled (the stopped tasks gone, every
task and the published port serving the version). #12's goal is zero failed requests; this
measures today's behaviour.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import figure

ROUNDS = 3
REPLICAS = 4
LEAD_S = 3.0  # load before the command: the rate settles, and the first requests are not the change's
TAIL_S = 2.0  # load after the service settled: stops that are still on their way show up
RATE_PER_WORKER = 50.0  # hey's -q: at most 400 requests/s in all, on a 2-core machine shared with others
WORKERS = {"published": 6, "vip": 2}  # hey's -c for each target, run side by side
REQUEST_TIMEOUT_S = 5.0
CASES = {
    "rolling_update": "rolling update, 4 replicas",
    "scale_down": "scale-down 4 -> 1",
    "canary_promote": "canary promote, 4 replicas",
    "blue_green": "blue/green switch, 4 replicas",
}
ROLLING = ("--deploy-strategy", "rolling")
CANARY = ("--deploy-strategy", "canary", "--canary-replicas", "1", "--canary-weight", "20")
BLUE_GREEN = ("--deploy-strategy", "blue-green", "--blue-green-keep", "2s")
TARGETS = {"published": "published port", "vip": "VIP"}


def run() -> dict[str, object]:
    from tests.fixtures import deploy_rig
    from tests.fixtures.deploy_rig import DeployRig
    from tests.fixtures.images import web_page

    reason = deploy_rig.missing_reason()
    if reason:
        raise RuntimeError(reason)
    tmp = Path(tempfile.mkdtemp(prefix="warren-bench-deploy-"))
    rig = DeployRig(tmp)

    def updated_to(version: str):
        """Until every task and the published port serve `version`, and nothing else is left."""
        return lambda: rig.wait_serving(web_page(version), "web", REPLICAS, timeout=300)

    rounds: dict[str, list[dict[str, object]]] = {case: [] for case in CASES}
    try:
        rig.start()
        rig.create_web("web", "v1", REPLICAS)
        rig.wait_serving(web_page("v1"), "web", REPLICAS)
        version = "v1"
        for _ in range(ROUNDS):
            version = "v2" if version == "v1" else "v1"

            def update(to: str = version) -> None:
                rig.ok("service", "update", "web", "--image", rig.image(to), *ROLLING, "--timeout", "300s")

            def updated(to: str = version) -> None:
                rig.wait_serving(web_page(to), "web", REPLICAS, timeout=300)

            rounds["rolling_update"].append({"to": version, **_under_load(rig, update, updated)})

            def scale_down() -> None:
                rig.ok("service", "scale", "web=1", "--timeout", "300s")

            def scaled_down(serving: str = version) -> None:
                rig.wait_serving(web_page(serving), "web", 1, timeout=300)

            rounds["scale_down"].append({"from": REPLICAS, "to": 1, **_under_load(rig, scale_down, scaled_down)})
            rig.ok("service", "scale", f"web={REPLICAS}", "--timeout", "300s")
            rig.wait_serving(web_page(version), "web", REPLICAS, timeout=300)

            version = "v2" if version == "v1" else "v1"

            def canary(to: str = version) -> None:
                rig.ok("service", "update", "web", "--image", rig.image(to), *CANARY, "--timeout", "300s")
                rig.ok("service", "promote", "web", "--timeout", "300s")

            rounds["canary_promote"].append({"to": version, **_under_load(rig, canary, updated_to(version))})
            version = "v2" if version == "v1" else "v1"

            def blue_green(to: str = version) -> None:
                rig.ok("service", "update", "web", "--image", rig.image(to), *BLUE_GREEN, "--timeout", "300s")

            rounds["blue_green"].append({"to": version, **_under_load(rig, blue_green, updated_to(version))})
    except BaseException:
        print(rig.logs())
        raise
    finally:
        rig.close()
        shutil.rmtree(tmp, ignore_errors=True)

    totals, figures = summarize(rounds, CASES)
    return {
        "name": "deploy",
        "replicas": REPLICAS,
        "rounds_per_case": ROUNDS,
        "load": {
            "tool": "hey",
            "targets": {
                "published": "the published port on the node's 127.0.0.1",
                "vip": "the service's VIP, from the node's namespace",
            },
            "workers": WORKERS,
            "rate_limit_per_worker_per_s": RATE_PER_WORKER,
            "keepalive": False,
            "request_timeout_s": REQUEST_TIMEOUT_S,
            "lead_s": LEAD_S,
            "tail_s": TAIL_S,
        },
        "totals": totals,
        "rounds": rounds,
        "figures": figures,
    }


def _under_load(rig, change, settled, service: str = "web") -> dict[str, object]:
    """hey on the published port and on the VIP of `service` throughout `change()` (the CLI
    command, which waits for convergence) and `settled()` (until the rig sees the stopped tasks
    gone and every task serving): from LEAD_S before to TAIL_S after."""
    urls = {"published": rig.published_url, "vip": rig.vip_url(service)}
    loads = {
        target: rig.load(
            urls[target], concurrency=workers, rate_per_worker=RATE_PER_WORKER, request_timeout=REQUEST_TIMEOUT_S
        ).start()
        for target, workers in WORKERS.items()
    }
    time.sleep(LEAD_S)
    start = time.perf_counter()
    change()
    command = time.perf_counter() - start
    settled()
    settle = time.perf_counter() - start
    time.sleep(TAIL_S)
    results = {target: load.stop() for target, load in loads.items()}
    for load in loads.values():
        load.close()
    return {
        "command_s": round(command, 2),
        "settle_s": round(settle, 2),
        **{
            target: {**result.as_dict(), "error_messages": _few(result.error_messages)}
            for target, result in results.items()
        },
    }


def summarize(
    rounds: dict[str, list[dict[str, object]]], cases: dict[str, str]
) -> tuple[dict[str, dict[str, dict[str, object]]], list[dict[str, object]]]:
    """The totals of each case's rounds by target, and their figures (`cases`: case -> label):
    failed requests (the goal: none) and hey's rate for each target, the command's and the
    settle time's medians."""
    totals = {case: {target: _total(results, target) for target in WORKERS} for case, results in rounds.items()}
    figures = []
    for case, label in cases.items():
        for target, where in TARGETS.items():
            total = totals[case][target]
            figures += [
                figure(
                    f"{label}, {where}: failed requests (of {total['requests']:,})",
                    total["failed"],
                    "requests",
                    0,
                    "<=",
                ),
                figure(f"{label}, {where}: hey's rate reached, median", total["rate_median_per_s"], "/s"),
            ]
        figures += [
            figure(f"{label}: the CLI command, median", _median(rounds[case], "command_s"), "s"),
            figure(f"{label}: command to settled, median", _median(rounds[case], "settle_s"), "s"),
        ]
    return totals, figures


def _few(messages: dict[str, int], keep: int = 5) -> dict[str, int]:
    """hey's most frequent error lines (resets name the client port: one line each)."""
    return dict(sorted(messages.items(), key=lambda item: -item[1])[:keep])


def _median(results: list[dict[str, object]], key: str) -> float:
    values = sorted(float(r[key]) for r in results)  # type: ignore[arg-type]
    return values[len(values) // 2]


def _total(results: list[dict[str, object]], target: str) -> dict[str, object]:
    counts = [r[target] for r in results]
    requests = sum(int(c["requests"]) for c in counts)  # type: ignore[index]
    failed = sum(int(c["failed"]) for c in counts)  # type: ignore[index]
    errors: dict[str, int] = {}
    for c in counts:
        for kind, n in c["errors"].items():  # type: ignore[index]
            errors[kind] = errors.get(kind, 0) + n
    return {
        "rounds": len(results),
        "requests": requests,
        "failed": failed,
        "failed_pct": round(100 * failed / requests, 2) if requests else 0.0,
        "errors": errors,
        "failed_per_round": [c["failed"] for c in counts],  # type: ignore[index]
        "rate_median_per_s": _median(counts, "rate_per_s"),  # type: ignore[arg-type]
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
