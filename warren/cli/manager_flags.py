"""The flags of a manager started in the foreground (`cluster init`, `cluster restore`), and the
options they give."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from warren import logsetup
from warren.cli import autolock, units, worker
from warren.cli.flags import value_type

_ADDR = value_type(units.parse_hostport)


def add_manager_flags(p: Any) -> None:
    """The flags of a manager started in the foreground: `cluster init` and `cluster restore`."""
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="state directory (default: /var/lib/warren)")
    p.add_argument("--listen-addr", type=_ADDR, metavar="HOST:PORT", help="API address (default: 0.0.0.0:4242)")
    p.add_argument("--advertise-addr", type=_ADDR, metavar="HOST:PORT", help="API address other nodes dial")
    p.add_argument("--metrics-addr", type=_ADDR, metavar="HOST:PORT", help="serve Prometheus metrics here")
    p.add_argument(
        "--agent-metrics-addr",
        type=_ADDR,
        metavar="HOST:PORT",
        help="serve the embedded agent's metrics (its tasks' resources) here",
    )
    p.add_argument("--raft-addr", type=_ADDR, metavar="HOST:PORT", help="Raft address (default: API port + 1)")
    p.add_argument(
        "--join-addr",
        type=_ADDR,
        metavar="HOST:PORT",
        help="plaintext join listener new nodes dial (default: advertise host, API port + 2)",
    )
    p.add_argument(
        "--heartbeat-period",
        type=value_type(units.parse_duration),
        metavar="DURATION",
        help="how often workers heartbeat; a node is down after 3 missed (default: 5s; first start only)",
    )
    p.add_argument(
        "--overlay-range",
        metavar="CIDR",
        help="the overlay network, one /24 per node (default: 10.224.0.0/12, 4,096 nodes; first start only)",
    )
    p.add_argument("--vip-range", metavar="CIDR", help="service virtual IPs (default: 10.201.0.0/16; first start only)")
    p.add_argument(
        "--manager-only",
        action="store_true",
        default=None,
        help="run no agent here, so this node runs no tasks (it is drained at init)",
    )
    p.add_argument(
        "--runtime", choices=("containerd", "exec"), help="the embedded agent's task runtime (default: containerd)"
    )
    p.add_argument("--containerd-socket", metavar="PATH", help="containerd's socket, for the embedded agent")
    p.add_argument(
        "--cgroup-parent", metavar="PATH", help="cgroup the embedded agent's containers go under (default: /warren)"
    )
    worker.add_wireguard_flags(p)  # for the embedded agent
    worker.add_state_map_size_flag(p)
    worker.add_resolve_images_flag(p)
    autolock.add_unlock_key_file_flag(p)
    logsetup.add_flags(p)
    worker.add_log_rotation_flags(p)  # for the embedded agent
    p.add_argument(
        "--insecure-registry",
        action="append",
        metavar="HOST:PORT",
        help="registry the embedded agent pulls from over plain HTTP (repeat)",
    )
    p.add_argument(
        "--registry-ca",
        action="append",
        metavar="HOST:PORT=FILE",
        help="CA bundle (PEM) of a registry's HTTPS certificate, for the manager and its agent (repeat)",
    )


def manager_options(args: argparse.Namespace) -> Any:
    """The ManagerOptions that add_manager_flags's flags give."""
    from warren.manager import daemon

    options: dict[str, Any] = {"data_dir": args.data_dir or daemon.DEFAULT_DATA_DIR}
    for name in (
        "listen_addr",
        "advertise_addr",
        "metrics_addr",
        "raft_addr",
        "join_addr",
        "heartbeat_period",
        "overlay_range",
        "vip_range",
        "state_map_size",
        "resolve_images",
        "unlock_key",
    ):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    return daemon.ManagerOptions(**options)


def agent_flags(args: argparse.Namespace) -> Any:
    from warren.node.embedded import EmbeddedAgentFlags

    return EmbeddedAgentFlags(
        manager_only=args.manager_only,
        runtime=args.runtime,
        containerd_socket=args.containerd_socket,
        insecure_registries=tuple(args.insecure_registry) if args.insecure_registry else None,
        registry_cas=worker.registry_cas(args.registry_ca),
        cgroup_parent=args.cgroup_parent,
        metrics_addr=args.agent_metrics_addr,
        wireguard=args.wireguard,
        wireguard_interface=args.wireguard_interface,
        log_max_size=args.log_max_size,
        log_max_files=args.log_max_files,
    )
