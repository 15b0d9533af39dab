"""`warren service inspect`: a service, its spec and its rollout settings, as a table of fields
or as JSON; and the brief forms `service ls` shows of a port and of a rollout."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from warren.cli import mounts, port_nodes, units
from warren.cli.container_flags import container_summary
from warren.cli.service_spec import HEALTH_SHELL


def cmd_inspect(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        s = client.call("GetService", pb.GetServiceRequest(service=args.name))
        placed = _host_port_placement(client, s) if args.format != "json" else None
    if args.format == "json":
        output.print_json(s)
        return 0
    spec = s.spec
    mode = f"global ({s.desired_tasks} tasks)" if spec.mode == "global" else f"replicated ({spec.replicas} replicas)"
    fields: list[tuple[str, Any]] = [
        ("ID", s.id),
        ("Name", spec.name),
        ("Version", s.version),
        ("Created", output.timestamp(s.created_at)),
        ("Updated", output.timestamp(s.updated_at)),
        ("Mode", mode),
        ("Tasks", f"{s.running_tasks} running of {s.desired_tasks} desired"),
        ("Virtual IP", s.vip or "-"),
        ("Image", spec.image),
        ("Entrypoint", shlex.join(spec.command) or "(the image's)"),
        ("Args", shlex.join(spec.args) or "-"),
        ("Env", [f"{k}={v}" for k, v in sorted(spec.env.items())]),
        ("Labels", [f"{k}={v}" for k, v in sorted(spec.labels.items())]),
        ("Constraints", list(spec.constraints)),
        ("Reservations", _resources(spec.reservations)),
        ("Limits", _resources(spec.limits)),
        (
            "Ports",
            [port_nodes.describe(p, *placed) if placed and p.mode == "host" else port_text(p) for p in spec.ports],
        ),
        ("Mounts", [mounts.describe(m) for m in spec.mounts]),
        ("Secrets", [_file_ref(r) for r in spec.secrets]),
        ("Configs", [_file_ref(r) for r in spec.configs]),
        ("Networks", [",".join([a.network, *(f"alias={x}" for x in a.aliases)]) for a in spec.networks] or "default"),
    ]
    if spec.HasField("restart"):
        r = spec.restart
        fields.append(
            (
                "Restart",
                f"{r.condition or 'any'}, delay {units.format_duration(r.delay)}, "
                f"max attempts {r.max_attempts or 'unlimited'}, window {units.format_duration(r.window)}",
            )
        )
    if spec.HasField("health"):
        h = spec.health
        shell = tuple(h.command[:2]) == HEALTH_SHELL and len(h.command) == 3
        probe = (h.command[2] if shell else shlex.join(h.command)) or h.target
        fields.append(
            (
                "Health check",
                f"{h.kind} {probe}, every {units.format_duration(h.interval)}, "
                f"timeout {units.format_duration(h.timeout)}, {h.retries} retries, "
                f"start period {units.format_duration(h.start_period)}",
            )
        )
    if spec.HasField("container"):
        fields.append(("Container", container_summary(spec.container)))
    if s.HasField("update_status"):
        st = s.update_status
        versions = f"{st.from_version} -> {st.to_version}" if st.from_version != st.to_version else st.to_version
        fields.append(
            (
                "Rollout",
                f"{st.state} (version {versions}, started {output.ago(st.started_at)})"
                + (f": {st.message}" if st.message else ""),
            )
        )
    fields.append(("Deploy strategy", _deploy_settings(spec.deploy)))
    fields.append(("Update settings", _rollout_settings(spec.update)))
    fields.append(("Rollback settings", _rollout_settings(spec.rollback)))
    if spec.HasField("stop_grace_period"):
        fields.append(("Stop grace", units.format_duration(spec.stop_grace_period)))
    if spec.stop_signal:
        fields.append(("Stop signal", spec.stop_signal))
    if spec.stop_drain:
        fields.append(("Stop drain", units.format_duration(spec.stop_drain)))
    output.print_fields(fields)
    return 0


def rollout_brief(s: Any) -> str:
    """The ls column: the rollout's state, and its target version while it is not done."""
    if not s.HasField("update_status"):
        return ""
    st = s.update_status
    return st.state if st.state in ("completed", "rollback_completed") else f"{st.state} (v{st.to_version})"


def _rollout_settings(c: Any) -> str:
    parallelism = c.parallelism if c.HasField("parallelism") else 1
    return (
        f"{'all' if parallelism == 0 else parallelism} at a time, {c.order or 'start-first'}, "
        f"monitor {units.format_duration(c.monitor if c.HasField('monitor') else 5.0)}, "
        f"delay {units.format_duration(c.delay)}, on failure {c.failure_action or 'pause'} "
        f"(tolerating {c.max_failure_ratio:g} of the replicas)"
    )


def _deploy_settings(d: Any) -> str:
    """ "canary: 1 task(s), 20% of new connections, auto-promote after 30s" (ADR 35)."""
    strategy = d.strategy or "rolling"
    if strategy == "canary":
        share = f"{d.canary_weight}% of new connections" if d.HasField("canary_weight") else "their share of traffic"
        promote = (
            f"auto-promote after {units.format_duration(d.canary_auto_promote)}"
            if d.canary_auto_promote
            else ("promoted by `warren service promote`")
        )
        return f"canary: {d.canary_replicas} task(s), {share}, {promote}"
    if strategy == "blue-green":
        return f"blue-green: the old set kept {units.format_duration(d.blue_green_keep)} after the switch"
    return strategy


def _file_ref(r: Any) -> str:
    return f"{r.source} at {r.target} ({r.uid}:{r.gid}, mode {r.mode:04o})"


def _host_port_placement(client: Any, service: Any) -> tuple[list[Any], dict[str, str]] | None:
    """The service's tasks and the nodes' names, when it publishes host-mode ports (ADR 46)."""
    from warren.api.v1 import control_pb2 as pb

    if not port_nodes.host_ports(service.spec.ports):
        return None
    tasks = client.list_all("ListTasks", pb.ListTasksRequest(service=service.id), "tasks")
    nodes = {n.id: n.hostname for n in client.list_all("ListNodes", pb.ListNodesRequest(), "nodes")}
    return list(tasks), nodes


def port_text(p: Any) -> str:
    return f"*:{p.published}->{p.target}/{p.protocol or 'tcp'}"


def _resources(r: Any) -> str:
    parts = []
    if r.nano_cpus:
        parts.append(f"{units.format_cpus(r.nano_cpus)} CPU")
    if r.memory_bytes:
        parts.append(units.format_size(r.memory_bytes))
    return ", ".join(parts)
