"""The task tables of `service ps` and `node ps`: one ordering, one naming, one state column."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from warren.cli import output
from warren.cli.progress import task_name, task_note

ERROR_WIDTH = 60  # `node ps` without --no-trunc: longer errors end in "..."


def slot_order(task: Any) -> tuple[Any, ...]:
    """A slot's tasks together, the newest first (a global service: one node's together)."""
    return (task.slot or 0, task.node_id if not task.slot else "", -task.created_at)


def service_order(task: Any) -> tuple[Any, ...]:
    """Tasks of several services: by service name, then as slot_order."""
    return (task.service_name, *slot_order(task))


def history_names(tasks: Iterable[Any]) -> list[str]:
    """Each task's SERVICE.SLOT, shown once: older tasks of the same slot as " \\_ NAME"."""
    names = []
    previous = None
    for t in tasks:
        name = task_name(t.service_name, t)
        names.append(name if name != previous else " \\_ " + name)
        previous = name
    return names


def current_state(task: Any) -> str:
    """ "running 5 minutes ago": the state and how long it has been in it."""
    return f"{task.state} {output.ago(task.updated_at or task.created_at)}".strip()


def truncated(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def image_shown(image: str, no_trunc: bool) -> str:
    """The image without its pinned digest (as `docker node ps`), unless --no-trunc."""
    return image if no_trunc else image.partition("@")[0]


def print_node_tasks(tasks: Sequence[Any], hostnames: dict[str, str], no_trunc: bool) -> None:
    """`node ps`'s table: Docker's columns, with Warren's names for the two states."""
    rows = [
        (
            t.id if no_trunc else output.short_id(t.id),
            name,
            image_shown(t.image, no_trunc),
            hostnames.get(t.node_id, t.node_id if no_trunc else output.short_id(t.node_id)),
            t.desired_state,
            current_state(t),
            task_note(t) if no_trunc else truncated(task_note(t), ERROR_WIDTH),
        )
        for t, name in zip(tasks, history_names(tasks), strict=True)
    ]
    output.print_table(["ID", "NAME", "IMAGE", "NODE", "DESIRED", "CURRENT", "ERROR/MESSAGE"], rows)
