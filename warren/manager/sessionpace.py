"""How fast sessions talk to a busy leader (ADR 73): the pause between a session's messages, which
new work may end early (ADR 85), and the spread of the agents' reconnects, all sized by the
cluster. Pure."""

from __future__ import annotations

import math

# After a leader change every agent opened a new session at once: at 1,000 nodes, the TLS
# handshakes and registrations timed out on the busy new leader, and the agents retried in step
# (#15). Each heartbeat answer tells the agent to spread a reconnect over one second per this
# many nodes, up to half a heartbeat period: a node is marked down after three periods without a
# beat, and an agent gives up a session whose heartbeat is not answered within two.
RECONNECTS_PER_SECOND = 200.0

# Each session sends at most about one message per (open sessions / this) seconds, at a random
# point of that interval. A commit wakes every session at once, and the event loop then runs all
# of them in one iteration, which delays everything else the loop does, new calls included
# (gRPC's asyncio server takes one per iteration). Paced, a session's wake-ups spread out and
# carry several commits each. 500, not 1,000 (ADR 78): each message costs both ends a fixed part
# (gRPC's, the wake-up's) whatever it carries, and at S2's size (1,000 nodes) half as many
# messages took the leader 46-48 CPU-seconds instead of 57 and the simulator 39-40 instead of 49,
# for a pause of 2 s on average instead of 1 s, so a wait of about 1 s instead of 0.5 s before a
# node hears of a change.
SESSION_MESSAGES_PER_SECOND = 500.0


def session_pace(sessions: int, draw: float) -> float:
    """The pause after a session's message, for `draw` in [0, 1): 0.5 to 1.5 times the mean."""
    return sessions / SESSION_MESSAGES_PER_SECOND * (0.5 + draw)


class Pauses:
    """One session's pauses between messages, which new work for its node may end early (ADR 85).

    After a message, the session waits until the pauses of its messages so far are over. New work
    (a task to start or to stop) ends the wait at once, unless the session already sent a message
    early in the pause before: each message takes a pause of credit, and early messages borrow at
    most one pause ahead. So a session still sends about one message per pause when work keeps
    coming (as when 100,000 tasks are placed), and in a quiet cluster new work goes out at once
    instead of after up to 1.5 pauses (3 s at 1,000 nodes). The price: after an early message,
    other changes wait for the borrowed pause too, up to two pauses. A wait of one pause after
    every message instead kept a session that is sent something at every pause (endpoint
    changes, as when nodes die one after another) in debt for good, and new work waited out its
    pauses again (S3 at S2's size: 3.3 s, against 0.8-1.3 s)."""

    def __init__(self) -> None:
        self._credit_until = -math.inf  # the end of the pauses taken so far

    def after_message(self, now: float, pause: float) -> tuple[float, float]:
        """A message went at `now`, and `pause` was drawn for it: (from when new work may end
        the wait, when the wait ends anyway: once the credit taken so far is used up)."""
        self._credit_until = max(self._credit_until, now) + pause
        return self._credit_until - pause, self._credit_until


def reconnect_spread(nodes: int, period: float) -> float:
    """The seconds over which an agent spreads its reconnect, in a cluster of `nodes` nodes."""
    return max(0.0, min(period / 2, nodes / RECONNECTS_PER_SECOND))
