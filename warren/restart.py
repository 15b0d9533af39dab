"""The restart policy, in one place: whether a task that ended runs again, and as which attempt.

The managers' reconciler applies it to replace a dead task; an agent that no manager can reach
applies it to restart the task in place (ADR 12). Both call `next_attempt`, so a task gets the
same number of tries whichever side restarts it (ADR 30). The restart delay is not here: each
side measures it against its own clock.
"""

from __future__ import annotations

from warren.model import RestartCondition, RestartPolicy, TaskState


def next_attempt(policy: RestartPolicy, outcome: TaskState, attempt: int, ran_for: float) -> int | None:
    """The attempt number of the task's next run after it ended in `outcome`, having run for
    `ran_for` seconds as attempt `attempt`; None when the policy forbids another run. A run
    longer than the policy's window starts the count again."""
    if policy.condition == RestartCondition.NONE:
        return None
    if policy.condition == RestartCondition.ON_FAILURE and outcome == TaskState.COMPLETE:
        return None
    base = 0 if policy.window > 0 and ran_for >= policy.window else attempt
    if policy.max_attempts and base >= policy.max_attempts:
        return None
    return base + 1
