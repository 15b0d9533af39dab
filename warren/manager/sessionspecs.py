"""The spec versions one session's agent holds (ADR 21): each spec travels once per session,
beside the first task that needs it."""

from __future__ import annotations

from collections.abc import Callable

from warren.api import convert
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.manager.speccache import SpecCache
from warren.model import ServiceSpec, Task, TaskState
from warren.specrefs import SpecKey, SpecRefs
from warren.state import ClusterState

FileSource = Callable[[ClusterState, ServiceSpec], list[dpb.TaskFile]]


class SessionSpecs:
    """The spec versions one session's agent holds (ADR 21). A spec is sent with the first task
    desired running that needs it; both sides forget it once no task in the set refers to it
    (`prune`, after each message), so a later task of that version brings it again."""

    def __init__(self, by_reference: bool, files: FileSource | None = None, encoded: SpecCache | None = None) -> None:
        self.by_reference = by_reference  # False for an agent that reads only Task.spec
        self.files = files  # the values of the spec's secrets and configs, sent with it (ADR 38)
        self.encoded = encoded or SpecCache()  # specs as protobuf, shared by the sessions
        self.refs = SpecRefs()  # every task in the set -> its spec version, counted per version
        self.sent: set[SpecKey] = set()

    def task(self, task: Task, specs: list[dpb.TaskSpec], state: ClusterState) -> pb.Task:
        """`task` as sent; its spec joins `specs` if the agent may start it and lacks the spec."""
        key = (task.service_id, task.spec_version)
        self.refs.refer(task.id, key)
        if not self.by_reference:
            return convert.task_to_pb(task, with_spec=True)
        if task.desired_state <= TaskState.RUNNING and key not in self.sent:
            self.sent.add(key)
            files = self.files(state, task.spec) if self.files and (task.spec.secrets or task.spec.configs) else []
            specs.append(
                dpb.TaskSpec(service_id=key[0], spec_version=key[1], spec=self.encoded.task_spec_pb(task), files=files)
            )
        return convert.task_to_pb(task)

    def remove(self, task_id: str) -> None:
        self.refs.forget(task_id)

    def prune(self) -> None:
        """Forget the specs whose last task left: O(changed tasks), not a walk of the set (#15)."""
        self.sent.difference_update(self.refs.released())
