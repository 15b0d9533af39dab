"""Waiting for a service to converge, with progress lines on stderr (`--detach` skips it)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from warren.cli import units
from warren.cli.errors import CliError, Exit
from warren.cli.flags import value_type

POLL_INTERVAL = 0.2


def add_wait_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--detach", action="store_true", help="return at once instead of waiting for the tasks")
    p.add_argument(
        "--timeout",
        dest="wait_timeout",
        type=value_type(units.parse_seconds),
        default=60.0,
        metavar="DURATION",
        help="give up waiting after this long, exit 1 (default: 60s)",
    )


def task_name(service_name: str, task: Any) -> str:
    """web.3 for replica 3; web.<node id> for a global task."""
    return f"{service_name}.{task.slot}" if task.slot else f"{service_name}.{task.node_id[:12]}"


def task_note(task: Any) -> str:
    if task.error:
        return task.error
    if task.state in ("running", "complete", "shutdown"):
        return ""
    return task.message


_SETTLED = ("assigned", "running")
_ENDED = ("complete", "failed", "shutdown", "rejected", "orphaned")
_GLOBAL_STABLE_POLLS = 5  # a global service's task count is only known once it stops changing
_IDLE_ASSIGNED_POLLS = 15  # ~3 s of assigned tasks that no agent moves: stop waiting


def _live(tasks: Any) -> list[Any]:
    """The tasks desired running, less those that ended and were replaced in their slot (their
    node, for a global task): a task that fails on its own keeps desired state running, and is
    history once a newer one runs in its place. The newest one of a slot stays, so its error
    shows in the wait."""
    desired = [t for t in tasks if t.desired_state == "running"]
    newest: dict[tuple[int, str], Any] = {}
    for t in desired:
        key = (t.slot, "" if t.slot else t.node_id)
        if key not in newest or t.created_at > newest[key].created_at:
            newest[key] = t
    kept = {id(t) for t in newest.values()}
    return [t for t in desired if t.state not in _ENDED or id(t) in kept]


class Convergence:
    """Where a service's tasks stand, from one ListTasks answer.

    A service has converged once every desired task runs the current spec version. Tasks
    assigned to a node whose agent never picks them up (no agent runs there) stay "assigned";
    `settled` counts those too, so the wait can end saying so instead of hanging.
    """

    def __init__(self, service: Any, tasks: Any, check_version: bool) -> None:
        spec = service.spec
        live = _live(tasks)
        self.name = spec.name
        self.current = [t for t in live if not check_version or t.spec_version >= service.version]
        self.stale = len(live) - len(self.current)
        self.target = len(live) if spec.mode == "global" else spec.replicas
        self.settled = [t for t in self.current if t.state in _SETTLED]
        self.running = sum(1 for t in self.current if t.state == "running")
        self.waiting = [t for t in self.current if t.state not in _SETTLED]
        self.extra = len(live) - self.target
        self.done = len(self.settled) == self.target and not self.extra and not self.stale
        self.all_running = self.done and self.running == self.target
        self.fingerprint = tuple(sorted((t.id, t.state) for t in self.current))

    def lines(self) -> list[str]:
        head = f"{self.name}: overall progress: {min(len(self.settled), self.target)} of {self.target} tasks assigned"
        if self.running:
            head += f", {min(self.running, self.target)} running"
        if self.extra > 0:
            head += f", {self.extra} more to stop"
        out = [head]
        for t in sorted(self.waiting, key=lambda t: t.slot)[:5]:
            note = task_note(t)
            out.append(f"  {task_name(self.name, t)}: {t.state}" + (f": {note}" if note else ""))
        if len(self.waiting) > 5:
            out.append(f"  ... and {len(self.waiting) - 5} more")
        if self.stale:
            out.append(
                f"  {self.stale} task(s) still run an older version; the rollout replaces them as new tasks "
                "stay ready for the monitor period"
                + ("" if self.running else " (no task runs yet: does their node run an agent?)")
            )
        return out

    def summary(self) -> str:
        n, r = self.target, self.running
        if n == 0:
            return f"{self.name}: converged; no task is desired"
        if r == n:
            return f"{self.name}: {n} of {n} tasks running"
        if r == 0:
            return f"{self.name}: {n} of {n} tasks assigned; no agent has started them (does their node run one?)"
        return (
            f"{self.name}: {n} of {n} tasks assigned, {r} running; no agent has started the others "
            "(does their node run one?)"
        )


class _Progress:
    """Progress lines on stderr: redrawn in place on a terminal, printed on change otherwise."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.shown: list[str] = []
        self.printed: set[str] = set()

    def show(self, lines: list[str]) -> None:
        if lines == self.shown:
            return
        if self.tty:
            if self.shown:
                self.stream.write(f"\x1b[{len(self.shown)}F\x1b[J")
            fresh = lines
        else:  # a log: each line once, not the whole block again on every change
            fresh = [line for line in lines if line not in self.printed]
            self.printed.update(fresh)
        self.stream.write("".join(line + "\n" for line in fresh))
        self.stream.flush()
        self.shown = lines


