"""A task's own resolv.conf for --dns, --dns-search and --dns-option (ADR 42), for both runtimes:
the node's file (or its embedded DNS's, ADR 17) with those laid over it, as Docker writes it."""

from __future__ import annotations

from pathlib import Path

from warren import datadir
from warren.agent.runtime import ContainerSpec, RuntimeFailure
from warren.model import ContainerOptions


def resolv_conf_text(base: str, options: ContainerOptions) -> str:
    """The task's resolv.conf: `base` (the node's, or its embedded DNS's) with --dns replacing its
    nameservers, --dns-search its search domains and --dns-option its options, as Docker does."""
    kept: dict[str, list[str]] = {"nameserver": [], "search": [], "options": []}
    for line in base.splitlines():
        words = line.split()
        if words and words[0] in kept:
            key = words[0]
            kept[key] += words[1:2] if key == "nameserver" else words[1:]
        elif words and words[0] == "domain" and len(words) > 1:
            kept["search"] = words[1:2]  # the last of domain and search wins, as the resolver reads it
    servers = list(options.dns) or kept["nameserver"]
    search = [d for d in options.dns_search if d != "."] if options.dns_search else kept["search"]
    opts = list(options.dns_options) or kept["options"]
    lines = [f"nameserver {s}" for s in servers]
    if search:
        lines.append("search " + " ".join(search))
    if opts:
        lines.append("options " + " ".join(opts))
    return "\n".join(lines) + "\n"


def task_resolv_conf(spec: ContainerSpec, directory: Path) -> str:
    """The resolv.conf the task gets: the node's (or its embedded DNS's) as it is, or a copy of
    its own with --dns, --dns-search or --dns-option applied ("" = the host's, as before)."""
    options = spec.options
    if not (options.dns or options.dns_search or options.dns_options):
        return spec.resolv_conf
    base_path = spec.resolv_conf or "/etc/resolv.conf"
    try:
        base = Path(base_path).read_text(errors="replace")
    except OSError:
        base = ""
    path = directory / f"{spec.task_id}.resolv.conf"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # 0644: the task's own user reads it.
        datadir.write_atomic(path, resolv_conf_text(base, options), mode=0o644, durable=False)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write the resolv.conf of {spec.task_id}: {exc}") from exc
    return str(path)


def remove_resolv_conf(task_id: str, directory: Path) -> None:
    with_suffix = directory / f"{task_id}.resolv.conf"
    with_suffix.unlink(missing_ok=True)
