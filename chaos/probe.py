"""The runner's eyes inside the client namespace: JSON requests on stdin, one JSON reply per line.

The runner lives in the root namespace, which has no address on the lab's bridge, so it asks this
long-lived process (started with nsenter into the client namespace) to call the managers.

    {"op": "info", "addr": A, "consistent": false, "timeout": 2}
    {"op": "state", "addr": A}                      services, tasks and nodes as plain dicts
    {"op": "first_leader", "addrs": [...], "timeout": 30}
                                                    poll until one answers a consistent read
    {"op": "first_write", "addrs": [...], "node": ID, "timeout": 30}
                                                    poll until one acknowledges a write
    {"op": "token", "addr": A, "role": "worker"}
    {"op": "label", "addr": A, "node": ID, "key": K, "size": N, "timeout": 5}
                                                    one write: label K on node ID, N bytes long
    {"op": "put_service", "addr": A, "spec": {...}, "create": false}
                                                    create or update a service (spec_of's fields)
    {"op": "rollout", "addr": A, "service": NAME}   one service, its update status and its tasks
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

from chaos.rpc import Conn
from warren.api.pages import all_pages


def _status(service) -> dict | None:
    """A Service message's update_status as a dict, None before its first update."""
    if not service.HasField("update_status"):
        return None
    st = service.update_status
    return {
        "state": st.state,
        "started_at": st.started_at,
        "completed_at": st.completed_at,
        "from_version": st.from_version,
        "to_version": st.to_version,
        "message": st.message,
    }


def _task(t) -> dict:
    return {
        "id": t.id,
        "service_id": t.service_id,
        "service": t.service_name,
        "slot": t.slot,
        "node_id": t.node_id,
        "state": t.state,
        "desired_state": t.desired_state,
        "spec_version": t.spec_version,
        "relocates": t.relocates,
    }


def _err(exc) -> dict:
    code = exc.code().name if hasattr(exc, "code") else "INTERNAL"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return {"ok": False, "code": code, "detail": details or ""}


def info(conn: Conn, addr: str, consistent: bool = False, timeout: float = 2.0) -> dict:
    try:
        reply = conn.stub(addr).GetClusterInfo(conn.pb.GetClusterInfoRequest(consistent=consistent), timeout=timeout)
    except conn.grpc.RpcError as exc:
        return _err(exc)
    return {
        "ok": True,
        "leader_api_addr": reply.leader_api_addr,
        "raft_state": reply.raft_state,
        "term": reply.raft_term,
        "commit_index": reply.commit_index,
        "applied_index": reply.applied_index,
        "managers": [
            {
                "api_addr": m.api_addr,
                "raft_addr": m.raft_addr,
                "leader": m.leader,
                "reachable": m.reachable,
                "voter": m.voter,
                "raft_state": m.raft_state,
                "term": m.raft_term,
                "commit_index": m.commit_index,
                "applied_index": m.applied_index,
                "connected": list(m.connected),
                "error": m.error,
            }
            for m in reply.managers
        ],
    }


def state(conn: Conn, addr: str, timeout: float = 5.0) -> dict:
    try:
        stub = conn.stub(addr)
        services = all_pages(partial(stub.ListServices, timeout=timeout), conn.pb.ListServicesRequest(), "services")
        tasks = all_pages(partial(stub.ListTasks, timeout=timeout), conn.pb.ListTasksRequest(), "tasks")
        nodes = all_pages(partial(stub.ListNodes, timeout=timeout), conn.pb.ListNodesRequest(), "nodes")
    except conn.grpc.RpcError as exc:
        return _err(exc)
    return {
        "ok": True,
        "services": [
            {
                "id": s.id,
                "name": s.spec.name,
                "replicas": s.spec.replicas,
                "version": s.version,
                "env": dict(s.spec.env),
                "desired": s.desired_tasks,
                "running": s.running_tasks,
                "update_status": _status(s),
            }
            for s in services
        ],
        "tasks": [_task(t) for t in tasks],
        "nodes": [{"id": n.id, "role": n.role, "status": n.status, "addr": n.addr} for n in nodes],
    }


def put_service(conn: Conn, addr: str, spec: dict, create: bool, timeout: float = 5.0) -> dict:
    """Create or update one service from `spec` (name, replicas, env, command; parallelism,
    monitor and order of its updates and rollbacks, and the updates' failure action); the reply
    carries the version it now has."""
    types = conn.types
    pace = {"parallelism": spec["parallelism"], "monitor": spec["monitor"], "order": spec["order"]}
    update = types.UpdateConfig(failure_action=spec.get("failure_action", "pause"), **pace)
    msg = types.ServiceSpec(
        name=spec["name"],
        image="busybox:latest",
        command=spec["command"][:1],
        args=spec["command"][1:],
        env=spec["env"],
        mode="replicated",
        replicas=spec["replicas"],
        stop_grace_period=1.0,
        update=update,
        rollback=types.UpdateConfig(**pace),
    )
    try:
        stub = conn.stub(addr)
        if create:
            reply = stub.CreateService(conn.pb.CreateServiceRequest(spec=msg), timeout=timeout)
        else:
            reply = stub.UpdateService(conn.pb.UpdateServiceRequest(service=spec["name"], spec=msg), timeout=timeout)
    except conn.grpc.RpcError as exc:
        return _err(exc)
    return {"ok": True, "version": reply.version}


