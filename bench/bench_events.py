"""How soon an event reaches a subscriber after the change it reports is committed (#14, ADR 45),
through the API: one real manager process, real gRPC + mTLS both ways.

A subscriber streams `StreamEvents` (filter type=config) in a thread; the benchmark creates
configs one after another and, for each, notes when it sent the request, when the write was
acknowledged (committed and applied on the manager), and when its event arrived. The commit
happens somewhere between the first two, so:

- "request to event" is an upper bound of commit-to-event: it includes the Raft commit itself;
- "acknowledgement to event" is the event's lag behind the write's reply (negative: it came first).

Goal: p99 < 50 ms, judged on the upper bound.
"""

from __future__ import annotations

import queue
import threading
import time

from bench.common import figure, latency_summary, running_manager

CHANGES = 300
WARMUP = 20
TIMEOUT = 10.0
GOAL_P99_MS = 50.0


def run() -> dict[str, object]:
    import grpc

    from warren.api.v1 import control_pb2 as cpb
    from warren.api.v1 import control_pb2_grpc

    arrivals: queue.Queue[tuple[str, float]] = queue.Queue()
    with running_manager("events") as manager:
        channel = manager.channel()
        stub = control_pb2_grpc.ControlStub(channel)
        # From now, by time: the first write's event comes even if it commits before the stream is set up.
        since = time.time()
        request = cpb.StreamEventsRequest(since=since, filters=[cpb.EventFilter(key="type", value="config")])
        stream = stub.StreamEvents(request)

        def subscribe() -> None:
            try:
                for event in stream:
                    arrivals.put((event.actor_name, time.perf_counter()))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    raise

        reader = threading.Thread(target=subscribe, daemon=True)
        reader.start()
        to_event: list[float] = []
        after_ack: list[float] = []
        writes: list[float] = []
        try:
            for i in range(WARMUP + CHANGES):
                name = f"bench-{i}"
                sent = time.perf_counter()
                stub.CreateConfig(cpb.CreateConfigRequest(name=name, data=b"x"), timeout=TIMEOUT)
                acked = time.perf_counter()
                got, arrived = arrivals.get(timeout=TIMEOUT)
                if got != name:
                    raise RuntimeError(f"expected the event of {name}, got {got}")
                if i >= WARMUP:
                    to_event.append(arrived - sent)
                    after_ack.append(arrived - acked)
                    writes.append(acked - sent)
        finally:
            stream.cancel()
            reader.join(timeout=5)
            channel.close()

    upper = latency_summary(to_event)
    lag = latency_summary(after_ack)
    return {
        "name": "events",
        "note": "through the API: one real manager, a StreamEvents subscriber over gRPC+mTLS; sequential "
        "CreateConfig writes, each timed from its request and from its acknowledgement to its event",
        "changes": CHANGES,
        "request_to_event": upper,
        "ack_to_event": lag,
        "write": latency_summary(writes),
        "figures": [
            figure(
                "Commit to event, through the API (upper bound: from the write's request), p50", upper["p50_ms"], "ms"
            ),
            figure(
                "Commit to event, through the API (upper bound: from the write's request), p99",
                upper["p99_ms"],
                "ms",
                GOAL_P99_MS,
                "<",
            ),
            figure("Event after the write's acknowledgement, p50", lag["p50_ms"], "ms"),
            figure("Event after the write's acknowledgement, p99", lag["p99_ms"], "ms"),
        ],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
