"""How a worker agent process is started: its options (`AgentOptions`), and the command line
that gives them (`parse_options`) and that `options_argv` writes back, with which `worker start`
and `cluster join` re-execute into the node's worker process (warren.node.worker)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from warren import logsetup, tls
from warren.agent import settings as agent_settings
from warren.agent.logrotation import DEFAULT_MAX_FILES, DEFAULT_MAX_SIZE


@dataclass(frozen=True)
class AgentOptions:
    data_dir: Path  # holds certs/ (ca.pem, cert.pem, key.pem) and node.json
    managers: list[str]  # gRPC addresses to try; more are learnt from the managers
    runtime: str = "containerd"  # "containerd" | "exec"
    containerd_socket: str = "/run/containerd/containerd.sock"
    hostname: str | None = None  # default os.uname().nodename
    labels: dict[str, str] = field(default_factory=dict)
    advertise_addr: str = ""
    insecure_registries: tuple[str, ...] = ()
    registry_cas: tuple[str, ...] = ()  # HOST=FILE: a registry's private CA (ADR 43)
    metrics_addr: str | None = None  # HOST:PORT for Prometheus /metrics; None = none
    cgroup_parent: str = "/warren"  # containerd runtime: the containers' cgroups go under it
    log_max_size: int = DEFAULT_MAX_SIZE  # task log rotation (ADR 62)
    log_max_files: int = DEFAULT_MAX_FILES
    # How certs/ is read and written: plain, but a manager's embedded agent seals its key by the
    # manager's KEK under autolock (ADR 44)
    credentials: tls.CredentialFiles = tls.PLAIN_FILES


def options_argv(options: AgentOptions) -> list[str]:
    """The `python -m warren.agent.daemon` arguments that give back `options` (see its main)."""
    argv = ["--data-dir", str(options.data_dir), "--runtime", options.runtime]
    argv += ["--containerd-socket", options.containerd_socket]
    for addr in options.managers:
        argv += ["--manager", addr]
    if options.hostname:
        argv += ["--hostname", options.hostname]
    for key, value in options.labels.items():
        argv += ["--label", f"{key}={value}"]
    if options.advertise_addr:
        argv += ["--advertise-addr", options.advertise_addr]
    for registry in options.insecure_registries:
        argv += ["--insecure-registry", registry]
    for ca in options.registry_cas:
        argv += ["--registry-ca", ca]
    if options.metrics_addr:
        argv += ["--metrics-addr", options.metrics_addr]
    argv += ["--log-max-size", str(options.log_max_size), "--log-max-files", str(options.log_max_files)]
    argv += ["--cgroup-parent", options.cgroup_parent]
    return argv


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected K=V, got {text!r}")
    return key, value


def _cgroup_parent(text: str) -> str:
    from warren.agent.settings import SettingsError, check_cgroup_parent

    try:
        check_cgroup_parent(text)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_options(argv: list[str] | None, prog: str = "python -m warren.agent.daemon") -> AgentOptions:
    """The options `options_argv` wrote."""
    p = argparse.ArgumentParser(prog=prog, description="Run a Warren worker agent.")
    p.add_argument("--data-dir", type=Path, required=True, help="holds certs/ and node.json")
    p.add_argument("--manager", action="append", default=[], metavar="ADDR", help="manager gRPC address")
    p.add_argument("--runtime", choices=("containerd", "exec"), default="containerd")
    p.add_argument("--containerd-socket", default="/run/containerd/containerd.sock")
    p.add_argument("--hostname")
    p.add_argument("--label", type=_label, action="append", default=[], metavar="K=V")
    p.add_argument("--advertise-addr", default="")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]")
    p.add_argument("--registry-ca", action="append", default=[], metavar="HOST[:PORT]=FILE")
    p.add_argument("--metrics-addr", metavar="HOST:PORT")
    p.add_argument(
        "--cgroup-parent", type=_cgroup_parent, default="/warren", metavar="PATH", help="containerd: the cgroup parent"
    )
    logsetup.add_flags(p)
    p.add_argument("--log-max-size", type=int, default=DEFAULT_MAX_SIZE, metavar="BYTES", help="task log rotation")
    p.add_argument("--log-max-files", type=int, default=DEFAULT_MAX_FILES, metavar="N", help="task log rotation")
    args = p.parse_args(argv)
    try:
        agent_settings.check_log_rotation(args.log_max_size, args.log_max_files)
    except agent_settings.SettingsError as exc:
        p.error(str(exc))
    logsetup.export(args.log_format, args.log_level)  # the environment: kept across the re-exec
    return AgentOptions(
        data_dir=args.data_dir,
        managers=args.manager,
        runtime=args.runtime,
        containerd_socket=args.containerd_socket,
        hostname=args.hostname,
        labels=dict(args.label),
        advertise_addr=args.advertise_addr,
        insecure_registries=tuple(args.insecure_registry),
        registry_cas=tuple(args.registry_ca),
        metrics_addr=args.metrics_addr,
        cgroup_parent=args.cgroup_parent,
        log_max_size=args.log_max_size,
        log_max_files=args.log_max_files,
    )
