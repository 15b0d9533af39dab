"""A service's spec history (ADR 33), pure: the last versions with a one-line summary of each
change, for `service history` and `service rollback --to-version`."""

from __future__ import annotations

import enum

import msgspec

from warren.model import ContainerOptions, ServiceSpec, SpecRevision
from warren.text import escape_control

MAX_REVISIONS = 10
_SHOWN = 40  # characters of a value quoted in a summary


def summary(old: ServiceSpec | None, new: ServiceSpec) -> str:
    """What changed, field by field: values for the simple ones ("image app:1 -> app:2"), keys
    for maps ("env +DEBUG -OLD ~PORT"), and only the name for the rest ("health changed")."""
    if old is None:
        return "created"
    parts = []
    for field in msgspec.structs.fields(ServiceSpec):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before == after:
            continue
        label = field.name.replace("_", " ")
        if isinstance(after, dict):
            added = [f"+{k}" for k in sorted(after.keys() - before.keys())]
            removed = [f"-{k}" for k in sorted(before.keys() - after.keys())]
            changed = [f"~{k}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
            parts.append(f"{label} {_brief(' '.join(added + removed + changed))}")
        elif isinstance(after, str | int | float | enum.Enum) and not isinstance(after, bool):
            parts.append(f"{label} {_brief(before)} -> {_brief(after)}")
        elif isinstance(after, ContainerOptions):  # which options: "container user, cap_add changed"
            names = [f.name for f in msgspec.structs.fields(after) if getattr(before, f.name) != getattr(after, f.name)]
            parts.append(f"{label} {_brief(', '.join(names))} changed")
        else:
            parts.append(f"{label} changed")
    return "; ".join(parts) or "no change (a forced update)"


def advance(
    history: tuple[SpecRevision, ...], replaced: ServiceSpec, revision: SpecRevision
) -> tuple[SpecRevision, ...]:
    """The history once `revision` (the new current version, its spec None) replaces the
    current one, whose spec `replaced` it now keeps; the oldest dropped beyond MAX_REVISIONS."""
    earlier = tuple(r if r.spec is not None else msgspec.structs.replace(r, spec=replaced) for r in history)
    return (*earlier, revision)[-MAX_REVISIONS:]


def find(history: tuple[SpecRevision, ...], version: int) -> SpecRevision | None:
    return next((r for r in history if r.version == version), None)


def previous(history: tuple[SpecRevision, ...], version: int) -> SpecRevision | None:
    """The newest kept version before `version`."""
    earlier = [r for r in history if r.version < version and r.spec is not None]
    return earlier[-1] if earlier else None


def _brief(value: object) -> str:
    text = escape_control(str(value.value if isinstance(value, enum.Enum) else value))
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
