"""Each service's spec as protobuf, converted once per spec (ADR 51).

A list of services converted every spec on every call: at 300 services that conversion was most
of ListServices' time. Specs are immutable, so a converted spec stays right for as long as the
service holds the same spec object; the cache keeps that object to compare by identity.

The dispatcher converts the spec a task runs with once per spec version (`task_spec_pb`), not
once per session that sends it: each service's spec goes to every node of the service, and that
conversion was the largest part of a session's CPU while S1's services were created (#15).
"""

from __future__ import annotations

from collections.abc import Collection

from warren.api import specconvert
from warren.api.v1 import types_pb2 as pb
from warren.model import Service, ServiceSpec, Task

MAX_TASK_SPECS = 4096  # services whose task spec is kept; past that the cache starts again


class SpecCache:
    def __init__(self) -> None:
        self._specs: dict[str, tuple[ServiceSpec, pb.ServiceSpec]] = {}
        self._task_specs: dict[str, tuple[int, ServiceSpec, pb.ServiceSpec]] = {}  # service id -> latest

    def spec_pb(self, service: Service) -> pb.ServiceSpec:
        """`service`'s spec as protobuf; shared, so copy it rather than change it."""
        hit = self._specs.get(service.id)
        if hit is None or hit[0] is not service.spec:
            hit = self._specs[service.id] = (service.spec, specconvert.spec_to_pb(service.spec))
        return hit[1]

    def task_spec_pb(self, task: Task) -> pb.ServiceSpec:
        """The spec `task` runs with as protobuf; shared, so copy it rather than change it. The
        latest version of each service is kept; each task holds its own decoded copy of the spec,
        so a hit compares by value (far cheaper than converting), not by identity."""
        hit = self._task_specs.get(task.service_id)
        if hit is None or hit[0] != task.spec_version or (hit[1] is not task.spec and hit[1] != task.spec):
            if len(self._task_specs) >= MAX_TASK_SPECS:  # removed services are never asked again
                self._task_specs = {}
            hit = self._task_specs[task.service_id] = (task.spec_version, task.spec, specconvert.spec_to_pb(task.spec))
        return hit[2]

    def keep_only(self, service_ids: Collection[str]) -> None:
        """Forget the services no longer in `service_ids` (removed ones)."""
        if len(self._specs) > len(service_ids):
            self._specs = {k: v for k, v in self._specs.items() if k in service_ids}
