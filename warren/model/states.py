"""The states and kinds of the cluster's objects: enumerations, and which task states may follow which."""

from __future__ import annotations

import enum


class TaskState(enum.IntEnum):
    """Ordered task lifecycle; a task only ever moves forward (SwarmKit's rule)."""

    NEW = 0
    PENDING = 1
    ASSIGNED = 2
    ACCEPTED = 3
    PREPARING = 4
    STARTING = 5
    RUNNING = 6
    COMPLETE = 7
    FAILED = 8
    SHUTDOWN = 9
    REJECTED = 10
    ORPHANED = 11

    @property
    def terminal(self) -> bool:
        return self >= _COMPLETE

    @property
    def label(self) -> str:
        return self.name.lower()


# Members read once: on CPython 3.11 each `TaskState.X` is a lookup on the enum class that costs
# about 110 ns, four times the comparison, and these helpers run for every task in a pass, an
# endpoint recompute or a scrape (#15: `terminal` 237 -> 90 ns).
_RUNNING = TaskState.RUNNING


_COMPLETE = TaskState.COMPLETE


def can_transition(current: TaskState, new: TaskState) -> bool:
    """A task may only move forward, and never out of a terminal state."""
    return not current.terminal and new > current


class NodeRole(enum.Enum):
    MANAGER = "manager"
    WORKER = "worker"


class Availability(enum.Enum):
    ACTIVE = "active"
    PAUSE = "pause"
    DRAIN = "drain"


class NodeStatus(enum.Enum):
    UNKNOWN = "unknown"
    READY = "ready"
    DOWN = "down"


class ServiceMode(enum.Enum):
    REPLICATED = "replicated"
    GLOBAL = "global"


class RestartCondition(enum.Enum):
    NONE = "none"
    ON_FAILURE = "on-failure"
    ANY = "any"


class UpdateOrder(enum.Enum):
    STOP_FIRST = "stop-first"
    START_FIRST = "start-first"


class FailureAction(enum.Enum):
    PAUSE = "pause"
    CONTINUE = "continue"
    ROLLBACK = "rollback"  # an update's only: a rollback that fails pauses or continues


class DeployStrategy(enum.Enum):
    """How a new version reaches the traffic (ADR 35)."""

    ROLLING = "rolling"  # task by task, under the update settings (ADR 33)
    CANARY = "canary"  # a few new tasks beside the old, a weighted share of traffic, then promote
    BLUE_GREEN = "blue-green"  # a full new set beside the old, then one switch of every endpoint


class RolloutState(enum.Enum):
    """Where a service's rollout stands (ADR 33); Swarm's UpdateStatus states, and the canary's
    wait for promotion (ADR 35)."""

    UPDATING = "updating"
    CANARY = "canary"  # the canaries are healthy and take their share: awaiting `service promote`
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK_PAUSED = "rollback_paused"
    ROLLBACK_COMPLETED = "rollback_completed"
    # A rebalance (ADR 36): tasks moved to even out the spread, no version change; it ends as
    # completed, or pauses when a moved task fails.
    REBALANCING = "rebalancing"
    REBALANCE_PAUSED = "rebalance_paused"

    @property
    def rolling_back(self) -> bool:
        return self in (RolloutState.ROLLBACK_STARTED, RolloutState.ROLLBACK_PAUSED, RolloutState.ROLLBACK_COMPLETED)

    @property
    def active(self) -> bool:
        """Replacing tasks now, or holding canaries (not paused, not done)."""
        return self in (RolloutState.UPDATING, RolloutState.CANARY, RolloutState.ROLLBACK_STARTED)
