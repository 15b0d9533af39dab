"""Warren's processes name themselves in ps and top (issue #16): `warren: manager <node>
(leader|follower)`, `warren: agent <node>`, `warren: sim <N> nodes`. setproctitle rewrites the
process's argv area, which is what /proc/<pid>/cmdline, ps and top show."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def set_title(title: str) -> None:
    """Name this process `title`; without setproctitle (not installed), keep the old name."""
    try:
        import setproctitle
    except ImportError:
        log.debug("setproctitle is not installed: the process keeps its name")
        return
    setproctitle.setproctitle(title)


def manager_title(node_id: str, leader: bool) -> str:
    return f"warren: manager {node_id} ({'leader' if leader else 'follower'})"


def agent_title(node_id: str) -> str:
    return f"warren: agent {node_id or '(not joined)'}"


def sim_title(nodes: int) -> str:
    return f"warren: sim {nodes} node{'' if nodes == 1 else 's'}"
