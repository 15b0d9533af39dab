"""The Prometheus registry a manager's or an agent's /metrics serves.

`/metrics?name[]=NAME` answers with NAME's samples alone (prometheus_client restricts the output
to the collectors that registered NAME). A collector that reads its figures at scrape time (the
state's gauges, the tasks' cgroups, the process's own) names its families only by collecting:
in a registry without `auto_describe` it registered no name, so a restricted scrape left all of
it out, `warren_tasks` and `process_resident_memory_bytes` included. The whole page is 160 KB on
a manager (every API method's series, ADR 93), about 13 ms of Python work on an idle one; the
scale benchmark reads the leader's running tasks twice a second (#15).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry


def new_registry() -> CollectorRegistry:
    """A registry whose collectors are collected once when registered, for their names."""
    return CollectorRegistry(auto_describe=True)
