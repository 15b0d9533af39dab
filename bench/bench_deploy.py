"""Failed requests during a deployment, under HTTP load (#12's baseline).

The rig of tests/fixtures/deploy_rig.py: one node in its own network namespace, a manager whose
embedded agent runs tasks through a real containerd, the overlay on, the web images v1 and v2
(busybox httpd under a shell that exits at SIGTERM) pulled from a registry on the node's
127.0.0.1. A service of 4 replicas publishes port 8080; Debian's `hey` loads it from inside the
node (127.0.0.1:8080, a new connection per request) throughout each case:

(a) rolling update: `warren service update --image` to the other version (v1 -> v2, then back),
    until every task serves it;
(b) scale-down: `warren service scale web=1` from 4, until the 3 stopped tasks are gone (then
    back to 4, unmeasured, for the next round).

Each case runs ROUNDS times; hey runs LEAD_S before the command and TAIL_S after the service
settled. Reported: failed requests / requests (by kind: refused, reset, eof, timeout,
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
CONCURRENCY = 8
RATE_PER_WORKER = 50.0  # hey's -q: at most 400 requests/s in all, on a 2-core machine shared with others
REQUEST_TIMEOUT_S = 5.0


def run() -> dict[str, object]:
    from tests.fixtures import deploy_rig
    from tests.fixtures.deploy_rig import DeployRig
    from tests.fixtures.images import web_page

    reason = deploy_rig.missing_reason()
    if reason:
        raise RuntimeError(reason)
    tmp = Path(tempfile.mkdtemp(prefix="warren-bench-deploy-"))
    rig = DeployRig(tmp)
    rounds: dict[str, list[dict[str, object]]] = {"rolling_update": [], "scale_down": []}
    try:
        rig.start()
        rig.create_web("web", "v1", REPLICAS)
        rig.wait_serving(web_page("v1"), "web", REPLICAS)
        version = "v1"
        for _ in range(ROUNDS):
            version = "v2" if version == "v1" else "v1"

            def update(to: str = version) -> None:
                rig.ok("service", "update", "web", "--image", rig.image(to), "--timeout", "300s")

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
    except BaseException:
        print(rig.logs())
        raise
    finally:
        rig.close()
        shutil.rmtree(tmp, ignore_errors=True)

    totals = {case: _total(results) for case, results in rounds.items()}
    figures = []
    for case, label in (("rolling_update", "rolling update, 4 replicas"), ("scale_down", "scale-down 4 -> 1")):
        total = totals[case]
        figures += [
            figure(f"{label}: failed requests (of {total['requests']:,})", total["failed"], "requests", 0, "<="),
            figure(f"{label}: failed share", total["failed_pct"], "%"),
            figure(f"{label}: hey's rate reached, median", total["rate_median_per_s"], "/s"),
            figure(f"{label}: the CLI command, median", total["command_median_s"], "s"),
            figure(f"{label}: command to settled, median", total["settle_median_s"], "s"),
        ]
    return {
        "name": "deploy",
        "replicas": REPLICAS,
        "rounds_per_case": ROUNDS,
        "load": {
            "tool": "hey",
            "target": "the published port on the node's 127.0.0.1",
            "concurrency": CONCURRENCY,
            "rate_limit_per_s": CONCURRENCY * RATE_PER_WORKER,
            "keepalive": False,
            "request_timeout_s": REQUEST_TIMEOUT_S,
            "lead_s": LEAD_S,
            "tail_s": TAIL_S,
        },
        "totals": totals,
        "rounds": rounds,
        "figures": figures,
    }


def _under_load(rig, change, settled) -> dict[str, object]:
    """hey throughout `change()` (the CLI command, which waits for convergence) and `settled()`
    (until the rig sees the stopped tasks gone and every task serving): LEAD_S before, TAIL_S after."""
    load = rig.load(concurrency=CONCURRENCY, rate_per_worker=RATE_PER_WORKER, request_timeout=REQUEST_TIMEOUT_S)
    load.start()
    time.sleep(LEAD_S)
    start = time.perf_counter()
    change()
    command = time.perf_counter() - start
    settled()
    settle = time.perf_counter() - start
    time.sleep(TAIL_S)
    result = load.stop()
    load.close()
    return {
        "command_s": round(command, 2),
        "settle_s": round(settle, 2),
        **result.as_dict(),
        "error_messages": _few(result.error_messages),
    }


def _few(messages: dict[str, int], keep: int = 5) -> dict[str, int]:
    """hey's most frequent error lines (resets name the client port: one line each)."""
    return dict(sorted(messages.items(), key=lambda item: -item[1])[:keep])


def _total(results: list[dict[str, object]]) -> dict[str, object]:
    requests = sum(int(r["requests"]) for r in results)  # type: ignore[call-overload]
    failed = sum(int(r["failed"]) for r in results)  # type: ignore[call-overload]
    errors: dict[str, int] = {}
    for r in results:
        for kind, n in r["errors"].items():  # type: ignore[attr-defined]
            errors[kind] = errors.get(kind, 0) + n
    rates = sorted(float(r["rate_per_s"]) for r in results)  # type: ignore[arg-type]
    commands = sorted(float(r["command_s"]) for r in results)  # type: ignore[arg-type]
    settles = sorted(float(r["settle_s"]) for r in results)  # type: ignore[arg-type]
    return {
        "rounds": len(results),
        "requests": requests,
        "failed": failed,
        "failed_pct": round(100 * failed / requests, 2) if requests else 0.0,
        "errors": errors,
        "failed_per_round": [r["failed"] for r in results],
        "rate_median_per_s": rates[len(rates) // 2],
        "command_median_s": commands[len(commands) // 2],
        "settle_median_s": settles[len(settles) // 2],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