def rollout(conn: Conn, addr: str, service: str, timeout: float = 2.0) -> dict:
    """One service as `addr` sees it (its own state: a follower's may lag, never invent): its
    version, replicas, update order and status, and its tasks, the ended ones kept included
    (`checker.check_serving` needs the failed ones)."""
    try:
        stub = conn.stub(addr)
        svc = stub.GetService(conn.pb.GetServiceRequest(service=service), timeout=timeout)
        request = conn.pb.ListTasksRequest(service=service, include_history=True)
        tasks = all_pages(partial(stub.ListTasks, timeout=timeout), request, "tasks")
    except conn.grpc.RpcError as exc:
        return _err(exc)
    return {
        "ok": True,
        "service": {
            "id": svc.id,
            "name": svc.spec.name,
            "version": svc.version,
            "replicas": svc.spec.replicas,
            "order": svc.spec.update.order,
            "parallelism": svc.spec.update.parallelism,
            "update_status": _status(svc),
        },
        "tasks": [_task(t) for t in tasks],
    }


def first_leader(conn: Conn, addrs: list[str], timeout: float) -> dict:
    """Poll `addrs` with consistent reads (a committed no-op) until one succeeds."""
    deadline = time.monotonic() + timeout
    tries = 0
    while time.monotonic() < deadline:
        for addr in addrs:
            tries += 1
            reply = info(conn, addr, consistent=True, timeout=0.5)
            if reply["ok"]:
                return {"ok": True, "addr": addr, "t": time.monotonic(), "leader": reply["leader_api_addr"]}
        time.sleep(0.02)
    return {"ok": False, "code": "DEADLINE_EXCEEDED", "detail": f"no leader answered in {timeout}s ({tries} tries)"}


def first_write(conn: Conn, addrs: list[str], node: str, timeout: float) -> dict:
    """Poll `addrs` with a small committed write (a label on `node`) until one is acknowledged,
    following "the leader is at" hints. GetClusterInfo is no use here: it asks every manager for
    its Raft view, and waits on a stopped one."""
    from chaos.rpc import classify

    deadline = time.monotonic() + timeout
    tries = 0
    last = ""
    while time.monotonic() < deadline:
        order = list(addrs)
        while order:
            addr = order.pop(0)
            tries += 1
            request = conn.pb.UpdateNodeRequest(node=node, labels_add={"wch-failover": str(tries)})
            try:
                conn.stub(addr).UpdateNode(request, timeout=0.5)
            except conn.grpc.RpcError as exc:
                last = f"{addr}: {exc.code().name} {exc.details() or ''}"
                verdict, hint = classify(exc.code().name, exc.details() or "")
                if verdict == "redirect" and hint in addrs and hint in order:
                    order.remove(hint)
                    order.insert(0, hint)
                continue
            return {"ok": True, "addr": addr, "t": time.monotonic(), "tries": tries}
        time.sleep(0.02)
    return {"ok": False, "code": "DEADLINE_EXCEEDED", "detail": f"no write acknowledged in {timeout}s ({last})"}


def label(conn: Conn, addr: str, node: str, key: str, size: int, timeout: float) -> dict:
    """One write of about `size` bytes (a node label), sent to `addr` only."""
    request = conn.pb.UpdateNodeRequest(node=node, labels_add={key: "x" * size})
    try:
        conn.stub(addr).UpdateNode(request, timeout=timeout)
    except conn.grpc.RpcError as exc:
        return _err(exc)
    return {"ok": True}


def token(conn: Conn, addr: str, role: str) -> dict:
    try:
        reply = conn.stub(addr).GetJoinToken(conn.pb.GetJoinTokenRequest(role=role), timeout=5)
    except conn.grpc.RpcError as exc:
        return _err(exc)
    return {"ok": True, "token": reply.token}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--creds", required=True)
    args = parser.parse_args()
    conn = Conn(args.creds, [])
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        op = req.get("op")
        try:
            if op == "info":
                reply = info(conn, req["addr"], req.get("consistent", False), req.get("timeout", 2.0))
            elif op == "state":
                reply = state(conn, req["addr"], req.get("timeout", 5.0))
            elif op == "first_leader":
                reply = first_leader(conn, req["addrs"], req.get("timeout", 30.0))
            elif op == "first_write":
                reply = first_write(conn, req["addrs"], req["node"], req.get("timeout", 30.0))
            elif op == "label":
                reply = label(conn, req["addr"], req["node"], req["key"], req["size"], req.get("timeout", 5.0))
            elif op == "put_service":
                reply = put_service(conn, req["addr"], req["spec"], req.get("create", False), req.get("timeout", 5.0))
            elif op == "rollout":
                reply = rollout(conn, req["addr"], req["service"], req.get("timeout", 2.0))
            elif op == "token":
                reply = token(conn, req["addr"], req["role"])
            elif op == "reset":
                conn.reset(req["addr"])
                reply = {"ok": True}
            else:
                reply = {"ok": False, "code": "INVALID_ARGUMENT", "detail": f"unknown op {op!r}"}
        except Exception as exc:  # the probe must answer every request
            reply = {"ok": False, "code": "INTERNAL", "detail": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
