"""Stacks (#14, ADR 49) between protobuf and the model: the `StackSpec` a client sends, the
dependencies a service carries and the plan a deploy answers with. Pure, as `convert` (whose
ServiceSpec conversion it reuses); a module of its own, as convert.py is past its size."""

from __future__ import annotations

from warren import model
from warren.api import names, specconvert
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as pb
from warren.stack.plan import StackPlan
from warren.stack.spec import (
    Dependency,
    DependencyCondition,
    Finding,
    StackNetwork,
    StackObject,
    StackService,
    StackSpec,
    StackVolume,
)
from warren.text import shown


def dependency_from_pb(msg: pb.ServiceDependency) -> Dependency:
    try:
        condition = DependencyCondition(msg.condition) if msg.condition else DependencyCondition.STARTED
    except ValueError:
        allowed = ", ".join(c.value for c in DependencyCondition)
        raise names.ConversionError(
            f"depends_on condition must be one of {allowed} (got {shown(msg.condition)})"
        ) from None
    return Dependency(msg.service, condition, msg.required)


def dependency_to_pb(dependency: Dependency | model.ServiceDependency) -> pb.ServiceDependency:
    condition = dependency.condition
    text = condition.value if isinstance(condition, DependencyCondition) else condition
    return pb.ServiceDependency(service=dependency.service, condition=text, required=dependency.required)


def _object_from_pb(msg: cpb.StackObject) -> StackObject:
    return StackObject(msg.name, None if msg.external else bytes(msg.data), dict(msg.labels))


def _object_to_pb(obj: StackObject) -> cpb.StackObject:
    return cpb.StackObject(name=obj.name, data=obj.data or b"", labels=obj.labels, external=obj.external)


def stack_from_pb(msg: cpb.StackSpec) -> StackSpec:
    """Raises names.ConversionError on a value the model has no name for."""
    return StackSpec(
        name=msg.name,
        services=tuple(
            StackService(specconvert.spec_from_pb(s.spec), tuple(dependency_from_pb(d) for d in s.depends_on))
            for s in msg.services
        ),
        networks=tuple(
            StackNetwork(n.name, n.subnet, n.internal, n.attachable, dict(n.labels), n.external) for n in msg.networks
        ),
        secrets=tuple(_object_from_pb(s) for s in msg.secrets),
        configs=tuple(_object_from_pb(c) for c in msg.configs),
        volumes=tuple(
            StackVolume(v.name, v.driver or "local", dict(v.options), dict(v.labels), v.external) for v in msg.volumes
        ),
        unsupported=tuple(Finding(f.path, f.file, f.line, f.message) for f in msg.unsupported),
    )


def stack_to_pb(stack: StackSpec) -> cpb.StackSpec:
    return cpb.StackSpec(
        name=stack.name,
        services=[
            cpb.StackService(
                spec=specconvert.spec_to_pb(s.spec), depends_on=[dependency_to_pb(d) for d in s.depends_on]
            )
            for s in stack.services
        ],
        networks=[
            cpb.StackNetwork(
                name=n.name,
                subnet=n.subnet,
                internal=n.internal,
                attachable=n.attachable,
                labels=n.labels,
                external=n.external,
            )
            for n in stack.networks
        ],
        secrets=[_object_to_pb(s) for s in stack.secrets],
        configs=[_object_to_pb(c) for c in stack.configs],
        volumes=[
            cpb.StackVolume(name=v.name, driver=v.driver, options=v.options, labels=v.labels, external=v.external)
            for v in stack.volumes
        ],
        unsupported=[
            cpb.StackFinding(path=f.path, file=f.file, line=f.line, message=f.message) for f in stack.unsupported
        ],
    )


def plan_to_pb(plan: StackPlan) -> cpb.DeployStackResponse:
    return cpb.DeployStackResponse(
        stack=plan.stack,
        changes=[
            cpb.StackChange(kind=c.kind, name=c.name, action=c.action.value, diff=c.diff, replaces=c.replaces)
            for c in plan.changes
        ],
        orphaned=plan.orphaned,
        unplaceable=plan.unplaceable,
    )
