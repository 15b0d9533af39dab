"""`warren cluster join` and `warren worker start`: give this machine a node identity, then run
its agent in the foreground.

A data directory that already holds an identity is never joined again: `cluster join` on it
resumes, exactly like `worker start`. The agent settings chosen at join (runtime, socket,
labels...) are saved there too, so a bare `worker start --data-dir DIR` runs the agent the same
way; a flag given again replaces the saved value.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from warren import logsetup
from warren.cli import autolock, units
from warren.cli.errors import CliError, Exit
from warren.cli.flags import value_type
from warren.text import has_control, shown

DEFAULT_DATA_DIR = Path("/var/lib/warren-worker")

# JoinError.kind -> exit code
_JOIN_EXIT = {
    "token": Exit.USAGE,
    "invalid": Exit.USAGE,
    "denied": Exit.CREDENTIALS,
    "mismatch": Exit.CREDENTIALS,
    "unreachable": Exit.UNAVAILABLE,
    "busy": Exit.UNAVAILABLE,
    "refused": Exit.CONFLICT,
    "exists": Exit.CONFLICT,
}


def register(groups: Any) -> None:
    group = groups.add_parser("worker", help="run this machine's worker agent")
    group.set_defaults(group_parser=group)
    cmds = group.add_subparsers(metavar="COMMAND", title="commands")
    p = cmds.add_parser(
        "start",
        help="run the agent with the identity stored by `cluster join` (foreground)",
        description="Resume a joined node: run its agent with the identity and settings in --data-dir. "
        "Flags given here replace the settings saved at join.",
    )
    add_agent_flags(p)
    p.add_argument(
        "--manager-addr",
        dest="manager_addrs",
        action="append",
        type=value_type(units.parse_hostport),
        metavar="HOST:PORT",
        help="dial this manager (repeat for several) instead of the ones this node knows, and remember it: "
        "for a cluster restored on a new address (ADR 56)",
    )
    p.set_defaults(func=cmd_start)

    p = cmds.add_parser(
        "teardown",
        help="remove this node's tasks and overlay networking (after its agent stopped, for a node leaving)",
        description="Remove what the agent in --data-dir leaves running across its restarts, even after a "
        "kill -9: its tasks' containers or processes (stopped gracefully, then removed with their cgroups and "
        "mounts), its tasks' network namespaces and veths, the WireGuard interface (its wireguard-go exits), "
        "the task bridge and the load balancer's nftables table. Pieces that belong to another node's data "
        "directory stay. Refused while that agent runs. A node removed with `warren node rm` does this by "
        "itself.",
    )
    p.add_argument(
        "--data-dir", type=Path, metavar="DIR", help=f"the node's data directory (default: {DEFAULT_DATA_DIR})"
    )
    p.set_defaults(func=cmd_teardown)


def add_join_parser(cmds: Any) -> None:
    """`cluster join`, registered by warren.cli.cluster."""
    p = cmds.add_parser(
        "join",
        help="join this machine to a cluster as a worker and run its agent (foreground)",
        description="Get a node certificate from a manager with a join token, store it in --data-dir, then run "
        "the agent. On a directory that already holds an identity, resume instead: a node never joins twice.",
    )
    p.add_argument("--token", required=True, help="join token from `warren cluster join-token worker` (or `manager`)")
    p.add_argument(
        "manager_addr",
        type=value_type(units.parse_hostport),
        metavar="MANAGER:JOINPORT",
        help="a manager's join address, as printed by `cluster join-token` (API port + 2 by default)",
    )
    add_agent_flags(p)
    addr = value_type(units.parse_hostport)
    managers = p.add_argument_group("with a manager token", "this node becomes a manager (ADR 15)")
    managers.add_argument("--listen-addr", type=addr, metavar="HOST:PORT", help="API address (default: 0.0.0.0:4242)")
    managers.add_argument("--raft-addr", type=addr, metavar="HOST:PORT", help="Raft address (default: API port + 1)")
    managers.add_argument(
        "--join-addr", type=addr, metavar="HOST:PORT", help="join listener address (default: API port + 2)"
    )
    managers.add_argument(
        "--manager-only", action="store_true", default=None, help="run no agent here: this node runs no tasks"
    )
    add_state_map_size_flag(managers)
    add_resolve_images_flag(managers)
    autolock.add_unlock_key_file_flag(managers)  # a manager that resumes while locked (ADR 44)
    p.set_defaults(func=cmd_join)


def add_resolve_images_flag(p: Any) -> None:
    """A manager that never asks a registry for digests (ADR 34): for clusters with no registry."""
    p.add_argument(
        "--no-resolve-images",
        dest="resolve_images",
        action="store_false",
        default=None,
        help="never pin service images to registry digests here (air-gapped clusters, the exec runtime)",
    )


def add_state_map_size_flag(p: Any) -> None:
    """A manager's --state-map-size, on `cluster init` and on `cluster join` (ADR 22)."""
    p.add_argument(
        "--state-map-size",
        type=value_type(parse_state_map_size),
        metavar="SIZE",
        help="the most the manager's state store (Raft log and cluster state) may take, e.g. 16G; writes are "
        "refused once less than 5%% of it (at least 8M) is left. Saved; restart with a larger one when it "
        "fills up (default: 8G)",
    )


