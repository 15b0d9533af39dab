"""Writes through the API of a 3-manager cluster (issue #15), next to the transport's own floor.

64 concurrent clients, in a process of their own on grpc.aio (one event loop, 8 channels per
target: Python threads would make the client, not the managers, the bottleneck), create services
with replicas=0 one after another. Goal: >= 2,000 writes/s through the API, next to the
in-process Raft figure of bench_raft (which has no gRPC).

Runs, each after one warm-up call per channel:
- writes alone, spread over the three managers: the headline;
- the same writes with 4 readers, one page of 100 at a time each: the reads' p99 under write load
  (issue #15's read goal), and what the reads cost the writes;
- writes to the leader alone and to the followers alone (ADR 58);
- the floor: the same load against three bare gRPC servers with the managers' TLS and message
  options whose CreateService only echoes the spec into a Service. It is what this machine's
  gRPC, TLS and protobuf cost with no Raft, no state and no checks: no Warren can beat it here.

Each run reports writes/s, latency, every server's CPU per write, and for the cluster the writes
per Raft entry. The ratio of the headline to the floor says how much of the machine is Warren's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from bench.common import REPO, cpu_seconds, figure, latency_summary

CLIENTS = 64
SECONDS = 8.0
GOAL_WRITES_PER_S = 2000.0
READERS = 4  # readers of the reads-under-writes run, one read at a time each
READ_PAGE = 100
READ_P99_GOAL_MS = 20.0  # issue #15: reads under the write load
IMAGE = "busybox:latest"
TIMEOUT = 10.0


def cluster_writes(clients: int = CLIENTS, seconds: float = SECONDS) -> dict[str, object]:
    """The runs of the module docstring, on one fresh cluster, in that order; the floor last."""
    import shutil
    import tempfile

    from tests.integration.harness import leader_of, manager_trio

    root = Path(tempfile.mkdtemp(prefix="warren-bench-api-cluster-"))
    try:
        with manager_trio(root) as managers:
            leader = leader_of(managers)
            followers = [m for m in managers if m is not leader]
            out = _cluster_run(managers, leader, managers, clients, seconds, readers=0)
            out["with_readers"] = _cluster_run(managers, leader, managers, clients, seconds, readers=READERS)
            out["leader_only"] = _cluster_run(managers, leader, [leader], clients, seconds, readers=0)
            out["followers_only"] = _cluster_run(managers, leader, followers, clients, seconds, readers=0)
            out["floor"] = grpc_floor(managers, clients, seconds)
            out["of_floor"] = round(out["writes_per_s"] / max(out["floor"]["writes_per_s"], 1e-9), 3)
            return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _load(
    admin_dir: Path, addrs: list[str], pids: list[int], clients: int, seconds: float, readers: int, prefix: str
) -> dict[str, object]:
    """Run the client process against `addrs`; add each of `pids`' CPU seconds over the run."""
    args = [sys.executable, "-m", "bench.bench_api_cluster", "--load", str(clients), str(seconds), prefix]
    args += ["--readers", str(readers), str(admin_dir), *addrs]
    cpu_before = [cpu_seconds(pid) for pid in pids]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120, cwd=REPO)
    cpu_after = [cpu_seconds(pid) for pid in pids]
    if proc.returncode != 0:
        raise RuntimeError(f"the write load failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out: dict[str, object] = json.loads(proc.stdout)
    out["server_cpu_s"] = [round(b - a, 2) for a, b in zip(cpu_before, cpu_after, strict=True)]
    return out


def _cluster_run(
    managers: list, leader, targets: list, clients: int, seconds: float, readers: int
) -> dict[str, object]:
    """One load run against `targets`; CPU per write is listed leader first."""
    sent_to = "all" if len(targets) == len(managers) else ("leader" if targets == [leader] else "followers")
    ordered = [leader] + [m for m in managers if m is not leader]
    from tests.integration.harness import commit_index

    entries_before = commit_index(leader)
    prefix = f"{sent_to}-r{readers}"
    out = _load(
        managers[0].data_dir / "admin",
        [m.addr for m in targets],
        [m.process.pid for m in ordered],
        clients,
        seconds,
        readers,
        prefix,
    )
    entries = commit_index(leader) - entries_before
    cpu = out.pop("server_cpu_s")
    out["manager_cpu_s"] = cpu
    out["cpu_ms_per_write"] = [round(c * 1000 / max(out["writes"], 1), 3) for c in cpu]
    out["raft_entries"] = entries
    out["writes_per_entry"] = round(out["writes"] / max(entries, 1), 1)
    out["sent_to"] = sent_to
    return out


def grpc_floor(managers: list, clients: int, seconds: float) -> dict[str, object]:
    """The same writes-alone load against one bare server per manager, each on its manager's
    host with its certificate (so the clients' TLS checks pass), started and stopped here."""
    with ExitStack() as stack:
        servers: list[subprocess.Popen[str]] = []
        addrs: list[str] = []
        for manager in managers:
            args = [sys.executable, "-m", "bench.bench_api_cluster", "--floor-server"]
            args += [str(manager.data_dir / "certs"), manager.host]
            server = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
            stack.callback(_stop, server)
            servers.append(server)
            assert server.stdout is not None
            port = server.stdout.readline().strip()
            if not port.isdigit():
                raise RuntimeError(f"the floor server on {manager.host} did not start")
            addrs.append(f"{manager.host}:{port}")
        out = _load(managers[0].data_dir / "admin", addrs, [s.pid for s in servers], clients, seconds, 0, "floor")
    cpu = out["server_cpu_s"]
    assert isinstance(cpu, list)
    out["cpu_ms_per_write"] = [round(c * 1000 / max(out["writes"], 1), 3) for c in cpu]
    return out


def _stop(server: subprocess.Popen[str]) -> None:
    """Closing its stdin ends a floor server; kill it if that does not."""
    if server.stdin is not None:
        server.stdin.close()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _floor_server(certs_dir: str, host: str) -> None:
    """Serve CreateService as an echo on `host`:0 with mTLS; print the port; stop at stdin's EOF."""
    import asyncio

    import grpc

    from warren import tls
    from warren.api.v1 import control_pb2_grpc
    from warren.api.v1 import types_pb2 as tpb
    from warren.manager.server import generic_only

    class Echo(control_pb2_grpc.ControlServicer):
        def __init__(self) -> None:
            self.created = 0

        async def CreateService(self, request, context):  # type: ignore[no-untyped-def]
            self.created += 1
            now = time.time()
            return tpb.Service(id=f"{self.created:025d}", spec=request.spec, version=1, created_at=now, updated_at=now)

    async def main() -> None:
        server = grpc.aio.server(options=tls.server_options())
        control_pb2_grpc.add_ControlServicer_to_server(Echo(), generic_only(server))  # as the managers do
        port = server.add_secure_port(f"{host}:0", tls.server_credentials(*tls.load_credentials(Path(certs_dir))))
        await server.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(None)

    asyncio.run(main())


def _client_load(
    clients: int, seconds: float, prefix: str, creds_dir: str, addrs: list[str], readers: int
) -> dict[str, object]:
    """The client side of a run, in its own process; services are named `prefix`-..."""
    import asyncio

    import grpc

    from warren import tls
    from warren.api.v1 import control_pb2 as cpb
    from warren.api.v1 import control_pb2_grpc
    from warren.api.v1 import types_pb2 as tpb

    async def main() -> dict[str, object]:
        creds = tls.channel_credentials(*tls.load_credentials(Path(creds_dir)))
        channels = [grpc.aio.secure_channel(a, creds, options=tls.channel_options()) for a in addrs for _ in range(8)]
        stubs = [control_pb2_grpc.ControlStub(c) for c in channels]
        latencies: list[float] = []
        errors: list[str] = []
        loop = asyncio.get_running_loop()

        async def client(index: int, deadline: float | None) -> None:
            stub = stubs[index % len(stubs)]
            i = 0
            while deadline is None or loop.time() < deadline:
                spec = tpb.ServiceSpec(name=f"{prefix}-{index}-{i:05d}", image=IMAGE, replicas=0)
                start = time.perf_counter()
                try:
                    await stub.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=TIMEOUT)
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}"[:200])
                else:
                    if deadline is not None:
                        latencies.append(time.perf_counter() - start)
                i += 1
                if deadline is None:
                    return  # warm-up: one call per client connects every channel

        reads: dict[str, list[float]] = {"list_services": [], "list_tasks": []}

        async def reader(index: int, deadline: float) -> None:
            """One read at a time during the writes (issue #15's read goal): a page of 100."""
            stub = stubs[(index * 5 + 1) % len(stubs)]
            while loop.time() < deadline:
                for kind, call, request in (
                    ("list_services", stub.ListServices, cpb.ListServicesRequest(page_size=READ_PAGE)),
                    ("list_tasks", stub.ListTasks, cpb.ListTasksRequest(page_size=READ_PAGE)),
                ):
                    started = time.perf_counter()
                    try:
                        await call(request, timeout=TIMEOUT)
                    except grpc.RpcError as exc:
                        errors.append(f"read {exc.code().name}: {exc.details()}"[:200])
                    else:
                        reads[kind].append(time.perf_counter() - started)

        await asyncio.gather(*(client(-1 - i, None) for i in range(len(stubs))))
        errors.clear()
        cpu_start = sum(os.times()[:2])
        start = loop.time()
        await asyncio.gather(
            *(client(i, start + seconds) for i in range(clients)),
            *(reader(i, start + seconds) for i in range(readers)),
        )
        elapsed = loop.time() - start
        client_cpu = sum(os.times()[:2]) - cpu_start
        for channel in channels:
            await channel.close()
        out: dict[str, object] = {
            "targets": len(addrs),
            "clients": clients,
            "readers": readers,
            "seconds": round(elapsed, 3),
            "writes": len(latencies),
            "errors": len(errors),
            "first_errors": errors[:3],
            "writes_per_s": round(len(latencies) / elapsed, 1),
            "latency": latency_summary(latencies) if latencies else {},
            # Over the timed run only, so the floor and the cluster compare like for like.
            "client_cpu_ms_per_write": round(client_cpu * 1000 / max(len(latencies), 1), 3),
        }
        if readers:
            # Timed in the load's own event loop, busy with the writers: an upper bound.
            out["reads"] = {kind: latency_summary(times) if times else {} for kind, times in reads.items()}
        return out

    return asyncio.run(main())


