"""How a follower names the leader in an UNAVAILABLE answer, and how clients read it back.

Writes that only the leader can serve (agent sessions, log streams, membership changes) are
answered by a follower with "not the leader; the leader is at ADDR", ADDR being the leader's
API address or "unknown"; the CLI, the agents and joining managers retry there.
"""

from __future__ import annotations

import re

_HINT = re.compile(r"the leader is at (\S+?)[;,)]?(?:\s|$)")


def not_leader_message(leader_api_addr: str, why: str = "") -> str:
    message = f"not the leader; the leader is at {leader_api_addr or 'unknown'}"
    return f"{message} ({why})" if why else message


def leader_from_details(details: str) -> str | None:
    """The leader's API address named in a follower's answer, or None if it names none."""
    match = _HINT.search(details or "")
    if match is None or match.group(1) == "unknown":
        return None
    return match.group(1)
