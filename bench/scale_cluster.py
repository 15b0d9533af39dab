"""The three managers of a scale run, as the load runs reach them (issue #15)."""

from __future__ import annotations

from typing import Any

IMAGE = "busybox"


RPC_TIMEOUT = 30.0


class Cluster:
    """The managers, seen through the founder's admin credentials."""

    def __init__(self, managers: list[Any]) -> None:
        self.managers = managers

    def stub(self, manager: Any) -> Any:
        return manager.control((manager.founder or manager).data_dir / "admin")

    def alive(self) -> list[Any]:
        return [m for m in self.managers if m.process is not None and m.process.poll() is None]

    def leader(self) -> Any | None:
        import grpc

        for m in self.alive():
            try:  # every page: past the first page of nodes, the managers may be on any
                nodes = self.nodes(m)
            except grpc.RpcError:
                continue
            if any(n.leader and n.id == m.node_id for n in nodes):
                return m
        return None

    def nodes(self, manager: Any) -> list[Any]:
        from warren.api.pages import all_pages
        from warren.api.v1 import control_pb2 as cpb

        return all_pages(
            lambda r: self.stub(manager).ListNodes(r, timeout=RPC_TIMEOUT), cpb.ListNodesRequest(), "nodes"
        )

    def tasks(self, manager: Any) -> list[Any]:
        from warren.api.pages import all_pages
        from warren.api.v1 import control_pb2 as cpb

        return all_pages(
            lambda r: self.stub(manager).ListTasks(r, timeout=RPC_TIMEOUT), cpb.ListTasksRequest(), "tasks"
        )