def rollout_line(service: Any, tasks: Any) -> str:
    """ "web: updating: 4 of 10 tasks on version 7; 1 failed (message)" (ADR 33)."""
    status = service.update_status
    live = [t for t in tasks if t.desired_state == "running"]
    target = service.spec.replicas if service.spec.mode != "global" else len(live)
    on = sum(1 for t in live if t.spec_version == status.to_version and t.state == "running")
    failed = sum(
        1
        for t in tasks
        if t.spec_version == status.to_version
        and t.state in ("failed", "rejected")
        and t.created_at >= status.started_at
    )
    line = f"{service.spec.name}: {status.state.replace('_', ' ')}: {min(on, target)} of {target} tasks on version "
    line += f"{status.to_version}" + (f"; {failed} failed" if failed else "")
    message = without_state(status.message)
    return line + (f" ({message})" if message else "")


def without_state(message: str) -> str:
    """A status message starts with its state ("paused: task web.3 failed ..."), which the
    line already says."""
    return message.removeprefix("paused: ")


def _rollout_ended(service: Any, since_version: int, rolling_back: bool) -> None:
    """Raise the rollout's end as the wait's outcome: paused (exit 7), or rolled back by the
    failure action of an update (exit 8). Nothing for a rollout still going or completed."""
    if not service.HasField("update_status") or service.update_status.to_version < since_version:
        return
    status = service.update_status
    name = service.spec.name
    if status.state in ("paused", "rollback_paused"):
        what = "rollback" if status.state == "rollback_paused" else "update"
        raise CliError(
            f"{name}: the {what} to version {status.to_version} paused: "
            f"{without_state(status.message) or 'no reason given'}; "
            f"`warren service update {name}` with a fix, or `warren service rollback {name}`",
            Exit.PAUSED,
        )
    if status.state == "rollback_completed" and not rolling_back:
        raise CliError(
            f"{name}: the update was rolled back to the previous spec (now version {status.to_version}): "
            f"{status.message or 'its failure action'}",
            Exit.ROLLED_BACK,
        )


def _strategy_waits(service: Any) -> bool:
    """The rollout reached a strategy's resting point, where the wait ends (exit 0, ADR 35): its
    canaries await promotion (unless they promote themselves), or a blue/green switch happened
    (the old set is kept for a rollback, not waited for)."""
    if not service.HasField("update_status") or service.update_status.to_version != service.version:
        return False
    state = service.update_status.state
    deploy = service.spec.deploy
    if state == "canary":
        return not deploy.canary_auto_promote
    return state == "completed" and deploy.strategy == "blue-green"


def _rollout_done(service: Any) -> bool:
    """No rollout of the current version is under way (its monitor periods have passed)."""
    if not service.HasField("update_status") or service.update_status.to_version != service.version:
        return True
    return bool(service.update_status.state in ("completed", "rollback_completed"))


def wait_converged(client: Any, service: Any, timeout: float, check_version: bool, rolling_back: bool = False) -> int:
    """Poll the service's tasks until it converges (0), `timeout` passes (CliError, exit 1),
    or the operator presses Ctrl-C (0: the service stays and keeps converging). With
    `check_version` (an update or a rollback) the rollout is followed too: it may pause (exit
    7) or be rolled back by its failure action (exit 8)."""
    import time

    from warren.api.v1 import control_pb2 as pb

    progress = _Progress(sys.stderr)
    deadline = time.monotonic() + timeout
    stable, last_ids = 0, None
    state = None
    since_version = service.version
    try:
        while True:
            if check_version:  # the version moves on if the failure action rolls back
                service = client.call("GetService", pb.GetServiceRequest(service=service.id))
                _rollout_ended(service, since_version, rolling_back)
            tasks = client.list_all("ListTasks", pb.ListTasksRequest(service=service.id), "tasks")
            if check_version and _strategy_waits(service):
                sys.stderr.write(rollout_line(service, tasks) + "\n")
                return 0  # a canary awaiting promotion, a switched blue/green set (ADR 35)
            # Once the manager says the rollout of this version completed, the tasks it kept are
            # current even when their version is older (a rollback that found them running).
            state = Convergence(service, tasks, check_version and not _rollout_done(service))
            lines = state.lines()
            if check_version and service.HasField("update_status"):
                lines[0] = rollout_line(service, tasks)
            progress.show(lines)
            # Done when all run; or when every task is at least assigned and nothing has moved
            # for a while (their nodes run no agent). Global services need a stable count too.
            stable = stable + 1 if state.done and state.fingerprint == last_ids else int(state.done)
            last_ids = state.fingerprint
            needed = _GLOBAL_STABLE_POLLS if service.spec.mode == "global" else 1
            settled = stable >= (needed if state.all_running else _IDLE_ASSIGNED_POLLS)
            if state.done and settled and (not check_version or _rollout_done(service)):
                sys.stderr.write(state.summary() + "\n")
                return 0
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        sys.stderr.write(
            f"\nstopped waiting: {service.spec.name} keeps converging (see `warren service ps {service.spec.name}`)\n"
        )
        return 0
    assert state is not None  # the loop polls at least once
    lines = state.lines()
    reason = lines[1].strip() if len(lines) > 1 else "the tasks did not settle"
    name = service.spec.name
    raise CliError(
        f"timed out after {units.format_duration(timeout)} waiting for {name} to converge "
        f"({min(len(state.settled), state.target)} of {state.target} tasks assigned): {reason}; "
        f"the service stays, see `warren service ps {name}`",
        Exit.FAILURE,
    )
