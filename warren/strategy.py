"""Deployment strategies (ADR 35), pure: canary and blue/green on top of the rolling update.

Like the rollout (ADR 33), every decision is derived from the replicated state: the strategy is
in the spec being rolled out to (`spec.deploy`), and where the rollout stands is in its status
(`UpdateStatus.state`, `promoted_at`, `completed_at`). A new leader continues from there.

- Canary: `canary_replicas` new tasks start beside the old ones (a start-first replacement whose
  old task is *held*); once they succeeded (ready for the monitor period) the rollout waits in
  state `canary` until `service promote`, or until they have been ready `canary_auto_promote`
  seconds. Meanwhile the endpoints give them `canary_weight` percent of new connections.
  Promoted, the rest rolls under the update settings.
- Blue/green: a whole new set starts beside the old one, out of routing. Once every new task
  succeeded the rollout completes, and completing *is* the switch: the endpoints of every node
  route to the new set from that commit on. The old set is held, out of routing, for
  `blue_green_keep` seconds, so that a rollback finds it running (no task started); then it is
  stopped through the usual drain.
- A rollback is rolling (its own settings). As for any version, the tasks that already run its
  spec (`matches`) are current and adopted into it (ADR 33): rolling back *from* a canary or
  blue/green rollout stops the new tasks and starts none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec

from warren import rollout
from warren.model import (
    DeployStrategy,
    RolloutState,
    Service,
    ServiceSpec,
    Task,
    UpdateStatus,
    is_routed,
)

_WAITING = (RolloutState.UPDATING, RolloutState.CANARY, RolloutState.PAUSED)


def matches(task_spec: ServiceSpec, spec: ServiceSpec) -> bool:
    """The task runs `spec`: they differ at most in how the service is scaled, rolled out and
    drained before a stop (the managers' business, not the task's): Swarm's "task is dirty"
    test, rather than the version. `force_update` differs after `--force`: every task differs."""
    if task_spec == spec:
        return True
    same_settings = msgspec.structs.replace(
        task_spec,
        replicas=spec.replicas,
        update=spec.update,
        rollback=spec.rollback,
        deploy=spec.deploy,
        stop_drain=spec.stop_drain,
    )
    return same_settings == spec


def _status_of_this_version(service: Service) -> UpdateStatus | None:
    status = service.update_status
    if status is None or status.to_version != service.version or status.state.rolling_back:
        return None
    return status


def canary_waiting(service: Service) -> bool:
    """The canaries of this version run beside the old tasks, not promoted yet."""
    status = _status_of_this_version(service)
    return (
        status is not None
        and service.spec.deploy.strategy == DeployStrategy.CANARY
        and status.promoted_at == 0
        and status.state in _WAITING
    )


def blue_green_building(service: Service) -> bool:
    """The new set of this version starts or waits beside the old one, which takes the traffic."""
    status = _status_of_this_version(service)
    return status is not None and service.spec.deploy.strategy == DeployStrategy.BLUE_GREEN and status.state in _WAITING


def blue_green_switched(service: Service) -> bool:
    """The new set of this version took the traffic (the rollout completed)."""
    status = _status_of_this_version(service)
    return (
        status is not None
        and service.spec.deploy.strategy == DeployStrategy.BLUE_GREEN
        and status.state == RolloutState.COMPLETED
    )


def holds_old(service: Service, now: float) -> bool:
    """An old task whose replacement is ready keeps running (it would stop under rolling):
    beside a waiting canary, and for the old set of a blue/green rollout until its keep ended."""
    if canary_waiting(service) or blue_green_building(service):
        return True
    status = service.update_status
    return (
        status is not None
        and blue_green_switched(service)
        and now < status.completed_at + service.spec.deploy.blue_green_keep
    )


@dataclass(frozen=True)
class Routing:
    """What a service's endpoints route to: `backends`, of which `canary` take `canary_weight`
    percent of new connections (no canary: equal shares)."""

    backends: tuple[str, ...]
    canary: tuple[str, ...] = ()
    canary_weight: int = 0


def routing(service: Service, tasks: Iterable[Task]) -> Routing:
    """The tasks that take connections (`model.is_routed`), chosen by the strategy: the old set
    until a blue/green switch and the new one after it; a canary's share weighted. When the
    chosen set has no task that may serve, the other one serves rather than none."""
    routed = [t for t in tasks if is_routed(t)]
    every = tuple(sorted(t.overlay_address for t in routed))
    if routes_every_task(service):
        return Routing(every)
    matching: dict[int, bool] = {}  # spec version -> runs the current spec; one comparison each

    def runs_current(task: Task) -> bool:
        if task.spec_version not in matching:
            matching[task.spec_version] = current(task, service)
        return matching[task.spec_version]

    if _rolling_back(service):
        # A full set already runs the spec rolled back to (a kept blue/green set, the old tasks
        # beside a canary): it alone takes the traffic, at once (ADR 35).
        back = tuple(sorted(t.overlay_address for t in routed if runs_current(t)))
        return Routing(back if len(back) >= max(service.spec.replicas, 1) else every)
    building, switched = blue_green_building(service), blue_green_switched(service)
    new = tuple(sorted(t.overlay_address for t in routed if runs_current(t)))
    if building or switched:
        chosen = new if switched else tuple(sorted(set(every) - set(new)))
        return Routing(chosen or every)
    weight = service.spec.deploy.canary_weight
    if weight is None or not new:
        return Routing(every)  # no weight: the canaries take their share of the tasks
    return Routing(every, new, weight)


def routes_every_task(service: Service) -> bool:
    """Whether `routing` takes every routed task alike, whatever spec it runs: no rollback to a
    kept set, no blue/green set, no canary waiting. Its backends are then a function of each
    task alone, which the leader's endpoints keep incrementally (ADR 75)."""
    return not (
        _rolling_back(service)
        or blue_green_building(service)
        or blue_green_switched(service)
        or canary_waiting(service)
    )


