"""Failover with 3 managers on loopback (issue #4): kill -9 the leader, ROUNDS times.

Each round measures, from the SIGKILL:
- election: until a survivor reports itself leader (its own RaftStatus, polled every 5 ms);
- CLI write: until a `warren service create` started right after the kill succeeds, CLI
  start-up included (a failed attempt is retried at once, as an operator's script would).
The killed manager is then restarted with its own command and data directory, and the next
round starts once all three are voters and caught up again.
Goals: election p99 <= 0.5 s; CLI write p99 <= 1.5 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import figure, latency_summary

ROUNDS = int(os.environ.get("WARREN_BENCH_FAILOVER_ROUNDS", "50"))
ELECTION_GOAL_S = 0.5
WRITE_GOAL_S = 1.5


def _raft_state(manager, creds) -> str:
    import grpc

    from warren import tls
    from warren.api.v1 import managers_pb2 as mpb
    from warren.api.v1 import managers_pb2_grpc

    try:
        with grpc.secure_channel(manager.addr, creds, options=tls.channel_options()) as channel:
            return managers_pb2_grpc.ManagersStub(channel).RaftStatus(mpb.RaftStatusRequest(), timeout=0.5).state
    except grpc.RpcError:
        return ""


def _leader(managers, creds) -> object | None:
    for manager in managers:
        if manager.process is not None and manager.process.poll() is None and _raft_state(manager, creds) == "leader":
            return manager
    return None


def _all_caught_up(first) -> bool:
    result = first.cli("cluster", "info", "--format", "json", timeout=10)
    if result.returncode != 0:
        return False
    info = json.loads(result.stdout)
    return len(info["managers"]) == 3 and all(
        m["voter"] and not m["error"] and m["raft_state"] and int(m["lag"]) < 5 for m in info["managers"]
    )


def run() -> dict[str, object]:
    import grpc

    from tests.integration.harness import Manager, join_managers
    from tests.waiting import wait_for
    from warren import tls

    root = Path(tempfile.mkdtemp(prefix="warren-bench-failover-"))
    managers: list[Manager] = []
    elections: list[float] = []
    writes: list[float] = []
    attempts: list[int] = []
    try:
        (root / "m1").mkdir()
        first = Manager(root / "m1", schedule_on_manager=False)
        managers.append(first)
        first.start()
        join_managers(first, ["m2", "m3"], into=managers)
        assert first.cli("node", "ls").returncode == 0  # the CLI context learns every manager
        creds = grpc.ssl_channel_credentials(*_manager_creds(tls, first.data_dir / "certs"))
        for round_ in range(ROUNDS):
            wait_for(lambda: _all_caught_up(first), timeout=60, message="three caught-up managers")
            leader = wait_for(lambda: _leader(managers, creds), timeout=10, message="a leader")
            survivors = [m for m in managers if m is not leader]
            write_result: dict[str, float] = {}
            writer = threading.Thread(target=_write_until_ok, args=(survivors[0], f"r{round_}", write_result))
            leader.process.send_signal(signal.SIGKILL)
            killed = time.perf_counter()
            writer.start()
            while _leader(survivors, creds) is None:
                time.sleep(0.005)
            elections.append(time.perf_counter() - killed)
            writer.join(timeout=60)
            leader.process.wait()
            writes.append(write_result["at"] - killed)
            attempts.append(int(write_result["attempts"]))
            leader.start(timeout=40)
    finally:
        for manager in managers:
            manager.stop()
        shutil.rmtree(root, ignore_errors=True)
    election = latency_summary(elections)
    write = latency_summary(writes)
    return {
        "benchmark": "failover",
        "rounds": ROUNDS,
        "election_s": election,
        "cli_write_s": write,
        "cli_write_attempts_max": max(attempts),
        "cli_writes_needing_retry": sum(1 for a in attempts if a > 1),
        "figures": [
            figure("leader kill -> new leader, p50", election["p50_ms"], "ms"),
            figure("leader kill -> new leader, p99", election["p99_ms"], "ms", ELECTION_GOAL_S * 1000),
            figure("leader kill -> new leader, max", election["max_ms"], "ms"),
            figure("leader kill -> CLI write ok, p50", write["p50_ms"], "ms"),
            figure("leader kill -> CLI write ok, p99", write["p99_ms"], "ms", WRITE_GOAL_S * 1000),
        ],
    }


def _manager_creds(tls, certs: Path) -> tuple[bytes, bytes, bytes]:
    creds = tls.load_credentials(certs)
    return creds.ca_pem, creds.key_pem, creds.cert_pem


def _write_until_ok(manager, name: str, out: dict[str, float]) -> None:
    """`warren service create` through the CLI context (every manager), until it succeeds."""
    for attempt in range(1, 50):
        result = subprocess.run(
            [sys.executable, "-m", "warren.cli.main", "service", "create", name, "--image", "busybox", "--detach"],
            capture_output=True,
            text=True,
            env=manager.env(),
            timeout=60,
        )
        if result.returncode == 0 or "already in use" in result.stderr:
            out["at"] = time.perf_counter()
            out["attempts"] = attempt
            return
    raise RuntimeError(f"the write never succeeded: {result.stderr}")
