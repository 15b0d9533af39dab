"""Per-task metrics on the agent's /metrics (ADR 60): CPU, memory, network, block I/O, restarts,
health and start time of each running task, labelled service, slot, task and node.

The event loop publishes which tasks run (`TaskRows.refresh`, once a second, one tuple swapped
in whole); the HTTP thread reads their figures from cgroups and /proc when Prometheus scrapes
(`TaskCollector`), so nothing polls in the background and an ended task's series are gone from
the next scrape on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from warren.agent.taskstats import TaskStats

LABELS = ["service", "slot", "task", "node"]
SLOT_MEMORY = 600.0  # seconds a slot's restart count is kept after its last task left this node


@dataclass(frozen=True)
class TaskRow:
    """A running task as the event loop last saw it."""

    task_id: str
    service: str
    slot: str  # the replica number; a global task's node id, short (as `service ps` names it)
    node: str
    runtime_id: str
    started_at: float
    restarts: int  # restarts of its slot seen by this agent
    health: str  # "" without a health check

    @property
    def labels(self) -> list[str]:
        return [self.service, self.slot, self.task_id, self.node]


@dataclass(frozen=True)
class HeldTask:
    """What the rows are made from: one task controller's view (see `metrics.held_tasks`)."""

    task_id: str
    service_id: str
    service: str
    slot: int
    node: str
    runtime_id: str
    running: bool  # started and not ended
    started_at: float
    local_restarts: int  # restarts the agent made in place (no manager reachable)
    health: str


def slot_label(slot: int, node_id: str) -> str:
    return str(slot) if slot else node_id[:12]


class TaskRows:
    """The running tasks, for the collector; owned by the event loop. It also counts restarts
    per slot: a new task in a slot this agent ran before is one, as is a local restart."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.rows: tuple[TaskRow, ...] = ()
        self._clock = clock
        # (service id, slot label) -> (task ids seen, replaced tasks, last seen)
        self._slots: dict[tuple[str, str], tuple[frozenset[str], int, float]] = {}

    def refresh(self, held: Iterable[HeldTask]) -> None:
        now = self._clock()
        by_slot: dict[tuple[str, str], list[HeldTask]] = {}
        for task in held:
            by_slot.setdefault((task.service_id, slot_label(task.slot, task.node)), []).append(task)
        rows: list[TaskRow] = []
        for key, tasks in by_slot.items():
            ids = frozenset(t.task_id for t in tasks)
            seen, replaced, _ = self._slots.get(key, (frozenset(), 0, now))
            if seen:  # tasks new in a slot this agent already ran: each replaced one before it
                replaced += len(ids - seen)
            # Only ids still held: one that left the assignment set never comes back.
            self._slots[key] = (ids, replaced, now)
            rows.extend(
                TaskRow(
                    t.task_id,
                    t.service,
                    key[1],
                    t.node,
                    t.runtime_id,
                    t.started_at,
                    replaced + t.local_restarts,
                    t.health,
                )
                for t in tasks
                if t.running
            )
        for key, (_, _, last) in list(self._slots.items()):
            if now - last > SLOT_MEMORY:
                del self._slots[key]
        self.rows = tuple(rows)  # one reference swap: the HTTP thread sees the old or the new tuple


class TaskCollector(Collector):
    """Reads each running task's figures at scrape time. `pid_of` asks the runtime for a
    container's main process (cached per container and start: a restart gets a new one)."""

    def __init__(
        self,
        rows: Callable[[], tuple[TaskRow, ...]],
        read: Callable[[int], TaskStats | None],
        pid_of: Callable[[str], int],
    ) -> None:
        self._rows = rows
        self._read = read
        self._pid_of = pid_of
        self._pids: dict[tuple[str, float], int] = {}

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        pids: dict[tuple[str, float], int] = {}
        for row in self._rows():
            key = (row.runtime_id, row.started_at)
            pid = self._pids.get(key) or self._lookup(row.runtime_id)
            stats = self._read(pid) if pid > 0 else None
            if stats is None:  # its process just ended: the next refresh drops the row
                continue
            pids[key] = pid
            families.add(row, stats)
        self._pids = pids  # only the running tasks' pids: ended tasks drop out
        yield from families.all()

    def _lookup(self, runtime_id: str) -> int:
        try:
            return self._pid_of(runtime_id)
        except Exception:  # a runtime call failing must not fail the whole scrape
            return 0


class _Families:
    def __init__(self) -> None:
        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=LABELS)

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=LABELS)

        self.cpu = counter("warren_task_cpu_seconds", "CPU time used by the task's cgroup")
        self.memory = gauge("warren_task_memory_usage_bytes", "Memory used by the task's cgroup (page cache included)")
        self.limit = gauge("warren_task_memory_limit_bytes", "Memory limit of the task's cgroup (0: unlimited)")
        self.rx_bytes = counter("warren_task_network_receive_bytes", "Bytes received in the task's network namespace")
        self.tx_bytes = counter("warren_task_network_transmit_bytes", "Bytes sent from the task's network namespace")
        self.rx_packets = counter(
            "warren_task_network_receive_packets", "Packets received in the task's network namespace"
        )
        self.tx_packets = counter(
            "warren_task_network_transmit_packets", "Packets sent from the task's network namespace"
        )
        self.blk_read = counter("warren_task_blkio_read_bytes", "Bytes read from block devices by the task's cgroup")
        self.blk_write = counter("warren_task_blkio_write_bytes", "Bytes written to block devices by the task's cgroup")
        self.restarts = counter("warren_task_restarts", "Restarts of the task's slot seen by this agent")
        self.healthy = gauge("warren_task_healthy", "1 while the task's health check passes (absent without one)")
        self.start_time = gauge("warren_task_start_time_seconds", "Unix time the task's process started")

    def add(self, row: TaskRow, stats: TaskStats) -> None:
        labels = row.labels
        for family, value in (
            (self.cpu, stats.cpu_seconds),
            (self.memory, stats.memory_usage),
            (self.limit, stats.memory_limit),
            (self.blk_read, stats.blkio_read),
            (self.blk_write, stats.blkio_write),
        ):
            if value is not None:
                family.add_metric(labels, value)
        if stats.network is not None:
            self.rx_bytes.add_metric(labels, stats.network.rx_bytes)
            self.tx_bytes.add_metric(labels, stats.network.tx_bytes)
            self.rx_packets.add_metric(labels, stats.network.rx_packets)
            self.tx_packets.add_metric(labels, stats.network.tx_packets)
        self.restarts.add_metric(labels, row.restarts)
        if row.health:
            self.healthy.add_metric(labels, 1 if row.health == "healthy" else 0)
        self.start_time.add_metric(labels, row.started_at)

    def all(self) -> Iterator[Metric]:
        yield from (
            self.cpu,
            self.memory,
            self.limit,
            self.rx_bytes,
            self.tx_bytes,
            self.rx_packets,
            self.tx_packets,
            self.blk_read,
            self.blk_write,
            self.restarts,
            self.healthy,
            self.start_time,
        )
