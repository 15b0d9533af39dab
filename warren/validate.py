"""Checks of operator input against the model, with messages a person can act on. Pure."""

from __future__ import annotations

import re

from warren.constraints import ConstraintError, parse_constraint
from warren.model import ServiceMode, ServiceSpec
from warren.state import ClusterState

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
MAX_REPLICAS = 100_000
HEALTH_KINDS = ("cmd", "http", "tcp")


class ValidationError(ValueError):
    """Invalid operator input; str() is the message to show."""


def check_name(kind: str, name: str) -> None:
    if not NAME_RE.match(name):
        raise ValidationError(
            f"invalid {kind} name {name!r}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )


def check_spec(spec: ServiceSpec) -> None:
    check_name("service", spec.name)
    if not spec.image.strip():
        raise ValidationError("an image is required (--image)")
    if spec.mode == ServiceMode.REPLICATED and not 0 <= spec.replicas <= MAX_REPLICAS:
        raise ValidationError(f"replicas must be between 0 and {MAX_REPLICAS}")
    for text in spec.constraints:
        try:
            parse_constraint(text)
        except ConstraintError as exc:
            raise ValidationError(str(exc)) from None
    for label, res in (("reservation", spec.reservations), ("limit", spec.limits)):
        if res.nano_cpus < 0 or res.memory_bytes < 0:
            raise ValidationError(f"a resource {label} cannot be negative")
    if spec.limits.memory_bytes and spec.reservations.memory_bytes > spec.limits.memory_bytes:
        raise ValidationError("the memory reservation exceeds the memory limit")
    if spec.limits.nano_cpus and spec.reservations.nano_cpus > spec.limits.nano_cpus:
        raise ValidationError("the CPU reservation exceeds the CPU limit")
    restart = spec.restart
    if restart.delay < 0 or restart.window < 0 or restart.max_attempts < 0:
        raise ValidationError("restart delay, window and max attempts cannot be negative")
    if spec.stop_grace_period < 0:
        raise ValidationError("the stop grace period cannot be negative")
    if spec.health is not None:
        h = spec.health
        if h.kind not in HEALTH_KINDS:
            raise ValidationError(f"health check kind must be one of {', '.join(HEALTH_KINDS)}")
        if h.kind == "cmd" and not h.command:
            raise ValidationError("a command health check needs a command")
        if h.kind in ("http", "tcp") and not h.target:
            raise ValidationError(f"an {h.kind} health check needs a target")
        if h.interval <= 0 or h.timeout <= 0 or h.retries < 1 or h.start_period < 0:
            raise ValidationError("health interval and timeout must be positive, retries at least 1")
    seen: set[tuple[int, str]] = set()
    for port in spec.ports:
        if not 1 <= port.target <= 65535 or not 0 <= port.published <= 65535:
            raise ValidationError(f"port {port.published}:{port.target} is out of range (1-65535)")
        if port.protocol not in ("tcp", "udp"):
            raise ValidationError(f"port protocol must be tcp or udp (got {port.protocol!r})")
        if port.mode not in ("ingress", "host"):
            raise ValidationError(f"port mode must be ingress or host (got {port.mode!r})")
        if port.published:
            key = (port.published, port.protocol)
            if key in seen:
                raise ValidationError(f"published port {port.published}/{port.protocol} is listed twice")
            seen.add(key)
    for key in spec.env:
        if not key or "=" in key:
            raise ValidationError(f"invalid environment variable name {key!r}")


def check_ports_free(state: ClusterState, spec: ServiceSpec, service_id: str = "") -> None:
    """Published ports are cluster-wide (routing mesh): two services cannot publish the same one."""
    wanted = {(p.published, p.protocol) for p in spec.ports if p.published}
    for other in state.services.values():
        if other.id == service_id:
            continue
        for port in other.spec.ports:
            if (port.published, port.protocol) in wanted:
                raise ValidationError(
                    f"port {port.published}/{port.protocol} is already published by service {other.spec.name}"
                )
