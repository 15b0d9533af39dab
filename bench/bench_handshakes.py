"""TLS handshakes into a busy manager-shaped process, by the interpreter's switch interval (ADR 84).

A server process runs a grpc.aio server with the manager's TLS settings (mTLS, `tls.server_options`),
either with fixed credentials or with the manager's reloading ones (`tls.reloading_server_credentials`,
whose Python callback runs at every handshake). It is kept busy the way a leader is in a reconnect
storm: its event loop computes in 20 ms bursts half the time, and one other thread computes without
pause (the Raft thread applying a backlog, or a scheduling pass). This process then opens CONNECTIONS
new connections at once, each with its own subchannel, and makes one Health.Check on each.

Measured through the API, per case over REPEATS runs (the cases in turn): the median of the
answers per second and of the p99 from the start to each answer, and every connection that
failed. In each server, before it serves: the work two threads that compute at once do per
second together (what the switch interval costs computing threads).

Run: `python3 -m bench.run --only handshakes`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, figure, latency_summary

CONNECTIONS = 200
REPEATS = 3  # each case, in turn with the others
CASES = (  # (credentials, switch interval in seconds, busy)
    ("reloading", 0.005, False),
    ("fixed", 0.005, True),
    ("reloading", 0.005, True),
    ("fixed", 0.001, True),
    ("reloading", 0.001, True),
    ("reloading", 0.0005, True),
)
BURST = 0.02  # the event loop computes this long, then rests as long
CALIBRATE_S = 2.0
ANSWER_TIMEOUT = 30.0


def _work() -> None:
    sum(range(1000))


def _switching_cost() -> float:
    """The work two threads that compute at once do per second, together: what the forced switches
    between them cost, at this process's switch interval."""
    done = [0, 0]
    stop = threading.Event()

    def compute(slot: int) -> None:
        while not stop.is_set():
            _work()
            done[slot] += 1

    threads = [threading.Thread(target=compute, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    time.sleep(CALIBRATE_S)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(done) / CALIBRATE_S


def serve(credentials: str, switch: float, busy: bool, port: int, certs: Path) -> None:
    """The server process: print its calibration, then serve until killed."""
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    from warren import tls

    sys.setswitchinterval(switch)
    work_per_s = _switching_cost()
    bundle = (certs / "server" / tls.CA_FILE).read_bytes()

    async def main() -> None:
        server = grpc.aio.server(options=tls.server_options())
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        if credentials == "fixed":
            own = tls.load_credentials(certs / "server")
            creds = tls.server_credentials(own.ca_pem, own.cert_pem, own.key_pem)
        else:
            creds = tls.reloading_server_credentials(certs / "server", lambda: bundle)
        server.add_secure_port(f"127.0.0.1:{port}", creds)
        await server.start()
        if busy:

            def compute() -> None:
                while True:
                    _work()

            async def loop_bursts() -> None:
                while True:
                    end = time.monotonic() + BURST
                    while time.monotonic() < end:
                        _work()
                    await asyncio.sleep(BURST)

            threading.Thread(target=compute, daemon=True).start()
            asyncio.get_running_loop().create_task(loop_bursts())
        print(json.dumps({"ready": True, "work_per_s": work_per_s}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _connect(port: int, certs: Path, count: int) -> dict[str, Any]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from warren import tls

    own = tls.load_credentials(certs / "client")
    creds = tls.channel_credentials(own.ca_pem, own.cert_pem, own.key_pem)
    failures: list[str] = []

    async def one(index: int) -> float | None:
        started = time.monotonic()
        # Its own subchannel: channels with equal arguments would share one connection.
        options = [*tls.channel_options(), ("grpc.use_local_subchannel_pool", 1), ("bench.connection", index)]
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=ANSWER_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")
                return None
        return time.monotonic() - started

    started = time.monotonic()
    answered = [s for s in await asyncio.gather(*(one(i) for i in range(count))) if s is not None]
    wall = time.monotonic() - started
    return {
        "connections": count,
        "answered": len(answered),
        "failed": len(failures),
        "first_failures": sorted(set(failures))[:3],
        "wall_s": round(wall, 3),
        "answered_per_s": round(len(answered) / wall, 1),
        "latency": latency_summary(answered) if answered else None,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_case(credentials: str, switch: float, busy: bool, certs: Path) -> dict[str, Any]:
    port = _free_port()
    command = [sys.executable, "-m", "bench.bench_handshakes", "serve", credentials, str(switch), str(int(busy))]
    server = subprocess.Popen(
        [*command, str(port), str(certs)], cwd=REPO, stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"the server exited with {server.wait()}")
        calibration = json.loads(line)
        result = asyncio.run(_connect(port, certs, CONNECTIONS))
    finally:
        server.kill()
        server.wait()
    return {
        "credentials": credentials,
        "switch_interval_ms": switch * 1000,
        "busy": busy,
        "work_per_s": calibration["work_per_s"],
        **result,
    }


def _make_certs(directory: Path) -> None:
    from warren import pki, tls

    ca = pki.CertificateAuthority.create("bench" + "0" * 20)
    cert, key = ca.issue_keypair("m1", "manager")
    tls.save_credentials(directory / "server", ca.cert_pem, cert, key)
    cert, key = ca.issue_keypair("w1", "worker")
    tls.save_credentials(directory / "client", ca.cert_pem, cert, key)


def _name(case: dict[str, Any]) -> str:
    load = "busy" if case["busy"] else "idle"
    return f"{case['credentials']} credentials, {load}, switch {case['switch_interval_ms']:g} ms"


def _combined(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One case over its repeats: the medians, and every failure."""
    middle = len(runs) // 2

    def median(key: str) -> float:
        return sorted(r[key] for r in runs)[middle]

    p99s = sorted(r["latency"]["p99_ms"] for r in runs if r["latency"])
    return {
        **{k: runs[0][k] for k in ("credentials", "switch_interval_ms", "busy", "connections")},
        "repeats": len(runs),
        "answered_per_s": median("answered_per_s"),
        "p99_ms": p99s[len(p99s) // 2] if p99s else None,
        "failed": sum(r["failed"] for r in runs),
        "work_per_s": median("work_per_s"),
        "runs": runs,
    }


def run() -> dict[str, object]:
    certs = Path(tempfile.mkdtemp(prefix="warren-bench-handshakes-"))
    runs: dict[tuple[str, float, bool], list[dict[str, Any]]] = {case: [] for case in CASES}
    try:
        _make_certs(certs)
        for _ in range(REPEATS):  # the cases in turn, so that a change of the machine's pace hits all
            for case in CASES:
                runs[case].append(run_case(*case, certs))
    finally:
        shutil.rmtree(certs, ignore_errors=True)
    cases = [_combined(r) for r in runs.values()]
    by_name = {_name(c): c for c in cases}
    base = by_name["reloading credentials, busy, switch 5 ms"]
    chosen = by_name["reloading credentials, busy, switch 1 ms"]
    attempts = CONNECTIONS * REPEATS
    figures = []
    for name, case in by_name.items():
        figures.append(figure(f"{name}: answered/s, median (through the API)", case["answered_per_s"], "/s"))
        figures.append(figure(f"{name}: failed of {attempts}", case["failed"], ""))
        if case["p99_ms"] is not None:
            figures.append(figure(f"{name}: p99, median (through the API)", case["p99_ms"], "ms"))
    figures.append(
        figure(
            f"Busy, reloading credentials: connections failed of {attempts} at a 1 ms switch interval (ADR 84)",
            chosen["failed"],
            "",
            goal=0,
        )
    )
    figures.append(
        figure(
            "Busy, reloading credentials: answered/s, 1 ms / 5 ms switch interval",
            round(chosen["answered_per_s"] / base["answered_per_s"], 2),
            "x",
        )
    )
    for switch in ("1", "0.5"):
        case = by_name[f"reloading credentials, busy, switch {switch} ms"]
        figures.append(
            figure(
                f"Two computing threads' work, {switch} ms / 5 ms switch interval (its cost)",
                round(case["work_per_s"] / base["work_per_s"], 3),
                "x",
            )
        )
    return {
        "name": "handshakes",
        "label": "through the API",
        "connections": CONNECTIONS,
        "repeats": REPEATS,
        "cases": cases,
        "figures": figures,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        credentials, switch, busy, port, certs = sys.argv[2:7]
        serve(credentials, float(switch), busy == "1", int(port), Path(certs))
    else:
        print(json.dumps(run(), indent=2))
