"""gRPC's fork handlers stay off in every Warren process (warren/__init__.py, ADR 41): pyroute2
forks beside live gRPC threads, and the handlers could block such a fork for good."""

from __future__ import annotations

import os
import subprocess
import sys

_FORKS_BESIDE_CALLS = """
import os, threading, time
import warren
import grpc
from concurrent import futures
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
stub.Check(health_pb2.HealthCheckRequest())

def calls():
    while True:
        stub.Check(health_pb2.HealthCheckRequest())

for _ in range(2):
    threading.Thread(target=calls, daemon=True).start()
end = time.monotonic() + 1.5
while time.monotonic() < end:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print(os.environ.get("GRPC_ENABLE_FORK_SUPPORT"), flush=True)
os._exit(0)
"""


def test_forks_beside_grpc_calls_run_no_grpc_fork_handler() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    env["GRPC_VERBOSITY"] = "info"  # the core logs each fork whose handlers it had to skip
    done = subprocess.run(
        [sys.executable, "-c", _FORKS_BESIDE_CALLS], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fork() handlers" not in done.stderr, done.stderr[-2000:]
    assert done.stdout.strip() == "false"