def parse_state_map_size(text: str) -> int:
    from warren.manager.settings import check_map_size  # stdlib only

    return check_map_size(units.parse_size(text))


def add_wireguard_flags(p: argparse.ArgumentParser) -> None:
    """The overlay flags of an agent, also `cluster init`'s for its embedded agent (ADRs 17, 19)."""
    from warren.agent.settings import WIREGUARD_MODES  # stdlib only

    p.add_argument(
        "--wireguard",
        choices=WIREGUARD_MODES,
        help="the overlay mesh: auto (the default) uses the kernel's WireGuard where it exists, else "
        "wireguard-go; kernel or userspace force one; off keeps tasks on the host's network",
    )
    p.add_argument("--wireguard-interface", metavar="NAME", help="the mesh's interface (default: warren0)")


def add_agent_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, metavar="DIR", help=f"node state directory (default: {DEFAULT_DATA_DIR})")
    p.add_argument("--runtime", choices=("containerd", "exec"), help="how tasks run (default: containerd)")
    p.add_argument("--containerd-socket", metavar="PATH", help="containerd's socket (default: its standard path)")
    p.add_argument(
        "--label",
        type=value_type(lambda s: units.parse_key_value(s, "label")),
        action="append",
        metavar="K=V",
        help="node label, applied when the node first registers (repeat)",
    )
    p.add_argument("--advertise-addr", metavar="ADDR", help="the address other nodes reach this node at")
    p.add_argument(
        "--insecure-registry",
        action="append",
        metavar="HOST:PORT",
        help="registry to pull from over plain HTTP (repeat)",
    )
    p.add_argument(
        "--registry-ca",
        action="append",
        metavar="HOST:PORT=FILE",
        help="CA bundle (PEM) that a registry's HTTPS certificate chains to (repeat)",
    )
    p.add_argument(
        "--metrics-addr", type=value_type(units.parse_hostport), metavar="HOST:PORT", help="serve agent metrics here"
    )
    add_wireguard_flags(p)
    p.add_argument(
        "--wireguard-port",
        type=value_type(units.parse_port),
        metavar="PORT",
        help="the mesh's UDP port (default: 51820)",
    )
    p.add_argument(
        "--manager-listen-addr",
        type=value_type(units.parse_hostport),
        metavar="HOST:PORT",
        help="API address of the manager this node runs once promoted (default: 0.0.0.0:4242)",
    )
    p.add_argument(
        "--manager-advertise-addr",
        type=value_type(units.parse_hostport),
        metavar="HOST:PORT",
        help="API address other nodes dial once this node is promoted to manager",
    )
    p.add_argument("--cgroup-parent", metavar="PATH", help="cgroup for the containers (containerd; default: /warren)")
    logsetup.add_flags(p)
    add_log_rotation_flags(p)


def add_log_rotation_flags(p: Any) -> None:
    """Task log rotation (ADR 62), for an agent: `worker start`, `cluster join`, `cluster init`."""
    p.add_argument(
        "--log-max-size",
        type=value_type(units.parse_size),
        metavar="SIZE",
        help="rotate a task's log once it is this big, at least 4K (default: 10M; saved)",
    )
    p.add_argument(
        "--log-max-files",
        type=value_type(units.parse_count),
        metavar="N",
        help="a task's log files kept, the live one included, 1 to 100 (default: 3; saved)",
    )


