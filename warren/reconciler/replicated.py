"""Replicated services: keep `replicas` filled slots, and roll a new version through them (ADR 33).

The budget of slots is spent in this order: slots with a live task, then slots whose newest task
died on its own (they are restarted according to the dead task's restart policy, or stay dead
and keep their slot when the policy says no), then brand-new slots. Tasks that the reconciler
stopped on purpose (scale down, drain, update) never hold a slot: their replacement, if any, is
created in the same pass.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping

import msgspec

from warren import rebalance, rollout, strategy
from warren.commands import RolloutChange
from warren.model import Node, Resources, Service, Task, TaskState, UpdateOrder, host_ports, is_ready, is_stopping
from warren.reconciler.core import (
    ASSIGNED,
    RUNNING,
    Pass,
    died_on_its_own,
    is_live,
    newest_first,
    restart_attempt,
)


def _move_rank(p: Pass, task: Task, slot_ids: Collection[str], service: Service) -> int:
    """A rebalance's move (ADR 36) holds its slot ahead of the task it replaces (2), unless the
    service changed before it was ready (0): the old task then keeps the slot, and the update
    replaces it start-first. Other tasks: 1."""
    if task.relocates not in slot_ids:
        return 1
    return 2 if p.current(task, service) or is_ready(task) else 0


def reconcile_replicated(p: Pass, service: Service, tasks: list[Task]) -> None:
    first_created = len(p.created)
    replicas = max(service.spec.replicas, 0)
    by_slot: defaultdict[int, list[Task]] = defaultdict(list)
    for t in tasks:
        by_slot[t.slot].append(t)

    live: dict[int, Task] = {}
    # Start-first (ADR 33): a slot's older task keeps serving while its new one gets ready; and
    # after that beside a waiting canary or for a blue/green rollback (ADR 35).
    standby: dict[int, Task] = {}
    hold = strategy.holds_old(service, p.now)
    for slot in sorted(by_slot):
        group = by_slot[slot]
        # The usual slot holds one task: no list of its live ones (at 100,000 tasks a pass made
        # 100,000 of them, which the collector walked when it ran during the pass, #15).
        slot_live = group if len(group) == 1 else [t for t in group if is_live(t)]
        if not slot_live or not is_live(slot_live[0]):
            continue
        if slot < 1:
            for t in slot_live:
                p.shutdown(t, "not a replicated slot")
            continue
        if len(slot_live) == 1:  # the usual slot: one live task, nothing to rank or stop
            live[slot] = p.adopt(slot_live[0], service)
            continue
        ids = {t.id for t in slot_live}
        slot_live.sort(
            key=lambda t: (p.current(t, service), _move_rank(p, t, ids, service), t.state, t.created_at, t.id),
            reverse=True,
        )
        keeper, rest = p.adopt(slot_live[0], service), slot_live[1:]
        # A rebalance's move and the task it replaces run one spec: both join the version (ADR 36).
        pair = {keeper.relocates, keeper.id}
        rest = [p.adopt(t, service) if t.id in pair or t.relocates in pair - {""} else t for t in rest]
        older = [t for t in rest if t.spec_version != keeper.spec_version or t.id == keeper.relocates]
        if p.current(keeper, service) and (hold or not is_ready(keeper)) and older:
            standby[slot] = older[0]
            rest.remove(older[0])
        for extra in rest:
            if extra.id == keeper.relocates:
                p.shutdown(extra, "moved to another node by a rebalance")
            elif extra.relocates == keeper.id:
                p.shutdown(extra, "rebalance move dropped: the service changed")
            else:
                p.shutdown(extra, "replaced by service update" if extra in older else "duplicate task in slot")
        live[slot] = keeper

    if len(live) > replicas:
        # Not yet running first, then outdated, then newest (see newest_first).
        victims = sorted(live.values(), key=newest_first, reverse=True)
        victims.sort(key=lambda t: (t.state >= RUNNING, p.current(t, service)))
        for t in victims[: len(live) - replicas]:
            if p.shutdown(t, "scaled down"):
                del live[t.slot]
                if t.slot in standby and p.shutdown(standby[t.slot], "scaled down"):
                    del standby[t.slot]

    for slot, t in sorted(standby.items()):
        why = p.displaced_by(t, t.spec.constraints)
        if why and p.shutdown(t, why):
            del standby[slot]
    for slot, t in sorted(live.items()):
        why = p.displaced_by(t, t.spec.constraints)
        if not why:
            continue
        if slot in standby and t.relocates == standby[slot].id:
            # A rebalance's move displaced before it was ready: the task it was to replace still
            # serves, and holds the slot again. A new task of the same version beside it is not
            # one the FSM accepts (one live task per version and slot), so a pass that made one
            # would be made again by the next.
            if p.shutdown(t, why):
                live[slot] = standby.pop(slot)
            continue
        if p.can_start() and p.can_stop(t):
            p.shutdown(t, why)
            live[slot] = p.create(service, slot, t.attempt)

    _rolling_update(p, service, live, standby, tasks)
    _fill_slots(p, service, live, by_slot, replicas)
    if any(not p.task(t.id).node_id for t in live.values()):
        # A rebalance weighs where every slot runs, and this pass places some only in `place()`:
        # weighed before, it would be decided again, differently, by the next pass.
        def rebalance_placed() -> None:
            first = len(p.created)
            _rebalance(p, service, live, {}, tasks)
            for task_id in p.created[first:]:
                by_slot[p.overlay[task_id].slot].append(p.overlay[task_id])
            p.trim_history(by_slot.values(), service.version)

        p.rebalance_after_placing.append(rebalance_placed)
    else:
        _rebalance(p, service, live, standby, tasks)
    for slot, serving in standby.items():  # the new task may have been replaced in this pass
        if slot in live and not hold:  # a strategy's new task waits for room rather than stop the old
            p.standby_for[live[slot].id] = serving
    for kept in live.values():
        t = p.task(kept.id)
        if t.state < ASSIGNED and not t.node_id and t.id in p.state.tasks:
            p.to_place.append(t.id)
    for task_id in p.created[first_created:]:
        by_slot[p.overlay[task_id].slot].append(p.overlay[task_id])
    p.trim_history(by_slot.values(), service.version)


def _rolling_update(
    p: Pass, service: Service, live: dict[int, Task], standby: dict[int, Task], tasks: list[Task]
) -> None:
    """Replace outdated tasks (ADR 33): unplaced ones at once, placed ones as the rollout's
    lanes free up, stop-first or start-first; and move the rollout's status on."""
    outdated = sorted((t for t in live.values() if not p.current(t, service)), key=lambda t: t.slot)
    for t in outdated:
        if t.state < ASSIGNED and p.can_start():
            p.shutdown(t, "replaced by service update")
            live[t.slot] = p.create(service, t.slot, 0)
    placed = [t for t in outdated if not is_stopping(p.task(t.id))]
    new_tasks = [p.task(t.id) for t in tasks if p.current(t, service)]
    new_tasks += [t for t in live.values() if p.current(t, service) and t.id not in p.state.tasks]
    step = strategy.step(service, new_tasks, len(placed), max(service.spec.replicas, 0), p.now)
    if step.status is not None:
        p.rollouts.append(RolloutChange(service.id, service.version, step.status, step.revert))
    if step.revert:
        return
    beside = strategy.holds_old(service, p.now)  # a canary or a new blue/green set starts beside the old
    stop_first = rollout.settings(service).order == UpdateOrder.STOP_FIRST and not beside
    placed.sort(key=lambda t: (t.state >= RUNNING, t.slot))  # what serves nothing yet first
    for t in placed[: step.start]:
        if not p.can_start() or (stop_first and not p.can_stop(t)):
            return
        if stop_first:
            p.shutdown(t, "replaced by service update")
        live[t.slot] = p.create(service, t.slot, 0)
        if not stop_first:
            standby[t.slot] = t