def _rolling_back(service: Service) -> bool:
    status = service.update_status
    return status is not None and status.to_version == service.version and status.state.rolling_back


def current(task: Task, service: Service) -> bool:
    """The task runs the service's current spec: its version, or an older version with the same
    spec (`matches`), which the reconciler adopts into the current version (ADR 33). An update
    of rollout settings only replaces no task, nor does a rollback the old tasks it finds."""
    return task.spec_version == service.version or matches(task.spec, service.spec)


def step(service: Service, new_tasks: Sequence[Task], outdated: int, replicas: int, now: float) -> rollout.Step:
    """`rollout.step` under the service's strategy (its arguments are the same). A canary
    starts no more than its canaries and waits for promotion; blue/green starts the whole new
    set at once, and its completion is the switch."""
    base = rollout.step(service, new_tasks, outdated, replicas, now)
    status = service.update_status
    if status is None or base.revert or (base.status is not None and not base.status.state.active):
        if blue_green_building(service) and base.status is not None and base.status.state == RolloutState.COMPLETED:
            return _switched(service, base, new_tasks)
        return base  # a failure action applied, or no strategy under way
    if blue_green_building(service):
        return rollout.Step(outdated if status.state == RolloutState.UPDATING else 0, base.status)
    if not canary_waiting(service):
        return base
    deploy = service.spec.deploy
    config = rollout.settings(service)
    canaries = [t for t in new_tasks if t.created_at >= status.started_at]
    done = rollout.progress(canaries, config, now)
    wanted = min(deploy.canary_replicas, max(replicas - 1, 1))
    start = max(0, min(outdated, wanted - done.succeeded - done.pending))
    if status.state == RolloutState.PAUSED or done.succeeded < wanted:
        return rollout.Step(start if status.state != RolloutState.PAUSED else 0, base.status)
    healthy = [t for t in canaries if rollout.outcome(t, config.monitor, now) == rollout.Outcome.SUCCEEDED]
    healthy_since = max(t.ready_at for t in healthy)
    if deploy.canary_auto_promote and now >= healthy_since + deploy.canary_auto_promote:
        message = f"promoted automatically: the canaries were healthy for {deploy.canary_auto_promote:g}s"
        promoted = msgspec.structs.replace(status, state=RolloutState.UPDATING, promoted_at=now, message=message)
        return rollout.Step(0, promoted)
    if status.state == RolloutState.CANARY:
        return rollout.Step(0)
    share = f"{deploy.canary_weight}% of new connections" if deploy.canary_weight is not None else "their share"
    message = (
        f"canary: {wanted} task(s) of version {service.version} healthy, taking {share}; "
        f"awaiting `warren service promote {service.spec.name}`"
    )
    if deploy.canary_auto_promote:
        message += f" or {deploy.canary_auto_promote:g}s healthy"
    return rollout.Step(0, msgspec.structs.replace(status, state=RolloutState.CANARY, message=message))


def _switched(service: Service, base: rollout.Step, new_tasks: Sequence[Task]) -> rollout.Step:
    """Blue/green: the completion of the new set is the switch of every endpoint; unless the
    update changed only settings, and every task was adopted (ADR 33): nothing switched."""
    assert base.status is not None
    keep = service.spec.deploy.blue_green_keep
    status = service.update_status
    old = status.from_version if status is not None else service.version - 1
    started = status.started_at if status is not None else 0.0
    if not any(t.created_at >= started for t in new_tasks):
        message = f"version {service.version} changed only settings: no task replaced, nothing switched"
        return rollout.Step(0, msgspec.structs.replace(base.status, message=message))
    message = (
        f"switched to version {service.version}; version {old} kept {keep:g}s for an instant "
        f"`warren service rollback {service.spec.name}`"
    )
    return rollout.Step(0, msgspec.structs.replace(base.status, message=message))


def promote(service: Service, now: float) -> UpdateStatus | str:
    """The status once an operator promotes the canaries, or why there is nothing to promote."""
    name = service.spec.name
    status = service.update_status
    if not canary_waiting(service) or status is None:
        where = "" if status is None else f" (its last rollout is {status.state.value.replace('_', ' ')})"
        return f"service {name} has no canary to promote{where}"
    if status.state == RolloutState.PAUSED:
        return (
            f"the canary of service {name} is paused ({status.message}); "
            f"roll it back with `warren service rollback {name}` or update again"
        )
    return msgspec.structs.replace(status, state=RolloutState.UPDATING, promoted_at=now, message="promoted")