def registry_cas(given: list[str] | None) -> tuple[str, ...] | None:
    """`--registry-ca HOST=FILE` flags, checked now (the file must hold a PEM CA), with absolute
    paths since the daemons do not run from here; None if none was given (keep the saved ones)."""
    if not given:
        return None
    from warren.runtime.containerd.reference import InvalidReference, parse_registry_ca
    from warren.runtime.containerd.registry import tls_context

    out = []
    for text in given:
        try:
            host, path = parse_registry_ca(text)
            tls_context(path)
        except (InvalidReference, ValueError) as exc:
            raise CliError(str(exc), Exit.USAGE) from None
        out.append(f"{host}={path.resolve()}")
    return tuple(out)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The agent settings given on this command line (None = not given)."""
    labels = dict(args.label) if args.label else None
    if labels is not None:
        from warren.validate import ValidationError, check_labels

        try:
            check_labels("label", labels)
        except ValidationError as exc:
            raise CliError(str(exc), Exit.USAGE) from None
    registries = args.insecure_registry
    for registry in registries or ():
        if not registry or any(c.isspace() for c in registry) or "/" in registry or has_control(registry):
            raise CliError(f"--insecure-registry must be HOST or HOST:PORT (got {shown(registry)})", Exit.USAGE)
    return {
        "runtime": args.runtime,
        "containerd_socket": args.containerd_socket,
        "labels": labels,
        "advertise_addr": args.advertise_addr,
        "insecure_registries": tuple(registries) if registries else None,
        "registry_cas": registry_cas(args.registry_ca),
        "metrics_addr": args.metrics_addr,
        "wireguard": args.wireguard,
        "wireguard_interface": args.wireguard_interface,
        "wireguard_port": args.wireguard_port,
        "manager_listen_addr": args.manager_listen_addr,
        "manager_advertise_addr": args.manager_advertise_addr,
        "cgroup_parent": args.cgroup_parent,
        "log_max_size": args.log_max_size,
        "log_max_files": args.log_max_files,
    }


def _quiet_grpc() -> None:
    if not os.environ.get("WARREN_DEBUG"):
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # we report connection failures ourselves


def cmd_join(args: argparse.Namespace) -> int:
    _quiet_grpc()
    from warren import pki
    from warren.agent import join as joining
    from warren.agent import settings as agent_settings
    from warren.host import host_facts

    data_dir: Path = args.data_dir or DEFAULT_DATA_DIR
    if (data_dir / "manager.json").exists():
        print(f"{data_dir} holds a manager; resuming it", flush=True)
        return _run_manager(args, data_dir, None)
    given = _given(args)
    existing = _stored(data_dir)
    if existing is not None and existing.role == pki.ROLE_MANAGER:
        print(f"joined as manager {existing.node_id} before; asking the cluster to add it again", flush=True)
        return _run_manager(args, data_dir, existing.managers)
    if existing is not None:
        try:
            token = pki.parse_join_token(args.token)
        except pki.TokenError as exc:
            raise CliError(str(exc), Exit.USAGE) from None
        if token.fingerprint != existing.ca_fingerprint:
            raise CliError(
                f"{data_dir} already holds node {existing.node_id} of another cluster (its CA does not match the "
                "token); use another --data-dir",
                Exit.CONFLICT,
            )
        print(f"already joined as node {existing.node_id}; resuming", flush=True)
        return _run_agent(data_dir, existing.managers, given)
    settings = _settings(data_dir, given)  # checked before joining, saved only once joined
    _check_overlay_free(data_dir, settings)
    try:
        result = joining.join(args.token, args.manager_addr, data_dir, host_facts().hostname)
    except joining.JoinError as exc:
        raise CliError(exc.message, _JOIN_EXIT.get(exc.kind, Exit.FAILURE)) from None
    print(
        f"joined the cluster as node {result.node_id} ({result.role}); managers: {', '.join(result.managers)}",
        flush=True,
    )
    if result.role == pki.ROLE_MANAGER:
        return _run_manager(args, data_dir, result.managers)
    agent_settings.save(data_dir, settings)
    return _run_agent(data_dir, result.managers, {})


def _run_manager(args: argparse.Namespace, data_dir: Path, managers: list[str] | None) -> int:
    """Run this node as a manager: joining Raft when `managers` is given, else resuming."""
    from warren.manager import daemon
    from warren.node import manager as manager_node
    from warren.node.embedded import EmbeddedAgentFlags

    options: dict[str, Any] = {"data_dir": data_dir, "join_managers": tuple(managers) if managers else None}
    names = (
        "listen_addr",
        "advertise_addr",
        "raft_addr",
        "join_addr",
        "metrics_addr",
        "state_map_size",
        "resolve_images",
        "unlock_key",
    )
    for name in names:
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    flags = EmbeddedAgentFlags(
        manager_only=getattr(args, "manager_only", None),
        runtime=args.runtime,
        containerd_socket=args.containerd_socket,
        insecure_registries=tuple(args.insecure_registry) if args.insecure_registry else None,
        registry_cas=registry_cas(getattr(args, "registry_ca", None)),
        # as `cluster init` passes them: a manager that joins must not drop them (--wireguard off)
        cgroup_parent=getattr(args, "cgroup_parent", None),
        wireguard=getattr(args, "wireguard", None),
        wireguard_interface=getattr(args, "wireguard_interface", None),
        log_max_size=getattr(args, "log_max_size", None),
        log_max_files=getattr(args, "log_max_files", None),
    )
    return manager_node.run(daemon.ManagerOptions(**options), flags)


def cmd_start(args: argparse.Namespace) -> int:
    _quiet_grpc()
    data_dir: Path = args.data_dir or DEFAULT_DATA_DIR
    given = _given(args)
    existing = _stored(data_dir)
    if existing is None:
        raise CliError(
            f"{data_dir} holds no node identity: join a cluster first with "
            f"`warren cluster join --token TOKEN MANAGER:JOINPORT --data-dir {data_dir}`",
            Exit.CREDENTIALS,
        )
    print(f"resuming node {existing.node_id}", flush=True)
    if args.manager_addrs:
        return _run_agent(data_dir, list(dict.fromkeys(args.manager_addrs)), given, save_managers=True)
    return _run_agent(data_dir, existing.managers, given)


def cmd_teardown(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir or DEFAULT_DATA_DIR
    if not data_dir.is_dir():
        raise CliError(f"{data_dir} is not a node's data directory", Exit.NOT_FOUND)
    from warren.agent.daemon import AgentStartupError, lock_data_dir

    try:
        lock = lock_data_dir(data_dir)  # held throughout: no agent starts meanwhile
    except AgentStartupError:
        raise CliError(f"the agent of {data_dir} is running: stop it first", Exit.CONFLICT) from None
    from warren.agent.teardown import TeardownError, teardown_node

    try:
        removed = teardown_node(data_dir)
    except TeardownError as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:  # netlink or nft refused: say what, keep the rest for a retry
        raise CliError(f"removing the overlay networking failed: {exc}") from None
    finally:
        os.close(lock)
    print("\n".join(removed) or "nothing to remove")
    return 0


def _stored(data_dir: Path) -> Any:
    from warren import pki
    from warren.agent import join as joining

    try:
        return joining.stored_identity(data_dir)
    except pki.PkiError as exc:
        raise CliError(f"{data_dir} holds unusable credentials: {exc}", Exit.CREDENTIALS) from None
    except OSError as exc:
        raise CliError(f"cannot read {data_dir}: {exc.strerror or exc}", Exit.CREDENTIALS) from None


def _settings(data_dir: Path, given: dict[str, Any]) -> Any:
    from warren.agent import settings as agent_settings

    try:
        return agent_settings.resolve(data_dir, **given)
    except agent_settings.SettingsError as exc:
        raise CliError(str(exc), Exit.USAGE) from None


def _check_overlay_free(data_dir: Path, settings: Any) -> None:
    """Refuse, before anything is written, a node whose network namespace already holds another
    node's overlay (ADR 23). The agent checks again, under a lock, as it starts."""
    if settings.wireguard == "off":
        return
    from warren.network.owner import OverlayInUse, check

    try:
        check(data_dir, settings.wireguard_interface)
    except OverlayInUse as exc:
        raise CliError(str(exc), Exit.CONFLICT) from None
    except Exception:  # netlink or nft unusable here: the agent reports it as it starts
        return