def _rebalance(p: Pass, service: Service, live: dict[int, Task], standby: dict[int, Task], tasks: list[Task]) -> None:
    """Start the moves of a rebalance (ADR 36): a new task of the slot on its target node; the
    old one serves until it is ready (start-first), like an update's."""
    cluster = p.state.cluster
    automatic = cluster is not None and cluster.auto_rebalance
    # The rollout as this pass leaves it: one it completes lets an automatic rebalance start now.
    decided = [c for c in p.rollouts if c.service_id == service.id and c.version == service.version and not c.revert]
    if decided:
        service = msgspec.structs.replace(service, update_status=decided[-1].status)
    if not automatic and not rebalance.under_way(service):
        return
    if p.eligible is None:
        p.eligible = rebalance.Eligible(p.placeable_nodes())  # no move to a late node (ADR 68)
    need, ports = service.spec.reservations, host_ports(service.spec.ports)

    def room_of(node: Node) -> int | None:
        reserved, live = p.reserved.get(node.id, Resources()), p.live.get(node.id, 0)
        return rebalance.room(node, reserved, live, need, ports, p.host_ports.get(node.id, ()))

    holders = [p.task(t.id) for t in live.values()]
    eligible = p.eligible.nodes(service.spec.constraints)
    # The tasks as this pass leaves them: a move it stopped (a scale-down) no longer counts.
    current = [p.task(t.id) for t in tasks]
    step = rebalance.step(service, holders, current, eligible, room_of, p.now, automatic, p.config.node_timeout)
    if step.status is not None:
        p.rollouts.append(RolloutChange(service.id, service.version, step.status))
    for move in step.moves:
        if not p.can_start():
            return
        old = standby[move.slot] = live[move.slot]
        live[move.slot] = p.create(service, move.slot, old.attempt, move.to_node, relocates=old.id)


def _fill_slots(
    p: Pass, service: Service, live: dict[int, Task], by_slot: Mapping[int, list[Task]], replicas: int
) -> None:
    budget = replicas - len(live)
    if budget <= 0:
        return
    held = set(live)
    for slot in sorted(by_slot):
        if budget <= 0:
            break
        if slot < 1 or slot in held:
            continue
        newest = max((p.task(t.id) for t in by_slot[slot]), key=newest_first)
        if not died_on_its_own(newest, replicated=True):
            continue  # stopped on purpose: the slot number is free
        budget -= 1
        held.add(slot)
        attempt = restart_attempt(newest, service, p.now)
        if attempt is not None and p.can_start():
            live[slot] = p.create(service, slot, attempt)
    busy = held | {s for s, ts in by_slot.items() if any(p.task(t.id).state < TaskState.COMPLETE for t in ts)}
    slot = 1
    while budget > 0 and p.can_start():
        while slot in busy:
            slot += 1
        live[slot] = p.create(service, slot, 0)
        busy.add(slot)
        budget -= 1
