"""The checks of a whole stack before anything is written (#14, ADR 49). Pure.

Each service's spec is checked as `service create` checks it; what is the stack's own is checked
here: names, `depends_on` (known services, no cycle, a health check behind service_healthy), the
objects' names and sizes, the networks its services attach to, and the keys the loader could not
map (refused unless allowed). What depends on the cluster (ports, ownership, externals) is the
command's to judge, on the state it is applied to.
"""

from __future__ import annotations

import msgspec

from warren import mounts
from warren.model import ServiceSpec
from warren.stack.spec import STACK_LABEL, DependencyCondition, Finding, StackSpec
from warren.text import escape_control, shown
from warren.validate import ValidationError, check_labels, check_name, check_object_name, check_spec, check_value_size

MAX_STACK_SERVICES = 1000
MAX_SHOWN_FINDINGS = 5
MAX_FINDING = 150  # characters of one finding in a message (a reply's message is bounded)


def unlabelled(spec: ServiceSpec) -> ServiceSpec:
    """The spec as the operator wrote it: the stack's label is the engine's to set."""
    if STACK_LABEL not in spec.labels:
        return spec
    return msgspec.structs.replace(spec, labels={k: v for k, v in spec.labels.items() if k != STACK_LABEL})


def _own_labels(labels: dict[str, str]) -> dict[str, str]:
    """The labels the operator wrote: the loader adds STACK_LABEL, which the engine sets anyway."""
    return {k: v for k, v in labels.items() if k != STACK_LABEL}


def finding_line(finding: Finding, limit: int = MAX_FINDING) -> str:
    """One finding, one line: its text is the loader's, which quotes the user's files."""
    text = escape_control(f"{finding.file}:{finding.line}: {finding.path}: {finding.message}")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unsupported_message(stack: StackSpec) -> str:
    shown_findings = [finding_line(f) for f in stack.unsupported[:MAX_SHOWN_FINDINGS]]
    more = len(stack.unsupported) - len(shown_findings)
    tail = f" (and {more} more)" if more > 0 else ""
    return (
        f"stack {stack.name} uses what Warren does not support: {'; '.join(shown_findings)}{tail}; "
        "deploy anyway with --allow-unsupported"
    )


def check_stack(stack: StackSpec, allow_unsupported: bool = False) -> None:
    """Raise ValidationError (one line) on the first thing wrong with the stack."""
    check_name("stack", stack.name)
    if stack.unsupported and not allow_unsupported:
        raise ValidationError(unsupported_message(stack))
    if not stack.services:
        raise ValidationError(f"stack {stack.name} has no services")
    if len(stack.services) > MAX_STACK_SERVICES:
        raise ValidationError(f"a stack has at most {MAX_STACK_SERVICES} services (got {len(stack.services)})")
    names = [s.spec.name for s in stack.services]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ValidationError(f"service {shown(duplicate)} is listed twice in stack {stack.name}")
    for service in stack.services:
        try:
            check_spec(unlabelled(service.spec))
        except ValidationError as exc:
            raise ValidationError(f"service {shown(service.spec.name)}: {exc}") from None
    _check_objects(stack)
    _check_networks(stack)
    _check_dependencies(stack)


def _check_objects(stack: StackSpec) -> None:
    for kind, objects in (("secret", stack.secrets), ("config", stack.configs)):
        seen: set[str] = set()
        for obj in objects:
            check_object_name(kind, obj.name)
            if obj.name in seen:
                raise ValidationError(f"{kind} {shown(obj.name)} is listed twice in stack {stack.name}")
            seen.add(obj.name)
            check_labels(f"{kind} label", _own_labels(obj.labels))
            if obj.data is not None:
                check_value_size(kind, len(obj.data))
    for volume in stack.volumes:
        try:
            mounts.check_volume_name(volume.name)
            if not volume.external:
                mounts.check_volume_options(volume.driver, volume.options)
        except mounts.MountError as exc:
            raise ValidationError(str(exc)) from None
        check_labels("volume label", _own_labels(volume.labels))


def _check_networks(stack: StackSpec) -> None:
    declared = set()
    for network in stack.networks:
        check_name("network", network.name)
        check_labels("network label", _own_labels(network.labels))
        declared.add(network.name)
    for service in stack.services:
        for attachment in service.spec.networks:
            if attachment.network not in declared:
                raise ValidationError(
                    f"service {service.spec.name} attaches to network {shown(attachment.network)}, "
                    f"which stack {stack.name} does not declare (declare it, or as external)"
                )


def _check_dependencies(stack: StackSpec) -> None:
    specs = {s.spec.name: s.spec for s in stack.services}
    graph = {s.spec.name: [d.service for d in s.depends_on] for s in stack.services}
    for service in stack.services:
        for dependency in service.depends_on:
            target = specs.get(dependency.service)
            if dependency.service == service.spec.name:
                raise ValidationError(f"service {service.spec.name} depends on itself")
            if target is None:
                if dependency.required:
                    raise ValidationError(
                        f"service {service.spec.name} depends on {shown(dependency.service)}, "
                        f"which is not a service of stack {stack.name}"
                    )
                continue
            # Without a check in its spec, the image's HEALTHCHECK (ADR 42) may be one: only
            # the agent reads the image, so the reconciler's pending reason says when there is none.
            if dependency.condition == DependencyCondition.HEALTHY and target.container.no_healthcheck:
                raise ValidationError(
                    f"service {service.spec.name} depends on {dependency.service} being healthy, "
                    f"but {dependency.service} disables its health check (no_healthcheck)"
                )
    cycle = _cycle(graph)
    if cycle:
        raise ValidationError(f"depends_on has a cycle: {' → '.join(cycle)}")


def _cycle(graph: dict[str, list[str]]) -> list[str]:
    """A dependency cycle (its names, the first repeated at the end), or []."""
    done: set[str] = set()
    for start in sorted(graph):
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            name, i = stack.pop()
            if i == 0:
                if name in on_path:
                    return [*path[path.index(name) :], name]
                if name in done:
                    continue
                path.append(name)
                on_path.add(name)
            children = [c for c in graph.get(name, []) if c in graph]
            if i < len(children):
                stack.append((name, i + 1))
                stack.append((children[i], 0))
            else:
                path.pop()
                on_path.discard(name)
                done.add(name)
    return []