def cluster_figures(out: dict) -> list[dict[str, object]]:
    """The summary lines of `cluster_writes`' result."""
    reads = out["with_readers"]["reads"]
    return [
        figure(
            f"3 managers, {CLIENTS} clients: CreateService through the API",
            out["writes_per_s"],
            "writes/s",
            GOAL_WRITES_PER_S,
            ">=",
        ),
        figure("3 managers, 64 clients: CreateService p99", out["latency"]["p99_ms"], "ms"),
        figure("the transport's floor (echo servers, same load)", out["floor"]["writes_per_s"], "writes/s"),
        figure("cluster writes / the floor", out["of_floor"], "x"),
        figure("with 4 readers: writes", out["with_readers"]["writes_per_s"], "writes/s"),
        figure(
            "with 4 readers: ListServices p99 (page of 100)",
            reads["list_services"].get("p99_ms"),
            "ms",
            READ_P99_GOAL_MS,
            "<=",
        ),
        figure(
            "with 4 readers: ListTasks p99 (page of 100)",
            reads["list_tasks"].get("p99_ms"),
            "ms",
            READ_P99_GOAL_MS,
            "<=",
        ),
        figure("3 managers, 64 clients, all to the leader", out["leader_only"]["writes_per_s"], "writes/s"),
        figure("3 managers, 64 clients, all through followers", out["followers_only"]["writes_per_s"], "writes/s"),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--load"]:
        clients, seconds, prefix, flag, readers, creds_dir, *addrs = sys.argv[2:]
        assert flag == "--readers", "usage: --load CLIENTS SECONDS PREFIX --readers N CREDS ADDR..."
        print(json.dumps(_client_load(int(clients), float(seconds), prefix, creds_dir, addrs, int(readers))))
        sys.exit(0)
    if sys.argv[1:2] == ["--floor-server"]:  # CERTS_DIR HOST
        _floor_server(sys.argv[2], sys.argv[3])
        sys.exit(0)
    print(json.dumps(cluster_writes(), indent=2))
