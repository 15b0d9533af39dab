"""Task status reports waiting to be sent, coalesced per task.

Each UpdateTaskStatus call costs the managers one Raft entry (ADR 10), so the agent batches: a
controller that moves a task through ACCEPTED, PREPARING, STARTING and RUNNING within a few
milliseconds sends one report. Reports survive a lost session: a batch that failed goes back in
the queue (unless a newer report for the task arrived meanwhile) and is sent on the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import msgspec

from warren.model import TaskState


class Report(msgspec.Struct, frozen=True):
    """One task's status as the agent observed it (a TaskStatus message before encoding)."""

    task_id: str
    state: TaskState
    timestamp: float
    message: str = ""
    error: str = ""
    exit_code: int | None = None
    runtime_id: str = ""
    health: str = ""


def newer(candidate: Report, current: Report) -> bool:
    """Whether `candidate` should replace `current`: a later state always wins; the same state
    wins when it is at least as recent (a health change); an earlier state never does."""
    if candidate.state != current.state:
        return candidate.state > current.state
    return candidate.timestamp >= current.timestamp


class StatusQueue:
    """Pending reports, at most one per task (the newest). Only the agent's event loop uses it."""

    def __init__(self) -> None:
        self._pending: dict[str, Report] = {}
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, report: Report) -> None:
        current = self._pending.get(report.task_id)
        if current is None or newer(report, current):
            self._pending[report.task_id] = report
            self._ready.set()

    def take(self) -> list[Report]:
        """Everything pending, oldest first; the caller sends it or gives it back with requeue."""
        batch = sorted(self._pending.values(), key=lambda r: r.timestamp)
        self._pending.clear()
        self._ready.clear()
        return batch

    def requeue(self, batch: Iterable[Report]) -> None:
        """Give back a batch that was not delivered; newer reports queued meanwhile win."""
        for report in batch:
            self.put(report)

    def forget(self, task_id: str) -> None:
        """Drop a task's pending report (the manager no longer knows the task)."""
        self._pending.pop(task_id, None)
        if not self._pending:
            self._ready.clear()

    async def wait(self) -> None:
        """Return once at least one report is pending."""
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()