def _run_agent(data_dir: Path, managers: list[str], given: dict[str, Any], save_managers: bool = False) -> int:
    """Save the settings (flags given now replace saved ones; `save_managers`: the manager list
    too) and run the agent until stopped."""
    from warren.agent import settings as agent_settings

    settings = _settings(data_dir, given)
    from warren.agent import daemon as agent_daemon

    if agent_daemon.agent_running(data_dir):  # before saving: its settings are not ours to change
        raise CliError(f"an agent is already running on {data_dir}", Exit.CONFLICT)
    _check_overlay_free(data_dir, settings)
    try:
        agent_settings.save(data_dir, settings)
        if save_managers:
            agent_daemon.save_managers(data_dir, managers)
    except OSError as exc:
        raise CliError(f"cannot save the agent settings in {data_dir}: {exc.strerror or exc}") from None
    from warren.network.keys import WireGuardError, ensure_node_keys

    try:
        ensure_node_keys(data_dir)  # here, where `cryptography` is loaded anyway (ADR 17)
    except (OSError, WireGuardError) as exc:
        raise CliError(f"cannot make this node's WireGuard keys in {data_dir}: {exc}") from None
    from warren.node import worker as worker_node

    print(f"running the agent ({settings.runtime} runtime, state in {data_dir})", flush=True)
    sys.stdout.flush()
    return worker_node.run(worker_node.agent_options(data_dir, managers, settings))
