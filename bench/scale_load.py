"""S1's and S2's client, in a process of its own (issue #15).

`python3 -m bench.scale_load CLIENTS SERVICES REPLICAS CREDS ADDR...`: CLIENTS writers create
SERVICES services through the gRPC API, spread over the managers' addresses (followers forward
writes), while two readers time GetService and ListServices until the writers finish. It prints
one JSON object: the latencies, overall and by the manager that answered.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import latency_summary
from bench.scale_cluster import IMAGE, RPC_TIMEOUT


def load(clients: int, services: int, replicas: int, creds_dir: str, addrs: list[str]) -> dict[str, Any]:
    """`clients` writers creating `services` services one after another (retrying on a leader
    change), and two readers timing reads until the writers finish."""
    import asyncio
    import random

    import grpc

    from warren import tls
    from warren.api.v1 import control_pb2 as cpb
    from warren.api.v1 import control_pb2_grpc
    from warren.api.v1 import types_pb2 as tpb

    async def main() -> dict[str, Any]:
        creds = tls.channel_credentials(*tls.load_credentials(Path(creds_dir)))
        # Four channels per manager, each with the address it reaches.
        options = tls.channel_options()
        targets = [(grpc.aio.secure_channel(a, creds, options=options), a) for a in addrs for _ in range(4)]
        channels = [channel for channel, _ in targets]
        stubs = [(control_pb2_grpc.ControlStub(channel), addr) for channel, addr in targets]
        for stub, _ in stubs:  # connect every channel before the clock starts
            await stub.ListServices(cpb.ListServicesRequest(page_size=1), timeout=RPC_TIMEOUT)
        writes: list[float] = []
        reads: list[float] = []
        # The same latencies by the manager that answered (the addresses' order), to tell a
        # leader's from a follower's.
        writes_at: dict[str, list[float]] = {a: [] for a in addrs}
        reads_at: dict[str, list[float]] = {a: [] for a in addrs}
        errors: list[str] = []
        created: list[str] = []
        next_index = iter(range(services))
        first: list[float] = []
        writing = [clients]

        async def writer(index: int) -> None:
            stub, addr = stubs[index % len(stubs)]
            for i in next_index:
                spec = tpb.ServiceSpec(name=f"svc-{i:05d}", image=IMAGE, replicas=replicas)
                while True:
                    if not first:
                        first.append(time.time())
                    t0 = time.perf_counter()
                    try:
                        await stub.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=RPC_TIMEOUT)
                    except grpc.RpcError as exc:
                        errors.append(f"{exc.code().name}: {exc.details()}"[:200])
                        if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                            break
                        await asyncio.sleep(0.2)
                        continue
                    writes.append(time.perf_counter() - t0)
                    writes_at[addr].append(writes[-1])
                    created.append(spec.name)
                    break
            writing[0] -= 1

        async def reader(index: int) -> None:
            stub, addr = stubs[(index * 5 + 1) % len(stubs)]
            n = 0
            while writing[0] > 0:
                t0 = time.perf_counter()
                try:
                    if n % 2 == 0 and created:
                        await stub.GetService(
                            cpb.GetServiceRequest(service=random.choice(created)), timeout=RPC_TIMEOUT
                        )
                    else:
                        await stub.ListServices(cpb.ListServicesRequest(page_size=100), timeout=RPC_TIMEOUT)
                except grpc.RpcError as exc:
                    errors.append(f"read {exc.code().name}: {exc.details()}"[:200])
                else:
                    reads.append(time.perf_counter() - t0)
                    reads_at[addr].append(reads[-1])
                n += 1
                await asyncio.sleep(0.05)

        await asyncio.gather(*(writer(i) for i in range(clients)), *(reader(i) for i in range(2)))
        last = time.time()
        for channel in channels:
            await channel.close()
        return {
            "first_create_at": first[0],
            "last_create_returned_at": last,
            "services_created": len(created),
            "writes_per_s": round(len(writes) / (last - first[0]), 1),
            "writes": latency_summary(writes) if writes else {},
            "reads": latency_summary(reads) if reads else {},
            "writes_by_manager": {a: latency_summary(v) for a, v in writes_at.items() if v},
            "reads_by_manager": {a: latency_summary(v) for a, v in reads_at.items() if v},
            "errors": len(errors),
            "first_errors": errors[:5],
            "client_cpu_s": round(sum(os.times()[:2]), 2),
        }

    return asyncio.run(main())


if __name__ == "__main__":
    clients, services, replicas, creds, *addrs = sys.argv[1:]
    print(json.dumps(load(int(clients), int(services), int(replicas), creds, addrs)))
