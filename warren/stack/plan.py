"""What a stack deploy would do (#14, ADR 49): `stack plan`, Nomad's `job plan` for Warren. Pure.

The plan is read from the changes the `ApplyStack` command itself computes on the state, so it
says exactly what the deploy would commit: each object to create, update or remove, a
field-level diff of each changed service with the tasks it would replace (by the adoption rule
of ADR 33), and the tasks the scheduler could not place.
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from collections.abc import Iterable

import msgspec

from warren import strategy
from warren.commands import ApplyStack, Result, apply
from warren.model import Service, ServiceMode, ServiceSpec, Task, TaskState
from warren.reconciler import is_live
from warren.scheduler import schedule
from warren.stack.spec import STACK_LABEL
from warren.state import ClusterState, Delete, Put

MAX_SHOWN = 60  # characters of one value in a diff line


class Action(enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    REMOVE = "remove"


class ObjectChange(msgspec.Struct, frozen=True):
    """One object a deploy creates, updates or removes; `diff` lines read `image app:1 → app:2`."""

    kind: str  # service, secret, config, network, volume
    name: str
    action: Action
    diff: tuple[str, ...] = ()
    replaces: int = 0  # tasks of a service the update replaces (those not adopted)


class StackPlan(msgspec.Struct, frozen=True):
    stack: str
    changes: tuple[ObjectChange, ...] = ()
    orphaned: tuple[str, ...] = ()  # services of the stack not in the file (kept without --prune)
    unplaceable: tuple[str, ...] = ()  # "2 tasks of db cannot be placed: ..."

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def plan_stack(state: ClusterState, cmd: ApplyStack) -> StackPlan | Result:
    """The plan of `cmd` on `state`, or the refusal the deploy would meet. Writes nothing."""
    result, changes = apply(state, cmd)
    if not result.ok:
        return result
    after = state.copy()
    after.apply(changes)
    out: list[ObjectChange] = []
    touched: list[Service] = []
    for change in changes:
        if isinstance(change, Put) and change.kind == "service":
            assert isinstance(change.obj, Service)
            new = change.obj
            old = state.services.get(new.id)
            if old is None:
                out.append(ObjectChange("service", new.spec.name, Action.CREATE, _created(new)))
                touched.append(new)
            else:
                diff = tuple(spec_diff(old.spec, new.spec)) + _dependencies_diff(old, new)
                replaces = replaced_tasks(state, old, new)
                out.append(ObjectChange("service", new.spec.name, Action.UPDATE, diff, replaces))
                if replaces:
                    touched.append(new)
        elif isinstance(change, Delete) and change.kind == "service":
            gone = state.services[change.id]
            out.append(ObjectChange("service", gone.spec.name, Action.REMOVE, replaces=_live(state, gone)))
        elif change.kind in ("secret", "config", "network", "volume"):
            out.append(_object_change(state, change))
    orphaned = _orphans(result)
    return StackPlan(cmd.stack, _merged(out), orphaned, tuple(unplaceable(after, touched)))


def _merged(changes: list[ObjectChange]) -> tuple[ObjectChange, ...]:
    """One entry per object (a service updated, then given its dependencies, is one update)."""
    by_key: dict[tuple[str, str], ObjectChange] = {}
    for change in changes:
        key = (change.kind, change.name)
        first = by_key.get(key)
        if first is None:
            by_key[key] = change
        else:
            diff = first.diff + tuple(d for d in change.diff if d not in first.diff)
            by_key[key] = msgspec.structs.replace(first, diff=diff, replaces=max(first.replaces, change.replaces))
    order = {"network": 0, "volume": 1, "secret": 2, "config": 3, "service": 4}
    return tuple(sorted(by_key.values(), key=lambda c: (order.get(c.kind, 9), c.name)))


def _orphans(result: Result) -> tuple[str, ...]:
    marker = "--prune removes them): "
    if marker not in result.message:
        return ()
    return tuple(result.message.split(marker, 1)[1].split(", "))


def _object_change(state: ClusterState, change: Put | Delete) -> ObjectChange:
    if isinstance(change, Put):
        name = str(getattr(change.obj, "name", ""))
        return ObjectChange(change.kind, name, Action.CREATE)
    found: object = {
        "secret": state.secrets.get(change.id),
        "config": state.configs.get(change.id),
        "network": state.networks.get(change.id),
        "volume": state.volumes.get(change.id),
    }.get(change.kind)
    return ObjectChange(change.kind, str(getattr(found, "name", change.id)), Action.REMOVE)


def _created(service: Service) -> tuple[str, ...]:
    spec = service.spec
    count = "global" if spec.mode == ServiceMode.GLOBAL else f"replicas {spec.replicas}"
    return (f"image {spec.image}", count)


def _dependencies_diff(old: Service, new: Service) -> tuple[str, ...]:
    if old.depends_on == new.depends_on:
        return ()
    shown = [", ".join(f"{d.service} ({d.condition})" for d in s.depends_on) or "none" for s in (old, new)]
    return (f"depends_on {shown[0]} → {shown[1]}",)


def spec_diff(old: ServiceSpec, new: ServiceSpec) -> list[str]:
    """Field-level differences, as `path old → new` lines (Nomad's diff, flattened)."""
    return [line for line in _diff(old, new, "") if not line.startswith(f"labels.{STACK_LABEL} ")]


def _diff(old: object, new: object, path: str) -> Iterable[str]:
    if old == new:
        return
    if isinstance(old, msgspec.Struct) and type(old) is type(new):
        for field in old.__struct_fields__:
            yield from _diff(getattr(old, field), getattr(new, field), f"{path}.{field}" if path else field)
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            yield from _diff(old.get(key), new.get(key), f"{path}.{key}")
        return
    yield f"{path} {_shown(old)} → {_shown(new)}"


def _shown(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, enum.Enum):
        text = str(value.value)
    elif isinstance(value, tuple):
        text = "[" + ", ".join(_shown(v) for v in value) + "]"
    elif isinstance(value, msgspec.Struct):
        fields = (f"{f.name}={_shown(getattr(value, f.name))}" for f in _set_fields(value))
        text = f"{type(value).__name__}(" + ", ".join(fields) + ")"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def _set_fields(value: msgspec.Struct) -> list[msgspec.structs.FieldInfo]:
    """The fields of `value` that are required or differ from their default (a short form)."""
    out = []
    for field in msgspec.structs.fields(value):
        if field.default is not msgspec.NODEFAULT:
            default: object = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        else:
            out.append(field)
            continue
        if getattr(value, field.name) != default:
            out.append(field)
    return out


def _live(state: ClusterState, service: Service) -> int:
    return sum(1 for t in state.service_tasks(service.id) if is_live(t))


def replaced_tasks(state: ClusterState, old: Service, new: Service) -> int:
    """Live tasks the update replaces: those the new version cannot adopt (ADR 33), plus none
    for a change of scale alone (scaling replaces no task)."""
    if new.version == old.version:
        return 0
    return sum(1 for t in state.service_tasks(old.id) if is_live(t) and not strategy.current(t, new))


def unplaceable(after: ClusterState, services: list[Service]) -> list[str]:
    """Run the scheduler on a copy of the state after the deploy: each created or replaced
    replicated task of `services`, placed beside the tasks of everything else."""
    ids = itertools.count()
    pending: list[Task] = []
    touched = {s.id for s in services}
    for service in services:
        if service.spec.mode != ServiceMode.REPLICATED:
            continue
        for slot in range(1, service.spec.replicas + 1):
            pending.append(
                Task(
                    id=f"plan-{next(ids)}",
                    service_id=service.id,
                    service_name=service.spec.name,
                    slot=slot,
                    spec=service.spec,
                    spec_version=service.version,
                    state=TaskState.PENDING,
                )
            )
    if not pending:
        return []
    others = [t for t in after.tasks.values() if t.service_id not in touched]
    homes = {v.name: v.node_id for v in after.volumes.values() if v.node_id}
    result = schedule(after.nodes.values(), others, pending, homes)
    reasons: Counter[tuple[str, str]] = Counter()
    names = {t.id: t.service_name for t in pending}
    for task_id, reason in result.unplaced.items():
        reasons[(names[task_id], reason)] += 1
    return [
        f"{count} task{'s' if count != 1 else ''} of {name} cannot be placed: {reason}"
        for (name, reason), count in sorted(reasons.items())
    ]
