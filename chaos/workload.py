"""The seeded client workload: service create, scale, update and remove, each recorded with its
outcome (ok, failed, unknown) as one JSON line.

`Planner` is pure: a seeded generator of operations over its model of which services may exist.
A `bulk` step updates every service at once, concurrently, each spec padded with about 48 KiB of
env (non-ASCII too): the leader takes them as one large Batch entry, which PySyncObj sends to
followers in chunks (ADR 20). Each of its updates is an `update` in the history.
`main` is the shell, run as a long-lived process inside the client namespace:

    python3 -m chaos.workload --creds DIR --managers A,B,C --seed S --history H.jsonl \\
        --control C.json --ack A.json --run-id ID

The runner steers it through the control file ({"state": "run"|"pause"|"stop", "round": N});
once paused, the workload writes {"paused": N} to the ack file and every operation it started is
in the history.

A write is never retried once it may have reached a manager: only a call that surely never left
(connection refused) or that a manager surely refused (no leader, "the leader is at X") goes to
the next manager. Everything else that fails without an answer is `unknown`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

MAX_SERVICES = 5
MAX_REPLICAS = 3
CALL_TIMEOUT = 6.0
COMMAND = ["/bin/sleep", "3600"]
# A bulk update's padding: PAD_ITEMS env values of PAD_CHARS characters (validate.MAX_VALUE is
# 4096), some of them two bytes in UTF-8 and in PySyncObj's pickling.
PAD_ITEMS = 12
PAD_CHARS = 4000


@dataclass
class _Svc:
    name: str
    replicas: int
    gen: int
    sure: bool  # its create was acknowledged (else unknown)


@dataclass
class Planner:
    """Chooses the next operation from a seeded RNG and the outcomes seen so far (no I/O)."""

    seed: int
    rng: random.Random = field(init=False)
    services: dict[str, _Svc] = field(default_factory=dict)
    seq: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(f"workload:{self.seed}")

    def next_op(self) -> dict:
        self.seq += 1
        names = sorted(self.services)
        choices = ["create"] * (3 if len(names) < MAX_SERVICES else 0)
        if names:
            choices += ["scale"] * 4 + ["update"] * 3 + ["remove"] * (2 if len(names) > 1 else 1)
        if len(names) > 1:
            choices += ["bulk"]
        kind = self.rng.choice(choices)
        if kind == "bulk":
            return self._bulk(names)
        if kind == "create":
            return {
                "seq": self.seq,
                "op": "create",
                "service": f"s{self.seed % 1000}-{self.seq}",
                "replicas": self.rng.randint(1, 2),
                "gen": 0,
            }
        svc = self.services[self.rng.choice(names)]
        if kind == "scale":
            replicas = self.rng.choice([r for r in range(MAX_REPLICAS + 1) if r != svc.replicas])
            return {"seq": self.seq, "op": "scale", "service": svc.name, "replicas": replicas}
        if kind == "update":
            return {"seq": self.seq, "op": "update", "service": svc.name, "replicas": svc.replicas, "gen": self.seq}
        return {"seq": self.seq, "op": "remove", "service": svc.name}

    def _bulk(self, names: list[str]) -> dict:
        """Updates of every service, sent together; each gets its own seq (and GEN)."""
        updates = []
        for name in names:
            if updates:
                self.seq += 1
            svc = self.services[name]
            updates.append(
                {
                    "seq": self.seq,
                    "op": "update",
                    "service": name,
                    "replicas": svc.replicas,
                    "gen": self.seq,
                    "pad": True,
                }
            )
        return {"op": "bulk", "updates": updates}

    def observe(self, op: dict, outcome: str) -> None:
        """Update the model: an acknowledged or unknown write may have happened."""
        name = op["service"]
        if outcome == "failed":
            if op["op"] != "create" and op.get("code") == "NOT_FOUND":
                self.services.pop(name, None)  # an unknown create that did not happen
            return
        if op["op"] == "create":
            self.services[name] = _Svc(name, op["replicas"], 0, outcome == "ok")
        elif op["op"] == "remove":
            self.services.pop(name, None)
        elif name in self.services:
            svc = self.services[name]
            svc.replicas = op["replicas"]
            if op["op"] == "update":
                svc.gen = op["gen"]


def spec_of(types, op: dict, run_id: str):
    """The ServiceSpec proto of a create or update."""
    env = {"WCH_RUN": run_id, "GEN": str(op["gen"])}
    if op.get("pad"):
        for i in range(PAD_ITEMS):
            # Different per update (the spec must change) and partly non-ASCII.
            env[f"PAD{i}"] = (f"{op['seq']}:{i}:é€" + "x" * 13) * (PAD_CHARS // 20)
    return types.ServiceSpec(
        name=op["service"],
        image="busybox:latest",
        command=COMMAND[:1],
        args=COMMAND[1:],
        env=env,
        mode="replicated",
        replicas=op["replicas"],
        stop_grace_period=1.0,
    )


class Executor:
    """Sends one operation, failing over between managers only when that is safe."""

    def __init__(self, conn, run_id: str) -> None:
        self.conn = conn
        self.run_id = run_id
        self.current = 0

    def _request(self, op: dict):
        pb, types = self.conn.pb, self.conn.types
        if op["op"] == "create":
            return "CreateService", pb.CreateServiceRequest(spec=spec_of(types, op, self.run_id))
        if op["op"] == "scale":
            return "ScaleService", pb.ScaleServiceRequest(service=op["service"], replicas=op["replicas"])
        if op["op"] == "update":
            return "UpdateService", pb.UpdateServiceRequest(service=op["service"], spec=spec_of(types, op, self.run_id))
        return "RemoveService", pb.RemoveServiceRequest(service=op["service"])

    def run(self, op: dict) -> dict:
        from chaos.rpc import classify

        method, request = self._request(op)
        managers = self.conn.managers
        tried: list[str] = []
        order = [managers[(self.current + i) % len(managers)] for i in range(len(managers))]
        result = {"outcome": "failed", "code": "UNAVAILABLE", "detail": "no manager tried"}
        while order:
            addr = order.pop(0)
            tried.append(addr)
            try:
                getattr(self.conn.stub(addr), method)(request, timeout=CALL_TIMEOUT)
            except self.conn.grpc.RpcError as exc:
                code, details = exc.code().name, exc.details() or ""
                verdict, hint = classify(code, details)
                result = {"outcome": "unknown" if verdict == "unknown" else "failed", "code": code, "detail": details}
                if verdict == "unknown":
                    # Next operation starts elsewhere: this manager may be cut off.
                    self.current = (managers.index(addr) + 1) % len(managers)
                    break
                if verdict == "redirect" and hint in managers and hint not in tried:
                    order = [hint, *(a for a in order if a != hint)]
                    continue
                if verdict in ("not_sent", "failed", "redirect") and code == "UNAVAILABLE":
                    continue  # surely not applied here: the next manager may take it
                break
            else:
                self.current = managers.index(addr)
                result = {"outcome": "ok", "code": "OK", "detail": ""}
                break
        result["managers"] = tried
        return result


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creds", required=True)
    parser.add_argument("--managers", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--ack", type=Path, required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--pace", type=float, default=0.05, help="seconds between operations")
    args = parser.parse_args()

    from chaos.rpc import Conn

    conn = Conn(args.creds, args.managers.split(","))
    planner = Planner(args.seed)
    executor = Executor(conn, args.run_id)
    paused_round = None
    with args.history.open("a", encoding="utf-8") as history:
        while True:
            control = _read_json(args.control)
            state, rnd = control.get("state", "pause"), control.get("round", 0)
            if state == "stop":
                _write_json(args.ack, {"stopped": rnd})
                return
            if state == "pause":
                if paused_round != rnd:
                    paused_round = rnd
                    _write_json(args.ack, {"paused": rnd})
                time.sleep(0.05)
                continue
            paused_round = None
            step = planner.next_op()
            ops = step["updates"] if step["op"] == "bulk" else [step]
            for op in ops:
                op["round"] = rnd
                op["t_start"] = time.time()
            if len(ops) == 1:
                ops[0].update(executor.run(ops[0]))
            else:
                for addr in conn.managers:
                    conn.stub(addr)  # create the channels before the threads share them
                with ThreadPoolExecutor(len(ops)) as pool:
                    for op, result in zip(ops, pool.map(executor.run, ops), strict=True):
                        op.update(result)
            for op in ops:
                op["t_end"] = time.time()
                planner.observe(op, op["outcome"])
                history.write(json.dumps(op) + "\n")
            history.flush()
            # Back off after a failure, so that a cluster without a leader is not hammered.
            time.sleep(args.pace if all(op["outcome"] == "ok" for op in ops) else 0.25)


if __name__ == "__main__":
    main()
